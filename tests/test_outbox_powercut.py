"""A power cut on the card itself: the outbox on an ext4 file system made and mounted as the
unit's data partition (loop device, `noatime,commit=300`), the card's content taken at an
instant (the loop device's backing file: what reached the "card"; what the kernel still
holds in RAM is what a power cut loses), then mounted again (ext4 replays its journal) and
the outbox opened on it, as the next boot would.

- An alarm whose append returned (the press acknowledged) is on the card.
- A delivery mark is committed without fsync: a cut just after it may lose it, never the
  event, which is then still pending and sent again (the township de-duplicates by id).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge.contract.events import AlarmPanic, PanicPayload, stamp
from edge.store.outbox import Outbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


@contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    """`image` on a loop device, mounted as the unit's fstab mounts the data partition."""
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        mountpoint.mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "noatime,commit=300", dev, str(mountpoint)],
                       check=True)
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def cut(image: Path, at: Path) -> Path:
    """The card as it is now, mid-operation: a copy of what reached the device."""
    shutil.copyfile(image, at)
    return at


def alarm() -> AlarmPanic:
    return AlarmPanic(station="v001", township="t01",
                      payload=PanicPayload(source="simulator", held_s=0.0), **stamp())


def test_power_cut_keeps_an_acknowledged_alarm_and_at_worst_resends_a_delivered_one(
        tmp_path: Path) -> None:
    card = tmp_path / "data.ext4"
    with open(card, "wb") as f:
        f.truncate(128 * 1024 * 1024)
    # As firmware/assemble-image makes the data partition.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "pa-data", "-m", "1", str(card)], check=True)
    with mounted(card, tmp_path / "mnt") as mnt:
        box = Outbox(mnt / "outbox.db")
        box.start()
        try:
            earlier = box.append(alarm())
            box.mark_delivered(earlier.seq, len(earlier.body))
            box.flush()
            stored = box.append(alarm())
            after_accept = cut(card, tmp_path / "after-accept.ext4")
            box.mark_delivered(stored.seq, len(stored.body))
            assert box.flush()
            after_mark = cut(card, tmp_path / "after-mark.ext4")
        finally:
            box.close()

    for image in (after_accept, after_mark):
        with mounted(image, tmp_path / f"{image.stem}-mnt") as mnt:
            box = Outbox(mnt / "outbox.db")
            try:
                assert box.damage is None, (image.name, box.damage)
                found = box.lookup(stored.id)
                assert found is not None, f"{image.name}: the acknowledged alarm is lost"
                pending = [p.id for p in box.pending({}, 100)]
                assert found[1] or stored.id in pending, image.name
                if image is after_accept:
                    assert stored.id in pending, "accepted, not yet delivered: sent next"
                # Whatever the cut took, the next event never reuses a seq.
                box.start()
                assert box.append(alarm()).seq > stored.seq
            finally:
                box.close()
