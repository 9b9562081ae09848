"""Build a release: a RAUC bundle (verity format, signed) and the signed offer descriptor.

Runs on the signing PC, the only machine that holds the release key. What it makes:

    OUT/pingan-edge-<version>.raucb          the RAUC bundle: the root filesystem for slot
                                             A or B, the bill of materials, our manifest
    OUT/pingan-edge-<version>.release.json   what the console offers: the signed
                                             descriptor (edge.contract.release) + signature

RAUC signs the bundle (CMS over its manifest and the payload's dm-verity root hash); we
sign the descriptor with the same key (CMS, detached, DER) so that a unit can refuse a
bad offer before it downloads anything. Nothing here writes a bundle format of its own:
`rauc bundle` writes the bundle and `rauc info --keyring` checks it before we hand it out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pingan_centre.release.descriptor import COMPATIBLE, Release, canonical, version_key

# The image's name inside the bundle and the slot class it goes to (the unit's system.conf).
ROOTFS_NAME = "rootfs.ext4"
SLOT_CLASS = "rootfs"
BOM_NAME = "bom.cdx.json"
MANIFEST_NAME = "pingan-release.json"


class ReleaseError(Exception):
    """The release could not be built or does not verify; the message says why."""


@dataclass(frozen=True)
class Built:
    bundle: Path
    descriptor: Path
    release: Release


def _run(args: list[str], what: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise ReleaseError(f"{what}: {args[0]} is not installed (Debian: apt-get install "
                           f"{'rauc' if args[0] == 'rauc' else args[0]}; bin/setup does)") from exc
    if done.returncode != 0:
        raise ReleaseError(f"{what} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_rootfs(root_dir: Path, out: Path, *, slack: float = 1.25) -> Path:
    """An ext4 image of a root tree (as firmware/assemble-image makes slot A): no journal,
    since the slot is mounted read-only. Sized to the tree plus `slack`, in 4 KiB blocks
    (RAUC's adaptive index works on 4 KiB blocks)."""
    used = sum(p.lstat().st_size for p in root_dir.rglob("*"))
    size = max(int(used * slack) + (8 << 20), 16 << 20)
    size = (size + 4095) // 4096 * 4096
    with out.open("wb") as f:
        f.truncate(size)
    _run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-L", "pingan-root", "-d",
          str(root_dir), str(out)], "mkfs.ext4 of the root tree")
    return out


def make_bom(*, version: str, dpkg: Path, lock: Path, out: Path) -> Path:
    """The bill of materials from the lock (and a dpkg status file): firmware's own tool,
    run as a program (the township imports nothing of firmware's)."""
    _run([sys.executable, "-m", "pingan_firmware.bom", "--dpkg", str(dpkg), "--python",
          str(lock), "--distro", "debian-12", "--version", version, "-o", str(out)],
         "the bill of materials (pingan_firmware.bom)")
    return out


def manifest(version: str, *, build: str, min_data_schema: int, bom_sha256: str,
             bundle_format: str = "verity") -> str:
    """RAUC's manifest. `adaptive=block-hash-index`: a unit streaming the bundle fetches
    only the blocks its other slot lacks. [meta.pingan] is for people and `rauc info`;
    the unit takes these figures from the signed descriptor."""
    return (f"[update]\ncompatible={COMPATIBLE}\nversion={version}\n"
            f"description=Ping'an Edge {version}\nbuild={build}\n\n"
            f"[bundle]\nformat={bundle_format}\n\n"
            f"[image.{SLOT_CLASS}]\nfilename={ROOTFS_NAME}\nadaptive=block-hash-index\n\n"
            f"[meta.pingan]\nmin-data-schema={min_data_schema}\nbom={BOM_NAME}\n"
            f"bom-sha256={bom_sha256}\n")


def sign(data: bytes, *, cert: Path, key: Path) -> bytes:
    """A detached CMS signature (DER) over `data`, by the release key."""
    with tempfile.TemporaryDirectory(prefix="pingan-sign-") as tmp:
        src, sig = Path(tmp) / "data", Path(tmp) / "sig"
        src.write_bytes(data)
        _run(["openssl", "cms", "-sign", "-binary", "-in", str(src), "-signer", str(cert),
              "-inkey", str(key), "-outform", "DER", "-out", str(sig)], "signing the descriptor")
        return sig.read_bytes()


def verify_bundle(bundle: Path, keyring: Path) -> dict[str, object]:
    """`rauc info --keyring`: the signature against the keyring; returns RAUC's JSON."""
    out = _run(["rauc", "info", "--keyring", str(keyring), "--output-format=json", str(bundle)],
               f"rauc info of {bundle.name} against {keyring}")
    info: dict[str, object] = json.loads(out)
    return info


def build(*, version: str, out_dir: Path, cert: Path, key: Path, min_data_schema: int,
          bom: Path, rootfs: Path | None = None, root_dir: Path | None = None,
          rollback: bool = False, build_id: str = "", keyring: Path | None = None,
          extra_files: dict[str, Path] | None = None,
          bundle_format: str = "verity") -> Built:
    """Make the bundle and its signed descriptor in `out_dir`; check the bundle against
    `keyring` (default: the signing certificate) before saying it is done."""
    version_key(version)  # a bad version stops here, not on a unit
    if (rootfs is None) == (root_dir is None):
        raise ReleaseError("give exactly one of --rootfs IMAGE or --root-dir DIR")
    if not bom.is_file():
        raise ReleaseError(f"{bom}: no bill of materials (firmware/build-image writes "
                           f"IMAGE.bom.cdx.json; or give --dpkg and --lock)")
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = out_dir / f"pingan-edge-{version}.raucb"
    descriptor = out_dir / f"pingan-edge-{version}.release.json"
    with tempfile.TemporaryDirectory(prefix="pingan-release-") as tmp:
        content = Path(tmp) / "bundle"
        content.mkdir()
        if root_dir is not None:
            make_rootfs(root_dir, content / ROOTFS_NAME)
        else:
            assert rootfs is not None
            if not rootfs.is_file():
                raise ReleaseError(f"{rootfs}: no such root filesystem image")
            if rootfs.stat().st_size % 4096:
                raise ReleaseError(f"{rootfs}: {rootfs.stat().st_size} bytes is not a whole "
                                   f"number of 4 KiB blocks (RAUC's adaptive update needs it)")
            shutil.copyfile(rootfs, content / ROOTFS_NAME)
        shutil.copyfile(bom, content / BOM_NAME)
        for name, path in (extra_files or {}).items():
            shutil.copyfile(path, content / name)
        bom_sha = sha256_of(bom)
        (content / MANIFEST_NAME).write_text(json.dumps(
            {"version": version, "min_data_schema": min_data_schema, "bom": BOM_NAME,
             "bom_sha256": bom_sha, "build": build_id}, indent=2) + "\n")
        (content / "manifest.raucm").write_text(manifest(
            version, build=build_id or version, min_data_schema=min_data_schema,
            bom_sha256=bom_sha, bundle_format=bundle_format))
        bundle.unlink(missing_ok=True)  # rauc refuses to overwrite
        _run(["rauc", "bundle", "--cert", str(cert), "--key", str(key), str(content),
              str(bundle)], "rauc bundle")
    info = verify_bundle(bundle, keyring or cert)
    if info.get("version") != version or info.get("compatible") != COMPATIBLE:
        raise ReleaseError(f"{bundle}: rauc reads version {info.get('version')!r}, "
                           f"compatible {info.get('compatible')!r}")
    release = Release(version=version, size=bundle.stat().st_size, sha256=sha256_of(bundle),
                      min_data_schema=min_data_schema, rollback=rollback)
    signature = sign(canonical(release), cert=cert, key=key)
    doc = {**release.to_dict(), "file": bundle.name,
           "signature": base64.b64encode(signature).decode("ascii")}
    descriptor.write_text(json.dumps(doc, indent=2) + "\n")
    return Built(bundle=bundle, descriptor=descriptor, release=release)
