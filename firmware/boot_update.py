"""An over-the-air update on the emulated unit (`firmware/boot-test --update`): long, by hand.

1. A township on this machine (as boot_test.py), a release key, and the card: the image
   written by firmware/flash with that key's keyring (`--keyring`), grown to a 5 GiB card.
2. Release N+1 made from the card's own root slot A, as the signing PC would from its
   build tree: the same ext4 with its release file and one line of station code changed
   (`edge/__init__.py`'s version), bundled by `pingan-centre release build` (verity,
   signed). Served by a static HTTP server with Range requests (counting bytes sent).
3. QEMU plays the Pi firmware: at each power-on it reads `autoboot.txt` from the card's FAT
   partition (mtools) and boots `[tryboot]`'s partition when the last reset was a
   `reboot '0 tryboot'` (the kernel prints "Restarting system with command '0 tryboot'"
   on the console), `[all]`'s otherwise; no file is slot A. The kernel and initrd come
   from the FAT partition (one for both slots), `root=PARTUUID=50494e47-0N` names the slot.
4. Boot N; once online, offer N+1 (`update.offer`, as the console sends it); wait for the
   station's `update.*` events; the guest reboots itself; the harness boots what
   autoboot.txt and the flag say; wait for `update.committed`; then a plain power cycle
   must come up on N+1 again (committed).
5. Unless `--no-crash`: release N+2, whose station crashes at start (a line that raises
   at the end of edge/station.py), is offered; it installs into the other slot and is
   tried; the commit check finds no station within `update.health_s`, marks it bad and
   reboots without the flag; the unit is back on N+1 and says why (`update.rolled_back`).

The install is streamed and adaptive: the image's RAUC (1.8-2+pingan1, firmware/build-rauc)
reads the bundle with range requests through the station's local server
(edge/update/stream.py, capped at `--rate-bytes-s`), and fetches only the blocks of N+1's
root that neither slot holds. The server here counts every byte it sends: the figures
say how much of the bundle a one-line release cost.

Prints each figure as it is measured (FIGURE lines): bundle size, bytes served, download,
install, reboot to committed, the time without a station (from `update.rebooting` to the
new station's `online: true`, an upper bound of the time without presses).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from boot_test import PASSWORD, Console, Figures

from edge.update import tryboot
from pingan_centre.broker import provision
from pingan_centre.release import build as release_build
from pingan_firmware import card
from pingan_sim.township import CENTRE, Client, TownshipBroker
from pingan_sim.update_rig import bom_file, keyring, make_signer

HERE = Path(__file__).resolve().parent
CMD = "pingan/v1/t01/s1/cmd"
TRYBOOT = rb"Restarting system with command '0 tryboot'"
# The unit's settings: mock pins (this machine has no GPIO device), no sound card.
SETTINGS = ('[pins]\nfactory = "mock"\n\n[buttons]\npanic_hold_s = 0.1\n\n'
            '[audio]\nenabled = false\n')
# The checks the commit needs, less the clock: QEMU's user network has no NTP server.
UPDATE_SETTINGS = ('\n[update]\ncommit_rows = ["certificate", "power"]\n'
                   'rate_bytes_s = {rate}\nhealth_s = {health}\n')
SITE = "/opt/pingan-edge/lib/python3.11/site-packages"
STATION_PY = f"{SITE}/edge/__init__.py"
CRASH = b'\nraise SystemExit("boot-test: this release\'s station crashes at start")\n'


class RangeServer:
    """A static server for the bundle: Range requests with both ends (RAUC's streaming
    asks for exact ranges), counting the bytes it sends."""

    def __init__(self, path: Path) -> None:
        self.path, self.sent, self.requests = path, 0, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _answer(self, body: bool) -> None:
                size = outer.path.stat().st_size
                start, end = 0, size - 1
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    first, _, last = rng[6:].partition("-")
                    start = int(first) if first else max(0, size - int(last))
                    end = min(int(last), size - 1) if first and last else end
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if not body:
                    return
                outer.requests += 1
                with outer.path.open("rb") as f, contextlib.suppress(BrokenPipeError,
                                                                     ConnectionResetError):
                    f.seek(start)
                    left = end - start + 1
                    while left:
                        chunk = f.read(min(left, 1 << 20))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        outer.sent += len(chunk)
                        left -= len(chunk)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def guest_url(self) -> str:
        return f"http://10.0.2.2:{self.server.server_address[1]}/{self.path.name}"


def make_release(disk: Path, work: Path, version: str, signer: Any,
                 crash: bool = False) -> release_build.Built:
    """A release from the card's slot A: its release file and one line of station code
    (the version) changed; with `crash`, a station that exits at start."""
    root = work / "rootA.ext4"
    part = card.partitions(disk)[card.ROOT_A]
    subprocess.run(["dd", f"if={disk}", f"of={root}", "bs=4M", "iflag=skip_bytes,count_bytes",
                    f"skip={part.start}", f"count={part.size}", "conv=sparse", "status=none"],
                   check=True)
    code = card.ext4_read(root, STATION_PY) or b""
    changed = re.sub(rb'__version__ = "[^"]*"', f'__version__ = "{version}"'.encode(), code)
    if changed == code:
        raise SystemExit(f"{STATION_PY}: no __version__ line to change")
    edits = [(STATION_PY, changed), ("/etc/pingan-edge-release", f"{version}\n".encode())]
    if crash:
        station = card.ext4_read(root, f"{SITE}/edge/station.py") or b""
        edits.append((f"{SITE}/edge/station.py", station + CRASH))
    for path, data in edits:
        local = work / Path(path).name
        local.write_bytes(data)
        subprocess.run(["debugfs", "-w", "-f", "-", str(root)], check=True,
                       capture_output=True,
                       input=f"rm {path}\nwrite {local} {path}\nsif {path} mode 0100644\n"
                             f"sif {path} uid 0\nsif {path} gid 0\n".encode())
        if card.ext4_read(root, path) != data:
            raise SystemExit(f"could not change {path} in the release's root")
    started = time.monotonic()
    built = release_build.build(version=version, out_dir=work / f"release-{version}",
                                cert=signer.cert,
                                key=signer.key, min_data_schema=1, bom=bom_file(work),
                                rootfs=root)
    print(f"FIGURE release build (s): {time.monotonic() - started:.1f}", flush=True)
    root.unlink()
    return built


class Unit:
    """The emulated Pi: power on reads autoboot.txt and the tryboot flag like its firmware."""

    def __init__(self, disk: Path, work: Path, memory: str) -> None:
        self.disk, self.work, self.memory = disk, work, memory
        self.tryboot_flag = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.console: Console | None = None
        self.boots = 0
        for name in card.fat_list(disk, ""):
            if name.startswith(("vmlinuz", "initrd.img")):
                (work / name).write_bytes(card.fat_read(disk, name) or b"")
        self.kernel = next(work.glob("vmlinuz*"))
        self.initrd = next(work.glob("initrd.img*"))

    def slot(self) -> str:
        text = card.fat_read(self.disk, tryboot.AUTOBOOT)
        slots = tryboot.parse(text.decode("ascii")) if text else tryboot.Slots()
        return tryboot.boot(slots, tryboot_flag=self.tryboot_flag)

    def power_on(self) -> str:
        slot = self.slot()
        self.boots += 1
        words = (card.fat_read(self.disk, "cmdline.txt") or b"").decode().split()
        words = [w for w in words if not w.startswith(("console=", "root="))
                 and w != "quiet"]
        words += [f"root=PARTUUID=50494e47-0{tryboot.PARTITIONS[slot]}",
                  "console=ttyAMA0,115200"]
        qemu = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2",
                "-m", self.memory, "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", " ".join(words),
                "-drive", f"if=none,file={self.disk},format=raw,id=hd",
                "-device", "virtio-blk-device,drive=hd", "-netdev", "user,id=net0",
                "-device", "virtio-net-device,netdev=net0", "-device", "i6300esb",
                "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"]
        print(f"power on #{self.boots}: slot {slot} (tryboot flag {self.tryboot_flag})",
              flush=True)
        self.tryboot_flag = False  # the firmware's flag lives through one reset only
        self.proc = subprocess.Popen(qemu, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.console = Console(self.proc, self.work / f"console-{self.boots}.log")
        return slot

    def wait_reset(self, timeout: float) -> None:
        """The guest reboots itself (QEMU exits: -no-reboot); note a tryboot request."""
        assert self.proc is not None and self.console is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"the unit did not reboot within {timeout:.0f} s") from None
        time.sleep(0.5)  # the console pump's last bytes
        with self.console.lock:
            self.tryboot_flag = re.search(TRYBOOT, self.console.buf) is not None
        print(f"reset; tryboot flag {self.tryboot_flag}", flush=True)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def power_cut(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.tryboot_flag = False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", type=Path)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=1800, help="seconds for each wait")
    p.add_argument("--memory", default="1024")
    p.add_argument("--version", default="0.1.1", help="release N+1's version")
    p.add_argument("--health-s", type=float, default=300,
                   help="update.health_s on the unit: how long a tried slot may take")
    p.add_argument("--crash-version", default="0.1.2", help="release N+2's version")
    p.add_argument("--no-crash", dest="crash", action="store_false",
                   help="skip step 5 (the release whose station crashes)")
    p.add_argument("--rate-bytes-s", type=int, default=1 << 28,
                   help="the unit's download cap (update.rate_bytes_s)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pingan-update-test-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work}", flush=True)
    figures = Figures()

    township = TownshipBroker(work / "township")
    provision.issue_server(township.town, ["10.0.2.2", "127.0.0.1"])
    township.start()
    bundle = provision.add_station(township.town, "s1", "10.0.2.2",
                                   broker_port=township.tls_port)
    centre = Client("centre.update-test")
    assert centre.connect(township.plain_port, CENTRE, township.centre_password)
    centre.client.subscribe("pingan/v1/t01/s1/#", qos=1)
    signer = make_signer(work / "keys", "release-boot-test")
    ring = keyring(work / "keyring.pem", signer)

    disk = work / "card.img"
    (work / "settings.toml").write_text(SETTINGS + UPDATE_SETTINGS.format(
        rate=args.rate_bytes_s, health=args.health_s))
    (work / "password").write_text(PASSWORD + "\n")
    subprocess.run([str(HERE / "flash"), str(args.image), str(disk), "--bundle", str(bundle),
                    "--settings", str(work / "settings.toml"), "--serial", "UPDATE-TEST",
                    "--technician-password-file", str(work / "password"),
                    "--keyring", str(ring)], check=True)
    built = make_release(disk, work, args.version, signer)
    figures["bundle size (MB)"] = built.bundle.stat().st_size / 1e6
    crashing = make_release(disk, work, args.crash_version, signer, crash=True) \
        if args.crash else None
    os.truncate(disk, 5 * 1024**3)
    server = RangeServer(built.bundle)
    unit = Unit(disk, work, args.memory)

    def events(kind: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(b) for t, b in centre.received("/events")]
        return [m for m in found if kind is None or m["type"] == kind]

    def online_since(mark: int) -> bool:
        return any(json.loads(b).get("online") is True
                   for t, b in centre.received("/state")[mark:] if t.endswith("/state"))

    def wait(what: str, predicate: Any, timeout: float | None = None,
             allow_exit: bool = False) -> float:
        deadline = time.monotonic() + (timeout or args.timeout)
        while not predicate():
            if time.monotonic() > deadline:
                seen = [(m["type"], m["payload"].get("code")) for m in events()
                        if m["type"].startswith("update.")]
                raise SystemExit(f"timed out waiting for {what}; update events: {seen}")
            if not allow_exit and unit.exited():
                raise SystemExit(f"QEMU exited waiting for {what}")
            time.sleep(0.5)
        return time.monotonic()

    try:
        states = len(centre.received("/state"))
        t0 = time.monotonic()
        if unit.power_on() != "A":
            raise SystemExit("a fresh card must boot slot A")
        wait("online on N", lambda: online_since(states))
        figures["power-on to online on N (s)"] = time.monotonic() - t0
        doc = json.loads(built.descriptor.read_text())
        offer = {"cmd": "update.offer", "id": "boot-test-up-1", "by": "boot-test",
                 **{k: doc[k] for k in ("version", "size", "sha256", "min_data_schema",
                                        "rollback", "compatible", "signature")},
                 "url": server.guest_url}
        offered = time.monotonic()
        centre.publish(CMD, json.dumps(offer).encode())
        t_verified = wait("update.verified", lambda: events("update.verified")
                          or events("update.refused") or events("update.failed"))
        if not events("update.verified"):
            bad = events("update.refused") + events("update.failed")
            raise SystemExit(f"refused or failed: {bad}")
        figures["offer to verified: the signature fetched and checked (s)"] = \
            t_verified - offered
        figures["bytes served up to verified (KB)"] = server.sent / 1e3
        t_installed = wait("update.installed", lambda: events("update.installed")
                           or events("update.failed"))
        if not events("update.installed"):
            raise SystemExit(f"install failed: {events('update.failed')}")
        figures["streamed install: verified to installed (s)"] = t_installed - t_verified
        figures["bytes served in all, adaptive (MB)"] = server.sent / 1e6
        figures["of the full bundle (%)"] = 100 * server.sent / built.bundle.stat().st_size
        figures["range requests served"] = server.requests
        # The event may reach the township only after the next boot (the station stops
        # soon after storing it): the reset is what is waited for.
        t_rebooting = wait("update.rebooting or the reset", lambda: events(
            "update.rebooting") or unit.exited(), allow_exit=True)
        unit.wait_reset(args.timeout)
        t_reset = time.monotonic()
        figures["update.rebooting (or installed) to the guest's reset (s)"] = \
            t_reset - t_rebooting
        if not unit.tryboot_flag:
            raise SystemExit("the guest reset without asking for tryboot")
        states = len(centre.received("/state"))
        if unit.power_on() != "B":
            raise SystemExit("the tryboot must boot slot B")
        t_online = wait("online on N+1", lambda: online_since(states))
        figures["update.rebooting to the new station online (s)"] = t_online - t_rebooting
        t_done = wait("update.committed", lambda: events("update.committed")
                      or events("update.rolled_back"))
        if not events("update.committed"):
            raise SystemExit(f"rolled back: {events('update.rolled_back')}")
        figures["reset to committed (s)"] = t_done - t_reset
        committed = events("update.committed")[-1]
        print(f"committed: {json.dumps(committed['payload'])}", flush=True)
        slots = tryboot.parse((card.fat_read(disk, tryboot.AUTOBOOT) or b"").decode())
        print(f"autoboot.txt: committed {slots.committed}, states {slots.states}", flush=True)
        # A power cut now: no flag, [all] must be the new slot.
        unit.power_cut()
        states = len(centre.received("/state"))
        if unit.power_on() != "B":
            raise SystemExit("after the commit a plain boot must be slot B")
        wait("online after a power cycle", lambda: online_since(states))
        seen = [m["type"] for m in events() if m["type"].startswith("update.")]
        print(f"update events: {seen}", flush=True)
        if crashing is not None:
            bad = RangeServer(crashing.bundle)
            doc = json.loads(crashing.descriptor.read_text())
            offer = {"cmd": "update.offer", "id": "boot-test-up-2", "by": "boot-test",
                     **{k: doc[k] for k in ("version", "size", "sha256", "min_data_schema",
                                            "rollback", "compatible", "signature")},
                     "url": bad.guest_url}
            centre.publish(CMD, json.dumps(offer).encode())
            t_rebooting = wait("update.rebooting of N+2", lambda: unit.exited() or any(
                m["payload"].get("cmd_id") == "boot-test-up-2"
                for m in events("update.rebooting")), allow_exit=True)
            unit.wait_reset(args.timeout)
            if not unit.tryboot_flag or unit.power_on() != "A":
                raise SystemExit("N+2 must be tried in slot A")
            unit.wait_reset(args.timeout)  # the commit check gives up: a plain reboot
            t_back = time.monotonic()
            if unit.tryboot_flag:
                raise SystemExit("the fall-back reboot asked for tryboot")
            states = len(centre.received("/state"))
            if unit.power_on() != "B":
                raise SystemExit("after a failed trial the unit must boot N+1 (slot B)")
            t_said = wait("update.rolled_back", lambda: events("update.rolled_back"))
            figures["N+2 rebooting to back on N+1 (s)"] = t_back - t_rebooting
            figures["back on N+1 to update.rolled_back at the township (s)"] = t_said - t_back
            back = events("update.rolled_back")[-1]["payload"]
            print(f"rolled back: code {back.get('code')}; reason {back.get('reason')}; "
                  f"checks {back.get('checks')}", flush=True)
            wait("online on N+1 again", lambda: online_since(states))
            bad.server.shutdown()
    finally:
        unit.power_cut()
        centre.close()
        township.stop()
        server.server.shutdown()
    for name, value in figures.items():
        print(f"{name}: {value:.1f}")
    if os.environ.get("KEEP") != "1":
        disk.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
