"""Township commands arriving over MQTT: bad ones are answered with a clear error on
`…/cmd/result`, good ones act, and the station keeps serving whatever arrives."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import schema, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.unit.indicator import Mode

MAX = 16384
KNOWN = {"alarm.ack", "state.get", "broadcast.play", "broadcast.stop", "clip.put",
         "clip.delete", "schedule.set", "schedule.clear", "volume.set"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
command_like = st.fixed_dictionaries(
    {"cmd": st.sampled_from(["alarm.ack", "state.get", "broadcast.play", "", "ALARM.ACK"])
     | st.text(max_size=12)},
    optional={"event_id": json_values | st.text(max_size=80), "by": json_values,
              "extra": json_values},
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    command_like,
)


@pytest.fixture(scope="module")
def live(broker, tmp_path_factory):
    from conftest import Township, make_config

    from edge.station import Station

    station = Station(make_config(tmp_path_factory.mktemp("cmd"), broker.port))
    station.start()
    township = Township(broker.port)
    wait_until(lambda: station.uplink.connected)
    yield station, township
    township.close()
    station.stop()


_ids = itertools.count()


def send_and_wait(township, payload: bytes):  # type: ignore[no-untyped-def]
    before = len(township.on("/v001/cmd/result"))
    township.command("v001", payload)
    results = wait_until(lambda: township.on("/v001/cmd/result")[before:], 5,
                         f"a result for {payload[:80]!r}")
    assert len(results) == 1, results
    return results[0]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=payloads)
def test_any_payload_gets_exactly_one_clear_answer(live, payload):
    _station, township = live
    if isinstance(payload, dict):  # shaped like a command: give it a fresh id
        payload = json.dumps({**payload, "id": f"h{next(_ids)}"}).encode()
    result = send_and_wait(township, payload)
    schema("event").validate(result)
    answer = result["payload"]
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("cmd"), str) and \
            parsed["cmd"] in KNOWN:
        assert answer["ok"] or answer["error"]["code"] in {"invalid_command", "unknown_event",
                                                           "malformed_json", "audio_unavailable"}
    elif isinstance(parsed, dict) and isinstance(parsed.get("cmd"), str):
        assert answer["error"]["code"] == "unknown_command"
        assert answer["cmd_id"] == parsed["id"]
        assert "alarm.ack" in answer["error"]["message"]["en"], "says what is known"
    else:
        assert not answer["ok"]
        assert answer["error"]["code"] in {"malformed_json", "invalid_command",
                                           "unknown_command"}
    if not answer["ok"]:
        assert answer["error"]["message"]["zh"] and answer["error"]["message"]["en"]


@pytest.mark.parametrize(("payload", "code"), [
    (b"x" * (MAX + 1), "too_large"),
    (json.dumps({"cmd": "state.get", "id": "big", "by": "x" * MAX}).encode(), "too_large"),
    (b"[" * 5000 + b"]" * 5000, "malformed_json"),
    (b'{"cmd": "alarm.ack", "id": "bad id with spaces", "event_id": "e"}', "invalid_command"),
    (b'{"cmd": "alarm.ack", "id": "no-event"}', "invalid_command"),
    (b'{"cmd": "state.get", "id": "s", "surprise": 1}', "invalid_command"),
    (b'{"cmd": "alarm.ack", "id": "u", "event_id": "\xff\xfe"}', "malformed_json"),
    (b"", "malformed_json"),
    (b"null", "invalid_command"),
], ids=["oversized", "oversized-field", "deep-nesting", "bad-id", "missing-field",
        "unknown-field", "invalid-utf8", "empty", "null"])
def test_named_bad_commands(live, payload, code):
    _station, township = live
    answer = send_and_wait(township, payload)["payload"]
    assert answer["ok"] is False and answer["error"]["code"] == code


def test_still_serving_after_the_barrage(live):
    station, township = live
    alarm = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: alarm.id in {e["id"] for e in township.events()})
    result = send_and_wait(township, json.dumps(
        {"cmd": "alarm.ack", "id": "final-ack", "event_id": alarm.id}).encode())
    assert result["payload"]["ok"] is True
    assert station.alarm.indicator.mode is Mode.ACKNOWLEDGED
    # The same command delivered twice (QoS 1 may) acts once and is answered once.
    township.command("v001", {"cmd": "alarm.ack", "id": "final-ack", "event_id": alarm.id})
    before = len(township.on("/v001/cmd/result"))
    send_and_wait(township, json.dumps({"cmd": "state.get", "id": "after-dup"}).encode())
    ids = [r["payload"]["cmd_id"] for r in township.on("/v001/cmd/result")[before - 1:]]
    assert ids == ["final-ack", "after-dup"]
