# Stage 00: the wheelhouse. Exactly the wheels locks/unit-aarch64.txt names (aarch64/cp311,
# each checked against the lock's sha256), so every build of a commit installs the same
# files whatever the builder's .venv holds; plus the project's own wheels (edge with its person
# model and the simulator's scene as data files), which the lock cannot hash.
wh="$WORK/wheelhouse"
lock="$REPO/locks/unit-aarch64.txt"
rm -rf "$wh" && mkdir -p "$wh"
[ -f "$REPO/models/person_ssdlite.tflite" ] || {
    echo "stage 00: $REPO/models/person_ssdlite.tflite missing: run bin/setup first" >&2; exit 1; }
py="$REPO/.venv/bin/python"
[ -x "$py" ] || { echo "stage 00: $py missing: run bin/setup first" >&2; exit 1; }
# No build isolation: an isolated build would fetch an unlocked setuptools.
# The modem protocol (modem/) is the project's too: its own wheel, shared with the township.
"$py" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$wh" \
    "$REPO" "$REPO/modem"
# The lock is complete (uv resolved it for aarch64), so --no-deps: nothing is resolved here.
# The tags are the Pi's: CPython 3.11 on Debian 12's glibc 2.36.
"$py" -m pip download -q --disable-pip-version-check --require-hashes --no-deps \
    --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 \
    --abi none --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 --platform any -d "$wh" -r "$lock"
# Stage 20 installs from this copy, so the wheels and the lock always go together.
cp "$lock" "$wh/unit-aarch64.txt"
cp "$REPO/bin/venv-matches-lock" "$wh/venv-matches-lock"
n_locked="$(grep -c '^[A-Za-z0-9]' "$lock")"
n_wheels="$(ls "$wh"/*.whl | wc -l)"
[ "$n_wheels" -eq "$((n_locked + 2))" ] || {
    echo "stage 00: $n_wheels wheels for $n_locked locked packages + the project's two" >&2
    exit 1; }
ls "$wh" >&2
du -sh "$wh" >&2
