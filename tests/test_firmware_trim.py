"""firmware/trim.dpkg.cfg as dpkg reads it (the last matching path-exclude/path-include
decides; fnmatch without FNM_PATHNAME, so `*` crosses `/`): what a Pi or the boot test
needs stays, what no supported Pi needs goes."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CFG = ROOT / "firmware" / "trim.dpkg.cfg"
K = "/lib/modules/6.1.0-28-arm64/kernel"


def rules() -> list[tuple[str, str]]:
    out = []
    for line in CFG.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, pattern = line.partition("=")
        assert key in ("path-exclude", "path-include"), line
        out.append((key, pattern))
    return out


def unpacked(path: str) -> bool:
    """dpkg's decision for one path of a package."""
    keep = True
    for key, pattern in rules():
        if fnmatch.fnmatchcase(path, pattern):
            keep = key == "path-include"
    return keep


KEEP = [
    # The Pi: SD card, USB, Wi-Fi, Ethernet (Pi 4 genet; Pi 3 USB LAN), GPIO, watchdog,
    # display, sound over USB, the camera, modems.
    f"{K}/drivers/mmc/host/sdhci-iproc.ko", f"{K}/drivers/mmc/host/bcm2835.ko",
    f"{K}/drivers/usb/dwc2/dwc2.ko", f"{K}/drivers/usb/storage/usb-storage.ko",
    f"{K}/drivers/net/wireless/broadcom/brcm80211/brcmfmac/brcmfmac.ko",
    f"{K}/drivers/net/ethernet/broadcom/genet/genet.ko", f"{K}/drivers/net/usb/lan78xx.ko",
    f"{K}/drivers/net/usb/smsc95xx.ko", f"{K}/drivers/net/usb/qmi_wwan.ko",
    f"{K}/drivers/usb/serial/option.ko", f"{K}/drivers/usb/class/cdc-acm.ko",
    f"{K}/drivers/gpio/gpio-sim.ko", f"{K}/drivers/watchdog/bcm2835_wdt.ko",
    f"{K}/drivers/watchdog/i6300esb.ko", f"{K}/drivers/gpu/drm/vc4/vc4.ko",
    f"{K}/sound/usb/snd-usb-audio.ko", f"{K}/drivers/media/usb/uvc/uvcvideo.ko",
    f"{K}/drivers/media/v4l2-core/videodev.ko", f"{K}/drivers/scsi/sd_mod.ko",
    f"{K}/drivers/scsi/scsi_mod.ko", f"{K}/drivers/scsi/sg.ko",
    # File systems: the card, update bundles.
    f"{K}/fs/ext4/ext4.ko", f"{K}/fs/fat/vfat.ko", f"{K}/fs/squashfs/squashfs.ko",
    f"{K}/fs/overlayfs/overlay.ko",
    # The boot test under QEMU's virt machine.
    f"{K}/drivers/block/virtio_blk.ko", f"{K}/drivers/net/virtio_net.ko",
    f"{K}/drivers/virtio/virtio_mmio.ko",
    # Device trees the boot partition gets; the Pi's firmware; licences; our languages.
    "/usr/lib/linux-image-6.1.0-28-arm64/broadcom/bcm2837-rpi-3-b.dtb",
    "/usr/lib/raspi-firmware/start.elf", "/usr/lib/raspi-firmware/start4.elf",
    "/usr/lib/raspi-firmware/start_x.elf", "/usr/lib/raspi-firmware/bootcode.bin",
    "/usr/share/doc/systemd/copyright", "/usr/share/locale/zh_CN/LC_MESSAGES/systemd.mo",
    "/usr/share/locale/locale.alias",
    # Whatever the trim does not name.
    "/usr/bin/python3.11", "/usr/lib/aarch64-linux-gnu/espeak-ng-data/cmn_dict",
    "/etc/systemd/system.conf", "/usr/share/zoneinfo/Asia/Shanghai",
]

DROP = [
    "/usr/share/doc/systemd/changelog.Debian.gz", "/usr/share/man/man1/ls.1.gz",
    "/usr/share/locale/de/LC_MESSAGES/systemd.mo", "/usr/share/info/dir",
    "/usr/lib/linux-image-6.1.0-28-arm64/rockchip/rk3399-rock-pi-4b.dtb",
    f"{K}/drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko",
    f"{K}/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko",
    f"{K}/drivers/gpu/drm/amd/amdgpu/amdgpu.ko", f"{K}/drivers/gpu/drm/nouveau/nouveau.ko",
    f"{K}/drivers/infiniband/core/ib_core.ko", f"{K}/drivers/scsi/qla2xxx/qla2xxx.ko",
    f"{K}/drivers/media/dvb-frontends/cxd2841er.ko", f"{K}/fs/btrfs/btrfs.ko",
    f"{K}/fs/xfs/xfs.ko", f"{K}/sound/pci/hda/snd-hda-intel.ko",
    "/usr/lib/raspi-firmware/start_db.elf", "/usr/lib/raspi-firmware/fixup4cd.dat",
]


@pytest.mark.parametrize("path", KEEP)
def test_what_a_pi_or_the_boot_test_needs_is_unpacked(path: str) -> None:
    assert unpacked(path)
    assert unpacked(path.replace("/lib/modules/", "/usr/lib/modules/"))


@pytest.mark.parametrize("path", DROP)
def test_what_no_supported_pi_needs_is_not(path: str) -> None:
    assert not unpacked(path)
    assert not unpacked(path.replace("/lib/modules/", "/usr/lib/modules/"))


def test_stage_10_gives_it_to_mmdebstrap() -> None:
    stage = (ROOT / "firmware" / "stages" / "10-debian.sh").read_text()
    assert '--dpkgopt="$FIRMWARE/trim.dpkg.cfg"' in stage
