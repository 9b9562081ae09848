"""Station config: defaults, and wrong values refused at start with exit status 2."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge import config
from edge.cli import main
from pingan_sim.station import defaults as simulation_defaults

ROOT = Path(__file__).resolve().parent.parent
GOOD = '[station]\nid = "v001"\ntownship = "t01"\n'


def test_identity_is_the_only_required_value():
    cfg = config.parse(GOOD)
    assert (cfg.station.id, cfg.station.township) == ("v001", "t01")
    assert cfg.broker.port == 1883 and cfg.uplink.inflight == 20
    assert cfg.pins.factory == "lgpio", "a config file means a real unit"
    # No config file means the simulator (pingan-sim run); the unit's CLI reaches the
    # simulated station by the identity it has with no file.
    assert simulation_defaults().pins.factory == "mock", "no config file means the simulator"
    assert config.load(None).station == simulation_defaults().station


def test_run_without_any_config_file_names_the_simulator(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "edge", "run"], capture_output=True,
                          text=True, timeout=30, env=env)
    assert proc.returncode == 2
    assert "no station config" in proc.stderr and "pingan-sim run" in proc.stderr


def test_default_pin_map_matches_hardware_pinmap():
    pinmap = tomllib.loads((ROOT / "hardware" / "pinmap.toml").read_text())
    defaults = config.PinsSection()
    assert {k: v["bcm"] for k, v in pinmap["pins"].items()} == {
        "panic": defaults.panic, "broadcast": defaults.broadcast,
        "alarm_led": defaults.alarm_led, "amp_relay": defaults.amp_relay,
        "modem_power": defaults.modem_power}


def test_example_config_is_valid():
    cfg = config.load(ROOT / "docs" / "station.example.toml")
    assert cfg.station.id


@pytest.mark.parametrize(("text", "expected"), [
    ("[station\nid=1", "not valid TOML"),
    ('[station]\ntownship = "t01"\n', "station.id: required, but missing"),
    ("", "station: required, but missing"),
    (GOOD + "[uplink]\ninflight = 0\n", "uplink.inflight: Expected `int` >= 1; got 0"),
    (GOOD + "[uplink]\ninflight = \"many\"\n", "uplink.inflight"),
    (GOOD + "[uplink]\ninfligth = 5\n", "unknown key 'infligth' in [uplink]; allowed keys: "
                                        "inflight,"),
    ("colour = 1\n" + GOOD, "unknown key 'colour' in the top level"),
    (GOOD + '[pins]\nfactory = "gpio"\n', "pins.factory: Invalid enum value 'gpio'; got 'gpio'; "
                                          "allowed: 'mock', 'lgpio'"),
    (GOOD + "[pins]\npanic = 99\n", "pins.panic: Expected `int` <= 53; got 99"),
    (GOOD + "[pins]\npanic = 22\n", "pins must be distinct"),
    ('[station]\nid = "Village 1"\ntownship = "t01"\n', "station.id: Expected `str` matching"),
    (GOOD + "[broker]\nport = 70000\n", "broker.port"),
    (GOOD + '[broker]\ncert_file = "a.pem"\n', "cert_file and broker.key_file"),
    (GOOD + "[uplink]\nbackoff_min_s = 10\nbackoff_max_s = 1\n", "backoff_max_s"),
    (GOOD + "[buttons]\npanic_hold_s = -1\n", "buttons.panic_hold_s"),
    ('[station]\nid = "all"\ntownship = "t01"\n', "reserved"),
    (GOOD + '[modem]\nduty_numbers = ["138 0013 8000"]\n',
     "modem.duty_numbers[0]: Expected `str` matching"),
    (GOOD + "[pins]\nmodem_power = 23\n", "pins must be distinct"),
    (GOOD + "data_max_bytes = 104857600\n",  # 100 MiB: the default caps take ~350
     "station.data_max_bytes (104857600) is less than what the data directory may hold"),
    (GOOD + "data_max_bytes = 104857600\n[outbox]\nmax_bytes = 33554432\n[audio]\n"
     "enabled = false\n[uplink]\ncommand_queue = 0\n", "uplink.command_queue"),
])
def test_bad_config_exits_2_naming_key_value_and_allowed(tmp_path, capsys, text, expected):
    path = tmp_path / "station.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.startswith("pingan-edge: config error: ")


def test_run_with_bad_config_exits_2_before_touching_anything(tmp_path):
    path = tmp_path / "station.toml"
    path.write_text(GOOD + f'data_dir = "{tmp_path / "data"}"\n[outbox]\nmax_bytes = 10\n')
    proc = subprocess.run([sys.executable, "-m", "edge", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "outbox.max_bytes: Expected `int` >= 16384; got 10" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_missing_config_file_and_unreadable_password(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    cfg = config.parse(GOOD + '[broker]\npassword_file = "nope"\n')
    with pytest.raises(config.ConfigError, match=r"broker\.password_file: cannot read"):
        cfg.password()


def test_pin_factory_not_usable_here_exits_2(tmp_path):
    path = tmp_path / "station.toml"
    path.write_text(GOOD + f'data_dir = "{tmp_path / "data"}"\n[pins]\nfactory = "rpigpio"\n'
                    '[broker]\nport = 1\n')
    proc = subprocess.run([sys.executable, "-m", "edge", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "pins.factory = 'rpigpio' is not usable here" in proc.stderr


def test_second_daemon_on_same_data_dir_is_refused(tmp_path, broker):
    from conftest import Daemon, station_toml

    path = tmp_path / "station.toml"
    path.write_text(station_toml(tmp_path / "data", broker.port))
    first = Daemon(path)
    try:
        first.wait_logged("station.started")
        proc = subprocess.run([sys.executable, "-m", "edge", "run", "-c", str(path)],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 3, "EXIT_ALREADY_RUNNING: systemd does not restart on it"
        assert "another pingan-edge already runs" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        first.proc.terminate()
        first.finish()
