"""A release, as the signing PC vouches for it: the words it signs, and how to compare versions.

The bundle itself is a RAUC bundle, signed by RAUC (its manifest and, through dm-verity's
root hash, every block of its payload). What the township *offers* a unit crosses MQTT,
through the console, which never holds the signing key; so the signing PC also signs a
short descriptor of the release (`canonical()`), and the unit checks that signature with
the same keyring before it downloads a byte. The descriptor binds the bundle's size and
sha256 (a tampered or truncated download fails), its version (a replayed older offer is a
downgrade) and whether a downgrade is allowed (only a signed rollback may go back).

The signing side (centre/pingan_centre/release/descriptor.py) writes the same few lines
without importing the unit; tests/test_release_build.py proves the bytes agree.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

# RAUC's `compatible`: a bundle for another kind of unit is refused by RAUC and by us.
COMPATIBLE = "pingan-edge-rpi-arm64"
# The data partition's schema version this release writes (edge.store.schema); it reads
# every version from MIN_DATA_SCHEMA up to it. Raised only by a migration.
Version = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+(\.[0-9]+){1,3}$(?!\n)", max_length=32)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]

_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){1,3}$")


class VersionError(ValueError):
    """Not a release version (digits and dots, 2 to 4 numbers)."""


def version_key(version: str) -> tuple[int, ...]:
    """`0.10.1` > `0.9.3`: compare numbers, not strings; `0.2` == `0.2.0`."""
    if not _VERSION.match(version):
        raise VersionError(f"{version!r} is not a release version (e.g. 0.2.0)")
    parts = [int(p) for p in version.split(".")]
    while len(parts) < 4:
        parts.append(0)
    return tuple(parts)


class Release(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What the signing PC signs about one bundle (and what `update.offer` carries)."""

    compatible: str = COMPATIBLE
    version: Version
    size: Annotated[int, msgspec.Meta(ge=1)]
    sha256: Sha256
    min_data_schema: Annotated[int, msgspec.Meta(ge=1)]
    # A release older than the unit's own is refused unless this is set, and signed.
    rollback: bool = False


def canonical(release: Release) -> bytes:
    """The exact bytes signed: one `key=value` line each, fixed order, ASCII. Not JSON, so
    no encoder's choice of spacing or key order can make two texts of one release."""
    lines = ["pingan-edge release v1",
             f"compatible={release.compatible}",
             f"version={release.version}",
             f"size={release.size}",
             f"sha256={release.sha256}",
             f"min_data_schema={release.min_data_schema}",
             f"rollback={1 if release.rollback else 0}"]
    return ("\n".join(lines) + "\n").encode("ascii")
