"""The Pi firmware's reading of a card's config.txt/cmdline.txt, as firmware/boot-test
--machine raspi3b hands them to QEMU (which has no Pi firmware of its own)."""

from __future__ import annotations

import pytest

from pingan_firmware.piboot import boot_config, read_cmdline, read_config

IMAGE_CONFIG = """\
# Ping'an Edge (firmware/build-image). Pi 3/4/400/CM4, 64-bit.
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel=vmlinuz-6.1.0-57-arm64
initramfs initrd.img-6.1.0-57-arm64 followkernel
disable_overscan=1
dtparam=audio=on
[pi4]
max_framebuffers=2
kernel=only-for-pi4
[all]
"""


def test_the_images_config_on_a_pi_3_b() -> None:
    boot = read_config(IMAGE_CONFIG, "pi3b")
    assert boot.kernel == "vmlinuz-6.1.0-57-arm64"  # [pi4]'s kernel= is not a Pi 3's
    assert boot.initramfs == "initrd.img-6.1.0-57-arm64"
    assert boot.dtb == "bcm2837-rpi-3-b.dtb"  # upstream_kernel=1: the kernel's own name
    assert boot.cmdline_file == "cmdline.txt"
    assert "max_framebuffers" not in boot.settings
    assert read_config(IMAGE_CONFIG, "pi4b").kernel == "only-for-pi4"


def test_defaults_and_overrides() -> None:
    plain = read_config("arm_64bit=1\n")
    assert (plain.kernel, plain.initramfs, plain.dtb) == ("kernel8.img", None,
                                                           "bcm2710-rpi-3-b.dtb")
    other = read_config("device_tree=my.dtb\ncmdline=alt.txt\n[pi3+]\nkernel=no\n"
                        "[all]\nramfsfile=ram.img\n")
    assert (other.dtb, other.cmdline_file, other.initramfs, other.kernel) == (
        "my.dtb", "alt.txt", "ram.img", "kernel7.img")
    assert read_config("[pi3+]\nkernel=k\n", "pi3b+").kernel == "k"


def test_cmdline_is_its_first_line() -> None:
    assert read_cmdline("console=ttyS1,115200  root=PARTUUID=50494e47-02 ro\nignored\n") == (
        "console=ttyS1,115200 root=PARTUUID=50494e47-02 ro")
    assert read_cmdline("") == ""


def test_an_include_is_read_in_place_and_tryboot_sections_only_with_the_flag() -> None:
    files = {"config.txt": "kernel=a.img\ncmdline=c.txt\ninclude extra.txt\ninclude gone.txt\n",
             "tryboot.txt": "kernel=t.img\ninclude extra.txt\n",
             "extra.txt": "# the slots\n[all]\ncmdline=one.txt\n[tryboot]\ncmdline=two.txt\n"
                          "kernel=try.img\n[all]\n"}
    plain = boot_config(files.get, "pi4b")
    assert (plain.kernel, plain.cmdline_file) == ("a.img", "one.txt")
    # With the flag the firmware reads tryboot.txt, and [tryboot] applies there.
    tried = boot_config(files.get, "pi4b", tryboot=True)
    assert (tried.kernel, tried.cmdline_file) == ("try.img", "two.txt")
    # Without a reader, an include is skipped; [tryboot] never applies without the flag.
    assert read_config(files["config.txt"], "pi4b").cmdline_file == "c.txt"
    with pytest.raises(FileNotFoundError):
        boot_config({}.get, "pi4b")
