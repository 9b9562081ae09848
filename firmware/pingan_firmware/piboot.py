"""What the Raspberry Pi firmware loads from a card's FAT partition, read as it reads it:
`config.txt` (with its conditional sections) names the kernel, the initramfs and the
command line file; the device tree is the board's own (upstream names with
`upstream_kernel=1`) unless `device_tree=` says otherwise.

The boot test gives these three files to QEMU's `-M raspi3b` (which has no firmware of
its own to read them): `-kernel`, `-initrd`, `-dtb`, `-append`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


def _lines(text: str, read: Callable[[str], str | None] | None, depth: int = 0
           ) -> Iterator[str]:
    """The file's lines with each `include FILE` replaced by that file's (the firmware
    skips an include it cannot find)."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("include ") and read is not None and depth < 4:
            included = read(line.split(None, 1)[1].strip())
            if included is not None:
                yield from _lines(included, read, depth + 1)
            continue
        yield line


def read_config(text: str, board: str = "pi3b", *, tryboot: bool = False,
                read: Callable[[str], str | None] | None = None) -> PiBoot:
    """The firmware's reading of config.txt for `board`: the last value of each setting in
    the sections that apply (a `[filter]` line starts one; `[all]` ends the others).
    `[tryboot]` applies when the boot has the tryboot flag; `read` gives an included
    file's text (None: no such file)."""
    filters, downstream_dtb, upstream_dtb = BOARDS[board]
    if tryboot:
        filters = (*filters, "tryboot")
    applies = True
    settings: dict[str, str] = {}
    initramfs: str | None = None
    for line in _lines(text, read):
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


def boot_config(read: Callable[[str], str | None], board: str = "pi3b", *,
                tryboot: bool = False) -> PiBoot:
    """What the firmware boots from the FAT partition whose files `read` gives: with the
    one-shot tryboot flag it loads tryboot.txt instead of config.txt."""
    name = "tryboot.txt" if tryboot else "config.txt"
    text = read(name)
    if text is None:
        raise FileNotFoundError(f"no {name} on the boot partition")
    return read_config(text, board, tryboot=tryboot, read=read)


def read_cmdline(text: str) -> str:
    """cmdline.txt: the first line is the command line (the firmware ignores the rest)."""
    lines = text.splitlines()
    return " ".join(lines[0].split()) if lines else ""
