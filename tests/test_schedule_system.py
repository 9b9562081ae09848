"""Schedules per station or group (issue 23 item 5), all real but the web server:
Mosquitto, three simulated stations as their own processes (loudspeakers on the null
sink), and the console in this process with its real ingest connected to the broker.

A schedule written as a rule ("工作日 07:00") is pushed to a saved group; each station
answers and reports what it keeps on its state. Then the stations are changed behind the
console's back (a `schedule.clear` sent straight to one, another given a different time
and a schedule of its own): the console shows each station's drift; pushing again
brings them back in sync, and the pages say so in either language."""

from __future__ import annotations

import dataclasses
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import console_inproc as console
import paho.mqtt.client as mqtt
import pytest
from conftest import Daemon, station_toml, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_console_language import offending, visible

T = console.TOWNSHIP
AUDIO = {"enabled": True, "output": "null", "sample_rate": 16000, "amp_warm_up_s": 0.0,
         "amp_idle_off_s": 0.1, "prompts": False}


def test_rules_read_back_in_either_language() -> None:
    console.setup()
    from django.utils import translation

    from pingan_centre.console import schedule
    cases = [(("daily", "7:00"), "0 7 * * *", "每天 07:00", "daily at 07:00"),
             (("workdays", "18:30"), "30 18 * * 1-5", "工作日 18:30", "weekdays at 18:30"),
             (("weekly", "06:05", ["5", "1", "3"]), "5 6 * * 1,3,5", "每周一、周三、周五 06:05",
              "every Mon, Wed, Fri at 06:05"),
             (("weekly", "09:00", ["0", "6"]), "0 9 * * 0,6", "周末 09:00", "weekends at 09:00"),
             (("cron", "", [], " 0  7 1 *  * "), "0 7 1 * *", "按定时表达式 0 7 1 * *",
              "by the cron expression 0 7 1 * *")]
    for args, cron, zh, en in cases:
        assert schedule.cron_for(*args[:3], cron=args[3] if len(args) > 3 else "") == cron
        with translation.override("zh-hans"):
            assert schedule.describe(cron) == zh
        with translation.override("en"):
            assert schedule.describe(cron) == en
    # An expert's cron that is a simple rule reads as one; the form gets it back.
    assert schedule.rule_of("30 18 * * 5,4,3,2,1") == schedule.Rule("workdays", "18:30")
    with translation.override("en"):
        for bad, why in [(("daily", "25:00"), "not a time of day"),
                         (("weekly", "07:00", []), "at least one day"),
                         (("cron", "", [], "0 7 * *"), "need 5 fields"),
                         (("cron", "", [], "0 7 * * 8"), "outside 0-7")]:
            with pytest.raises(schedule.BadSchedule, match=why):
                schedule.cron_for(*bad[:3], cron=bad[3] if len(bad) > 3 else "")


class Sim:
    def __init__(self, tmp: Path, port: int, name: str) -> None:
        self.name = name
        self.data = tmp / name
        self.config = tmp / f"{name}.toml"
        self.config.write_text(station_toml(self.data, port, station=name, audio=AUDIO)
                               .replace('township = "t01"', f'township = "{T}"', 1),
                               encoding="utf-8")
        self.daemon = Daemon(self.config, simulated=True)

    def stop(self) -> None:
        if self.daemon.proc.poll() is None:
            self.daemon.proc.send_signal(signal.SIGTERM)
            self.daemon.finish(20)


def behind_the_back(port: int, commands: list[tuple[str, dict[str, Any]]]) -> None:
    """Commands straight to stations, as a technician with the broker's password might."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for station, payload in commands:
            client.publish(f"pingan/v1/{T}/{station}/cmd", json.dumps(payload).encode(),
                           qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_schedule_pushed_to_a_group_drifts_and_comes_back(tmp_path: Path,
                                                             broker) -> None:  # type: ignore[no-untyped-def]
    console.setup()
    from django.conf import settings
    from django.utils import timezone

    from pingan_centre.console import schedule
    from pingan_centre.console.ingest import Ingest
    from pingan_centre.console.models import AuditEntry, Schedule, Station, StationGroup

    tag = uuid.uuid4().hex[:6]
    names = [f"sc{tag}-{n}" for n in (1, 2, 3)]
    ingest = Ingest(dataclasses.replace(settings.CENTRE, broker_port=broker.port,
                                        client_id=f"centre-{tag}", share_group=f"g{tag}"))
    ingest.start()
    sims = [Sim(tmp_path, broker.port, n) for n in names]
    try:
        assert ingest.connected.wait(10)

        def reported() -> dict[str, Any]:
            return dict(Station.objects.filter(name__in=names).values_list(
                "name", "schedules"))

        wait_until(lambda: reported() == {n: [] for n in names}, 60,
                   "three stations reporting no schedules")
        officer = console.client("officer", "zh-hans")
        one, two, three = names
        assert console.client("leader", "zh-hans").post("/groups/save", {
            "name": f"河边{tag}", "stations": [one, two]}).status_code == 302

        sid = schedule.save(name="早间通知", rule="workdays", time="07:00", content="text",
                            text="各位村民早上好，今天有雨，请注意安全。", repeat=2,
                            target="group", chosen=[f"河边{tag}"], by="officer",
                            now=timezone.now(), effects=ingest)
        s = Schedule.objects.get(pk=sid)
        assert s.cron == "0 7 * * 1-5"

        def sync() -> dict[str, tuple[str, str]]:
            return {r.station: (r.status, r.push) for r in schedule.sync(
                Schedule.objects.get(pk=sid))}

        wait_until(lambda: sync() == {one: ("in_sync", "accepted"),
                                      two: ("in_sync", "accepted")}, 30, "both in sync")
        assert reported()[three] == []  # not in the group: nothing sent to it
        page = officer.get(f"/schedule?id={sid}").content.decode()
        assert "工作日 07:00" in page and "2 个站中 2 个一致" in page
        assert "所有站点的定时广播都与平台一致" in officer.get("/schedules").content.decode()

        # Behind the console's back: cleared at one; another given a different time and
        # a schedule of its own.
        behind_the_back(broker.port, [
            (two, {"cmd": "schedule.clear", "id": f"hand-1-{tag}", "schedule_id": sid}),
            (one, {"cmd": "schedule.set", "id": f"hand-2-{tag}", "schedule_id": sid,
                   "cron": "0 8 * * 1-5", "text": "各位村民早上好，今天有雨，请注意安全。",
                   "repeat": 2}),
            (one, {"cmd": "schedule.set", "id": f"hand-3-{tag}", "schedule_id": "hand-made",
                   "cron": "0 12 * * *", "tone": "chime"})])

        def drift() -> dict[str, list[str]]:
            return {d.st.name: [*(f"{s.id} {st}" for s, st in d.differs), *d.extra]
                    for d in schedule.drift()}

        wait_until(lambda: drift() == {one: [f"{sid} time", "hand-made"],
                                       two: [f"{sid} missing"]}, 30, "the drift seen")
        assert sync() == {one: ("time", "accepted"), two: ("missing", "accepted")}
        # Names people gave (this console's other tests' too) are no one language's.
        data = ["officer", *Station.objects.values_list("village", flat=True),
                *Station.objects.values_list("label", flat=True),
                *StationGroup.objects.values_list("name", flat=True),
                *Schedule.objects.values_list("name", flat=True),
                *Schedule.objects.values_list("text", flat=True)]
        pages = {}
        for language in console.LANGUAGES:
            c = console.client("officer", language)
            pages[language] = [c.get(p).content.decode()
                               for p in ("/schedules", f"/schedule?id={sid}")]
            for html in pages[language]:
                assert not offending(visible(html), language, [d for d in data if d])
        listing, detail = pages["zh-hans"]
        assert f'id="d-{one}"' in listing and f'id="d-{two}"' in listing
        assert f'id="d-{three}"' not in listing
        assert "站点上的时间不同" in listing and "仅站点上有" in listing
        assert "站点缺少此定时广播" in listing and "重新下发" in listing
        assert "2 个站中 0 个一致" in detail and "重新下发到 2 个不一致的站点" in detail
        live = officer.get(f"/schedule/status?id={sid}").json()  # what the page redraws
        assert live["summary"] == "2 个站中 0 个一致" and f'id="r-{two}"' in live["html"]
        assert not offending(visible(live["html"]), "zh-hans", [d for d in data if d])
        assert "different time at the station" in pages["en"][0]

        # Push again: the one station's every difference, then the schedule's others.
        assert console.client("viewer", "zh-hans").post(
            "/schedules/push", {"station": one}).status_code == 403
        sent = schedule.push_again(station=one, by="officer", now=timezone.now(),
                                   effects=ingest)
        assert sent == [f"{one} {sid}", f"{one} -hand-made"]
        wait_until(lambda: drift() == {two: [f"{sid} missing"]}, 30, "one back in sync")
        assert schedule.push_again(schedule_id=sid, by="officer", now=timezone.now(),
                                   effects=ingest) == [f"{two} {sid}"]
        wait_until(lambda: drift() == {} and sync() == {
            one: ("in_sync", "accepted"), two: ("in_sync", "accepted")}, 30, "all in sync")
        assert [r["schedule_id"] for r in reported()[one]] == [sid]
        assert "2 个站中 2 个一致" in officer.get(f"/schedule?id={sid}").content.decode()

        # Deleted: cleared at every station it reached.
        schedule.delete(sid, "officer", timezone.now(), ingest)
        wait_until(lambda: reported() == {n: [] for n in names}, 30, "cleared everywhere")
        assert list(AuditEntry.objects.filter(target__in=[
            f"schedule:{sid}", f"station:{one}"]).order_by("at", "id").values_list(
            "action", flat=True)) == ["schedule.save", "schedule.push", "schedule.push",
                                      "schedule.delete"]
    finally:
        for sim in sims:
            sim.stop()
        ingest.close()


def test_a_recording_goes_first_and_a_station_dropped_is_cleared() -> None:
    """A recording goes to each station as `clip.put` chunks before its `schedule.set`;
    a change of target clears the schedule where it no longer goes."""
    import hashlib
    from base64 import b64decode

    from django.utils import timezone
    from schema_strategies import encode

    from pingan_centre.console import schedule
    from pingan_centre.console.models import Command
    console.setup()
    tag = uuid.uuid4().hex[:6]
    a, b = f"rc{tag}-a", f"rc{tag}-b"
    for st in (a, b):
        console.feed([(f"pingan/v1/{T}/{st}/state", encode({
            "station": st, "township": T, "online": True, "version": "0.1.0",
            "ts": timezone.now().strftime("%Y-%m-%dT%H:%M:%S.000Z"), "clock_synced": True,
            "problems": [], "schedules": []}))])
    sent: list[dict[str, Any]] = []

    class Recording:
        def send(self, topic: str, payload: dict[str, Any]) -> bool:
            sent.append({"to": topic.split("/")[3], **payload})
            return True

        def changed(self) -> None:
            pass

    data = bytes(range(256)) * 100  # three chunks
    sid = schedule.save(name="广播体操", rule="daily", time="06:30", content="clip", clip=data,
                        clip_name="exercise.wav", clip_type="audio/wav", target="stations",
                        chosen=[a, b], by="officer", now=timezone.now(), effects=Recording())
    for st in (a, b):
        mine = [p for p in sent if p["to"] == st]
        assert [p["cmd"] for p in mine] == ["clip.put"] * 3 + ["schedule.set"]
        assert b"".join(b64decode(p["data"]) for p in mine[:3]) == data
        assert mine[0]["sha256"] == hashlib.sha256(data).hexdigest()
        assert mine[3]["clip"] == mine[0]["clip_id"] == sid and mine[3]["cron"] == "30 6 * * *"
    assert Command.objects.get(id=f"ss:{sid}.1:{a}").sent
    sent.clear()
    # Only `a` from now on, at 06:45; the recording kept from before.
    schedule.save(schedule_id=sid, name="广播体操", rule="daily", time="06:45",
                  content="clip", target="stations", chosen=[a], by="officer",
                  now=timezone.now(), effects=Recording())
    assert [(p["to"], p["cmd"]) for p in sent] == [(a, "clip.put")] * 3 + [
        (a, "schedule.set"), (b, "schedule.clear")]
    assert sent[3]["cron"] == "45 6 * * *" and sent[4]["schedule_id"] == sid
