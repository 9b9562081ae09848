"""RAUC's custom bootloader back-end for the Raspberry Pi: the root slot chosen by the
firmware's boot configuration on the one FAT partition, a new slot tried once with the
firmware's `tryboot` flag.

RAUC runs it as `bootloader-custom-backend` (system.conf `[handlers]`):

    pingan-edge-bootloader get-primary               → the bootname booted next
    pingan-edge-bootloader set-primary A|B           → try that slot on the next tryboot
    pingan-edge-bootloader get-state A|B             → good | bad
    pingan-edge-bootloader set-state A|B good|bad    → mark-good commits a tried slot

The Pi firmware has no boot counter. What it has: `reboot '0 tryboot'` sets a flag that
lives through one reset only; with it the firmware loads `tryboot.txt` instead of
`config.txt`, and the `[tryboot]` conditional section applies. A crash, a hang (the
watchdog resets without the flag) or a power cut clears the flag, and the next boot reads
`config.txt` without `[tryboot]`: the committed slot. So `[all]` always names a good
slot, and only `mark-good` on the tried slot changes it.

Not `autoboot.txt`: its `boot_partition` must name a FAT partition holding the firmware,
and this card has one FAT partition and two ext4 root slots (a Pi given an ext4
`boot_partition` does not boot at all). What differs between the slots is the kernel
command line's `root=`, so each slot has its own command line file (stage 40 writes
`cmdline-a.txt` and `cmdline-b.txt`), and `config.txt` and `tryboot.txt` both end by
including this back-end's one file:

    # pingan-edge slots: A=good B=bad
    [all]
    cmdline=cmdline-a.txt
    [tryboot]
    cmdline=cmdline-b.txt
    [all]

Everything this back-end knows is in that file: the command line of each section, and
the slots' good/bad states in a comment line (the firmware skips `#` lines). It is never
edited in place: a whole new file is written beside it, flushed, and renamed over it, and
the directory flushed. A power cut before the rename leaves the old file, after it the new
one; there is no second file to disagree with (SWUpdate's two `fw_setenv` calls can).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge.logs import JsonFormatter

SLOTS_FILE = "pingan-slots.txt"
BOOT_DIR = Path("/boot/firmware")
# RAUC's bootnames (system.conf), the MBR partitions they are (firmware/assemble-image) and
# the command line file that boots each (root=PARTUUID=50494e47-0N; stage 40 writes them).
PARTITIONS = {"A": 2, "B": 3}
CMDLINES = {"A": "cmdline-a.txt", "B": "cmdline-b.txt"}
BY_CMDLINE = {file: name for name, file in CMDLINES.items()}
STATES = ("good", "bad")
_SLOTS_LINE = "# pingan-edge slots:"


def log_line(level: str, event: str, **fields: object) -> None:
    """One JSON log line on stderr, written now: RAUC runs this for a moment, and a line
    queued for a writer thread could be lost with the process."""
    record = logging.LogRecord("edge.update.tryboot", getattr(logging, level.upper()), "", 0,
                               event, None, None)
    record.fields = fields
    sys.stderr.write(JsonFormatter().format(record) + "\n")
    sys.stderr.flush()


class BootError(Exception):
    """The boot configuration cannot be read or the change would leave no good slot."""


@dataclass(frozen=True)
class Slots:
    """The boot partition's state: the committed slot, the slot a tryboot boots, and which
    slots are good."""

    committed: str = "A"
    tryboot: str = "A"
    states: dict[str, str] = field(default_factory=lambda: {"A": "good", "B": "bad"})

    @property
    def primary(self) -> str:
        """What boots next: the tried slot while a trial is pending (RAUC's view: the
        install made it primary), else the committed one."""
        return self.tryboot

    @property
    def trial_pending(self) -> bool:
        return self.tryboot != self.committed

    def other(self, name: str) -> str:
        return "B" if name == "A" else "A"

    def check(self) -> None:
        if self.states.get(self.committed) != "good":
            raise BootError(f"the committed slot {self.committed} is not good: {self.states}")


def _slot(name: str) -> str:
    if name not in PARTITIONS:
        raise BootError(f"unknown slot {name!r}; the slots are {', '.join(PARTITIONS)}")
    return name


def parse(text: str) -> Slots:
    """Read the slots file. Sections and keys as the Pi firmware reads them; the states
    from our comment line (absent: the committed slot good, the other bad)."""
    section = ""
    files: dict[str, str] = {}
    states: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(_SLOTS_LINE):
            for item in line[len(_SLOTS_LINE):].split():
                name, _, state = item.partition("=")
                if name in PARTITIONS and state in STATES:
                    states[name] = state
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        if key.strip() == "cmdline" and section in ("all", "tryboot"):
            if value.strip() not in BY_CMDLINE:
                raise BootError(f"{SLOTS_FILE}: cmdline={value!r} is no root slot's "
                                f"({', '.join(sorted(BY_CMDLINE))})")
            files[section] = value.strip()
    if "all" not in files:
        raise BootError(f"{SLOTS_FILE}: no [all] cmdline")
    committed = BY_CMDLINE[files["all"]]
    tryboot = BY_CMDLINE[files.get("tryboot", files["all"])]
    full = {committed: "good", Slots().other(committed): "bad"} | states
    slots = Slots(committed=committed, tryboot=tryboot, states=full)
    slots.check()
    return slots


def render(slots: Slots) -> str:
    slots.check()
    states = " ".join(f"{name}={slots.states[name]}" for name in sorted(PARTITIONS))
    return ("# Written by pingan-edge-bootloader (RAUC's custom back-end), replaced whole;\n"
            "# included at the end of config.txt and of tryboot.txt. [all]: the committed\n"
            "# slot; [tryboot]: the slot booted once after reboot '0 tryboot'.\n"
            f"{_SLOTS_LINE} {states}\n"
            f"[all]\ncmdline={CMDLINES[slots.committed]}\n"
            f"[tryboot]\ncmdline={CMDLINES[slots.tryboot]}\n"
            "[all]\n")


# --- the state machine: pure functions of the state -------------------------------------

def set_primary(slots: Slots, name: str) -> Slots:
    """After an install: the next tryboot boots `name`; [all] is untouched, so any boot
    without the flag still comes up on the committed slot."""
    name = _slot(name)
    return replace(slots, tryboot=name)


def set_state(slots: Slots, name: str, state: str) -> Slots:
    name = _slot(name)
    if state not in STATES:
        raise BootError(f"state {state!r}: give good or bad")
    states = dict(slots.states) | {name: state}
    if state == "good":
        # mark-good on the tried slot: the trial succeeded, the boot becomes permanent.
        committed = name if slots.tryboot == name else slots.committed
        return Slots(committed=committed, tryboot=committed if committed == name
                     else slots.tryboot, states=states)
    tryboot = slots.committed if slots.tryboot == name else slots.tryboot
    committed = slots.committed
    if committed == name:
        other = slots.other(name)
        if states.get(other) != "good":
            raise BootError(f"refusing to mark {name} bad: it is the committed slot and "
                            f"{other} is not good; the unit would have nothing to boot")
        committed = other
        tryboot = other
    return Slots(committed=committed, tryboot=tryboot, states=states)


def boot(slots: Slots, *, tryboot_flag: bool) -> str:
    """What the Pi firmware boots: [tryboot] with the flag, [all] without (tests use it to
    check every power cut ends somewhere good; pingan_firmware.piboot reads the real files
    as the firmware does, for the QEMU boot test)."""
    return slots.tryboot if tryboot_flag else slots.committed


# --- the FAT partition ------------------------------------------------------------------

class BootPartition:
    """The slots file in the FAT partition's directory (mounted read-only on a unit: made
    writable for the one replacement, then read-only again)."""

    def __init__(self, directory: Path = BOOT_DIR) -> None:
        self.directory = directory
        self.path = directory / SLOTS_FILE

    def read(self) -> Slots:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return Slots()  # no file: slot A, nothing tried yet (stage 40 writes that)
        except (UnicodeDecodeError, OSError) as exc:
            raise BootError(f"{self.path}: cannot be read: {exc}") from exc
        return parse(text)

    def write(self, slots: Slots) -> None:
        data = render(slots).encode("ascii")
        tmp = self.directory / (SLOTS_FILE + ".new")
        with self._writable():
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)

    @contextmanager
    def _writable(self) -> Iterator[None]:
        if not os.statvfs(self.directory).f_flag & os.ST_RDONLY:
            yield
            return
        subprocess.run(["mount", "-o", "remount,rw", str(self.directory)], check=True)
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,ro", str(self.directory)], check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pingan-edge-bootloader", description=__doc__.split(
        "\n\n")[0] if __doc__ else None)
    p.add_argument("--boot-dir", type=Path,
                   default=Path(os.environ.get("PINGAN_BOOT_DIR", str(BOOT_DIR))),
                   help=f"the FAT boot partition (default $PINGAN_BOOT_DIR, else {BOOT_DIR})")
    p.add_argument("op", choices=["get-primary", "set-primary", "get-state", "set-state",
                                  "show"])
    p.add_argument("slot", nargs="?")
    p.add_argument("state", nargs="?")
    args = p.parse_args(argv)
    part = BootPartition(args.boot_dir)
    try:
        slots = part.read()
        if args.op == "get-primary":
            print(slots.primary)
        elif args.op == "get-state":
            print(slots.states[_slot(args.slot or "")])
        elif args.op == "show":
            print(render(slots), end="")
        else:
            new = (set_primary(slots, args.slot or "") if args.op == "set-primary"
                   else set_state(slots, args.slot or "", args.state or ""))
            if new != slots:
                part.write(new)
            log_line("info", "update.boot_changed", op=args.op, slot=args.slot,
                     state=args.state, committed=new.committed, tryboot=new.tryboot,
                     states=new.states)
    except (BootError, OSError, subprocess.CalledProcessError) as exc:
        log_line("error", "update.boot_failed", op=args.op, slot=args.slot, error=str(exc),
                 action="the committed slot is unchanged; check the boot partition "
                        f"({args.boot_dir}) is mounted and its {SLOTS_FILE} readable")
        print(f"pingan-edge-bootloader: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
