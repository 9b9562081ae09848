"""Boot the built image under QEMU and check it becomes a working station (firmware/boot-test).

    firmware/boot-test [IMAGE] --machine virt|raspi3b [--alarms N] [--idle-s S] ...

1. A township on this machine: CA (its broker certificate names 10.0.2.2, the host as
   QEMU's user network shows it), the shipped mosquitto config, a station bundle.
2. A copy of the image, grown to a 4 GiB "card" (a power of two, as QEMU's SD card needs),
   written with firmware/flash: the bundle, local settings (the real pin factory, lgpio,
   on the machine's GPIO chip; no sound card) and a technician password.
3. QEMU, with qtest beside TCG (firmware/pingan_firmware/emulator.py) as the finger on the
   GPIO lines and the eye on the LED:
   - `virt`: kernel and initrd from the card's boot partition, its cmdline.txt with the
     virt machine's serial console; the PL061 GPIO chip (8 lines: panic 4, broadcast 5,
     LED 6), virtio disk and network, an i6300esb watchdog.
   - `raspi3b`: the Pi 3 model, booted as the Pi firmware would from config.txt and
     cmdline.txt (kernel, initramfs, the board's device tree), the card as an SD card,
     the mini UART (ttyS1) as console, USB networking (usb-net on the dwc2 controller).
     QEMU 7.2's BCM2835 GPIO has no input lines and raises no edges, but GPSET/GPCLR set
     an input line's level as the kernel reads it: the finger writes there.
4. Waits for the retained state `online: true` at the township; presses the panic button
   and waits for the alarm (from the button, at the township) and the LED line to light.
   `virt`: the line to ground for two seconds, then released. `raspi3b` (no edges): the
   line held to ground while the station is restarted on the console (it takes a button
   held at start as a press), released once the alarm is at the township.
5. Measures the data partition's writes (/sys/block/*/stat) idle and per alarm (each
   alarm pressed on the GPIO line; `virt`, whose presses need no restart; then ext4's
   300 s commit waited for), the idle rate taken off when the idle window was at least
   that long; prints who wrote in the alarms' window (each process's write_bytes, ext4's
   journal).
6. Runs `pingan-edge selftest` on the console, answering it as a technician would: the
   LED row from the LED line's level, the button rows by pressing the lines (the selftest
   reads their levels, so this works on both machines); checks every row of its event at
   the township against the machine's expected rows.

Prints the figures as they are measured. The console log is kept in the work directory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge import __version__
from pingan_centre.broker import provision
from pingan_firmware import card, piboot
from pingan_firmware.emulator import GpioLines, Qmp, Qtest, bcm2835_gpio, pl061
from pingan_sim.township import CENTRE, Client, TownshipBroker
from pingan_sim.update_rig import keyring, make_signer

HERE = Path(__file__).resolve().parent

PASSWORD = "boot-test-only"
CHECK = """echo ROOT $(findmnt -no OPTIONS /)
echo FAT-IDENTITY $(ls -A /boot/firmware/pingan-edge/)
echo KEY $(stat -c '%a %U' /etc/pingan-edge/tls/station.key)
wd=/sys/class/watchdog/watchdog0
echo WATCHDOG $(cat $wd/identity $wd/state $wd/timeout 2>/dev/null || echo none)
echo UNITS $(systemctl is-active pingan-edge pingan-firstboot pingan-warnlog etc-shadow.mount)
echo DATA $(df -h --output=size /data | tail -1)
for p in /proc/[0-9]*; do
  w=$(awk '/^write_bytes/ {print $2}' $p/io 2>/dev/null)
  [ "${w:-0}" -gt 0 ] && echo "WRITER $w $(cat $p/comm)"
done | sort -k2 -n | tail -6
echo END-CHECK
"""
# Who wrote while the alarms were pressed: each process's write_bytes (the page-cache bytes
# it dirtied; what jbd2 writes is not in any process's count) and the data partition's
# ext4 journal counters.
WRITERS = """for p in /proc/[0-9]*; do
  w=$(awk '/^write_bytes/ {print $2}' $p/io 2>/dev/null)
  [ "${w:-0}" -gt 0 ] && echo "WRITER-AT ${p#/proc/} $w $(cat $p/comm)"
done
echo JBD2 $(tr '\\n' ' ' < /proc/fs/jbd2/DEV-8/info)
echo END-WRITERS
"""
MACHINES = ("virt", "raspi3b")
# The station's pins on each machine's GPIO chip: QEMU virt's PL061 has lines 0-7 (line 3
# is QEMU's power button); the Pi's are the unit's own (station.toml's defaults).
PINS = {"virt": {"panic": 4, "broadcast": 5, "alarm_led": 6, "amp_relay": 7, "modem_power": 2},
        "raspi3b": {"panic": 17, "broadcast": 27, "alarm_led": 22, "amp_relay": 23,
                    "modem_power": 24}}
# The data partition as each machine's kernel names it.
DATA_STAT = {"virt": "/sys/block/vda/vda4/stat",
             "raspi3b": "/sys/block/mmcblk0/mmcblk0p4/stat"}
# How long the finger holds a button (the panic button needs 0.3 s). Under a loaded
# host the emulated CPUs run late, and a second-long press was seen to raise no alarm:
# the edge reached the station after the release. Two seconds, then a pause, as a person.
HOLD_S = 2.0
PAUSE_S = 3.0
# The data partition's ext4 commit interval (fstab's commit=300) and block size (mkfs makes
# 1 KiB blocks for a file system of 128 MiB, firmware/assemble-image; resize2fs keeps them).
COMMIT_S = 300
DATA_BLOCK = 1024


def settings(machine: str) -> str:
    """The card's settings.toml: the real pin factory on the machine's chip; no sound card
    (neither machine has one), no camera, no modem (both off by default)."""
    pins = "".join(f"{name} = {line}\n" for name, line in PINS[machine].items())
    return f'[pins]\nfactory = "lgpio"\n{pins}\n[audio]\nenabled = false\n'


# `pingan-edge selftest` on the emulated unit, row by row: what QEMU emulates passes, what
# it has not got is "not fitted". The clock passes only if the host lets timesyncd reach an
# NTP server (QEMU's user network has none of its own), so it is reported, not asserted.
SELFTEST_COMMON = {
    "loudspeaker": "not_fitted", "microphone": "not_fitted", "camera": "not_fitted",
    "broker": "pass", "certificate": "pass", "disk": "pass", "power": "not_fitted",
    "modem": "not_fitted",
}
SELFTEST_EXPECTED = {
    "virt": {"alarm_led": "pass", "panic_button": "pass", "broadcast_button": "pass",
             **SELFTEST_COMMON},
    # The LED is seen on the line; the buttons are pressed through GPSET/GPCLR (held
    # released from power-on: QEMU models no pull-up), after a release, as on a unit.
    "raspi3b": {"alarm_led": "pass", "panic_button": "pass", "broadcast_button": "pass",
                **SELFTEST_COMMON},
}


class Figures(dict[str, float]):
    """Printed as each is measured, so a later failure keeps them."""

    def __setitem__(self, name: str, value: float) -> None:
        print(f"FIGURE {name}: {value:.1f}", flush=True)
        super().__setitem__(name, value)


class Console:
    """The unit's serial console: everything it prints goes to a log and a buffer."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc, self.buf, self.lock = proc, b"", threading.Lock()
        self.stamps: list[tuple[int, float]] = []  # (buffer length, when it arrived)
        self.log = log.open("wb")
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            with self.lock:
                self.buf += chunk
                self.stamps.append((len(self.buf), time.monotonic()))
            self.log.write(chunk)
            self.log.flush()

    def wait(self, pattern: bytes, timeout: float, start: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                m = re.search(pattern, self.buf[start:])
                if m:
                    return start + m.end()
            if self.proc.poll() is not None:
                raise SystemExit(f"QEMU exited ({self.proc.returncode}) waiting for {pattern!r}")
            time.sleep(0.2)
        raise SystemExit(f"timed out after {timeout:.0f} s waiting for {pattern!r} on the "
                         "console (see the console log)")

    def seen_at(self, pattern: bytes, start: int = 0) -> float | None:
        """When (time.monotonic()) the first match of `pattern` after `start` arrived."""
        with self.lock:
            m = re.search(pattern, self.buf[start:])
            if m is None:
                return None
            end = start + m.end()
            return next(t for length, t in self.stamps if length >= end)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        for ch in text.encode():  # a slow typist: the emulated UART's FIFO is small
            self.proc.stdin.write(bytes([ch]))
            self.proc.stdin.flush()
            time.sleep(0.01)

    @property
    def mark(self) -> int:
        with self.lock:
            return len(self.buf)


def boot_files(machine: str, disk: Path, work: Path) -> tuple[list[str], str]:
    """QEMU's machine arguments and the kernel command line, from the card's FAT."""
    def extract(name: str) -> Path:
        data = card.fat_read(disk, name)
        if data is None:
            raise SystemExit(f"{name} is not on the card's boot partition")
        (work / name).write_bytes(data)
        return work / name

    def fat_text(name: str) -> str | None:
        data = card.fat_read(disk, name)
        return data.decode() if data is not None else None

    if machine == "virt":
        kernel = extract(next(n for n in card.fat_list(disk, "") if n.startswith("vmlinuz")))
        initrd = extract(next(n for n in card.fat_list(disk, "")
                              if n.startswith("initrd.img")))
        # The command line the firmware would take (the slot file's [all]: slot A as
        # flashed); the kernel and initrd are the same for every slot.
        name = piboot.boot_config(fat_text, "pi4b").cmdline_file
        cmdline = (fat_text(name) or "").split()
        cmdline = [w for w in cmdline if not w.startswith("console=") and w != "quiet"]
        cmdline += ["console=ttyAMA0,115200"]
        return (["-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-kernel", str(kernel),
                 "-initrd", str(initrd), "-drive", f"if=none,file={disk},format=raw,id=hd",
                 "-device", "virtio-blk-device,drive=hd", "-netdev", "user,id=net0",
                 "-device", "virtio-net-device,netdev=net0",
                 # A hardware watchdog for systemd's RuntimeWatchdogSec= (the Pi has
                 # bcm2835_wdt); if it fires, QEMU resets, and -no-reboot ends the test.
                 "-device", "i6300esb", "-serial", "stdio"], " ".join(cmdline))
    # The Pi firmware's reading of the card: config.txt names the kernel and initramfs,
    # the board picks its device tree, cmdline.txt is the command line (its console is
    # the mini UART, ttyS1: QEMU's second serial port).
    boot = piboot.boot_config(fat_text, "pi3b")  # with what config.txt includes
    if boot.initramfs is None:
        raise SystemExit("config.txt names no initramfs")
    cmdline = piboot.read_cmdline((card.fat_read(disk, boot.cmdline_file) or b"").decode())
    # QEMU 7.2's BCM2835 watchdog (bcm2835_powermgt) resets the machine the moment it is
    # armed, with no countdown: systemd's RuntimeWatchdogSec= would end the boot at once.
    cmdline = " ".join([*(w for w in cmdline.split() if w != "quiet"),
                        "modprobe.blacklist=bcm2835_wdt"])
    print(f"config.txt: kernel {boot.kernel}, initramfs {boot.initramfs}, dtb {boot.dtb}; "
          f"{boot.cmdline_file}: {cmdline}", flush=True)
    return (["-M", "raspi3b", "-kernel", str(extract(boot.kernel)),
             "-initrd", str(extract(boot.initramfs)), "-dtb", str(extract(boot.dtb)),
             "-drive", f"if=sd,file={disk},format=raw",
             "-netdev", "user,id=net0", "-device", "usb-net,netdev=net0",
             "-serial", "null", "-serial", "stdio"], cmdline)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", nargs="?", type=Path,
                   default=HERE / "out" / f"pingan-edge-{__version__}-arm64.img")
    p.add_argument("--machine", choices=MACHINES, default="virt")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=1800, help="seconds for the whole boot")
    p.add_argument("--memory", default="1024")
    p.add_argument("--idle-s", type=float, default=300,
                   help="how long to watch the data partition's writes while idle")
    p.add_argument("--settle-s", type=float, default=120,
                   help="wait this long after the first press before measuring idle writes "
                   "(boot-time writes: journal flush, first clock sync)")
    p.add_argument("--alarms", type=int, default=5,
                   help="alarms pressed on the panic line for the per-alarm figure "
                   "(virt; 0: none)")
    args = p.parse_args()
    machine = args.machine
    work = args.work or Path(tempfile.mkdtemp(prefix="pingan-boot-test-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {work}", flush=True)

    township = TownshipBroker(work / "township")
    provision.issue_server(township.town, ["10.0.2.2", "127.0.0.1"])
    township.start()
    bundle = provision.add_station(township.town, "s1", "10.0.2.2",
                                   broker_port=township.tls_port)
    centre = Client("centre.boot-test")
    assert centre.connect(township.plain_port, CENTRE, township.centre_password)
    centre.client.subscribe("pingan/v1/t01/s1/#", qos=1)

    disk = work / "card.img"
    (work / "settings.toml").write_text(settings(machine))
    (work / "password").write_text(PASSWORD + "\n")
    # The release key this card trusts (a throwaway one: nothing is offered here).
    ring = keyring(work / "keyring.pem", make_signer(work / "keys", "boot-test-release"))
    t0 = time.monotonic()
    subprocess.run([str(HERE / "flash"), str(args.image), str(disk), "--bundle", str(bundle),
                    "--settings", str(work / "settings.toml"), "--serial", "BOOT-TEST",
                    "--technician-password-file", str(work / "password"),
                    "--keyring", str(ring)], check=True)
    print(f"flash: {time.monotonic() - t0:.1f} s", flush=True)
    # A 4 GiB card (first boot grows the data partition); QEMU's SD card must be a power
    # of two, and this is the copy, never the image.
    os.truncate(disk, 4 * 1024**3)

    machine_args, cmdline = boot_files(machine, disk, work)
    qtest_sock, qmp_sock = work / "qtest.sock", work / "qmp.sock"
    for sock in (qtest_sock, qmp_sock):
        sock.unlink(missing_ok=True)
    memory = "1024" if machine == "raspi3b" else args.memory  # the Pi 3 has 1 GiB
    qemu = ["qemu-system-aarch64", *machine_args, "-m", memory, "-append", cmdline,
            "-accel", "tcg", "-qtest", f"unix:{qtest_sock},server=on,wait=off",
            "-qtest-log", "/dev/null", "-qmp", f"unix:{qmp_sock},server=on,wait=off",
            "-display", "none", "-monitor", "none", "-no-reboot"]
    print(" ".join(qemu), flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(qemu, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    console = Console(proc, work / "console.log")
    figures = Figures()
    pins = PINS[machine]
    qtest, qmp = Qtest(qtest_sock), Qmp(qmp_sock)
    lines: GpioLines = pl061(qtest, qmp) if machine == "virt" else bcm2835_gpio(qtest)
    # The buttons' pull-ups (neither model has them): released from power-on.
    lines.drive(pins["panic"], True)
    lines.drive(pins["broadcast"], True)

    def press(name: str) -> None:
        """A finger on the button: the line to ground for HOLD_S, then released."""
        lines.drive(pins[name], False)
        time.sleep(HOLD_S)
        lines.drive(pins[name], True)

    def led() -> bool:
        return lines.level(pins["alarm_led"])

    def alarms_since(before: int) -> int:
        """Panic alarms from the button (the GPIO line, not `pingan-edge press`)."""
        found = 0
        for _, body in centre.received("/events")[before:]:
            msg = json.loads(body)
            found += (msg.get("type") == "alarm.panic"
                      and msg["payload"].get("source") == "button")
        return found

    def alarm_and_led(begin: Callable[[], None], label: str, timeout_s: float = 300) -> None:
        """`begin` presses (returning before the press ends); waits for the alarm at the
        township, and watches the LED line go from off to steady on."""
        led_before = led()
        print(f"LED line GPIO{pins['alarm_led']} before the press: "
              f"{'on' if led_before else 'off'}", flush=True)
        before = len(centre.received("/events"))
        pressed = time.monotonic()
        seen: list[tuple[float, bool]] = [(0.0, led_before)]
        begin()
        reached = None
        while reached is None or time.monotonic() - pressed < reached + 5:
            if reached is None and alarms_since(before):
                reached = time.monotonic() - pressed
                figures[f"{label} to the township (s)"] = reached
            if (level := led()) != seen[-1][1]:
                seen.append((time.monotonic() - pressed, level))
            if time.monotonic() - pressed > timeout_s:
                raise SystemExit(f"{label}: the alarm never reached the township")
            time.sleep(0.05)
        print("LED line after the press: " + ", ".join(
            f"{t:.2f} s {'on' if on else 'off'}" for t, on in seen), flush=True)
        if led_before or not any(on for _, on in seen):
            raise SystemExit("the LED line did not light after the press")
        figures[f"{label} to the LED line on (s)"] = next(t for t, on in seen if on)
        if not led():
            raise SystemExit("the LED line is not steady on with the alarm delivered")

    try:
        def online() -> bool:
            for topic, body in centre.received("/state"):
                with_state = json.loads(body)
                if topic.endswith("/state") and with_state.get("online") is True:
                    return True
            return False

        at = console.wait(rb"pingan-s1 login:", args.timeout)
        figures["power-on to login prompt (s)"] = time.monotonic() - start
        deadline = time.monotonic() + args.timeout
        while not online():
            if time.monotonic() > deadline:
                raise SystemExit("the station never reported online: true (console.log)")
            if proc.poll() is not None:
                raise SystemExit("QEMU exited")
            time.sleep(0.5)
        figures["power-on to online:true (s)"] = time.monotonic() - start
        if lines.edges:
            finger = threading.Thread(target=press, args=("panic",), name="finger")
            alarm_and_led(finger.start, "press on the GPIO line")
            finger.join()
        console.send("technician\n")
        at = console.wait(rb"Password:", 120, at)
        console.send(PASSWORD + "\n")
        at = console.wait(rb"technician@pingan-s1:~\$ ", 300, at)
        if not lines.edges:
            # The guest sees no edge: the station takes the panic button held as it
            # starts (edge/unit/buttons.py), read from the line's level.
            def hold_and_restart() -> None:
                lines.drive(pins["panic"], False)
                console.send(f"echo {PASSWORD} | sudo -S -p '' systemctl restart "
                             "pingan-edge; echo RESTARTED $?\n")

            # A restart under TCG: the station's stop and its Python start-up.
            alarm_and_led(hold_and_restart, "panic line held, station restarted,", 600)
            lines.drive(pins["panic"], True)
            at = console.wait(rb"RESTARTED 0", 300, at)

        def written() -> int:
            """Sectors written to the data partition since boot (/sys/block/.../stat)."""
            nonlocal at
            console.send(f"echo DATA-WRITES $(awk '{{print $7}}' {DATA_STAT[machine]})\n")
            at = console.wait(rb"DATA-WRITES \d+", 60, at)
            with console.lock:
                value = re.findall(rb"DATA-WRITES (\d+)", console.buf)[-1]
            return int(value) * 512

        def writers() -> tuple[dict[tuple[str, str], int], int]:
            """Each process's write_bytes (by pid and name) and the blocks ext4's journal
            logged on the data partition since boot (transactions times their average)."""
            nonlocal at
            script = base64.b64encode(WRITERS.replace(
                "DEV", DATA_STAT[machine].split("/")[-2]).encode()).decode()
            console.send(f"echo {PASSWORD} | sudo -S -p '' sh -c "
                         f"\"$(echo {script} | base64 -d)\"\n")
            end = console.wait(rb"END-WRITERS\r*\n", 120, at)
            with console.lock:
                text = console.buf[at:end].decode(errors="replace")
            at = end
            found = {(pid, comm): int(w) for pid, w, comm in
                     re.findall(r"WRITER-AT (\d+) (\d+) ([^\r\n]*)", text)}
            jbd2 = re.search(r"JBD2 (\d+) transactions.*? (\d+) logged blocks", text)
            return found, int(jbd2[1]) * int(jbd2[2]) if jbd2 else 0

        # Idle: the station connected, nothing happening (ext4 commit=300, journal in RAM).
        # ext4 commits every 300 s, so a shorter window may see none of the idle writes.
        time.sleep(args.settle_s)
        w0, t_idle = written(), time.monotonic()
        time.sleep(args.idle_s)
        w1, t1 = written(), time.monotonic()
        idle_rate = (w1 - w0) / (t1 - t_idle)
        figures["data partition bytes written per hour idle"] = idle_rate * 3600
        if args.idle_s < COMMIT_S:
            print(f"the idle window ({args.idle_s:.0f} s) is shorter than ext4's {COMMIT_S} s "
                  "commit: the idle figure is not the rate, and is not taken off the "
                  "alarms' (use --idle-s 300 or more)", flush=True)
        if args.alarms and not lines.edges:
            print("per-alarm writes: not measured (each press here needs a station "
                  "restart, whose writes would count as the alarm's)", flush=True)
        elif args.alarms:
            procs0, journal0 = writers()
            w1, t1 = written(), time.monotonic()
            seen_events = len(centre.received("/events"))
            for n in range(1, args.alarms + 1):
                time.sleep(PAUSE_S)
                press("panic")
                while alarms_since(seen_events) < n:
                    if time.monotonic() - t1 > 600:
                        raise SystemExit(f"alarm {n} of {args.alarms} never reached the "
                                         "township")
                    time.sleep(0.2)
            # Past ext4's commit interval and the dirty-page expiry (300 s each on the
            # image), so every byte the alarms cause has reached the card.
            time.sleep(COMMIT_S + 10)
            w2, t2 = written(), time.monotonic()
            procs1, journal1 = writers()
            idle = idle_rate * (t2 - t1) if args.idle_s >= COMMIT_S else 0.0
            figures["data partition bytes written per alarm, idle not taken off"] = (
                (w2 - w1) / args.alarms)
            figures["data partition bytes written per alarm (idle rate taken off)"] = max(
                0.0, (w2 - w1) - idle) / args.alarms
            # Which process dirtied what, and ext4's journal, over the same window (not
            # only the data partition: root is read-only, /tmp and /run are RAM).
            deltas = sorted(((w - procs0.get(key, 0), key[1]) for key, w in procs1.items()
                             if w > procs0.get(key, 0)), reverse=True)
            print(f"the alarms' window: {w2 - w1} B to the data partition in "
                  f"{t2 - t1:.0f} s; ext4 journal about {(journal1 - journal0) * DATA_BLOCK} B "
                  f"(its transactions times their average size); dirtied by process: " + (", ".join(
                      f"{comm} {d} B" for d, comm in deltas) or "none"), flush=True)
        # What the technician would look at: a read-only root, the secrets gone from the
        # FAT partition, the units active, and which processes wrote to disk.
        script = base64.b64encode(CHECK.encode()).decode()  # the typed line cannot match
        console.send(f"echo {PASSWORD} | sudo -S -p '' sh -c \"$(echo {script} | base64 -d)\"\n")
        at = console.wait(rb"END-CHECK\r*\n", 300, at)  # the tty sends \r\r\n
        with console.lock:
            watchdog = re.findall(rb"WATCHDOG ([^\r\n]*)", console.buf)[-1].decode()
        print(f"hardware watchdog: {watchdog}", flush=True)
        if machine == "virt" and " active " not in f" {watchdog} ":
            raise SystemExit(f"the hardware watchdog is not armed ({watchdog}): the "
                             "i6300esb module, or RuntimeWatchdogSec= in system.conf.d")
        # The on-site check under systemd: it stops the station, checks, starts it again.
        # Answered as the technician would: the LED row from the LED line's level, the
        # buttons by pressing their lines (where the machine's GPIO can be pressed).
        seen_events = len(centre.received("/events"))
        began = time.monotonic()
        console.send(f"echo {PASSWORD} | sudo -S -p '' -v; sudo pingan-edge selftest "
                     "--timeout 30; echo SELFTEST-EXIT $?\n")
        prompts = {rb"Is the alarm LED lit\? \[y/n\]": "led",
                   rb"press the panic button now": "panic",
                   rb"press the broadcast button now": "broadcast",
                   rb"SELFTEST-EXIT \d+": "end"}
        answered: list[str] = []
        while True:
            found = None
            with console.lock:
                for pattern, what in prompts.items():
                    if (m := re.search(pattern, console.buf[at:])) and (
                            found is None or m.end() < found[0]):
                        found = (m.end(), what)
            if found is None:
                if time.monotonic() - began > 900:
                    raise SystemExit("the selftest never finished")
                time.sleep(0.1)
                continue
            at = at + found[0]
            if found[1] == "end":
                break
            if found[1] == "led":
                lit = led()
                answered.append(f"LED line {'on' if lit else 'off'}")
                console.send("y\n" if lit else "n\n")
            else:
                answered.append(f"pressed {found[1]}")
                press(found[1])
        print("selftest, as the technician: " + "; ".join(answered), flush=True)
        figures["selftest on the unit (s)"] = time.monotonic() - began

        def selftest_event() -> dict[str, str] | None:
            for _, body in centre.received("/events")[seen_events:]:
                msg = json.loads(body)
                if msg.get("type") == "selftest":
                    return {r["check"]: r["status"] for r in msg["payload"]["results"]}
            return None

        while (statuses := selftest_event()) is None:
            if time.monotonic() - began > 1200:
                raise SystemExit("the selftest event never reached the township")
            time.sleep(0.5)
        figures["selftest to its event at the township (s)"] = time.monotonic() - began
        print("selftest rows: " + ", ".join(f"{k} {v}" for k, v in statuses.items()),
              flush=True)
        expected = SELFTEST_EXPECTED[machine]
        wrong = {k: (statuses.get(k), v) for k, v in expected.items() if statuses.get(k) != v}
        if wrong or set(statuses) - set(expected) - {"clock"}:
            raise SystemExit(f"selftest rows (got, expected): {wrong}; rows: {statuses}")
        with console.lock:
            code = int(re.findall(rb"SELFTEST-EXIT (\d+)", console.buf)[-1])
        passed = all(v in ("pass", "not_fitted") for v in statuses.values())
        if code != (0 if passed else 1):
            raise SystemExit(f"selftest exited {code} with rows {statuses}")
    finally:
        qtest.close()
        qmp.close()
        proc.kill()
        proc.wait()
        centre.close()
        township.stop()
    for name, value in figures.items():
        print(f"{name}: {value:.1f}")
    log = (work / "console.log").read_text(errors="replace")
    print("--- console tail ---")
    print(log[-2500:])
    if os.environ.get("KEEP") != "1":
        disk.unlink(missing_ok=True)
        for name in work.iterdir():
            if name.name.startswith(("vmlinuz", "initrd.img", "bcm2")):
                name.unlink()
    shutil.rmtree(work / "township", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
