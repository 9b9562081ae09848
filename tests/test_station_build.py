"""The station is built under one ExitStack: a part that fails to build closes what the
parts before it opened (the simulator's private broker, the data directory's lock, the
outbox)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config

from edge.unit.pins import PinFactoryError
from pingan_sim.localbroker import free_port
from pingan_sim.station import SimulatedStation


def _processes_using(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_a_part_that_fails_closes_the_private_broker_and_the_lock(tmp_path):
    data = tmp_path / "station"
    config = make_config(data, free_port(), broker={"local_fallback": True},
                         pins={"factory": "lgpio"})  # not usable off a Pi
    with pytest.raises(PinFactoryError):
        SimulatedStation(config)
    assert (data / "broker" / "mosquitto.conf").exists(), "the private broker was started"
    assert _processes_using(data / "broker") == [], "and stopped again"
    # The data directory's lock went with it: the same directory builds a station now.
    station = SimulatedStation(make_config(data, free_port(), broker={"local_fallback": True}))
    station.start()
    try:
        assert station.local_broker is not None and station.local_broker.running
    finally:
        station.stop()
    assert _processes_using(data / "broker") == []
