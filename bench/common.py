"""What both benchmarks share: the machine line, the filesystem under the data, a temp dir."""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec
import paho.mqtt


class Head(msgspec.Struct):
    """The two fields a township subscriber needs to recognise an event, decoded fast."""

    id: str
    type: str


def loadavg() -> str:
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_line(load_before: str) -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return (f"machine: nproc={cpus} python={platform.python_version()} "
            f"({platform.python_implementation()}) {platform.machine()} "
            f"kernel={platform.release()} sqlite={sqlite3.sqlite_version} "
            f"paho-mqtt={paho.mqtt.__version__}\n"
            f"load average (1/5/15 min): before {load_before}, after {loadavg()}"
            f"  (a shared machine makes every figure noisy; compare with the baseline)")


def fs_of(path: Path) -> str:
    """The filesystem type holding `path`, from /proc/mounts (best effort)."""
    best = ("", "?")
    real = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) >= len(best[0]):
                    best = (parts[1], parts[2])
    except OSError:
        pass
    return f"{best[1]} at {best[0]}"


TOWNSHIP = "t01"
STATION = "v001"


def station_toml(data_dir: Path, port: int, extra: str = "", inflight: int = 20) -> str:
    """A simulated station (mock pins, presses fire at once) on the bench's broker;
    `extra` adds or overrides sections for what one benchmark measures."""
    return f"""
[station]
id = "{STATION}"
township = "{TOWNSHIP}"
data_dir = "{data_dir}"

[broker]
host = "127.0.0.1"
port = {port}
keepalive_s = 30

[uplink]
inflight = {inflight}
backoff_min_s = 0.05
backoff_max_s = 0.5

[pins]
factory = "mock"

[buttons]
panic_hold_s = 0
bounce_s = 0
{extra}"""


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100.0 * len(ordered))) - 1]


def add_tmp_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tmpdir", default=None,
                        help="where to make the temporary directory (default: system temp); "
                             "point it at the disk you care about, fsync cost depends on it")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (station log, outbox.db)")


def run_in_tmp(args: argparse.Namespace, prefix: str,
               run: Callable[[argparse.Namespace, Path], int]) -> int:
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=args.tmpdir))
    try:
        return run(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
