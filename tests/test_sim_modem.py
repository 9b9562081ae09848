"""`pingan-sim run` (bin/sim) shows a new user the SMS fallback with no hardware: the
simulated station has a 4G modem on a pseudo-terminal by default. Stop the broker, press
panic, and the SMS lands in <data_dir>/sms-phones.txt, as the duty officers' phones show
it (decoded there by python-gsmmodem, not by the project's codec)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import msgspec
import pytest
from conftest import wait_until

from edge.cli import main as edge_main
from pingan_modem.rules import short_code
from pingan_sim.localbroker import free_port
from pingan_sim.station import PHONES_FILE, SIMULATED_MODEM, SimulatedStation, defaults


def test_stop_the_broker_press_panic_and_the_sms_lands_in_the_phones_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # where a new user's data goes
    cfg = defaults()
    assert cfg.modem.enabled and cfg.modem.port == SIMULATED_MODEM
    assert len(cfg.modem.duty_numbers) == 2
    # The configured broker is not there (the private one is started instead); a short
    # wait before the SMS, so the test is quick.
    cfg = msgspec.structs.replace(
        cfg, broker=msgspec.structs.replace(cfg.broker, port=free_port()),
        modem=msgspec.structs.replace(cfg.modem, sms_after_s=1.0))
    phones = cfg.data_dir / PHONES_FILE
    sim = SimulatedStation(cfg)
    sim.start()
    try:
        assert sim.modem is not None and sim.local_broker is not None
        wait_until(lambda: sim.station.uplink.connected, 20, "the station on its broker")
        wait_until(lambda: sim.station.modem is not None and sim.station.modem.modem.ready,
                   30, "the simulated modem set up")
        # The status the technician sees names the modem as the simulated one.
        assert edge_main(["status"]) == 0
        assert "EC25" in capsys.readouterr().out
        # As the README says: kill the private broker by the pid it left.
        pid = int((cfg.data_dir / "broker" / "mosquitto.pid").read_text(encoding="utf-8"))
        assert pid == sim.local_broker.pid
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not sim.station.uplink.connected, 20, "the uplink down")
        alarm_id = sim.station.alarm.raise_alarm("button", 0.1).result(5).id
        code = short_code(alarm_id)
        text = wait_until(lambda: phones.exists() and phones.read_text(encoding="utf-8")
                          .count(f"代码 {code}") == 2 and phones.read_text(encoding="utf-8"),
                          60, f"the SMS in {phones}")
    finally:
        sim.stop()
    for number in cfg.modem.duty_numbers:
        assert f"to {number}" in text
    assert "【平安报警】" in text and f"Code {code}" in text and "again" not in text
    assert sim.modem.master == -1, "the modem closed with the station"
