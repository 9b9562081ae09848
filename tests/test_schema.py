"""The published JSON Schemas are the code's shapes: regenerate, compare, and check that
they reject what the station would never send."""

from __future__ import annotations

import json

import pytest
from conftest import SCHEMA_DIR, schema
from jsonschema import ValidationError

from edge.contract import schema as schema_mod


@pytest.mark.parametrize("name", sorted(schema_mod.SCHEMAS))
def test_committed_schema_matches_code(name):
    # Compared as JSON values, not text: a checkout's line endings or indentation must not
    # fail it. Nothing in a schema is computed in floating point, so values are exact.
    generated = schema_mod.generate()[name]
    committed = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(generated)), "run: python -m edge.contract.schema"


GOOD_ALARM = {"type": "alarm.panic", "id": "01a2079b-5233-7000-9f2d-9c959f9ec0b7",
              "station": "v001", "township": "t01", "seq": 1, "priority": 0,
              "ts": "2026-11-23T08:52:29.363Z", "clock_synced": True,
              "payload": {"source": "button", "held_s": 0.3}}


def test_event_schema_accepts_good_and_rejects_bad():
    validator = schema("event")
    validator.validate(GOOD_ALARM)
    for bad in ({**GOOD_ALARM, "type": "alarm.fire"},
                {**GOOD_ALARM, "surprise": 1},
                {**GOOD_ALARM, "seq": -1},
                {k: v for k, v in GOOD_ALARM.items() if k != "id"},
                {**GOOD_ALARM, "payload": {"source": "button"}}):
        with pytest.raises(ValidationError):
            validator.validate(json.loads(json.dumps(bad)))


def test_command_schema_matches_parser():
    from edge.contract import commands

    validator = schema("command")
    good = {"cmd": "alarm.ack", "id": "c1", "event_id": "e1"}
    validator.validate(good)
    commands.parse(json.dumps(good).encode(), 1024)
    bad = {"cmd": "alarm.ack", "id": "c1"}
    with pytest.raises(ValidationError):
        validator.validate(bad)
    with pytest.raises(commands.CommandRejected):
        commands.parse(json.dumps(bad).encode(), 1024)
