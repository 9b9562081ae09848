"""`pingan-edge selftest`: mock pins with a scripted technician, the real township broker
(TLS with the station's own certificate), the broker down, and the result delivered to
the township as a `selftest` event by the station afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import msgspec
import numpy as np
import pytest
from conftest import schema, wait_until
from gpiozero.pins.mock import MockFactory, MockPin

from edge import config as config_mod
from edge import selftest
from edge.config import Config
from edge.station import Station
from edge.unit.bundle import install_bundle
from edge.unit.pins import make_factory
from pingan_centre.broker import provision
from pingan_sim.modem import ModemSim
from pingan_sim.township import CENTRE, Client, TownshipBroker

RATE = 16000


class Technician(selftest.Operator):
    """Does what they are told and answers by what the unit really did."""

    def __init__(self, test: selftest.Selftest | None = None, *, presses: bool = True,
                 lets_go: bool = True) -> None:
        super().__init__(StringIO(), StringIO(), timeout_s=1.0)
        self.test = test
        self.presses = presses
        self.lets_go = lets_go  # releases a button when told to, and after pressing it
        self.heard: list[str] = []

    def say(self, zh: str, en: str) -> None:
        self.heard.append(en)
        assert self.test is not None
        pin_no = self.test.cfg.pins.panic if "panic" in en else self.test.cfg.pins.broadcast
        pin = self.test.factory.pin(pin_no)
        if en.startswith("the ") and "release it" in en and self.lets_go:
            pin.drive_high()
        if en.startswith("press the ") and self.presses:
            def press() -> None:
                time.sleep(0.05)
                pin.drive_low()
                time.sleep(0.1)
                if self.lets_go:
                    pin.drive_high()

            threading.Thread(target=press, daemon=True).start()

    def confirm(self, zh: str, en: str) -> bool | None:
        self.heard.append(en)
        assert self.test is not None
        cfg = self.test.cfg
        if "LED" in en:
            return bool(self.test.factory.pin(cfg.pins.alarm_led).state)
        if "tone" in en:
            played = np.frombuffer((cfg.data_dir / "speaker.raw").read_bytes(), dtype="<i2")
            return bool(played.size and np.abs(played).max() > 1000)
        return None


class HeldLow(MockPin):
    """A button line held to ground before the selftest looks at it (a finger on the
    button, or a short): the pull-up the selftest sets cannot raise it."""

    def _set_pull(self, value: str) -> None:
        self._pull = value


@pytest.fixture
def township(tmp_path: Path) -> Iterator[TownshipBroker]:
    tb = TownshipBroker(tmp_path / "township").start()
    yield tb
    tb.stop()


def unit_config(tmp_path: Path, tb: TownshipBroker, *, mic_level: float = 0.3) -> Config:
    bundle = provision.add_station(tb.town, "v001", "127.0.0.1", broker_port=tb.tls_port)
    tls = tmp_path / "tls"
    install_bundle(bundle, tls)
    data = tmp_path / "data"
    data.mkdir()
    # What the microphone hears (the null ALSA device's capture file): someone speaking.
    t = np.arange(RATE * 2) / RATE
    (data / "mic.raw").write_bytes((mic_level * 32767 * np.sin(2 * np.pi * 300 * t))
                                   .astype("<i2").tobytes())
    text = f"""
[station]
id = "v001"
township = "t01"
data_dir = "{data}"
[broker]
host = "127.0.0.1"
port = {tb.tls_port}
tls = true
ca_file = "{tls / 'ca.crt'}"
cert_file = "{tls / 'station.crt'}"
key_file = "{tls / 'station.key'}"
keepalive_s = 5
[uplink]
backoff_min_s = 0.05
backoff_max_s = 0.5
[pins]
factory = "mock"
[buttons]
panic_hold_s = 0.1
bounce_s = 0.0
[audio]
output = "null"
sample_rate = {RATE}
amp_warm_up_s = 0.0
prompts = false
siren = false
"""
    path = tmp_path / "station.toml"
    path.write_text(text)
    return config_mod.load(path)


def run(cfg: Config, **kw: bool) -> tuple[list[selftest.Row], Technician]:
    """The technician's hands on the pins: MockFactory pins they drive and look at."""
    tech = Technician(**kw)
    factory = make_factory("mock")
    test = selftest.Selftest(cfg, tech, button_timeout_s=3.0, broker_timeout_s=5.0,
                             factory=factory)
    tech.test = test
    try:
        return test.run(), tech
    finally:
        factory.close()


def by_check(rows: list[selftest.Row]) -> dict[str, selftest.Row]:
    return {r.check: r for r in rows}


@pytest.fixture(autouse=True)
def _alsa_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The null device's ALSA config is per process: put it back after each test."""
    monkeypatch.setenv("ALSA_CONFIG_PATH", "")
    monkeypatch.delenv("ALSA_CONFIG_PATH")


def test_every_part_passes_with_a_technician_and_the_real_broker(
        tmp_path: Path, township: TownshipBroker) -> None:
    cfg = unit_config(tmp_path, township)
    rows, tech = run(cfg)
    got = by_check(rows)
    assert [r.check for r in rows] == ["alarm_led", "panic_button", "broadcast_button",
                                       "loudspeaker", "microphone", "camera", "broker",
                                       "certificate", "clock", "disk", "power", "modem"]
    for name in ("alarm_led", "panic_button", "broadcast_button", "loudspeaker", "microphone",
                 "broker", "certificate", "disk"):
        assert got[name].status == "pass", got[name]
    assert got["camera"].status == "not_fitted"
    assert got["modem"].status == "not_fitted"
    assert "press the panic button now (within 3 s)" in tech.heard
    assert got["broker"].detail == f"127.0.0.1:{township.tls_port}, TLS on"


def test_a_fitted_modem_is_read_for_its_signal(tmp_path: Path,
                                               township: TownshipBroker) -> None:
    sim = ModemSim("EC25")
    try:
        cfg = unit_config(tmp_path, township)
        cfg = msgspec.structs.replace(cfg, modem=msgspec.structs.replace(
            cfg.modem, enabled=True, port=sim.path))
        test = selftest.Selftest(cfg, Technician())
        row = test.modem()
        sim.vanish()
        gone = test.modem()
    finally:
        sim.close()
    assert row.status == "pass", row
    assert row.detail.startswith("ok, EC25, reg home, CHINA MOBILE LTE, -73 dBm")
    assert gone.status == "fail" and "SIM" in gone.action_en


def test_a_part_that_fails_says_what_to_do_and_the_rest_still_run(
        tmp_path: Path, township: TownshipBroker) -> None:
    cfg = unit_config(tmp_path, township, mic_level=0.0)
    township.stop()
    rows, _ = run(cfg, presses=False)
    got = by_check(rows)
    assert len(rows) == 12
    assert got["broker"].status == "fail" and "4G" in got["broker"].action_zh
    assert got["panic_button"].status == "fail"
    assert "GPIO17" in got["panic_button"].action_en
    assert got["microphone"].status == "fail" and "silent" in got["microphone"].detail
    for name in ("alarm_led", "loudspeaker", "certificate", "disk"):
        assert got[name].status == "pass", got[name]
    text = selftest.table(rows)
    assert "报警按钮 panic button" in text and "失败 FAIL" in text
    assert "→ 处理 / do:" in text and text.endswith("failed")


def test_the_result_reaches_the_township_as_an_event_once_the_station_runs(
        tmp_path: Path, township: TownshipBroker) -> None:
    cfg = unit_config(tmp_path, township)
    rows, _ = run(cfg)
    ev = selftest.event(cfg, rows, "technician")
    seq = selftest.record(cfg, ev)
    assert seq >= 1
    centre = Client("centre.test")
    assert centre.connect(township.plain_port, CENTRE, township.centre_password)
    centre.client.subscribe("pingan/v1/t01/v001/events", qos=1)
    time.sleep(0.2)
    station = Station(cfg)
    station.start()
    try:
        def delivered() -> dict[str, object] | None:
            for _, body in centre.received("/events"):
                msg = json.loads(body)
                if msg["type"] == "selftest":
                    return dict(msg)
            return None

        msg = wait_until(delivered, 20, "the selftest event at the township")
    finally:
        station.stop()
        centre.close()
    schema("event").validate(msg)
    assert msg["id"] == ev.id and msg["seq"] == seq
    payload = msg["payload"]
    assert isinstance(payload, dict) and payload["by"] == "technician"
    statuses = {r["check"]: r["status"] for r in payload["results"]}
    assert payload["passed"] == ("fail" not in statuses.values())
    assert statuses["broker"] == "pass" and statuses["modem"] == "not_fitted"


def test_cli_json_with_nobody_there_fails_the_interactive_rows(
        tmp_path: Path, township: TownshipBroker) -> None:
    cfg = unit_config(tmp_path, township)
    config_path = tmp_path / "station.toml"
    done = subprocess.run([sys.executable, "-m", "edge", "selftest", "-c", str(config_path),
                           "--json", "--timeout", "1"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    rows = {r["check"]: r for r in report["results"]}
    # The loudspeaker plays, and nobody says they heard it.
    assert rows["loudspeaker"]["status"] == "fail" and rows["loudspeaker"]["detail"] == (
        "no answer")
    # Configured mock pins are this process's own: nobody could press them, nothing to test.
    for name in ("alarm_led", "panic_button", "broadcast_button"):
        assert rows[name]["status"] == "not_fitted", rows[name]
        assert "pins.factory = mock" in rows[name]["detail"]
    assert rows["broker"]["status"] == "pass"
    assert report["passed"] is False and report["seq"] >= 1
    assert "现在请按下报警按钮" not in done.stderr
    assert cfg.data_dir.joinpath("outbox.db").exists()


@pytest.mark.parametrize("chips", [[], ["gpiochip0"]])
def test_real_pins_on_a_machine_without_gpio_are_not_fitted_with_gpio_a_failure(
        tmp_path: Path, township: TownshipBroker, chips: list[str]) -> None:
    """No GPIO chip at all (QEMU's virt machine, a PC): the pins rows are not fitted. A
    chip there that the factory cannot drive is a fault to fix."""
    cfg = unit_config(tmp_path, township)
    cfg = msgspec.structs.replace(cfg, pins=msgspec.structs.replace(cfg.pins,
                                                                    factory="native"))
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in chips:
        (dev / name).write_bytes(b"")  # not a character device: the factory cannot use it
    tech = Technician()
    test = selftest.Selftest(cfg, tech, button_timeout_s=1.0, broker_timeout_s=5.0,
                             gpio_dev=dev)
    tech.test = test
    got = by_check(test.run())
    for name in ("alarm_led", "panic_button", "broadcast_button"):
        if chips:
            assert got[name].status == "fail" and "pins.factory" in got[name].action_en
        else:
            assert got[name].status == "not_fitted", got[name]
            assert got[name].detail == f"no GPIO chip ({dev}/gpiochip*) on this machine"


def test_refuses_while_a_station_runs_outside_systemd(tmp_path: Path,
                                                      township: TownshipBroker) -> None:
    cfg = unit_config(tmp_path, township)
    station = Station(cfg)
    station.start()
    try:
        done = subprocess.run([sys.executable, "-m", "edge", "selftest", "-c",
                               str(tmp_path / "station.toml"), "--timeout", "1"],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=60)
    finally:
        station.stop()
    assert done.returncode != 0
    assert "a station is running" in done.stderr and "stop it first" in done.stderr


def panic_row(technician: Technician, *, held: bool) -> selftest.Row:
    """The panic button's row alone, on MockFactory pins; `held`: its line is already
    low when the row starts."""
    factory = MockFactory()
    try:
        cfg = config_mod.load(None)
        if held:
            factory.pin(cfg.pins.panic, pin_class=HeldLow)
        test = selftest.Selftest(cfg, technician, button_timeout_s=1.0, factory=factory)
        technician.test = test
        return test.panic_button()
    finally:
        factory.close()


def test_a_button_that_reads_pressed_all_the_time_fails_as_stuck() -> None:
    tech = Technician(lets_go=False)
    row = panic_row(tech, held=True)
    assert row.status == "fail", row
    assert row.detail == "GPIO17 reads pressed all the time (1 s)"
    assert "卡住" in row.action_zh and "GPIO17 是否与地线短路" in row.action_zh
    assert "short from GPIO17 to ground" in row.action_en
    # Told to let go first; never asked to press a button that reads pressed already.
    assert tech.heard == ["the panic button reads pressed: release it (within 1 s)"]


def test_a_button_held_when_its_row_starts_passes_once_released_and_pressed() -> None:
    tech = Technician()
    row = panic_row(tech, held=True)
    assert row.status == "pass", row
    assert tech.heard == ["the panic button reads pressed: release it (within 1 s)",
                          "press the panic button now (within 1 s)"]
    assert row.detail == ""  # MockFactory pins raise edges, as a Pi's chip does


def test_a_button_that_does_not_come_back_up_fails() -> None:
    row = panic_row(Technician(lets_go=False), held=False)
    assert row.status == "fail", row
    assert row.detail == "GPIO17 still pressed 1 s after the press"
    assert "did not come back up" in row.action_en and "没有弹起" in row.action_zh


def test_a_button_never_pressed_fails_with_its_wiring_to_check() -> None:
    row = panic_row(Technician(presses=False), held=False)
    assert row.status == "fail" and row.detail == "no press on GPIO17 in 1 s"
    assert row.action_en == "check the panic button wiring to GPIO17 and ground"
