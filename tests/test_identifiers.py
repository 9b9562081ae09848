"""Identifiers are matched in full: Python's `$` also matches before a trailing newline,
so `v001\\n` passed every `^…$` check (issue 9) and became a certificate CN and a
station.toml that does not parse. Each check below let it through before."""

from __future__ import annotations

import json

import pytest

from edge import config as config_mod
from edge.audio.clips import ClipError, ClipLibrary
from edge.config import ConfigError
from edge.contract import commands

GOOD = '[station]\nid = "{id}"\ntownship = "{township}"\n'


def test_station_and_township_ids_with_a_trailing_newline_are_refused():
    assert config_mod.parse(GOOD.format(id="v001", township="t01")).station.id == "v001"
    for station, township in (("v001\\n", "t01"), ("v001", "t01\\n"), ("v001\\r\\n", "t01")):
        with pytest.raises(ConfigError):
            config_mod.parse(GOOD.format(id=station, township=township))


def test_command_and_clip_ids_with_a_trailing_newline_are_refused(tmp_path):
    ok = {"cmd": "state.get", "id": "c-1"}
    assert commands.parse(json.dumps(ok).encode(), 4096).id == "c-1"
    with pytest.raises(commands.CommandRejected) as err:
        commands.parse(json.dumps({"cmd": "state.get", "id": "c-1\n"}).encode(), 4096)
    assert err.value.error.code == "invalid_command"
    with pytest.raises(commands.CommandRejected):
        commands.parse(json.dumps({"cmd": "clip.delete", "id": "c-2",
                                   "clip_id": "bell\n"}).encode(), 4096)
    # The library checks again (a clip id is a file name on the unit).
    library = ClipLibrary(tmp_path / "clips", 1 << 20, total_bytes=1 << 22, max_clips=4)
    assert library.delete("bell") is False
    with pytest.raises(ClipError):
        library.delete("bell\n")


def test_event_ids_are_uuid7_unique_and_in_creation_order() -> None:
    import uuid

    from edge.contract.events import new_event_id

    ids = [new_event_id() for _ in range(20_000)]  # more than one page of randomness
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    for event_id in ids[:: 997]:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id and parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
