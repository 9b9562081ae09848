"""Live voice (喊话): mouth → loudspeaker delay with 20 (and 200) stations, measured with a
known test signal, plus underruns and the centre's CPU.

The mouth is a simulated officer's microphone in real time: a 1 kHz burst of 300 ms every
second, encoded to Opus (libopus, 20 ms frames, as the page's AudioEncoder) and sent frame
by frame over the console's WebSocket, as the page sends it, to a served console
(`pingan-centre serve`, SQLite) that relays it through Mosquitto to every station. Each
station is the unit's own receiver (edge/audio/voice.py: the paho callback, the decoder
thread, the jitter buffer) and its own player thread (edge/audio/player.py), writing to an
output that keeps a sound card's clock instead of PortAudio's null sink: a burst's onset
is "heard" when its first loud block would leave the card. The stations run in a few
worker processes (light: no outbox, no GPIO, no PortAudio).

delay = heard - the moment the burst's first sample entered the microphone. Also printed:
mouth → packet at the station (its `at_ms`), which is all a `--light` station measures:
200 full stations decoding and playing on this 2-core machine saturate it themselves.

The baseline, in the same run with the same stations: the mouth publishes the same
packets straight to the broker (no browser socket, no centre), so the ratio is what the
console's relay costs. Goal (issue 23): p95 under 1 s on loopback with 20 stations.

    .venv/bin/python bench/live_voice.py                 # 20 stations
    .venv/bin/python bench/live_voice.py --stations 200           # full stations
    .venv/bin/python bench/live_voice.py --stations 200 --light   # what arrives only
    .venv/bin/python bench/live_voice.py --stations 20 --target set   # per-station topics
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import struct
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import requests
import websocket
from centre_common import PASSWORD, Centre, Db, dumps, state
from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp
from paho.mqtt.enums import CallbackAPIVersion

from pingan_sim import voice as mouth
from pingan_sim.localbroker import Mosquitto

TOWNSHIP = "t01"
RATE = 16000
BLOCK = RATE // 50
BURST_S, PERIOD_S = 0.3, 1.0


class CardClock:
    """An output with a sound card's clock: what is written leaves the card after what
    was written before it; a burst's onset is noted when it would sound."""

    def __init__(self) -> None:
        self.rate = RATE
        self.block = BLOCK
        self.is_open = False
        self.heard: list[float] = []
        self._end = 0.0
        self._loud = False

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def write(self, samples: np.ndarray) -> None:
        now = time.time()
        sounds_at = max(self._end, now)
        self._end = sounds_at + len(samples) / self.rate
        rms = float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0
        if rms > 0.05 and not self._loud:
            self._loud = True
            self.heard.append(sounds_at)
        elif rms < 0.01:
            self._loud = False


class Arrivals:
    """What reaches a station: each packet's age (now - at_ms: mouth → packet at the
    station, 60 ms of it the packet filling up) and the gaps in its seq."""

    def __init__(self) -> None:
        self.ages: list[float] = []
        self.lost = 0
        self._last: tuple[str, int] = ("", -1)

    def note(self, payload: bytes) -> None:
        body = json.loads(payload)
        self.ages.append(time.time() - body["at_ms"] / 1000)
        session, seq = body["session"], body["seq"]
        if session == self._last[0] and seq > self._last[1] + 1:
            self.lost += seq - self._last[1] - 1
        self._last = (session, seq)


def _worker(port: int, names: list[str], light: bool, ready: Any, out: Any,
            stop: Any) -> None:
    """Stations: the unit's voice receiver and player each (light: only what arrives)."""
    import logging

    from edge.audio.player import Player
    from edge.audio.voice import LiveVoice

    logging.getLogger("edge").setLevel(logging.ERROR)  # the reports are counted, not logged
    stations = []
    reports: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    arrivals = {n: Arrivals() for n in names}
    for name in names:
        card = CardClock()
        player = Player(card, None, lead_ms=60, idle_off_s=60.0,  # type: ignore[arg-type]
                        on_unavailable=lambda _p: None)
        voice = LiveVoice(player, RATE, BLOCK, jitter_ms=120, max_ms=400, volume=lambda: 1.0,
                          emit=lambda p, n=name: reports[n].append(
                              {"phase": p.phase, "underruns": p.underruns,
                               "dropped_ms": p.dropped_ms, "lost": p.lost,
                               "packets": p.packets, "session": p.session}))
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{TOWNSHIP}-{name}",
                             protocol=mqtt.MQTTv5)
        subscribed = threading.Event()

        def on_message(_c: Any, _u: Any, m: Any, v: Any = voice, n: str = name) -> None:
            payload = bytes(m.payload)
            if not light:
                v.receive(m.topic, payload)
            arrivals[n].note(payload)

        client.on_message = on_message
        client.on_subscribe = lambda *_a, e=subscribed: e.set()
        client.on_connect = lambda c, _u, _f, _r, _p, n=name: c.subscribe([
            (f"pingan/v1/{TOWNSHIP}/{n}/voice", 0), (f"pingan/v1/{TOWNSHIP}/all/voice", 0)])
        if not light:
            player.start()
            voice.start()
        client.connect("127.0.0.1", port)
        client.loop_start()
        client.publish(f"pingan/v1/{TOWNSHIP}/{name}/state", dumps(state(TOWNSHIP, name)),
                       qos=1, retain=True)
        stations.append((name, card, player, voice, client, subscribed))
    for *_rest, subscribed in stations:
        subscribed.wait(30)
    ready.put(len(stations))
    while True:
        command = stop.get()
        if command == "report":
            out.put({name: {"heard": card.heard, "reports": reports[name],
                            "ages": arrivals[name].ages, "lost": arrivals[name].lost}
                     for name, card, *_r in stations})
            for _name, card, *_r in stations:
                card.heard = []
            for name in names:
                reports[name] = []
                arrivals[name] = Arrivals()
        else:
            break
    for _name, _card, player, voice, client, _s in stations:
        client.loop_stop()
        client.disconnect()
        if not light:
            voice.close()
            player.close()


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def speak(seconds: float, send: Any) -> list[float]:
    """The microphone in real time: each 20 ms frame is sent when it has been captured;
    returns each burst's onset (Unix time of its first sample)."""
    samples = np.concatenate([
        mouth.tone_sequence((1000.0,), tone_s=BURST_S, gap_s=PERIOD_S - BURST_S)
        for _ in range(int(seconds / PERIOD_S))])
    frames = mouth.Encoder().encode(samples)
    t0 = time.time() + 0.05
    onsets = [t0 + k * PERIOD_S for k in range(int(seconds / PERIOD_S))]
    for i, frame in enumerate(frames):
        captured = t0 + i * 0.02
        time.sleep(max(0.0, captured + 0.02 - time.time()))
        send(i, captured, frame, i == len(frames) - 1)
    return onsets


def via_console(url: str, sessionid: str, target: str, chosen: list[str],
                seconds: float) -> list[float]:
    """Through the console: the page's socket, the centre, the broker."""
    ws = websocket.create_connection(url.replace("http://", "ws://") + "/voice/ws",
                                     timeout=30, origin=url, cookie=f"sessionid={sessionid}")
    try:
        ws.send(json.dumps({"start": {"target": target, "chosen": chosen}}))
        assert "session" in json.loads(ws.recv()), "the centre refused the session"
        onsets = speak(seconds, lambda _i, at, frame, _end: ws.send_binary(
            struct.pack(">d", at * 1000) + frame))
        ws.send(json.dumps({"end": True}))
        ws.recv()
        return onsets
    finally:
        ws.close()


def straight(port: int, topics: list[str], seconds: float) -> list[float]:
    """The baseline: the same packets (3 frames each) published straight to the broker."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    session, pending = f"b{uuid.uuid4().hex[:8]}", []
    first_at = 0.0

    def direct(i: int, at: float, frame: bytes, end: bool) -> None:
        nonlocal first_at
        if not pending:
            first_at = at
        pending.append(frame)
        if len(pending) == 3 or end:
            body = mouth.packet(session, i // 3, list(pending), first_at * 1000, end=end)
            pending.clear()
            for topic in topics:
                pub.publish(topic, body, qos=0)

    try:
        return speak(seconds, direct)
    finally:
        pub.loop_stop()
        pub.disconnect()


def delays(onsets: list[float], heard: list[float]) -> list[float]:
    """Each onset heard, matched to the latest burst that began before it."""
    out = []
    for h in heard:
        before = [o for o in onsets if o <= h + 0.005]
        if before and h - before[-1] < PERIOD_S:
            out.append(max(0.0, h - before[-1]))
    return out


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    broker = Mosquitto(tmp / "broker", persistence=False,
                       extra="max_queued_messages 10000\nmax_connections -1").start()
    db = Db("sqlite", tmp)
    centre = Centre(tmp, db, broker.port, TOWNSHIP, users={"officer": "duty_officer"})
    names = [f"s{i:03d}" for i in range(args.stations)]
    workers = max(1, min(8, args.stations // 25))
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    stops = [ctx.Queue() for _ in range(workers)]
    procs = [ctx.Process(target=_worker, args=(broker.port, names[w::workers], args.light,
                                               ready, out, stops[w]), daemon=True)
             for w in range(workers)]
    try:
        centre.start()
        for p in procs:
            p.start()
        assert sum(ready.get(timeout=120) for _ in procs) == args.stations
        s = requests.Session()
        s.get(f"{centre.url}/login/", timeout=10)
        s.post(f"{centre.url}/login/", data={"username": "officer", "password": PASSWORD,
               "csrfmiddlewaretoken": s.cookies["csrftoken"]}, timeout=10)
        # Every station known to the centre (their state arrived), so "all" means them.
        deadline = time.monotonic() + 60
        while names[-1] not in s.get(f"{centre.url}/stations", timeout=30).text:
            assert time.monotonic() < deadline, "stations not on the grid"
            time.sleep(0.5)

        def collect() -> dict[str, Any]:
            time.sleep(2.0)  # the last burst plays out
            for q in stops:
                q.put("report")
            merged: dict[str, Any] = {}
            for _ in procs:
                merged.update(out.get(timeout=60))
            return merged

        def figures(label: str, onsets: list[float], got: dict[str, Any],
                    cpu: float | None, took: float) -> list[float]:
            ages = [a for st in got.values() for a in st["ages"]]
            relay = (f"{label}: mouth → packet at the station p50 "
                     f"{1000 * statistics.median(ages):.0f} ms, p95 {1000 * pct(ages, 95):.0f} "
                     f"ms ({len(ages)} packets; lost {sum(st['lost'] for st in got.values())})"
                     if ages else f"{label}: no packet arrived")
            if cpu is not None:
                relay += f"; centre CPU {100 * cpu / took:.1f}% of one core"
            print(relay, flush=True)
            if args.light:
                return ages
            ds = [d for st in got.values() for d in delays(onsets, st["heard"])]
            finals = [r for st in got.values() for r in st["reports"]
                      if r["phase"] in ("finished", "preempted", "failed")]
            expected = len(onsets) * len(got)
            line = (f"{label}: mouth→loudspeaker p50 {1000 * statistics.median(ds):.0f} ms, "
                    f"p95 {1000 * pct(ds, 95):.0f} ms, max {1000 * max(ds):.0f} ms "
                    f"({len(ds)}/{expected} bursts heard); underruns "
                    f"{sum(r['underruns'] for r in finals)}, dropped "
                    f"{sum(r['dropped_ms'] for r in finals)} ms, lost packets "
                    f"{sum(r['lost'] for r in finals)}, sessions ended "
                    f"{len(finals)}/{len(got)}") if ds else f"{label}: nothing heard"
            print(line, flush=True)
            return ds

        chosen = names if args.target == "set" else []
        topics = ([f"pingan/v1/{TOWNSHIP}/all/voice"] if args.target == "all" else
                  [f"pingan/v1/{TOWNSHIP}/{n}/voice" for n in names])
        results: dict[str, list[float]] = {"console": [], "direct": []}
        assert centre.proc is not None
        for round_ in range(args.rounds):
            cpu0, t0 = cpu_s(centre.proc.pid), time.monotonic()
            onsets = via_console(centre.url, s.cookies["sessionid"],
                                 "all" if args.target == "all" else "stations", chosen,
                                 args.seconds)
            cpu, took = cpu_s(centre.proc.pid) - cpu0, time.monotonic() - t0
            results["console"] += figures(f"round {round_ + 1}, console ({args.target})",
                                          onsets, collect(), cpu, took)
            onsets = straight(broker.port, topics, args.seconds)
            results["direct"] += figures(f"round {round_ + 1}, baseline: straight to the "
                                         f"broker", onsets, collect(), None, 1.0)
        c, d = results.get("console", []), results.get("direct", [])
        what = "mouth → packet at the station" if args.light else "mouth → loudspeaker"
        if c and d:
            print(f"all rounds, {args.stations} stations, {what}: console p50 "
                  f"{1000 * statistics.median(c):.0f} ms p95 {1000 * pct(c, 95):.0f} ms; "
                  f"baseline p50 {1000 * statistics.median(d):.0f} ms p95 "
                  f"{1000 * pct(d, 95):.0f} ms; ratio console/baseline p50 "
                  f"{statistics.median(c) / statistics.median(d):.2f}, p95 "
                  f"{pct(c, 95) / pct(d, 95):.2f}" + (
                      "" if args.light else
                      f"; goal p95 < 1000 ms: {'met' if pct(c, 95) < 1.0 else 'NOT met'}"))
        print(machine_line(load))
        return 0
    finally:
        for q in stops:
            q.put("stop")
        for p in procs:
            if p.pid is None:
                continue  # never started: the centre did not come up
            p.join(10)
            if p.is_alive():
                p.kill()
        centre.stop()
        broker.stop()
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="speech per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--light", action="store_true",
                        help="stations that only note what arrives (no decoding, no "
                             "player): the relay's delay with many stations")
    parser.add_argument("--target", choices=("all", "set"), default="all",
                        help="all: one all/voice topic; set: every station by name "
                             "(the centre publishes once per station)")
    add_tmp_args(parser)
    return run_in_tmp(parser.parse_args(), "pingan-voice-", run)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
