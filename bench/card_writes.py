"""What a real station writes to a data partition made as the image makes it, per alarm.

What it measures
    A 128 MiB ext4 file system made as `firmware/assemble-image` makes the data partition
    (`mkfs.ext4 -L pa-data -m 1`: 1 KiB blocks at that size) on a loop device, mounted as
    the unit's fstab mounts it (`noatime,commit=300`). A real station process
    (`pingan-sim run`: the station with simulated pins, no audio
    as in firmware/boot-test) keeps its data directory on it, with a
    private Mosquitto as the township. The station's warnings and worse go, as
    pingan-warnlog.service puts them on the unit, into `log/pingan/warnings.log` on the
    same file system (`edge.unit.warnlog.Keeper`: appended and fdatasynced).

    Sectors written are the loop device's (/sys/block/loopN/stat, field 7): everything the
    file system sends to the "card", its journal included. After the station is online,
    `sync` puts start-up writes behind; each alarm is `pingan-edge press panic` through the
    control socket, its arrival at the township awaited, then a pause (its PUBACK and
    delivery mark); after the last one, `sync` writes what the 300 s commit and writeback
    would have written later. jbd2's own counters (/proc/fs/jbd2/loopN-8/info) give the
    journal transactions.

    With `--trace`, each write request to the loop device is recorded (the kernel's
    block:block_rq_issue trace event) and its blocks are named by file (debugfs icheck and
    ncheck; inode 8 is ext4's journal).

Run (root: a loop device and a mount)
    .venv/bin/python bench/card_writes.py --tmpdir /var/tmp --alarms 20 --trace
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_tmp_args, loadavg, machine_line, run_in_tmp, station_process

from edge.unit.control import request
from edge.unit.warnlog import Keeper

TRACING = Path("/sys/kernel/tracing")
BLOCK = 1024  # the data partition's block size at 128 MiB (mke2fs.conf "small")


class Card:
    """The loop-mounted data partition."""

    def __init__(self, tmp: Path, mkfs_extra: list[str], mount_opts: str) -> None:
        self.image, self.mnt = tmp / "data.ext4", tmp / "mnt"
        self.mnt.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(128 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "pa-data", "-m", "1", *mkfs_extra,
                        str(self.image)], check=True)
        self.dev = subprocess.run(["losetup", "-f", "--show", str(self.image)], check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.name = Path(self.dev).name
        subprocess.run(["mount", "-o", mount_opts, self.dev, str(self.mnt)], check=True)

    def sectors(self) -> int:
        return int(Path(f"/sys/block/{self.name}/stat").read_text().split()[6])

    def jbd2(self) -> str:
        return " ".join(Path(f"/proc/fs/jbd2/{self.name}-8/info").read_text().split()[:2])

    def owners(self, blocks: list[int]) -> dict[int, str]:
        """File of each block (debugfs on the mounted device: reads only)."""
        names: dict[int, str] = {}
        for i in range(0, len(blocks), 500):
            chunk = blocks[i:i + 500]
            out = subprocess.run(["debugfs", "-R", "icheck " + " ".join(map(str, chunk)),
                                  self.dev], capture_output=True, text=True).stdout
            inodes = {}
            for line in out.splitlines()[1:]:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    inodes[int(parts[0])] = int(parts[1])
            wanted = sorted(set(inodes.values()) - {8})
            paths = {8: "<ext4 journal>"}
            if wanted:
                out = subprocess.run(["debugfs", "-R", "ncheck " + " ".join(map(str, wanted)),
                                      self.dev], capture_output=True, text=True).stdout
                for line in out.splitlines()[1:]:
                    parts = line.split(None, 1)
                    if len(parts) == 2 and parts[0].isdigit():
                        paths[int(parts[0])] = parts[1]
            for b in chunk:
                ino = inodes.get(b)
                names[b] = ("<metadata: bitmaps, inode table, group descriptors>"
                            if ino is None else paths.get(ino, f"<inode {ino}>"))
        return names

    def close(self) -> None:
        subprocess.run(["umount", str(self.mnt)], check=False)
        subprocess.run(["losetup", "-d", self.dev], check=False)


class Trace:
    """Write requests to one block device, from the block:block_rq_issue event."""

    def __init__(self, dev: str) -> None:
        if not (TRACING / "events").exists():
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], check=True)
        st = Path(dev).stat()
        major, minor = st.st_rdev >> 8, st.st_rdev & 0xFF
        self.event = TRACING / "events/block/block_rq_issue"
        (self.event / "filter").write_text(f"dev == {(major << 20) | minor}")
        (TRACING / "trace").write_text("")
        (self.event / "enable").write_text("1")

    def stop(self) -> list[tuple[int, int]]:
        """(first sector, sectors) of each write request since the start."""
        (self.event / "enable").write_text("0")
        text = (TRACING / "trace").read_text()
        (self.event / "filter").write_text("0")
        return [(int(m[1]), int(m[2])) for m in
                re.finditer(r"\b\d+,\d+ W\S* \d+ \(\) (\d+) \+ (\d+)", text)]


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    card = Card(tmp, args.mkfs.split(), args.mount)
    keeper = Keeper(card.mnt / "log/pingan/warnings.log", 1 << 20, 120)
    warnings: list[str] = []

    def warnlog(raw: bytes) -> None:  # as pingan-warnlog.service: warnings and worse, synced
        with contextlib.suppress(ValueError):
            if json.loads(raw).get("level") in ("warning", "error", "critical"):
                keeper.add(raw.decode().strip())
                warnings.append(json.loads(raw)["event"])

    data = card.mnt / "state"
    try:
        with station_process(tmp, data, "pingan_sim", "[audio]\nenabled = false\n",
                             online_s=60, on_stderr=warnlog) as station:
            measure(args, load, card, data, station.arrived, warnings)
    finally:
        keeper.close()
        card.close()
    return 0


def measure(args: argparse.Namespace, load: str, card: Card, data: Path, arrived: list[str],
            warnings: list[str]) -> None:
    """The alarms, once the station is online, and what they wrote to the card."""
    time.sleep(args.settle_s)
    subprocess.run(["sync"], check=True)
    warnings.clear()
    trace = Trace(card.dev) if args.trace else None
    s0, j0 = card.sectors(), card.jbd2()
    if args.idle_s:
        time.sleep(args.idle_s)
        subprocess.run(["sync"], check=True)
        idle = (card.sectors() - s0) * 512
        print(f"idle {args.idle_s:.0f} s then sync: {idle} B")
        s0 = card.sectors()
    for n in range(1, args.alarms + 1):
        before = arrived.count("alarm.panic")
        request(data / "control.sock", {"op": "press", "button": "panic", "count": 1,
                                        "interval_s": 0.0})
        deadline = time.monotonic() + 30
        while arrived.count("alarm.panic") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"alarm {n} never reached the township")
            time.sleep(0.05)
        time.sleep(args.pause_s)
    unsynced = (card.sectors() - s0) * 512
    subprocess.run(["sync"], check=True)
    total = (card.sectors() - s0) * 512
    requests = trace.stop() if trace else []
    print(machine_line(load))
    print(f"mkfs {args.mkfs or '(as the image)'}; mount {args.mount}")
    print(f"{args.alarms} alarms: {total} B written ({total / args.alarms / 1024:.2f} KiB "
          f"per alarm; {unsynced / args.alarms / 1024:.2f} KiB of it before the final "
          f"sync); jbd2 {j0} -> {card.jbd2()}")
    print(f"warning lines kept per alarm: "
          f"{dict(collections.Counter(warnings))} / {args.alarms}")
    if requests:
        per_file: collections.Counter[str] = collections.Counter()
        blocks = [s * 512 // BLOCK + i for s, n in requests
                  for i in range(n * 512 // BLOCK)]
        names = card.owners(sorted(set(blocks)))
        for b in blocks:
            per_file[names[b]] += BLOCK
        print(f"by file ({len(requests)} write requests):")
        for name, size in per_file.most_common():
            print(f"  {size / args.alarms / 1024:8.2f} KiB per alarm  {name}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alarms", type=int, default=20)
    p.add_argument("--pause-s", type=float, default=3.0,
                   help="after each alarm reached the township (its delivery mark)")
    p.add_argument("--settle-s", type=float, default=5.0)
    p.add_argument("--idle-s", type=float, default=0.0,
                   help="measure the idle station this long first (then sync)")
    p.add_argument("--mkfs", default="", help="extra mkfs.ext4 options, to compare")
    p.add_argument("--mount", default="noatime,commit=300", help="mount options")
    p.add_argument("--trace", action="store_true", help="name the files written")
    add_tmp_args(p)
    return run_in_tmp(p.parse_args(), "pingan-card-writes-", run)


if __name__ == "__main__":
    sys.exit(main())
