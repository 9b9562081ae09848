"""Live voice (喊话, issue 23) at a station, on the township broker as shipped (TLS,
station certificates, the ACL made from the topic table): the centre's account publishes
Opus packets at QoS 0 on the station's `voice` topic (and `all/voice`), the real station
decodes them with libopus and plays them through its player to the null sink
(`speaker.raw`); its `audio.voice` events reach the centre, valid by the schema. Live
speech cuts off a normal broadcast, which starts again after it; a siren cuts live
speech off; a station handed more than it can buffer drops the oldest audio
rather than speak later."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from audio_helpers import runs
from conftest import schema, station_toml, wait_until

from edge import config as config_mod
from edge.station import Station
from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_sim import voice as mouth
from pingan_sim.township import CENTRE, Client, TownshipBroker

T = "t01"
RATE = 16000
AUDIO = {"enabled": True, "output": "null", "sample_rate": RATE, "amp_warm_up_s": 0.0,
         "amp_idle_off_s": 0.1, "siren_s": 1.0, "prompts": False}
FREQS = [500.0, 800.0, 1200.0]


def heard(station: Station) -> list[tuple[float, float]]:
    raw = station.config.data_dir / "speaker.raw"
    x = np.fromfile(raw, dtype="<i2").astype(np.float32) / 32768
    return runs(x, RATE, [*FREQS, 440.0, 880.0, 1000.0, 1300.0])


def voice_events(centre: Client) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for _topic, body in centre.received("/events"):
        event = json.loads(body)
        if event["type"] == "audio.voice":
            errors = list(schema("event").iter_errors(event))
            assert not errors, errors[0].message
            out.append(event["payload"])
    return out


def playback(centre: Client, cmd_id: str) -> list[str]:
    return [e["payload"]["phase"] for e in map(json.loads, (b for _t, b in
            centre.received("/events"))) if e["type"] == "audio.playback"
            and e["payload"].get("cmd_id") == cmd_id]


def subscribed(centre: Client) -> None:
    """The station subscribes to all its topics at once: a command answered means its voice
    topics are subscribed too. Ask `state.get` until one is answered."""
    tries = iter(range(100))

    def answered() -> bool:
        cmd_id = f"ping-{next(tries)}"
        centre.publish(f"pingan/v1/{T}/v001/cmd",
                       json.dumps({"cmd": "state.get", "id": cmd_id}).encode())
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if any(json.loads(b)["payload"]["cmd_id"] == cmd_id
                   for _t, b in centre.received("/cmd/result")):
                return True
            time.sleep(0.05)
        return False

    wait_until(answered, 30, "the station answering commands")


def test_live_voice_on_the_shipped_broker(tmp_path: Path) -> None:
    town = TownshipBroker(tmp_path / "township").start()
    centre = Client("centre.voice")
    station: Station | None = None
    try:
        bundle = provision.add_station(town.town, "v001", "127.0.0.1",
                                       broker_port=town.tls_port)
        tls = tmp_path / "tls"
        install_bundle(bundle, tls)
        path = tmp_path / "station.toml"
        path.write_text(station_toml(tmp_path / "data", town.tls_port, broker={
            "tls": True, "ca_file": str(tls / "ca.crt"), "cert_file": str(tls / "station.crt"),
            "key_file": str(tls / "station.key")}, audio=AUDIO,
            buttons={"panic_hold_s": 0.0, "bounce_s": 0.0}))
        (tmp_path / "data").mkdir()
        station = Station(config_mod.load(path))
        station.start()
        assert centre.connect(town.plain_port, CENTRE, town.centre_password)
        centre.subscribe(f"pingan/v1/{T}/v001/events", f"pingan/v1/{T}/v001/cmd/result")
        wait_until(lambda: station is not None and station.uplink.connected, 20, "connected")
        subscribed(centre)  # connected is not yet subscribed (QoS 0: nothing is queued)

        # 1. The tone sequence, in real time, on the station's own topic.
        tones = mouth.tone_sequence(tuple(FREQS), lead_s=0.1)
        sent = mouth.packets("s-one", tones)
        for body in sent:
            centre.client.publish(f"pingan/v1/{T}/v001/voice", body, qos=0)
            time.sleep(0.06)
        done = wait_until(lambda: [e for e in voice_events(centre)
                                   if e["session"] == "s-one" and e["phase"] == "finished"],
                          15, "the session finished")[0]
        assert [f for f, _s in heard(station)] == FREQS  # in order, nothing else
        # A loaded machine's sender may leave a hole (an underrun, reported); nothing else.
        assert [e["phase"] for e in voice_events(centre)
                if e["phase"] != "underrun"] == ["started", "finished"]
        assert done["packets"] == len(sent) and done["lost"] == 0
        assert done["played_s"] >= 1.4 and done["delay_ms_p50"] is not None

        # 2. It cuts off a normal broadcast (music, a notice), which starts again after.
        assert not centre.publish(f"pingan/v1/{T}/v001/cmd", json.dumps({
            "cmd": "broadcast.play", "id": "bc-music", "tone": "chime", "repeat": 50,
            "priority": "normal"}).encode()).is_failure
        wait_until(lambda: "started" in playback(centre, "bc-music"), 10, "music playing")
        for body in mouth.packets("s-over", mouth.tone_sequence((500.0,), tone_s=1.0)):
            centre.client.publish(f"pingan/v1/{T}/all/voice", body, qos=0)
            time.sleep(0.06)
        wait_until(lambda: [e for e in voice_events(centre) if e["session"] == "s-over"
                            and e["phase"] == "finished"], 15, "s-over spoken")
        wait_until(lambda: playback(centre, "bc-music")[-1] == "resumed", 10, "music again")
        assert playback(centre, "bc-music")[:2] == ["started", "preempted"]
        assert not centre.publish(f"pingan/v1/{T}/v001/cmd", json.dumps({
            "cmd": "broadcast.stop", "id": "bs-music"}).encode()).is_failure
        wait_until(lambda: playback(centre, "bc-music")[-1] == "stopped", 10, "music stopped")

        # 3. On all/voice, with a packet lost on the way; a siren cuts it off.
        raw = station.config.data_dir / "speaker.raw"
        mark = raw.stat().st_size
        long = mouth.tone_sequence((700.0,), tone_s=6.0)
        body = mouth.packets("s-two", long)
        for i, packet in enumerate(body[:40]):
            if i != 5:
                centre.client.publish(f"pingan/v1/{T}/all/voice", packet, qos=0)
            time.sleep(0.06)
            if i == 30:
                station.alarm.raise_alarm("simulator", 0.0)
        cut = wait_until(lambda: [e for e in voice_events(centre)
                                  if e["session"] == "s-two"
                                  and e["phase"] in ("preempted", "finished")],
                         15, "s-two cut off")[0]
        assert cut["phase"] == "preempted" and cut["lost"] == 1
        for packet in body[40:50]:  # the rest of a session cut off is not played
            centre.client.publish(f"pingan/v1/{T}/all/voice", packet, qos=0)
        time.sleep(1.5)
        # (an underrun may come between: the lost packet leaves a 120 ms hole)
        assert [e["phase"] for e in voice_events(centre) if e["session"] == "s-two"
                and e["phase"] != "underrun"] == ["started", "preempted"]
        x = np.fromfile(raw, dtype="<i2").astype(np.float32)[mark // 2:] / 32768
        assert runs(x, RATE, [700.0])[0][0] == 700.0  # it spoke before the siren

        # 4. Falling behind: 3 s of speech at once; it drops to its jitter buffer and
        # plays only the newest, so it never speaks seconds late.
        wait_until(lambda: station is not None and station.loudspeaker is not None
                   and station.loudspeaker.player.current is None, 20, "the siren over")
        burst = mouth.packets("s-three", mouth.tone_sequence((600.0,), tone_s=3.0))
        for packet in burst:
            centre.client.publish(f"pingan/v1/{T}/v001/voice", packet, qos=0)
        late = wait_until(lambda: [e for e in voice_events(centre)
                                   if e["session"] == "s-three"
                                   and e["phase"] == "finished"], 15, "s-three over")[0]
        assert late["dropped_ms"] >= 2000 and late["played_s"] <= 1.0, late
    finally:
        if station is not None:
            station.stop()
        centre.close()
        town.stop()
