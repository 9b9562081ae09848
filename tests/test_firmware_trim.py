"""The root's trim rules (pingan_firmware.trim), as dpkg reads them (the last matching
path-exclude/path-include decides; fnmatch without FNM_PATHNAME, so `*` crosses `/`):
firmware/trim.dpkg.cfg, which dpkg applies in stage 10, and firmware/trim.root.cfg, which
stage 35 applies to the finished root. What a Pi, the boot test or an update needs
stays; what no supported Pi needs goes; a module a kept one needs is never deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from firmware_helpers import ROOT

from pingan_firmware import trim

DPKG = trim.load(ROOT / "firmware" / "trim.dpkg.cfg")
ROOTFS = trim.load(ROOT / "firmware" / "trim.root.cfg")
KVER = "6.1.0-57-arm64"
K = f"/usr/lib/modules/{KVER}/kernel"
SITE = "/opt/pingan-edge/lib/python3.11/site-packages"


def in_image(path: str) -> bool:
    """Unpacked by dpkg (under both names Debian 12's packages may give a module) and
    left by stage 35 (which sees the merged-/usr path)."""
    old = path.replace("/usr/lib/modules/", "/lib/modules/")
    return trim.kept(path, DPKG) and trim.kept(old, DPKG) and trim.kept(path, ROOTFS)


KEEP = [
    # The Pi: SD card, USB, Wi-Fi, Ethernet (Pi 4 genet; Pi 3 USB LAN), GPIO, watchdog,
    # display and its HDMI CEC and audio, the audio jack and camera (vc04_services), sound
    # over USB, the camera, modems.
    f"{K}/drivers/mmc/host/sdhci-iproc.ko", f"{K}/drivers/mmc/host/bcm2835.ko",
    f"{K}/drivers/usb/dwc2/dwc2.ko", f"{K}/drivers/usb/storage/usb-storage.ko",
    f"{K}/drivers/net/wireless/broadcom/brcm80211/brcmfmac/brcmfmac.ko",
    f"{K}/drivers/net/ethernet/broadcom/genet/genet.ko", f"{K}/drivers/net/usb/lan78xx.ko",
    f"{K}/drivers/net/usb/smsc95xx.ko", f"{K}/drivers/net/usb/qmi_wwan.ko",
    f"{K}/drivers/usb/serial/option.ko", f"{K}/drivers/usb/class/cdc-acm.ko",
    f"{K}/drivers/gpio/gpio-sim.ko", f"{K}/drivers/watchdog/bcm2835_wdt.ko",
    f"{K}/drivers/watchdog/i6300esb.ko", f"{K}/drivers/gpu/drm/vc4/vc4.ko",
    f"{K}/drivers/gpu/drm/v3d/v3d.ko", f"{K}/drivers/gpu/drm/display/drm_display_helper.ko",
    f"{K}/drivers/media/cec/core/cec.ko", f"{K}/drivers/media/rc/rc-core.ko",
    f"{K}/sound/soc/codecs/snd-soc-hdmi-codec.ko",
    f"{K}/sound/soc/snd-soc-core.ko", f"{K}/sound/soc/bcm/snd-soc-bcm2835-i2s.ko",
    f"{K}/drivers/staging/vc04_services/bcm2835-audio/snd-bcm2835.ko",
    f"{K}/drivers/staging/vc04_services/vchiq.ko",
    f"{K}/sound/usb/snd-usb-audio.ko", f"{K}/drivers/media/usb/uvc/uvcvideo.ko",
    f"{K}/drivers/media/usb/gspca/gspca_main.ko", f"{K}/drivers/media/mc/mc.ko",
    f"{K}/drivers/media/common/videobuf2/videobuf2-v4l2.ko",
    f"{K}/drivers/media/v4l2-core/videodev.ko", f"{K}/drivers/scsi/sd_mod.ko",
    f"{K}/drivers/scsi/scsi_mod.ko", f"{K}/drivers/scsi/sg.ko",
    # File systems: the card, update bundles; streaming updates (nbd, dm-verity, loop).
    f"{K}/fs/ext4/ext4.ko", f"{K}/fs/fat/vfat.ko", f"{K}/fs/squashfs/squashfs.ko",
    f"{K}/fs/overlayfs/overlay.ko", f"{K}/drivers/block/nbd.ko", f"{K}/drivers/block/loop.ko",
    f"{K}/drivers/md/dm-verity.ko", f"{K}/drivers/md/dm-mod.ko",
    # The boot test under QEMU's virt machine; the network stack.
    f"{K}/drivers/block/virtio_blk.ko", f"{K}/drivers/net/virtio_net.ko",
    f"{K}/drivers/virtio/virtio_mmio.ko", f"{K}/drivers/gpu/drm/virtio/virtio-gpu.ko",
    f"{K}/net/ipv6/ipv6.ko", f"{K}/net/wireless/cfg80211.ko",
    f"/usr/lib/modules/{KVER}/modules.dep",
    # Device trees the boot partition gets; the Pi's firmware; licences; our languages.
    f"/usr/lib/linux-image-{KVER}/broadcom/bcm2837-rpi-3-b.dtb",
    f"/boot/config-{KVER}",
    "/usr/lib/firmware/brcm/brcmfmac43456-sdio.bin",
    "/usr/share/doc/systemd/copyright", "/usr/share/locale/zh_CN/LC_MESSAGES/systemd.mo",
    "/usr/share/locale/locale.alias",
    # The station and what it loads: the detector's runtime, OpenCV, PyAV, NumPy, its model.
    f"{SITE}/ai_edge_litert/interpreter.py", f"{SITE}/ai_edge_litert/libpywrap_litert_common.so",
    f"{SITE}/ai_edge_litert/_pywrap_litert_interpreter_wrapper.so",
    f"{SITE}/cv2/cv2.abi3.so", f"{SITE}/av/codec/context.abi3.so",
    f"{SITE}/numpy/_core/_multiarray_umath.cpython-311-aarch64-linux-gnu.so",
    f"{SITE}/numpy/testing/__init__.py", f"{SITE}/edge/camera/detector.py",
    f"{SITE}/edge/camera/__pycache__/detector.cpython-311.pyc", f"{SITE}/pip/__init__.py",
    f"{SITE}/bitarray/__pycache__/util.cpython-311.pyc",
    "/opt/pingan-edge/share/pingan-edge/models/person_ssdlite.tflite",
    # Perl's base (dpkg, debconf), iconv's Unicode and Chinese sets, espeak-ng's voices.
    "/usr/bin/perl", "/usr/lib/aarch64-linux-gnu/perl-base/strict.pm",
    "/usr/lib/aarch64-linux-gnu/gconv/gconv-modules", "/usr/lib/aarch64-linux-gnu/gconv/UTF-16.so",
    "/usr/lib/aarch64-linux-gnu/gconv/GB18030.so", "/usr/lib/aarch64-linux-gnu/gconv/libGB.so",
    "/usr/lib/aarch64-linux-gnu/espeak-ng-data/en_dict",
    "/usr/lib/aarch64-linux-gnu/espeak-ng-data/phondata",
    "/usr/lib/aarch64-linux-gnu/espeak-ng-data/lang/sit/cmn-Latn-pinyin",
    "/usr/lib/udev/hwdb.bin", "/usr/lib/udev/rules.d/60-serial.rules",
    # Whatever the trim does not name.
    "/usr/bin/python3.11", "/usr/lib/aarch64-linux-gnu/espeak-ng-data/cmn_dict",
    "/etc/systemd/system.conf", "/usr/share/zoneinfo/Asia/Shanghai",
]

DROP = [
    # Stage 10 (dpkg).
    "/usr/share/doc/systemd/changelog.Debian.gz", "/usr/share/man/man1/ls.1.gz",
    "/usr/share/locale/de/LC_MESSAGES/systemd.mo", "/usr/share/info/dir",
    f"/usr/lib/linux-image-{KVER}/rockchip/rk3399-rock-pi-4b.dtb",
    f"{K}/drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko",
    f"{K}/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko",
    f"{K}/drivers/gpu/drm/amd/amdgpu/amdgpu.ko", f"{K}/drivers/gpu/drm/nouveau/nouveau.ko",
    f"{K}/drivers/infiniband/core/ib_core.ko", f"{K}/drivers/scsi/qla2xxx/qla2xxx.ko",
    f"{K}/drivers/media/dvb-frontends/cxd2841er.ko", f"{K}/fs/btrfs/btrfs.ko",
    f"{K}/fs/xfs/xfs.ko", f"{K}/sound/pci/hda/snd-hda-intel.ko",
    "/usr/lib/raspi-firmware/start_db.elf", "/usr/lib/raspi-firmware/fixup4cd.dat",
    # Stage 35: other boards' and PCs' drivers, protocols a unit never speaks.
    f"{K}/drivers/iio/adc/ti-ads1015.ko", f"{K}/drivers/net/can/usb/gs_usb.ko",
    f"{K}/drivers/staging/rtl8723bs/r8723bs.ko",
    f"{K}/drivers/staging/media/sunxi/cedrus/sunxi-cedrus.ko",
    f"{K}/drivers/media/i2c/adv7604.ko", f"{K}/drivers/media/rc/ir-nec-decoder.ko",
    f"{K}/drivers/media/usb/em28xx/em28xx.ko",
    f"{K}/drivers/media/platform/rockchip/rga/rockchip-rga.ko",
    f"{K}/drivers/atm/suni.ko", f"{K}/fs/lockd/lockd.ko", f"{K}/drivers/nfc/port100.ko",
    f"{K}/drivers/gpu/drm/panfrost/panfrost.ko", f"{K}/drivers/gpu/drm/meson/meson-drm.ko",
    f"{K}/drivers/gpu/drm/tiny/bochs.ko", f"{K}/sound/soc/rockchip/snd-soc-rockchip-i2s.ko",
    f"{K}/sound/soc/codecs/snd-soc-rt5640.ko", f"{K}/net/ceph/libceph.ko",
    f"{K}/net/sunrpc/sunrpc.ko", f"{K}/net/tipc/tipc.ko",
    # Stage 35: Perl beyond perl-base, other iconv sets, other languages' dictionaries,
    # the wheels of a venv nobody makes.
    "/usr/share/perl/5.36.0/CPAN.pm", "/usr/lib/aarch64-linux-gnu/libperl.so.5.36.0",
    "/usr/lib/aarch64-linux-gnu/perl/5.36.0/auto/Encode/JP/JP.so",
    "/usr/lib/aarch64-linux-gnu/gconv/IBM1047.so", "/usr/lib/aarch64-linux-gnu/gconv/EUC-JP.so",
    "/usr/lib/aarch64-linux-gnu/espeak-ng-data/ru_dict",
    "/usr/share/python-wheels/pip-23.0.1-py3-none-any.whl",
    "/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb",
    # Stage 35: the station's packages' test suites, a runtime the station never loads.
    f"{SITE}/numpy/_core/tests/test_multiarray.py",
    f"{SITE}/numpy/_core/tests/__pycache__/test_multiarray.cpython-311.pyc",
    f"{SITE}/numpy/_core/include/numpy/ndarrayobject.h",
    f"{SITE}/ai_edge_litert/libLiteRtWebGpuAccelerator.so", f"{SITE}/ai_edge_litert/libLiteRt.so",
    f"{SITE}/bitarray/test_bitarray.py",
    f"{SITE}/bitarray/__pycache__/test_bitarray.cpython-311.pyc",
    f"{SITE}/pip/_internal/__pycache__/main.cpython-311.pyc",
    f"{SITE}/setuptools/__pycache__/dist.cpython-311.pyc",
    # Stage 35: the packages' copies of what the boot partition holds.
    f"/boot/vmlinuz-{KVER}", f"/boot/initrd.img-{KVER}", "/usr/lib/raspi-firmware/start4.elf",
]


@pytest.mark.parametrize("path", KEEP)
def test_what_a_pi_the_boot_test_or_an_update_needs_stays(path: str) -> None:
    assert in_image(path)


@pytest.mark.parametrize("path", DROP)
def test_what_no_supported_pi_needs_goes(path: str) -> None:
    assert not in_image(path)


def test_a_rule_file_with_a_stray_line_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("# comment\npath-exclude=/usr/share/doc/*\npath-exlude=/usr/share/man/*\n")
    with pytest.raises(ValueError, match=r"bad\.cfg:3"):
        trim.load(cfg)


def fake_root(root: Path, paths: list[str], deps: dict[str, list[str]]) -> None:
    for path in paths:
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_bytes(b"x" * 100)
    mods = root / "usr/lib/modules" / KVER
    mods.mkdir(parents=True, exist_ok=True)
    (mods / "modules.dep").write_text("".join(
        f"{m.removeprefix(f'/usr/lib/modules/{KVER}/')}:"
        + "".join(f" {d.removeprefix(f'/usr/lib/modules/{KVER}/')}" for d in deps.get(m, []))
        + "\n" for m in paths if m.endswith(".ko")))
    (root / "data").mkdir()  # a mount point: empty before, stays
    os.symlink("usr/lib", root / "lib")  # merged /usr: not walked twice


def test_stage_35_deletes_what_its_rules_exclude_and_nothing_else(tmp_path: Path) -> None:
    drop = [p for p in DROP if trim.kept(p, DPKG)]  # what reaches stage 35
    keep = [p for p in KEEP if p.endswith((".ko", ".so", ".py", ".pyc", ".tflite"))]
    fake_root(tmp_path, keep + drop, {f"{K}/drivers/media/usb/uvc/uvcvideo.ko": [
        f"{K}/drivers/media/v4l2-core/videodev.ko", f"{K}/drivers/media/mc/mc.ko"]})
    files, size = trim.apply(tmp_path, ROOTFS)
    assert (files, size) == (len(drop), 100 * len(drop))
    assert [p for p in keep if not (tmp_path / p.lstrip("/")).is_file()] == []
    assert [p for p in drop if (tmp_path / p.lstrip("/")).exists()] == []
    assert not (tmp_path / K.lstrip("/") / "drivers/iio").exists()  # emptied: gone
    assert (tmp_path / "data").is_dir() and (tmp_path / "lib").is_symlink()


def test_a_module_a_kept_one_needs_is_never_deleted(tmp_path: Path) -> None:
    uvc = f"{K}/drivers/media/usb/uvc/uvcvideo.ko"
    videodev = f"{K}/drivers/media/v4l2-core/videodev.ko"
    fake_root(tmp_path, [uvc, videodev, f"{K}/drivers/iio/adc/ti-ads1015.ko"],
              {uvc: [videodev]})
    cfg = tmp_path / "too-much.cfg"
    cfg.write_text(f"path-exclude={K}/drivers/media/v4l2-core/*\n"
                   f"path-exclude={K}/drivers/iio/*\n")
    with pytest.raises(trim.BrokenModules, match=r"uvcvideo\.ko needs .*videodev\.ko"):
        trim.apply(tmp_path, trim.load(cfg))
    assert (tmp_path / videodev.lstrip("/")).is_file()
    assert (tmp_path / K.lstrip("/") / "drivers/iio/adc/ti-ads1015.ko").is_file()  # all or nothing


def test_stage_10_gives_dpkg_its_rules_and_stage_35_applies_the_rest() -> None:
    stage10 = (ROOT / "firmware" / "stages" / "10-debian.sh").read_text()
    assert '--dpkgopt="$FIRMWARE/trim.dpkg.cfg"' in stage10
    stage35 = (ROOT / "firmware" / "stages" / "35-trim.sh").read_text()
    assert '-m pingan_firmware.trim --root "$root" --rules "$FIRMWARE/trim.root.cfg"' in stage35
