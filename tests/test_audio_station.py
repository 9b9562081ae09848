"""The loudspeaker in a running station, driven as the township and staff would: MQTT
commands, mock panic/broadcast pins; what was played read back from an ALSA file sink."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
import soundfile
from audio_helpers import Sink, runs
from conftest import make_config, schema, wait_until

from edge.audio import tones
from edge.audio.loudspeaker import Loudspeaker
from edge.audio.output import reinitialise
from edge.station import Station

RATE = 16000
AUDIO = {"enabled": True, "sample_rate": RATE, "amp_warm_up_s": 0.0, "amp_idle_off_s": 0.1,
         "siren_s": 1.0}


@pytest.fixture
def sink(tmp_path, monkeypatch):
    s = Sink(tmp_path, RATE)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(s.conf))
    reinitialise()
    yield s
    monkeypatch.undo()
    reinitialise()


def audio_events(township, **match):  # type: ignore[no-untyped-def]
    return [e["payload"] for e in township.unique_events() if e["type"] == "audio.playback"
            and all(e["payload"].get(k) == v for k, v in match.items())]


def result(township, cmd_id: str):  # type: ignore[no-untyped-def]
    return wait_until(lambda: [r["payload"] for r in township.on("/v001/cmd/result")
                               if r["payload"]["cmd_id"] == cmd_id], 10, cmd_id)[0]


def press_panic(station: Station) -> None:
    pin = station.pin_factory.pin(station.config.pins.panic)
    pin.drive_low()
    time.sleep(station.config.buttons.panic_hold_s + 0.05)
    pin.drive_high()


class HeldSiren(Loudspeaker):
    """The real loudspeaker stage, whose siren is asked for only once the test lets it go:
    the press thread waits in siren(), as a loaded unit's may before its siren, so the
    alarm's PUBACK can be made to come first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked = threading.Event()
        self.let_go = threading.Event()

    def siren(self) -> None:
        self.asked.set()
        self.let_go.wait(30)  # a failed test lets it go; this only bounds a broken one
        super().siren()


def delivered(caplog: pytest.LogCaptureFixture, alarm_id: str) -> bool:
    """The station has handled the alarm's PUBACK (LED, prompt decided, then this line)."""
    return any(r.getMessage() == "alarm.delivered" and getattr(r, "fields", {}).get("id")
               == alarm_id for r in list(caplog.records))


def siren_played(ls: Loudspeaker) -> int:
    """Samples of the siren handed to the audio device so far (0 if it is not playing)."""
    play = ls.player.current
    return play.position if play is not None and play.origin == "siren" else 0


def queued(ls: Loudspeaker, sound: str) -> bool:
    return any(p.sound == sound for p in ls.player.pending())


@pytest.mark.parametrize("puback_first", [False, True], ids=["as-it-comes", "puback-first"])
def test_panic_sounds_the_siren_then_tells_staff(broker, sink, start_station,
                                                township_factory, caplog, puback_first):
    caplog.set_level(logging.INFO, logger="edge.station")
    township = township_factory(broker.port)
    station = start_station(broker.port, {"make_loudspeaker": HeldSiren},
                            audio={**AUDIO, "siren_s": 30.0})
    ls = station.loudspeaker
    assert isinstance(ls, HeldSiren)
    if not puback_first:
        ls.let_go.set()  # the siren and the PUBACK in whichever order they come
    wait_until(lambda: station.uplink.connected)
    wait_until(lambda: ls.speech.ready("报警已发送") is not None, 30)
    try:
        press_panic(station)
        alarm = wait_until(lambda: [e for e in township.unique_events()
                                    if e["type"] == "alarm.panic"], 5)[0]
        # puback-first: the order a loaded unit can give (the outbox writer sends the
        # alarm itself, the press thread is slower to its siren).
        wait_until(lambda: delivered(caplog, alarm["id"]), 5, "the alarm's PUBACK")
    finally:
        ls.let_go.set()
    # "Alarm sent" waits behind the siren, which sounds one whole hi-lo cycle at least
    # before the township acknowledges.
    wait_until(lambda: queued(ls, "prompt:alarm_sent"), 5, "alarm_sent behind the siren")
    wait_until(lambda: siren_played(ls) >= RATE + ls.output.block, 10, "one siren cycle")
    township.command("v001", {"cmd": "alarm.ack", "id": "ack-1", "event_id": alarm["id"]})
    assert result(township, "ack-1")["ok"]
    wait_until(lambda: audio_events(township, sound="prompt:alarm_received", phase="finished"),
               10)
    # The siren sounded until the township acknowledged; "alarm sent" waited behind it.
    phases = [(e["sound"], e["phase"]) for e in audio_events(township)]
    assert phases == [("tone:siren", "started"), ("tone:siren", "stopped"),
                      ("prompt:alarm_sent", "started"), ("prompt:alarm_sent", "finished"),
                      ("prompt:alarm_received", "started"),
                      ("prompt:alarm_received", "finished")]
    for e in township.unique_events():
        schema("event").validate(e)
    lo, hi = tones.SIREN_HZ
    wait_until(lambda: len(sink.samples()) > RATE * 1.5, 5, "siren and both prompts played")
    heard = runs(sink.samples(), RATE, [lo, hi], tolerance=30)
    assert [f for f, _ in heard[:2]] == [hi, lo], heard


def test_alarm_sent_follows_its_siren_when_the_puback_comes_first(
        broker, sink, start_station, township_factory, caplog):
    """The township's PUBACK is handled before the press thread asks for the siren: staff
    still hear the siren first, then "alarm sent" whole (never started, then cut off)."""
    caplog.set_level(logging.INFO, logger="edge.station")
    township = township_factory(broker.port)
    station = start_station(broker.port, {"make_loudspeaker": HeldSiren}, audio=AUDIO)
    ls = station.loudspeaker
    assert isinstance(ls, HeldSiren)
    heard: list[tuple[str, str]] = []
    ls.player.add_listener(lambda phase, play, _d: heard.append((play.sound, phase)))
    wait_until(lambda: station.uplink.connected)
    wait_until(lambda: ls.speech.ready("报警已发送") is not None, 30)
    try:
        press_panic(station)
        assert ls.asked.wait(5), "the press thread asked for the siren"
        alarm = wait_until(lambda: [e for e in township.unique_events()
                                    if e["type"] == "alarm.panic"], 5)[0]
        wait_until(lambda: delivered(caplog, alarm["id"]), 5, "the alarm's PUBACK")
        assert station.alarm.indicator.mode.value == "delivered"
        # Delivered, its siren not yet asked for: nothing is queued, playing or heard.
        assert (ls.player.current, ls.player.pending(), heard) == (None, [], [])
    finally:
        ls.let_go.set()
    wait_until(lambda: ("prompt:alarm_sent", "finished") in heard, 15, "alarm_sent said")
    assert heard == [("tone:siren", "started"), ("tone:siren", "finished"),
                     ("prompt:alarm_sent", "started"), ("prompt:alarm_sent", "finished")]
    wait_until(lambda: audio_events(township, sound="prompt:alarm_sent", phase="finished"), 10)
    assert [(e["sound"], e["phase"]) for e in audio_events(township)] == heard


def test_silent_alarm_pages_the_township_and_says_nothing(broker, sink, start_station,
                                                          township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port, audio={**AUDIO, "siren": False})
    wait_until(lambda: station.uplink.connected)
    press_panic(station)
    alarm = wait_until(lambda: [e for e in township.unique_events()
                                if e["type"] == "alarm.panic"], 5)[0]
    township.command("v001", {"cmd": "alarm.ack", "id": "ack-s", "event_id": alarm["id"]})
    assert result(township, "ack-s")["ok"]
    time.sleep(0.3)
    assert audio_events(township) == []
    assert len(sink.samples()) == 0


def clip_wav(hz: float, seconds: float) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    buf = io.BytesIO()
    soundfile.write(buf, (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), RATE,
                    format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_township_uploads_a_clip_and_broadcasts_it_to_all(broker, sink, start_station,
                                                         township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port, audio=AUDIO)
    wait_until(lambda: station.uplink.connected)
    data = clip_wav(550, 0.3)
    parts = [data[i:i + 4000] for i in range(0, len(data), 4000)]
    everyone = "pingan/v1/t01/all/cmd"
    for i, part in enumerate(parts):
        township.command("v001", {
            "cmd": "clip.put", "id": f"up-{i}", "clip_id": "notice", "chunk": i,
            "chunks": len(parts), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "data": base64.b64encode(part).decode()}, topic=everyone)
    assert result(township, f"up-{len(parts) - 1}")["detail"]["complete"] is True
    township.command("v001", {"cmd": "broadcast.play", "id": "b-1", "clip": "notice",
                              "repeat": 2, "volume": 1.0}, topic=everyone)
    answer = result(township, "b-1")
    assert answer["ok"] and answer["detail"]["duration_s"] == pytest.approx(0.6)
    wait_until(lambda: audio_events(township, cmd_id="b-1", phase="finished"), 5)
    assert [e["phase"] for e in audio_events(township, cmd_id="b-1")] == ["started", "finished"]
    time.sleep(0.2)
    heard = runs(sink.samples(), RATE, [550.0])
    assert [f for f, _ in heard] == [550.0] and heard[0][1] == pytest.approx(0.6, abs=0.05)

    # Errors are answered, never crash; the station goes on.
    township.command("v001", {"cmd": "broadcast.play", "id": "b-2", "clip": "missing"})
    assert result(township, "b-2")["error"]["code"] == "unknown_clip"
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()
    township.command("v001", {"cmd": "broadcast.play", "id": "b-3", "tone": "chime",
                              "expires": past})
    assert result(township, "b-3")["error"]["code"] == "expired"
    township.command("v001", {"cmd": "schedule.set", "id": "s-1", "schedule_id": "m",
                              "cron": "61 7 * * *", "tone": "chime"})
    assert result(township, "s-1")["error"]["code"] == "invalid_command"
    township.command("v001", {"cmd": "schedule.clear", "id": "s-2", "schedule_id": "nope"})
    assert result(township, "s-2")["error"]["code"] == "unknown_schedule"
    township.command("v001", {"cmd": "clip.delete", "id": "d-1", "clip_id": "notice"})
    assert result(township, "d-1")["ok"]
    township.command("v001", {"cmd": "volume.set", "id": "v-1", "volume": 0.25})
    assert result(township, "v-1")["detail"] == {"volume": 0.25}
    assert station.loudspeaker.store.volume(0.8) == 0.25

    # A long broadcast is stopped by the township.
    township.command("v001", {"cmd": "broadcast.play", "id": "long", "tone": "chime",
                              "repeat": 20, "priority": "emergency"})
    wait_until(lambda: audio_events(township, cmd_id="long", phase="started"), 5)
    township.command("v001", {"cmd": "broadcast.stop", "id": "stop-1"})
    assert result(township, "stop-1")["detail"] == {"stopped": ["long"]}
    wait_until(lambda: audio_events(township, cmd_id="long", phase="stopped"), 5)


def test_quiet_hours_hold_normal_broadcasts_not_emergencies(broker, sink, start_station,
                                                           township_factory):
    township = township_factory(broker.port)
    start_station(broker.port, audio={**AUDIO, "quiet_start": "00:00", "quiet_end": "23:59",
                                      "timezone": "UTC"})
    if dt.datetime.now(dt.UTC).strftime("%H:%M") == "23:59":
        time.sleep(61)
    township.command("v001", {"cmd": "broadcast.play", "id": "q-1", "tone": "chime"})
    assert result(township, "q-1")["error"]["code"] == "quiet_hours"
    township.command("v001", {"cmd": "broadcast.play", "id": "q-2", "tone": "chime",
                              "priority": "emergency"})
    assert result(township, "q-2")["ok"]
    wait_until(lambda: audio_events(township, cmd_id="q-2", phase="finished"), 5)


def test_offline_broadcasts_stale_are_dropped_valid_are_played(broker, sink, tmp_path,
                                                             township_factory):
    township = township_factory(broker.port)
    config = make_config(tmp_path / "station", broker.port, audio=AUDIO)
    station = Station(config)
    station.start()
    wait_until(lambda: station.uplink.connected)
    station.stop()  # the link is down; the broker keeps the station's session
    now = dt.datetime.now(dt.UTC)
    township.command("v001", {"cmd": "broadcast.play", "id": "stale", "tone": "chime",
                              "expires": (now + dt.timedelta(seconds=0.5)).isoformat()})
    township.command("v001", {"cmd": "broadcast.play", "id": "valid", "tone": "chime",
                              "expires": (now + dt.timedelta(minutes=10)).isoformat()})
    time.sleep(0.7)
    station = Station(config)
    station.start()
    try:
        assert result(township, "stale")["error"]["code"] == "expired"
        assert result(township, "valid")["ok"]
        wait_until(lambda: audio_events(township, cmd_id="valid", phase="finished"), 5)
        assert audio_events(township, cmd_id="stale") == []
    finally:
        station.stop()


def test_missing_audio_device_is_on_the_state_topic_and_alarms_still_go(
        broker, sink, start_station, township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port, audio={**AUDIO, "device": "no-such-card"})
    wait_until(lambda: [s for s in township.on("/v001/state") if any(
        p["code"] == "audio_unavailable" and "no-such-card" in p["message"]["en"]
        for p in s["problems"])], 5, "audio_unavailable on the state topic")
    press_panic(station)
    wait_until(lambda: [e for e in township.unique_events() if e["type"] == "alarm.panic"], 5)
    wait_until(lambda: audio_events(township, origin="siren", phase="failed"), 5)
    township.command("v001", {"cmd": "broadcast.play", "id": "nodev", "tone": "chime"})
    answer = result(township, "nodev")
    assert answer["error"]["code"] == "audio_unavailable"
    assert "no-such-card" in answer["error"]["message"]["en"]
    assert station.alarm.indicator.mode.value in ("pending", "delivered")


def test_link_down_alarm_is_saved_and_staff_are_told(own_broker, sink, start_station):
    station = start_station(own_broker.port, audio=AUDIO)
    wait_until(lambda: station.uplink.connected)
    ls = station.loudspeaker
    wait_until(lambda: ls.speech.ready("网络中断，报警已保存，恢复后自动发送") is not None, 30)
    heard: list[tuple[str, str]] = []
    ls.player.add_listener(lambda phase, play, _d: heard.append((play.sound, phase)))
    own_broker.stop()
    wait_until(lambda: not station.uplink.connected)
    press_panic(station)
    wait_until(lambda: ("prompt:alarm_saved_link_down", "finished") in heard, 15)
    assert heard[:2] == [("tone:siren", "started"), ("tone:siren", "finished")]
    assert station.outbox.pending_ids("alarm.panic"), "the alarm waits in the outbox"


def test_unit_without_any_sound_card_runs_and_says_so(broker, tmp_path, township_factory):
    """The default audio config (output = "device", the default device) on a machine where
    ALSA has no device at all: PortAudio raises its own error type; the daemon must start,
    report audio_unavailable and still send alarms."""
    import os
    import signal

    from conftest import Daemon, station_toml

    from edge.unit.control import request

    config = tmp_path / "station.toml"
    config.write_text(station_toml(tmp_path / "data", broker.port,
                                   audio={"enabled": True, "output": "device", "device": ""},
                                   buttons={"panic_hold_s": 0.0}))
    township = township_factory(broker.port)
    # The machine's own ALSA setup: no sound card (other tests point ALSA at a file sink).
    saved = os.environ.pop("ALSA_CONFIG_PATH", None)
    try:
        daemon = Daemon(config, simulated=True)
    finally:
        if saved is not None:
            os.environ["ALSA_CONFIG_PATH"] = saved
    try:
        daemon.wait_logged("station.started")
        wait_until(lambda: [s for s in township.on("/v001/state") if any(
            p["code"] == "audio_unavailable" for p in s["problems"])], 10, "audio_unavailable")
        request(tmp_path / "data" / "control.sock", {"op": "press", "button": "panic"})
        wait_until(lambda: [e for e in township.unique_events() if e["type"] == "alarm.panic"],
                   10, "the alarm")
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0
