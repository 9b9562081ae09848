"""The slot state machine and RAUC's custom bootloader back-end (edge/update/tryboot.py)
against a fake FAT boot partition (a directory: this kernel has no vfat module to mount a
real one), with a power cut at each write: the back-end runs as its own process under
strace, which kills it (SIGKILL) on entry to its Nth write, fsync or rename. After every
cut the Pi firmware's choice (edge.update.tryboot.boot) must be a committed, good slot,
and running the step again must finish it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.update import tryboot
from edge.update.tryboot import BootError, BootPartition, Slots
from pingan_firmware import piboot

CUT_SYSCALLS = ("write", "fsync", "rename")
needs_strace = pytest.mark.skipif(shutil.which("strace") is None,
                                  reason="needs strace (bin/setup installs it)")


def backend(boot_dir: Path, *args: str, cut: tuple[str, int] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run the back-end as RAUC does (a program with arguments); `cut`: kill it with
    SIGKILL on entry to the Nth call of that syscall (the call does not happen)."""
    cmd = [sys.executable, "-m", "edge.update.tryboot", "--boot-dir", str(boot_dir), *args]
    if cut is not None:
        name, nth = cut
        cmd = ["strace", "-f", "-o", "/dev/null", "-e", f"trace={','.join(CUT_SYSCALLS)}",
               "-e", f"inject={name}:signal=KILL:when={nth}", *cmd]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def syscalls(boot_dir: Path, *args: str) -> dict[str, int]:
    """How many of each cut syscall one uninterrupted run makes (from a copy of the dir)."""
    trial = boot_dir.parent / (boot_dir.name + "-count")
    shutil.rmtree(trial, ignore_errors=True)
    shutil.copytree(boot_dir, trial)
    log = boot_dir.parent / "strace.log"
    subprocess.run(["strace", "-f", "-o", str(log), "-e", f"trace={','.join(CUT_SYSCALLS)}",
                    sys.executable, "-m", "edge.update.tryboot", "--boot-dir", str(trial),
                    *args], check=True, capture_output=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    counts = dict.fromkeys(CUT_SYSCALLS, 0)
    for line in log.read_text().splitlines():
        name = line.split(maxsplit=1)[1].split("(")[0] if " " in line else ""
        if name in counts:
            counts[name] += 1
    return counts


def test_a_whole_update_then_a_failed_one_through_the_firmware_model(tmp_path: Path) -> None:
    fat = BootPartition(tmp_path)
    assert fat.read() == Slots()  # no slots file: slot A, as stage 40 writes it
    # Install into B (RAUC: mark the target bad, write it, make it primary).
    for args in (("set-state", "B", "bad"), ("set-primary", "B")):
        assert backend(tmp_path, *args).returncode == 0
    assert backend(tmp_path, "get-primary").stdout == "B\n"
    slots = fat.read()
    assert (tryboot.boot(slots, tryboot_flag=True), tryboot.boot(slots, tryboot_flag=False)) \
        == ("B", "A"), "only the one-shot tryboot reaches the new slot"
    # Healthy in B: mark-good makes it the committed slot.
    assert backend(tmp_path, "set-state", "B", "good").returncode == 0
    slots = fat.read()
    assert (slots.committed, slots.tryboot, slots.states) == ("B", "B", {"A": "good", "B": "good"})
    assert backend(tmp_path, "get-state", "B").stdout == "good\n"
    # Next release into A; its trial fails (the watchdog resets without the flag): A is
    # marked bad from B, which stays committed.
    for args in (("set-state", "A", "bad"), ("set-primary", "A")):
        assert backend(tmp_path, *args).returncode == 0
    assert tryboot.boot(fat.read(), tryboot_flag=True) == "A"
    assert tryboot.boot(fat.read(), tryboot_flag=False) == "B"
    assert backend(tmp_path, "set-state", "A", "bad").returncode == 0
    slots = fat.read()
    assert (slots.committed, slots.tryboot, slots.states["A"]) == ("B", "B", "bad")
    # The only good slot cannot be marked bad: nothing would boot.
    refused = backend(tmp_path, "set-state", "B", "bad")
    assert refused.returncode == 1 and "nothing to boot" in refused.stderr
    assert fat.read() == slots
    assert backend(tmp_path, "set-state", "C", "good").returncode == 1


def test_what_the_file_says_and_what_it_refuses(tmp_path: Path) -> None:
    text = tryboot.render(Slots(committed="B", tryboot="A", states={"A": "bad", "B": "good"}))
    assert "[all]\ncmdline=cmdline-b.txt\n[tryboot]\ncmdline=cmdline-a.txt\n[all]\n" in text
    assert tryboot.parse(text) == Slots(committed="B", tryboot="A",
                                        states={"A": "bad", "B": "good"})
    for bad in ("", "[all]\ncmdline=cmdline.txt\n", "[all]\nboot_partition=2\n",
                "# pingan-edge slots: A=bad B=bad\n[all]\ncmdline=cmdline-a.txt\n"):
        with pytest.raises(BootError):
            tryboot.parse(bad)
    # A torn copy of the new file left by a power cut is never read.
    (tmp_path / "pingan-slots.txt.new").write_text(text[:40])
    assert BootPartition(tmp_path).read() == Slots()


CONFIG = "arm_64bit=1\nkernel=vmlinuz\n[pi4]\nmax_framebuffers=2\n[all]\ninclude pingan-slots.txt\n"


@pytest.mark.parametrize("slots", [
    Slots(),
    Slots(committed="A", tryboot="B", states={"A": "good", "B": "bad"}),
    Slots(committed="B", tryboot="B", states={"A": "good", "B": "good"}),
    Slots(committed="B", tryboot="A", states={"A": "bad", "B": "good"}),
])
def test_the_firmware_reading_the_file_boots_the_slot_the_state_machine_says(
        tmp_path: Path, slots: Slots) -> None:
    """config.txt (and tryboot.txt, read instead with the tryboot flag) end by including
    the back-end's file; the firmware's reading of them (pingan_firmware.piboot) names the
    command line of the slot `tryboot.boot` says, and that file boots its root."""
    fat = BootPartition(tmp_path)
    fat.write(slots)
    files = {"config.txt": CONFIG, "tryboot.txt": CONFIG,
             "cmdline-a.txt": "root=PARTUUID=50494e47-02 ro\n",
             "cmdline-b.txt": "root=PARTUUID=50494e47-03 ro\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    def read(name: str) -> str | None:
        path = tmp_path / name
        return path.read_text() if path.exists() else None

    for flag in (False, True):
        boot = piboot.boot_config(read, "pi4b", tryboot=flag)
        slot = tryboot.boot(slots, tryboot_flag=flag)
        assert boot.cmdline_file == tryboot.CMDLINES[slot]
        assert f"50494e47-0{tryboot.PARTITIONS[slot]}" in piboot.read_cmdline(
            read(boot.cmdline_file) or "")
        assert boot.settings["arm_64bit"] == "1" and boot.kernel == "vmlinuz"


STEPS = {
    "commit": [("set-state", "B", "bad"), ("set-primary", "B"), ("set-state", "B", "good")],
    "roll back": [("set-state", "B", "bad"), ("set-primary", "B"), ("set-state", "B", "bad")],
}


@needs_strace
@pytest.mark.parametrize("path", sorted(STEPS))
def test_a_power_cut_at_every_write_ends_on_a_committed_good_slot(
        tmp_path: Path, path: str) -> None:
    steps = STEPS[path]
    expected = [Slots()]
    for args in steps:  # the state after each step, uninterrupted
        state = expected[-1]
        expected.append(tryboot.set_primary(state, args[1]) if args[0] == "set-primary"
                        else tryboot.set_state(state, args[1], args[2]))
    cuts_made = 0
    for i, args in enumerate(steps):
        seed = tmp_path / f"seed{i}"
        seed.mkdir()
        for done in steps[:i]:
            assert backend(seed, *done).returncode == 0
        assert BootPartition(seed).read() == expected[i]
        for name, count in syscalls(seed, *args).items():
            for nth in range(1, count + 1):
                fat = tmp_path / f"cut{i}-{name}{nth}"
                shutil.copytree(seed, fat)
                cut = backend(fat, *args, cut=(name, nth))
                assert cut.returncode == -9 or cut.returncode == 137, (name, nth, cut)
                cuts_made += 1
                # Power back on: no tryboot flag survives a cut.
                slots = BootPartition(fat).read()
                assert slots in (expected[i], expected[i + 1]), (name, nth, slots)
                booted = tryboot.boot(slots, tryboot_flag=False)
                assert booted == slots.committed and slots.states[booted] == "good"
                # The step, run again (RAUC retries, or the unit redoes it): finished.
                assert backend(fat, *args).returncode == 0
                assert BootPartition(fat).read() == expected[i + 1]
    # write, fsync, rename, the directory's fsync and the log line, per changing step.
    assert cuts_made >= 3 * len(steps)
    final = expected[-1]
    assert final.committed == ("B" if path == "commit" else "A")


def test_the_commit_runs_only_on_a_tried_slot_and_a_failed_commit_reboots(
        tmp_path: Path) -> None:
    """pingan-edge-update-commit.service: its ExecCondition (plain shell) says whether this
    boot is a trial, so that a release whose Python cannot start still fails the unit, and
    FailureAction=reboot goes back to the committed slot; on any other boot it is skipped
    (never a reboot loop on a committed slot)."""
    from edge.update.updater import Trial, write_trial

    repo = Path(__file__).resolve().parent.parent
    unit = (repo / "systemd/pingan-edge-update-commit.service").read_text()
    script = repo / "firmware/rootfs/usr/lib/pingan-edge/trial-pending"
    assert "ExecCondition=/usr/lib/pingan-edge/trial-pending\n" in unit
    assert "FailureAction=reboot\n" in unit
    release = tmp_path / "pingan-edge-release"
    update = tmp_path / "update"

    def pending() -> bool:
        done = subprocess.run([str(script), str(update / "trial.json"), str(release)],
                              capture_output=True)
        return done.returncode == 0

    release.write_text("0.2.0\n")
    assert not pending()  # no trial at all
    write_trial(update, Trial(version="0.2.0", running="0.1.0"))
    assert pending()  # booted into the release being tried, no verdict yet
    release.write_text("0.1.0\n")
    assert not pending()  # the old slot, after a crash, a power cut or a fall-back
    release.write_text("0.2.0\n")
    write_trial(update, Trial(version="0.2.0", running="0.1.0", verdict="committed"))
    assert not pending()  # decided: the station reports it at its start
    write_trial(update, Trial(version="0.2.0", running="0.1.0", verdict="rolled_back"))
    assert not pending()
    release.unlink()
    write_trial(update, Trial(version="0.2.0", running="0.1.0"))
    assert not pending()  # no release file: never a trial


class FatSlots:
    """RAUC's part in the commit, straight on the fake FAT: mark-good and mark-bad of the
    slot that booted (or the other) through the back-end's state machine."""

    def __init__(self, fat: BootPartition, booted: str) -> None:
        self.fat, self.booted = fat, booted

    def install(self, bundle: Path) -> None:
        raise AssertionError("no install here")

    def mark_good(self) -> None:
        self.fat.write(tryboot.set_state(self.fat.read(), self.booted, "good"))

    def mark_bad(self, which: str) -> None:
        slots = self.fat.read()
        slot = self.booted if which == "booted" else slots.other(self.booted)
        self.fat.write(tryboot.set_state(slots, slot, "bad"))


@pytest.mark.parametrize("healthy", [True, False], ids=["committed", "rolled_back"])
def test_a_trials_outcome_is_one_event_even_if_a_power_cut_brings_its_record_back(
        tmp_path: Path, healthy: bool) -> None:
    """The outcome is reported; then a power cut undoes the removal of the trial record
    (or the station could not be told): the next start reports it again, under the
    same event id, so the township keeps one `update.committed` (or `rolled_back`)."""
    from conftest import wait_until

    from edge.config import StationSection, UpdateSection
    from edge.contract.events import decode_event, new_event_id
    from edge.health import Health
    from edge.store.outbox import Outbox
    from edge.store.recorder import Recorder
    from edge.update import commit
    from edge.update.updater import TRIAL, SettleRequest, Trial, Updater, write_trial

    fat = BootPartition(tmp_path / "fat")
    fat.directory.mkdir()
    fat.write(tryboot.set_primary(tryboot.set_state(Slots(), "B", "bad"), "B"))
    data = tmp_path / "data"
    record = data / "update" / TRIAL
    trial_id = new_event_id()
    write_trial(data / "update", Trial(version="0.2.0", running="0.1.0", id=trial_id,
                                       cmd_id="up-1"))
    box = Outbox(data / "outbox.db")
    box.start()

    def boot(slot: str, release: str) -> Updater:
        updater = Updater(UpdateSection(), data, Recorder(StationSection(
            id="v001", township="t01"), box, Health()), box, busy=lambda: None,
            installer=FatSlots(fat, slot), running=release)
        updater.start()
        wait_until(lambda: updater.status()["update"]["phase"] != "idle"
                   or not record.exists(), 10, "the updater's start")
        return updater

    def outcomes() -> list[tuple[str, str]]:
        found = [decode_event(s.body) for s in box.pending({}, 100)]
        return [(type(e).__struct_config__.tag, e.id) for e in found  # type: ignore[misc]
                if type(e).__struct_config__.tag in ("update.committed",
                                                     "update.rolled_back")]

    trial_slot = boot("B", "0.2.0")  # the tryboot into the new release
    before_cut: list[bytes] = []

    def settle(checks: dict[str, bool]) -> bool:
        before_cut.append(record.read_bytes())  # what a power cut may leave on the card
        return bool(trial_slot.settle(SettleRequest(checks=checks))["settled"])

    done, _ = commit.run(data / "update", running="0.2.0", installer=FatSlots(fat, "B"),
                         ask=lambda: {"connected": healthy, "client_cert": True,
                                      "trial_event_delivered": healthy},
                         settle=settle, rows=list, health_s=0.2, poll_s=0.05,
                         fallback_command=["true"])
    trial_slot.close()
    kind = "update.committed" if healthy else "update.rolled_back"
    assert done == kind.split(".")[1]
    slot = fat.read().committed
    assert slot == ("B" if healthy else "A")
    if healthy:
        assert outcomes() == [(kind, trial_id)] and not record.exists()
        record.write_bytes(before_cut[0])  # the removal never reached the card
    else:
        assert outcomes() == [] and record.exists()  # the old slot reports it
    for _ in range(2):  # the next start, and once more after a cut that undid the removal
        kept = record.read_bytes()
        again = boot(slot, "0.2.0" if healthy else "0.1.0")
        wait_until(lambda: not record.exists(), 10, "the trial record removed")
        again.close()
        assert outcomes() == [(kind, trial_id)]
        record.write_bytes(kept)
    box.close()


def test_a_trial_record_that_cannot_be_read_is_kept_and_a_damaged_one_removed(
        tmp_path: Path) -> None:
    """Unreadable (here a directory where the file should be; on the unit, root's record
    with a mode the station cannot read) is not damage: removing it loses the verdict."""
    from edge.update.updater import TRIAL, Trial, read_trial, write_trial

    (tmp_path / TRIAL).mkdir()
    assert read_trial(tmp_path) is None
    assert (tmp_path / TRIAL).is_dir()
    (tmp_path / TRIAL).rmdir()
    write_trial(tmp_path, Trial(version="0.2.0", running="0.1.0"))
    assert read_trial(tmp_path) == Trial(version="0.2.0", running="0.1.0")
    (tmp_path / TRIAL).write_text('{"version": ')
    assert read_trial(tmp_path) is None
    assert not (tmp_path / TRIAL).exists()
