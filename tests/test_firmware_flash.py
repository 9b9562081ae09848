"""firmware/: the card layout, the flash tool (write, read-back, identity) and its guards,
on small real images, image files and loop devices."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until as wait_for
from firmware_helpers import CMDLINE, ROOT, make_bundle, make_image, release_cert

from pingan_firmware import card, guards

FLASH = ROOT / "firmware" / "flash"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")


def run_flash(*args: str | Path) -> tuple[int, str, str]:
    """The technician's command, as a process."""
    done = subprocess.run([str(FLASH), *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "build")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


@contextlib.contextmanager
def loop_device(backing: Path, partscan: bool = False) -> Iterator[Path]:
    out = subprocess.run(["losetup", "--find", "--show", *(["-P"] if partscan else []),
                          str(backing)], capture_output=True, text=True, check=True)
    dev = Path(out.stdout.strip())
    if partscan:  # loop's own scan may be off (max_part=0): ask for the partitions
        subprocess.run(["partx", "-a", str(dev)], capture_output=True, check=False)
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False)


def test_layout_boot_root_slots_and_data_last(image: Path) -> None:
    parts = card.partitions(image)
    assert sorted(parts) == [1, 2, 3, 4]
    assert parts[1].type == "c"  # FAT32 LBA: what the Pi's boot ROM reads
    assert parts[2].size == parts[3].size  # slot B can take any future slot A
    assert parts[4].start > parts[3].start  # data last, so first boot can grow it
    assert parts[4].start + parts[4].size == image.stat().st_size
    assert card.fat_read(image, "cmdline.txt") == CMDLINE.encode()
    with card.ext4_copy(image, card.ROOT_A) as root_a:
        assert b"technician" in (card.ext4_read(root_a, "/etc/passwd") or b"")
        label = subprocess.run(["dumpe2fs", "-h", str(root_a)], capture_output=True,
                               text=True).stdout
        assert "pa-root-a" in label and "has_journal" not in label
    with card.ext4_copy(image, card.DATA) as data:
        assert card.ext4_read(data, "/etc/pingan-edge/station.toml") is None
    with image.open("rb") as f:  # slot B: nothing, not even a filesystem signature
        f.seek(parts[3].start)
        assert f.read(parts[3].size).count(0) == parts[3].size
    bmap = card.read_bmap(image.with_name(image.name + ".bmap"))
    assert bmap.mapped_bytes < image.stat().st_size / 4


def test_flash_to_image_file_writes_verifies_and_puts_the_identity(
        image: Path, bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "card.img"
    target.write_bytes(os.urandom(1024 * 1024))  # a used card
    password = tmp_path / "pw"
    password.write_text("correct horse\n")
    settings = tmp_path / "local.toml"
    settings.write_text('[pins]\nfactory = "mock"\n')
    code, out, err = run_flash(image, target, "--bundle", bundle, "--wifi-ssid", "村委会",
                               "--wifi-psk", "secret 1", "--apn", "cmnet", "--serial", "SN-7",
                               "--settings", settings, "--technician-password-file", password)
    assert code == 0, err
    assert out.startswith("LABEL  station=s1  township=t01  serial=SN-7")
    assert "reading back" in err and "read back 100%" in err
    assert card.fat_list(target, "pingan-edge") == sorted(
        ["README.txt", "bundle.tar.gz", "network.toml", "settings.toml", "technician.hash"])
    assert card.fat_read(target, "pingan-edge/bundle.tar.gz") == bundle.read_bytes()
    network = tomllib.loads((card.fat_read(target, "pingan-edge/network.toml") or b"").decode())
    assert network == {"wifi": {"ssid": "村委会", "psk": "secret 1", "country": "CN"},
                       "cellular": {"apn": "cmnet"}}
    hashed = (card.fat_read(target, "pingan-edge/technician.hash") or b"").decode().strip()
    assert hashed.startswith("$6$") and "correct" not in hashed
    check = subprocess.run(["openssl", "passwd", "-6", "-salt", hashed.split("$")[2], "-stdin"],
                           input="correct horse", capture_output=True, text=True)
    assert check.stdout.strip() == hashed
    # One machine id, in the command line of each root slot (an update changes the slot,
    # not the machine), each still booting its own root.
    seen = set()
    for name, part in (("cmdline.txt", "02"), ("cmdline-a.txt", "02"), ("cmdline-b.txt", "03")):
        cmdline = (card.fat_read(target, name) or b"").decode()
        assert f"root=PARTUUID=50494e47-{part}" in cmdline, (name, cmdline)
        machine_ids = [w for w in cmdline.split() if w.startswith("systemd.machine_id=")]
        assert len(machine_ids) == 1 and len(machine_ids[0].split("=")[1]) == 32, name
        seen.add(machine_ids[0])
    assert len(seen) == 1


def test_second_card_gets_its_own_machine_id(image: Path, bundle: Path, tmp_path: Path) -> None:
    ids = []
    for n in range(2):
        target = tmp_path / f"card{n}.img"
        assert run_flash(image, target, "--bundle", bundle)[0] == 0
        ids.append((card.fat_read(target, "cmdline.txt") or b"").split()[-1])
    assert ids[0] != ids[1]


def test_a_corrupted_card_is_caught_by_read_back(image: Path, bundle: Path,
                                                 tmp_path: Path) -> None:
    target = tmp_path / "card.img"
    assert run_flash(image, target, "--bundle", bundle)[0] == 0
    root_a = card.partitions(target)[card.ROOT_A]
    with target.open("r+b") as f:  # one flipped byte in slot A's superblock area
        f.seek(root_a.start + 1024 + 56)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, _out, err = run_flash(image, target, "--verify-only")
    assert code == 1
    assert "read back differently" in err and "use another card" in err


def test_an_image_not_matching_its_sha256_is_refused(image: Path, bundle: Path,
                                                     tmp_path: Path) -> None:
    with image.open("r+b") as f:
        f.seek(card.partitions(image)[card.BOOT].start + 4096)
        f.write(b"tampered")
    target = tmp_path / "card.img"
    code, _, err = run_flash(image, target, "--bundle", bundle)
    assert code == 1 and "does not match" in err and not target.exists()


def test_a_bad_bundle_is_refused_before_writing(image: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("s1/station.toml")
        tar.addfile(info, io.BytesIO(b""))
    target = tmp_path / "card.img"
    code, _, err = run_flash(image, target, "--bundle", bad)
    assert code == 1 and "not a station bundle" in err and not target.exists()


def test_a_wifi_password_wpa_would_refuse_is_refused_at_the_laptop(
        image: Path, bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "card.img"
    code, _, err = run_flash(image, target, "--bundle", bundle, "--wifi-ssid", "x",
                             "--wifi-psk", "short")
    assert code == 1 and "8 to 63 characters" in err and not target.exists()


def test_batch_flashes_each_row_with_a_label_and_reports_a_bad_one(
        image: Path, tmp_path: Path) -> None:
    b1, b2 = make_bundle(tmp_path, "s1"), make_bundle(tmp_path, "s2")
    rows = ["station,bundle,serial,device",
            f"s1,{b1},SN-1,{tmp_path / 'c1.img'}",
            f"s9,{tmp_path / 'missing.tar.gz'},SN-9,{tmp_path / 'c9.img'}",
            f"s2,{b2},SN-2,{tmp_path / 'c2.img'}"]
    csv_path = tmp_path / "cards.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    code, out, err = run_flash("--batch", csv_path, "--yes", image)
    lines = out.splitlines()
    assert code == 1
    assert lines[0].startswith("LABEL  station=s1  township=t01  serial=SN-1")
    assert lines[1].startswith("FAILED  station=s9  serial=SN-9")
    assert lines[2].startswith("LABEL  station=s2  township=t01  serial=SN-2")
    assert "2 cards written, 1 failed" in err
    with tarfile.open(fileobj=io.BytesIO(card.fat_read(tmp_path / "c2.img",
                                                       "pingan-edge/bundle.tar.gz") or b"")) as t:
        assert "s2/station.crt" in t.getnames()


def test_the_running_systems_disk_is_refused() -> None:
    source = subprocess.run(["findmnt", "-nvo", "SOURCE", "--target", "/"], capture_output=True,
                            text=True).stdout.strip()
    if not source.startswith("/dev/"):
        pytest.skip(f"/ is on {source!r}, not a block device")
    disk = guards.whole_disk(Path(source))
    for target in (disk, Path(source)):
        with pytest.raises(guards.Refused, match="this computer is running from"):
            guards.check_target(target, force=True)


def test_the_cli_refuses_the_system_disk_before_anything_is_written(
        image: Path, bundle: Path) -> None:
    source = subprocess.run(["findmnt", "-nvo", "SOURCE", "--target", "/"], capture_output=True,
                            text=True).stdout.strip()
    if not source.startswith("/dev/"):
        pytest.skip(f"/ is on {source!r}, not a block device")
    # Belt and braces: without its block map this image could not be written anyway.
    image.with_name(image.name + ".bmap").unlink()
    code, _, err = run_flash(image, guards.whole_disk(Path(source)), "--bundle", bundle,
                             "--force")
    assert code == 1 and "running from" in err


@needs_root
def test_flash_to_a_loop_device_needs_force_then_verifies(image: Path, bundle: Path,
                                                          tmp_path: Path) -> None:
    backing = tmp_path / "sdcard"
    with backing.open("wb") as f:
        f.truncate(80 * 1024 * 1024)
    with loop_device(backing) as dev:
        code, _, err = run_flash(image, dev, "--bundle", bundle)
        assert code == 1 and "not a removable disk" in err and "--force" in err
        code, _out, err = run_flash(image, dev, "--bundle", bundle, "--force")
        assert code == 0, err
        assert card.fat_read(dev, "pingan-edge/bundle.tar.gz") == bundle.read_bytes()
        with card.ext4_copy(dev, card.ROOT_A) as root_a:
            assert card.ext4_read(root_a, "/etc/os-release")


@needs_root
def test_a_mounted_card_is_refused(image: Path, bundle: Path, tmp_path: Path) -> None:
    backing = tmp_path / "sdcard"
    shutil.copy(image, backing)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(backing, partscan=True) as dev:
        part = Path(f"{dev}p2")  # root slot A: ext4 (this kernel has no vfat)
        if not part.exists():  # no udev here: make the node the kernel announced
            sys_dev = Path(f"/sys/class/block/{part.name}/dev")
            assert wait_for(sys_dev.exists, 5), "the kernel did not scan the partitions"
            major, minor = sys_dev.read_text().split(":")
            os.mknod(part, 0o600 | stat.S_IFBLK, os.makedev(int(major), int(minor)))
        subprocess.run(["mount", "-o", "ro", str(part), str(mnt)], check=True)
        try:
            with pytest.raises(guards.Refused, match="in use"):
                guards.check_target(dev, force=True)
            code, _, err = run_flash(image, dev, "--bundle", bundle, "--force")
            assert code == 1 and f"{part} on {mnt}" in err and "unmount it first" in err
            with pytest.raises(guards.Refused, match="is a partition"):
                guards.check_target(part, force=True)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


def test_the_release_keyring_goes_into_slot_a_at_flash_time_and_a_card_trusting_none_is_refused(
        bundle: Path, tmp_path: Path) -> None:
    bare = make_image(tmp_path / "bare", keyring=False)
    target = tmp_path / "card.img"
    code, _, err = run_flash(bare, target, "--bundle", bundle)
    assert code == 1 and "trusts no release key" in err and "--keyring" in err
    # Two keys, as during a rotation (docs/update.md): both go on the card as given.
    ring = tmp_path / "keyring.pem"
    ring.write_bytes(release_cert(tmp_path / "k", "release-2026").read_bytes()
                     + release_cert(tmp_path / "k", "release-2027").read_bytes())
    code, _, err = run_flash(bare, target, "--bundle", bundle, "--keyring", ring)
    assert code == 0, err
    assert card.ext4_read_at(target, card.ROOT_A, "/etc/rauc/keyring.pem") == ring.read_bytes()
    assert "release-2026" in err and "release-2027" in err
    with card.ext4_copy(target, card.ROOT_A) as root_a:  # root-owned, world-readable
        st = subprocess.run(["debugfs", "-R", "stat /etc/rauc/keyring.pem", str(root_a)],
                            capture_output=True, text=True).stdout
        assert "Mode:  0644" in st and "User:     0" in st
        fsck = subprocess.run(["e2fsck", "-fn", str(root_a)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout
    # A file with the signing key in it never reaches a card; nothing is written.
    leaked = tmp_path / "leaked.pem"
    leaked.write_bytes(ring.read_bytes() + (tmp_path / "k/release-2027.key.pem").read_bytes())
    fresh = tmp_path / "fresh.img"
    code, _, err = run_flash(bare, fresh, "--bundle", bundle, "--keyring", leaked)
    assert code == 1 and "PRIVATE KEY" in err and not fresh.exists()


def test_an_image_built_with_a_keyring_keeps_it_unless_flash_replaces_it(
        image: Path, bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "card.img"
    assert run_flash(image, target, "--bundle", bundle)[0] == 0
    built = card.ext4_read_at(image, card.ROOT_A, "/etc/rauc/keyring.pem")
    assert built and card.ext4_read_at(target, card.ROOT_A, "/etc/rauc/keyring.pem") == built
    other = release_cert(tmp_path / "k", "county-release")
    assert run_flash(image, target, "--bundle", bundle, "--keyring", other)[0] == 0
    assert card.ext4_read_at(target, card.ROOT_A, "/etc/rauc/keyring.pem") == other.read_bytes()
