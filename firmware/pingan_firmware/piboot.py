"""What the Raspberry Pi firmware loads from a card's FAT partition, read as it reads it:
`config.txt` (with its conditional sections) names the kernel, the initramfs and the
command line file; the device tree is the board's own (upstream names with
`upstream_kernel=1`) unless `device_tree=` says otherwise.

The boot test gives these three files to QEMU's `-M raspi3b` (which has no firmware of
its own to read them): `-kernel`, `-initrd`, `-dtb`, `-append`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Each board the boot test emulates: the config.txt filters that apply to it, and its
# device tree under the firmware's (downstream) and the kernel's (upstream) names.
BOARDS = {
    "pi3b": (("all", "pi3"), "bcm2710-rpi-3-b.dtb", "bcm2837-rpi-3-b.dtb"),
    "pi3b+": (("all", "pi3", "pi3+"), "bcm2710-rpi-3-b-plus.dtb", "bcm2837-rpi-3-b-plus.dtb"),
    "pi4b": (("all", "pi4"), "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-4-b.dtb"),
}


@dataclass(frozen=True)
class PiBoot:
    kernel: str
    initramfs: str | None
    dtb: str
    cmdline_file: str
    settings: dict[str, str]


def read_config(text: str, board: str = "pi3b") -> PiBoot:
    """The firmware's reading of config.txt for `board`: the last value of each setting in
    the sections that apply (a `[filter]` line starts one; `[all]` ends the others)."""
    filters, downstream_dtb, upstream_dtb = BOARDS[board]
    applies = True
    settings: dict[str, str] = {}
    initramfs: str | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            applies = line[1:-1].strip().lower() in filters
            continue
        if not applies:
            continue
        if line.startswith("initramfs "):  # `initramfs FILE [followkernel|ADDRESS]`
            initramfs = line.split()[1]
            continue
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip()] = value.strip()
    if "ramfsfile" in settings:
        initramfs = settings["ramfsfile"].split(",")[0]
    # 64-bit: kernel8.img unless kernel= names another.
    kernel = settings.get("kernel", "kernel8.img" if settings.get("arm_64bit") == "1"
                          else "kernel7.img")
    dtb = settings.get("device_tree") or (upstream_dtb if settings.get("upstream_kernel") == "1"
                                          else downstream_dtb)
    return PiBoot(kernel=kernel, initramfs=initramfs, dtb=dtb,
                  cmdline_file=settings.get("cmdline", "cmdline.txt"), settings=settings)


def read_cmdline(text: str) -> str:
    """cmdline.txt: the first line is the command line (the firmware ignores the rest)."""
    lines = text.splitlines()
    return " ".join(lines[0].split()) if lines else ""
