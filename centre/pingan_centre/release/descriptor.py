"""The release descriptor the signing PC signs (the township's side of it).

The unit checks these exact bytes (edge/contract/release.py, `canonical`); the township
does not depend on the unit's package, so the few lines are written here again and
tests/test_release_build.py proves both sides make the same bytes for the same release.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

COMPATIBLE = "pingan-edge-rpi-arm64"
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){1,3}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def version_key(version: str) -> tuple[int, ...]:
    """`0.10.1` > `0.9.3`: numbers, not strings; `0.2` == `0.2.0`."""
    if not _VERSION.match(version):
        raise ValueError(f"{version!r} is not a release version (e.g. 0.2.0)")
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


@dataclass(frozen=True)
class Release:
    version: str
    size: int
    sha256: str
    min_data_schema: int
    rollback: bool = False
    compatible: str = COMPATIBLE

    def __post_init__(self) -> None:
        version_key(self.version)
        if self.size < 1 or not _SHA256.match(self.sha256) or self.min_data_schema < 1:
            raise ValueError(f"not a release: size {self.size}, sha256 {self.sha256!r}, "
                             f"min_data_schema {self.min_data_schema}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonical(release: Release) -> bytes:
    """The exact bytes signed (see edge/contract/release.py)."""
    lines = ["pingan-edge release v1",
             f"compatible={release.compatible}",
             f"version={release.version}",
             f"size={release.size}",
             f"sha256={release.sha256}",
             f"min_data_schema={release.min_data_schema}",
             f"rollback={1 if release.rollback else 0}"]
    return ("\n".join(lines) + "\n").encode("ascii")
