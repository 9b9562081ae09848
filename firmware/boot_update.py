"""An over-the-air update on the emulated unit (`firmware/boot-test --update`): long, by hand.

1. A township on this machine (as boot_test.py), a release key, and the card: the image
   written by firmware/flash with that key's keyring (`--keyring`), grown to a 5 GiB card.
   The station's pins are on QEMU virt's PL061 (panic 4, broadcast 5, LED 6), pressed and
   read through qtest (firmware/pingan_firmware/emulator.py), as boot_test.py does.
2. Release N+1 made from the card's own root slot A, as the signing PC would from its
   build tree: the same ext4 with its release file and one line of station code changed
   (`edge/__init__.py`'s version), bundled by `pingan-centre release build` (verity,
   signed). Served by a static HTTP server with Range requests (counting bytes sent).
3. QEMU plays the Pi firmware: at each power-on it reads the card's FAT partition
   (mtools) as the firmware does (pingan_firmware.piboot): `tryboot.txt` when the last
   reset was a `reboot '0 tryboot'` (the kernel prints "Restarting system with command
   '0 tryboot'" on the console), with its `[tryboot]` sections, else `config.txt`; both
   include the update back-end's `pingan-slots.txt`, whose `cmdline=` names the command
   line file, whose `root=PARTUUID=50494e47-0N` is the slot. A power cut (SIGKILL to
   QEMU) loses the flag, as on a Pi. The kernel and initrd come from the FAT partition
   (one for both slots).
4. Boot N; an alarm pressed on the panic line reaches the township (every alarm that
   reaches it is acknowledged, as an officer would: an open alarm holds the reboot).
5. With `--power-cuts`, N+1 is offered four times and the power cut each time: during the
   download (the server holds the transfer after 2 MB), during the slot write (RAUC's
   writes seen in QEMU's block statistics), during the reboot (the shutdown's first line
   on the console) and after the reboot into the new slot, before the commit (its link
   down, so it cannot commit). Before each cut the unit's link is taken down (QMP
   `set_link`) and the panic button pressed: the LED's fast blink says the alarm is
   stored and not delivered. After each cut: power on from the same card, the slot it
   comes up on, the time to `online: true`, the stored alarm must arrive, and a new press
   must too.
6. N+1 offered again: it installs, reboots itself into the other slot (tryboot), commits.
   From the reset into N+1 the panic button is held down: the new station must take it
   the moment it runs (a button held at start). An alarm after the commit; a power
   cycle must come up on N+1 again (committed), and `update.committed` is one event (one
   id, however often it is delivered).
7. Unless `--no-crash`: release N+2, whose station crashes at start (a line that raises
   at the end of edge/station.py), is offered; it installs into the other slot and is
   tried; the commit check finds no station within `update.health_s`, marks it bad and
   reboots without the flag; the unit is back on N+1, says why (`update.rolled_back`)
   and an alarm pressed then reaches the township.

At the end, every alarm the unit accepted (the LED said stored, or the township has it)
must be at the township: none lost.

The install is streamed and adaptive: the image's RAUC (1.8-2+pingan1, firmware/build-rauc)
reads the bundle with range requests through the station's local server
(edge/update/stream.py, capped at `--rate-bytes-s`), and fetches only the blocks of N+1's
root that neither slot holds. The server here counts every byte it sends: the figures
say how much of the bundle a one-line release cost.

Prints each figure as it is measured (FIGURE lines): bundle size, bytes served, download,
install, reboot to committed, the time without presses (from the old station's stop on
the console to the held press taken by the new one, seen on the LED line; and, looser,
`update.rebooting` to the new station's `online: true`), and per power cut the time from
power-on to online. A summary of what each step saw ends the output.
"""

from __future__ import annotations

import argparse
import collections
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boot_test import HOLD_S, PASSWORD, PINS, Console, Figures, settings

from edge.update import tryboot
from pingan_centre.broker import provision
from pingan_centre.release import build as release_build
from pingan_firmware import card, piboot
from pingan_firmware.emulator import EmulatorError, GpioLines, Qmp, Qtest, pl061
from pingan_sim.township import CENTRE, Client, TownshipBroker
from pingan_sim.update_rig import bom_file, keyring, make_signer

HERE = Path(__file__).resolve().parent
CMD = "pingan/v1/t01/s1/cmd"
TRYBOOT = rb"Restarting system with command '0 tryboot'"
# The checks the commit needs, less the clock: QEMU's user network has no NTP server.
UPDATE_SETTINGS = ('\n[update]\ncommit_rows = ["certificate", "power"]\n'
                   'rate_bytes_s = {rate}\nhealth_s = {health}\n')
SITE = "/opt/pingan-edge/lib/python3.11/site-packages"
STATION_PY = f"{SITE}/edge/__init__.py"
CRASH = b'\nraise SystemExit("boot-test: this release\'s station crashes at start")\n'
PINS_VIRT = PINS["virt"]
# The first line of a shutdown on the console (systemd's status lines: `quiet` is taken
# off the command line), and the line that says the network is up at boot.
SHUTDOWN = rb"(Stopping|Stopped) .*(pingan|Ping'an)|Reached target .*(Reboot|Shutdown)"
# The old station going down: from here until the new slot's station runs, no press is
# taken (a button held through it is taken when the new station starts).
# systemd colours and shortens the name: "Stopping \x1b[0;1;39mpingan-edge.servi…".
STATION_STOPPING = rb"Stopping (\x1b\[[0-9;]*m)?(pingan-edge\.servi|Ping'an Edge village)"
# The slot write: this much written to the card after `update.verified` is RAUC's.
INSTALL_WRITES = 64 << 20


class RangeServer:
    """A static server for the bundle: Range requests with both ends (RAUC's streaming
    asks for exact ranges), counting the bytes it sends."""

    def __init__(self, path: Path) -> None:
        self.path, self.sent, self.requests = path, 0, 0
        self.ranges: list[str | None] = []
        # The transfer stops once `hold_at` bytes are sent, until `let_go()`: a download
        # caught in the middle, for a power cut.
        self.hold_at: int | None = None
        self.held = threading.Event()
        self._go = threading.Event()
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
                outer.ranges.append(rng)
                with outer.path.open("rb") as f, contextlib.suppress(BrokenPipeError,
                                                                     ConnectionResetError):
                    f.seek(start)
                    left = end - start + 1
                    while left:
                        if outer.hold_at is not None and outer.sent >= outer.hold_at:
                            outer.held.set()
                            outer._go.wait()
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

    def let_go(self) -> None:
        self.hold_at = None
        self._go.set()

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
    """The emulated Pi: power on reads the boot configuration and the tryboot flag like its
    firmware; qtest is the finger on the buttons and the eye on the LED, QMP pulls the link
    cable and reads the card's write counter."""

    def __init__(self, disk: Path, work: Path, memory: str) -> None:
        self.disk, self.work, self.memory = disk, work, memory
        self.tryboot_flag = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.console: Console | None = None
        self.qtest: Qtest | None = None
        self.qmp: Qmp | None = None
        self.lines: GpioLines | None = None
        self.boots = 0
        for name in card.fat_list(disk, ""):
            if name.startswith(("vmlinuz", "initrd.img")):
                (work / name).write_bytes(card.fat_read(disk, name) or b"")
        self.kernel = next(work.glob("vmlinuz*"))
        self.initrd = next(work.glob("initrd.img*"))

    def slots(self) -> tryboot.Slots:
        text = card.fat_read(self.disk, tryboot.SLOTS_FILE)
        return tryboot.parse(text.decode("ascii")) if text else tryboot.Slots()

    def _fat_text(self, name: str) -> str | None:
        data = card.fat_read(self.disk, name)
        return data.decode("ascii") if data is not None else None

    def power_on(self) -> str:
        """As the Pi firmware: config.txt, or tryboot.txt with the flag, with what they
        include; the command line file they name boots its slot (its root=)."""
        boot = piboot.boot_config(self._fat_text, "pi4b", tryboot=self.tryboot_flag)
        slot = tryboot.BY_CMDLINE.get(boot.cmdline_file)
        if slot is None:
            raise SystemExit(f"the firmware would read {boot.cmdline_file}: no root slot's")
        self.boots += 1
        words = piboot.read_cmdline(self._fat_text(boot.cmdline_file) or "").split()
        if f"root=PARTUUID=50494e47-0{tryboot.PARTITIONS[slot]}" not in words:
            raise SystemExit(f"{boot.cmdline_file} does not boot slot {slot}: {words}")
        words = [w for w in words if not w.startswith("console=") and w != "quiet"]
        words += ["console=ttyAMA0,115200"]
        qtest_sock, qmp_sock = self.work / "qtest.sock", self.work / "qmp.sock"
        for sock in (qtest_sock, qmp_sock):
            sock.unlink(missing_ok=True)
        qemu = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2",
                "-m", self.memory, "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", " ".join(words),
                "-drive", f"if=none,file={self.disk},format=raw,id=hd",
                "-device", "virtio-blk-device,drive=hd", "-netdev", "user,id=net0",
                "-device", "virtio-net-device,netdev=net0", "-device", "i6300esb",
                "-accel", "tcg", "-qtest", f"unix:{qtest_sock},server=on,wait=off",
                "-qtest-log", "/dev/null", "-qmp", f"unix:{qmp_sock},server=on,wait=off",
                "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot"]
        print(f"power on #{self.boots}: slot {slot} (tryboot flag {self.tryboot_flag})",
              flush=True)
        self.tryboot_flag = False  # the firmware's flag lives through one reset only
        self.proc = subprocess.Popen(qemu, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.console = Console(self.proc, self.work / f"console-{self.boots}.log")
        self.qtest, self.qmp = Qtest(qtest_sock), Qmp(qmp_sock)
        self.lines = pl061(self.qtest, self.qmp)
        for name in ("panic", "broadcast"):  # the buttons' pull-ups: released
            self.lines.drive(PINS_VIRT[name], True)
        return slot

    def press(self, name: str = "panic", hold_s: float = HOLD_S) -> None:
        """A finger on the button: the line to ground for `hold_s`, then released (a
        unit that goes down meanwhile takes the finger with it)."""
        lines = self.lines
        if lines is None:
            return
        with contextlib.suppress(EmulatorError, OSError):
            lines.drive(PINS_VIRT[name], False)
            time.sleep(hold_s)
            lines.drive(PINS_VIRT[name], True)

    def led(self) -> bool | None:
        """The LED line's level; None once QEMU is gone."""
        lines = self.lines
        if lines is None:
            return None
        try:
            return lines.level(PINS_VIRT["alarm_led"])
        except (EmulatorError, OSError):
            return None

    def led_mode(self, window_s: float = 1.6) -> str:
        """What the LED line does over `window_s`: `fast` (an alarm stored, not yet
        delivered: 0.2 s on/off), `slow` (updating: 1 s on/off), `on`, `off`, `flash`."""
        runs: list[tuple[bool, float]] = []
        start = last = time.monotonic()
        level = self.led()
        while (now := time.monotonic()) - start < window_s:
            seen = self.led()
            if seen is None or level is None:
                return "gone"
            if seen != level:
                runs.append((level, now - last))
                level, last = seen, now
            time.sleep(0.02)
        if not runs:
            return "on" if level else "off"
        inner = [d for on, d in runs[1:] if on] or [d for on, d in runs if on] or [0.0]
        if len(runs) >= 4 and max(inner) < 0.5:
            return "fast"
        return "slow" if max(inner) >= 0.6 else "flash"

    def link(self, up: bool) -> None:
        """The unit's network cable (QMP set_link on its user-mode netdev)."""
        assert self.qmp is not None
        self.qmp.execute("set_link", name="net0", up=up)
        print(f"link {'up' if up else 'down'}", flush=True)

    def written(self) -> int:
        """Bytes the guest has written to its card since power-on (QMP blockstats)."""
        assert self.qmp is not None
        for dev in self.qmp.execute("query-blockstats"):
            if dev.get("device") == "hd":
                return int(dev["stats"]["wr_bytes"])
        raise SystemExit("QMP query-blockstats: no drive hd")

    def console_mark(self) -> int:
        assert self.console is not None
        return self.console.mark

    def console_seen(self, pattern: bytes, start: int) -> bool:
        assert self.console is not None
        with self.console.lock:
            return re.search(pattern, self.console.buf[start:]) is not None

    def _probes_closed(self) -> None:
        for probe in (self.qtest, self.qmp):
            if probe is not None:
                with contextlib.suppress(OSError):
                    probe.close()
        self.qtest = self.qmp = None
        self.lines = None

    def wait_updating(self, timeout: float) -> bool:
        """Until the LED blinks slowly (on for over 0.6 s twice within 3.5 s: an
        acknowledged alarm's 0.1 s flash, stretched by a loaded guest, once fooled a
        single long on); False if the unit went down first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited() or self.led() is None:
                return False
            runs: list[tuple[bool, float]] = []
            start = last = time.monotonic()
            level = self.led()
            while (now := time.monotonic()) - start < 3.5 and level is not None:
                seen = self.led()
                if seen is None:
                    return False
                if seen != level:
                    runs.append((level, now - last))
                    level, last = seen, now
                time.sleep(0.02)
            if level:
                runs.append((True, time.monotonic() - last))
            if sum(on and d > 0.6 for on, d in runs) >= 2:
                return True
        raise SystemExit(f"the LED never showed the update within {timeout:.0f} s")

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
        self._probes_closed()
        print(f"reset; tryboot flag {self.tryboot_flag}", flush=True)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def power_cut(self) -> None:
        """SIGKILL to QEMU: the card keeps what reached it, the tryboot flag is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._probes_closed()
        self.tryboot_flag = False


class Township:
    """The township's side: what the station sent, offers, and an officer who acknowledges
    every alarm that arrives (an alarm open at the unit holds its reboot)."""

    def __init__(self, broker: TownshipBroker) -> None:
        self.centre = Client("centre.update-test")
        assert self.centre.connect(broker.plain_port, CENTRE, broker.centre_password)
        self.centre.client.subscribe("pingan/v1/t01/s1/#", qos=1)
        self.acked: dict[str, int] = {}  # alarm id → copies acknowledged
        self.acks = 0

    def events(self, kind: str | None = None, cmd_id: str | None = None
               ) -> list[dict[str, Any]]:
        found = [json.loads(b) for t, b in self.centre.received("/events")]
        return [m for m in found if (kind is None or m["type"] == kind)
                and (cmd_id is None or m["payload"].get("cmd_id") == cmd_id)]

    def alarms(self) -> list[str]:
        """The alarm ids that reached the township, each once, in arrival order."""
        return list(dict.fromkeys(m["id"] for m in self.events("alarm.panic")))

    def ack_alarms(self) -> None:
        """Every copy that arrives is acknowledged, as the console does: after a power cut
        the unit can send an acknowledged alarm again (its delivery mark lost), and until
        it hears the ack again that alarm is open and holds its reboot."""
        copies = collections.Counter(m["id"] for m in self.events("alarm.panic"))
        for alarm, count in copies.items():
            if self.acked.get(alarm, 0) < count:
                self.acked[alarm] = count
                self.acks += 1
                self.centre.publish(CMD, json.dumps({
                    "cmd": "alarm.ack", "id": f"ack-{self.acks}", "by": "boot-test",
                    "event_id": alarm}).encode())

    def state_mark(self) -> int:
        return len(self.centre.received("/state"))

    def online_since(self, mark: int) -> bool:
        return any(json.loads(b).get("online") is True
                   for t, b in self.centre.received("/state")[mark:] if t.endswith("/state"))

    def offer(self, built: release_build.Built, url: str, cmd_id: str) -> None:
        doc = json.loads(built.descriptor.read_text())
        self.centre.publish(CMD, json.dumps({
            "cmd": "update.offer", "id": cmd_id, "by": "boot-test", "url": url,
            **{k: doc[k] for k in ("version", "size", "sha256", "min_data_schema",
                                   "rollback", "compatible", "signature")}}).encode())
        print(f"offered {doc['version']} as {cmd_id}", flush=True)

    def updates(self) -> list[tuple[str, str | None, str | None]]:
        return [(m["type"], m["payload"].get("cmd_id"), m["payload"].get("code"))
                for m in self.events() if m["type"].startswith("update.")]


class Run:
    """One boot-test --update run: the unit, the township, and the steps as methods."""

    def __init__(self, unit: Unit, town: Township, figures: Figures, timeout: float) -> None:
        self.unit, self.town, self.figures, self.timeout = unit, town, figures, timeout
        # Alarms the unit accepted: the LED said stored, or the township has them.
        self.accepted = 0
        self.stored = 0  # of them, stored before a cut and not yet seen at the township
        self.report: list[str] = []

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float | None = None,
             allow_exit: bool = False) -> float:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not predicate():
            self.town.ack_alarms()
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}; update events: "
                                 f"{self.town.updates()}")
            if not allow_exit and self.unit.exited():
                raise SystemExit(f"QEMU exited waiting for {what}")
            time.sleep(0.5)
        self.town.ack_alarms()
        return time.monotonic()

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.report.append(line)

    # --- the unit as a person sees it ----------------------------------------------------
    def come_up(self, label: str) -> str:
        """Power on, following the unit's own resets (as the firmware would), until the
        township sees it online. Returns the slot it came up on."""
        mark = self.town.state_mark()
        t0 = time.monotonic()
        slot = self.unit.power_on()
        while True:
            self.wait(f"{label}: online", lambda: self.town.online_since(mark)
                      or self.unit.exited(), allow_exit=True)
            if self.town.online_since(mark):
                break
            self.unit.wait_reset(self.timeout)
            slot = self.unit.power_on()
        self.figures[f"{label}: power-on to online, slot {slot} (s)"] = time.monotonic() - t0
        return slot

    def alarm(self, label: str) -> str:
        """A press on the panic line; it must reach the township. Returns its id."""
        before = len(self.town.alarms())
        pressed = time.monotonic()
        self.unit.press()
        self.accepted += 1
        self.wait(f"{label}: the alarm at the township",
                  lambda: len(self.town.alarms()) > before, timeout=300)
        self.figures[f"{label}: press to the township (s)"] = time.monotonic() - pressed
        alarm = self.town.alarms()[-1]
        self.say(f"{label}: alarm {alarm} delivered")
        return alarm

    def store_alarm(self, label: str) -> None:
        """The link down, then a press: the LED must blink fast (stored, not delivered)."""
        self.unit.link(False)
        finger = threading.Thread(target=self.unit.press, name="finger")
        finger.start()
        deadline = time.monotonic() + 20
        mode = "off"
        while time.monotonic() < deadline and (mode := self.unit.led_mode()) != "fast":
            pass
        finger.join()
        if mode != "fast":
            raise SystemExit(f"{label}: the press was not stored (LED {mode})")
        self.accepted += 1
        self.stored += 1
        self.say(f"{label}: a press stored, not delivered (LED blinks fast)")

    def back_after_cut(self, label: str, expect: str) -> None:
        """After a cut: a good slot, online, the stored alarm arrives, a new one too."""
        before, stored = len(self.town.alarms()), self.stored
        slot = self.come_up(f"{label}, back")
        if slot != expect:
            raise SystemExit(f"{label}: came up on slot {slot}, expected {expect}")
        self.wait(f"{label}: the alarm stored before the cut",
                  lambda: len(self.town.alarms()) >= before + stored, timeout=300)
        self.stored = 0
        self.say(f"{label}: back on slot {slot}; stored alarm(s) "
                 f"{self.town.alarms()[before:before + stored]} delivered")
        self.alarm(f"{label}, a new press")

    # --- the power cuts (N+1 offered, cut at each step) -----------------------------------
    def cut_during_download(self, built: release_build.Built, server: RangeServer) -> None:
        label = "cut 1, during the download"
        # Streamed and adaptive, the unit fetches a few MB of the bundle (whole, 40 %):
        # held after 2 MB, mid-way through what it fetches either way.
        server.hold_at = server.sent + min(built.bundle.stat().st_size * 2 // 5, 2_000_000)
        server.held.clear()
        sent = server.sent
        self.town.offer(built, server.guest_url, "cut-1")
        self.wait(f"{label}: the transfer held", server.held.is_set)
        self.store_alarm(label)
        self.unit.power_cut()
        server.let_go()
        self.say(f"{label}: power cut with {(server.sent - sent) / 1e6:.1f} MB served")
        self.back_after_cut(label, "A")

    def cut_during_install(self, built: release_build.Built, server: RangeServer) -> None:
        label = "cut 2, during the slot write"
        sent = server.sent
        self.offer_until(label, built, server, "cut-2")
        ranges = server.ranges[-3:]
        self.say(f"{label}: the download resumed: {(server.sent - sent) / 1e6:.1f} MB "
                 f"served for it (Range {ranges})")
        written = self.unit.written()
        # RAUC's writes (or its set-primary at the end: the card's pingan-slots.txt), with
        # the link up: a streamed install fetches the blocks it writes as it goes.
        self.wait(f"{label}: RAUC writing the slot", lambda: self.unit.written() - written
                  > INSTALL_WRITES or self.unit.slots().trial_pending, timeout=600)
        self.store_alarm(label)
        mb = (self.unit.written() - written) / 1e6
        self.unit.power_cut()
        slots = self.unit.slots()
        when = "after the install had finished" if slots.trial_pending else \
            "during the install"
        self.say(f"{label}: power cut {when}, {mb:.0f} MB written since verified; "
                 f"slots {slots}")
        self.back_after_cut(label, "A")

    def cut_during_reboot(self, built: release_build.Built, server: RangeServer) -> None:
        label = "cut 3, during the reboot"
        sent = server.sent
        self.offer_until(label, built, server, "cut-3")
        # Installed with the link up: a streamed install fetches its blocks as it goes
        # (none again when an earlier cut's fetch left them held).
        self.until(label, "cut-3", "update.installed")
        self.say(f"{label}: {(server.sent - sent) / 1e6:.1f} MB served for this offer")
        # The link down (the officer's acks are in): from here on the township sees
        # nothing, and a press in the reboot's window stays stored.
        self.unit.link(False)
        mark = self.unit.console_mark()
        if self.unit.wait_updating(900):
            finger = threading.Thread(target=self.unit.press, name="finger")
            finger.start()
            stored = False
            deadline = time.monotonic() + 10
            while not stored and not self.unit.exited() and time.monotonic() < deadline:
                stored = self.unit.led_mode(1.2) == "fast"
            finger.join()
            if stored:
                self.accepted += 1
                self.stored += 1
            self.say(f"{label}: a press while the LED shows the update: "
                     f"{'stored (fast blink)' if stored else 'not taken (the station stopped)'}")
        # A press taken before the reboot began holds it (an alarm not delivered): then
        # the cut comes while it waits, with no trial yet to report.
        with contextlib.suppress(SystemExit):
            self.wait(f"{label}: the shutdown on the console", lambda: self.unit.exited()
                      or self.unit.console_seen(SHUTDOWN, mark), timeout=180,
                      allow_exit=True)
        if self.unit.exited():
            raise SystemExit(f"{label}: the unit reset before the cut")
        shutting = self.unit.console_seen(SHUTDOWN, mark)
        self.unit.power_cut()
        when = "during the shutdown" if shutting else \
            "while the reboot waits for the stored alarm"
        self.say(f"{label}: power cut {when}; slots {self.unit.slots()}")
        self.back_after_cut(label, "A")
        if shutting:
            self.rolled_back(label, "cut-3")

    def cut_before_commit(self, built: release_build.Built, server: RangeServer) -> None:
        label = "cut 4, after the reboot, before the commit"
        self.town.offer(built, server.guest_url, "cut-4")
        t0 = self.wait(f"{label}: update.rebooting or the reset", lambda: self.town.events(
            "update.rebooting", "cut-4") or self.unit.exited()
            or self.town.events("update.failed", "cut-4"), allow_exit=True)
        if self.town.events("update.failed", "cut-4"):
            raise SystemExit(f"{label}: {self.town.updates()}")
        self.unit.wait_reset(self.timeout)
        if not self.unit.tryboot_flag or self.unit.power_on() != "B":
            raise SystemExit(f"{label}: the tryboot must boot slot B")
        # No link from power-on (the station starts without waiting for one): the new
        # slot cannot deliver its trial event, so it cannot commit.
        self.unit.link(False)
        self.wait(f"{label}: the station on B taking a press",
                  lambda: self._stored_on_trial(label), timeout=600)
        self.unit.power_cut()
        slots = self.unit.slots()
        if slots.committed != "A":
            raise SystemExit(f"{label}: slot B was committed before the cut ({slots})")
        self.say(f"{label}: power cut {time.monotonic() - t0:.0f} s after update.rebooting, "
                 f"on B, not committed; slots {slots}")
        self.back_after_cut(label, "A")
        self.rolled_back(label, "cut-4")

    def offer_until(self, label: str, built: release_build.Built, server: RangeServer,
                    cmd_id: str) -> float:
        """Offer `built` from `server`; returns when the unit says it verified it."""
        self.town.offer(built, server.guest_url, cmd_id)
        return self.until(label, cmd_id, "update.verified")

    def until(self, label: str, cmd_id: str, kind: str) -> float:
        """Wait for `kind` of offer `cmd_id`; a refusal or failure ends the run."""
        t = self.wait(f"{label}: {kind}", lambda: any(self.town.events(k, cmd_id) for k in (
            kind, "update.refused", "update.failed")))
        if not self.town.events(kind, cmd_id):
            raise SystemExit(f"{label}: {self.town.updates()}")
        return t

    def _stored_on_trial(self, label: str) -> bool:
        """Press until the station on the tried slot stores one (it starts late)."""
        finger = threading.Thread(target=self.unit.press, name="finger")
        finger.start()
        stored = any(self.unit.led_mode(1.2) == "fast" for _ in range(3))
        finger.join()
        if stored:
            self.accepted += 1
            self.stored += 1
            self.say(f"{label}: a press stored on slot B (LED blinks fast)")
        return stored

    def rolled_back(self, label: str, cmd_id: str) -> None:
        self.wait(f"{label}: update.rolled_back", lambda: self.town.events(
            "update.rolled_back", cmd_id), timeout=300)
        back = self.town.events("update.rolled_back", cmd_id)
        self.say(f"{label}: update.rolled_back x{len(back)} (ids "
                 f"{sorted({m['id'] for m in back})}): code {back[-1]['payload'].get('code')}; "
                 f"reason {back[-1]['payload'].get('reason', {}).get('en')}")

    # --- the update that goes through, and the one that must come back ----------------------
    def update(self, built: release_build.Built, server: RangeServer) -> None:
        cmd_id = "up-1"
        sent = server.sent
        offered = time.monotonic()
        mark = self.unit.console_mark()
        t_verified = self.offer_until("N+1", built, server, cmd_id)
        self.figures["offer to verified: the signature fetched and checked (s)"] = \
            t_verified - offered
        self.figures["bytes served up to verified (KB)"] = (server.sent - sent) / 1e3
        requests = server.requests
        t_installed = self.until("N+1", cmd_id, "update.installed")
        self.figures["streamed install: verified to installed (s)"] = t_installed - t_verified
        self.figures["bytes served for this offer, adaptive (MB)"] = (server.sent - sent) / 1e6
        self.figures["of the full bundle (%)"] = \
            100 * (server.sent - sent) / built.bundle.stat().st_size
        self.figures["range requests served"] = server.requests - requests
        # The event may reach the township only after the next boot (the station stops
        # soon after storing it): the reset is what is waited for.
        t_rebooting = self.wait("update.rebooting or the reset", lambda: self.town.events(
            "update.rebooting", cmd_id) or self.unit.exited(), allow_exit=True)
        self.unit.wait_reset(self.timeout)
        t_reset = time.monotonic()
        self.figures["update.rebooting (or installed) to the guest's reset (s)"] = \
            t_reset - t_rebooting
        assert self.unit.console is not None
        t_stopping = self.unit.console.seen_at(STATION_STOPPING, mark)
        if not self.unit.tryboot_flag:
            raise SystemExit("the guest reset without asking for tryboot")
        state = self.town.state_mark()
        if self.unit.power_on() != "B":
            raise SystemExit("the tryboot must boot slot B")
        # A finger on the panic button through the whole boot: the new station must take
        # it as soon as it runs (held at start), which ends the time without presses.
        before = len(self.town.alarms())
        assert self.unit.lines is not None
        self.unit.lines.drive(PINS_VIRT["panic"], False)
        t_taken = self.wait("the held press taken on N+1", lambda: self.unit.led()
                            or len(self.town.alarms()) > before)
        self.wait("the held press at the township", lambda: len(self.town.alarms()) > before)
        self.unit.lines.drive(PINS_VIRT["panic"], True)
        self.accepted += 1
        self.say(f"N+1: the panic button held through the reboot: alarm "
                 f"{self.town.alarms()[-1]} taken as the station started")
        if t_stopping is None:
            self.say("N+1: the old station's stop was not on the console")
        else:
            self.figures["no presses taken: the old station stopping to the held press "
                         "taken on N+1 (s)"] = t_taken - t_stopping
            self.figures["update.rebooting to the old station stopping (s)"] = \
                t_stopping - t_rebooting
        t_online = self.wait("online on N+1", lambda: self.town.online_since(state))
        self.figures["update.rebooting to the new station online (s)"] = t_online - t_rebooting
        t_done = self.wait("update.committed", lambda: self.town.events(
            "update.committed", cmd_id) or self.town.events("update.rolled_back", cmd_id))
        if not self.town.events("update.committed", cmd_id):
            raise SystemExit(f"rolled back: {self.town.events('update.rolled_back')}")
        self.figures["reset to committed (s)"] = t_done - t_reset
        committed = self.town.events("update.committed", cmd_id)[-1]
        self.say(f"committed: {json.dumps(committed['payload'])}")
        self.say(f"slots after the commit: {self.unit.slots()}")
        self.alarm("after the commit")
        # A power cut now: no flag, [all] must be the new slot.
        self.unit.power_cut()
        if self.come_up("power cycle after the commit") != "B":
            raise SystemExit("after the commit a plain boot must be slot B")
        time.sleep(30)  # anything the outbox sends again after the cut arrives by now
        copies = self.town.events("update.committed", cmd_id)
        ids = sorted({m["id"] for m in copies})
        self.say(f"update.committed at the township: {len(copies)} message(s), "
                 f"{len(ids)} event id(s) {ids}")
        if len(ids) != 1:
            raise SystemExit("update.committed was emitted more than once")

    def crash(self, crashing: release_build.Built) -> None:
        bad = RangeServer(crashing.bundle)
        cmd_id = "up-2"
        try:
            self.town.offer(crashing, bad.guest_url, cmd_id)
            t_rebooting = self.wait("update.rebooting of N+2", lambda: self.unit.exited()
                                    or self.town.events("update.rebooting", cmd_id)
                                    or self.town.events("update.failed", cmd_id),
                                    allow_exit=True)
            if self.town.events("update.failed", cmd_id):
                raise SystemExit(f"N+2: {self.town.updates()}")
            self.unit.wait_reset(self.timeout)
            if not self.unit.tryboot_flag or self.unit.power_on() != "A":
                raise SystemExit("N+2 must be tried in slot A")
            self.unit.wait_reset(self.timeout)  # the commit check gives up: a plain reboot
            t_back = time.monotonic()
            if self.unit.tryboot_flag:
                raise SystemExit("the fall-back reboot asked for tryboot")
            slot = self.come_up("back from N+2")
            if slot != "B":
                raise SystemExit("after a failed trial the unit must boot N+1 (slot B)")
            t_said = self.wait("update.rolled_back", lambda: self.town.events(
                "update.rolled_back", cmd_id))
            self.figures["N+2 rebooting to back on N+1 (s)"] = t_back - t_rebooting
            self.figures["back on N+1 to update.rolled_back at the township (s)"] = \
                t_said - t_back
            self.rolled_back("N+2 (crashes at start)", cmd_id)
            self.alarm("back on N+1 after N+2")
        finally:
            bad.server.shutdown()

    def none_lost(self) -> None:
        delivered = self.town.alarms()
        self.say(f"alarms: {self.accepted} accepted by the unit, {len(delivered)} distinct "
                 f"at the township")
        if len(delivered) < self.accepted:
            raise SystemExit("an accepted alarm never reached the township")


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
                   help="skip step 7 (the release whose station crashes)")
    p.add_argument("--power-cuts", nargs="?", const="1,2,3,4", default="", metavar="N,…",
                   help="step 5: cut the power during the download (1), the slot write (2), "
                        "the reboot (3), and before the commit (4); all four, or those named")
    p.add_argument("--rate-bytes-s", type=int, default=1 << 28,
                   help="the unit's download cap (update.rate_bytes_s)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pingan-update-test-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work}", flush=True)
    figures = Figures()

    broker = TownshipBroker(work / "township")
    provision.issue_server(broker.town, ["10.0.2.2", "127.0.0.1"])
    broker.start()
    bundle = provision.add_station(broker.town, "s1", "10.0.2.2",
                                   broker_port=broker.tls_port)
    town = Township(broker)
    signer = make_signer(work / "keys", "release-boot-test")
    ring = keyring(work / "keyring.pem", signer)

    disk = work / "card.img"
    (work / "settings.toml").write_text(settings("virt") + UPDATE_SETTINGS.format(
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
    run = Run(unit, town, figures, args.timeout)
    try:
        if run.come_up("first boot on N") != "A":
            raise SystemExit("a fresh card must boot slot A")
        run.alarm("before the update")
        cuts = {"1": run.cut_during_download, "2": run.cut_during_install,
                "3": run.cut_during_reboot, "4": run.cut_before_commit}
        for n in sorted(filter(None, args.power_cuts.split(","))):
            if n not in cuts:
                raise SystemExit(f"--power-cuts: no cut {n} (1 to 4)")
            cuts[n](built, server)
        run.update(built, server)
        if crashing is not None:
            run.crash(crashing)
        run.say(f"update events: {town.updates()}")
        run.none_lost()
    finally:
        unit.power_cut()
        town.centre.close()
        broker.stop()
        server.let_go()
        server.server.shutdown()
        print("--- summary ---")
        for line in run.report:
            print(line)
        for name, value in figures.items():
            print(f"{name}: {value:.1f}")
    if os.environ.get("KEEP") != "1":
        disk.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
