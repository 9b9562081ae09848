# Stage 35: a smaller root (a smaller card, a smaller update bundle). Deletes what
# firmware/trim.root.cfg names (kernel modules for other hardware, the station's packages'
# test suites, a runtime it never loads), then compresses the kernel modules with xz:
# Debian's kernel cannot decompress modules itself (CONFIG_MODULE_COMPRESS_NONE), but its
# kmod (and udev, through libkmod) reads .ko.xz (`kmod --version`: +XZ) and hands the
# kernel the decompressed module, signature included. Modules are about 4/5 of their size
# smaller. Runs again safely: only .ko files are compressed.
root="$WORK/rootfs"
"$REPO/.venv/bin/python" -m pingan_firmware.trim --root "$root" --rules "$FIRMWARE/trim.root.cfg"
chroot "$root" kmod --version | grep -q '+XZ' || {
    echo "stage 35: this root's kmod cannot read xz-compressed modules" >&2; exit 1; }
# crc32: the check the kernel's own xz decoder takes, should it ever read them itself.
find "$root/usr/lib/modules" -name '*.ko' -type f -print0 |
    xargs -0 -r -n 32 -P "$(nproc)" xz --check=crc32 -T1 -6
for kdir in "$root"/usr/lib/modules/*/; do
    kver="$(basename "$kdir")"
    chroot "$root" depmod "$kver"
    # Every module depmod lists is a file that is there.
    missing="$(cd "$kdir" && cut -d: -f1 modules.dep | while read -r m; do [ -f "$m" ] || echo "$m"; done)"
    [ -z "$missing" ] || { echo "stage 35: modules.dep names missing modules: $missing" >&2; exit 1; }
    echo "modules $kver: $(grep -c . "$kdir/modules.dep") listed," \
        "$(du -s --apparent-size -B1M "$kdir" | cut -f1) MB" >&2
done
# What the rules thinned still works: Mandarin and English speech, iconv's Chinese sets.
for voice in cmn-latn-pinyin en; do
    chroot "$root" espeak-ng -v "$voice" -w /dev/null "ni3 hao3 hello" 2>&1 | { ! grep .; } || {
        echo "stage 35: espeak-ng's $voice voice no longer works" >&2; exit 1; }
done
[ "$(echo 平安 | chroot "$root" iconv -f UTF-8 -t GB18030 | chroot "$root" iconv -f GB18030 -t UTF-8)" = 平安 ] || {
    echo "stage 35: iconv lost GB18030" >&2; exit 1; }
# LiteRT's interpreter still loads the person model without the runtimes deleted above.
# (Not run: under qemu-user, allocate_tensors crashes with the wheels as published too.)
chroot "$root" /opt/pingan-edge/bin/python -c '
from ai_edge_litert.interpreter import Interpreter
from edge.resources import model_path
print("detector:", Interpreter(model_path=str(model_path())).get_input_details()[0]["shape"])' >&2
echo "root: $(du -s --apparent-size -B1M "$root" | cut -f1) MB (apparent)" >&2
