"""Zero the free clusters of a FAT file system, read from its raw bytes.

Deleting a file on FAT only marks its directory entry (0xE5) and its clusters free: the
data stays on the card until something else is written there, and a carving tool reads it
back. First boot deletes the station's key and the technician's password hash from the
boot partition, so it then zeroes every free cluster that is not already zero. This works
on the partition's bytes (the FAT's own tables, not the driver's view), so it covers the
clusters of the files just deleted, the slack a rewrite (`mcopy -o`) left behind, and
what an earlier flash of the same card left in clusters the new image does not map.

The file system must not change under it: on the unit the partition is mounted read-only
(remounted so, which also writes the driver's FAT updates out) while this runs.
"""

from __future__ import annotations

import array
import os
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


class FatError(ValueError):
    """Not a FAT file system this can read; the message says what was found."""


@dataclass(frozen=True)
class Geometry:
    cluster_bytes: int
    fat_offset: int  # of the first FAT, from the start of the partition
    fat_bytes: int
    data_offset: int  # of cluster 2
    clusters: int  # data clusters, numbered 2 .. clusters + 1
    bits: int  # 12, 16 or 32

    def cluster_offset(self, n: int) -> int:
        return self.data_offset + (n - 2) * self.cluster_bytes


def geometry(boot_sector: bytes) -> Geometry:
    """The layout from the BIOS parameter block (Microsoft's FAT specification, 2005)."""
    if len(boot_sector) < 512 or boot_sector[510:512] != b"\x55\xaa":
        raise FatError("no boot sector signature 55 AA: not a FAT file system")
    (bps, spc, reserved, nfats, root_entries, total16, fatsz16) = struct.unpack_from(
        "<HBHBHH", boot_sector, 11) + struct.unpack_from("<H", boot_sector, 22)
    total32, fatsz32 = struct.unpack_from("<II", boot_sector, 32)
    if bps not in (512, 1024, 2048, 4096) or spc not in (1, 2, 4, 8, 16, 32, 64, 128) \
            or nfats == 0 or reserved == 0:
        raise FatError(f"implausible BIOS parameter block (bytes/sector {bps}, "
                       f"sectors/cluster {spc}, FATs {nfats}): not a FAT file system")
    fatsz = fatsz16 or fatsz32
    total = total16 or total32
    root_sectors = (root_entries * 32 + bps - 1) // bps
    first_data = reserved + nfats * fatsz + root_sectors
    clusters = (total - first_data) // spc
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    return Geometry(cluster_bytes=bps * spc, fat_offset=reserved * bps, fat_bytes=fatsz * bps,
                    data_offset=first_data * bps, clusters=clusters, bits=bits)


def free_clusters(geo: Geometry, fat: bytes) -> list[tuple[int, int]]:
    """Runs of free clusters as (first, count), from the first FAT's entries."""
    last = geo.clusters + 1
    if len(fat) * 8 < (last + 1) * geo.bits:
        raise FatError(f"FAT of {len(fat)} bytes is too short for {geo.clusters} clusters")
    entries = _entries(geo.bits, fat, last + 1)
    runs: list[tuple[int, int]] = []
    start = None
    for n in range(2, last + 2):
        free = n <= last and entries[n] == 0
        if free and start is None:
            start = n
        elif not free and start is not None:
            runs.append((start, n - start))
            start = None
    return runs


def _entries(bits: int, fat: bytes, count: int) -> Sequence[int]:
    """The first `count` entries (a 256 MiB FAT32 partition has ~65,000: one cast, not a
    Python call per entry, which matters on a Pi's first boot)."""
    if bits in (16, 32):
        entries = array.array("H" if bits == 16 else "I", fat[:bits // 8 * count])
        if sys.byteorder != "little":  # FAT is little-endian on every machine
            entries.byteswap()
        return entries if bits == 16 else [e & 0x0FFFFFFF for e in entries]
    out = []
    for n in range(count):
        pair = int.from_bytes(fat[n + n // 2:n + n // 2 + 2], "little")
        out.append(pair >> 4 if n & 1 else pair & 0xFFF)
    return out


def zero_free_clusters(device: Path, offset: int = 0) -> int:
    """Overwrite with zeros every free cluster of the FAT file system at `offset` bytes into
    `device` (a partition, or an image file) that holds anything but zeros, then fsync.
    Returns the bytes written. Raises FatError, OSError."""
    fd = os.open(device, os.O_RDWR)
    try:
        geo = geometry(os.pread(fd, 512, offset))
        fat = os.pread(fd, geo.fat_bytes, offset + geo.fat_offset)
        written = 0
        for first, count in free_clusters(geo, fat):
            pos = offset + geo.cluster_offset(first)
            end = pos + count * geo.cluster_bytes
            while pos < end:
                size = min(CHUNK, end - pos)
                block = os.pread(fd, size, pos)
                if block.count(0) != len(block):
                    zeros = bytes(len(block))
                    done = 0
                    while done < len(zeros):
                        done += os.pwrite(fd, zeros[done:], pos + done)
                    written += len(block)
                pos += size
        os.fsync(fd)
        return written
    finally:
        os.close(fd)
