"""The station's data directory is its own user's alone (issue 17): the outbox, the SMS log,
the loudspeaker's state and clips, all 0600 (directories 0700) from the start, whatever
umask the station was started with (022 here, the usual one)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import Daemon, Township, station_toml, wait_until

from edge.audio.store import AudioStore
from edge.contract.events import AlarmPanic, PanicPayload, stamp
from edge.modem.fallback import SmsLog
from edge.store.outbox import Outbox
from edge.unit.control import request
from pingan_sim.localbroker import Mosquitto

AUDIO = {"enabled": True, "output": "null", "sample_rate": 16000, "amp_warm_up_s": 0.0,
         "siren_s": 1.0}


def modes(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `root`, relative path -> (kind, permission bits)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = ("dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                else "socket" if stat.S_ISSOCK(st.st_mode) else "other")
        out[str(path.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
    return out


def assert_private(root: Path) -> dict[str, tuple[str, int]]:
    found = modes(root)
    wrong = {name: (kind, oct(mode)) for name, (kind, mode) in found.items()
             if (kind, mode) not in {("file", 0o600), ("dir", 0o700), ("socket", 0o660)}}
    assert not wrong, f"not the station's alone: {wrong}"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    return found


def clip_wav() -> bytes:
    t = np.arange(1600) / 16000
    buf = io.BytesIO()
    soundfile.write(buf, (0.5 * np.sin(2 * np.pi * 550 * t)).astype(np.float32), 16000,
                    format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_a_running_station_keeps_its_data_directory_to_itself(
        broker: Mosquitto, tmp_path: Path, township_factory: Callable[..., Township]) -> None:
    township = township_factory(broker.port)
    data = tmp_path / "data"
    config = tmp_path / "station.toml"
    config.write_text(station_toml(data, broker.port, audio=AUDIO))
    daemon = Daemon(config, simulated=True, umask=0o022)
    try:
        daemon.wait_logged("uplink.connected", 30)
        # What the station writes: an alarm (outbox, seq mark), the siren (speaker), a
        # clip and a schedule from the township; the prompts in the TTS cache.
        request(data / "control.sock", {"op": "press", "button": "panic"})
        wav = clip_wav()
        township.command("v001", {"cmd": "clip.put", "id": "up", "clip_id": "notice",
                                  "chunk": 0, "chunks": 1, "size": len(wav),
                                  "sha256": hashlib.sha256(wav).hexdigest(),
                                  "data": base64.b64encode(wav).decode()})
        township.command("v001", {"cmd": "schedule.set", "id": "s", "schedule_id": "m",
                                  "cron": "0 7 * * *", "tone": "chime"})

        def answered() -> bool:
            done = {r["payload"]["cmd_id"]: r["payload"]["ok"]
                    for r in township.on("/v001/cmd/result")}
            return done.get("up") is True and done.get("s") is True

        wait_until(answered, 20, "clip and schedule stored")
        wait_until(lambda: any(e["type"] == "audio.playback"
                               and e["payload"].get("sound") == "tone:siren"
                               and e["payload"]["phase"] == "finished"
                               for e in township.unique_events()), 30, "siren played")
        found = assert_private(data)
        # The WAL indexes of the station's own databases are in memory, not on the card.
        assert "outbox.db-shm" not in found and "audio.db-shm" not in found
        for name in ("outbox.db", "outbox.db-wal", "outbox.seq",
                     "station.lock", "audio.db", "speaker.raw", "clips/notice.clip"):
            assert found.get(name, ("missing",))[0] == "file", name
        assert found["control.sock"] == ("socket", 0o660)  # the pingan group's tools
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0
    assert_private(data)  # the clean stop's seq mark too


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_databases_are_created_0600_whoever_opens_them(tmp_path: Path,
                                                      umask_022: None) -> None:
    """Without `pingan-edge run`'s umask too (a test, selftest as root)."""
    box = Outbox(tmp_path / "outbox.db")
    box.start()
    box.append(AlarmPanic(station="v001", township="t01",
                          payload=PanicPayload(source="simulator", held_s=0.0), **stamp()))
    sms = SmsLog(tmp_path / "sms.db")
    audio = AudioStore(tmp_path / "audio.db")
    try:
        found = modes(tmp_path)
        for name in ("outbox.db", "outbox.db-wal", "outbox.seq",
                     "sms.db", "sms.db-wal", "sms.db-shm", "audio.db", "audio.db-wal"):
            assert found.get(name) == ("file", 0o600), (name, found.get(name))
    finally:
        box.close()
        sms.close()
        audio.close()


def test_an_older_outbox_readable_by_all_is_narrowed(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    old = [name for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm")
           if (tmp_path / name).exists()]
    assert "outbox.db" in old
    for name in old:
        os.chmod(tmp_path / name, 0o644)  # as an older station left them
    box = Outbox(path)
    box.start()
    try:
        for name in old:
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        box.close()
