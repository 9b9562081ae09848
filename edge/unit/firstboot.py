"""First boot of a unit made by firmware/build-image: `python -m edge.unit.firstboot`.

The flash tool leaves the card's identity on the FAT boot partition (readable by anyone who
pulls the card) under `pingan-edge/`:

    bundle.tar.gz    the station certificate bundle (`broker add-station`)
    settings.toml    optional local settings appended to the bundle's station.toml
    network.toml     optional [wifi] ssid/psk and [cellular] apn
    technician.hash  optional crypt(3) hash of the technician's console password

This moves them onto the data partition (key 0600, owned by the station user), and only
once they are there, synced, deletes them from the boot partition and zeroes every free
cluster of that partition (edge.unit.fatscrub): deleting a file on FAT leaves its bytes on
the card for anyone who carves it. It grows the data
partition to the card and sets the hostname. The station unit starts when
/etc/pingan-edge/station.toml exists (its ConditionPathExists), so writing that file last
is what enables it.

Runs on every boot (pingan-firstboot.service): each step is idempotent, so a power cut
anywhere leaves a card that the next boot finishes. `--root DIR` provisions an unpacked or
mounted image tree offline; the steps that act on the running system (hostname, the
shadow bind mount, growing the partition) run only when the root is `/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import config as config_mod
from edge import logs
from edge.store import durable
from edge.unit import fatscrub

INCOMING = "boot/firmware/pingan-edge"
DATA = "data"
UNIT_CONF = "/etc/pingan-edge"  # the data partition's etc/pingan-edge, bind-mounted here
STATE_DIR = "/var/lib/pingan-edge"  # the data partition's state/, bind-mounted here
BUNDLE_FILES = ("ca.crt", "station.crt", "station.key", "station.toml")
SECRETS = ("bundle.tar.gz", "settings.toml", "network.toml", "technician.hash")
SERVICE_USER = "pingan"
TECHNICIAN = "technician"
STATION_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class FirstBootError(Exception):
    """The card's identity is unusable; the message says what the technician should do."""


def emit(event: str, level: str = "info", **fields: Any) -> None:
    """A JSON line on stdout; behind its syslog priority when that is journald's stream."""
    line = json.dumps({"event": event, **fields, "level": level}, ensure_ascii=False)
    if logs.journal_stream(sys.stdout):
        line = f"<{logs.priority(logging.getLevelNamesMapping()[level.upper()])}>{line}"
    print(line, flush=True)


@dataclass(frozen=True)
class Layout:
    root: Path
    # The boot partition's raw bytes, for zeroing its free clusters: the device mounted at
    # /boot/firmware when None on a live system; offline (an image tree) nothing is zeroed
    # unless one is given.
    boot_device: Path | None = None

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING

    @property
    def data(self) -> Path:
        return self.root / DATA

    @property
    def conf(self) -> Path:
        return self.data / "etc" / "pingan-edge"

    @property
    def tls(self) -> Path:
        return self.conf / "tls"

    @property
    def wpa(self) -> Path:
        return self.data / "etc" / "wpa_supplicant" / "wpa_supplicant-wlan0.conf"

    @property
    def shadow(self) -> Path:
        return self.data / "etc" / "shadow"

    @property
    def scrub_marker(self) -> Path:
        """Exists from just before the secrets are deleted until their clusters are zero,
        so that a power cut in between is finished by the next boot."""
        return self.conf / ".fat-scrub"

    @property
    def live(self) -> bool:
        return self.root == Path("/")

    @property
    def scrubs(self) -> bool:
        return self.live or self.boot_device is not None


def _ids(root: Path, name: str, table: str) -> int:
    for line in (root / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise FirstBootError(f"no {table} entry {name!r} in {root / 'etc' / table}: not an image "
                         "made by firmware/build-image")


def read_bundle(path: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = set(BUNDLE_FILES) - members.keys()
            if missing:
                raise FirstBootError(f"{path}: not a station bundle (missing {sorted(missing)}); "
                                     "re-flash the card with the bundle from "
                                     "`broker add-station`")
            out = {}
            for name in BUNDLE_FILES:
                f = tar.extractfile(members[name])
                assert f is not None
                out[name] = f.read()
            return out
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FirstBootError(f"{path}: unreadable bundle ({exc}); re-flash the card") from exc


def station_toml(bundle_toml: bytes, settings: bytes | None) -> str:
    """The bundle's station.toml with its file paths pointing at the unit's TLS directory,
    then the technician's local settings; checked as the station would load it."""
    text = re.sub(r'"[^"\n]*/(ca\.crt|station\.crt|station\.key)"',
                  lambda m: f'"{UNIT_CONF}/tls/{m.group(1)}"', bundle_toml.decode())
    if not re.search(r"(?m)^\s*data_dir\s*=", text):
        # Pinned, so that `pingan-edge press/status` run from a console find the daemon's
        # control socket without systemd's STATE_DIRECTORY.
        text = re.sub(r"(?m)^\[station\]\s*$", f'[station]\ndata_dir = "{STATE_DIR}"', text,
                      count=1)
    if settings:
        text += "\n# Local settings (flash --settings)\n" + settings.decode()
    try:
        config_mod.parse(text, "the card's station.toml")
    except config_mod.ConfigError as exc:
        raise FirstBootError(f"the card's station.toml is invalid ({exc}); fix the settings "
                             "file and re-flash") from exc
    return text


def wpa_conf(wifi: dict[str, Any]) -> bytes:
    ssid, psk = str(wifi["ssid"]), str(wifi.get("psk", ""))
    country = str(wifi.get("country", "CN"))
    for value in (ssid, psk, country):
        if '"' in value or "\n" in value:
            raise FirstBootError("Wi-Fi ssid/psk may not contain quotes or newlines")
    key = f'    psk="{psk}"\n' if psk else "    key_mgmt=NONE\n"
    return (f"ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\ncountry={country}\n"
            f'network={{\n    ssid="{ssid}"\n{key}}}\n').encode()


def shadow_with(root: Path, user: str, hashed: str) -> bytes:
    if not re.fullmatch(r"\$[0-9a-z]+\$[^:\s]+", hashed):
        raise FirstBootError("technician.hash is not a crypt(3) hash; re-flash with "
                             "--technician-password")
    lines = []
    for line in (root / "etc" / "shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            fields[1] = hashed
        lines.append(":".join(fields))
    return ("\n".join(lines) + "\n").encode()


def install_identity(lay: Layout) -> str | None:
    """Move what the flash tool left on the boot partition; returns the station id."""
    bundle_path = lay.incoming / "bundle.tar.gz"
    if not bundle_path.exists():
        return None
    files = read_bundle(bundle_path)
    settings_path = lay.incoming / "settings.toml"
    settings = settings_path.read_bytes() if settings_path.exists() else None
    toml = station_toml(files["station.toml"], settings)
    station = str(tomllib.loads(toml)["station"]["id"])
    uid, gid = _ids(lay.root, SERVICE_USER, "passwd"), _ids(lay.root, SERVICE_USER, "group")
    for name in ("ca.crt", "station.crt"):
        durable.write(lay.tls / name, files[name], mode=0o644)
    durable.write(lay.tls / "station.key", files["station.key"], mode=0o600, owner=(uid, gid))
    network_path = lay.incoming / "network.toml"
    if network_path.exists():
        network = tomllib.loads(network_path.read_text())
        if "wifi" in network:
            durable.write(lay.wpa, wpa_conf(network["wifi"]), mode=0o600)
        if "cellular" in network:
            # Read by the modem part (edge/modem) when one is fitted.
            cellular = "".join(f'{k} = {json.dumps(v)}\n' for k, v in network["cellular"].items())
            durable.write(lay.conf / "cellular.toml", f"[cellular]\n{cellular}".encode(),
                          mode=0o640, owner=(0, gid))
    hash_path = lay.incoming / "technician.hash"
    if hash_path.exists():
        durable.write(lay.shadow, shadow_with(lay.root, TECHNICIAN,
                                              hash_path.read_text().strip()),
                      mode=0o640, owner=(0, _ids(lay.root, "shadow", "group")))
    durable.write(lay.conf / "hostname", f"pingan-{station.replace('_', '-')}\n".encode(),
                  mode=0o644)
    # Last: its existence is what lets the station start.
    durable.write(lay.conf / "station.toml", toml.encode(), mode=0o644)
    emit("firstboot.identity", station=station, wifi=lay.wpa.exists())
    return station


def _mountpoint(path: Path) -> bool:
    return path.is_mount()


def delete_secrets(lay: Layout) -> None:
    """Only after install_identity has synced them to the data partition."""
    present = [lay.incoming / n for n in SECRETS if (lay.incoming / n).exists()]
    if not present:
        return
    if lay.scrubs:
        durable.write(lay.scrub_marker, b"", mode=0o600)
    fat = lay.incoming.parent
    remount = lay.live and _mountpoint(fat)
    if remount:
        subprocess.run(["mount", "-o", "remount,rw", str(fat)], check=True)
    try:
        for path in present:
            path.unlink()
        durable.sync_dir(lay.incoming)
        os.sync()
    finally:
        # Read-only again before the clusters are zeroed underneath the driver: this also
        # writes its FAT out, so the raw tables show the deleted files' clusters free.
        if remount:
            subprocess.run(["mount", "-o", "remount,ro", str(fat)], check=False)
    emit("firstboot.secrets_deleted", files=[p.name for p in present])


def scrub_boot_partition(lay: Layout) -> None:
    """Zero the free clusters of the boot partition once its secrets are deleted."""
    if not lay.scrub_marker.exists():
        return
    device = lay.boot_device
    if device is None:
        source = subprocess.run(["findmnt", "-no", "SOURCE", str(lay.incoming.parent)],
                                capture_output=True, text=True, check=True).stdout.strip()
        device = Path(source.split("[", 1)[0])  # a bind mount shows DEVICE[/subdir]
    os.sync()
    try:
        written = fatscrub.zero_free_clusters(device)
    except fatscrub.FatError as exc:
        raise FirstBootError(f"{device}: {exc}; the deleted secrets may still be readable "
                             "on the card: replace it and revoke the station") from exc
    lay.scrub_marker.unlink()
    durable.sync_dir(lay.conf)
    emit("firstboot.boot_partition_zeroed", device=str(device), bytes=written)


def grow_data(lay: Layout) -> None:
    """Grow the data partition (the last one) and its filesystem to the end of the card."""
    marker = lay.conf / ".grown"
    if marker.exists() or not lay.live:
        return
    source = subprocess.run(["findmnt", "-no", "SOURCE", str(lay.data)], capture_output=True,
                            text=True, check=True).stdout.strip().split("[", 1)[0]
    dev = Path(os.path.realpath(source)).name
    sys_part = Path("/sys/class/block") / dev
    number = (sys_part / "partition").read_text().strip()
    disk = "/dev/" + Path(os.path.realpath(sys_part)).parent.name
    # growpart exits 1 with NOCHANGE when the partition already fills the card.
    grown = subprocess.run(["growpart", disk, number], capture_output=True, text=True)
    if grown.returncode not in (0, 1) or (grown.returncode == 1 and "NOCHANGE" not in
                                          grown.stdout + grown.stderr):
        raise FirstBootError(f"growpart {disk} {number} failed: {grown.stderr.strip()}")
    subprocess.run(["resize2fs", f"/dev/{dev}"], capture_output=True, check=True)
    durable.write(marker, b"", mode=0o644)
    emit("firstboot.data_grown", device=f"/dev/{dev}")


def apply_runtime(lay: Layout) -> None:
    """Every boot: what the read-only root cannot keep. (The technician's /etc/shadow is
    bound by etc-shadow.mount: this runs in a mount namespace of its own.)"""
    if not lay.live:
        return
    hostname = lay.conf / "hostname"
    if hostname.exists():
        socket.sethostname(hostname.read_text().strip())


def run(root: Path, boot_device: Path | None = None) -> int:
    lay = Layout(root, boot_device)
    try:
        station = install_identity(lay)
        delete_secrets(lay)
        scrub_boot_partition(lay)
        grow_data(lay)
        apply_runtime(lay)
    except (FirstBootError, subprocess.CalledProcessError, OSError) as exc:
        emit("firstboot.failed", "error", error=str(exc),
             action="the station stays off; fix the card (re-flash its identity) and reboot")
        return 1
    configured = (lay.conf / "station.toml").exists()
    emit("firstboot.done", installed=station, station_configured=configured)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.unit.firstboot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/", help="the image tree to provision (default: this "
                   "system)")
    p.add_argument("--boot-device", type=Path, help="the boot partition's device or image "
                   "file, whose free clusters are zeroed once the secrets are deleted "
                   "(default: the device mounted at /boot/firmware; none offline)")
    args = p.parse_args(argv)
    return run(Path(args.root), args.boot_device)


if __name__ == "__main__":
    sys.exit(main())

