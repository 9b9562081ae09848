"""bench/county.py's parts, small: light stations on the shipped broker and a real console.

Twenty stations with their own certificates, the township broker as shipped (TLS, the
ACL), `pingan-centre serve` on SQLite. A power cut leaves every connection half-open;
the stations come back, their backlog reaches the console once each, and the accounting
(`fleet.tally`) finds a station that never came back, a row stored twice and a row no
station sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from centre_helpers import Centre, Database
from conftest import wait_until, wait_while_progressing

from pingan_centre.broker import provision
from pingan_sim.fleet import Fleet, identities, tally
from pingan_sim.township import CENTRE, TOWNSHIP, TownshipBroker

STATIONS = 20
EVENTS = 5


@pytest.fixture
def county(tmp_path: Path) -> Iterator[tuple[Fleet, Database]]:
    broker = TownshipBroker(tmp_path / "broker")
    idents = identities(broker.town, [f"v{i:03d}" for i in range(STATIONS)],
                        tmp_path / "units")
    broker.start()
    db = Database("sqlite", tmp_path)
    centre = Centre(tmp_path, db, broker.plain_port, TOWNSHIP, broker={
        "host": "127.0.0.1", "port": broker.plain_port, "username": CENTRE,
        "password": broker.centre_password})
    fleet = Fleet.of(idents, "127.0.0.1", broker.tls_port, workers=3,
                     backoff=(0.05, 0.5))
    try:
        centre.start()
        fleet.start()
        yield fleet, db
    finally:
        try:
            fleet.stop()
        finally:
            try:
                centre.stop()
            finally:
                broker.stop()


def stored(db: Database) -> list[tuple[str, str, int]]:
    return [(str(i), str(s), int(q)) for i, s, q in
            db.rows("SELECT id, station_id, seq FROM console_event")]


def test_a_power_cut_loses_nothing_and_the_tally_sees_what_went_wrong(
        county: tuple[Fleet, Database]) -> None:
    fleet, db = county
    for st in fleet.stations:
        fleet.on(st)
    wait_until(lambda: fleet.online() == STATIONS, 30, "every station connected")
    wait_until(lambda: db.rows("SELECT COUNT(*) FROM console_station")[0][0] == STATIONS,
               30, "the console lists every station")

    for st in fleet.stations:
        fleet.cut(st, silent=True)
    wait_until(lambda: fleet.online() == 0, 10, "every station cut")
    for st in fleet.stations:
        for k in range(EVENTS):
            st.commit_kind("status" if k % 2 else "button.broadcast")
    left_out = fleet.stations[0]  # never comes back: its events stay on the unit
    for n, st in enumerate(fleet.stations[1:]):
        fleet.on(st, delay=n * 0.05)
    wait_until(lambda: fleet.online() == STATIONS - 1, 30, "the stations back")
    # A press while the backlog drains; its alarm gets a card.
    press = fleet.press(fleet.stations[1])
    want = (STATIONS - 1) * EVENTS + 1
    wait_while_progressing(lambda: len(stored(db)), lambda: len(stored(db)) >= want, 20,
                           "the backlog stored")
    wait_until(lambda: db.rows("SELECT COUNT(*) FROM console_alarm WHERE first_event = ?",
                               press.id)[0][0] == 1, 10, "the press's card")
    # Every station took over its own half-open session: no second connection needed.
    assert all(st.counters.connects == 2 for st in fleet.stations[1:])
    assert fleet.errors() == []
    assert fleet.totals().refused_publishes == 0  # the shipped ACL allows all they send

    rows = stored(db)
    result = tally(fleet.committed(), rows)
    assert len(result.lost) == EVENTS
    assert set(result.lost) == set(left_out.pending)
    assert result.twice == [] and result.unknown == []
    assert result.stored == want

    # The accounting itself: a row stored again under a new id, and one nobody sent.
    event_id, station, seq = rows[0]
    bad = tally(fleet.committed(), [*rows, ("copy-" + event_id, station, seq),
                                    ("nobody", "v999", 1)])
    assert bad.twice == [(station, seq)]
    assert bad.unknown == sorted(["copy-" + event_id, "nobody"])
    assert not bad.ok
    assert tally(fleet.committed(), [*rows, rows[1]]).twice == [rows[1][1:]]

    # The station that stayed away comes back: nothing lost any more.
    fleet.on(left_out)
    wait_while_progressing(lambda: len(stored(db)), lambda: len(stored(db)) >= want + EVENTS,
                           20, "the last station's backlog")
    assert tally(fleet.committed(), stored(db)).ok


def test_identities_are_the_township_tools_certificates(tmp_path: Path) -> None:
    town = provision.Township(tmp_path / "pingan")
    provision.init(town, TOWNSHIP, ["127.0.0.1"])
    first = identities(town, ["v001"], tmp_path / "units")
    key = first[0].key.read_bytes()
    again = identities(town, ["v001", "v002"], tmp_path / "units")
    assert again[0].key.read_bytes() == key  # cached: not issued again
    assert town.issued("v002").exists() and again[1].township == TOWNSHIP
