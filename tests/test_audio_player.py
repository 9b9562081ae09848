"""The player through the real sounddevice/PortAudio path into an ALSA file sink: what
was actually played, read back by FFT - the siren, every preemption pair, queueing,
expiry, push-to-talk, and a missing device."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from audio_helpers import Sink, runs
from conftest import wait_until
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge.audio import tones
from edge.audio.loudspeaker import Loudspeaker
from edge.audio.output import Output, reinitialise
from edge.audio.player import WHEN_PREEMPTED, Level, OnPreempt, Play, Player
from edge.health import Health

RATE = 16000
# One frequency per level, so the recording says which level was sounding when.
HZ = {Level.PROMPT: 400.0, Level.SCHEDULED: 500.0, Level.NORMAL: 600.0, Level.PTT: 750.0,
      Level.EMERGENCY: 900.0, Level.SIREN: 1100.0}


def audio_config(**audio):  # type: ignore[no-untyped-def]
    values = {"sample_rate": RATE, "amp_warm_up_s": 0.0, "amp_idle_off_s": 0.1, **audio}
    body = "\n".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true")
                     .replace("False", "false") for k, v in values.items())
    return config_mod.parse(f'[station]\nid = "v001"\ntownship = "t01"\n[audio]\n{body}\n').audio


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    s = Sink(tmp_path_factory.mktemp("alsa"), RATE)
    mp.setenv("ALSA_CONFIG_PATH", str(s.conf))
    reinitialise()
    yield s
    mp.undo()
    reinitialise()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []
        self.lock = threading.Lock()

    def __call__(self, phase: str, play: Play, detail: dict[str, object]) -> None:
        with self.lock:
            self.events.append((phase, play.play_id, detail))

    def phases(self, play_id: str) -> list[str]:
        with self.lock:
            return [p for p, i, _ in self.events if i == play_id]


@pytest.fixture(scope="module")
def player(sink):
    p = Player(Output(audio_config()), None, lead_ms=40, idle_off_s=0.1,
               on_unavailable=lambda _problem: None)
    rec = Recorder()
    p.add_listener(rec)
    p.start()
    yield p, rec
    p.close()


def sine(level: Level, seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.5 * np.sin(2 * np.pi * HZ[level] * t)).astype(np.float32)


_n = itertools.count()


def play(level: Level, seconds: float, **kw) -> Play:  # type: ignore[no-untyped-def]
    return Play(f"{level.name.lower()}-{next(_n)}", level, "township", "test",
                samples=sine(level, seconds), **kw)


def heard(sink: Sink) -> list[tuple[float, float]]:
    return runs(sink.since_mark(), RATE, list(HZ.values()))


def idle(player: Player, sink: Sink | None = None) -> None:
    """The player is idle and its stream closed; with `sink`, what it wrote has landed."""
    wait_until(lambda: player.current is None and not player.pending()
               and not player.output_open, 10, "player idle, its stream closed")
    if sink is not None:
        sink.settle()


PAIRS = [(lo, hi) for lo, hi in itertools.combinations(sorted(Level), 2)]


@pytest.mark.parametrize(("low", "high"), PAIRS, ids=[f"{h.name}>{lo.name}" for lo, h in PAIRS])
def test_higher_preempts_lower_and_the_lower_follows_its_policy(sink, player, low, high):
    p, rec = player
    idle(p, sink)
    sink.set_mark()
    a, b = play(low, 0.3), play(high, 0.1)
    p.submit(a)
    wait_until(lambda: "started" in rec.phases(a.play_id), 5)
    time.sleep(0.08)
    p.submit(b)
    wait_until(lambda: "finished" in rec.phases(b.play_id), 5)
    idle(p, sink)
    got = heard(sink)
    policy = WHEN_PREEMPTED[low]
    assert [f for f, _ in got] == ([HZ[low], HZ[high]] + (
        [] if policy is OnPreempt.DROP else [HZ[low]])), got
    assert got[1][1] == pytest.approx(0.1, abs=0.04), "the higher one played whole"
    if policy is OnPreempt.RESTART:
        assert got[2][1] == pytest.approx(0.3, abs=0.04), "restarted from the beginning"
    elif policy is OnPreempt.RESUME:
        assert got[0][1] + got[2][1] == pytest.approx(0.3, abs=0.06), "resumed where cut"
    preempted = [d for ph, i, d in rec.events if i == a.play_id and ph == "preempted"]
    assert preempted == [{"by": b.play_id, "policy": policy.value}]


def test_equal_priority_queues_and_lower_waits(sink, player):
    p, rec = player
    idle(p, sink)
    sink.set_mark()
    first, second = play(Level.NORMAL, 0.2), play(Level.NORMAL, 0.2)
    second.samples = (second.samples * 0).astype(np.float32) + sine(Level.PTT, 0.2)  # distinct
    low = play(Level.SCHEDULED, 0.1)
    p.submit(first)
    p.submit(second)
    p.submit(low)
    wait_until(lambda: "finished" in rec.phases(low.play_id), 5)
    idle(p, sink)
    assert [f for f, _ in heard(sink)] == [HZ[Level.NORMAL], HZ[Level.PTT], HZ[Level.SCHEDULED]]
    assert "preempted" not in rec.phases(first.play_id)


def test_not_before_holds_a_play_back(sink, player):
    p, rec = player
    idle(p, sink)
    later = play(Level.EMERGENCY, 0.1, not_before=time.monotonic() + 0.3)
    submitted = time.monotonic()
    p.submit(later)
    p.submit(now := play(Level.NORMAL, 0.1))
    wait_until(lambda: "finished" in rec.phases(later.play_id), 5)
    assert later.first_sample_at is not None and now.first_sample_at is not None
    # Held back at least its 0.3 s; the other one played meanwhile. An upper bound on the
    # other's start would only measure the machine's load.
    assert later.first_sample_at - submitted >= 0.3
    assert now.first_sample_at < later.first_sample_at


def test_a_play_that_expires_while_queued_is_skipped_not_played(sink, player):
    p, rec = player
    idle(p, sink)
    sink.set_mark()
    long = play(Level.EMERGENCY, 0.4)
    stale = play(Level.NORMAL, 0.2, expires=time.monotonic() + 0.15)
    p.submit(long)
    p.submit(stale)
    wait_until(lambda: "skipped" in rec.phases(stale.play_id), 5)
    idle(p, sink)
    assert [f for f, _ in heard(sink)] == [HZ[Level.EMERGENCY]]
    assert rec.phases(stale.play_id) == ["skipped"]


@pytest.fixture
def loudspeaker(sink, tmp_path):
    made = []

    def make(now=None, **audio):  # type: ignore[no-untyped-def]
        health, events = Health(), []
        factory = MockFactory()
        ls = Loudspeaker(audio_config(**audio), tmp_path, pin_factory=factory, amp_pin=23,
                         health=health, emit=events.append,
                         **({"now": now} if now else {}))
        ls.start()
        made.append((ls, factory))
        return ls, health, events, factory

    yield make
    for ls, factory in made:
        ls.close()
        factory.close()


def test_siren_is_the_hi_lo_tone_and_the_amplifier_follows_it(sink, player, loudspeaker):
    idle(player[0], sink)
    sink.set_mark()
    ls, _health, events, factory = loudspeaker(siren_s=2)
    relay = factory.pin(23)
    ls.siren()
    wait_until(lambda: relay.state, 2, "amplifier on")
    ls.siren()  # a second press renews the siren, it does not queue another
    wait_until(lambda: [e for e in events if e.phase == "finished"], 5)
    wait_until(lambda: not relay.state, 2, "amplifier off when idle")
    lo, hi = tones.SIREN_HZ
    got = runs(sink.since_mark(), RATE, [lo, hi], tolerance=30)
    assert [f for f, _ in got] == [hi, lo, hi, lo]
    assert all(d == pytest.approx(0.5, abs=0.05) for _, d in got)
    assert [e.phase for e in events] == ["started", "finished"]
    assert events[0].origin == "siren" and events[0].level == "siren"


def test_push_to_talk_routes_the_microphone_between_chimes(sink, player, loudspeaker):
    idle(player[0], sink)
    sink.set_mark()
    ls, _health, events, _factory = loudspeaker()
    ls.ptt_press()
    wait_until(lambda: [e for e in events if e.phase == "started"], 5)
    time.sleep(1.3)  # chime (0.8 s), then the microphone
    ls.ptt_release()
    wait_until(lambda: [e for e in events if e.phase == "finished"], 5)
    time.sleep(0.2)
    got = [f for f, d in runs(sink.since_mark(), RATE, [*tones.CHIME_HZ, 700.0])]
    assert got == [880.0, 660.0, 700.0, 880.0, 660.0]


def test_push_to_talk_released_behind_the_siren_says_nothing(sink, player, loudspeaker):
    idle(player[0], sink)
    ls, _health, events, _factory = loudspeaker(siren_s=5)
    ls.siren()
    wait_until(lambda: events, 5, "siren started")
    ls.ptt_press()
    ls.ptt_release()
    sink.set_mark()
    ls.silence_siren()
    wait_until(lambda: [e for e in events if e.origin == "ptt"], 5)
    idle(ls.player)
    assert [(e.origin, e.phase) for e in events] == [
        ("siren", "started"), ("siren", "stopped"), ("ptt", "skipped")]
    assert runs(sink.since_mark(), RATE, list(tones.CHIME_HZ)) == []


def test_a_missing_device_is_a_clear_problem_and_plays_fail_cleanly(sink, loudspeaker):
    ls, health, events, _factory = loudspeaker(device="no-such-card")
    problems = {p.code: p for p in health.problems()}
    assert "no-such-card" in problems["audio_unavailable"].message.en
    ls.siren()
    wait_until(lambda: [e for e in events if e.phase == "failed"], 5)
    assert events[-1].reason is not None and "no-such-card" in events[-1].reason.en
    assert ls.player.current is None


def test_staff_prompts_wait_behind_the_siren_once_not_per_press(sink, player, loudspeaker):
    idle(player[0], sink)
    ls, _health, events, _factory = loudspeaker(siren_s=1)
    ls._render_prompts()  # what start() does in the background, done here to wait for it
    ls.siren()
    wait_until(lambda: events, 5, "siren started")
    for _ in range(5):  # five presses delivered while the siren sounds
        ls.siren()
        ls.prompt("alarm_sent")
    assert [p.sound for p in ls.player.pending()] == ["prompt:alarm_sent"]
    ls.silence_siren()
    wait_until(lambda: [e for e in events if e.sound == "prompt:alarm_sent"
                        and e.phase == "finished"], 10)
    assert [(e.sound, e.phase) for e in events] == [
        ("tone:siren", "started"), ("tone:siren", "stopped"),
        ("prompt:alarm_sent", "started"), ("prompt:alarm_sent", "finished")]


def test_schedules_fire_on_the_injected_clock_and_keep_quiet_hours(sink, player, loudspeaker):
    import datetime as dt

    from edge.contract.commands import ScheduleSet
    from edge.link.dispatch import Handlers

    idle(player[0], sink)
    sink.set_mark()
    clock = [dt.datetime(2026, 11, 23, 13, 59, 58, tzinfo=dt.UTC)]  # 21:59:58 in Shanghai
    ls, _health, events, _factory = loudspeaker(now=lambda: clock[0], quiet_start="22:00",
                                                quiet_end="06:00")
    ls.scheduler.close()  # the test drives the clock; no background firing
    handlers = Handlers()
    ls.register(handlers)
    handlers(ScheduleSet(id="s1", schedule_id="chime", cron="* * * * *", tone="chime"))
    assert ls.scheduler.run_due() == ["chime"]  # 21:59: before quiet hours, it plays
    wait_until(lambda: [e for e in events if e.phase == "finished"], 5)
    clock[0] += dt.timedelta(minutes=1)  # 22:00: quiet
    assert ls.scheduler.run_due() == ["chime"]
    assert [(e.schedule_id, e.phase) for e in events] == [
        ("chime", "started"), ("chime", "finished"), ("chime", "skipped")]
    assert events[-1].reason is not None and "quiet" in events[-1].reason.en
    idle(player[0], sink)
    assert [f for f, _ in runs(sink.since_mark(), RATE, list(tones.CHIME_HZ))] == [880.0, 660.0]
