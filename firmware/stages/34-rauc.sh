# Stage 35: RAUC with HTTP streaming. Stage 10 installs Debian's rauc 1.8-2, built without
# streaming (it would download each whole bundle); firmware/build-rauc rebuilds the same
# Debian source with streaming on (1.8-2+pingan1, cached under a key of its recipe), and it
# replaces Debian's binary here, after the cached stage 10, so that stage's cache stays.
# The bill of materials (stage 45) records the version with its +pingan1 suffix.
root="$WORK/rootfs"
if [ -n "${BUILD_CACHE:-}" ]; then
    debs="$("$FIRMWARE/build-rauc" --cache "$BUILD_CACHE")"
else
    debs="$("$FIRMWARE/build-rauc" --out "$WORK/rauc")"
fi
rm -rf "$root/tmp/rauc-debs" && cp -r "$debs" "$root/tmp/rauc-debs"
chroot "$root" sh -c 'dpkg -i /tmp/rauc-debs/*.deb' >&2
rm -rf "$root/tmp/rauc-debs"
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' rauc >&2
