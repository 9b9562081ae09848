"""The clip library in the console process (issue 23 item 4): an upload is checked with
the stations' own decoder, the chunks go out a window at a time as the real ingest
stores each station's answers, an interrupted or stalled upload starts again from chunk 0
(answers to the old attempt ignored), a refusal fails that station's copy with its reason,
what a station reports in its state wins when it is newer, and a broadcast of a library
clip plays it by id where it is held and after it arrives elsewhere.

The runs' chunks are what an `Effects` records: the ingest's own storing code, handed
one that keeps what it would publish (tests/test_clip_library.py runs it all on a real
broker)."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from typing import Any

import console_inproc as console
import numpy as np
import pytest
import soundfile
from schema_strategies import encode

T = console.TOWNSHIP


class Sent:
    """An Effects that keeps what would be published (topic, payload)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def send(self, topic: str, payload: dict[str, Any]) -> bool:
        self.items.append((topic, payload))
        return True

    def changed(self) -> None:
        pass

    def ids(self, station: str = "") -> list[str]:
        return [p["id"] for t, p in self.items if t.endswith(f"/{station}/cmd") or not station]

    def clear(self) -> None:
        self.items.clear()


def recording(seconds: float, fmt: str = "WAV", hz: float = 440) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 8000,
                    format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def township() -> Any:
    from test_console_language import seed
    seed()
    from django.conf import settings

    from pingan_centre.console.ingest import Ingest

    class Recording(Ingest):  # the real ingest; what it would publish is kept
        def __init__(self) -> None:
            super().__init__(settings.CENTRE)
            self.sent = Sent()

        def send(self, topic: str, payload: dict[str, Any]) -> bool:
            return self.sent.send(topic, payload)

    return Recording()


def state(ingest: Any, station: str, clips: dict[str, str] | None = None,
          online: bool = True) -> None:
    from django.utils import timezone
    body: dict[str, Any] = {
        "station": station, "township": T, "online": online, "version": "0.1.0",
        "ts": timezone.now().strftime("%Y-%m-%dT%H:%M:%S.000Z"), "clock_synced": True,
        "problems": [], "pending": 0}
    if clips is not None:
        body["clips"] = clips
    ingest._store([(f"pingan/v1/{T}/{station}/state", encode(body), 0, 0)])


_seq = iter(range(5000, 10**6))


def answer(ingest: Any, station: str, cmd_id: str, *, code: str = "",
           complete: bool = False) -> None:
    n = next(_seq)
    body: dict[str, Any] = {"cmd_id": cmd_id, "cmd": "clip.put", "ok": not code}
    if code:
        body["error"] = {"code": code, "message": {"zh": "本站片段已满，请先删除不用的片段",
                                                   "en": "the clip library is full"}}
    else:
        body["detail"] = {"complete": complete}
    ingest._store([(f"pingan/v1/{T}/{station}/cmd/result", encode({
        "type": "cmd.result", "id": f"e-{station}-{n}", "station": station, "township": T,
        "seq": n, "priority": 1, "ts": "2026-12-06T01:00:00.000Z", "clock_synced": True,
        "payload": body}), 0, 0)])


def add(data: bytes, name: str = "通知") -> Any:
    from django.utils import timezone

    from pingan_centre.console import cliplib
    return cliplib.add(data, name=name, filename="n.wav", content_type="audio/wav",
                       by="officer", now=timezone.now())


def copies(cid: str) -> dict[str, tuple[str, int, int]]:
    from pingan_centre.console import cliplib
    from pingan_centre.console.models import Station
    [rows] = [r for c, r in cliplib.library(list(Station.objects.all())) if c.id == cid]
    return {h.station: (h.status, h.acked, h.chunks) for h in rows}


def test_an_upload_is_checked_with_the_stations_decoder(township: Any) -> None:
    from django.utils import translation

    from pingan_centre.console import cliplib
    with translation.override("zh-hans"):
        for data, words in ((b"", "请选择"), (b"RIFF" + bytes(4000), "站点无法播放此文件"),
                            (recording(0.3, "AIFF"), "不接受 AIFF 文件"),
                            (bytes(cliplib.MAX_BYTES + 1), "站点最多接收")):
            with pytest.raises(cliplib.BadClip, match=words):
                add(data)
    mp3 = add(recording(2, "MP3"), "喇叭测试")
    assert (mp3.format, mp3.duration_s) == ("MP3", pytest.approx(2, abs=0.1))
    assert add(recording(2, "MP3")).pk == mp3.pk, "the same file is the same clip"


def test_chunks_go_a_window_at_a_time_and_an_interrupted_upload_restarts(
        township: Any) -> None:
    from django.utils import timezone

    from pingan_centre.console import cliplib
    from pingan_centre.console.models import ClipCopy, Station
    data = recording(3)  # 48 KB: 5 chunks
    clip = add(data)
    n = clip.chunks
    assert n == 5 and cliplib.WINDOW >= 4
    sent = township.sent
    sent.clear()
    cliplib.distribute(clip, Station.objects.filter(name__in=["v042", "v043"]),
                       by="officer", now=timezone.now(), effects=township)
    first = [f"cl:{clip.id}:1:{i}" for i in range(n)]
    assert sent.ids("v042") == first  # within the window: all of them
    window_clip = add(recording(6, hz=500))  # 96 KB: 9 chunks, one past the window
    sent.clear()
    cliplib.distribute(window_clip, Station.objects.filter(name="v044"), by="officer",
                       now=timezone.now(), effects=township)
    assert sent.ids("v044") == [f"cl:{window_clip.id}:1:{i}" for i in range(8)]
    sent.clear()
    answer(township, "v044", f"cl:{window_clip.id}:1:0")
    assert sent.ids("v044") == [f"cl:{window_clip.id}:1:8"], "one answered, one more sent"
    assert copies(window_clip.id)["v044"] == ("partial", 1, 9)

    # v042 restarts after chunk 1: its next answer says so, the clip goes again.
    sent.clear()
    answer(township, "v042", first[0])
    answer(township, "v042", first[1])
    answer(township, "v042", first[2], code="clip_interrupted")
    second = [f"cl:{clip.id}:2:{i}" for i in range(n)]
    assert sent.ids("v042") == second
    assert copies(clip.id)["v042"] == ("partial", 0, 5)
    # Answers to the first attempt still on their way change nothing.
    sent.clear()
    answer(township, "v042", first[3], code="clip_interrupted")
    answer(township, "v042", first[4])
    assert sent.ids() == [] and copies(clip.id)["v042"] == ("partial", 0, 5)
    for i in range(n):
        answer(township, "v042", second[i], complete=i == n - 1)
    assert copies(clip.id)["v042"] == ("complete", 5, 5)

    # v043 refuses (its library full): failed, with its reason on the page.
    answer(township, "v043", first[0], code="clip_rejected")
    assert copies(clip.id)["v043"][0] == "failed"
    page = console.client("officer", "zh-hans").get("/clips").content.decode()
    row = re.search(rf'<tr id="cp-{clip.id}-v043".*?</tr>', page, re.S)
    assert row and "本站片段已满" in row.group(0) and "发送失败" in row.group(0)
    assert ClipCopy.objects.get(clip=clip, station="v043").restarts == 0


def test_a_stalled_upload_restarts_once_the_station_is_online(township: Any) -> None:
    from django.utils import timezone

    from pingan_centre.console import cliplib
    from pingan_centre.console.models import ClipCopy, Station
    clip = add(recording(1.5, hz=700))
    now = timezone.now()
    cliplib.distribute(clip, Station.objects.filter(name="v045"), by="officer", now=now,
                       effects=township)
    ClipCopy.objects.filter(clip=clip).update(updated_at=now - timedelta(seconds=100))
    state(township, "v045", online=False)
    township.sent.clear()
    cliplib.tick(now + timedelta(seconds=1), township)
    assert township.sent.ids("v045") == [], "offline: the broker keeps its chunks"
    state(township, "v045")
    back = Station.objects.get(name="v045").state_at
    assert back is not None
    cliplib.tick(back + timedelta(seconds=cliplib.STALL_S - 5), township)
    assert township.sent.ids("v045") == [], "just back: its answers may be on the way"
    cliplib.tick(back + timedelta(seconds=cliplib.STALL_S + 1), township)
    assert township.sent.ids("v045")[0] == f"cl:{clip.id}:2:0"
    assert ClipCopy.objects.get(clip=clip).restarts == 1


def test_what_a_station_reports_wins_when_newer(township: Any) -> None:
    from pingan_centre.console.models import Clip
    clip = Clip.objects.filter(name="通知").order_by("created_at").first()
    assert clip is not None and copies(clip.id)["v042"][0] == "complete"
    state(township, "v042", clips={})  # its library, reported after: without the clip
    assert copies(clip.id)["v042"][0] == "missing"
    state(township, "v044", clips={clip.id: clip.sha256[:16]})  # one the console never sent
    assert copies(clip.id)["v044"] == ("complete", 5, 5)


def test_a_broadcast_plays_a_held_clip_by_id_and_sends_it_first_elsewhere(
        township: Any) -> None:
    from django.utils import timezone

    from pingan_centre.console import broadcast
    from pingan_centre.console.models import Clip, Command
    clip = Clip.objects.filter(name="通知").order_by("created_at").first()
    assert clip is not None
    state(township, "v043", clips={clip.id: clip.sha256[:16]})
    state(township, "v042", clips={})
    township.sent.clear()
    bid = broadcast.send(content="library", library_clip=clip.id, target="stations",
                         chosen=["v042", "v043"], by="officer", now=timezone.now(),
                         effects=township)
    plays = {c.station_id: c for c in Command.objects.filter(id__startswith=f"bc:{bid}:")}
    assert plays["v043"].sent and not plays["v042"].sent
    assert township.sent.ids("v043") == [plays["v043"].id], "held: the play alone"
    put = [i for i in township.sent.ids("v042") if i.startswith("cl:")]
    assert len(put) == clip.chunks and plays["v042"].payload["clip"] == clip.id
    got = console.client("officer", "zh-hans").get(f"/broadcast/results?id={bid}").json()
    assert {r["station"]: r["result"] for r in got["rows"]}["v042"] == "clip_first"
    township.sent.clear()
    for i, cmd_id in enumerate(put):
        answer(township, "v042", cmd_id, complete=i == len(put) - 1)
    assert township.sent.ids("v042") == [plays["v042"].id], "whole: now the play"
    assert Command.objects.get(pk=plays["v042"].pk).sent

    # A broadcast stopped before the clip arrived is not played when it does.
    state(township, "v044", clips={})
    bid = broadcast.send(content="library", library_clip=clip.id, target="station",
                         chosen=["v044"], by="officer", now=timezone.now(), effects=township)
    broadcast.stop(bid, "officer", timezone.now(), township)
    put = [p["id"] for t, p in township.sent.items if p["id"].startswith(f"cl:{clip.id}")
           and t.endswith("/v044/cmd")]
    township.sent.clear()
    for i, cmd_id in enumerate(put[-clip.chunks:]):
        answer(township, "v044", cmd_id, complete=i == clip.chunks - 1)
    assert not [i for i in township.sent.ids("v044") if i.startswith("bc:")]
    with pytest.raises(broadcast.BadBroadcast):
        broadcast.send(content="library", library_clip="lib-000000000000", target="all",
                       by="officer", now=timezone.now(), effects=township)
    # The library's recording uploaded again with a broadcast: played from the library.
    township.sent.clear()
    bid = broadcast.send(content="clip", clip=bytes(Clip.objects.get(pk=clip.pk).data),
                         clip_name="again.wav", target="station", chosen=["v043"],
                         by="officer", now=timezone.now(), effects=township)
    assert township.sent.ids("v043") == [f"bc:{bid}:v043"]
    assert Command.objects.get(pk=f"bc:{bid}:v043").payload["clip"] == clip.id


def test_a_recording_leaves_the_library_only_when_no_station_holds_it(
        township: Any) -> None:
    from pingan_centre.console.models import AuditEntry, Clip
    held_one = Clip.objects.filter(name="通知").order_by("created_at").first()
    assert held_one is not None
    officer = console.client("officer", "zh-hans")
    r = officer.post("/clips/remove", {"clip": held_one.id})
    assert r.status_code == 400 and "请先从这些站点删除" in r.content.decode()
    assert Clip.objects.filter(pk=held_one.pk).exists()
    unsent = add(recording(0.5, hz=900), "未发送")
    assert console.client("viewer", "zh-hans").post(
        "/clips/remove", {"clip": unsent.id}).status_code == 403
    assert officer.post("/clips/remove", {"clip": unsent.id}).status_code == 302
    assert not Clip.objects.filter(pk=unsent.pk).exists()
    assert AuditEntry.objects.filter(action="clip.remove", target=f"clip:{unsent.id}").exists()
