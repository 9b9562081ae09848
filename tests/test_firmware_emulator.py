"""The boot test's finger on the emulated unit's GPIO: QEMU's own PL061 (`-M virt`) and
the Pi 3's BCM2835 GPIO (`-M raspi3b`), driven and read through qtest beside TCG, found
through QMP. No kernel is booted: the lines are QEMU's, as the guest's driver would see
them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pingan_firmware.emulator import (
    BCM2837_GPIO_BASE,
    EmulatorError,
    Qmp,
    Qtest,
    bcm2835_gpio,
    parse_reply,
    pl061,
)


def test_qtest_replies() -> None:
    assert parse_reply("OK\n") is None
    assert parse_reply("OK 0x0000000000000061\n") == 0x61
    with pytest.raises(EmulatorError, match="FAIL Unknown device"):
        parse_reply("FAIL Unknown device\n")
    with pytest.raises(EmulatorError, match="no reply"):
        parse_reply("")


@pytest.fixture
def virt(tmp_path: Path) -> Iterator[tuple[Qtest, Qmp]]:
    yield from machine(tmp_path, "virt", "-cpu", "cortex-a72")


@pytest.fixture
def raspi3b(tmp_path: Path) -> Iterator[tuple[Qtest, Qmp]]:
    yield from machine(tmp_path, "raspi3b")


def machine(tmp_path: Path, name: str, *extra: str) -> Iterator[tuple[Qtest, Qmp]]:
    qemu = shutil.which("qemu-system-aarch64")
    assert qemu is not None, "qemu-system-aarch64 is missing: run bin/setup (installs it)"
    proc = subprocess.Popen([
        qemu, "-M", name, *extra, "-accel", "tcg", "-display", "none",
        "-serial", "none", "-monitor", "none", "-qtest-log", "/dev/null",
        "-qtest", f"unix:{tmp_path}/qtest.sock,server=on,wait=off",
        "-qmp", f"unix:{tmp_path}/qmp.sock,server=on,wait=off"])
    try:
        qtest, qmp = Qtest(tmp_path / "qtest.sock"), Qmp(tmp_path / "qmp.sock")
        yield qtest, qmp
        qtest.close()
        qmp.close()
    finally:
        proc.kill()
        proc.wait()


def test_a_button_line_follows_the_finger(virt: tuple[Qtest, Qmp]) -> None:
    qtest, qmp = virt
    assert qmp.execute("query-status")["running"] is True  # TCG runs beside qtest
    lines = pl061(qtest, qmp)
    assert lines.path is not None and lines.path.startswith("/machine/")
    assert not lines.level(4)  # nothing drives it yet
    lines.drive(4, True)  # the pull-up: released
    lines.drive(5, True)
    assert (lines.level(4), lines.level(5), lines.level(6)) == (True, True, False)
    lines.drive(4, False)  # pressed: the line to ground
    assert (lines.level(4), lines.level(5)) == (False, True)
    with pytest.raises(EmulatorError, match="lines 0-7"):
        lines.drive(8, True)


def test_a_pi_input_line_follows_the_finger_through_gpset_and_gpclr(
        raspi3b: tuple[Qtest, Qmp]) -> None:
    """Every line of the Pi's GPIO is an input from reset (GPFSEL 0), as the station's
    buttons are: GPSET/GPCLR still set its level in GPLEV, which is what the guest reads."""
    qtest, qmp = raspi3b
    assert qmp.execute("query-status")["running"] is True
    assert qtest.readl(BCM2837_GPIO_BASE + 0x04) == 0  # GPFSEL1: GPIO10-19 all inputs
    lines = bcm2835_gpio(qtest)
    assert not lines.edges
    assert not lines.level(17)  # no pull modelled: 0 from reset
    lines.drive(17, True)  # the pull-up: released
    lines.drive(27, True)
    assert (lines.level(17), lines.level(27), lines.level(22)) == (True, True, False)
    lines.drive(17, False)  # pressed
    assert (lines.level(17), lines.level(27)) == (False, True)
    lines.drive(40, True)  # bank 1: GPSET1
    assert lines.level(40) and not lines.level(41)
    with pytest.raises(EmulatorError, match="lines 0-53"):
        lines.drive(54, True)
