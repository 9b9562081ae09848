"""Loudspeaker latency: township command received → first sample handed to PortAudio, and
panic press → first siren sample.

What it measures
    A real `edge.station.Station` (pins.factory = "mock", buttons.panic_hold_s = 0,
    audio.output = "null": PortAudio through an ALSA null device that records to a file,
    audio.amp_warm_up_s = 0 - a real amplifier adds its configured warm-up when it was
    off; audio.prompts = false so the "alarm sent" prompt does not sound between rounds)
    connected to a private Mosquitto on a free loopback port.

    command:  time.monotonic() when the station's uplink hands the MQTT payload to the
              station (command received), to the moment the player hands the first block
              of that broadcast to `OutputStream.write` (Play.first_sample_at). Each round
              is then stopped with broadcast.stop and the next command follows when the
              player is idle. Three sources: `tone` (chime, generated), `clip` (a 1 s WAV
              from the clip library, decoded and resampled per command) and `text`
              (8 Chinese characters through espeak-ng, rendered per command).
    baseline: `player.submit()` of an already rendered chime straight into the same
              player → first sample: the player's own share, measured the same way,
              interleaved one for one with the tone commands.
    siren:    time.monotonic() just before `pin.drive_low()` on the panic pin, to the
              siren's first sample; the alarm is committed to the durable outbox and sent
              as usual meanwhile. Siren stopped and pin released between presses.

    Medians and nearest-rank percentiles, never means. `--warmup` rounds first, not counted.

Run
    .venv/bin/python bench/audio_latency.py              # 200 rounds each, ~1 min
    .venv/bin/python bench/audio_latency.py --rounds 50  # quick
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import itertools
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile
from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp, station_toml

from edge import config as config_mod
from edge.audio import tones
from edge.audio.player import Level, Play
from edge.logs import JsonFormatter
from edge.station import Station
from pingan_sim.localbroker import Mosquitto

AUDIO_TOML = """
[audio]
output = "null"
amp_warm_up_s = 0.0
amp_idle_off_s = 60.0
# The spoken "alarm sent" after each press would hold the player between rounds.
prompts = false
"""


def summary(name: str, ms: list[float]) -> dict[str, float]:
    out = {"p50": statistics.median(ms), "p99": pct(ms, 99), "max": max(ms)}
    print(f"  {name:<22} n={len(ms):<4} p50={out['p50']:7.2f} ms  p90={pct(ms, 90):7.2f} ms  "
          f"p99={out['p99']:7.2f} ms  max={out['max']:7.2f} ms")
    return out


class Probe:
    """Command-received times (wrapping the uplink's command callback) and first-sample
    times (a player listener), both on time.monotonic()."""

    def __init__(self, station: Station) -> None:
        self.received: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self.cond = threading.Condition()
        inner = station.uplink._on_command

        def on_command(topic: str, payload: bytes) -> None:
            t = time.monotonic()
            cmd_id = payload.split(b'"id": "', 1)[1].split(b'"', 1)[0].decode()
            self.received[cmd_id] = t
            inner(topic, payload)

        station.uplink._on_command = on_command
        assert station.loudspeaker is not None
        station.loudspeaker.player.add_listener(self._listen)

    def _listen(self, phase: str, play: Play, _detail: dict[str, object]) -> None:
        if phase == "started" and play.first_sample_at is not None:
            with self.cond:
                self.first[play.play_id] = play.first_sample_at
                self.cond.notify_all()

    def wait_first(self, play_id: str, timeout: float = 10.0) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: play_id in self.first, timeout)
            return self.first.get(play_id)


def idle(station: Station) -> None:
    assert station.loudspeaker is not None
    player = station.loudspeaker.player
    deadline = time.monotonic() + 10
    while (player.current or player.pending()) and time.monotonic() < deadline:
        time.sleep(0.001)


def run(args: argparse.Namespace, tmp: Path) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    load_before = loadavg()
    handler = logging.FileHandler(tmp / "station.log", encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)
    broker = Mosquitto(tmp / "broker", persistence=False).start()
    toml = station_toml(tmp / "station", broker.port, AUDIO_TOML)
    station = Station(config_mod.parse(toml, "<bench>"))
    station.start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not station.uplink.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        ls = station.loudspeaker
        assert ls is not None
        probe = Probe(station)
        topic = "pingan/v1/t01/v001/cmd"
        ids = itertools.count()

        def command(fields: str) -> float | None:
            cmd_id = f"b{next(ids)}"
            client.publish(topic, f'{{"id": "{cmd_id}", "cmd": "broadcast.play", {fields}}}',
                           qos=1)
            first = probe.wait_first(cmd_id)
            client.publish(topic, f'{{"id": "s{cmd_id}", "cmd": "broadcast.stop"}}', qos=1)
            idle(station)
            if first is None or cmd_id not in probe.received:
                return None
            return (first - probe.received[cmd_id]) * 1000.0

        # A 1 s clip in the library, uploaded over MQTT as the township would.
        t = np.arange(22050) / 22050
        buf = io.BytesIO()
        soundfile.write(buf, (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 22050,
                        format="WAV", subtype="PCM_16")
        data = buf.getvalue()
        parts = [data[i:i + 8000] for i in range(0, len(data), 8000)]
        for i, part in enumerate(parts):
            client.publish(topic, (
                f'{{"id": "up{i}", "cmd": "clip.put", "clip_id": "bench", "chunk": {i}, '
                f'"chunks": {len(parts)}, "size": {len(data)}, '
                f'"sha256": "{hashlib.sha256(data).hexdigest()}", '
                f'"data": "{base64.b64encode(part).decode()}"}}'), qos=1)
        deadline = time.monotonic() + 10
        while "bench" not in ls.clips.ids() and time.monotonic() < deadline:
            time.sleep(0.01)

        chime = tones.chime(ls.output.rate)
        results: dict[str, list[float]] = {"tone": [], "baseline": [], "clip": [], "text": [],
                                           "siren": []}
        lost = 0
        pin = station.pin_factory.pin(station.config.pins.panic)
        started = time.monotonic()
        for i in range(args.warmup + args.rounds):
            counted = i >= args.warmup
            for name, fields in (("tone", '"tone": "chime"'), ("clip", '"clip": "bench"'),
                                 ("text", '"text": "请注意防火安全"')):
                if name == "text" and i % 4:
                    continue  # TTS per command is slow; a quarter of the rounds is plenty
                ms = command(fields)
                if ms is None:
                    lost += 1
                elif counted:
                    results[name].append(ms)
            # baseline: straight into the player
            play_id = f"direct{i}"
            t0 = time.monotonic()
            ls.player.submit(Play(play_id, Level.NORMAL, "township", "tone:chime",
                                  samples=chime))
            first = probe.wait_first(play_id)
            ls.player.cancel(lambda p, pid=play_id: p.play_id == pid)
            idle(station)
            if first is not None and counted:
                results["baseline"].append((first - t0) * 1000.0)
            # siren: the electrical press
            t0 = time.monotonic()
            pin.drive_low()
            deadline = time.monotonic() + 5
            while True:
                current = ls.player.current
                if current is not None and current.origin == "siren" \
                        and current.first_sample_at is not None:
                    break
                if time.monotonic() > deadline:
                    current = None
                    break
                time.sleep(0.0002)
            if current is not None and current.first_sample_at is not None and counted:
                results["siren"].append((current.first_sample_at - t0) * 1000.0)
            ls.silence_siren()
            pin.drive_high()
            idle(station)
            time.sleep(args.gap_ms / 1000.0)
        took = time.monotonic() - started
        print("audio latency: command received -> first sample handed to PortAudio; "
              "panic press -> first siren sample")
        print(machine_line(load_before))
        print(f"audio: PortAudio -> ALSA null device (file), rate={ls.output.rate}, "
              f"block={ls.output.block} frames, lead={station.config.audio.lead_ms} ms")
        print(f"rounds={args.rounds} (+{args.warmup} warm-up), run took {took:.1f} s, "
              f"lost={lost}")
        figures = {name: summary(name if name != "siren" else "siren (press)", ms)
                   for name, ms in results.items() if ms}
        if "tone" in figures and "baseline" in figures:
            print(f"  command path over the bare player: p50 "
                  f"+{figures['tone']['p50'] - figures['baseline']['p50']:.2f} ms")
        return 0 if not lost and len(results["siren"]) == args.rounds else 1
    finally:
        client.loop_stop()
        client.disconnect()
        station.stop()
        broker.stop()
        logging.getLogger().handlers[:] = []
        handler.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    add_tmp_args(parser)
    args = parser.parse_args()
    return run_in_tmp(args, "pingan-bench-audio-", run)


if __name__ == "__main__":
    sys.exit(main())
