"""bench/broadcast.py's light stations answer a broadcast as a unit does: through the
township broker as shipped, each command validated by the unit's own parser and acted on
once, a `cmd.result` with the unit's detail, `audio.playback` started and finished (or
stopped), refusals with the unit's codes; every message valid against the published
event schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import schema, wait_until

from pingan_sim.fleet import Fleet, identities
from pingan_sim.township import CENTRE, TOWNSHIP, Client, TownshipBroker


def test_a_light_station_answers_a_broadcast_like_a_unit(tmp_path: Path) -> None:
    broker = TownshipBroker(tmp_path / "broker")
    idents = identities(broker.town, ["v000", "v001"], tmp_path / "units")
    broker.start()
    fleet = Fleet.of(idents, "127.0.0.1", broker.tls_port, workers=1, play_s=0.2)
    centre = Client("centre-test")
    try:
        assert centre.connect(broker.plain_port, CENTRE, broker.centre_password)
        centre.subscribe(f"pingan/v1/{TOWNSHIP}/+/cmd/result", f"pingan/v1/{TOWNSHIP}/+/events")
        fleet.start()
        for st in fleet.stations:
            fleet.on(st)
        wait_until(lambda: fleet.online() == 2, 20, "both stations connected")

        def send(station: str, payload: dict[str, Any] | bytes) -> None:
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            assert not centre.publish(f"pingan/v1/{TOWNSHIP}/{station}/cmd", body).is_failure

        play = {"cmd": "broadcast.play", "id": "bc:1:v000", "tone": "chime", "repeat": 2}
        send("v000", play)
        send("v000", play)  # delivered twice: acted on once
        send("v001", {"cmd": "broadcast.play", "id": "bc:2:v001", "text": "开会",
                      "expires": "2020-01-01T00:00:00+08:00"})
        send("v001", b"{not json")
        send("v001", {"cmd": "broadcast.play", "id": "bc:3:v001", "text": "开会",
                      "repeat": 50, "priority": "emergency"})

        def said(station: str) -> list[dict[str, Any]]:
            return [json.loads(body) for topic, body in centre.received()
                    if topic.split("/")[3] == station]

        def phases(station: str, cmd_id: str) -> list[str]:
            return [m["payload"]["phase"] for m in said(station)
                    if m["type"] == "audio.playback" and m["payload"]["cmd_id"] == cmd_id]

        wait_until(lambda: phases("v000", "bc:1:v000") == ["started", "finished"], 10,
                   "v000 played it")
        wait_until(lambda: phases("v001", "bc:3:v001") == ["started"], 10, "v001 playing")
        send("v001", {"cmd": "broadcast.stop", "id": "bs:3:v001", "broadcast_id": "bc:3:v001"})
        wait_until(lambda: phases("v001", "bc:3:v001") == ["started", "stopped"], 10,
                   "v001 stopped")

        events = schema("event")
        for m in said("v000") + said("v001"):
            assert not list(events.iter_errors(m)), m
        results = {(m["station"], m["payload"]["cmd_id"]): m["payload"]
                   for m in said("v000") + said("v001") if m["type"] == "cmd.result"}
        assert len([m for m in said("v000") if m["type"] == "cmd.result"]) == 1
        # The unit's own result detail (edge/audio/loudspeaker.py, Loudspeaker._play).
        assert results[("v000", "bc:1:v000")] == {
            "cmd_id": "bc:1:v000", "cmd": "broadcast.play", "ok": True, "error": None,
            "detail": {"play_id": "bc:1:v000", "plays_as": "normal", "sound": "tone:chime",
                       "duration_s": 0.4, "playing_now": None}}
        finished = [m["payload"] for m in said("v000") if m["type"] == "audio.playback"][-1]
        assert (finished["origin"], finished["level"], finished["played_s"]) == (
            "township", "normal", 0.4)
        assert results[("v001", "bc:2:v001")]["error"]["code"] == "expired"
        assert results[("v001", None)]["error"]["code"] == "malformed_json"
        assert results[("v001", "bc:3:v001")]["detail"]["plays_as"] == "emergency"
        assert results[("v001", "bs:3:v001")]["detail"] == {"stopped": ["bc:3:v001"]}
    finally:
        centre.close()
        fleet.stop()
        broker.stop()
