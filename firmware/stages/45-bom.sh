# Stage 45: the bill of materials (CycloneDX JSON): every Debian package in the root (dpkg's
# database) and every Python package in /opt/pingan-edge, with package URLs. In the image,
# so a unit says what it runs, and beside it, for whoever checks advisories against it.
# Last before the image: nothing installs into the root after it.
root="$WORK/rootfs"
bom="${IMAGE%.img}.bom.cdx.json"  # pingan-edge-<version>-arm64.bom.cdx.json
mkdir -p "$root/usr/share/pingan-edge"
"$REPO/.venv/bin/python" -m pingan_firmware.bom --root "$root" --version "$VERSION" \
    -o "$root/usr/share/pingan-edge/bom.cdx.json" -o "$bom"
