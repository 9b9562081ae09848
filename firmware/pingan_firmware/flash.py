"""Write a Ping'an Edge image to an SD card and give the card one station's identity.

    firmware/flash IMAGE DEVICE --bundle s1.tar.gz [--wifi-ssid SSID --wifi-psk PSK]
                   [--apn APN] [--settings local.toml] [--technician-password-file FILE]
                   [--keyring release-keyring.pem]
    firmware/flash --batch cards.csv IMAGE DEVICE     (one card after another, a label each)
    firmware/flash --verify-only IMAGE DEVICE         (re-check a written card)

Order: the image must match its .sha256; the device must be a removable disk that is
neither this computer's nor mounted; bmaptool writes the mapped blocks (with progress);
every mapped range is read back and checked against the block map; then the identity goes
onto the boot partition with mtools (nothing is mounted) and is read back. First boot on
the unit moves it to the data partition and deletes it from the card.

The release keyring: the unit installs only releases signed by a key in root slot A's
`/etc/rauc/keyring.pem` (RAUC's `[keyring]`, the station's `[update] keyring`). The image
carries it when it was built with `build-image --keyring`; `--keyring FILE` puts FILE
there at flash time (debugfs, in place), replacing the image's. A card whose slot A would
trust no key is refused: such a unit could never be updated without a drive to it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import re
import secrets
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pingan_firmware import card
from pingan_firmware.card import CardError
from pingan_firmware.guards import Refused, check_target

BUNDLE_FILES = {"ca.crt", "station.crt", "station.key", "station.toml"}
KEYRING = "/etc/rauc/keyring.pem"
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)


def check_keyring(data: bytes, source: str) -> list[str]:
    """A release keyring: PEM certificates only (never a private key: the signing key
    stays on the signing PC), each one readable. Returns their subjects."""
    blocks = [(m.group(1).decode(), m.group(0)) for m in _PEM.finditer(data)]
    if any("PRIVATE KEY" in kind for kind, _ in blocks):
        raise CardError(f"{source} holds a PRIVATE KEY: the release signing key never leaves "
                        "the signing PC; give the keyring of certificates only")
    certs = [pem for kind, pem in blocks if kind == "CERTIFICATE"]
    if not certs or len(certs) != len(blocks):
        raise CardError(f"{source}: a release keyring is one or more PEM certificates "
                        "(`pingan-centre release` keys' .cert.pem, concatenated)")
    subjects = []
    for pem in certs:
        out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-enddate"],
                             input=pem, capture_output=True)
        if out.returncode != 0:
            raise CardError(f"{source}: a certificate openssl cannot read "
                            f"({out.stderr.decode(errors='replace').strip()})")
        subjects.append(" ".join(out.stdout.decode().split()))
    return subjects


def put_keyring(target: Path, keyring: Path | None) -> list[str]:
    """The release keyring in root slot A, from `keyring` or as the image has it."""
    if keyring is not None:
        data = keyring.read_bytes()
        subjects = check_keyring(data, str(keyring))
        card.ext4_put(target, card.ROOT_A, KEYRING, data)
        return subjects
    found = card.ext4_read_at(target, card.ROOT_A, KEYRING)
    if not found:
        raise CardError(f"{target}: the image trusts no release key (no {KEYRING} in root "
                        "slot A), so the unit could never be updated: give --keyring "
                        "release-keyring.pem (or build the image with --keyring)")
    return check_keyring(found, f"the image's {KEYRING}")


@dataclass
class Identity:
    bundle: Path
    settings: Path | None = None
    wifi_ssid: str = ""
    wifi_psk: str = ""
    wifi_country: str = "CN"
    apn: str = ""
    technician_hash: str = ""
    serial: str = ""
    keyring: Path | None = None
    station: str = field(default="", init=False)
    township: str = field(default="", init=False)

    def load(self) -> dict[str, bytes]:
        """The files for the boot partition's pingan-edge/ directory, checked here first."""
        try:
            with tarfile.open(self.bundle, "r:gz") as tar:
                names = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = BUNDLE_FILES - names.keys()
                if missing:
                    raise CardError(f"{self.bundle}: not a station bundle (missing "
                                    f"{sorted(missing)}); make one with `broker add-station`")
                f = tar.extractfile(names["station.toml"])
                assert f is not None
                toml = tomllib.loads(f.read().decode())
        except (OSError, tarfile.TarError, tomllib.TOMLDecodeError) as exc:
            raise CardError(f"{self.bundle}: unreadable bundle ({exc})") from exc
        self.station, self.township = toml["station"]["id"], toml["station"]["township"]
        files = {"bundle.tar.gz": self.bundle.read_bytes()}
        if self.settings:
            text = self.settings.read_text()
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise CardError(f"{self.settings}: not valid TOML ({exc})") from exc
            files["settings.toml"] = text.encode()
        network = ""
        if self.wifi_ssid:
            # Checked here, at the laptop, not at first boot in the village.
            if any(c in v for v in (self.wifi_ssid, self.wifi_psk) for c in '"\n'):
                raise CardError("Wi-Fi name and password may not contain quotes or newlines")
            if self.wifi_psk and not 8 <= len(self.wifi_psk) <= 63:
                raise CardError("a WPA2 Wi-Fi password has 8 to 63 characters")
            network += (f"[wifi]\nssid = {_q(self.wifi_ssid)}\npsk = {_q(self.wifi_psk)}\n"
                        f"country = {_q(self.wifi_country)}\n")
        if self.apn:
            network += f"[cellular]\napn = {_q(self.apn)}\n"
        if network:
            files["network.toml"] = network.encode()
        if self.technician_hash:
            files["technician.hash"] = self.technician_hash.encode() + b"\n"
        return {f"{card.IDENTITY_DIR}/{k}": v for k, v in files.items()}


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hash_password(password: str) -> str:
    out = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def write_image(image: Path, target: Path, *, force: bool) -> card.BlockMap:
    card.check_image_hash(image)
    check_target(target, force=force)
    bmap_path = image.with_name(image.name + ".bmap")
    if not bmap_path.exists():
        raise CardError(f"{bmap_path} not found: copy it with the image")
    bmap = card.read_bmap(bmap_path)
    print(f"writing {bmap.mapped_bytes / 2**20:.0f} MiB of {image.name} to {target} …",
          file=sys.stderr, flush=True)
    # bmaptool shows its progress on a terminal and checks the image against the block
    # map while copying; the read-back below checks what the card really holds.
    done = subprocess.run(["bmaptool", "copy", "--bmap", str(bmap_path), str(image),
                           str(target)], stdout=sys.stderr)
    if done.returncode != 0:
        raise CardError(f"bmaptool could not write {target} (exit {done.returncode}); try "
                        "another card or reader")
    print("reading back …", file=sys.stderr, flush=True)
    card.verify(target, bmap, _progress())
    return bmap


def _progress() -> Callable[[int, int], None]:
    """A percentage on one line on a terminal; every 25 % in a log."""
    shown = [-1]

    def show(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        step = 1 if sys.stderr.isatty() else 25
        if pct // step != shown[0] // step:
            shown[0] = pct
            end = "\r" if sys.stderr.isatty() and pct < 100 else "\n"
            print(f"read back {pct:3d}% ({done / 2**20:.0f}/{total / 2**20:.0f} MiB)",
                  end=end, file=sys.stderr, flush=True)

    return show


def put_identity(target: Path, ident: Identity) -> None:
    files = ident.load()
    cmdline = card.fat_read(target, "cmdline.txt")
    if cmdline is None:
        raise CardError(f"{target}: no cmdline.txt on the boot partition: not a Ping'an Edge "
                        "card; flash the image first")
    # Each card its own machine id (the root is read-only, so it cannot be made on the unit:
    # DHCP client ids and the journal are keyed by it).
    # The same id in each root slot's command line (cmdline-a.txt, cmdline-b.txt: see
    # edge/update/tryboot.py): an update changes the slot, not the machine.
    machine_id = f"systemd.machine_id={secrets.token_hex(16)}"
    slots = sorted(n for n in card.fat_list(target, "") if re.fullmatch(r"cmdline-[a-z]\.txt", n))
    for name in ("cmdline.txt", *slots):
        text = cmdline if name == "cmdline.txt" else card.fat_read(target, name)
        if text is None:
            continue
        words = [w for w in text.decode().split() if not w.startswith("systemd.machine_id=")]
        files[name] = (" ".join([*words, machine_id]) + "\n").encode()
    card.fat_write(target, files)
    for name, data in files.items():
        if card.fat_read(target, name) != data:
            raise CardError(f"{target}: {name} read back differently: the card is faulty")


def label(ident: Identity, image: Path) -> str:
    return (f"LABEL  station={ident.station}  township={ident.township}  "
            f"serial={ident.serial or '-'}  image={image.name}  "
            f"flashed={dt.datetime.now(dt.UTC):%Y-%m-%d}")


def flash_one(image: Path, target: Path, ident: Identity, *, force: bool) -> str:
    ident.load()  # a bad bundle or keyring is refused before the card is written
    if ident.keyring is not None:
        check_keyring(ident.keyring.read_bytes(), str(ident.keyring))
    write_image(image, target, force=force)
    trusted = put_keyring(target, ident.keyring)
    print(f"release keys trusted: {'; '.join(trusted)}", file=sys.stderr, flush=True)
    put_identity(target, ident)
    return label(ident, image)


def batch(image: Path, default_target: Path | None, rows: list[dict[str, str]], *,
          force: bool, prompt: bool, technician_hash: str, keyring: Path | None = None) -> int:
    failures = 0
    card.check_image_hash(image)  # once, not per card
    for n, row in enumerate(rows, start=1):
        target = Path(row.get("device") or str(default_target or ""))
        ident = Identity(bundle=Path(row["bundle"]),
                         settings=Path(row["settings"]) if row.get("settings") else None,
                         wifi_ssid=row.get("wifi_ssid", ""), wifi_psk=row.get("wifi_psk", ""),
                         apn=row.get("apn", ""), serial=row.get("serial", ""),
                         technician_hash=technician_hash, keyring=keyring)
        try:
            ident.load()
            if prompt:
                print(f"[{n}/{len(rows)}] insert the card for {ident.station} "
                      f"(serial {ident.serial or '-'}) into {target}, then press Enter",
                      file=sys.stderr, flush=True)
                if not sys.stdin.readline():
                    print("stopped: no more input", file=sys.stderr)
                    return 1
            print(flash_one(image, target, ident, force=force), flush=True)
        except (CardError, Refused, KeyError) as exc:
            failures += 1
            print(f"FAILED  station={row.get('station') or ident.station or '?'}  "
                  f"serial={ident.serial or '-'}: {exc}", flush=True)
    print(f"{len(rows) - failures} cards written, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firmware/flash", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path)
    p.add_argument("device", type=Path, nargs="?")
    p.add_argument("--bundle", type=Path, help="the station's bundle (broker add-station)")
    p.add_argument("--batch", type=Path, help="CSV: station,bundle,serial[,device,wifi_ssid,"
                   "wifi_psk,apn,settings], one card per row")
    p.add_argument("--settings", type=Path, help="local settings appended to station.toml "
                   "(pins, audio, camera)")
    p.add_argument("--wifi-ssid", default="")
    p.add_argument("--wifi-psk", default="")
    p.add_argument("--wifi-country", default="CN")
    p.add_argument("--apn", default="", help="4G APN, for a unit with a modem")
    p.add_argument("--serial", default="", help="the unit's serial, for the label")
    p.add_argument("--technician-password-file", type=Path,
                   help="the console password for user 'technician' (first line)")
    p.add_argument("--keyring", type=Path,
                   help="the release keyring (PEM certificates) the unit trusts; written "
                   "to root slot A's /etc/rauc/keyring.pem, replacing the image's")
    p.add_argument("--yes", action="store_true", help="batch: do not wait for Enter per card")
    p.add_argument("--force", action="store_true",
                   help="write a disk that does not look removable")
    p.add_argument("--verify-only", action="store_true",
                   help="only read the card back against the image's block map")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    technician_hash = ""
    if args.technician_password_file:
        technician_hash = hash_password(
            args.technician_password_file.read_text().splitlines()[0])
    try:
        if args.verify_only:
            if args.device is None:
                raise CardError("give the DEVICE to verify")
            card.verify(args.device, card.read_bmap(args.image.with_name(args.image.name +
                                                                          ".bmap")))
            print(f"{args.device}: matches {args.image.name}")
            return 0
        if args.batch:
            with args.batch.open(newline="") as f:
                rows = list(csv.DictReader(f))
            return batch(args.image, args.device, rows, force=args.force,
                         prompt=not args.yes, technician_hash=technician_hash,
                         keyring=args.keyring)
        if args.device is None or args.bundle is None:
            raise CardError("give IMAGE DEVICE --bundle STATION.tar.gz (or --batch CSV)")
        ident = Identity(bundle=args.bundle, settings=args.settings, wifi_ssid=args.wifi_ssid,
                         wifi_psk=args.wifi_psk, wifi_country=args.wifi_country, apn=args.apn,
                         serial=args.serial, technician_hash=technician_hash,
                         keyring=args.keyring)
        print(flash_one(args.image, args.device, ident, force=args.force))
        return 0
    except (CardError, Refused) as exc:
        print(f"flash: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
