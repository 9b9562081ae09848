"""On a unit: unpack the station bundle the township issued (`pingan-centre broker
add-station`) into the unit's TLS directory.

The bundle holds the township CA, the station's certificate and key, and a
`station.toml` snippet whose paths are rewritten to where the files land.
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import tarfile
from pathlib import Path

from edge.store import durable

UNIT_DIR = "/etc/pingan-edge/tls"  # where the bundle's files go on the unit
STATION_GROUP = "pingan"  # the station service's group (systemd/pingan-edge.service)
_NEEDED = frozenset({"ca.crt", "station.crt", "station.key", "station.toml"})


class BundleError(ValueError):
    """The file is not a station bundle."""


def _readable_by(path: Path, group: str) -> None:
    """Mode 0640 and this group, when the group exists and we may change it."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    with contextlib.suppress(PermissionError):
        os.chown(path, -1, gid)
        os.chmod(path, 0o640)


def install_bundle(bundle: Path, dest: Path) -> Path:
    """Unpack a bundle into `dest`; returns the station.toml written there.

    The snippet's paths are rewritten to `dest`, so the unpacked files are what it names."""
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            if not members.keys() >= _NEEDED:
                raise BundleError(f"{bundle}: not a station bundle (needs {sorted(_NEEDED)})")
            data = {}
            for name in _NEEDED:
                f = tar.extractfile(members[name])
                assert f is not None
                data[name] = f.read()
    except tarfile.TarError as exc:
        raise BundleError(f"{bundle}: not a station bundle ({exc})") from exc
    toml = data["station.toml"].decode()
    toml = re.sub(r'"[^"\n]*/(ca\.crt|station\.crt|station\.key)"',
                  lambda m: f'"{dest / m.group(1)}"', toml)
    for name in ("ca.crt", "station.crt"):
        durable.write(dest / name, data[name])
    durable.write(dest / "station.key", data["station.key"], mode=0o600)
    _readable_by(dest / "station.key", STATION_GROUP)
    durable.write(dest / "station.toml", toml.encode())
    return dest / "station.toml"
