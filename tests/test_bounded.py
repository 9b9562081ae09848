"""Memory and disk stay bounded through any sequence of valid commands (issue 9, item 2).

A real daemon (`python -m edge run`) gets the largest inputs the township may send:
2,000-character texts to speak now and on schedules, clips up to `clip_max_bytes` in
commands of `max_command_bytes`, and a compressed clip that decodes to half an hour of
audio. Its peak resident memory (VmHWM in /proc) stays under 150 MB, and its data
directory under `station.data_max_bytes`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from conftest import Daemon, station_toml, wait_until, wait_while_progressing

from edge.config import DATA_MARGIN_BYTES, TTS_RENDER_MAX_BYTES
from edge.contract.events import SCHEDULES_MAX

RSS_LIMIT = 150 * 1000 * 1000
MiB = 1 << 20
CMD_MAX = 1 << 20  # the largest uplink.max_command_bytes a station accepts


def _text(rng: random.Random) -> str:
    """2,000 characters of Mandarin (common CJK ideographs), with some punctuation."""
    out = []
    for i in range(2000):
        out.append("，" if i % 37 == 36 else chr(rng.randint(0x4E00, 0x9FA5)))
    return "".join(out)


def _clip_puts(clip_id: str, data: bytes) -> list[dict[str, Any]]:
    step = (CMD_MAX - 2048) * 3 // 4  # base64 and the other fields fit in one command
    parts = [data[i:i + step] for i in range(0, len(data), step)]
    sha = hashlib.sha256(data).hexdigest()
    return [{"cmd": "clip.put", "id": f"{clip_id}-{n}", "clip_id": clip_id, "sha256": sha,
             "size": len(data), "chunk": n, "chunks": len(parts),
             "data": base64.b64encode(part).decode()} for n, part in enumerate(parts)]


def _wav(seconds: float, rate: int, fmt: str, subtype: str, level: float = 0.2) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (level * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


SIMULATED_SPEAKER = {"speaker.raw", "mic.raw", "alsa-null.conf"}


def _disk_use(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*")
               if p.is_file() and p.name not in SIMULATED_SPEAKER)


def test_largest_valid_commands_keep_memory_and_disk_bounded(own_broker, township_factory,
                                                             tmp_path):
    data_dir = tmp_path / "station"
    # The simulator's loudspeaker: an ALSA null device recording to speaker.raw, which is
    # not the unit's data and is not counted (docs/config.md).
    audio = {"enabled": True, "output": "null", "amp_warm_up_s": 0.0,
             "clip_max_bytes": 8 * MiB, "clips_total_bytes": 16 * MiB, "clips_max": 4,
             "tts_cache_bytes": 24 * MiB, "tts_cache_entries": 8, "queue_max": 4}
    outbox_max = 16 * MiB
    cap = (outbox_max + DATA_MARGIN_BYTES + audio["clips_total_bytes"]
           + audio["tts_cache_bytes"] + (audio["queue_max"] + 1) * TTS_RENDER_MAX_BYTES)
    config = tmp_path / "station.toml"
    config.write_text(station_toml(
        data_dir, own_broker.port, uplink={"max_command_bytes": CMD_MAX},
        outbox={"max_bytes": outbox_max}, audio=audio,
    ).replace("[station]\n", f"[station]\ndata_max_bytes = {cap}\n"))
    township = township_factory(own_broker.port)
    daemon = Daemon(config)
    try:
        try:
            wait_until(lambda: daemon.logged("uplink.connected") or daemon.proc.poll() is not None,
                       60, "the daemon connected")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {daemon.lines} BROKER LOG: "
                                 f"{own_broker.log_path.read_text()[-3000:]}") from None
        assert daemon.proc.poll() is None, daemon.lines
        rng = random.Random(9)
        sent: list[str] = []

        def send(cmd: dict[str, Any]) -> None:
            township.command("v001", cmd)
            sent.append(cmd["id"])

        # Clips: the largest a station takes, and one that decodes to 30 minutes.
        for put in _clip_puts("big", _wav(180, 22050, "WAV", "PCM_16")[:8 * MiB]):
            send(put)
        long_flac = _wav(1800, 8000, "FLAC", "PCM_16", level=0.002)  # compresses ~20:1
        assert len(long_flac) < 8 * MiB
        for put in _clip_puts("long", long_flac):
            send(put)
        send({"cmd": "broadcast.play", "id": "play-long", "clip": "long"})
        send({"cmd": "broadcast.play", "id": "play-long-2", "clip": "long",
              "priority": "emergency"})
        for n in range(8):  # each renders and is cached; the cache holds ~2 of them
            send({"cmd": "schedule.set", "id": f"sched-{n}", "schedule_id": f"s{n}",
                  "cron": "0 3 1 1 *", "text": _text(rng)})
        for n in range(12):
            send({"cmd": "broadcast.play", "id": f"text-{n}", "text": _text(rng),
                  "priority": "emergency" if n % 3 == 0 else "normal"})

        def answered() -> set[str]:
            return {r["payload"]["cmd_id"] for r in township.on("/v001/cmd/result")}

        # Twenty 2,000-character renderings take minutes on a loaded 2-core machine: what
        # must hold is that answers keep coming until every command has one.
        wait_while_progressing(lambda: len(answered()), lambda: set(sent) <= answered(), 120,
                               "an answer to every command")
        results = {r["payload"]["cmd_id"]: r["payload"] for r in township.on("/v001/cmd/result")}
        assert all(results[f"sched-{n}"]["ok"] for n in range(8)), results
        assert results["big-0"]["ok"] and results["long-0"]["ok"]
        played = [results[f"text-{n}"] for n in range(12)]
        assert sum(r["ok"] for r in played) >= 2, played  # the long clip holds a slot too
        assert {r["error"]["code"] for r in played if not r["ok"]} <= {"busy"}, played

        # Schedules: at most SCHEDULES_MAX kept (and listed on the state); a new one past
        # that is refused, a stored one may still change.
        for n in range(8, SCHEDULES_MAX):  # a few at a time: the command queue is small
            send({"cmd": "schedule.set", "id": f"sched-{n}", "schedule_id": f"s{n}",
                  "cron": "0 3 1 1 *", "tone": "chime"})
            if n % 8 == 7:
                wait_until(lambda: set(sent) <= answered(), 60, "the schedules answered")
        send({"cmd": "schedule.set", "id": "sched-over", "schedule_id": "s-over",
              "cron": "0 3 1 1 *", "tone": "chime"})
        send({"cmd": "schedule.set", "id": "sched-again", "schedule_id": "s0",
              "cron": "0 4 1 1 *", "tone": "chime"})
        wait_until(lambda: set(sent) <= answered(), 60, "the schedules answered")
        results = {r["payload"]["cmd_id"]: r["payload"] for r in township.on("/v001/cmd/result")}
        assert results["sched-over"]["error"]["code"] == "too_many_schedules"
        assert results["sched-again"]["ok"] and results[f"sched-{SCHEDULES_MAX - 1}"]["ok"]
        state = wait_until(lambda: [s for s in township.on("/v001/state") if any(
            x["cron"] == "0 4 1 1 *" for x in s.get("schedules") or [])], 10)[-1]
        assert sorted(x["schedule_id"] for x in state["schedules"]) == sorted(
            f"s{n}" for n in range(SCHEDULES_MAX))

        peak = _peak_rss(daemon.proc.pid)
        used = _disk_use(data_dir)
        cache = _disk_use(data_dir / "tts-cache")
        print(f"peak RSS {peak / 1e6:.1f} MB; data dir {used / MiB:.1f} MiB of {cap / MiB:.0f};"
              f" TTS cache {cache / MiB:.1f} MiB")
        assert peak < RSS_LIMIT, f"peak RSS {peak / 1e6:.1f} MB"
        assert used <= cap
        assert cache <= audio["tts_cache_bytes"]
        assert len(list((data_dir / "tts-cache").glob("*.flac"))) <= audio["tts_cache_entries"]
        assert daemon.logged("tts.evicted"), "the cache was full: old renderings went"
    finally:
        daemon.proc.terminate()
        daemon.finish(20)
