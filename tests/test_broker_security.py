"""Township broker security (issue 9, item 6), each on the real broker as shipped: the
centre's password hash, the township bound into a station's identity, connection
limits, centre and station client ids kept apart, and TLS 1.2 AEAD suites only."""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_centre.cli import main as centre_main
from pingan_sim.township import CENTRE, Client, TownshipBroker, town_with_units, unit, wait_for

T = "pingan/v1/t01"


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TownshipBroker]:
    broker = town_with_units(tmp_path_factory.mktemp("township"))
    yield broker
    broker.stop()


def station(town: TownshipBroker, clients: list[Client], name: str) -> Client:
    c = Client(name, tls=unit(town, name))
    clients.append(c)
    assert c.connect(town.tls_port), f"{name} refused: {c.connack}\n{town.log()}"
    return c


# --- the centre's password ------------------------------------------------------------

def test_centre_password_is_hashed_here_with_many_rounds_and_the_broker_accepts_it(
        town, clients, tmp_path, monkeypatch):
    name, entry = town.town.passwd.read_text().strip().split(":", 1)
    _, kind, rounds, salt, digest = entry.split("$")
    assert (name, kind) == (CENTRE, "7") and int(rounds) >= 100_000  # mosquitto's is 101
    assert hashlib.pbkdf2_hmac("sha512", town.centre_password.encode(),
                               base64.b64decode(salt), int(rounds)) == base64.b64decode(digest)
    good = Client()
    clients.append(good)
    assert good.connect(town.plain_port, CENTRE, town.centre_password), good.connack
    bad = Client()
    clients.append(bad)
    assert not bad.connect(town.plain_port, CENTRE, town.centre_password + "x")

    # No helper program: nothing for `ps` or /proc/<pid>/cmdline to show.
    monkeypatch.setenv("PATH", "")
    other = provision.Township(tmp_path / "t")
    provision.init(other, "t01", ["127.0.0.1"])
    provision.add_account(other, "centre.a", "first")
    provision.add_account(other, "centre.b")
    provision.add_account(other, "centre.a", "second")  # a change replaces the entry
    assert provision.accounts(other) == ["centre.b", "centre.a"]
    assert "user centre.a\n" in other.acl.read_text()  # the ACL names every account


def test_a_failed_account_change_does_not_print_the_password(tmp_path, capsys):
    town = tmp_path / "town"
    assert centre_main(["broker", "init", "t01", "--dir", str(town), "--host", "h"]) == 0
    secret = tmp_path / "secret"
    secret.write_text("correct-horse-battery\n")
    (town / "passwd").unlink()
    (town / "passwd").mkdir()  # cannot be written
    assert centre_main(["broker", "add-account", "centre.ops", "--dir", str(town),
                        "--password-file", str(secret)]) == 1
    out = capsys.readouterr()
    assert "passwd" in out.err and "correct-horse" not in out.err + out.out


# --- the township in the station's identity -------------------------------------------

def test_a_station_cannot_write_into_another_townships_tree(town, clients):
    hq = Client()
    clients.append(hq)
    assert hq.connect(town.plain_port, CENTRE, town.centre_password)
    hq.subscribe("pingan/v1/#")
    a = station(town, clients, "v001")
    forged = ["pingan/v1/t02/v001/events", "pingan/v1/t02/v001/cmd/result",
              "pingan/v1/t01/v001/x/events", "pingan/v1/v001/events"]
    assert [a.publish(t, b"forged").value for t in forged] == [135] * len(forged)
    # Nor store retained messages there (a county's next subscriber would get them all).
    assert a.publish("pingan/v1/t02/v001/state", b"x" * 60_000, retain=True).value == 135
    assert not a.publish(f"{T}/v001/events", b"marker").is_failure
    wait_for(lambda: hq.received("/events"), 5)
    assert hq.received() == [(f"{T}/v001/events", b"marker")]
    assert "u't01/v001'" in town.log()


# --- limits ---------------------------------------------------------------------------

def _idle_sockets(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _closed_by_broker(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_connections_beyond_the_listener_limits_are_closed(tmp_path):
    """The shipped limits, made small enough to reach: a flood of idle sockets on the
    station port is cut at max_connections, and stations get in again once it clears.
    (The loopback listener's limit works alike; it is not probed here because mosquitto
    2.0.11 miscounts a connection closed before CONNECT, as the start-up probe's is.)"""
    town = TownshipBroker(tmp_path, changes={"max_connections 2500": "max_connections 3"})
    bundle = provision.add_station(town.town, "v001", "127.0.0.1")
    install_bundle(bundle, tmp_path / "unit")
    files = (tmp_path / "unit" / "ca.crt", tmp_path / "unit" / "station.crt",
             tmp_path / "unit" / "station.key")
    town.start()
    flood: list[socket.socket] = []
    try:
        flood = _idle_sockets(town.tls_port, 3)
        extra = _idle_sockets(town.tls_port, 1)[0]
        flood.append(extra)
        assert _closed_by_broker(extra, 5), "a 4th connection was kept"
        assert not any(_closed_by_broker(s, 0.2) for s in flood[:3])
        refused = Client("v001", tls=files)
        assert not refused.connect(town.tls_port, timeout=3)
        refused.close()
        for s in flood:
            s.close()
        admitted = Client("v001", tls=files)
        assert wait_for(lambda: admitted.connect(town.tls_port, timeout=3), 10)
        admitted.close()
    finally:
        for s in flood:
            s.close()
        town.stop()


@pytest.mark.soak
def test_a_socket_that_never_speaks_is_closed(town):
    """Mosquitto 2.0 has no handshake timeout setting: it closes a connection that sends
    no CONNECT after 1.5 × its default 60 s keepalive. Measured, not configured."""
    sock = _idle_sockets(town.tls_port, 1)[0]
    start = time.monotonic()
    assert _closed_by_broker(sock, 120)
    assert time.monotonic() - start < 100
    sock.close()


# --- client ids: centre and stations apart --------------------------------------------

def test_a_centre_login_cannot_take_a_stations_client_id(town, clients):
    a = station(town, clients, "v001")
    a.subscribe(f"{T}/v001/cmd")
    hq = Client("t01/v001")  # the station's client id, on the loopback listener
    clients.append(hq)
    assert hq.connect(town.plain_port, CENTRE, town.centre_password)
    time.sleep(0.3)
    assert not a.disconnected.is_set(), "the station was kicked off by a centre login"
    assert not hq.publish(f"{T}/v001/cmd", b"still-there").is_failure
    assert wait_for(lambda: a.received(), 5) == [(f"{T}/v001/cmd", b"still-there")]
    assert f"as {CENTRE} " in town.log()  # the broker used the account name


# --- TLS 1.2 suites -------------------------------------------------------------------

def _handshake(town: TownshipBroker, station_name: str, ciphers: str | None,
               version: ssl.TLSVersion) -> str:
    ca, cert, key = unit(town, station_name)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", town.tls_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[0]


def test_tls12_offers_only_forward_secret_aead_suites(town):
    for cbc in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384",
                "ECDHE-ECDSA-AES128-SHA256"):
        with pytest.raises(ssl.SSLError):
            _handshake(town, "v001", cbc, ssl.TLSVersion.TLSv1_2)
    for aead in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        assert _handshake(town, "v001", aead, ssl.TLSVersion.TLSv1_2) == aead
    assert _handshake(town, "v002", None, ssl.TLSVersion.TLSv1_3).startswith("TLS_")
