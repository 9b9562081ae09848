"""A card or image file, read and written without mounting anything.

Partitions come from `sfdisk --json`; the FAT boot partition is reached by mtools at its
byte offset (`-i TARGET@@OFFSET`), ext4 partitions by debugfs, on a copy of their byte range
or in place at their offset (`TARGET?offset=N`, e2fsprogs' I/O option). Root is not needed
for an image file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
BOOT, ROOT_A, ROOT_B, DATA = 1, 2, 3, 4
IDENTITY_DIR = "pingan-edge"
_MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


class CardError(Exception):
    """The card or image is not what it should be; the message says what to do."""


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    type: str


def partitions(target: Path) -> dict[int, Partition]:
    out = subprocess.run(["sfdisk", "--json", str(target)], capture_output=True, text=True)
    if out.returncode != 0:
        raise CardError(f"{target}: no partition table ({out.stderr.strip()}); is this a "
                        "Ping'an Edge image or card?")
    table = json.loads(out.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    result = {}
    for i, p in enumerate(table.get("partitions", []), start=1):
        result[i] = Partition(i, int(p["start"]) * sector, int(p["size"]) * sector,
                              str(p["type"]))
    if BOOT not in result or DATA not in result:
        raise CardError(f"{target}: expected boot, root A, root B and data partitions, found "
                        f"{len(result)}")
    return result


def _fat(target: Path) -> str:
    return f"{target}@@{partitions(target)[BOOT].start}"


def _mtools(*args: str) -> subprocess.CompletedProcess[bytes]:
    out = subprocess.run(list(args), capture_output=True, env=_MTOOLS_ENV)
    if out.returncode != 0:
        raise CardError(f"{' '.join(args[:1])} failed: {out.stderr.decode().strip()}")
    return out


def fat_write(target: Path, files: dict[str, bytes]) -> None:
    """Put files (paths inside the boot partition) on it, replacing any there."""
    fat = _fat(target)
    dirs = sorted({str(Path(n).parent) for n in files if str(Path(n).parent) != "."})
    for d in dirs:
        if subprocess.run(["mdir", "-i", fat, f"::/{d}"], capture_output=True,
                          env=_MTOOLS_ENV).returncode != 0:
            _mtools("mmd", "-i", fat, f"::/{d}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            local = Path(tmp) / Path(name).name
            local.write_bytes(data)
            _mtools("mcopy", "-o", "-i", fat, str(local), f"::/{name}")


def fat_read(target: Path, name: str) -> bytes | None:
    out = subprocess.run(["mtype", "-i", _fat(target), f"::/{name}"], capture_output=True,
                         env=_MTOOLS_ENV)
    return out.stdout if out.returncode == 0 else None


def fat_list(target: Path, directory: str) -> list[str]:
    out = subprocess.run(["mdir", "-b", "-i", _fat(target), f"::/{directory}"],
                         capture_output=True, text=True, env=_MTOOLS_ENV)
    if out.returncode != 0:
        return []
    return sorted(Path(line.strip()).name for line in out.stdout.splitlines() if line.strip())


@contextmanager
def ext4_copy(target: Path, number: int) -> Iterator[Path]:
    """A temporary copy of an ext4 partition's bytes, for debugfs (which takes no offset)."""
    part = partitions(target)[number]
    with tempfile.NamedTemporaryFile(prefix=f"part{number}-") as tmp:
        subprocess.run(["dd", f"if={target}", f"of={tmp.name}", "bs=1M", "iflag=skip_bytes,"
                        "count_bytes", f"skip={part.start}", f"count={part.size}",
                        "conv=sparse", "status=none"], check=True)
        yield Path(tmp.name)


def ext4_read(fs: Path, path: str) -> bytes | None:
    out = subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], capture_output=True)
    missing = b"File not found" in out.stderr or out.returncode != 0
    return None if missing else out.stdout


def ext4_at(target: Path, number: int) -> str:
    """An ext4 partition of the card, in place, as debugfs opens it."""
    return f"{target}?offset={partitions(target)[number].start}"


def ext4_put(target: Path, number: int, path: str, data: bytes, mode: int = 0o644) -> None:
    """Write one file (owned by root) into an ext4 partition of the card, in place,
    replacing what is there; missing directories are made (root's, 0755)."""
    parents = [str(p) for p in reversed(Path(path).parents) if str(p) != "/"]
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "file"
        local.write_bytes(data)
        # mkdir of an existing directory and rm of a missing file only complain.
        script = "".join(f"mkdir {d}\nsif {d} mode 040755\nsif {d} uid 0\nsif {d} gid 0\n"
                         for d in parents if ext4_read_at(target, number, d) is None)
        script += (f"rm {path}\nwrite {local} {path}\nsif {path} mode 0{0o100000 | mode:o}\n"
                  f"sif {path} uid 0\nsif {path} gid 0\n")
        out = subprocess.run(["debugfs", "-w", "-f", "-", ext4_at(target, number)],
                             input=script.encode(), capture_output=True)
    if out.returncode != 0 or ext4_read_at(target, number, path) != data:
        raise CardError(f"{target}: could not write {path} into partition {number} "
                        f"({(out.stdout + out.stderr).decode(errors='replace').strip()[-300:]})")


def ext4_read_at(target: Path, number: int, path: str) -> bytes | None:
    """One file of an ext4 partition of the card, read in place (None: not there)."""
    out = subprocess.run(["debugfs", "-R", f"cat {path}", ext4_at(target, number)],
                         capture_output=True)
    missing = b"File not found" in out.stderr or out.returncode != 0
    return None if missing else out.stdout


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def check_image_hash(image: Path) -> None:
    """The image must match its .sha256 (a download cut short, a copy gone bad)."""
    sums = image.with_name(image.name + ".sha256")
    if not sums.exists():
        raise CardError(f"{sums} not found: the image cannot be checked; copy it with the "
                        "image from the build")
    expected = sums.read_text().split()[0].lower()
    actual = sha256_file(image)
    if actual != expected:
        raise CardError(f"{image}: sha256 {actual[:16]}… does not match {sums.name} "
                        f"({expected[:16]}…): the image is damaged or not the one built; "
                        "copy it again")


@dataclass(frozen=True)
class BlockMap:
    block_size: int
    ranges: list[tuple[int, int, str]]  # first block, last block (inclusive), sha256

    @property
    def mapped_bytes(self) -> int:
        return sum(last - first + 1 for first, last, _ in self.ranges) * self.block_size


def read_bmap(path: Path) -> BlockMap:
    root = ET.parse(path).getroot()
    block = int((root.findtext("BlockSize") or "4096").strip())
    ranges = []
    for rng in root.iter("Range"):
        text = (rng.text or "").strip()
        first, _, last = text.partition("-")
        ranges.append((int(first), int(last or first), rng.get("chksum", "")))
    return BlockMap(block, ranges)


def drop_cache(path: Path) -> None:
    """So that read-back comes from the card, not from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def verify(target: Path, bmap: BlockMap,
           progress: Callable[[int, int], None] | None = None) -> None:
    """Read back every mapped range and compare it with the block map's checksum;
    `progress(done, total)` in bytes as it goes."""
    drop_cache(target)
    done, total = 0, bmap.mapped_bytes
    with target.open("rb") as f:
        for first, last, chksum in bmap.ranges:
            f.seek(first * bmap.block_size)
            h = hashlib.sha256()
            remaining = (last - first + 1) * bmap.block_size
            while remaining:
                chunk = f.read(min(remaining, 4 * 1024 * 1024))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            if remaining or h.hexdigest() != chksum:
                raise CardError(
                    f"{target}: blocks {first}-{last} read back differently from the image: "
                    "the card is faulty or fake; use another card")
