"""A damaged disk never stops the station: the six ways issue 9 damaged `outbox.db`,
each on real SQLite files written by a real simulated station (`pingan-sim run`), then
the daemon started again against a real broker. Every time it comes up, delivers a new alarm within
seconds, reports the problem, keeps the damaged file, and no seq repeats."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, station_toml, wait_until

from edge.unit.control import request
from pingan_sim.localbroker import free_port

OLD_ALARMS = 20
OLD_OTHERS = 200


@contextlib.contextmanager
def own_mount(path: Path) -> Iterator[Callable[[], None]]:
    """`path` as its own file system, so it can really be made read-only (as root, via a
    tmpfs remount; otherwise by taking the write bit away)."""
    path.mkdir()
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)],
                       check=True)

    def make_read_only() -> None:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        else:
            path.chmod(0o555)

    try:
        yield make_read_only
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
        else:
            path.chmod(0o755)


def press(sock: Path, button: str, count: int = 1) -> dict[str, Any]:
    return request(sock, {"op": "press", "button": button, "count": count, "interval_s": 0.0},
                   timeout=60)


def fill(tmp_path: Path, data: Path, *, kill: bool) -> dict[str, int]:
    """Run the daemon with its broker unreachable, store 220 events (20 alarms) that stay
    pending, then stop it (SIGTERM) or kill -9 it. Returns id → seq of what it accepted."""
    config = tmp_path / "offline.toml"
    config.write_text(station_toml(data, free_port(), buttons={"panic_hold_s": 0.0},
                                   control={"socket": str(tmp_path / "ctl.sock")}))
    daemon = Daemon(config, simulated=True)
    try:
        daemon.wait_logged("station.started")
        press(tmp_path / "ctl.sock", "broadcast", OLD_OTHERS // 2)
        press(tmp_path / "ctl.sock", "panic", OLD_ALARMS)
        press(tmp_path / "ctl.sock", "broadcast", OLD_OTHERS // 2)
        wait_until(lambda: len(daemon.logged("event.accepted")) >= OLD_ALARMS + OLD_OTHERS, 30,
                   "every press stored")
    finally:
        daemon.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        daemon.finish()
    return {line["id"]: line["seq"] for line in daemon.logged("event.accepted")}


def truncate_mid_page(db: Path) -> None:
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.truncate(size // 2 // 4096 * 4096 + 1000)


def garble_4k(db: Path) -> None:
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(bytes((i * 37 + 11) % 256 for i in range(4096)))


def overwrite_header(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"\xab" * 100)


def zero_bytes(db: Path) -> None:
    db.write_bytes(b"")


DAMAGE: dict[str, tuple[Callable[[Path], None], bool]] = {
    # name: (what is done to outbox.db, whether the filling daemon is killed -9 first)
    "truncated_mid_page": (truncate_mid_page, False),
    "garbled_4k_middle": (garble_4k, False),
    "header_overwritten": (overwrite_header, False),
    "zero_bytes": (zero_bytes, False),
    "wal_deleted": (lambda db: Path(f"{db}-wal").unlink(), True),
}


def restart(tmp_path: Path, data: Path, port: int) -> tuple[Daemon, Path]:
    config = tmp_path / "station.toml"
    config.write_text(station_toml(data, port, control={"socket": str(tmp_path / "ctl.sock")}))
    daemon = Daemon(config, simulated=True)
    daemon.wait_logged("station.started", timeout=30)
    return daemon, tmp_path / "ctl.sock"


def no_seq_repeats(events: list[dict[str, Any]]) -> dict[int, str]:
    by_seq: dict[int, str] = {}
    for e in events:
        if e["seq"]:
            assert by_seq.setdefault(e["seq"], e["id"]) == e["id"], f"seq {e['seq']} reused"
    return by_seq


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_outbox_is_quarantined_salvaged_and_the_station_runs(
        name, broker, tmp_path, township_factory):
    data = tmp_path / "data"
    damage, kill = DAMAGE[name]
    old = fill(tmp_path, data, kill=kill)
    assert len(old) == OLD_ALARMS + OLD_OTHERS
    damage(data / "outbox.db")
    township = township_factory(broker.port)

    daemon, sock = restart(tmp_path, data, broker.port)
    try:
        # Up, and a new alarm reaches the township within seconds.
        wait_until(lambda: daemon.logged("uplink.connected"), 10, "connected")
        pressed = press(sock, "panic")
        assert pressed["ok"]
        new_id = wait_until(lambda: (daemon.logged("alarm.raised") or [{}])[-1].get("id"), 5)
        new = wait_until(lambda: [e for e in township.unique_events() if e["id"] == new_id],
                         10, "the new alarm at the township")[0]
        assert new["seq"] > max(old.values()), "seq continues past every seq ever used"
        assert not daemon.logged("raw"), "nothing but JSON lines: no traceback"

        # Reported: a JSON line saying what to do, `status`, and the state topic.
        line = daemon.logged("outbox.damaged")[-1]
        assert "quarantine" in line["action"]
        problems = {p["code"]: p for p in request(sock, {"op": "status"})["problems"]}
        report = problems["outbox_corrupt"]["detail"]["reports"][-1]
        wait_until(lambda: any(p["code"] == "outbox_corrupt" for s in township.on("/state")
                               for p in s.get("problems", [])), 10, "problem on the state topic")
        assert report["resumed_at"] > max(old.values())

        if name == "wal_deleted":
            assert report["kind"] == "wal_lost" and report["quarantined"] is None
            assert list((data / "quarantine").glob("outbox-wal_lost-*.json")), "on record"
        elif name == "zero_bytes":
            assert report["kind"] == "emptied"
            assert (data / report["quarantined"]).stat().st_size == 0, "the file is kept"
        else:
            assert report["kind"] == "corrupt"
            kept = data / report["quarantined"]
            assert kept.exists() and kept.parent.name == "quarantine"
            assert Path(f"{kept}.json").exists(), "the report is kept beside it"
            assert report["salvaged"] > 0
            assert report["salvaged"] + (report["lost"] or 0) >= len(old) - 1
        if name == "header_overwritten":
            assert report["salvaged"] == len(old) and report["lost"] == 0
            assert report["salvaged_alarms"] == OLD_ALARMS

        # Every salvaged row goes out with its own id and seq; alarms before the rest.
        salvaged = report["salvaged"]
        if salvaged:
            wait_until(lambda: len(set(old) & {e["id"] for e in township.unique_events()})
                       >= salvaged, 30, "every salvaged event at the township")
        arrived = [e for e in township.unique_events() if e["id"] in old]
        assert all(old[e["id"]] == e["seq"] for e in arrived)
        kinds = [e["type"] for e in arrived]
        if "alarm.panic" in kinds and len(set(kinds)) > 1:
            assert kinds.index("button.broadcast") > max(
                i for i, k in enumerate(kinds) if k == "alarm.panic"), "alarms first"
        no_seq_repeats(township.unique_events())

        # A restart keeps the problem (the report outlives it) and the seq keeps rising.
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0
        daemon, sock = restart(tmp_path, data, broker.port)
        assert any(p["code"] == "outbox_corrupt"
                   for p in request(sock, {"op": "status"})["problems"])
        assert not daemon.logged("outbox.damaged"), "a sound outbox is not damaged again"
        press(sock, "broadcast")
        again = wait_until(lambda: [e for e in township.unique_events()
                                    if e["type"] == "button.broadcast" and e["id"] not in old],
                           10)[0]
        assert again["seq"] == new["seq"] + 1
        no_seq_repeats(township.unique_events())
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.finish()


def test_read_only_data_dir_pages_from_memory_and_says_so(broker, tmp_path, township_factory):
    data = tmp_path / "data"
    with own_mount(data) as make_read_only:
        old = fill(tmp_path, data, kill=False)
        make_read_only()
        township = township_factory(broker.port)
        daemon, sock = restart(tmp_path, data, broker.port)
        try:
            wait_until(lambda: daemon.logged("uplink.connected"), 10, "connected")
            assert not daemon.logged("raw"), "nothing but JSON lines: no traceback"
            assert "read-write" in daemon.logged("outbox.unwritable")[-1]["action"]
            problems = {p["code"] for p in request(sock, {"op": "status"})["problems"]}
            assert "storage_unwritable" in problems
            press(sock, "panic")
            new_id = wait_until(lambda: (daemon.logged("alarm.raised") or [{}])[-1].get("id"))
            alarm = wait_until(lambda: [e for e in township.events() if e["id"] == new_id],
                               10, "the alarm, sent from memory")[0]
            assert alarm["seq"] == 0, "seq 0: an alarm that could not be stored"
            wait_until(lambda: any(p["code"] == "storage_unwritable"
                                   for s in township.on("/state")
                                   for p in s.get("problems", [])), 10, "state topic")
            # What was stored before the directory went read-only still goes out.
            wait_until(lambda: set(old) <= {e["id"] for e in township.events()}, 30,
                       "the events stored before")
            no_seq_repeats(township.unique_events())
        finally:
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.finish() == 0


def test_systemd_does_not_restart_on_what_a_restart_cannot_fix():
    from edge import cli

    unit = (Path(__file__).parent.parent / "systemd" / "pingan-edge.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("RestartPreventExitStatus="))
    prevented = {int(v) for v in line.split("=", 1)[1].split()}
    assert prevented == {cli.EXIT_CONFIG, cli.EXIT_ALREADY_RUNNING}
    assert cli.EXIT_UNEXPECTED not in prevented and "Restart=always" in unit
