# Stage 30: the system around the station: users, the read-only root, the data partition's
# initial tree, first boot, networking, logs.
root="$WORK/rootfs"
data="$WORK/data"
cp -a "$FIRMWARE/rootfs/." "$root/"
install -m 0644 "$REPO/systemd/pingan-edge.service" "$root/etc/systemd/system/pingan-edge.service"
# Updates (issue 22): the commit after a tried boot, the station's tryboot request, the
# release this root holds (edge/update/updater.py reads it).
for unit in pingan-edge-update-commit.service pingan-edge-tryboot.path pingan-edge-tryboot.service; do
    install -m 0644 "$REPO/systemd/$unit" "$root/etc/systemd/system/$unit"
done
echo "$VERSION" > "$root/etc/pingan-edge-release"
# The release keys this root trusts (RAUC's [keyring], the station's [update] keyring);
# without --keyring the flash tool must be given one (firmware/flash --keyring).
rm -f "$root/etc/rauc/keyring.pem"
if [ -n "${RELEASE_KEYRING:-}" ]; then
    install -m 0644 -o 0 -g 0 "$RELEASE_KEYRING" "$root/etc/rauc/keyring.pem"
fi
chmod 0440 "$root/etc/sudoers.d/technician"
chroot "$root" sh -ec '
    getent group gpio >/dev/null || groupadd --system gpio
    getent group pingan >/dev/null || groupadd --system pingan
    id pingan >/dev/null 2>&1 || useradd --system --gid pingan --groups gpio,audio,dialout \
        --home-dir /var/lib/pingan-edge --shell /usr/sbin/nologin pingan
    # The technician logs in on the console; the password is locked until the flash tool
    # puts a hash on the card (first boot moves it to the data partition).
    id technician >/dev/null 2>&1 || useradd --create-home --groups sudo,pingan,audio,gpio,systemd-journal \
        --shell /bin/bash technician
    passwd -l root >/dev/null
    passwd -l technician >/dev/null
    systemctl enable systemd-networkd systemd-resolved systemd-timesyncd \
        pingan-firstboot.service pingan-edge.service \
        pingan-edge-update-commit.service pingan-edge-tryboot.path
    systemctl disable wpa_supplicant.service  # the D-Bus one; wlan0 gets its own via udev
    systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
        fstrim.timer systemd-rfkill.service systemd-rfkill.socket
'
ln -sf /run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
# A Pi has no real-time clock: until timesyncd reaches an NTP server (and stamps
# /var/lib/systemd/timesync/clock), systemd starts the clock at /usr/lib/clock-epoch's
# mtime, else at systemd's own release date, a year or more before the township's
# certificates, which TLS then refuses. The image's build time is the floor.
touch "$root/usr/lib/clock-epoch"
# The card's machine id is on the kernel command line (set per card by the flash tool), so
# /etc/machine-id stays empty on the read-only root.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# Mount points of the data partition's bind mounts, and the Python that reads shadow there.
mkdir -p "$root/data" "$root/var/lib/pingan-edge" "$root/etc/wpa_supplicant"
rm -rf "$root/etc/pingan-edge" && mkdir -p "$root/etc/pingan-edge"
echo "pingan-unset" > "$root/etc/hostname"
# The data partition starts with what its bind mounts cover, so a unit works before first
# boot has run (and first boot only adds to it). Moved out of the root once (the seed), so
# this stage can run again.
seed="$WORK/data-seed"
if [ ! -d "$seed" ]; then
    mkdir -p "$seed"
    for d in var/lib/systemd:systemd var/log:log home:home; do
        mv "$root/${d%%:*}" "$seed/${d#*:}" && mkdir -p "$root/${d%%:*}"
    done
fi
rm -rf "$data" && mkdir -p "$data/etc/pingan-edge" "$data/state" "$data/etc/wpa_supplicant"
cp -a "$seed/." "$data/" && mkdir -p "$data/log/journal"
uid="$(chroot "$root" id -u pingan)"; gid="$(chroot "$root" id -g pingan)"
chown "$uid:$gid" "$data/state" && chmod 0750 "$data/state"
chroot "$root" systemd-tmpfiles --create --prefix /var/log/journal >/dev/null 2>&1 || true
install -d -m 2755 -g "$(chroot "$root" getent group systemd-journal | cut -d: -f3)" "$data/log/journal"
echo "station user uid $uid; data tree:" >&2
ls -la "$data" >&2
