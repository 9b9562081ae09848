"""The township broker as shipped (broker_config/), with identities from the centre's CA:
each station speaks only as itself and hears only its own commands. Isolation is judged
by what is delivered, never by SUBACK (the broker grants any subscription)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_sim.township import CENTRE, Client, TownshipBroker, town_with_units, unit, wait_for

T = "pingan/v1/t01"


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TownshipBroker]:
    broker = town_with_units(tmp_path_factory.mktemp("township"))
    yield broker
    broker.stop()


def station(town: TownshipBroker, clients: list[Client], name: str,
            client_id: str | None = None) -> Client:
    c = Client(client_id if client_id is not None else name, tls=unit(town, name))
    clients.append(c)
    assert c.connect(town.tls_port), f"{name} refused: {c.connack}\n{town.log()}"
    return c


def centre(town: TownshipBroker, clients: list[Client]) -> Client:
    c = Client()
    clients.append(c)
    assert c.connect(town.plain_port, CENTRE, town.centre_password), c.connack
    c.subscribe(f"{T}/#")
    return c


def ok(reason: object) -> bool:
    # 16 "No matching subscribers" is an accepted publish, not a failure.
    return not reason.is_failure  # type: ignore[attr-defined]


def test_station_publishes_its_own_topics_and_receives_its_commands(town, clients):
    hq = centre(town, clients)
    a = station(town, clients, "v001")
    a.subscribe(f"{T}/v001/cmd", f"{T}/all/cmd")

    for suffix in ("events", "cmd/result"):
        assert ok(a.publish(f"{T}/v001/{suffix}", suffix.encode()))
    assert ok(a.publish(f"{T}/v001/state", b"state", retain=True))
    got = wait_for(lambda: len(hq.received()) >= 3 and hq.received(), 5)
    assert sorted(got) == sorted([(f"{T}/v001/events", b"events"),
                                  (f"{T}/v001/cmd/result", b"cmd/result"),
                                  (f"{T}/v001/state", b"state")])

    assert ok(hq.publish(f"{T}/v001/cmd", b"to-a"))
    assert ok(hq.publish(f"{T}/all/cmd", b"to-all"))
    wait_for(lambda: len(a.received()) >= 2, 5)
    assert a.received() == [(f"{T}/v001/cmd", b"to-a"), (f"{T}/all/cmd", b"to-all")]


def test_station_cannot_publish_as_another_or_command_anyone(town, clients):
    hq = centre(town, clients)
    b = station(town, clients, "v002")
    b.subscribe(f"{T}/v002/cmd", f"{T}/all/cmd")
    a = station(town, clients, "v001")

    forbidden = [f"{T}/v002/events", f"{T}/v002/state", f"{T}/v002/cmd/result",
                 f"{T}/v002/cmd", f"{T}/all/cmd", f"{T}/v001/cmd", f"{T}/v001/other",
                 "elsewhere/v001/events"]
    reasons = [a.publish(topic, b"forged") for topic in forbidden]
    assert [r.value for r in reasons] == [135] * len(forbidden)  # 135 Not authorized
    # A marker A may send: once it arrives, any forged message would have arrived too.
    assert ok(a.publish(f"{T}/v001/events", b"marker"))
    wait_for(lambda: hq.received("/v001/events"), 5)
    assert hq.received() == [(f"{T}/v001/events", b"marker")]
    assert b.received() == []


def test_station_cannot_read_another_stations_commands_or_events(town, clients):
    hq = centre(town, clients)
    a = station(town, clients, "v001")
    a.subscribe(f"{T}/v002/cmd", f"{T}/v002/events", f"{T}/v002/state", f"{T}/+/events",
                "pingan/v1/#", "#", f"{T}/v001/cmd")
    b = station(town, clients, "v002")
    b.subscribe(f"{T}/v002/cmd")

    assert ok(b.publish(f"{T}/v002/events", b"b-event"))
    assert ok(b.publish(f"{T}/v002/state", b"b-state", retain=True))
    assert ok(hq.publish(f"{T}/v002/cmd", b"for-b"))
    wait_for(lambda: b.received("/cmd"), 5)  # B got its command: it was really sent
    assert ok(hq.publish(f"{T}/v001/cmd", b"marker-for-a"))
    wait_for(lambda: a.received(), 5)
    time.sleep(0.1)  # anything of B's would have come before the marker; give it a moment
    # One copy per matching subscription (three of A's match): only A's own command.
    assert set(a.received()) == {(f"{T}/v001/cmd", b"marker-for-a")}
    assert b.received() == [(f"{T}/v002/cmd", b"for-b")]


def test_a_station_cannot_take_over_another_stations_session(town, clients):
    b = station(town, clients, "v002")
    b.subscribe(f"{T}/v002/cmd")
    # A dials in with B's client id: the broker replaces it with A's certificate name.
    station(town, clients, "v001", client_id="v002")
    time.sleep(0.2)
    assert not b.disconnected.is_set(), "B was kicked off by A using its client id"
    hq = centre(town, clients)
    assert ok(hq.publish(f"{T}/v002/cmd", b"still-b"))
    assert wait_for(lambda: b.received(), 5) == [(f"{T}/v002/cmd", b"still-b")]


def test_anonymous_wrong_password_and_foreign_certificates_are_refused(town, clients,
                                                                       tmp_path):
    for username, password in [(None, None), (CENTRE, "wrong"), ("v001", ""),
                               ("centre.nobody", "x")]:
        c = Client()
        clients.append(c)
        assert not c.connect(town.plain_port, username, password), (username, c.connack)
        assert c.connack is not None and c.connack.value == 135  # Not authorized

    # The station port without a client certificate, then with another township's.
    no_cert = Client("v001")
    no_cert.client.tls_set(ca_certs=str(town.town.ca_crt))
    clients.append(no_cert)
    assert not no_cert.connect(town.tls_port)
    other = provision.Township(tmp_path / "other")
    provision.init(other, "t02", ["127.0.0.1"])
    provision.add_station(other, "v001", "127.0.0.1")
    install_bundle(other.bundle("v001"), tmp_path / "foreign")
    foreign = Client("v001", tls=(town.town.ca_crt, tmp_path / "foreign" / "station.crt",
                                  tmp_path / "foreign" / "station.key"))
    clients.append(foreign)
    assert not foreign.connect(town.tls_port)
    assert foreign.connack is None  # refused in the handshake, never reached MQTT


def test_revoked_certificate_is_refused_after_reload(town, clients):
    bundle = provision.add_station(town.town, "v009", "127.0.0.1")
    install_bundle(bundle, town.town.dir.parent / "units" / "v009")
    station(town, clients, "v009")  # accepted before revocation

    failures_before = town.log().count("certificate verify failed")
    provision.revoke(town.town, "v009")
    town.reload()
    deadline = time.monotonic() + 5
    refused = False
    while not refused and time.monotonic() < deadline:
        c = Client("v009", tls=unit(town, "v009"))
        clients.append(c)
        refused = not c.connect(town.tls_port, timeout=2)
    assert refused, "revoked certificate still accepted"
    # mosquitto writes its log line a moment after it closes the connection.
    assert wait_for(lambda: town.log().count("certificate verify failed") > failures_before, 5)
    station(town, clients, "v001")  # the others are unaffected


def test_last_will_on_own_state_is_delivered(town, clients):
    hq = centre(town, clients)
    will = Client("v002", tls=unit(town, "v002"), will=(f"{T}/v002/state", b"offline"))
    assert will.connect(town.tls_port)
    sock = will.client.socket()
    assert sock is not None
    will.client.loop_stop()
    sock.close()  # vanish without DISCONNECT, as a unit losing power
    got = wait_for(lambda: hq.received("/v002/state"), 30)
    assert got[-1] == (f"{T}/v002/state", b"offline")


def test_oversized_packet_is_refused(town, clients):
    hq = centre(town, clients)
    a = station(town, clients, "v001")
    a.client.publish(f"{T}/v001/events", b"x" * 70_000, qos=1)
    assert wait_for(a.disconnected.is_set, 5), "a 70 KB publish must be refused"
    assert hq.received() == []
