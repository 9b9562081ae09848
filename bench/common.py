"""What the benchmarks share: the machine line, the filesystem under the data, a temp dir,
a real station process on a private broker."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pingan_sim.localbroker import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


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


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (the station's orderly stop), SIGKILL if it is not gone within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class StationProcess:
    """A running station process and what the township saw of it: `arrived` holds the
    `type` of each event on its events topic, in order."""

    proc: subprocess.Popen[bytes]
    log: Path
    arrived: list[str] = field(default_factory=list)


@contextlib.contextmanager
def station_process(tmp: Path, data_dir: Path, module: str, extra: str = "",
                    online_s: float = 30.0,
                    on_stderr: Callable[[bytes], None] | None = None,
                    ) -> Iterator[StationProcess]:
    """A real station (`python -m <module> run`, config from `station_toml`) on a private
    Mosquitto under `tmp`, with a township client subscribed to its topics; yields once
    the station's state message arrived (RuntimeError after `online_s`). Its output goes
    to `tmp/station.log`; with `on_stderr`, each stderr line is also handed to it (as
    pingan-warnlog.service reads the journal). On leaving: the station stopped (SIGTERM,
    then SIGKILL), its log closed, the client and the broker stopped."""
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(tmp / "broker").start()
        stack.callback(broker.stop)
        online = threading.Event()
        arrived: list[str] = []

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            if msg.topic.endswith("/state"):
                online.set()
            elif msg.topic.endswith("/events"):
                arrived.append(json.loads(msg.payload)["type"])

        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = on_message
        client.connect("127.0.0.1", broker.port)
        stack.callback(client.disconnect)
        client.subscribe(f"pingan/v1/{TOWNSHIP}/+/#", qos=1)
        client.loop_start()
        stack.callback(client.loop_stop)
        conf = tmp / "station.toml"
        conf.write_text(station_toml(data_dir, broker.port, extra), encoding="utf-8")
        log_path = tmp / "station.log"
        log = stack.enter_context(open(log_path, "wb"))
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "run", "-c", str(conf)], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT if on_stderr is None else subprocess.PIPE)
        reader = None
        if on_stderr is not None:
            def read(stderr: IO[bytes]) -> None:
                for raw in stderr:
                    log.write(raw)
                    on_stderr(raw)

            assert proc.stderr is not None
            reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
            reader.start()

        def end() -> None:
            stop_process(proc)
            if reader is not None:
                reader.join(5)
            if proc.stderr is not None:
                proc.stderr.close()

        stack.callback(end)
        if not online.wait(online_s):
            raise RuntimeError(f"the station did not come online; see {log_path}")
        yield StationProcess(proc, log_path, arrived)


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
