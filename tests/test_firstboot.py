"""First boot (edge.unit.firstboot) against a unit's directory tree: identity moved off the FAT
partition, secrets deleted, and a run cut short (a fault, kill -9) finished by the next."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from firmware_helpers import make_bundle, unit_tree

from edge import config as config_mod

SECRETS = ["bundle.tar.gz", "network.toml", "settings.toml", "technician.hash"]
HASH = "$6$salt$3/8Ns3j1bWgL0v0oYV5CwXo2YkOFWqk0xG0VhF1.2mCk5n2Zz9bKp3vJQnZ2y1pHcA9d6mL1ZQ1B0.Tz/"


def card(tmp_path: Path, station: str = "s1") -> Path:
    """A unit's tree as the flash tool leaves it: identity on the boot partition."""
    root = unit_tree(tmp_path / "unit")
    incoming = root / "boot" / "firmware" / "pingan-edge"
    incoming.mkdir(parents=True)
    shutil.copy(make_bundle(tmp_path, station), incoming / "bundle.tar.gz")
    (incoming / "settings.toml").write_text('[pins]\nfactory = "mock"\n')
    (incoming / "network.toml").write_text(
        '[wifi]\nssid = "村委会"\npsk = "pass word"\ncountry = "CN"\n[cellular]\napn = "cmnet"\n')
    (incoming / "technician.hash").write_text(HASH + "\n")
    (incoming / "README.txt").write_text("identity goes here\n")
    for d in ("etc/pingan-edge", "state"):
        (root / "data" / d).mkdir(parents=True)
    return root


def firstboot(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge.unit.firstboot", "--root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(root: Path) -> str:
    proc = firstboot(root)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    return out


def state(root: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file on the data partition and the boot partition's identity directory."""
    files = {}
    for base in (root / "data", root / "boot"):
        for p in sorted(base.rglob("*")):
            if p.is_file():
                st = p.stat()
                files[str(p.relative_to(root))] = (p.read_bytes(), st.st_mode & 0o7777,
                                                   st.st_uid, st.st_gid)
    return files


def test_first_boot_moves_the_identity_and_deletes_it_from_fat(tmp_path: Path) -> None:
    root = card(tmp_path)
    out = finish(root)
    assert '"event": "firstboot.identity", "station": "s1"' in out
    conf = root / "data" / "etc" / "pingan-edge"
    key = conf / "tls" / "station.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (key.stat().st_uid, key.stat().st_gid) == (998, 997)  # pingan in the unit's passwd
    assert b"PRIVATE KEY" in key.read_bytes()
    incoming = root / "boot" / "firmware" / "pingan-edge"
    assert sorted(p.name for p in incoming.iterdir()) == ["README.txt"]
    cfg = config_mod.load(conf / "station.toml")
    assert (cfg.station.id, cfg.station.township) == ("s1", "t01")
    assert cfg.broker.key_file == "/etc/pingan-edge/tls/station.key"
    assert cfg.broker.tls and cfg.pins.factory == "mock"
    assert cfg.data_dir == Path("/var/lib/pingan-edge")
    wpa = (root / "data" / "etc" / "wpa_supplicant" / "wpa_supplicant-wlan0.conf")
    assert 'ssid="村委会"' in wpa.read_text() and wpa.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads((conf / "cellular.toml").read_text()) == {"cellular": {"apn": "cmnet"}}
    shadow = (root / "data" / "etc" / "shadow").read_text().splitlines()
    assert f"technician:{HASH}:19000:0:99999:7:::" in shadow
    assert "root:*:19000:0:99999:7:::" in shadow
    assert (conf / "hostname").read_text() == "pingan-s1\n"


def test_second_boot_changes_nothing(tmp_path: Path) -> None:
    root = card(tmp_path)
    finish(root)
    before = state(root)
    out = finish(root)
    assert '"installed": null' in out and '"station_configured": true' in out
    assert state(root) == before


def test_a_bad_settings_file_keeps_the_station_off_and_the_secrets_on_the_card(
        tmp_path: Path) -> None:
    root = card(tmp_path)
    incoming = root / "boot" / "firmware" / "pingan-edge"
    (incoming / "settings.toml").write_text('[pins]\nfactory = "gpio-of-my-dreams"\n')
    proc = firstboot(root)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "firstboot.failed" in out and "pins.factory" in out and "re-flash" in out
    assert not (root / "data" / "etc" / "pingan-edge" / "station.toml").exists()
    assert (incoming / "bundle.tar.gz").exists()


def test_a_run_cut_short_by_a_fault_is_finished_by_the_next_boot(tmp_path: Path) -> None:
    reference = card(tmp_path / "ref")
    finish(reference)
    root = card(tmp_path / "cut")
    # A fault half-way: the certificates are written, then the hostname cannot be.
    blocker = root / "data" / "etc" / "pingan-edge" / "hostname"
    blocker.mkdir(parents=True)
    proc = firstboot(root)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "firstboot.failed" in out
    conf = root / "data" / "etc" / "pingan-edge"
    assert (conf / "tls" / "station.key").exists()
    assert not (conf / "station.toml").exists()  # so the station does not start half-made
    assert (root / "boot" / "firmware" / "pingan-edge" / "bundle.tar.gz").exists()
    blocker.rmdir()
    finish(root)
    assert same_result(state(root), state(reference))


def same_result(a: dict[str, tuple[bytes, int, int, int]],
                b: dict[str, tuple[bytes, int, int, int]]) -> bool:
    """Equal but for the per-run parts of the bundles (each card got its own CA)."""
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for name in a:
        if name.endswith((".crt", ".key")):
            assert a[name][1:] == b[name][1:], name
        else:
            assert a[name] == b[name], name
    return True


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.35, 0.5, 0.8])
def test_kill_9_anywhere_in_first_boot_is_finished_by_the_next(tmp_path: Path,
                                                               delay: float) -> None:
    reference = card(tmp_path / "ref")
    finish(reference)
    root = card(tmp_path / "cut")
    proc = firstboot(root)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    # Whatever it had done: never a station.toml without its key next to it.
    conf = root / "data" / "etc" / "pingan-edge"
    if (conf / "station.toml").exists():
        assert (conf / "tls" / "station.key").exists()
    finish(root)
    assert same_result(state(root), state(reference))
    assert not list((root / "data").rglob(".*.tmp"))
