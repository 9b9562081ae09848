"""A unit's bill of materials (CycloneDX JSON): every Debian package of a root filesystem and
every Python package of the station, each with its package URL.

The Debian part is read from dpkg's own database with `dpkg-query --admindir`; the Python
part is made by cyclonedx-py, from an installed site-packages (no interpreter is run, so an
arm64 root works on an x86 builder) or from a lock file. cyclonedx-python-lib puts them in
one BOM, writes it and checks it against the CycloneDX schema.

    python -m pingan_firmware.bom --root ROOTFS --version V -o FILE [-o FILE ...]
    python -m pingan_firmware.bom --dpkg ADMINDIR|STATUS --python SITE-PACKAGES|LOCK \\
        --distro debian-12 --version V -o FILE

The image build writes it into the root (`/usr/share/pingan-edge/bom.cdx.json`) and beside
the image; release bundles can make theirs with `make_bom` from the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from uuid import uuid4

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

SPEC = SchemaVersion.V1_6
IMAGE_NAME = "pingan-edge-image"
STATION_VENV = "opt/pingan-edge"
# What is on disk: dpkg keeps "config-files" and "not-installed" entries for removed packages.
_ABSENT = {"not-installed", "config-files"}
_FIELDS = ("Package", "Version", "Architecture", "db:Status-Status", "source:Package",
           "source:Version", "binary:Summary", "Maintainer")


class BomError(Exception):
    """The BOM could not be made or is not valid CycloneDX; the message says why."""


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    source: str
    source_version: str
    summary: str
    maintainer: str

    def purl(self, distro: str) -> PackageURL:
        return PackageURL(type="deb", namespace="debian", name=self.name, version=self.version,
                          qualifiers={"arch": self.architecture, "distro": distro})


@contextmanager
def _admindir(dpkg: Path) -> Iterator[Path]:
    """dpkg-query wants a directory; a lone status file gets a temporary one."""
    if dpkg.is_dir():
        yield dpkg
        return
    if not dpkg.is_file():
        raise BomError(f"{dpkg}: neither a dpkg admin directory nor a status file")
    with tempfile.TemporaryDirectory(prefix="pingan-bom-") as tmp:
        (Path(tmp) / "status").symlink_to(dpkg.resolve())
        yield Path(tmp)


def debian_packages(dpkg: Path) -> list[DebPackage]:
    """The packages installed per dpkg's database: a root's var/lib/dpkg or a status file."""
    fmt = "\t".join(f"${{{f}}}" for f in _FIELDS) + "\n"
    with _admindir(dpkg) as admindir:
        if not (admindir / "status").is_file():
            raise BomError(f"{admindir}: no dpkg status file in it")
        done = subprocess.run(["dpkg-query", f"--admindir={admindir}", "-W", "-f", fmt],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise BomError(f"dpkg-query on {dpkg} failed: {done.stderr.strip()}")
    packages = []
    for line in done.stdout.splitlines():
        name, version, arch, status, source, source_version, summary, maintainer = \
            line.split("\t")
        if status not in _ABSENT:
            packages.append(DebPackage(name, version, arch, source, source_version, summary,
                                       maintainer))
    if not packages:
        raise BomError(f"{dpkg}: dpkg lists no installed package")
    return packages


def deb_component(pkg: DebPackage, distro: str) -> Component:
    purl = pkg.purl(distro)
    return Component(
        type=ComponentType.LIBRARY, name=pkg.name, version=pkg.version, purl=purl,
        bom_ref=purl.to_string(), description=pkg.summary or None,
        publisher=pkg.maintainer or None,
        # The security tracker and DSAs name source packages, not binary ones.
        properties=[Property(name="debian:source", value=pkg.source),
                    Property(name="debian:source-version", value=pkg.source_version)])


def python_bom(python: Path) -> Bom:
    """cyclonedx-py's BOM of a site-packages directory or of a requirements/lock file."""
    with tempfile.TemporaryDirectory(prefix="pingan-bom-") as tmp:
        out = Path(tmp) / "python.cdx.json"
        args = [sys.executable, "-m", "cyclonedx_py"]
        if python.is_dir():
            # cyclonedx-py asks an interpreter for its sys.path; the unit's is arm64 and may
            # not run here, so a stand-in answers with the one directory to read.
            shim = Path(tmp) / "python"
            shim.write_text("#!/bin/sh\nprintf '%s\\n' "
                            f"{shlex.quote(json.dumps([str(python.resolve())]))}\n")
            shim.chmod(0o755)
            args += ["environment", str(shim)]
        elif python.is_file():
            args += ["requirements", str(python)]
        else:
            raise BomError(f"{python}: neither a site-packages directory nor a lock file")
        done = subprocess.run([*args, "--sv", SPEC.to_version(), "--of", "JSON",
                               "--output-reproducible", "-o", str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BomError(f"cyclonedx-py on {python} failed: {done.stderr.strip()}")
        data = json.loads(out.read_text(encoding="utf-8"))
    bom = Bom.from_json(data)  # type: ignore[attr-defined]  # added by py-serializable
    if not isinstance(bom, Bom):
        raise BomError(f"cyclonedx-py on {python}: not a BOM")
    if not bom.components:
        raise BomError(f"{python}: cyclonedx-py found no Python package")
    return bom


def distro_of(root: Path) -> str:
    """`debian-12` for a Debian 12 root, from its os-release (as in Debian's purls)."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        path = root / rel
        if path.is_file():
            fields = dict(line.split("=", 1) for line in path.read_text().splitlines()
                          if "=" in line)
            os_id = fields.get("ID", "").strip('"')
            version_id = fields.get("VERSION_ID", "").strip('"')
            if os_id and version_id:
                return f"{os_id}-{version_id}"
    raise BomError(f"{root}: no os-release with ID and VERSION_ID")


def _timestamp() -> datetime:
    # SOURCE_DATE_EPOCH (reproducible-builds.org): the same inputs make the same BOM date.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)


def make_bom(*, version: str, dpkg: Path, python: Path, distro: str,
             name: str = IMAGE_NAME) -> Bom:
    """One BOM for a unit's software: `dpkg` is a dpkg admin directory or status file,
    `python` a site-packages directory or a lock file, `distro` the purl's (`debian-12`)."""
    debs = debian_packages(dpkg)
    bom = python_bom(python)
    bom.serial_number = uuid4()
    # cyclonedx-py's "cdx:reproducible" no longer holds: a serial number was just drawn.
    for prop in [p for p in bom.metadata.properties if p.name == "cdx:reproducible"]:
        bom.metadata.properties.remove(prop)
    bom.metadata.timestamp = _timestamp()
    root = Component(type=ComponentType.FIRMWARE, name=name, version=version,
                     bom_ref=f"{name}@{version}",
                     description=f"Ping'an Edge unit software ({distro}, Python station)")
    bom.metadata.component = root
    try:
        own = metadata.version("pingan-firmware")
    except metadata.PackageNotFoundError:
        own = None
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="pingan_firmware.bom", version=own))
    for pkg in debs:
        bom.components.add(deb_component(pkg, distro))
    # The image holds every component; the Python ones also depend on each other (from
    # cyclonedx-py), the Debian ones are not linked (dpkg's alternatives are not a graph).
    bom.register_dependency(root, bom.components)
    return bom


def to_json(bom: Bom) -> str:
    """The BOM as CycloneDX 1.6 JSON, checked against the schema (strict: no unknown keys)."""
    text = make_outputter(bom, OutputFormat.JSON, SPEC).output_as_string(indent=2)
    error = JsonStrictValidator(SPEC).validate_str(text)
    if error is not None:
        raise BomError(f"the BOM is not valid CycloneDX {SPEC.to_version()}: {error}")
    return text + "\n"


def counts(bom: Bom) -> dict[str, int]:
    """Components by package URL type (`deb`, `pypi`; `none` for those without one)."""
    result: dict[str, int] = {}
    for c in bom.components:
        kind = c.purl.type if c.purl is not None else "none"
        result[kind] = result.get(kind, 0) + 1
    return result


def _station_site_packages(root: Path) -> Path:
    found = sorted((root / STATION_VENV / "lib").glob("python3*/site-packages"))
    if len(found) != 1:
        raise BomError(f"{root}: expected one {STATION_VENV}/lib/python3*/site-packages, "
                       f"found {len(found)}")
    return found[0]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pingan_firmware.bom",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--root", type=Path, help="a unit's root filesystem (dpkg database, "
                    f"/{STATION_VENV}, os-release)")
    ap.add_argument("--dpkg", type=Path, help="a dpkg admin directory or status file")
    ap.add_argument("--python", type=Path, help="a site-packages directory or a lock file")
    ap.add_argument("--distro", help="the Debian purls' distro, e.g. debian-12")
    ap.add_argument("--version", required=True, help="the image's version")
    ap.add_argument("--name", default=IMAGE_NAME)
    ap.add_argument("-o", "--output", type=Path, action="append", required=True)
    args = ap.parse_args(argv)
    try:
        if args.root is not None:
            dpkg = args.dpkg or args.root / "var/lib/dpkg"
            python = args.python or _station_site_packages(args.root)
            distro = args.distro or distro_of(args.root)
        elif args.dpkg and args.python and args.distro:
            dpkg, python, distro = args.dpkg, args.python, args.distro
        else:
            ap.error("give --root, or --dpkg, --python and --distro")
        bom = make_bom(version=args.version, dpkg=dpkg, python=python, distro=distro,
                       name=args.name)
        text = to_json(bom)
    except BomError as e:
        print(f"bom: {e}", file=sys.stderr)
        return 1
    for out in args.output:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    n = counts(bom)
    unnamed = f", {n['none']} without a package URL" if "none" in n else ""
    print(f"bom: {n.get('deb', 0)} Debian packages, {n.get('pypi', 0)} Python packages"
          f"{unnamed} → {', '.join(map(str, args.output))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
