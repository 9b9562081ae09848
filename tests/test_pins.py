"""The lgpio factory's choice of chip and board on a Pi running Debian's kernel (upstream
device trees: no firmware revision) and on QEMU's `virt` (one PL061 chip, no Pi)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpiozero.pins.pi import PiBoardInfo

from edge.unit.pins import (
    HEADER_ONLY_REVISION,
    PI_REVISIONS,
    PinFactoryError,
    board_revision,
    revision_from_compatible,
    soc_chip,
)


def test_the_socs_chip_is_chosen_whatever_its_number() -> None:
    # Debian's kernel on a Pi 3: the firmware's GPIO expander may probe first.
    assert soc_chip({0: "raspberrypi-exp-gpio", 1: "pinctrl-bcm2835"}) == 1
    assert soc_chip({0: "pinctrl-bcm2711", 1: "raspberrypi-exp-gpio"}) == 0
    # QEMU's virt machine: its one PL061.
    assert soc_chip({0: "9030000.pl061"}) == 0
    with pytest.raises(PinFactoryError, match="no GPIO chip"):
        soc_chip({})


def test_every_supported_pi_is_known_by_its_device_tree() -> None:
    models = {name: PiBoardInfo.from_revision(code).model
              for name, code in PI_REVISIONS.items()}
    assert models["raspberrypi,3-model-b"] == "3B"
    assert models["raspberrypi,4-model-b"] == "4B"
    assert models["raspberrypi,400"] == "400"
    assert models["raspberrypi,4-compute-module"] == "CM4"
    assert models["raspberrypi,model-zero-2-w"] == "Zero2W"
    # The kernel's compatible: most specific first, NUL-separated.
    assert revision_from_compatible(
        b"raspberrypi,3-model-b\0brcm,bcm2837\0") == PI_REVISIONS["raspberrypi,3-model-b"]
    assert revision_from_compatible(b"linux,dummy-virt\0") is None
    assert revision_from_compatible(b"") is None


def test_board_from_the_device_tree_when_the_firmware_gave_no_revision(
        tmp_path: Path) -> None:
    (tmp_path / "compatible").write_bytes(b"raspberrypi,4-model-b\0brcm,bcm2711\0")
    if Path("/proc/device-tree/system/linux,revision").exists():
        pytest.skip("this machine's firmware gives its own revision")
    assert board_revision(tmp_path) == PI_REVISIONS["raspberrypi,4-model-b"]
    (tmp_path / "compatible").write_bytes(b"linux,dummy-virt\0")
    assert board_revision(tmp_path) == HEADER_ONLY_REVISION
    # Pin N is line N: the header names GPIO0-27.
    header = PiBoardInfo.from_revision(HEADER_ONLY_REVISION)
    assert {info.name for _, info in header.find_pin(header.to_gpio(4))} == {"GPIO4"}
