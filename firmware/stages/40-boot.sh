# Stage 40: the boot partition's tree: the Pi firmware, the kernel, its initrd and the
# device trees (copied there by raspi-firmware's kernel hook), and our config.txt and
# cmdline.txt. The flash tool adds each card's identity under pingan-edge/.
root="$WORK/rootfs"
boot="$WORK/boot"
seed="$WORK/boot-seed"
if [ ! -d "$seed" ]; then  # once: the root keeps only the mount point
    mv "$root/boot/firmware" "$seed" && mkdir -p "$root/boot/firmware"
fi
rm -rf "$boot" && cp -a "$seed" "$boot"
kernel="$(cd "$boot" && ls vmlinuz* | head -1)"
initrd="$(cd "$boot" && ls initrd.img* | head -1)"
[ -n "$kernel" ] && [ -n "$initrd" ] || { echo "stage 40: no kernel/initrd in $boot" >&2; ls "$boot" >&2; exit 1; }
cat > "$boot/config.txt" <<CFG
# Ping'an Edge (firmware/build-image). Pi 3/4/400/CM4, 64-bit.
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel=$kernel
initramfs $initrd followkernel
disable_overscan=1
dtparam=audio=on
[pi4]
max_framebuffers=2
[all]
# The root slot: its command line file, chosen by the update back-end's one file
# (edge/update/tryboot.py); last, so it overrides everything above.
include pingan-slots.txt
CFG
# With the one-shot tryboot flag the firmware reads tryboot.txt instead: the same, where
# the slots file's [tryboot] section applies.
cp "$boot/config.txt" "$boot/tryboot.txt"
# A command line per root slot; read-only; the machine id is added per card by the flash
# tool. cmdline.txt (slot A) is what a firmware that misses the include would read.
# The serial console: ttyS1 is the Pi 3/4 mini UART on the upstream device trees (as in
# Debian's own raspi images); systemd starts a login on every console= it finds.
for slot in a:02 b:03; do
    echo "console=tty0 console=ttyS1,115200 root=PARTUUID=50494e47-${slot#*:} rootfstype=ext4 ro fsck.repair=yes rootwait net.ifnames=0 quiet" > "$boot/cmdline-${slot%%:*}.txt"
done
cp "$boot/cmdline-a.txt" "$boot/cmdline.txt"
# As flashed: slot A committed and good, nothing to try (B bad until an install).
empty="$(mktemp -d)"
PYTHONPATH="$REPO" "$REPO/.venv/bin/python" -m edge.update.tryboot --boot-dir "$empty" show \
    > "$boot/pingan-slots.txt"
rmdir "$empty"
mkdir -p "$boot/pingan-edge"
cat > "$boot/pingan-edge/README.txt" <<TXT
Put this card's identity here with the flash tool (firmware/flash), not by hand:
bundle.tar.gz (station certificate bundle), settings.toml, network.toml, technician.hash.
First boot moves them to the data partition and deletes them from this card.
TXT
ls -la "$boot" | head -40 >&2
du -sh "$boot" >&2
