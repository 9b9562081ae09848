"""Release keys, root trees and bundles for the update tests and bench/update.py: real
openssl keys, real ext4 images (mkfs.ext4 -d), real RAUC bundles (`rauc bundle`), built
the way the signing PC builds them (pingan_centre.release)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.contract.release import COMPATIBLE, Release
from pingan_centre.release import build as release_build

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
        random.Random(version).randbytes(payload_kib * 1024))
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
                  bundle_format: str = "verity", payload_kib: int = 256
                  ) -> release_build.Built:
    work = tmp / f"build-{version}-{signer.cert.stem}-{bundle_format}"
    tree = root_tree(work / "root", version, trusted, payload_kib)
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



BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/>
    <allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""

SYSTEM_CONF = """[system]
compatible={compatible}
bootloader=custom
data-directory={dir}/rauc-data
# Its own mount point: two rigs (a test and a bench) must not share /mnt/rauc.
mountprefix={dir}/mnt

[keyring]
path={keyring}

[handlers]
bootloader-custom-backend={dir}/bootloader

[slot.rootfs.0]
device={dir}/slotA.img
type=ext4
bootname=A

[slot.rootfs.1]
device={dir}/slotB.img
type=ext4
bootname=B
"""


class RaucRig:
    """Debian's RAUC service as a unit runs it, on a private system bus: two root slots
    (image files), our bootloader back-end on a fake FAT directory, the unit's keyring.
    `boot(slot)` restarts the service as if that slot had booted (RAUC's
    --override-boot-slot stands for the kernel command line)."""

    def __init__(self, directory: Path, keyring_file: Path) -> None:
        self.dir = directory
        self.fat = directory / "fat"
        self.fat.mkdir(parents=True)
        (directory / "rauc-data").mkdir()
        (directory / "mnt").mkdir()
        for slot in ("A", "B"):
            with (directory / f"slot{slot}.img").open("wb") as f:
                f.truncate(16 << 20)
        self.keyring = keyring_file
        self.socket = directory / "bus"
        (directory / "bus.conf").write_text(BUS_CONF.format(socket=self.socket))
        backend = directory / "bootloader"
        backend.write_text(f"#!/bin/sh\nexec {sys.executable} -m edge.update.tryboot "
                           f"--boot-dir {self.fat} \"$@\"\n")
        backend.chmod(0o755)
        (directory / "system.conf").write_text(SYSTEM_CONF.format(
            compatible=COMPATIBLE, dir=directory, keyring=keyring_file))
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.socket}"}
        self._bus: subprocess.Popen[bytes] | None = None
        self._service: subprocess.Popen[bytes] | None = None
        self.booted = "A"

    def start(self) -> RaucRig:
        self._bus = subprocess.Popen(["dbus-daemon", "--nofork", "--config-file",
                                      str(self.dir / "bus.conf")])
        wait_for(lambda: self.socket.exists(), "the private system bus")
        return self.boot("A")

    def boot(self, slot: str) -> RaucRig:
        self._stop_service()
        self.booted = slot
        log = (self.dir / f"rauc-{slot}.log").open("ab")
        self._service = subprocess.Popen(
            ["rauc", "service", f"--conf={self.dir / 'system.conf'}",
             f"--override-boot-slot={slot}"], env=self.env, stdout=log, stderr=log)
        wait_for(lambda: subprocess.run(["rauc", "status"], env=self.env,
                                        capture_output=True).returncode == 0, "rauc service")
        return self

    def _stop_service(self) -> None:
        if self._service is not None:
            self._service.terminate()
            self._service.wait(10)
            self._service = None

    def stop(self) -> None:
        self._stop_service()
        if self._bus is not None:
            self._bus.terminate()
            self._bus.wait(10)


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class BundleServer:
    """The township's plain static HTTP server for bundles, with Range requests (as
    nginx or the console serve them). `drop_every`: close the connection after that many
    bytes of each answer (a link that drops); `files` maps a URL path to a file."""

    def __init__(self, drop_every: int | None = None) -> None:
        import http.server
        import threading

        self.files: dict[str, Path] = {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                path = outer.files.get(self.path)
                if path is None:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    first, _, last = rng[6:].partition("-")
                    start = int(first)
                    end = min(int(last), end) if last else end
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                body = data[start:end + 1]
                if outer.drop_every is not None:
                    body = body[: outer.drop_every]
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)
                if outer.drop_every is not None:
                    self.close_connection = True

        self.drop_every = drop_every
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, name: str, path: Path) -> str:
        self.files[f"/{name}"] = path
        return f"{self.base}/{name}"

    def start(self) -> BundleServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
