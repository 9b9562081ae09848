"""First boot on a real FAT boot partition: a card made by firmware/assemble-image, its
identity written by firmware/flash, the partition mounted by a real FAT driver (the
kernel's vfat where it has one, else fusefat through /dev/fuse), first boot run on it, then
the raw card carved as a thief would: every gzip stream in it inflated, and the lot searched
for the station key (PEM, each PEM line, DER), a tar header, the technician's password hash
and the Wi-Fi key."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from firmware_helpers import CONFIG, ROOT, make_bundle, make_image, unit_tree

from pingan_firmware import card

FLASH = ROOT / "firmware" / "flash"
PSK = "wifi-secret-7d1c"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def kernel_vfat() -> bool:
    return any(line.split()[-1] == "vfat" for line in Path("/proc/filesystems").read_text()
               .splitlines())


@contextlib.contextmanager
def fat_mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    """The card's boot partition on a loop device, mounted read-write; yields the device."""
    part = card.partitions(image)[card.BOOT]
    dev = Path(subprocess.run(["losetup", "--find", "--show", "--offset", str(part.start),
                               "--sizelimit", str(part.size), str(image)],
                              capture_output=True, text=True, check=True).stdout.strip())
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        if kernel_vfat():
            subprocess.run(["mount", "-t", "vfat", str(dev), str(mountpoint)], check=True)
        else:
            assert shutil.which("fusefat"), "fusefat (bin/setup installs it) or kernel vfat"
            subprocess.run(["fusefat", "-o", "rw+", str(dev), str(mountpoint)], check=True,
                           capture_output=True)
            wait_until(lambda: mountpoint.is_mount())
        try:
            yield dev
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False)


def flashed_card(tmp_path: Path) -> tuple[Path, Path]:
    """(the card image, the bundle) after `firmware/flash` to a used card."""
    image = make_image(tmp_path / "build")
    bundle = make_bundle(tmp_path)
    target = tmp_path / "card.img"
    target.write_bytes(os.urandom(1024 * 1024))  # a used card
    password = tmp_path / "pw"
    password.write_text("correct horse\n")
    done = subprocess.run([str(FLASH), str(image), str(target), "--bundle", str(bundle),
                           "--wifi-ssid", "village", "--wifi-psk", PSK,
                           "--technician-password-file", str(password)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stderr
    return target, bundle


def secrets_of(bundle: Path, target: Path) -> dict[str, bytes]:
    """What must not be recoverable, each with a name for the failure message."""
    with tarfile.open(bundle, "r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("station.key"))
        f = tar.extractfile(member)
        assert f is not None
        pem = f.read()
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    der = base64.b64decode(body)
    found = {"key PEM": pem, "key DER": der, "tar header": b"ustar",
             "password hash": (card.fat_read(target, "pingan-edge/technician.hash") or b"")
             .strip(), "Wi-Fi key": PSK.encode()}
    assert len(found["password hash"]) > 20
    for n, line in enumerate(pem.splitlines()[1:-1]):
        found[f"key PEM line {n}"] = line
    for n in range(0, len(der) - 32, 32):  # a fragment of the key material is enough
        found[f"key DER bytes {n}..{n + 32}"] = der[n:n + 32]
    return found


def carve(image: Path) -> list[bytes]:
    """The raw card, and the inflated contents of every gzip stream that starts in it."""
    raw = image.read_bytes()
    blobs = [raw]
    at = raw.find(b"\x1f\x8b\x08")
    while at >= 0:
        inflate = zlib.decompressobj(wbits=31)
        with contextlib.suppress(zlib.error):
            out = inflate.decompress(raw[at:at + 16 * 2**20], 64 * 2**20)
            if out:
                blobs.append(out)
        at = raw.find(b"\x1f\x8b\x08", at + 1)
    return blobs


def recovered(image: Path, secrets: dict[str, bytes]) -> list[str]:
    blobs = carve(image)
    return sorted(name for name, data in secrets.items() if any(data in b for b in blobs))


def first_boot(tmp_path: Path, target: Path, *, scrub: bool) -> str:
    root = unit_tree(tmp_path / "unit")
    for d in ("etc/pingan-edge", "state"):
        (root / "data" / d).mkdir(parents=True)
    with fat_mounted(target, root / "boot" / "firmware") as dev:
        assert (root / "boot" / "firmware" / "pingan-edge" / "bundle.tar.gz").exists()
        done = subprocess.run([sys.executable, "-m", "edge.unit.firstboot", "--root",
                               str(root), *(["--boot-device", str(dev)] if scrub else [])],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        left = (root / "boot" / "firmware" / "pingan-edge").iterdir()
        assert sorted(p.name.lower() for p in left) == ["readme.txt"]  # fusefat: 8.3 names
    assert (root / "data/etc/pingan-edge/tls/station.key").exists()
    assert not (root / "data/etc/pingan-edge/.fat-scrub").exists()
    return done.stdout


def test_the_flashed_card_holds_every_secret_a_carver_looks_for(tmp_path: Path) -> None:
    """The search below can find what it looks for (the DER form too, should a bundle
    ever carry one: today's holds PEM only)."""
    target, bundle = flashed_card(tmp_path)
    secrets = secrets_of(bundle, target)
    assert recovered(target, secrets) == sorted(k for k in secrets if "DER" not in k)


def test_deleting_alone_leaves_the_key_on_the_card(tmp_path: Path) -> None:
    """What the issue found: a deleted FAT file is still there."""
    target, bundle = flashed_card(tmp_path)
    secrets = secrets_of(bundle, target)
    first_boot(tmp_path, target, scrub=False)
    assert {"key PEM", "key PEM line 0", "tar header", "password hash", "Wi-Fi key"} <= set(
        recovered(target, secrets))


def test_after_first_boot_nothing_of_the_identity_is_left_on_the_card(tmp_path: Path) -> None:
    target, bundle = flashed_card(tmp_path)
    secrets = secrets_of(bundle, target)
    out = first_boot(tmp_path, target, scrub=True)
    assert '"event": "firstboot.boot_partition_zeroed"' in out
    assert recovered(target, secrets) == []
    # The partition is still a good FAT file system, with what the Pi boots from.
    # fsck.vfat takes no offset: check a copy of the partition's bytes.
    part = card.partitions(target)[card.BOOT]
    boot = tmp_path / "boot.vfat"
    with target.open("rb") as src, boot.open("wb") as dst:
        src.seek(part.start)
        dst.write(src.read(part.size))
    fsck = subprocess.run(["fsck.vfat", "-n", str(boot)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert card.fat_read(target, "config.txt") == CONFIG.encode()
    assert b"systemd.machine_id=" in (card.fat_read(target, "cmdline.txt") or b"")


def test_a_power_cut_after_the_delete_is_finished_by_the_next_boot(tmp_path: Path) -> None:
    """The marker on the data partition outlives the deleted files: the next boot zeroes."""
    target, bundle = flashed_card(tmp_path)
    secrets = secrets_of(bundle, target)
    first_boot(tmp_path / "cut", target, scrub=False)  # deleted, not zeroed: as if cut
    root = tmp_path / "cut" / "unit"
    (root / "data/etc/pingan-edge/.fat-scrub").write_bytes(b"")
    assert "key PEM" in recovered(target, secrets)
    with fat_mounted(target, root / "boot" / "firmware") as dev:
        done = subprocess.run([sys.executable, "-m", "edge.unit.firstboot", "--root",
                               str(root), "--boot-device", str(dev)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    assert '"installed": null' in done.stdout and "boot_partition_zeroed" in done.stdout
    assert recovered(target, secrets) == []
    assert not (root / "data/etc/pingan-edge/.fat-scrub").exists()


def test_a_partition_that_is_not_fat_is_refused_with_what_to_do(tmp_path: Path) -> None:
    root = unit_tree(tmp_path / "unit")
    (root / "data/etc/pingan-edge").mkdir(parents=True)
    (root / "data/etc/pingan-edge/.fat-scrub").write_bytes(b"")
    (root / "data/etc/pingan-edge/station.toml").write_text("")
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(65536))
    before = junk.read_bytes()
    done = subprocess.run([sys.executable, "-m", "edge.unit.firstboot", "--root", str(root),
                           "--boot-device", str(junk)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "not a FAT file system" in done.stdout and "revoke" in done.stdout
    assert junk.read_bytes() == before
