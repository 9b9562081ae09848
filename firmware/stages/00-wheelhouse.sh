# Stage 00: the wheelhouse. The project's own wheel (with its person model and the
# simulator's scene as data files) and every dependency as an aarch64/cp311 wheel, pinned to
# the versions the tests ran with in .venv, so the unit runs what CI tested.
wh="$WORK/wheelhouse"
rm -rf "$wh" && mkdir -p "$wh"
[ -f "$REPO/models/person_ssdlite.tflite" ] || {
    echo "stage 00: $REPO/models/person_ssdlite.tflite missing: run bin/setup first" >&2; exit 1; }
py="$REPO/.venv/bin/python"
[ -x "$py" ] || py=python3
"$py" -m pip wheel -q --no-deps -w "$wh" "$REPO"
"$py" -m pip freeze --exclude-editable | grep -v '^-e' > "$WORK/constraints.txt" || true
tags=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3
      --abi none --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64
      --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64
      --platform manylinux2014_aarch64 --platform any)
# lgpio: gpiozero's pin library on a Pi (not a dependency of the simulator).
"$py" -m pip download -q "${tags[@]}" -c "$WORK/constraints.txt" -d "$wh" \
    "$(ls "$wh"/pingan_edge-*.whl)" "lgpio>=0.2" pip
ls "$wh" >&2
du -sh "$wh" >&2
