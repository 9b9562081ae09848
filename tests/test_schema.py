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


def test_every_update_step_crosses_to_the_township():
    """Each `update.*` event the updater sends is in the published schema and passes the
    township's own check at its edge (the console's shipped copy), `update.waiting` with
    why the reboot waits; a reason in one language only is refused."""
    from edge.contract import events
    from pingan_centre.console import validate

    assert list(events.UPDATE_EVENTS) == [
        "update.offered", "update.downloading", "update.verified", "update.installed",
        "update.waiting", "update.rebooting", "update.committed", "update.rolled_back",
        "update.refused", "update.failed"]
    reason = events.text("报警未确认（乡镇尚未确认收到）",
                         "an alarm is open (not yet acknowledged by the township)")
    for kind, shape in events.UPDATE_EVENTS.items():
        sent = events.encode(shape(station="v001", township="t01", **events.stamp(),
                                   payload=events.UpdatePayload(
                                       version="0.2.0", running="0.1.0", cmd_id="up-1",
                                       code="alarm_open", reason=reason)))
        schema("event").validate(json.loads(sent))
        got = validate.check("event", sent, 65536)
        assert (got["type"], got["payload"]["reason"]) == (kind, {"zh": reason.zh,
                                                                 "en": reason.en})
        assert events.decode_event(sent).__struct_config__.tag == kind
    waiting = json.loads(sent.replace(b'"update.failed"', b'"update.waiting"'))
    assert waiting["type"] == "update.waiting"
    del waiting["payload"]["reason"]["en"]
    with pytest.raises(validate.Rejected):
        validate.check("event", json.dumps(waiting).encode(), 65536)
    waiting["type"] = "update.stalled"
    with pytest.raises(ValidationError):
        schema("event").validate(waiting)
