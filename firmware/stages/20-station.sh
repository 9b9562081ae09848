# Stage 20: the station, installed offline into /opt/pingan-edge from the wheelhouse (the
# unit never reaches PyPI), run under qemu-user in the arm64 chroot.
root="$WORK/rootfs"
rm -rf "$root/opt/pingan-edge" "$root/tmp/wheelhouse"
cp -r "$WORK/wheelhouse" "$root/tmp/wheelhouse"
chroot "$root" python3 -m venv --without-pip /opt/pingan-edge
pipwhl="$(cd "$root/tmp/wheelhouse" && ls pip-*.whl)"
chroot "$root" /opt/pingan-edge/bin/python "/tmp/wheelhouse/$pipwhl/pip" install -q \
    --no-index --find-links /tmp/wheelhouse --no-compile pip pingan-edge lgpio
# Byte-compile once here: a read-only root cannot write __pycache__ later.
chroot "$root" /opt/pingan-edge/bin/python -m compileall -q -j 0 /opt/pingan-edge/lib >/dev/null || true
rm -rf "$root/tmp/wheelhouse"
ln -sf /opt/pingan-edge/bin/pingan-edge "$root/usr/bin/pingan-edge"
chroot "$root" /usr/bin/pingan-edge --version >&2
chroot "$root" /opt/pingan-edge/bin/python -c \
    'from edge.resources import model_path; print("model:", model_path())' >&2
