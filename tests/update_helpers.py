"""Release keys, root trees and bundles for the update tests: real openssl keys, real ext4
images (mkfs.ext4 -d), real RAUC bundles (`rauc bundle`), built the way the signing PC
builds them (pingan_centre.release)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.contract.release import Release
from pingan_centre.release import build as release_build

needs_rauc = pytest.mark.skipif(
    shutil.which("rauc") is None or shutil.which("mksquashfs") is None,
    reason="needs Debian's rauc and squashfs-tools (bin/setup installs them)")

DPKG_STATUS = """\
Package: rauc
Status: install ok installed
Maintainer: Debian <debian@example.org>
Architecture: arm64
Version: 1.8-2
Description: safe and secure software updates

Package: espeak-ng
Status: install ok installed
Maintainer: Debian <debian@example.org>
Architecture: arm64
Version: 1.51+dfsg-10
Description: speech synthesizer
"""


@dataclass(frozen=True)
class Signer:
    cert: Path
    key: Path


def make_signer(directory: Path, name: str) -> Signer:
    """A release key and its self-signed certificate (the signing PC's), by openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.cert.pem", directory / f"{name}.key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "3650", "-subj",
                    f"/O=Ping'an Edge/CN={name}"], check=True, capture_output=True)
    return Signer(cert, key)


def keyring(path: Path, *signers: Signer) -> Path:
    """A RAUC/openssl keyring: the certificates a unit trusts, concatenated PEM."""
    path.write_text("".join(s.cert.read_text() for s in signers))
    return path


def root_tree(directory: Path, version: str, trusted: Path | None = None,
              payload_kib: int = 256) -> Path:
    """A few-MB stand-in for the unit's root filesystem: a version file, the keyring the
    release carries (/etc/rauc/keyring.pem) and incompressible bytes (so the squashfs
    inside the bundle is not a few bytes RAUC refuses)."""
    (directory / "etc/rauc").mkdir(parents=True, exist_ok=True)
    (directory / "etc/pingan-release").write_text(f"{version}\n")
    if trusted is not None:
        shutil.copyfile(trusted, directory / "etc/rauc/keyring.pem")
    (directory / "opt/pingan-edge").mkdir(parents=True, exist_ok=True)
    (directory / "opt/pingan-edge/blob").write_bytes(
        bytes((i * 7919 + len(version)) % 251 for i in range(payload_kib * 1024)))
    return directory


def bom_file(directory: Path) -> Path:
    """A small valid CycloneDX file standing in for the image's (stage 45 writes the real)."""
    path = directory / "bom.cdx.json"
    path.write_text(json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6",
                                "components": [{"type": "library", "name": "rauc",
                                                "version": "1.8-2"}]}))
    return path


def build_release(tmp: Path, version: str, signer: Signer, *, trusted: Path | None = None,
                  min_data_schema: int = 1, rollback: bool = False,
                  bundle_format: str = "verity") -> release_build.Built:
    work = tmp / f"build-{version}-{signer.cert.stem}-{bundle_format}"
    tree = root_tree(work / "root", version, trusted)
    return release_build.build(version=version, out_dir=work / "out", cert=signer.cert,
                               key=signer.key, min_data_schema=min_data_schema,
                               bom=bom_file(work), root_dir=tree, rollback=rollback,
                               bundle_format=bundle_format)


def descriptor(built: release_build.Built) -> tuple[Release, bytes, dict[str, Any]]:
    """What the console puts in update.offer, read back as the unit reads it."""
    doc = json.loads(built.descriptor.read_text())
    release = Release(**{k: doc[k] for k in ("compatible", "version", "size", "sha256",
                                             "min_data_schema", "rollback")})
    return release, base64.b64decode(doc["signature"]), doc


def read_from_ext4(image: Path, path: str) -> bytes:
    """A file from an ext4 image without mounting it (debugfs, e2fsprogs)."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                          check=True)
    return done.stdout
