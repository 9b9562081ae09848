"""The systemd units the image ships, as systemd itself rates them: `systemd-analyze security
--offline=true` on a tree laid out as stage 30 lays out the image's /etc/systemd/system."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = Path("etc/systemd/system")
MAX_EXPOSURE = 2.5
UNITS = ["pingan-edge.service", "pingan-firstboot.service", "pingan-warnlog.service",
         "pingan-edge-tryboot.service", "pingan-edge-update-commit.service"]


def offline_analyze() -> bool:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return False
    helptext = subprocess.run([analyze, "--help"], capture_output=True, text=True).stdout
    return "--offline" in helptext  # systemd 250 and later (Debian 12 has 252)


pytestmark = pytest.mark.skipif(not offline_analyze(),
                                reason="needs systemd-analyze with --offline (systemd ≥ 250)")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """firmware/rootfs, then the units in systemd/: what stage 30 copies."""
    root = tmp_path_factory.mktemp("image")
    shutil.copytree(ROOT / "firmware" / "rootfs", root, dirs_exist_ok=True, symlinks=True)
    for unit in ("pingan-edge.service", "pingan-edge-tryboot.service",
                 "pingan-edge-update-commit.service"):
        shutil.copy(ROOT / "systemd" / unit, root / SYSTEM / unit)
    return root


def exposure(root: Path, unit: str) -> tuple[float, str]:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                          "--no-pager", unit], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1)), out.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_of_ours_is_exposed_no_more_than_the_limit(image_root: Path,
                                                            unit: str) -> None:
    score, report = exposure(image_root, unit)
    assert score <= MAX_EXPOSURE, report


@pytest.mark.parametrize("unit", UNITS)
def test_each_device_allowed_says_why_and_the_syscalls_are_an_allow_list(image_root: Path,
                                                                         unit: str) -> None:
    lines = (image_root / SYSTEM / unit).read_text().splitlines()
    allowed = [n for n, line in enumerate(lines) if line.startswith("DeviceAllow=")]
    assert "DevicePolicy=closed" in lines
    for n in allowed:  # each its own reason, in the comment right above it
        assert lines[n - 1].startswith("#"), f"{unit}: {lines[n]} has no reason above it"
    filters = [line for line in lines if line.startswith("SystemCallFilter=")]
    assert filters and filters[0].split("=", 1)[1].split()[0] == "@system-service"
    assert "CapabilityBoundingSet=" in "\n".join(lines)


def test_the_analysis_can_fail(image_root: Path, tmp_path: Path) -> None:
    """The unit as it was before the hardening scores well above the limit."""
    bare = tmp_path / "bare"
    (bare / SYSTEM).mkdir(parents=True)
    text = (image_root / SYSTEM / "pingan-edge.service").read_text()
    keep = ("[", "Description", "Type", "ExecStart", "User", "Group", "WantedBy")
    (bare / SYSTEM / "pingan-edge.service").write_text(
        "\n".join(line for line in text.splitlines() if line.startswith(keep)) + "\n")
    score, _ = exposure(bare, "pingan-edge.service")
    assert score > MAX_EXPOSURE


def _allowed_syscalls(lines: list[str]) -> set[str]:
    """The allow-list the unit's SystemCallFilter= lines make, groups expanded by systemd."""
    allowed: set[str] = set()
    for line in lines:
        if line.startswith("SystemCallFilter=") and not line.split("=", 1)[1].startswith("~"):
            for name in line.split("=", 1)[1].split():
                if name.startswith("@"):
                    out = subprocess.run(["systemd-analyze", "syscall-filter", name],
                                         capture_output=True, text=True, check=True).stdout
                    allowed |= {w.strip() for w in out.splitlines()[1:]
                                if w.strip() and not w.strip().startswith("#")}
                else:
                    allowed.add(name)
    return allowed


def test_the_station_can_ask_the_kernel_whether_the_clock_is_synchronised(
        image_root: Path) -> None:
    """edge/clock.py asks adjtimex(2) (read-only). ProtectClock= or an allow-list without it
    makes the call fail with EPERM, and every event would then say the clock is unsynced."""
    lines = (image_root / SYSTEM / "pingan-edge.service").read_text().splitlines()
    assert "ProtectClock=yes" not in lines
    assert "adjtimex" in _allowed_syscalls(lines)
    assert "settimeofday" not in _allowed_syscalls(lines)


def test_the_station_does_not_wait_for_the_network_to_start(image_root: Path) -> None:
    """A unit that boots without a link (or with a 4G modem still registering) must take a
    press at once: no ordering after network-online.target, in the unit or its drop-ins."""
    unit = image_root / SYSTEM / "pingan-edge.service"
    texts = [unit.read_text()] + [p.read_text() for p in
                                  sorted((image_root / SYSTEM / f"{unit.name}.d").glob("*.conf"))]
    after = [word for text in texts for line in text.splitlines()
             if line.startswith(("After=", "Requires=", "BindsTo="))
             for word in line.split("=", 1)[1].split()]
    assert after, "the unit orders itself after something (first boot, the network's stop)"
    assert not [w for w in after if "online" in w or "wait" in w], after


def test_the_commit_leaves_its_verdict_readable_by_the_station(image_root: Path) -> None:
    """`pingan-edge update commit` (root) rewrites the trial record, which the station (user
    pingan) then reads to report the outcome: its umask must leave the file readable."""
    lines = (image_root / SYSTEM / "pingan-edge-update-commit.service").read_text().splitlines()
    umask = [int(line.split("=", 1)[1], 8) for line in lines if line.startswith("UMask=")]
    assert umask and umask[-1] & 0o044 == 0, umask
