"""The README's two commands meet: with no configuration, `bin/sim` (pingan-sim run) and
`bin/centre` (pingan-centre serve) use the same township and the same broker address,
so the simulated station is on the grid and its panic press rings on the duty screen."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from centre_helpers import Centre, database
from conftest import wait_until

from pingan_centre.console import config as centre_config
from pingan_sim.localbroker import free_port
from pingan_sim.station import SimulatedStation, defaults


def test_no_configuration_means_the_same_township_and_broker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for var in ("PINGAN_CENTRE_CONFIG", "PINGAN_CENTRE_TOWNSHIP", "PINGAN_CENTRE_BROKER_HOST",
                "PINGAN_CENTRE_BROKER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PINGAN_CENTRE_DATA", str(tmp_path))
    centre = centre_config.load()
    sim = defaults()
    assert sim.station.township == centre.township
    assert (sim.broker.host, sim.broker.port) == (centre.broker_host, centre.broker_port)
    assert sim.broker.local_fallback


def test_the_simulated_station_rings_on_a_default_console(tmp_path: Path):
    """As a newcomer runs them, with only the port changed (1883 may be taken here): the
    simulated station's private broker comes up on the configured port, where the console
    looks for it."""
    port = free_port()
    sim = defaults()
    config = msgspec.structs.replace(
        sim, station=msgspec.structs.replace(sim.station, data_dir=str(tmp_path / "sim")),
        broker=msgspec.structs.replace(sim.broker, port=port))
    station = SimulatedStation(config)
    station.start()
    db = next(database("sqlite", tmp_path))
    centre = Centre(tmp_path, db, port, sim.station.township)  # the default: see above
    try:
        assert station.local_broker is not None and station.local_broker.port == port
        centre.start()
        s = centre.session("officer")
        wait_until(lambda: "sim-001" in s.get(f"{centre.url}/stations", timeout=10).text,
                   30, "the simulated station on the grid")
        event = station.station.alarm.raise_alarm("simulator", 0.1).result(5)
        alarms = wait_until(lambda: centre.alarms(s), 30, "the press on the duty screen")
        assert [(a["station"], a["first_event"]) for a in alarms] == [("sim-001", event.id)]
    finally:
        centre.stop()
        station.stop()
