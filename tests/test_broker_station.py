"""A real Station provisioned with a bundle, against the township broker as shipped:
press → township over TLS with certificate identity; refused publishes parked, not
blocking; TLS failures explained on the unit."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, schema, station_toml, wait_until

from edge import config as config_mod
from edge.link import tlscheck
from edge.link.uplink import MAX_REFUSALS
from edge.station import Station
from edge.unit.bundle import install_bundle
from edge.unit.indicator import Mode
from pingan_centre.broker import provision
from pingan_sim.township import CENTRE, Client, TownshipBroker

T = "pingan/v1/t01"


@pytest.fixture
def town(tmp_path: Path) -> Iterator[TownshipBroker]:
    broker = TownshipBroker(tmp_path / "township")
    yield broker
    broker.stop()


@pytest.fixture
def run_station(tmp_path: Path) -> Iterator[Callable[..., Station]]:
    started: list[Station] = []

    def run(town: TownshipBroker, bundle: Path, station_id: str | None = None,
            **broker: Any) -> Station:
        """Install `bundle` as a technician would, then start a station with it."""
        toml = tomllib.loads(install_bundle(bundle, tmp_path / "unit-tls").read_text())
        section = toml["broker"]
        section.update(host="127.0.0.1", port=town.tls_port, **broker)
        config = config_mod.parse(station_toml(tmp_path / "station", town.tls_port,
                                               station=station_id or toml["station"]["id"],
                                               broker=section))
        station = Station(config)
        station.start()
        started.append(station)
        return station

    yield run
    for s in started:
        with contextlib.suppress(Exception):  # already stopped by the test
            s.stop()


@pytest.fixture
def centre(town: TownshipBroker) -> Callable[[], Client]:
    made: list[Client] = []

    def connect() -> Client:
        c = Client()
        assert c.connect(town.plain_port, CENTRE, town.centre_password), c.connack
        c.subscribe(f"{T}/#")
        made.append(c)
        return c

    yield connect  # type: ignore[misc]
    for c in made:
        c.close()


def bodies(client: Client, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(p) for _, p in client.received(suffix)]


def problem(station: Station, code: str) -> str:
    found = [p.message.en for p in station.health.problems() if p.code == code]
    return found[0] if found else ""


def test_press_reaches_township_over_tls_with_certificate_identity(town, run_station, centre):
    town.start()
    hq = centre()
    station = run_station(town, provision.add_station(town.town, "v001", "127.0.0.1"))
    wait_until(lambda: station.uplink.connected, what="station connected over TLS")
    assert station.config.broker.tls and station.config.broker.port == town.tls_port
    pin = station.pin_factory.pin(station.config.pins.panic)
    pin.drive_low()
    time.sleep(0.25)  # longer than panic_hold_s = 0.1
    pin.drive_high()

    alarm = wait_until(lambda: bodies(hq, "/v001/events"), what="alarm at the centre")
    assert [(e["type"], e["station"], e["seq"]) for e in alarm] == [("alarm.panic", "v001", 1)]
    schema("event").validate(alarm[0])
    state = wait_until(lambda: bodies(hq, "/v001/state"), what="state")
    assert state[-1]["online"] is True and state[-1]["problems"] == []

    hq.publish(f"{T}/v001/cmd", json.dumps({"cmd": "alarm.ack", "id": "c-1",
                                            "event_id": alarm[0]["id"], "by": "wang"}).encode())
    result = wait_until(lambda: bodies(hq, "/v001/cmd/result"), what="command result")
    assert result[0]["payload"]["ok"] is True and result[0]["payload"]["cmd_id"] == "c-1"
    wait_until(lambda: station.alarm.indicator.mode is Mode.ACKNOWLEDGED, what="LED shows ack")
    assert "u't01/v001'" in town.log()  # the broker saw the certificate's name as the user


def test_refused_alarm_is_retried_then_parked_without_blocking_and_resent_after_restart(
        town, run_station, centre, caplog):
    acl = town.town.dir / "acl"
    shipped = acl.read_text()
    rule = "pattern write pingan/v1/%u/events\n"
    assert rule in shipped
    acl.write_text(shipped.replace(rule, ""))
    town.start()
    hq = centre()
    bundle = provision.add_station(town.town, "v001", "127.0.0.1")
    station = run_station(town, bundle)
    wait_until(lambda: station.uplink.connected)

    alarm = station.alarm.raise_alarm("simulator", 0.0).result(5)
    # The refused alarm does not hold up what follows: a command is answered meanwhile.
    hq.publish(f"{T}/v001/cmd", b'{"cmd": "state.get", "id": "c-2"}')
    result = wait_until(lambda: bodies(hq, "/v001/cmd/result"), what="command result")
    assert result[0]["payload"]["cmd_id"] == "c-2"

    # backoff_max_s is 0.5 in tests: three refusals within a few seconds, then parked.
    parked = wait_until(lambda: station.outbox.parked(), what="alarm parked")
    assert parked == [(alarm.seq, "alarm.panic", "Not authorized")]
    assert station.outbox.pending_count() == 0
    assert station.alarm.indicator.mode is Mode.PENDING  # staff still see "not delivered"
    # The row is parked just before the problem text is updated: wait for the text.
    wait_until(lambda: "refused 1 events (1 alarms" in problem(station, "publish_rejected"),
               what="publish_rejected names the parked alarm")
    state = wait_until(lambda: [s for s in bodies(hq, "/v001/state")
                                if any(p["code"] == "publish_rejected" and "1 alarms" in
                                       p["message"]["en"] for p in s["problems"])],
                       what="problem on the state topic")
    assert state
    time.sleep(1.2)  # parked rows are not retried: no more refusals, still parked
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(
        "uplink.publish_")] == ["uplink.publish_rejected"] * (MAX_REFUSALS - 1) + [
        "uplink.publish_parked"]
    assert station.outbox.parked() == parked
    assert bodies(hq, "/v001/events") == []

    # The township fixes its ACL; a restart of the station sends the alarm again.
    acl.write_text(shipped)
    town.reload()
    station.stop()
    station = run_station(town, bundle)
    events = wait_until(lambda: bodies(hq, "/v001/events"), what="alarm after the fix")
    assert [(e["id"], e["type"]) for e in events] == [(alarm.id, "alarm.panic")]
    wait_until(lambda: station.alarm.indicator.mode is Mode.DELIVERED, what="LED delivered")
    wait_until(lambda: not problem(station, "publish_rejected"), what="problem cleared")
    assert station.outbox.parked() == []


def test_tls_failures_are_explained_on_the_unit(town, run_station, tmp_path):
    town.start()
    other = provision.Township(tmp_path / "other")
    provision.init(other, "t02", ["127.0.0.1"])

    # Wrong CA: the unit holds another township's CA, so it cannot trust this broker.
    wrong = run_station(town, provision.add_station(town.town, "v001", "127.0.0.1"),
                        ca_file=str(other.ca_crt))
    assert "not signed by the CA" in wait_until(lambda: problem(wrong, "uplink_tls"))
    assert not wrong.uplink.connected
    assert any(p["code"] == "uplink_tls" for p in wrong.status()["problems"])
    wrong.stop()

    # Revoked: the broker closes the handshake; the unit says what that most likely means.
    bundle = provision.add_station(town.town, "v002", "127.0.0.1")
    provision.revoke(town.town, "v002")
    town.reload()
    probe = tmp_path / "probe"
    install_bundle(bundle, probe)
    town.wait_refused((probe / "ca.crt", probe / "station.crt", probe / "station.key"))
    revoked = run_station(town, bundle)
    assert "refused this station's certificate (revoked" in wait_until(
        lambda: problem(revoked, "uplink_tls"), what="revoked problem")
    revoked.stop()

    # Expired: the unit checks its own certificate against its clock.
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    expired = run_station(town, provision.add_station(town.town, "v003", "127.0.0.1",
                                                      days=365, issued_at=old))
    text = wait_until(lambda: problem(expired, "uplink_tls"), what="expired problem")
    assert "station certificate" in text and "expired" in text
    expired.stop()

    # A good bundle connects and the problem clears; one ending within 30 days connects
    # and warns the township on the state topic, in time to send a new bundle.
    hq = Client()
    assert hq.connect(town.plain_port, CENTRE, town.centre_password)
    hq.subscribe(f"{T}/#")
    ending = dt.datetime.now(dt.UTC) - dt.timedelta(days=355)
    good = run_station(town, provision.add_station(town.town, "v004", "127.0.0.1",
                                                   days=365, issued_at=ending))
    wait_until(lambda: good.uplink.connected, what="good bundle connects")
    assert problem(good, "uplink_tls") == ""
    state = wait_until(lambda: [p for s in bodies(hq, "/v004/state") for p in s["problems"]
                                if p["code"] == "cert_expiring"], what="expiry warning")
    assert "station certificate expires" in state[0]["message"]["en"]
    hq.close()


def test_clock_not_synced_is_named_as_the_cause(town):
    """A Pi without RTC boots with an old clock: the certificate looks not yet valid."""
    bundle = provision.add_station(town.town, "v001", "127.0.0.1")
    install_bundle(bundle, town.town.dir / "unit")
    broker = make_config(town.town.dir / "s", 1, broker={
        "tls": True, "ca_file": str(town.town.dir / "unit" / "ca.crt"),
        "cert_file": str(town.town.dir / "unit" / "station.crt"),
        "key_file": str(town.town.dir / "unit" / "station.key")}).broker
    boot = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    unsynced = tlscheck.diagnose(broker, None, synced=False, now=boot)
    assert unsynced.en.startswith("the station clock is not synced (it reads 1970-01-01")
    assert "not valid yet" in unsynced.en and "NTP" in unsynced.action
    synced = tlscheck.diagnose(broker, None, synced=True, now=boot)
    assert synced.en.startswith("the station certificate is not valid yet")
    now = dt.datetime.now(dt.UTC)
    assert tlscheck.check_files(broker, synced=True, now=now) is None


def test_station_id_not_matching_its_certificate_is_named(town, run_station):
    town.start()
    bundle = provision.add_station(town.town, "v007", "127.0.0.1")
    station = run_station(town, bundle, station_id="v001")  # a technician's typo
    wait_until(lambda: station.uplink.connected)
    assert "certificate is for ['t01/v007']" in problem(station, "cert_mismatch")
    station.alarm.raise_alarm("simulator", 0.0).result(5)
    assert "refused" in wait_until(lambda: problem(station, "publish_rejected"))


def test_missing_bundle_files_are_named_and_picked_up_once_copied(town, run_station,
                                                                  tmp_path):
    town.start()
    bundle = provision.add_station(town.town, "v001", "127.0.0.1")
    later = tmp_path / "later"
    station = run_station(town, bundle, cert_file=str(later / "station.crt"),
                          key_file=str(later / "station.key"))
    assert "cannot read the station certificate" in wait_until(
        lambda: problem(station, "uplink_tls"), what="missing files named")
    assert station.alarm.raise_alarm("simulator", 0.0).result(5).seq == 1  # the unit still works
    install_bundle(bundle, later)  # the technician copies them in
    wait_until(lambda: station.uplink.connected, what="connects with the files")
    wait_until(lambda: station.alarm.indicator.mode is Mode.DELIVERED, what="alarm delivered")
    assert problem(station, "uplink_tls") == ""
