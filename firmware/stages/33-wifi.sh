# Stage 33: the Wi-Fi firmware of the supported Pis. Stage 10's package list has none
# (raspi-firmware brings only the 43456's), so a Pi 3, 4, 400 or CM4 would find no firmware
# for its radio and `firmware/flash --wifi-ssid` could never connect. Debian's
# firmware-brcm80211 (non-free-firmware, already among stage 10's components) is installed
# here, after the cached stage 10, so that stage's cache key stays; then only the chips a
# supported Pi carries are kept: 43430 (Pi 3 B, Zero 2 W), 43436 (Zero 2 W), 43455 (Pi 3 B+,
# 4, 400, CM4).
root="$WORK/rootfs"
resolv="$root/etc/resolv.conf"
link="$(readlink "$resolv" || true)"
rm -f "$resolv"
cp /etc/resolv.conf "$resolv"
restore() { rm -f "$resolv"; [ -z "$link" ] || ln -s "$link" "$resolv"; }
trap restore EXIT
chroot "$root" apt-get update -qq >&2
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    firmware-brcm80211 >&2
chroot "$root" apt-get clean
rm -rf "$root/var/lib/apt/lists/"*
for dir in brcm cypress; do
    find "$root/usr/lib/firmware/$dir" -mindepth 1 \( -type f -o -type l \) \
        ! -name 'brcmfmac4343[06]*' ! -name 'brcmfmac43455*' ! -name 'brcmfmac43456*' \
        ! -name 'cyfmac4343[06]*' ! -name 'cyfmac43455*' -delete
done
ls "$root/usr/lib/firmware/brcm" >&2
test -e "$root/usr/lib/firmware/brcm/brcmfmac43455-sdio.bin"
test -e "$root/usr/lib/firmware/brcm/brcmfmac43430-sdio.bin"
