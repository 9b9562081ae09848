"""Township-initiated updates end to end, on real parts: the township broker with TLS and
the station's own certificate, a plain HTTP server with Range requests, Debian's RAUC
service (on a private system bus) writing a slot image file and calling our tryboot
back-end, and the station itself. The boot in between is played by restarting RAUC with
the other slot booted and the station with that slot's release file.

RAUC installs `plain` bundles here: this kernel has no device-mapper, which verity bundles
need to be mounted, and Debian's RAUC cannot stream (units accept verity only and stream
it: tests/test_update_stream.py checks the streamed offer up to the install;
tests/test_release_build.py checks verity bundles with `rauc info` and `rauc extract`).
So these units run with `update.stream` off: the whole file through the same local
server, its sha256 checked, then installed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import schema, station_toml, wait_until

from edge import config as config_mod
from edge.config import Config
from edge.station import Station
from edge.store.schema import DataSchemaError
from edge.unit.bundle import install_bundle
from edge.unit.control import request
from edge.unit.indicator import Mode
from edge.update import stream
from edge.update.tryboot import BootPartition
from pingan_centre.broker import provision
from pingan_centre.release.build import Built
from pingan_sim.township import CENTRE, Client, TownshipBroker
from pingan_sim.update_rig import (
    BundleServer,
    RaucRig,
    build_release,
    keyring,
    make_signer,
    read_from_ext4,
)

EVENTS = "pingan/v1/t01/v001/events"
CMD = "pingan/v1/t01/v001/cmd"
RESULTS = "pingan/v1/t01/v001/cmd/result"


class Rig:
    """A unit with its township, its RAUC, its bundle server and its signing key."""

    def __init__(self, tmp: Path, township: TownshipBroker) -> None:
        self.tmp = tmp
        self.township = township
        self.signer = make_signer(tmp / "keys", "release-2026")
        self.keyring = keyring(tmp / "keyring.pem", self.signer)
        self.rauc = RaucRig(tmp / "rauc", self.keyring).start()
        self.server = BundleServer().start()
        self.release_file = tmp / "pingan-edge-release"
        self.release_file.write_text("0.1.0\n")
        self.config_path = self._config()
        self.centre = Client("centre.test")
        assert self.centre.connect(township.plain_port, CENTRE, township.centre_password)
        self.centre.subscribe(EVENTS, RESULTS)
        self.station: Station | None = None
        self.fat = BootPartition(self.rauc.fat)

    def _config(self) -> Path:
        tb = self.township
        bundle = provision.add_station(tb.town, "v001", "127.0.0.1", broker_port=tb.tls_port)
        tls = self.tmp / "tls"
        install_bundle(bundle, tls)
        data = self.tmp / "data"
        data.mkdir()
        path = self.tmp / "station.toml"
        path.write_text(station_toml(data, tb.tls_port, broker={
            "tls": True, "ca_file": str(tls / "ca.crt"), "cert_file": str(tls / "station.crt"),
            "key_file": str(tls / "station.key")}, update={
            "keyring": str(self.keyring), "release_file": str(self.release_file),
            "health_s": 30, "commit_rows": ["certificate", "power"], "stream": False,
            "rate_bytes_s": 50000000, "retry_min_s": 0.05, "retry_max_s": 0.2,
            "give_up_s": 3, "timeout_s": 5,
            "reboot_command": ["touch", str(self.tmp / "rebooted-tryboot")],
            "fallback_command": ["touch", str(self.tmp / "rebooted-plain")]}))
        return path

    @property
    def config(self) -> Config:
        return config_mod.load(self.config_path)

    def start_station(self) -> Station:
        self.station = Station(self.config)
        self.station.start()
        wait_until(lambda: self.station is not None and self.station.uplink.connected, 20,
                   "the station connected to the township")
        self.answering()
        return self.station

    def answering(self) -> None:
        """Connected is not yet subscribed: a command published before the SUBACK of a
        first session is lost. Ask `state.get` until one is answered."""
        tries = iter(range(100))

        def answered() -> bool:
            cmd_id = f"ping-{next(tries)}"
            self.centre.publish(CMD, json.dumps({"cmd": "state.get", "id": cmd_id}).encode())
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if any(json.loads(b)["payload"]["cmd_id"] == cmd_id
                       for _, b in self.centre.received("/cmd/result")):
                    return True
                time.sleep(0.05)
            return False

        wait_until(answered, 30, "the station answering commands")

    def stop_station(self) -> None:
        if self.station is not None:
            self.station.stop()
            self.station = None

    def reboot_into(self, slot: str, release: str) -> None:
        """The reset: the station stops, RAUC and the root's release file are the other
        slot's, the station starts again."""
        self.stop_station()
        self.rauc.boot(slot)
        self.release_file.write_text(f"{release}\n")

    def offer(self, built: Built, cmd_id: str, *, url: str | None = None,
              changes: dict[str, Any] | None = None) -> dict[str, Any]:
        doc = json.loads(built.descriptor.read_text())
        payload = {"cmd": "update.offer", "id": cmd_id, "by": "officer-1",
                   **{k: doc[k] for k in ("version", "size", "sha256", "min_data_schema",
                                          "rollback", "compatible", "signature")},
                   "url": url or self.server.serve(built.bundle.name, built.bundle),
                   **(changes or {})}
        self.centre.publish(CMD, json.dumps(payload).encode())
        return payload

    def updates(self, cmd_id: str | None = None) -> list[dict[str, Any]]:
        found = []
        for _, body in self.centre.received("/events"):
            msg = json.loads(body)
            if msg["type"].startswith("update.") and (
                    cmd_id is None or msg["payload"].get("cmd_id") == cmd_id):
                found.append(msg)
        return found

    def wait_update(self, kind: str, cmd_id: str | None = None,
                    timeout: float = 60) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            return next((m for m in self.updates(cmd_id) if m["type"] == kind), None)
        try:
            msg: dict[str, Any] = wait_until(seen, timeout, f"{kind} at the township")
        except AssertionError as exc:  # say where the update stood
            state = self.station.updater.status() if self.station and self.station.updater \
                else None
            raise AssertionError(f"{exc}; updates seen: {kinds(self.updates(cmd_id))}; "
                                 f"updater: {state}") from None
        return msg

    def commit(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge", "update", "commit", "-c",
                               str(self.config_path), *extra], capture_output=True, text=True,
                              env=self.rauc.env, timeout=120)

    def close(self) -> None:
        self.stop_station()
        self.centre.close()
        self.server.stop()
        self.rauc.stop()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    township = TownshipBroker(tmp_path / "township").start()
    r = Rig(tmp_path, township)
    # The station's `rauc` calls reach this rig's RAUC service, as a unit's reach its own.
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", r.rauc.env["DBUS_SYSTEM_BUS_ADDRESS"])
    yield r
    r.close()
    township.stop()


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    """Event types in order, a run of `downloading` as one."""
    out: list[str] = []
    for m in messages:
        if not (out and out[-1] == m["type"] == "update.downloading"):
            out.append(m["type"])
    return out


def press_panic(station: Station) -> None:
    pin = station.pin_factory.pin(station.config.pins.panic)
    pin.drive_low()
    time.sleep(0.25)  # longer than panic_hold_s
    pin.drive_high()


def test_an_offer_installs_waits_for_the_alarm_reboots_once_and_commits_when_healthy(
        rig: Rig) -> None:
    built = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain")
    station = rig.start_station()
    # An alarm is open: the unit may install but must not reboot until it is acknowledged.
    press_panic(station)
    alarm = wait_until(lambda: next((json.loads(b) for _, b in rig.centre.received("/events")
                                     if json.loads(b)["type"] == "alarm.panic"), None), 20,
                       "the alarm at the township")
    # Count the updater's polls of why it must not reboot (the station's own check runs).
    assert station.updater is not None
    polls: list[str | None] = []

    def blocked() -> Any:
        why = station.update_blocked()
        polls.append(why.code if why else None)
        return why

    station.updater._busy = blocked
    rig.offer(built, "up-1")
    rig.wait_update("update.installed", "up-1")
    # The township learns why the reboot waits, in both languages, as the wait begins.
    waiting = rig.wait_update("update.waiting", "up-1")
    assert (waiting["payload"]["code"], waiting["payload"]["reason"]) == ("alarm_open", {
        "zh": "报警未确认（乡镇尚未确认收到）",
        "en": "an alarm is open (not yet acknowledged by the township)"})
    assert waiting["priority"] == 2
    wait_until(lambda: polls.count("alarm_open") >= 3, 20, "the reboot still waiting, polled")
    state = request(rig.config.control_socket, {"op": "update.status"})
    assert (state["update"]["phase"], state["update"]["code"]) == ("waiting", "alarm_open")
    assert state["blocked"] == {"code": "alarm_open", "reason": waiting["payload"]["reason"]}
    assert not (rig.tmp / "rebooted-tryboot").exists()
    assert "update.rebooting" not in kinds(rig.updates("up-1"))
    # No trial yet: a power cut while it waits must not report a rollback of it.
    assert not (rig.tmp / "data/update/trial.json").exists()
    rig.centre.publish(CMD, json.dumps({"cmd": "alarm.ack", "id": "ack-1",
                                        "event_id": alarm["id"]}).encode())
    rig.wait_update("update.rebooting", "up-1")
    wait_until(lambda: (rig.tmp / "rebooted-tryboot").exists(), 10, "the tryboot reboot")
    # From `rebooting` until the station stops, the LED shows the unit is updating.
    assert station.alarm.indicator.mode is Mode.UPDATING
    sent = rig.updates("up-1")
    # One `waiting` for the whole wait, however many polls it took.
    assert kinds(sent) == ["update.offered", "update.downloading", "update.verified",
                           "update.installed", "update.waiting", "update.rebooting"]
    percents = [m["payload"]["percent"] for m in sent if m["type"] == "update.downloading"]
    assert percents[-1] == 100.0 and percents == sorted(percents)
    for m in sent:
        schema("event").validate(m)
        assert (m["payload"]["version"], m["payload"]["running"]) == ("0.2.0", "0.1.0")
    # RAUC wrote slot B; only a tryboot reaches it; slot A is still what boots otherwise.
    assert read_from_ext4(rig.tmp / "rauc/slotB.img", "/etc/pingan-release") == b"0.2.0\n"
    slots = rig.fat.read()
    assert (slots.committed, slots.tryboot, slots.states["B"]) == ("A", "B", "bad")
    # The tryboot: slot B runs 0.2.0; the checks pass; it commits.
    rig.reboot_into("B", "0.2.0")
    station = rig.start_station()
    assert station.alarm.indicator.mode is Mode.IDLE  # back: it takes presses again
    done = rig.commit()
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["result"] == "committed"
    committed = rig.wait_update("update.committed", "up-1")
    assert committed["payload"]["checks"] == {
        "station_running": True, "connected_own_cert": True, "event_delivered": True,
        "selftest.certificate": True, "selftest.power": True}
    slots = rig.fat.read()
    assert (slots.committed, slots.states) == ("B", {"A": "good", "B": "good"})
    # Committed: the next boot, without the flag, is B; nothing is left to decide.
    assert rig.commit().returncode == 0
    assert not (rig.tmp / "data/update/trial.json").exists()


def test_a_release_that_fails_its_checks_goes_back_and_says_why(rig: Rig) -> None:
    built = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain")
    rig.start_station()
    rig.offer(built, "up-2")
    rig.wait_update("update.rebooting", "up-2")
    # Slot B boots, but the township cannot be reached with it (the broker is down).
    rig.reboot_into("B", "0.2.0")
    rig.township.stop()
    rig.station = Station(rig.config)
    rig.station.start()
    done = rig.commit("--health-s", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["result"] == "rolled_back"
    assert (rig.tmp / "rebooted-plain").exists(), "the fall-back reboot (no tryboot flag)"
    slots = rig.fat.read()
    assert (slots.committed, slots.tryboot, slots.states["B"]) == ("A", "A", "bad")
    # Back on A (0.1.0), with the township back: it reports the rollback and why.
    rig.reboot_into("A", "0.1.0")
    rig.township.start()
    rig.centre.close()
    rig.centre = Client("centre.test2")
    assert rig.centre.connect(rig.township.plain_port, CENTRE, rig.township.centre_password)
    rig.centre.subscribe(EVENTS, RESULTS)
    rig.start_station()
    back = rig.wait_update("update.rolled_back", "up-2")
    payload = back["payload"]
    assert (payload["code"], payload["version"], payload["running"]) == (
        "unhealthy", "0.2.0", "0.1.0")
    assert "certificate" in payload["reason"]["en"] and payload["reason"]["zh"]
    assert payload["checks"]["connected_own_cert"] is False
    assert rig.commit().returncode == 0  # nothing left to try


def test_tampered_wrong_key_truncated_and_replayed_offers_are_refused(rig: Rig) -> None:
    good = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain")
    stranger = make_signer(rig.tmp / "keys", "stranger")
    foreign = build_release(rig.tmp, "0.2.0", stranger, bundle_format="plain")
    older = build_release(rig.tmp, "0.0.9", rig.signer, bundle_format="plain")
    tampered = rig.tmp / "tampered.raucb"
    data = bytearray(good.bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    truncated = rig.tmp / "truncated.raucb"
    truncated.write_bytes(good.bundle.read_bytes()[: good.release.size // 2])
    station = rig.start_station()
    cases = [
        ("wrong_key", foreign, None, None),
        ("hash_mismatch", good, rig.server.serve("t.raucb", tampered), None),
        ("truncated", good, rig.server.serve("h.raucb", truncated), None),
        ("downgrade", older, None, None),
        ("bad_signature", good, None, {"rollback": True}),
    ]
    before = rig.fat.read()
    for n, (code, built, url, changes) in enumerate(cases):
        refused = rig.wait_update("update.refused", rig.offer(
            built, f"bad-{n}", url=url, changes=changes)["id"])
        payload = refused["payload"]
        assert payload["code"] == code, payload
        assert payload["reason"]["zh"] and payload["reason"]["en"]
        schema("event").validate(refused)
        assert "update.installed" not in kinds(rig.updates(f"bad-{n}"))
    assert rig.fat.read() == before, "nothing was installed"
    assert not (rig.tmp / "rebooted-tryboot").exists()
    assert station.healthy()
    # A damaged download is not kept to be resumed.
    assert list((rig.tmp / "data/update").glob("*.raucb*")) == []


def test_a_link_that_drops_every_few_kilobytes_still_delivers_the_bundle(
        rig: Rig) -> None:
    built = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain")
    rig.server.drop_every = 48 * 1024
    rig.start_station()
    rig.offer(built, "up-3")
    rig.wait_update("update.installed", "up-3", timeout=120)
    ranges = [r for p, r in rig.server.requests if p.endswith(built.bundle.name)]
    assert len(ranges) > built.release.size // (48 * 1024)
    starts = [int(r[6:].split("-")[0]) for r in ranges if r is not None]
    assert len(starts) == len(ranges) and starts == sorted(starts), \
        "every retry resumed where it stopped"


def test_update_apply_on_site_takes_the_same_checks(rig: Rig) -> None:
    built = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain")
    stick = rig.tmp / "usb"
    stick.mkdir()
    for f in (built.bundle, built.descriptor):
        (stick / f.name).write_bytes(f.read_bytes())
    rig.start_station()
    env = {**rig.rauc.env}
    done = subprocess.run([sys.executable, "-m", "edge", "update", "apply", "-c",
                           str(rig.config_path), str(stick / built.bundle.name)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kinds([m for m in rig.updates() if m["payload"]["source"] == "on_site"]) == [
        "update.verified", "update.installed", "update.rebooting"]
    assert rig.fat.read().tryboot == "B"
    # A bundle from another key, on site: refused, and the command says so.
    stranger = make_signer(rig.tmp / "keys", "stranger")
    foreign = build_release(rig.tmp, "0.3.0", stranger, bundle_format="plain")
    rig.rauc.boot("A")
    bad = subprocess.run([sys.executable, "-m", "edge", "update", "apply", "-c",
                          str(rig.config_path), str(foreign.bundle)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "wrong_key" in bad.stdout, bad.stdout + bad.stderr
    # It followed its own job only: the first one's "rebooting", still the station's
    # state when the second was queued, is not this one's answer.
    lines = [json.loads(line) for line in bad.stdout.splitlines()]
    assert lines and all(line["job"] == 2 for line in lines), bad.stdout
    assert lines[-1]["phase"] == "refused" and lines[-1]["version"] == "0.3.0", lines


def test_a_release_that_cannot_read_the_data_does_not_start_and_is_rolled_back(
        rig: Rig) -> None:
    built = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain")
    rig.start_station()
    rig.offer(built, "up-4")
    rig.wait_update("update.rebooting", "up-4")
    rig.reboot_into("B", "0.2.0")
    # The data needs readers newer than this release (as if it had been migrated past it).
    with sqlite3.connect(rig.tmp / "data/outbox.db") as conn:
        conn.execute("UPDATE data_schema SET min_reader = 99")
    with pytest.raises(DataSchemaError):
        Station(rig.config)
    done = rig.commit("--health-s", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    trial = json.loads((rig.tmp / "data/update/trial.json").read_text())
    assert (trial["verdict"], trial["code"]) == ("rolled_back", "station_down")
    assert "not running" in trial["reason"]["en"]
    assert (rig.tmp / "rebooted-plain").exists()
    slots = rig.fat.read()
    assert (slots.committed, slots.states["B"]) == ("A", "bad")


def test_a_station_killed_mid_download_resumes_it_when_offered_again(rig: Rig) -> None:
    # Over a few MiB: the station syncs the partial file every MiB and resumes from there.
    built = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain",
                          payload_kib=6 * 1024)
    rig.config_path.write_text(rig.config_path.read_text().replace(
        "rate_bytes_s = 50000000", "rate_bytes_s = 600000"))

    def run() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "edge", "run", "-c",
                                 str(rig.config_path)], env=rig.rauc.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def connected() -> bool:
        try:
            return bool(request(rig.config.control_socket, {"op": "status"},
                                timeout=5)["connected"])
        except OSError:
            return False

    unit = run()
    try:
        wait_until(connected, 30, "the station connected")
        rig.answering()
        rig.offer(built, "up-5")
        part = rig.tmp / "data/update" / f"{built.release.sha256}.raucb"

        def held() -> int:
            return stream.BundleCache(part, built.release.size).held() if part.exists() \
                else 0

        wait_until(lambda: held() > built.release.size // 4, 60, "a quarter of the bundle")
        unit.kill()  # SIGKILL: no chance to tidy up
        unit.wait(10)
        kept = held()
        assert 0 < kept < built.release.size
        first = len(rig.server.requests)
        unit = run()
        wait_until(connected, 30, "the station connected again")
        rig.answering()
        rig.offer(built, "up-6")
        rig.wait_update("update.installed", "up-6", timeout=120)
    finally:
        unit.kill()
        unit.wait(10)
    resumed = rig.server.requests[first]
    # Every block the map marks was synced before it was marked: none is fetched again.
    assert resumed[1] is not None and int(resumed[1][6:].split("-")[0]) >= kept, resumed
    assert read_from_ext4(rig.tmp / "rauc/slotB.img", "/etc/pingan-release") == b"0.2.0\n"


def test_a_bundle_whole_on_the_card_after_a_cut_during_its_install_is_not_fetched_again(
        rig: Rig) -> None:
    """A power cut during the install leaves the whole bundle on the data partition (the
    slot write did not finish): offered again, the unit installs it without downloading
    a byte again."""
    built = build_release(rig.tmp, "0.2.0", rig.signer, bundle_format="plain")
    # What the station's cache holds once every block arrived (stream.BundleCache).
    left = stream.BundleCache(rig.tmp / "data/update" / f"{built.release.sha256}.raucb",
                              built.release.size)
    left.write(0, built.bundle.read_bytes())
    rig.start_station()
    rig.offer(built, "up-7")
    rig.wait_update("update.installed", "up-7", timeout=120)
    assert rig.server.requests == []
    assert read_from_ext4(rig.tmp / "rauc/slotB.img", "/etc/pingan-release") == b"0.2.0\n"
