# Stage 10: Debian 12 arm64 from Debian's packages (as Debian's own raspi images do:
# raspi-firmware + linux-image-arm64). A directory, so later stages can chroot into it.
root="$WORK/rootfs"
rm -rf "$root"
packages=(
    systemd systemd-sysv systemd-timesyncd systemd-resolved udev kmod dbus
    linux-image-arm64 raspi-firmware initramfs-tools
    python3 python3-venv espeak-ng libportaudio2 libasound2 alsa-utils
    ca-certificates iproute2 iputils-ping wpasupplicant
    e2fsprogs dosfstools fdisk cloud-guest-utils util-linux sudo less
    rauc openssl  # updates (issue 22): RAUC and its bundles' signature checks
)
# Debian as it is today, or as snapshot.debian.org kept it at DEBIAN_SNAPSHOT
# (build-image --snapshot 20261201T000000Z): the same packages on every rebuild.
if [ -n "${DEBIAN_SNAPSHOT:-}" ]; then
    snap="http://snapshot.debian.org/archive"
    sources=("deb [check-valid-until=no] $snap/debian/$DEBIAN_SNAPSHOT bookworm main non-free-firmware"
             "deb [check-valid-until=no] $snap/debian-security/$DEBIAN_SNAPSHOT bookworm-security main non-free-firmware")
else
    sources=("deb http://deb.debian.org/debian bookworm main non-free-firmware"
             "deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware")
fi
# raspi-firmware's kernel hook copies the kernel/initrd/dtbs into /boot/firmware: make it
# exist before the kernel is installed.
# firmware/trim.dpkg.cfg: what dpkg never unpacks (documentation, other languages, other
# boards' device trees and kernel modules): a smaller root, a smaller update bundle.
mmdebstrap --arch=arm64 --variant=apt --components=main,non-free-firmware \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt="$FIRMWARE/trim.dpkg.cfg" \
    --essential-hook='mkdir -p "$1/boot/firmware"' \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages' \
    --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/cache/debconf/*-old "$1"/var/cache/man "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log "$1"/var/log/bootstrap.log' \
    bookworm "$root" "${sources[@]}"
ls "$root/boot" "$root/boot/firmware" >&2
