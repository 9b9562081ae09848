"""The JSON Schemas of everything that crosses MQTT, generated from the shapes in
`edge.contract.events` and `edge.contract.commands`. `python -m edge.contract.schema`
rewrites them in docs/schema, their published place; a test fails when they drift from
the code. The township console ships its own copy of them and checks it against
docs/schema itself (tests/test_centre_package.py): the unit writes nothing of the
township's."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from edge.contract import topics
from edge.contract.commands import Command
from edge.contract.events import Event, HealthReport, StationState
from edge.contract.voice import VoicePacket

SCHEMAS: dict[str, tuple[Any, str]] = {
    "event": (Event, "An event on pingan/v1/<township>/<station>/events or …/cmd/result"),
    "state": (StationState, "Retained state and Last Will on pingan/v1/<township>/<station>/state"),
    "health": (HealthReport, "Retained health telemetry on pingan/v1/<township>/<station>/health"),
    "command": (Command, "A township command on …/<station>/cmd or pingan/v1/<township>/all/cmd"),
    "voice": (VoicePacket, "Live speech on …/<station>/voice or pingan/v1/<township>/all/voice"),
}


def generate() -> dict[str, dict[str, Any]]:
    out = {}
    for name, (shape, title) in SCHEMAS.items():
        schema = msgspec.json.schema(shape)
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                     "$id": f"pingan-edge/v1/{name}.schema.json", "title": title, **schema}
    return out


def render(schema: Any) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


PUBLISHED = "docs/schema"


def main(argv: list[str]) -> int:
    for outdir in map(Path, argv[1:] or [PUBLISHED]):
        outdir.mkdir(parents=True, exist_ok=True)
        for name, schema in generate().items():
            (outdir / f"{name}.schema.json").write_text(render(schema), encoding="utf-8")
        # The topic table, for the township's copy (pingan_centre.topics).
        (outdir / "topics.json").write_text(render(topics.as_json()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
