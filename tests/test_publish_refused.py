"""A publish the township broker refuses (MQTT v5 PUBACK reason ≥ 0x80) is the problem
`publish_refused`, naming the topic and the reason, on the state topic and in `status`,
whatever was published: here the station's health telemetry, refused by an ACL that
lacks its rule. It clears once the ACL is fixed and a health report is accepted."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from conftest import station_toml, wait_until

from edge import config as config_mod
from edge.station import Station
from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_sim.township import CENTRE, Client, TownshipBroker

T = "pingan/v1/t01"


def refused(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in problems if p["code"] == "publish_refused"]


def test_a_refused_health_report_is_a_problem_until_the_acl_allows_it(tmp_path: Path):
    town = TownshipBroker(tmp_path / "township")
    acl = town.town.acl
    shipped = acl.read_text()
    rule = "pattern write pingan/v1/%u/health\n"
    assert rule in shipped
    acl.write_text(shipped.replace(rule, ""))
    town.start()
    hq = Client()
    station: Station | None = None
    try:
        assert hq.connect(town.plain_port, CENTRE, town.centre_password)
        hq.subscribe(f"{T}/#")
        bundle = provision.add_station(town.town, "v001", "127.0.0.1")
        toml = tomllib.loads(install_bundle(bundle, tmp_path / "tls").read_text())
        section = {**toml["broker"], "host": "127.0.0.1", "port": town.tls_port}
        station = Station(config_mod.parse(station_toml(
            tmp_path / "station", town.tls_port, station="v001", broker=section,
            health={"interval_s": 1})))
        station.start()

        found = wait_until(lambda: refused(station.status()["problems"]), 15,
                           "publish_refused in status")
        assert found[0]["detail"]["refused"] == [
            {"topic": f"{T}/v001/health", "reason": "Not authorized (135)"}]
        assert f"{T}/v001/health" in found[0]["message"]["en"]
        assert "乡镇平台拒收" in found[0]["message"]["zh"]

        def on_state() -> list[dict[str, Any]]:
            return [p for _, body in hq.received("/v001/state")
                    for p in refused(json.loads(body)["problems"])]

        wait_until(on_state, 15, "publish_refused on the state topic")
        # Events still flow: only the health topic is refused.
        alarm = station.alarm.raise_alarm("simulator", 0.0).result(5)
        wait_until(lambda: any(json.loads(b)["id"] == alarm.id
                               for _, b in hq.received("/v001/events")), 10, "the alarm")
        assert hq.received("/v001/health") == []

        acl.write_text(shipped)
        town.reload()
        wait_until(lambda: hq.received("/v001/health"), 15, "health accepted after the fix")
        wait_until(lambda: not refused(station.status()["problems"]), 15, "problem cleared")
    finally:
        if station is not None:
            station.stop()
        hq.close()
        town.stop()
