"""The broadcasts pages in the console process (issue 23): composing checks what a station
would refuse, targets pick the right stations, each station's result comes from its own
`cmd.result` and `audio.playback` events as the real ingest stores them, stopping is sent
to each station and audited, and the pages are in one language each."""

from __future__ import annotations

import re
from typing import Any

import console_inproc as console
import pytest
from schema_strategies import encode
from test_console_language import offending, visible

T = console.TOWNSHIP


def state(station: str, online: bool = True) -> None:
    from django.utils import timezone
    console.feed([(f"pingan/v1/{T}/{station}/state", encode({
        "station": station, "township": T, "online": online, "version": "0.1.0",
        "ts": timezone.now().strftime("%Y-%m-%dT%H:%M:%S.000Z"), "clock_synced": True,
        "problems": [], "pending": 0}))])


_seq = iter(range(1000, 100000))


def said(station: str, suffix: str, kind: str, payload: dict[str, Any]) -> None:
    n = next(_seq)
    console.feed([(f"pingan/v1/{T}/{station}/{suffix}", encode({
        "type": kind, "id": f"e-{station}-{n}", "station": station, "township": T, "seq": n,
        "priority": 1, "ts": "2026-12-06T01:00:00.000Z", "clock_synced": True,
        "payload": payload}))])


def result(station: str, cmd_id: str, code: str = "") -> None:
    body: dict[str, Any] = {"cmd_id": cmd_id, "cmd": "broadcast.play", "ok": not code}
    if code:
        body["error"] = {"code": code, "message": {"zh": "静默时段，普通广播不播放",
                                                   "en": "quiet hours: normal broadcasts wait"}}
    else:
        body["detail"] = {"play_id": cmd_id, "playing_now": True}
    said(station, "cmd/result", "cmd.result", body)


def playback(station: str, cmd_id: str, *phases: str) -> None:
    for phase in phases:
        said(station, "events", "audio.playback", {
            "phase": phase, "play_id": cmd_id, "cmd_id": cmd_id, "origin": "township",
            "level": "normal", "sound": "text"})


@pytest.fixture(scope="module")
def night() -> list[str]:
    from test_console_language import seed
    data = seed()  # the language walk's township: alarms, stations v042–v045
    for st in ("v042", "v043", "v044"):
        state(st)
    state("v045", online=False)
    return data


def post(user: str, path: str, **data: Any) -> Any:
    return console.client(user, "zh-hans").post(path, data, HTTP_ACCEPT="application/json")


def send(target: str = "all", chosen: tuple[str, ...] = (), **fields: Any) -> str:
    """What the send view does once it has read the form (it needs the served centre's
    runtime for its broker link: tests/test_broadcast_system.py posts the real form)."""
    from django.utils import timezone

    from pingan_centre.console import broadcast
    from pingan_centre.console.link import UNLINKED
    return broadcast.send(target=target, chosen=chosen, by="officer", now=timezone.now(),
                          effects=UNLINKED, **fields)


def stop(bid: str) -> None:
    from django.utils import timezone

    from pingan_centre.console import broadcast
    from pingan_centre.console.link import UNLINKED
    broadcast.stop(bid, "officer", timezone.now(), UNLINKED)


def rows(client: Any, bid: str) -> dict[str, dict[str, Any]]:
    got = client.get(f"/broadcast/results?id={bid}").json()
    return {r["station"]: r for r in got["rows"]} | {"": got}


def test_a_broadcast_to_all_and_each_stations_result(night: list[str]) -> None:
    from pingan_centre.console.models import AuditEntry, Command

    bid = send(content="text", text="今晚八点在村委会开会", repeat=2, volume=0.8,
               priority="normal")
    plays = {c.station_id: c for c in Command.objects.filter(id__startswith=f"bc:{bid}:")}
    assert sorted(plays) == ["v042", "v043", "v044", "v045"]
    p = plays["v042"].payload
    assert (p["cmd"], p["text"], p["repeat"], p["volume"], p["priority"]) == (
        "broadcast.play", "今晚八点在村委会开会", 2, 0.8, "normal")
    assert not plays["v042"].sent  # no broker link in this process: shown as not sent
    # What the stations said, through the real ingest.
    result("v042", plays["v042"].id)
    playback("v042", plays["v042"].id, "started", "preempted", "started", "finished")
    result("v043", plays["v043"].id, "quiet_hours")
    result("v044", plays["v044"].id)
    playback("v044", plays["v044"].id, "started")
    Command.objects.filter(pk=plays["v045"].pk).update(sent=True)  # queued at the broker
    zh = console.client("officer", "zh-hans")
    got = rows(zh, bid)
    assert [(s, got[s]["result"], got[s]["code"]) for s in ("v042", "v043", "v044", "v045")
            ] == [("v042", "finished", ""), ("v043", "refused", "quiet_hours"),
                  ("v044", "started", ""), ("v045", "offline", "")]
    assert got["v042"]["steps"] == ["started", "preempted", "started", "finished"]
    assert got[""]["summary"] == "4 个站中 2 个已播放；1 个离线，1 个拒绝：静默时段"
    en = console.client("officer", "en")
    assert rows(en, bid)[""]["summary"] == "played at 2 of 4; 1 offline, 1 refused: quiet hours"
    page = en.get(f"/broadcast?id={bid}").content.decode()
    assert "cut off" in page and "quiet hours" in page

    # Stopped everywhere: one broadcast.stop per station, for its own play.
    stop(bid)
    stops = {c.station_id: c.payload for c in Command.objects.filter(
        id__startswith=f"bs:{bid}:")}
    assert {s: p["broadcast_id"] for s, p in stops.items()} == {
        s: c.id for s, c in plays.items()}
    playback("v044", plays["v044"].id, "stopped")
    got = rows(zh, bid)
    assert got["v044"]["result"] == "stopped" and got["v045"]["result"] == "stop_sent"
    assert got[""]["stopped"] is True
    from pingan_centre.console.lifecycle import NotAllowed
    with pytest.raises(NotAllowed, match=r"已停止|already stopped"):
        stop(bid)  # once
    actions = list(AuditEntry.objects.filter(target=f"broadcast:{bid}").values_list(
        "action", flat=True))
    assert sorted(actions) == ["broadcast.send", "broadcast.stop", "broadcast.stop_refused"]


def test_targets_groups_and_villages(night: list[str]) -> None:
    from pingan_centre.console.models import Command

    assert post("leader", "/groups/save", name="河边的村", stations=["v042", "v044"]
                ).status_code == 302
    bid = send(content="tone", tone="chime", target="group", chosen=("河边的村",))
    assert sorted(Command.objects.filter(id__startswith=f"bc:{bid}:").values_list(
        "station_id", flat=True)) == ["v042", "v044"]
    bid = send(content="tone", tone="chime", target="village", chosen=("西村",),
               priority="emergency")
    [play] = Command.objects.filter(id__startswith=f"bc:{bid}:")
    assert (play.station_id, play.payload["priority"]) == ("v043", "emergency")
    bid = send(content="tone", tone="siren", target="stations", chosen=("v043", "v045"))
    assert sorted(Command.objects.filter(id__startswith=f"bc:{bid}:").values_list(
        "station_id", flat=True)) == ["v043", "v045"]


def test_a_clip_goes_in_chunks_before_its_play(night: list[str]) -> None:
    import hashlib
    from base64 import b64decode

    from pingan_centre.console import broadcast
    from pingan_centre.console.models import Command

    data = bytes(range(256)) * 100  # 25,600 bytes: three chunks
    sent: list[tuple[str, dict[str, Any]]] = []

    class Recording:
        def send(self, topic: str, payload: dict[str, Any]) -> bool:
            sent.append((topic, payload))
            return True

        def changed(self) -> None:
            pass

    from django.utils import timezone
    bid = broadcast.send(content="clip", clip=data, clip_name="notice.wav",
                         clip_type="audio/wav", target="station", chosen=["v043"], by="officer",
                         now=timezone.now(), effects=Recording())
    assert [p["cmd"] for _t, p in sent] == ["clip.put"] * 3 + ["broadcast.play"]
    assert b"".join(b64decode(p["data"]) for _t, p in sent[:3]) == data
    assert {p["sha256"] for _t, p in sent[:3]} == {hashlib.sha256(data).hexdigest()}
    assert sent[3][1]["clip"] == sent[0][1]["clip_id"] == f"bc-{bid}"
    assert Command.objects.get(id=f"bc:{bid}:v043").sent
    # The recording as sent, to hear in the browser.
    zh = console.client("officer", "zh-hans")
    assert zh.get(f"/broadcast/clip?id={bid}").content == data


LATER = "2099-01-01T00:00:00+08:00"


@pytest.mark.parametrize(("fields", "why"), [
    ({"content": "text", "text": " "}, "not a broadcast a station would take"),
    ({"content": "text", "text": "x" * 2001}, "not a broadcast a station would take"),
    ({"content": "text", "text": "开会", "repeat": 99}, "not a broadcast a station would take"),
    ({"content": "tone", "tone": "bell"}, "not a broadcast a station would take"),
    ({"content": "clip"}, "choose a sound file"),
    ({"content": "sing"}, "choose text, a clip or a tone"),
    ({"content": "text", "text": "开会", "expires": "2020-01-01T00:00:00+08:00"},
     "already passed"),
    ({"content": "text", "text": "开会", "not_before": "2099-01-02T00:00:00+08:00",
      "expires": LATER}, "not_before is not before expires"),
    ({"content": "text", "text": "开会", "target": "group", "chosen": ("无此组",)},
     "no group named"),
    ({"content": "text", "text": "开会", "target": "station", "chosen": ("nope",)},
     "unknown station"),
    ({"content": "text", "text": "开会", "target": "village", "chosen": ("无此村",)},
     "no stations in that target"),
])
def test_bad_broadcasts_get_a_clear_refusal(night: list[str], fields: dict[str, Any],
                                            why: str) -> None:
    from datetime import datetime

    from django.utils import translation

    from pingan_centre.console import broadcast
    from pingan_centre.console.models import Broadcast
    for key in ("expires", "not_before"):
        if key in fields:
            fields = {**fields, key: datetime.fromisoformat(fields[key])}
    before = Broadcast.objects.count()
    with translation.override("en"), pytest.raises(broadcast.BadBroadcast, match=why):
        send(**fields)
    assert Broadcast.objects.count() == before


def test_only_those_allowed_send(night: list[str]) -> None:
    assert post("viewer", "/broadcasts/send", content="tone", tone="chime",
                target="all").status_code == 403
    assert post("officer", "/groups/save", name="x", stations=["v042"]).status_code == 403
    page = console.client("viewer", "zh-hans").get("/broadcasts").content.decode()
    assert 'id="compose"' not in page


@pytest.mark.parametrize("language", console.LANGUAGES)
def test_the_broadcast_pages_in_one_language(night: list[str], language: str) -> None:
    from pingan_centre.console.models import Broadcast
    bid = send(content="text", text="明天停水")
    pages = ["/broadcasts", *[f"/broadcast?id={b}" for b in Broadcast.objects.values_list(
        "id", flat=True)]]
    assert f"/broadcast?id={bid}" in pages
    data = [*night, "明天停水", "今晚八点在村委会开会", "河边的村", "静默时段，普通广播不播放",
            "quiet hours: normal broadcasts wait"]
    found = {}
    for user in ("admin", "officer", "viewer"):
        client = console.client(user, language)
        for page in pages:
            response = client.get(page)
            assert response.status_code == 200, page
            bad = offending(visible(response.content.decode()), language, data)
            if bad:
                found[f"{user} {page}"] = sorted(set(bad))
        got = client.get(f"/broadcast/results?id={bid}").json()
        bad = offending(visible(got["html"]), language, data)
        assert not bad and not re.search(
            r"[A-Za-z]{3}" if language != "en" else r"[\u4e00-\u9fff]", got["summary"])
    assert not found, found


def test_offline_stations_pending_until_they_return_or_it_expires(night: list[str]) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from pingan_centre.console.models import Broadcast, Command
    bid = send(content="tone", tone="chime", target="stations", chosen=("v043", "v045"),
               expires=timezone.now() + timedelta(minutes=10))
    Command.objects.filter(id__startswith=f"bc:{bid}:").update(sent=True)
    zh = console.client("officer", "zh-hans")
    got = rows(zh, bid)
    assert (got["v043"]["result"], got["v045"]["result"]) == ("sent", "offline")
    # v043 got it too late (its clock says): refused as expired, never played.
    said("v043", "cmd/result", "cmd.result", {
        "cmd_id": f"bc:{bid}:v043", "cmd": "broadcast.play", "ok": False, "error": {
            "code": "expired", "message": {"zh": "已过期", "en": "expired"}}})
    assert rows(zh, bid)["v043"]["result"] == "expired"
    # v045 never came back before the broadcast expired: it will refuse it when it does.
    Broadcast.objects.filter(pk=bid).update(expires=timezone.now() - timedelta(seconds=1))
    got = rows(zh, bid)
    assert got["v045"]["result"] == "expired"
    assert got[""]["summary"] == "2 个站中 0 个已播放；2 个已过期"
