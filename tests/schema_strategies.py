"""Hypothesis strategies made from the published JSON Schemas (docs/schema): payloads a
station may send (valid by the schema, with hostile text wherever the schema allows any
text) and payloads it must not (one value broken, a field added or taken away, or bytes
that are not a JSON object at all).

Only the keywords msgspec writes are read: type, enum, anyOf, $ref, properties,
required, additionalProperties, propertyNames, maxProperties, min/maxLength, pattern,
minimum/maximum, items, prefixItems, min/maxItems, default. A schema using another
keyword fails here loudly."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

KNOWN = {"type", "enum", "anyOf", "$ref", "properties", "required", "additionalProperties",
         "minLength", "maxLength", "pattern", "minimum", "maximum", "items", "prefixItems",
         "minItems", "maxItems", "default", "title", "description", "discriminator", "$defs",
         "$id", "$schema", "propertyNames", "maxProperties"}

# Text that has broken web consoles: markup, template syntax, path pieces, control and
# direction characters, and what databases refuse (NUL, lone surrogates).
HOSTILE_TEXT = ["/", "a/b", "../..", "%2F", "?x=1#y", "<script>alert(1)</script>",
                "\"'><img src=x onerror=alert(1)>", "{{ request }}", "{% csrf_token %}",
                "%s%s%n", "a\nb", "\r\n", "\u202eevil", "\x00", "\ud800", "😀" * 30,
                "x" * 5000, "", " ", "NaN", "null", "&amp;", "\\", "'; DROP TABLE x; --"]


def _text(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if "pattern" in schema:
        return st.from_regex(schema["pattern"]).filter(
            lambda s: len(s) <= schema.get("maxLength", 1 << 30)
            and len(s) >= schema.get("minLength", 0))
    lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 80), 80)
    plain = st.text(min_size=lo, max_size=hi)
    hostile = st.sampled_from([h for h in HOSTILE_TEXT
                               if lo <= len(h) <= schema.get("maxLength", 1 << 30)])
    return st.one_of(plain, hostile)


def valid(root: dict[str, Any], schema: dict[str, Any] | None = None
          ) -> st.SearchStrategy[Any]:
    """Instances of `schema` (default: the whole `root`)."""
    schema = root if schema is None else schema
    unknown = set(schema) - KNOWN
    assert not unknown, f"schema keyword(s) {unknown} not handled by tests/schema_strategies.py"
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return st.deferred(lambda: valid(root, root["$defs"][name]))
    if "anyOf" in schema:
        return st.one_of([valid(root, s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([valid(root, {**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False,
                         allow_infinity=False)
    if kind == "string":
        return _text(schema)
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*(valid(root, s) for s in schema["prefixItems"])).map(list)
        items = schema.get("items", {})
        return st.lists(valid(root, items) if items else st.just(1),
                        min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 3), 3))
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: valid(root, s) for k, s in props.items() if k in required}
        optional = {k: valid(root, s) for k, s in props.items() if k not in required}
        extra = schema.get("additionalProperties", True)
        base = st.fixed_dictionaries(fixed, optional=optional)
        if extra is False:
            return base
        names = (valid(root, {"type": "string", **schema["propertyNames"]})
                 if "propertyNames" in schema else st.text(max_size=12))
        if "propertyNames" in schema or "maxProperties" in schema:  # a map: keys checked
            return st.dictionaries(names, valid(root, extra) if isinstance(extra, dict)
                                   else st.integers(),
                                   max_size=min(schema.get("maxProperties", 3), 3))
        more = st.dictionaries(st.text(max_size=12),
                               valid(root, extra) if isinstance(extra, dict)
                               else st.one_of(st.integers(), st.text(max_size=12)),
                               max_size=2)
        return st.tuples(base, more).map(lambda bm: {**bm[1], **bm[0]})
    if not schema:
        return st.one_of(st.none(), st.integers(), st.text(max_size=12))
    raise AssertionError(f"schema not handled: {schema}")


_WRONG = st.one_of(st.sampled_from(HOSTILE_TEXT), st.integers(-(2**70), 2**70),
                   st.floats(allow_nan=False), st.none(), st.booleans(),
                   st.just([]), st.just({}), st.just({"nested": ["deep"]}))


@st.composite
def broken(draw: st.DrawFn, instance: Any) -> Any:
    """`instance` with one thing wrong somewhere in it."""
    if isinstance(instance, dict) and instance:
        key = draw(st.sampled_from(sorted(instance)))
        how = draw(st.sampled_from(["replace", "recurse", "drop", "add"]))
        if how == "drop":
            return {k: v for k, v in instance.items() if k != key}
        if how == "add":
            return {**instance, draw(st.sampled_from([*HOSTILE_TEXT, "extra"])): 1}
        if how == "recurse" and isinstance(instance[key], (dict, list)):
            return {**instance, key: draw(broken(instance[key]))}
        return {**instance, key: draw(_WRONG)}
    if isinstance(instance, list) and instance:
        i = draw(st.integers(0, len(instance) - 1))
        return [*instance[:i], draw(broken(instance[i])), *instance[i + 1:]]
    return draw(_WRONG)


def encode(value: Any) -> bytes:
    """JSON as a station's library would write it; lone surrogates go out escaped."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


# Bytes that are not one JSON object at all.
RAW_HOSTILE = [b"", b"not json", b"\xff\xfe\x00", b"[]", b"null", b"1e999999", b"NaN",
               b'{"a": NaN}', b"[" * 100_000, b'{"id": "\\u0000"}', b'"\\ud800"',
               b'{"a": 1, "a": 2}', b"9" * 5000]
