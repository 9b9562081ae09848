"""Every payload from a station is checked here against the published schemas (shipped
inside this package, copied from docs/schema; a test keeps them identical)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema


class Rejected(Exception):
    """The payload is kept aside with this reason."""


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("pingan_centre.console").joinpath(
        f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def check(kind: str, payload: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode and validate one payload of `kind` (event, state); raise Rejected."""
    if len(payload) > max_bytes:
        raise Rejected(f"oversized: {len(payload)} bytes, limit {max_bytes}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejected(f"not JSON: {exc}") from exc
    error = jsonschema.exceptions.best_match(_validator(kind).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise Rejected(f"{kind} schema: at {where}: {error.message}"[:1000])
    if not isinstance(data, dict):
        raise Rejected(f"{kind} is not an object")
    return data
