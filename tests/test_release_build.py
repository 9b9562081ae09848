"""`pingan-centre release build`: real RAUC bundles (verity, signed), the signed offer
descriptor, and the unit's checks of both (edge.update.verify) — including a keyring
rotation: units trust only the keyring they were flashed with, a release signed by the old
key brings the new one, and after the rotation the old key is refused."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from edge.contract import release as unit_release
from edge.update import verify
from edge.update.verify import UpdateRefused
from pingan_centre.cli import main as centre_main
from pingan_centre.release import descriptor as centre_release
from pingan_sim.update_rig import (
    DPKG_STATUS,
    build_release,
    descriptor,
    keyring,
    make_signer,
    read_from_ext4,
    root_tree,
)

ROOT = Path(__file__).resolve().parent.parent


def extract(bundle: Path, ring: Path, dest: Path) -> Path:
    """What an install reads: RAUC checks the signature and every payload block."""
    subprocess.run(["rauc", "extract", "--keyring", str(ring), str(bundle), str(dest)],
                   check=True, capture_output=True)
    return dest


def test_the_cli_builds_a_signed_verity_bundle_with_manifest_and_bom_from_the_lock(
        tmp_path: Path) -> None:
    signer = make_signer(tmp_path / "keys", "release-2026")
    tree = root_tree(tmp_path / "root", "0.2.0")
    (tmp_path / "status").write_text(DPKG_STATUS)
    out = tmp_path / "out"
    assert centre_main(["release", "build", "--version", "0.2.0", "--root-dir", str(tree),
                        "--min-data-schema", "2", "--dpkg", str(tmp_path / "status"),
                        "--lock", str(ROOT / "locks/unit-aarch64.txt"), "--cert",
                        str(signer.cert), "--key", str(signer.key), "-o", str(out)]) == 0
    bundle = out / "pingan-edge-0.2.0.raucb"
    info = verify.check_bundle(bundle, signer.cert)
    assert (info.version, info.compatible) == ("0.2.0", unit_release.COMPATIBLE)
    assert [next(iter(i)) for i in info.raw["images"]] == ["rootfs"]
    # Adaptive: a unit streaming it can fetch only the blocks its other slot lacks.
    assert info.raw["images"][0]["rootfs"]["adaptive"] == ["block-hash-index"]
    # RAUC says the bundle is verity (streamable) and the payload checks block by block.
    done = subprocess.run(["rauc", "info", "--keyring", str(signer.cert), str(bundle)],
                          capture_output=True, text=True, check=True)
    assert "Bundle Format: \tverity" in done.stdout
    content = extract(bundle, signer.cert, tmp_path / "x")
    assert read_from_ext4(content / "rootfs.ext4", "/etc/pingan-release") == b"0.2.0\n"
    manifest = json.loads((content / "pingan-release.json").read_text())
    assert (manifest["version"], manifest["min_data_schema"]) == ("0.2.0", 2)
    bom = json.loads((content / "bom.cdx.json").read_text())
    purls = {c.get("purl", "").split("@")[0] for c in bom["components"]}
    lock_names = {line.split("==")[0].strip().lower().replace("_", "-")
                  for line in (ROOT / "locks/unit-aarch64.txt").read_text().splitlines()
                  if "==" in line and not line.startswith((" ", "#"))}
    assert {f"pkg:pypi/{n}" for n in lock_names} <= purls
    assert "pkg:deb/debian/rauc" in purls
    # The descriptor: the unit's words are the signer's words, and the signature holds.
    release, signature, doc = descriptor_of(out / "pingan-edge-0.2.0.release.json")
    assert doc["file"] == bundle.name
    assert unit_release.canonical(release) == centre_release.canonical(
        centre_release.Release(**{k: doc[k] for k in (
            "version", "size", "sha256", "min_data_schema", "rollback", "compatible")}))
    verify.check_descriptor(release, signature, signer.cert)
    verify.check_file(bundle, release)


def descriptor_of(path: Path) -> tuple[unit_release.Release, bytes, dict[str, object]]:
    doc = json.loads(path.read_text())
    release = unit_release.Release(**{k: doc[k] for k in (
        "compatible", "version", "size", "sha256", "min_data_schema", "rollback")})
    return release, base64.b64decode(doc["signature"]), doc


def test_a_wrong_key_and_a_tampered_descriptor_or_bundle_are_refused(tmp_path: Path) -> None:
    ours, stranger = make_signer(tmp_path / "k", "ours"), make_signer(tmp_path / "k", "stranger")
    built = build_release(tmp_path, "0.2.0", stranger)
    release, signature, _ = descriptor(built)
    with pytest.raises(UpdateRefused) as wrong:
        verify.check_bundle(built.bundle, ours.cert)
    assert wrong.value.code == "wrong_key"
    with pytest.raises(UpdateRefused) as wrong_desc:
        verify.check_descriptor(release, signature, ours.cert)
    assert wrong_desc.value.code == "wrong_key"
    # Our own release, its descriptor edited after signing (a bigger version, a rollback).
    built = build_release(tmp_path, "0.3.0", ours)
    release, signature, _ = descriptor(built)
    for forged in (unit_release.Release(**{**_fields(release), "version": "9.0.0"}),
                   unit_release.Release(**{**_fields(release), "rollback": True})):
        with pytest.raises(UpdateRefused) as bad:
            verify.check_descriptor(forged, signature, ours.cert)
        assert bad.value.code == "bad_signature"
    # A payload byte changed: the hash in the signed descriptor says so; RAUC's block check
    # (what an install runs) refuses it too.
    tampered = tmp_path / "tampered.raucb"
    data = bytearray(built.bundle.read_bytes())
    data[len(data) // 3] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(UpdateRefused) as hashed:
        verify.check_file(tampered, release)
    assert hashed.value.code == "hash_mismatch"
    with pytest.raises(subprocess.CalledProcessError) as rauc_refused:
        extract(tampered, ours.cert, tmp_path / "t")
    assert b"corrupted" in rauc_refused.value.stderr or b"failed" in rauc_refused.value.stderr
    truncated = tmp_path / "truncated.raucb"
    truncated.write_bytes(built.bundle.read_bytes()[: release.size // 2])
    with pytest.raises(UpdateRefused) as short:
        verify.check_file(truncated, release)
    assert short.value.code == "truncated"
    with pytest.raises(UpdateRefused) as short_rauc:
        verify.check_bundle(truncated, ours.cert)
    assert short_rauc.value.code in {"truncated", "bad_signature"}


def _fields(release: unit_release.Release) -> dict[str, object]:
    return {f: getattr(release, f) for f in release.__struct_fields__}


def test_the_keyring_rotates_through_a_release_and_the_old_key_is_then_refused(
        tmp_path: Path) -> None:
    old = make_signer(tmp_path / "k", "release-2026")
    new = make_signer(tmp_path / "k", "release-2027")
    flashed = keyring(tmp_path / "flashed.pem", old)  # what firmware/flash puts on the unit
    both = keyring(tmp_path / "both.pem", old, new)
    only_new = keyring(tmp_path / "new.pem", new)

    def installed_keyring(built_bundle: Path, ring: Path, name: str) -> Path:
        """The keyring the unit trusts after booting the release: the one in its root."""
        content = extract(built_bundle, ring, tmp_path / f"x-{name}")
        path = tmp_path / f"trusted-{name}.pem"
        path.write_bytes(read_from_ext4(content / "rootfs.ext4", "/etc/rauc/keyring.pem"))
        return path

    early = build_release(tmp_path, "0.2.0", new, trusted=only_new)
    with pytest.raises(UpdateRefused) as too_early:
        verify.check_bundle(early.bundle, flashed)
    assert too_early.value.code == "wrong_key"
    # Step 1: signed by the old key, it brings a keyring of both.
    step1 = build_release(tmp_path, "0.2.0", old, trusted=both)
    verify.check_bundle(step1.bundle, flashed)
    release, signature, _ = descriptor(step1)
    verify.check_descriptor(release, signature, flashed)
    trusted = installed_keyring(step1.bundle, flashed, "step1")
    # Step 2: signed by the new key, it brings a keyring of the new key only.
    step2 = build_release(tmp_path, "0.3.0", new, trusted=only_new)
    verify.check_bundle(step2.bundle, trusted)
    release, signature, _ = descriptor(step2)
    verify.check_descriptor(release, signature, trusted)
    trusted = installed_keyring(step2.bundle, trusted, "step2")
    # Rotated: the old key is refused, the new one works.
    stale = build_release(tmp_path, "0.4.0", old, trusted=both)
    with pytest.raises(UpdateRefused) as refused:
        verify.check_bundle(stale.bundle, trusted)
    assert refused.value.code == "wrong_key"
    release, signature, _ = descriptor(stale)
    with pytest.raises(UpdateRefused) as refused_desc:
        verify.check_descriptor(release, signature, trusted)
    assert refused_desc.value.code == "wrong_key"
    fresh = build_release(tmp_path, "0.4.0", new, trusted=only_new)
    verify.check_bundle(fresh.bundle, trusted)


def test_a_rootfs_image_is_taken_as_it_is_and_bad_inputs_say_so(tmp_path: Path) -> None:
    signer = make_signer(tmp_path / "k", "ours")
    image = tmp_path / "rootA.ext4"
    with image.open("wb") as f:
        f.truncate(8 << 20)
    tree = root_tree(tmp_path / "root", "0.5.0")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image)], check=True)
    (tmp_path / "bom.json").write_text("{}")
    args = ["release", "build", "--version", "0.5.0", "--rootfs", str(image),
            "--min-data-schema", "1", "--bom", str(tmp_path / "bom.json"), "--cert",
            str(signer.cert), "--key", str(signer.key), "-o", str(tmp_path / "out")]
    assert centre_main(args) == 0
    content = extract(tmp_path / "out/pingan-edge-0.5.0.raucb", signer.cert, tmp_path / "x")
    assert (content / "rootfs.ext4").read_bytes() == image.read_bytes()
    assert centre_main([*args[:2], "--version", "v5", *args[4:]]) == 1
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 5000)
    assert centre_main([a if a != str(image) else str(odd) for a in args]) == 1
