"""Small unit card images and station bundles for the firmware tests, made for real:
firmware/assemble-image (sfdisk, mkfs.vfat + mcopy, mkfs.ext4 -d, bmaptool) and the
township CA."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from edge.update import tryboot
from pingan_centre.broker import provision

ROOT = Path(__file__).resolve().parent.parent
ASSEMBLE = ROOT / "firmware" / "assemble-image"
CMDLINE = "console=serial0,115200 root=PARTUUID=50494e47-02 rootfstype=ext4 ro rootwait\n"
CONFIG = "arm_64bit=1\n[all]\ninclude pingan-slots.txt\n"
PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "pingan:x:998:997::/var/lib/pingan-edge:/usr/sbin/nologin\n"
          "technician:x:1000:1000::/home/technician:/bin/bash\n")
GROUP = "root:x:0:\nshadow:x:42:\npingan:x:997:technician\ntechnician:x:1000:\n"
SHADOW = "root:*:19000:0:99999:7:::\npingan:!:19000::::::\ntechnician:!:19000:0:99999:7:::\n"


def unit_tree(root: Path) -> Path:
    """The parts of a unit's root filesystem first boot reads."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "shadow").write_text(SHADOW)
    os.chmod(root / "etc" / "shadow", 0o640)
    (root / "etc" / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    return root


def release_cert(directory: Path, name: str) -> Path:
    """A release signing certificate (its key beside it), as `openssl req` makes one."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / f"{name}.cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                    str(directory / f"{name}.key.pem"), "-out", str(cert), "-subj",
                    f"/O=Ping'an Edge/CN={name}", "-days", "3650"], check=True,
                   capture_output=True)
    return cert


def make_image(workdir: Path, name: str = "unit.img", keyring: bool = True) -> Path:
    """A card image laid out like the real one, 61 MiB (boot 33, slots 8, data 8); with
    `keyring`, slot A trusts a release key (`build-image --keyring`)."""
    boot, root, data = workdir / "boot", workdir / "root", workdir / "data"
    for d in (boot / "pingan-edge", root, data / "etc" / "pingan-edge", data / "state"):
        d.mkdir(parents=True, exist_ok=True)
    if keyring:
        (root / "etc" / "rauc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "rauc" / "keyring.pem").write_bytes(
            release_cert(workdir / "keys", "image-release").read_bytes())
    # As stage 40 lays it out: a command line per root slot, config.txt and tryboot.txt
    # ending with the update back-end's slots file (edge/update/tryboot.py).
    (boot / "cmdline.txt").write_text(CMDLINE)
    (boot / "cmdline-a.txt").write_text(CMDLINE)
    (boot / "cmdline-b.txt").write_text(CMDLINE.replace("50494e47-02", "50494e47-03"))
    (boot / "config.txt").write_text(CONFIG)
    (boot / "tryboot.txt").write_text(CONFIG)
    (boot / "pingan-slots.txt").write_text(tryboot.render(tryboot.Slots()))
    (boot / "pingan-edge" / "README.txt").write_text("identity goes here\n")
    unit_tree(root)
    img = workdir / name
    subprocess.run([str(ASSEMBLE), "--boot", str(boot), "--root", str(root), "--data",
                    str(data), "--out", str(img), "--boot-mib", "33", "--root-mib", "8",
                    "--data-mib", "8"], check=True, capture_output=True)
    return img


def make_bundle(workdir: Path, station: str = "s1", township: str = "t01") -> Path:
    town = provision.Township(workdir / "township")
    if not town.ca_key.exists():
        provision.init(town, township, ["127.0.0.1"])
    return provision.add_station(town, station, "127.0.0.1")
