"""What the flash tool refuses to write: the laptop's own disk, anything mounted, a fixed disk.

Block devices are judged from lsblk (the whole disk a device belongs to, its mount points,
its removable/hotplug flags); a regular file is an image being prepared and is allowed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any


class Refused(Exception):
    """The target must not be written; the message says why and what to do."""


def _lsblk(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["lsblk", "--json", "--paths", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise Refused(f"lsblk {' '.join(args)}: {out.stderr.strip()}")
    devices: list[dict[str, Any]] = json.loads(out.stdout)["blockdevices"]
    return devices


def _flatten(devs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in devs:
        out.append(d)
        out.extend(_flatten(d.get("children") or []))
    return out


def whole_disk(device: Path) -> Path:
    """The disk a partition (or the disk itself) belongs to."""
    real = Path(os.path.realpath(device))
    info = _lsblk("-no", "NAME,PKNAME,TYPE", str(real))
    parent = info[0].get("pkname")
    return Path(parent) if parent and info[0].get("type") == "part" else real


def system_disks() -> set[Path]:
    """Disks holding the running system's /, /boot, /usr, /var, /home or swap."""
    sources = set()
    for mnt in ("/", "/boot", "/boot/efi", "/usr", "/var", "/home"):
        out = subprocess.run(["findmnt", "-nvo", "SOURCE", "--target", mnt], capture_output=True,
                             text=True)
        if out.returncode == 0 and out.stdout.startswith("/dev/"):
            sources.add(out.stdout.strip())
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        if line.startswith("/dev/"):
            sources.add(line.split()[0])
    disks = set()
    for src in sources:
        try:
            disks.add(whole_disk(Path(src)))
        except Refused:
            continue
    return disks


def mounted_parts(disk: Path) -> list[str]:
    mounts = []
    for d in _flatten(_lsblk("-o", "NAME,MOUNTPOINTS", str(disk))):
        mounts += [f"{d['name']} on {m}" for m in (d.get("mountpoints") or []) if m]
    return mounts


def removable(disk: Path) -> bool:
    info = _lsblk("-dno", "NAME,RM,HOTPLUG,TRAN", str(disk))[0]
    return bool(info.get("rm")) or bool(info.get("hotplug")) or info.get("tran") == "usb" or \
        disk.name.startswith("mmcblk")


def check_target(target: Path, *, force: bool = False) -> None:
    """Raise Refused unless `target` may be overwritten."""
    if not target.exists() and target.parent.is_dir() and not str(target).startswith("/dev/"):
        return  # a new image file: a card prepared now, copied later
    if not target.exists():
        raise Refused(f"{target} does not exist: is the card reader plugged in? (lsblk lists "
                      "the disks)")
    mode = os.stat(target).st_mode
    if stat.S_ISREG(mode):
        return
    if not stat.S_ISBLK(mode):
        raise Refused(f"{target} is neither a disk nor an image file")
    disk = whole_disk(target)
    if disk in system_disks():
        raise Refused(f"{target} is on {disk}, the disk this computer is running from: "
                      "writing it would destroy this system. Choose the SD card (lsblk)")
    if Path(os.path.realpath(target)) != disk:
        raise Refused(f"{target} is a partition; give the whole card ({disk})")
    mounts = mounted_parts(disk)
    if mounts:
        raise Refused(f"{disk} is in use ({'; '.join(mounts)}): unmount it first "
                      f"(udisksctl unmount -b …, or eject it in the file manager)")
    if not force and not removable(disk):
        raise Refused(f"{disk} is not a removable disk, so it is probably not an SD card; "
                      "check with lsblk, and add --force only if you are sure")
