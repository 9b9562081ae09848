# Stage 20: the station, installed offline into /opt/pingan-edge from the wheelhouse (the
# unit never reaches PyPI), run under qemu-user in the arm64 chroot.
root="$WORK/rootfs"
rm -rf "$root/opt/pingan-edge" "$root/tmp/wheelhouse"
cp -r "$WORK/wheelhouse" "$root/tmp/wheelhouse"
chroot "$root" python3 -m venv --without-pip /opt/pingan-edge
pipwhl="$(cd "$root/tmp/wheelhouse" && ls pip-*.whl)"
# The locked set, each file checked against the lock again (the wheelhouse sat on disk);
# the locked pip runs from its own wheel and installs itself with the rest.
chroot "$root" /opt/pingan-edge/bin/python "/tmp/wheelhouse/$pipwhl/pip" install -q \
    --disable-pip-version-check --no-index --find-links /tmp/wheelhouse --no-compile \
    --require-hashes --no-deps -r /tmp/wheelhouse/unit-aarch64.txt
# The project's own wheels (the unit and its modem protocol) have no hash in the lock;
# their dependencies are the set above.
chroot "$root" /opt/pingan-edge/bin/pip install -q --disable-pip-version-check --no-index \
    --no-compile --no-deps "/tmp/wheelhouse/$(cd "$root/tmp/wheelhouse" && ls pingan_edge-*.whl)" \
    "/tmp/wheelhouse/$(cd "$root/tmp/wheelhouse" && ls pingan_modem-*.whl)"
chroot "$root" /opt/pingan-edge/bin/pip check
# Nothing more and nothing less than the lock (and the project itself).
chroot "$root" /opt/pingan-edge/bin/python /tmp/wheelhouse/venv-matches-lock \
    /tmp/wheelhouse/unit-aarch64.txt >&2
# The wheels' shared libraries carry symbol tables nobody reads on a unit (about 40 MB:
# cryptography, numpy's OpenBLAS, LiteRT, PyAV): the build machine's aarch64 strip takes
# them off, wherever the result still loads (pingan_firmware/elfstrip.py). The imports
# below prove every library does.
"$REPO/.venv/bin/python" -m pingan_firmware.elfstrip "$root/opt/pingan-edge"
chroot "$root" /opt/pingan-edge/bin/python -c 'import av, cv2, numpy, soundfile, sounddevice
import lgpio, cryptography.x509, msgspec, ai_edge_litert.interpreter' >&2
# Byte-compile once here: a read-only root cannot write __pycache__ later.
chroot "$root" /opt/pingan-edge/bin/python -m compileall -q -j 0 /opt/pingan-edge/lib >/dev/null || true
rm -rf "$root/tmp/wheelhouse"
ln -sf /opt/pingan-edge/bin/pingan-edge "$root/usr/bin/pingan-edge"
chroot "$root" /usr/bin/pingan-edge --version >&2
chroot "$root" /opt/pingan-edge/bin/python -c \
    'from edge.resources import model_path; print("model:", model_path())' >&2
