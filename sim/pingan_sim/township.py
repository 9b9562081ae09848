"""A real township broker on loopback: broker_config/mosquitto.conf and acl, as shipped,
with only ports and paths changed, and identities made by pingan_centre.broker.provision.

It reads broker_config/ from the source checkout (bin/setup installs this package
editable), so the tests and benches run the township's shipped configuration."""

from __future__ import annotations

import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_sim.localbroker import Mosquitto, free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "broker_config"
TOWNSHIP = "t01"
CENTRE = "centre.ops"


def render(conf: str, town_dir: Path, data_dir: Path, tls_port: int, plain_port: int,
           conf_d: Path) -> str:
    """The shipped config with test ports and paths; every substitution must apply."""
    subs = [
        ("\ninclude_dir /etc/mosquitto/conf.d\n", f"\ninclude_dir {conf_d}\n"),
        ("/etc/mosquitto/pingan/", f"{town_dir}/"),
        ("/var/lib/mosquitto/", f"{data_dir}/"),
        ("/var/log/mosquitto/mosquitto.log", f"{data_dir}/mosquitto.log"),
        ("\nlistener 8883\n", f"\nlistener {tls_port} 127.0.0.1\n"),
        ("\nlistener 1883 127.0.0.1\n", f"\nlistener {plain_port} 127.0.0.1\n"),
    ]
    for old, new in subs:
        assert old in conf, f"broker_config/mosquitto.conf no longer contains {old!r}"
        conf = conf.replace(old, new)
    if os.geteuid() == 0:
        conf += "\nuser root\n"  # else mosquitto drops to `mosquitto` and cannot write here
    return conf


class TownshipBroker:
    """`extras` are files for the include directory (e.g. a bridge), by name; `changes`
    replace shipped lines (a small limit to reach in a test), each of which must exist."""

    def __init__(self, workdir: Path, extras: dict[str, str] | None = None,
                 changes: dict[str, str] | None = None,
                 town: provision.Township | None = None) -> None:
        # `town`: a township made earlier by `provision.init` (a bench's cached CA and
        # thousands of station certificates); else a new one under `workdir`.
        if town is None:
            town = provision.Township(workdir / "pingan")
            provision.init(town, TOWNSHIP, ["127.0.0.1", "localhost"])
        self.town = town
        self.centre_password = provision.add_account(self.town, CENTRE)
        # What the tool writes is what broker_config/acl documents.
        assert self.town.acl.read_text() == (CONFIG_DIR / "acl").read_text()
        self.tls_port, self.plain_port = free_port(), free_port()
        data = workdir / "data"
        data.mkdir(parents=True)
        conf_d = workdir / "conf.d"
        conf_d.mkdir()
        for name, text in (extras or {}).items():
            (conf_d / name).write_text(text)
        conf = (CONFIG_DIR / "mosquitto.conf").read_text()
        for old, new in (changes or {}).items():
            assert f"\n{old}\n" in conf, f"broker_config/mosquitto.conf has no line {old!r}"
            conf = conf.replace(f"\n{old}\n", f"\n{new}\n")
        conf = render(conf, self.town.dir, data, self.tls_port, self.plain_port, conf_d)
        self.mosquitto = Mosquitto(data, self.plain_port, config=conf)

    def start(self) -> TownshipBroker:
        self.mosquitto.start()
        return self

    def stop(self) -> None:
        self.mosquitto.stop()

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload mosquitto` sends: rereads certificates and CRL."""
        before = self.log().count("Reloading config")
        self.mosquitto.signal(signal.SIGHUP)
        assert wait_for(lambda: self.log().count("Reloading config") > before, 5), "no reload"

    def wait_refused(self, tls: tuple[Path, Path, Path], timeout: float = 5.0) -> None:
        """Until a client with these files is refused (a reload takes effect)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            c = Client("probe", tls=tls)
            accepted = c.connect(self.tls_port, timeout=2)
            c.close()
            if not accepted:
                return
        raise AssertionError("the broker still accepts these certificate files")

    def log(self) -> str:
        path = self.mosquitto.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Client:
    """A paho v5 client that records what it was told: connect result, PUBACK reasons,
    messages delivered. TLS with a station's files, or a password on the plain port."""

    def __init__(self, client_id: str = "", *, tls: tuple[Path, Path, Path] | None = None,
                 will: tuple[str, bytes] | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        # Quick teardown of refused clients (paho types the seconds as int; it sleeps floats).
        self.client.reconnect_delay_set(0.05, 0.1)  # type: ignore[arg-type]
        if tls:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key),
                                cert_reqs=ssl.CERT_REQUIRED)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self.connected = threading.Event()
        self.acks: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.acks[mid] = reason

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return  # stored earlier (a previous test's state): only live traffic counts
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def connect(self, port: int, username: str | None = None, password: str | None = None,
                timeout: float = 5.0) -> bool:
        """True if the broker accepted us; False if it refused or the handshake failed."""
        if username is not None:
            self.client.username_pw_set(username, password)
        try:
            self.client.connect("127.0.0.1", port, keepalive=10)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        wait_for(lambda: self.connected.is_set() or self.disconnected.is_set(), timeout)
        return bool(self.connack is not None and not self.connack.is_failure
                    and not self.disconnected.is_set())

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: info.mid in self.acks, 5.0)
        with self._lock:
            return self.acks[info.mid]

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe([(t, 1) for t in topics])
        assert done.wait(5), "no SUBACK"

    def received(self, topic_suffix: str = "") -> list[tuple[str, bytes]]:
        with self._lock:
            return [m for m in self.messages if m[0].endswith(topic_suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    return predicate()


def town_with_units(tmp: Path, stations: tuple[str, ...] = ("v001", "v002")) -> TownshipBroker:
    """A started township broker, each station's bundle installed as its unit would."""
    broker = TownshipBroker(tmp)
    for station in stations:
        bundle = provision.add_station(broker.town, station, "127.0.0.1")
        install_bundle(bundle, broker.town.dir.parent / "units" / station)
    return broker.start()


def unit(town: TownshipBroker, station: str) -> tuple[Path, Path, Path]:
    """A unit's CA, certificate and key, as `town_with_units` installed them."""
    d = town.town.dir.parent / "units" / station
    return d / "ca.crt", d / "station.crt", d / "station.key"
