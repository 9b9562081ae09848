"""The station's update part: takes `update.offer` from the township (or a file from
`pingan-edge update apply`), and runs the one update at a time on its own thread, at low
priority, never on the alarm path:

    offered → descriptor signed by a trusted key? a newer version (or a signed rollback)?
    data readable by the release? → the bundle's signature (its tail, through the local
    server of stream.py: capped, resumed) → RAUC's signature check, the version signed →
    verified → `rauc install http://127.0.0.1:…` streams into the other slot what the
    adaptive update needs (downloading %) → installed → wait while an alarm is open or the
    siren sounds (waiting, with why, once) → rebooting (tryboot)

Each step is an `update.*` event through the outbox, so the township sees it even when the
link comes back later. After the reboot `pingan-edge update commit` decides (commit.py);
on the old slot, after a failed trial, this part reports the rollback and why.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from edge import __version__
from edge.config import BACKGROUND_NICE, UpdateSection
from edge.contract import commands, events
from edge.contract.events import Text, text
from edge.contract.release import Release
from edge.link.dispatch import Handlers
from edge.logs import log
from edge.store import schema
from edge.store.outbox import Outbox, Stored
from edge.store.recorder import Recorder
from edge.update import stream, verify
from edge.update.install import Rauc
from edge.update.verify import UpdateRefused

logger = logging.getLogger("edge.update")
TRIAL = "trial.json"
BUSY_POLL_S = 1.0


# Why the reboot waits: an alarm not yet acknowledged by the township, an alarm not yet
# delivered, the siren sounding.
WaitCode = Literal["alarm_open", "alarm_undelivered", "siren"]


class Blocked(msgspec.Struct, frozen=True):
    """Why the unit must not reboot now: a code to count and what a person reads."""

    code: WaitCode
    reason: Text


class Installer(Protocol):
    def install(self, bundle: str, progress: Callable[[int], None] | None = None) -> None: ...

    def mark_good(self) -> None: ...

    def mark_bad(self, which: str) -> None: ...


# Control-socket requests the station registers for `pingan-edge update …`.
class ApplyRequest(msgspec.Struct, tag_field="op", tag="update.apply",
                   forbid_unknown_fields=True):
    path: str
    # The signed descriptor (pingan-edge-V.release.json) if the technician has it.
    descriptor: str | None = None


class UpdateStatusRequest(msgspec.Struct, tag_field="op", tag="update.status",
                          forbid_unknown_fields=True):
    pass


class SettleRequest(msgspec.Struct, tag_field="op", tag="update.settle",
                    forbid_unknown_fields=True):
    """From `pingan-edge update commit`: the trial slot was marked good."""

    checks: dict[str, bool] = {}


@dataclass(frozen=True)
class Job:
    source: Literal["township", "on_site"]
    release: Release | None
    signature: bytes | None
    url: str | None = None
    path: Path | None = None
    cmd_id: str | None = None
    # Numbered when queued: the state names the job it is about, so whoever queued one
    # follows that one and not the end of the one before it.
    number: int = 0


class Trial(msgspec.Struct, kw_only=True):
    """On the data partition between the reboot into the new slot and the verdict: both
    slots read it. `verdict` is set by the new slot before it gives up on itself.
    Unknown fields are ignored: the old slot reads what the new one wrote."""

    version: str
    running: str
    # The id of the one event that reports this trial's outcome (`update.committed` or
    # `update.rolled_back`): a power cut after it was sent but before the record is gone
    # sends it again under the same id, which the township keeps once.
    id: str | None = None
    cmd_id: str | None = None
    source: Literal["township", "on_site"] = "township"
    verdict: Literal["committed", "rolled_back"] | None = None
    code: str | None = None
    reason: Text | None = None
    checks: dict[str, bool] = {}


def running_version(release_file: str) -> str:
    """The release of the slot that booted: its root's release file, else the package's."""
    try:
        found = Path(release_file).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return __version__
    return found or __version__


def read_trial(directory: Path) -> Trial | None:
    try:
        return msgspec.json.decode((directory / TRIAL).read_bytes(), type=Trial)
    except FileNotFoundError:
        return None
    except OSError as exc:  # not damage: kept, for whoever can read it
        log(logger, "error", "update.trial_unreadable", error=str(exc),
            action="check the owner and mode of the trial record (root's 0644, or the "
                   "station's): it is kept")
        return None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log(logger, "error", "update.trial_damaged", error=str(exc),
            action="the trial record is damaged and is removed; the unit stays on the "
                   "slot it booted")
        (directory / TRIAL).unlink(missing_ok=True)
        return None


def write_trial(directory: Path, trial: Trial) -> None:
    """Whole or not at all: a new file, flushed, renamed over the old."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (TRIAL + ".new")
    with tmp.open("wb") as f:
        f.write(msgspec.json.encode(trial))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(directory / TRIAL)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_trial(directory: Path) -> None:
    """The trial is over: its record goes, and stays gone after a power cut."""
    (directory / TRIAL).unlink(missing_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Updater:
    def __init__(self, config: UpdateSection, data_dir: Path, recorder: Recorder,
                 outbox: Outbox, *, busy: Callable[[], Blocked | None],
                 installer: Installer | None = None, running: str | None = None,
                 rebooting: Callable[[], None] | None = None) -> None:
        """`busy` says why the unit must not reboot now, if it must not; `rebooting` is
        called as the unit goes down into a new release (the station's LED shows it)."""
        self.config = config
        self.directory = data_dir / "update"
        self._recorder = recorder
        self._outbox = outbox
        self._busy = busy
        self._rebooting = rebooting
        self._installer: Installer = installer or Rauc()
        self.running = running or running_version(config.release_file)
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="update", daemon=True)
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"phase": "idle", "job": 0}
        self._queued = 0  # the last job number handed out
        self._current = 0  # the job the worker is on
        self._trial_event: str | None = None

    # --- the station's wiring --------------------------------------------------------
    def register(self, handlers: Handlers) -> None:
        handlers.register(commands.UpdateOffer, self.offer)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Not waited for: a download stops at its next chunk and resumes next time; an
        install runs in RAUC's own service and finishes there."""
        self._stop.set()

    # --- requests ---------------------------------------------------------------------
    def offer(self, cmd: commands.UpdateOffer) -> dict[str, Any]:
        """The command worker's handler: queue it and answer at once (the download takes
        hours over 4G); the events tell the rest."""
        self._queue(Job("township", cmd.release(), cmd.signature, url=cmd.url,
                        cmd_id=cmd.id), lambda why: commands.rejected(cmd, "busy", why))
        return {"queued": cmd.version}

    def apply(self, request: ApplyRequest) -> dict[str, Any]:
        """`pingan-edge update apply FILE` on site: the same checks and commit rule."""
        path = Path(request.path)
        release = signature = None
        if request.descriptor:
            doc = json.loads(Path(request.descriptor).read_text(encoding="utf-8"))
            signature = base64.b64decode(doc.pop("signature"))
            doc.pop("file", None)
            release = msgspec.convert(doc, Release)

        def refuse(why: Text) -> Exception:
            return RuntimeError(why.en)

        number = self._queue(Job("on_site", release, signature, path=path), refuse)
        return {"queued": str(path), "job": number}

    def _queue(self, job: Job, refuse: Callable[[Text], Exception]) -> int:
        with self._lock:
            number = self._queued + 1
            try:
                self._jobs.put_nowait(dataclasses.replace(job, number=number))
            except queue.Full:
                raise refuse(text("正在进行另一次更新，请稍后再试",
                                  "another update is under way: offer again later")) from None
            self._queued = number
            return number

    def status(self, _request: UpdateStatusRequest | None = None) -> dict[str, Any]:
        with self._lock:
            state = dict(self._state)
        delivered = None
        if self._trial_event is not None:
            found = self._outbox.lookup(self._trial_event)
            delivered = bool(found and found[1])
        return {"update": state, "running": self.running,
                "trial": msgspec.to_builtins(read_trial(self.directory)),
                "trial_event_delivered": delivered}

    def settle(self, request: SettleRequest) -> dict[str, Any]:
        """The trial slot was marked good (by `pingan-edge update commit`): say so."""
        trial = read_trial(self.directory)
        if trial is None:
            return {"settled": False}
        self._outcome(trial, "update.committed", checks=request.checks or trial.checks)
        self._set(phase="committed", version=trial.version)
        return {"settled": True}

    def _outcome(self, trial: Trial, kind: str, **payload: Any) -> None:
        """Report how the trial ended, once: under the trial's own event id, stored before
        the record goes (a second report after a power cut carries the same id)."""
        if trial.id is None or self._outbox.lookup(trial.id) is None:
            stored = self._event(kind, trial.version, event_id=trial.id,
                                 cmd_id=trial.cmd_id, source=trial.source, **payload)
            with contextlib.suppress(Exception):  # a refused event is logged by the recorder
                stored.result(timeout=10.0)
        remove_trial(self.directory)

    # --- the worker -------------------------------------------------------------------
    def _set(self, **state: Any) -> None:
        with self._lock:
            self._state = {**state, "job": self._current}

    def _event(self, kind: str, version: str, event_id: str | None = None,
               **payload: Any) -> Future[Stored]:
        identity = self._recorder.identity()
        ev: events.Event = events.UPDATE_EVENTS[kind](  # type: ignore[assignment]
            **{**identity, "id": event_id or identity["id"]},
            payload=events.UpdatePayload(version=version, running=self.running, **payload))
        stored = self._recorder.record(ev)
        log(logger, "warning" if kind in ("update.refused", "update.failed",
                                          "update.rolled_back") else "info",
            kind, version=version, **{k: v for k, v in payload.items() if k != "reason"},
            reason=payload["reason"].en if payload.get("reason") else None)
        return stored

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            os.nice(BACKGROUND_NICE)  # Linux: this thread only
        self._after_boot()
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._update(job)
            except stream.Stopped:
                return
            except Exception as exc:  # a bug: one JSON line and the station runs on
                logger.error("update.crashed", exc_info=True, extra={"fields": {
                    "error": repr(exc), "action": "a bug: report this log line"}})
                self._set(phase="failed", code="internal_error")

    def _after_boot(self) -> None:
        """Which side of a trial are we on? The new release: announce the boot (the
        commit needs one event delivered). The old one: the trial failed; say why."""
        trial = read_trial(self.directory)
        if trial is None:
            return
        if self.running == trial.version and trial.verdict is None:
            ev = events.Status(**self._recorder.identity(), payload=events.StatusPayload(
                code="update.trial_boot", level="info",
                message=text(f"已启动新版本 {trial.version}，正在自检",
                             f"booted release {trial.version}: checking before commit"),
                detail={"from": trial.running}))
            self._trial_event = ev.id
            self._recorder.record(ev)
            self._set(phase="trial", version=trial.version)
            return
        if self.running == trial.version and trial.verdict == "committed":
            self._outcome(trial, "update.committed", checks=trial.checks)
            self._set(phase="committed", version=trial.version)
            return
        elif self.running == trial.running:
            code = trial.code or "crashed"
            reason = trial.reason or text(
                f"新版本 {trial.version} 未能在规定时间内启动并自检通过（崩溃、死机或断电），"
                f"已回到 {self.running}",
                f"release {trial.version} did not come up healthy (a crash, a hang or a "
                f"power cut before the commit): back on {self.running}")
            try:
                self._installer.mark_bad("other")
            except UpdateRefused as exc:
                log(logger, "error", "update.mark_bad_failed", error=str(exc),
                    action="the committed slot boots anyway; check `rauc status`")
            self._outcome(trial, "update.rolled_back", code=code, reason=reason,
                          checks=trial.checks)
            self._set(phase="rolled_back", version=trial.version, code=code)
            return
        remove_trial(self.directory)

    def _update(self, job: Job) -> None:
        self._current = job.number
        version = job.release.version if job.release else "?"
        ids: dict[str, Any] = {"cmd_id": job.cmd_id, "source": job.source}
        self._set(phase="checking", version=version)
        try:
            if job.source == "township":
                self._event("update.offered", version, **ids)
            if job.release is not None:
                self._check_offer(job)
            if job.path is not None:
                version = self._install_file(job, ids)
            else:
                self._install_streamed(job, ids)
        except UpdateRefused as exc:
            kind = "update.failed" if exc.code in ("download_failed", "install_failed") \
                else "update.refused"
            self._event(kind, version, code=exc.code, reason=exc.message, **ids)
            self._set(phase=kind.split(".")[1], version=version, code=exc.code)
            return
        self._reboot(Trial(version=version, running=self.running, id=events.new_event_id(),
                           cmd_id=job.cmd_id, source=job.source), ids)

    def _check_offer(self, job: Job) -> None:
        """The descriptor: signed by a trusted key, newer, data readable, not too big."""
        release = job.release
        assert release is not None and job.signature is not None
        verify.check_descriptor(release, job.signature, Path(self.config.keyring))
        verify.check_version(release, self.running)
        readable = schema.DATA_SCHEMA
        if release.min_data_schema > readable:
            raise UpdateRefused("data_schema", text(
                f"版本 {release.version} 需要数据格式 {release.min_data_schema}，本机数据为 "
                f"{readable}：请先安装中间版本",
                f"{release.version} reads data schema {release.min_data_schema} and up; "
                f"this unit's data is at {readable}: install the release in between first"))
        if release.size > self.config.max_bytes:
            raise UpdateRefused("too_large", text(
                f"更新包过大（{release.size} 字节）",
                f"the bundle ({release.size} bytes) is over update.max_bytes"))

    def _check_bundle(self, path: Path, release: Release | None) -> str:
        """RAUC's signature check against the keyring; the version it reads is the one
        signed in the descriptor. Returns the bundle's version."""
        info = verify.check_bundle(path, Path(self.config.keyring))
        if release is None:  # on site, no descriptor: RAUC's manifest it is
            verify.check_version(Release(version=info.version, size=1, sha256="0" * 64,
                                         min_data_schema=1), self.running)
        elif info.version != release.version:
            raise UpdateRefused("bad_version", text(
                f"更新包内的版本 {info.version} 与说明的 {release.version} 不符",
                f"the bundle says {info.version}, the descriptor {release.version}"))
        return info.version

    def _install_file(self, job: Job, ids: dict[str, Any]) -> str:
        """On site: a file on a stick or a laptop, checked whole, then installed."""
        assert job.path is not None
        if job.release is not None:
            verify.check_file(job.path, job.release)
        version = self._check_bundle(job.path, job.release)
        self._event("update.verified", version, **ids)
        self._set(phase="installing", version=version)
        self._installer.install(str(job.path))
        self._event("update.installed", version, **ids)
        return version

    def _install_streamed(self, job: Job, ids: dict[str, Any]) -> None:
        """From the township, through the local server (stream.py): the signature first
        (the bundle's tail, a few KB), then RAUC streams what its adaptive update needs.
        With `update.stream` off (a RAUC that cannot stream, a test rig), the whole file
        is fetched, its sha256 checked against the descriptor, and the file installed."""
        release, c = job.release, self.config
        assert release is not None and job.url is not None
        cache = stream.BundleCache(self.directory / f"{release.sha256}.raucb", release.size)
        marks = {"bytes": -1, "rauc": -1}

        def fetched(_n: int) -> None:
            held = cache.held()
            self._set(phase="downloading", version=release.version, bytes=held,
                      percent=int(held * 100 / release.size))
            if not c.stream and held * 10 // release.size > marks["bytes"]:
                marks["bytes"] = held * 10 // release.size
                self._event("update.downloading", release.version,
                            percent=float(held * 100 // release.size), bytes=held, **ids)

        def installing(percent: int) -> None:
            # Streamed: the share of the install RAUC has done, and the bytes so far.
            if percent // 10 > marks["rauc"]:
                marks["rauc"] = percent // 10
                self._event("update.downloading", release.version,
                            percent=float(min(percent, 100)), bytes=cache.held(), **ids)

        def retry(tries: int, error: str) -> None:
            log(logger, "warning", "update.download_retry", tries=tries, error=error,
                action="resumes by itself; check the link if this repeats for hours")

        proxy = stream.BundleProxy(
            job.url, cache, rate_bytes_s=c.rate_bytes_s, stop=self._stop,
            timeout_s=c.timeout_s, retry_min_s=c.retry_min_s,
            retry_max_s=min(c.retry_max_s, stream.REQUEST_BUDGET_S / 4),
            on_fetched=fetched, on_retry=retry)
        local = proxy.start()
        deadline = time.monotonic() + c.give_up_s
        try:
            if c.stream:
                self._fetch(proxy, max(0, release.size - 8), release.size - 1, deadline)
                signature = int.from_bytes(cache.read(release.size - 8, 8), "big")
                self._fetch(proxy, max(0, release.size - 8 - signature), release.size - 1,
                            deadline)
            else:
                self._fetch(proxy, 0, release.size - 1, deadline)
                verify.check_file(cache.part, release)
            self._check_bundle(cache.part, release)
            self._event("update.verified", release.version, **ids)
            self._set(phase="installing", version=release.version)
            wait = c.retry_min_s
            while True:
                proxy.unavailable = None
                try:
                    self._installer.install(local if c.stream else str(cache.part),
                                            progress=installing if c.stream else None)
                    break
                except UpdateRefused:
                    if proxy.refusal is not None:
                        raise proxy.refusal from None
                    if proxy.unavailable is None or time.monotonic() + wait > deadline:
                        raise
                # The link was down longer than RAUC waits: again, from the blocks kept.
                retry(proxy.tries, f"install stopped: {proxy.unavailable}")
                if self._stop.wait(wait):
                    raise stream.Stopped() from None
                wait = min(wait * 2, c.retry_max_s)
            self._event("update.installed", release.version, **ids)
        except UpdateRefused as exc:
            if exc.code != "download_failed" and proxy.unavailable is None:
                # Refused, or an install that failed for another reason than the link (a
                # block dm-verity refuses, say): nothing kept is trusted to be resumed.
                cache.remove()
            raise
        finally:
            proxy.close()
        cache.remove()

    def _fetch(self, proxy: stream.BundleProxy, start: int, end: int,
               deadline: float) -> None:
        try:
            proxy.ensure(start, end, budget_s=max(1.0, deadline - time.monotonic()))
        except stream.Unavailable as exc:
            raise UpdateRefused("download_failed", text(
                f"下载多次失败，已放弃：{exc}",
                f"the download failed {proxy.tries} times and was given up: {exc}; the "
                f"blocks fetched are kept and the next offer resumes them")) from exc

    def _reboot(self, trial: Trial, ids: dict[str, Any]) -> None:
        """Never while an alarm is open or the siren sounds: say why (`update.waiting`,
        once: not per poll, nor when the reason changes during the wait; a wait ends only
        in the reboot, so a new one comes with the next offer, after a restart), wait,
        then say so (`update.rebooting`), then go. The trial record is written only then:
        a power cut (or a stop) while it waits leaves no trial, so no rollback is
        reported for a release never tried."""
        version = trial.version
        announced = False
        while (why := self._busy()) is not None:
            if not announced:
                # Once per wait, not per poll: the township learns why `installed` is not
                # followed by `rebooting` yet (the reboot follows once the alarm is
                # acknowledged and quiet). Handed to the outbox, not waited for: nothing
                # on this thread holds up the alarm path.
                announced = True
                self._event("update.waiting", version, code=why.code, reason=why.reason,
                            **ids)
            self._set(phase="waiting", version=version, **msgspec.to_builtins(why))
            if self._stop.wait(BUSY_POLL_S):
                return  # the station stops: offered again, the bundle is not fetched again
        write_trial(self.directory, trial)
        if self._rebooting is not None:
            self._rebooting()
        self._event("update.rebooting", version, **ids)
        self._set(phase="rebooting", version=version)
        self._outbox.flush(timeout=5.0)
        log(logger, "warning", "update.reboot", version=version,
            command=self.config.reboot_command,
            action="the unit boots the new slot once; it commits only when healthy")
        subprocess.run(self.config.reboot_command, check=False)
