"""Duty screens' load time with 1,000 stations and 10,000 past alarms, against an empty
console in the same run.

What it measures
    Two consoles (`pingan-centre serve --no-ingest`, SQLite by default or
    `--database postgres`): one empty but for 5 open alarms, one with `--stations`
    stations in 50 villages and `--alarms` resolved alarms over the past year (each with
    its event and five transitions) plus the same 5 open alarms. Debian's chromium,
    headless, logged in, loads each page `--rounds` times; the figure is the navigation's
    loadEventEnd (request to fully loaded, ms), median. The server's own time is shown
    too (HTTP request to last byte, python-requests).

Run
    python3 bench/centre_load.py
    python3 bench/centre_load.py --database postgres
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from centre_common import PASSWORD, Centre, Db, browser, pg_available
from common import loadavg, machine_line
from selenium.webdriver.common.by import By

PAGES = ["/", "/stations", "/stats", "/stats?by=month", "/handover"]

POPULATE = """
import random
from datetime import timedelta
from django.utils import timezone
from pingan_centre.console.models import Alarm, Event, Station, Transition
random.seed(1)
now = timezone.now()
stations = [Station(name=f"v{{i:04d}}", township="t01", village=f"村{{i % 50:02d}}",
                    online=i % 37 != 0, last_seen=now, version="0.1.0", pending=0,
                    problems=[] if i % 53 else [{{"code": "audio_unavailable",
                    "message": {{"zh": "喇叭不可用", "en": "no loudspeaker"}}, "since": "x"}}])
            for i in range({stations})]
Station.objects.bulk_create(stations, batch_size=500)
alarms, events = [], []
for i in range({alarms}):
    st = stations[random.randrange(len(stations))]
    raised = now - timedelta(seconds=random.uniform(3600, 365 * 86400))
    a = Alarm(station=st, first_event=f"e{{i}}", state="resolved",
              outcome=random.choice(["genuine", "false", "drill", "test"]), raised_at=raised,
              acked_at=raised + timedelta(seconds=random.uniform(5, 120)),
              dispatched_at=raised + timedelta(seconds=random.uniform(60, 600)),
              on_scene_at=raised + timedelta(seconds=random.uniform(300, 1800)),
              resolved_at=raised + timedelta(seconds=random.uniform(1800, 7200)),
              ack_by="wang", dispatched_to="派出所")
    alarms.append(a)
Alarm.objects.bulk_create(alarms, batch_size=1000)
for a in Alarm.objects.all():
    events.append(Event(id=a.first_event, station_id=a.station_id, type="alarm.panic", seq=1,
                        priority=0, ts="x", received_at=a.raised_at, alarm=a,
                        payload={{"source": "button", "held_s": 0.1}}))
Event.objects.bulk_create(events, batch_size=1000)
steps = []
for a in Alarm.objects.all():
    for action, at in (("raise", a.raised_at), ("ack", a.acked_at),
                       ("dispatch", a.dispatched_at), ("on_scene", a.on_scene_at),
                       ("resolve", a.resolved_at)):
        steps.append(Transition(alarm=a, action=action, to_state=action, by="wang", at=at))
Transition.objects.bulk_create(steps, batch_size=2000)
print(json.dumps(Alarm.objects.count()))
"""

OPEN = """
from django.utils import timezone
from pingan_centre.console.models import Alarm, Station, Transition
st, _ = Station.objects.get_or_create(name="v0000", defaults={"township": "t01"})
for i in range(5):
    a = Alarm.objects.create(station=st, first_event=f"open{i}", raised_at=timezone.now(),
                             state=["new", "acknowledged", "dispatched", "on_scene", "new"][i])
    Transition.objects.create(alarm=a, action="raise", to_state="new", by="station",
                              at=timezone.now())
print("5")
"""


def measure(centre: Centre, tmp: Path, rounds: int) -> dict[str, tuple[float, float]]:
    driver = browser(tmp / f"profile-{uuid.uuid4().hex[:6]}")
    http = requests.Session()
    try:
        driver.get(f"{centre.url}/login/")
        driver.find_element(By.ID, "id_username").send_keys("officer")
        driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        http.get(f"{centre.url}/login/")
        http.post(f"{centre.url}/login/", data={"username": "officer", "password": PASSWORD,
                  "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        out = {}
        for page in PAGES:
            loads, serves = [], []
            for _ in range(rounds + 1):  # the first is a warm-up
                driver.get(f"{centre.url}{page}")
                ms = driver.execute_script(
                    "var n = performance.getEntriesByType('navigation')[0];"
                    "return n.loadEventEnd - n.startTime;")
                t = time.perf_counter()
                r = http.get(f"{centre.url}{page}")
                r.raise_for_status()
                serves.append((time.perf_counter() - t) * 1000)
                loads.append(float(ms))
            out[page] = (statistics.median(loads[1:]), statistics.median(serves[1:]))
        return out
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--alarms", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    if args.database == "postgres" and not pg_available():
        print("PostgreSQL is not reachable on 127.0.0.1:5432", file=sys.stderr)
        return 2
    load = loadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="centre-load-") as tmpdir:
        tmp = Path(tmpdir)
        for label in ("empty", "full"):
            db = Db(args.database, tmp)
            centre = Centre(tmp, db, 1, "t01", users={"officer": "duty_officer"})
            try:
                if label == "full":
                    t = time.perf_counter()
                    centre.python(POPULATE.format(stations=args.stations, alarms=args.alarms))
                    print(f"populated in {time.perf_counter() - t:.0f} s", file=sys.stderr)
                centre.python(OPEN)
                centre.start("serve", "--no-ingest")
                results[label] = measure(centre, tmp, args.rounds)
            finally:
                centre.stop()
                db.close()
    print(f"page load ({args.database}), median of {args.rounds}: browser loadEventEnd ms "
          f"(server ms) — empty vs {args.stations:,} stations + {args.alarms:,} past alarms")
    for page in PAGES:
        (e_load, e_srv), (f_load, f_srv) = results["empty"][page], results["full"][page]
        print(f"  {page:16s} empty {e_load:7.0f} ({e_srv:6.0f})   full {f_load:7.0f} "
              f"({f_srv:6.0f})   x{f_load / max(e_load, 1e-9):.1f}")
    print(machine_line(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
