"""broker_config/bridge-county.conf, as shipped (address and TLS files aside): what goes
up to the county and what comes down, between two real brokers."""

from __future__ import annotations

from pathlib import Path

from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_sim.localbroker import Mosquitto
from pingan_sim.township import CENTRE, CONFIG_DIR, Client, TownshipBroker, wait_for

T = "pingan/v1/t01"


def county_bridge(port: int) -> str:
    """The shipped bridge pointed at a loopback county broker without TLS."""
    text = (CONFIG_DIR / "bridge-county.conf").read_text()
    old = "address county-broker.example.gov.cn:8883"
    assert old in text
    text = text.replace(old, f"address 127.0.0.1:{port}")
    lines = [line for line in text.splitlines() if not line.startswith("bridge_")
             or line.startswith("bridge_protocol_version")]
    return "\n".join(lines) + "\n"


def test_bridge_sends_station_traffic_up_and_commands_down(tmp_path: Path):
    county = Mosquitto(tmp_path / "county", persistence=False).start()
    town = TownshipBroker(tmp_path / "township",
                          extras={"bridge-county.conf": county_bridge(county.port)})
    clients: list[Client] = []
    try:
        town.start()
        up = Client()
        clients.append(up)
        assert up.connect(county.port)
        up.subscribe("pingan/#")
        bundle = provision.add_station(town.town, "v001", "127.0.0.1")
        install_bundle(bundle, tmp_path / "unit")
        unit = tmp_path / "unit"
        station = Client("v001", tls=(unit / "ca.crt", unit / "station.crt",
                                      unit / "station.key"))
        clients.append(station)
        assert station.connect(town.tls_port)
        station.subscribe(f"{T}/v001/cmd", f"{T}/all/cmd")
        hq = Client()
        clients.append(hq)
        assert hq.connect(town.plain_port, CENTRE, town.centre_password)
        assert wait_for(lambda: "Connecting bridge" in town.log(), 5), town.log()

        # Up: the bridge may still be connecting; retry a marker until it crosses.
        assert wait_for(lambda: not station.publish(f"{T}/v001/events", b"e").is_failure
                        and up.received("/events"), 10), town.log()
        hq.publish(f"{T}/v002/cmd", b"local-command")  # the centre's own: stays local
        station.publish(f"{T}/v001/cmd/result", b"r")
        station.publish(f"{T}/v001/state", b"s", retain=True)  # last: the marker
        wait_for(lambda: up.received("/state"), 5)

        # Down: the county commands one station and the whole township.
        county_client = Client()
        clients.append(county_client)
        assert county_client.connect(county.port)
        county_client.publish(f"{T}/v001/cmd", b"from-county")
        county_client.publish(f"{T}/all/cmd", b"county-all")
        got = wait_for(lambda: len(station.received()) >= 2 and station.received(), 5)
        assert got == [(f"{T}/v001/cmd", b"from-county"), (f"{T}/all/cmd", b"county-all")]

        topics = {t for t, _ in up.received()}
        assert {f"{T}/v001/events", f"{T}/v001/cmd/result", f"{T}/v001/state"} <= topics
        assert f"{T}/v002/cmd" not in topics, "local commands must not go up"
    finally:
        for c in clients:
            c.close()
        town.stop()
        county.stop()
