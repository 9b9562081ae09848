"""broker_config/county/, as shipped (ports and paths changed): one county broker that
trusts two township CAs, each of which issued a station `v001`. Station identities are
township-qualified, so t01/v001 can neither take over t02/v001 nor write as it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_sim.localbroker import Mosquitto, free_port
from pingan_sim.township import CONFIG_DIR, Client, wait_for

COUNTY = CONFIG_DIR / "county"


def county_broker(tmp: Path) -> tuple[Mosquitto, int, dict[str, tuple[Path, Path, Path]], str]:
    """The county broker, the files of t01/v001 and t02/v001, the county.ops password."""
    conf_dir, data = tmp / "county", tmp / "data"
    conf_dir.mkdir()
    data.mkdir()
    towns = {}
    for township in ("t01", "t02"):
        town = provision.Township(tmp / township)
        provision.init(town, township, ["127.0.0.1"])
        install_bundle(provision.add_station(town, "v001", "127.0.0.1"), tmp / "units" / township)
        towns[township] = town
    cas = b"".join(t.ca_crt.read_bytes() for t in towns.values())
    (conf_dir / "township-cas.pem").write_bytes(cas)
    (conf_dir / "township-crls.pem").write_bytes(b"".join(t.crl.read_bytes()
                                                          for t in towns.values()))
    # The county's server certificate: here one from t01's CA, which every unit's CA
    # file below trusts (a real county gives its units its own CA in the bundle).
    (conf_dir / "server.crt").write_bytes(towns["t01"].server_crt.read_bytes())
    (conf_dir / "server.key").write_bytes(towns["t01"].server_key.read_bytes())
    password = "county-secret"
    (conf_dir / "passwd").write_text(f"county.ops:{provision.passwd_hash(password)}\n")
    (conf_dir / "acl").write_text((COUNTY / "acl").read_text())
    tls_port, plain_port = free_port(), free_port()
    conf = (COUNTY / "mosquitto.conf").read_text()
    for old, new in [("/etc/mosquitto/county/", f"{conf_dir}/"),
                     ("/var/lib/mosquitto/", f"{data}/"),
                     ("/var/log/mosquitto/mosquitto.log", f"{data}/mosquitto.log"),
                     ("\nlistener 8883\n", f"\nlistener {tls_port} 127.0.0.1\n"),
                     ("\nlistener 1883 127.0.0.1\n", f"\nlistener {plain_port} 127.0.0.1\n")]:
        assert old in conf, old
        conf = conf.replace(old, new)
    if os.geteuid() == 0:
        conf += "\nuser root\n"
    units = {}
    for township in towns:
        d = tmp / "units" / township
        units[township] = (conf_dir / "township-cas.pem", d / "station.crt", d / "station.key")
    broker = Mosquitto(data, plain_port, config=conf)
    broker.tls_port = tls_port  # type: ignore[attr-defined]
    return broker, tls_port, units, password


def test_same_station_id_in_two_townships_stays_apart_on_a_county_broker(tmp_path: Path):
    broker, tls_port, units, password = county_broker(tmp_path)
    broker.start()
    clients: list[Client] = []

    def connect(township: str, client_id: str) -> Client:
        c = Client(client_id, tls=units[township])
        clients.append(c)
        assert c.connect(tls_port), f"{township} refused: {c.connack}"
        return c

    try:
        county = Client()
        clients.append(county)
        assert county.connect(broker.port, "county.ops", password)
        county.subscribe("pingan/v1/#")
        t2 = connect("t02", "v001")
        t2.subscribe("pingan/v1/t02/v001/cmd")
        thief = connect("t01", "t02/v001")  # t01's unit asks for t02/v001's client id
        time.sleep(0.3)
        assert not t2.disconnected.is_set(), "t02/v001 was taken over"
        assert thief.publish("pingan/v1/t02/v001/events", b"forged").value == 135
        thief.close()
        t1 = connect("t01", "v001")
        t1.subscribe("pingan/v1/t02/v001/cmd", "pingan/v1/t01/v001/cmd")

        for topic in ("pingan/v1/t02/v001/events", "pingan/v1/t02/v001/cmd/result",
                      "pingan/v1/t02/v001/state"):
            assert t1.publish(topic, b"forged").value == 135
        assert not t2.publish("pingan/v1/t02/v001/events", b"t2").is_failure
        assert not t1.publish("pingan/v1/t01/v001/events", b"t1").is_failure
        got = wait_for(lambda: len(county.received("/events")) >= 2 and county.received(), 5)
        assert sorted(got) == [("pingan/v1/t01/v001/events", b"t1"),
                               ("pingan/v1/t02/v001/events", b"t2")]

        assert not county.publish("pingan/v1/t02/v001/cmd", b"for-t2").is_failure
        assert wait_for(lambda: t2.received(), 5) == [("pingan/v1/t02/v001/cmd", b"for-t2")]
        assert not county.publish("pingan/v1/t01/v001/cmd", b"for-t1").is_failure
        wait_for(lambda: t1.received(), 5)
        assert t1.received() == [("pingan/v1/t01/v001/cmd", b"for-t1")]  # not t2's
        log = (broker.workdir / "mosquitto.log").read_text()
        assert "u't01/v001'" in log and "u't02/v001'" in log
    finally:
        for c in clients:
            c.close()
        broker.stop()
