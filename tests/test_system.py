"""The whole system, on the shipped configuration, as the docs build it:

- the township: `pingan-centre broker init`, `add-account centre.ops`, `add-station` for
  three units (broker_config/README.md), Mosquitto from broker_config/mosquitto.conf with
  the ACL the tool wrote, TLS for the stations (only ports and paths changed);
- three stations, each from its bundle (`pingan-edge install-bundle`);
- the console (`pingan-centre serve`) on its loopback account;
- a county broker, bridged by broker_config/bridge-county.conf.

Events, state, command results, health, the self-test, `alarm.ack` and the LED flow end
to end, and the county sees what docs/topics.md and bridge-county.conf promise."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from centre_helpers import Centre, Database, database
from conftest import station_toml, wait_until
from test_broker_bridge import county_bridge

from edge import config as config_mod
from edge import selftest
from edge.station import Station
from edge.unit.indicator import Mode
from pingan_sim.localbroker import Mosquitto, free_port
from pingan_sim.township import CONFIG_DIR, Client, render

T = "pingan/v1/t01"
STATIONS = ("v001", "v002", "v003")
BIN = Path(sys.executable).parent


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield from database("sqlite", tmp_path)


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def bodies(client: Client, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(p) for _, p in client.received(suffix)]


def test_the_whole_system_on_the_shipped_configuration(tmp_path: Path, db: Database):
    # The township, as broker_config/README.md sets it up.
    town = tmp_path / "pingan"
    centre_cli = str(BIN / "pingan-centre")
    run(centre_cli, "broker", "init", "t01", "--host", "127.0.0.1", "--dir", str(town))
    (tmp_path / "pw").write_text("console-password-for-the-test\n")
    run(centre_cli, "broker", "add-account", "centre.ops", "--dir", str(town),
        "--password-file", str(tmp_path / "pw"))
    tls_port, plain_port = free_port(), free_port()
    for name in STATIONS:
        run(centre_cli, "broker", "add-station", name, "--dir", str(town),
            "--broker-host", "127.0.0.1", "--broker-port", str(tls_port))
    county = Mosquitto(tmp_path / "county", persistence=False).start()
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "bridge-county.conf").write_text(county_bridge(county.port))
    data = tmp_path / "broker-data"
    data.mkdir()
    conf = render((CONFIG_DIR / "mosquitto.conf").read_text(), town, data, tls_port,
                  plain_port, conf_d)
    broker = Mosquitto(data, plain_port, config=conf).start()

    up = Client("county-watch")
    stations: dict[str, Station] = {}
    centre: Centre | None = None
    try:
        assert up.connect(county.port)
        up.subscribe("pingan/#")
        # The console on its loopback account.
        centre = Centre(tmp_path, db, plain_port, "t01", broker={
            "host": "127.0.0.1", "port": plain_port, "username": "centre.ops",
            "password": "console-password-for-the-test"}).start()

        # Three units, each installed from its bundle. v003 ran `pingan-edge selftest`
        # before it started: the result waits in its outbox.
        for name in STATIONS:
            dest = tmp_path / "units" / name
            run(str(BIN / "pingan-edge"), "install-bundle",
                str(town / "bundles" / f"{name}.tar.gz"), "--dest", str(dest))
            toml = tomllib.loads((dest / "station.toml").read_text())
            section = {**toml["broker"], "host": "127.0.0.1", "port": tls_port}
            for key in ("ca_file", "cert_file", "key_file"):
                section[key] = str(dest / Path(section[key]).name)
            cfg = config_mod.parse(station_toml(
                tmp_path / "data" / name, tls_port, station=toml["station"]["id"],
                broker=section, health={"interval_s": 2}))
            if name == "v003":
                row = selftest.Row("township_broker", "乡镇平台", "township broker", "pass")
                selftest.record(cfg, selftest.event(cfg, [row], "technician"))
            stations[name] = Station(cfg)
            stations[name].start()

        # State and health of every station, at the console.
        wait_until(lambda: db.rows("SELECT count(*) FROM console_station WHERE online")[0][0]
                   == 3, 30, "three stations online at the console")
        wait_until(lambda: db.rows("SELECT count(*) FROM console_healthlatest")[0][0] == 3,
                   30, "health of three stations at the console")
        # The self-test, sent when v003 ran.
        wait_until(lambda: db.rows("SELECT last_selftest_passed FROM console_station "
                                   "WHERE name = 'v003'") == [(1,)], 30, "the self-test")

        # A panic press: the card, the officer's acknowledgement, the station's LED.
        v001 = stations["v001"]
        pin = v001.pin_factory.pin(v001.config.pins.panic)
        pin.drive_low()
        wait_until(lambda: v001.alarm.indicator.mode is not Mode.IDLE, 5, "press seen")
        pin.drive_high()
        officer = centre.session("officer")
        alarms = wait_until(lambda: centre.alarms(officer), 30, "the card on the duty screen")
        assert [a["station"] for a in alarms] == ["v001"]
        wait_until(lambda: v001.alarm.indicator.mode is Mode.DELIVERED, 10, "LED delivered")
        assert centre.post(officer, f"/alarm/{alarms[0]['id']}/ack").ok
        wait_until(lambda: v001.alarm.indicator.mode is Mode.ACKNOWLEDGED, 15,
                   "LED shows the township received it")
        # The station's command result, at the console.
        wait_until(lambda: db.rows("SELECT result_ok FROM console_command "
                                   "WHERE cmd = 'alarm.ack'") == [(1,)], 15, "ack result")
        wait_until(lambda: db.rows("SELECT count(*) FROM console_transition "
                                   "WHERE action = 'station_received'")[0][0], 15,
                   "the card shows the station received it")

        # The county: what the bridge promises goes up...
        def county_has(suffix: str, name: str) -> bool:
            return any(b.get("station") == name for b in bodies(up, suffix))

        for name in STATIONS:
            wait_until(lambda n=name: county_has("/state", n) and county_has("/health", n),
                       20, f"{name}'s state and health at the county")
        alarm_id = alarms[0]["first_event"]
        wait_until(lambda: any(b["id"] == alarm_id for b in bodies(up, "/v001/events")), 10,
                   "the alarm at the county")
        wait_until(lambda: any(b["payload"]["cmd"] == "alarm.ack"
                               for b in bodies(up, "/v001/cmd/result")), 10,
                   "the ack's result at the county")
        assert any(b["type"] == "selftest" for b in bodies(up, "/v003/events"))
        # ...a county command comes down, and its result reaches both.
        cmd_id = f"county-{uuid.uuid4().hex[:8]}"
        assert not up.publish(f"{T}/v002/cmd", json.dumps(
            {"cmd": "state.get", "id": cmd_id}).encode()).is_failure
        wait_until(lambda: any(b["payload"]["cmd_id"] == cmd_id
                               for b in bodies(up, "/v002/cmd/result")), 15,
                   "the county's command answered")
        wait_until(lambda: db.rows("SELECT count(*) FROM console_event WHERE type = "
                                   "'cmd.result' AND station_id = 'v002'")[0][0], 15,
                   "the county's command result at the console")
        # The console's own commands stay in the township.
        assert up.received("/cmd") == [(f"{T}/v002/cmd", json.dumps(
            {"cmd": "state.get", "id": cmd_id}).encode())]
        # Nothing was refused or kept aside anywhere on the way.
        assert db.rows("SELECT topic, reason FROM console_quarantined") == []
        for st in stations.values():
            assert [p.code for p in st.health.problems()] == []
        grid = officer.get(f"{centre.url}/stations", timeout=10).text
        assert all(f'href="/station?id={n}"' in grid for n in STATIONS)
    finally:
        for st in stations.values():
            st.stop()
        if centre is not None:
            centre.stop()
        up.close()
        broker.stop()
        county.stop()
