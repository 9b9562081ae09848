"""Cameras from the console (issue 23, item 8), with real parts: a `pingan-centre serve`
process on an SQLite file, a real Mosquitto, two real stations. c1's camera replays a
person walking in (the real detector sends camera.person with its snapshot); c2 has no
camera. The gallery shows c1's picture; disarming the village reaches both stations
(c1 disarms, c2 refuses and says why), arming c1 alone arms it; all audited, and only
for those allowed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from centre_helpers import Centre, Database, database, station
from conftest import wait_until
from test_camera import camera_section

from edge.station import Station
from pingan_sim.scenes import empty_scene, incident, write_sequence


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield from database("sqlite", tmp_path)


@pytest.fixture
def setup(tmp_path: Path, db: Database, broker: Any) -> Iterator[tuple[Centre, Station,
                                                                       Station]]:
    township = f"tc{uuid.uuid4().hex[:8]}"
    centre = Centre(tmp_path, db, broker.port, township,
                    villages={"c1": "东村", "c2": "东村"}).start()
    folder = write_sequence(tmp_path / "frames", incident(empty_scene()))
    c1 = station(tmp_path, broker.port, "c1", township, camera=camera_section(folder))
    c2 = station(tmp_path, broker.port, "c2", township)
    try:
        wait_until(lambda: db.rows("SELECT COUNT(*) FROM console_station WHERE online")[0][0]
                   == 2, 30, "both stations online at the centre")
        yield centre, c1, c2
    finally:
        c1.stop()
        c2.stop()
        centre.stop()


def results(db: Database, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    marks = ",".join("?" * len(ids))
    return {r[0]: r[1:] for r in db.rows(
        f"SELECT station_id, result_ok, result FROM console_command WHERE id IN ({marks}) "
        "AND result_at IS NOT NULL", *ids)}


def test_gallery_and_arming_from_the_console(
        setup: tuple[Centre, Station, Station], db: Database) -> None:
    centre, c1, c2 = setup
    assert c1.camera is not None and c2.camera is None
    tech = centre.session("tech")

    # The snapshot the station's detector sent, in the gallery and as a JPEG.
    (event_id,) = wait_until(lambda: [r[0] for r in db.rows(
        "SELECT id FROM console_event WHERE type = 'camera.person' AND station_id = 'c1'")],
        60, "camera.person from c1 at the centre")
    page = tech.get(f"{centre.url}/camera?id=c1", timeout=10)
    assert page.status_code == 200 and f"snapshot.jpg?event={event_id}" in page.text
    picture = tech.get(f"{centre.url}/camera/snapshot.jpg", params={"event": event_id},
                       timeout=10)
    assert picture.headers["Content-Type"] == "image/jpeg"
    assert picture.content[:2] == b"\xff\xd8"
    overview = tech.get(f"{centre.url}/camera", timeout=10).text
    assert 'href="/camera?id=c1"' in overview

    # Disarm the village for an hour: c1 disarms, c2 has no camera and says so.
    r = centre.post(tech, "/camera/command", action="disarm", target="village",
                    village="东村", hours="1")
    assert r.status_code == 200, r.text
    ids = r.json()["commands"]
    assert len(ids) == 2
    done = wait_until(lambda: (lambda got: got if len(got) == 2 else None)(
        results(db, ids)), 30, "both stations answered")
    assert done["c1"][0] == 1 and json.loads(done["c1"][1])["detail"]["armed"] is False
    assert done["c2"][0] == 0
    assert json.loads(done["c2"][1])["error"]["code"] == "invalid_command"
    assert c1.camera.arming.armed() is False
    shown = tech.get(f"{centre.url}/camera", cookies={"django_language": "en"},
                     timeout=10).text
    assert "disarmed" in shown and "the camera is not enabled at this station" in shown
    zh = tech.get(f"{centre.url}/camera", cookies={"django_language": "zh-hans"},
                  timeout=10).text
    assert "已撤防" in zh and "本站摄像头未启用" in zh

    # Arm c1 alone, until its schedule next changes.
    r = centre.post(tech, "/camera/command", action="arm", station="c1", hours="0")
    (arm_id,) = r.json()["commands"]
    wait_until(lambda: results(db, [arm_id]), 30, "c1 answered the arm")
    assert c1.camera.arming.armed() is True
    audited = db.rows("SELECT action, target, user FROM console_auditentry "
                      "WHERE action LIKE 'camera.%' ORDER BY id")
    assert audited == [("camera.disarm", "c1,c2", "tech"), ("camera.arm", "c1", "tech")]

    # Refused: a duty officer may not, bad hours, no station; nothing sent for them.
    officer = centre.session("officer")
    assert centre.post(officer, "/camera/command", action="arm", target="all").status_code \
        == 403
    assert centre.post(tech, "/camera/command", action="arm", target="all",
                       hours="999").status_code == 400
    assert centre.post(tech, "/camera/command", action="arm", target="ticked").status_code \
        == 400
    assert centre.post(tech, "/camera/command", action="explode", target="all").status_code \
        == 400
    assert db.rows("SELECT COUNT(*) FROM console_command WHERE cmd LIKE 'camera.%'")[0][0] \
        == 3
