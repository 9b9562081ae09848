"""Every payload from a station is checked here against the published schemas (shipped
inside this package, copied from docs/schema; a test keeps them identical), and against
what the databases refuse that JSON allows: NaN and infinities, NUL characters, lone
surrogates. Such a payload, stored, would fail its batch on every retry and stop ingest."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from pingan_centre.console.words import both

# What a schema keyword means, for the technician reading Quarantine in Chinese.
_KEYWORD_ZH = {
    "type": "类型不对", "pattern": "格式不对", "maxLength": "过长", "minLength": "过短",
    "required": "缺少字段", "additionalProperties": "有未定义的字段", "enum": "取值不在允许范围内",
    "const": "取值不对", "minimum": "数值过小", "maximum": "数值过大",
    "exclusiveMinimum": "数值过小", "exclusiveMaximum": "数值过大", "anyOf": "不是任何一种已知格式",
    "oneOf": "不是任何一种已知格式", "minItems": "条目过少", "maxItems": "条目过多",
    "prefixItems": "条目不对", "items": "条目不对",
}


class Rejected(Exception):
    """The payload is kept aside with this reason (Chinese and English)."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(en)
        self.zh = zh
        self.en = en

    @property
    def reason(self) -> str:
        """As stored: both languages (words.both), shown in the reader's."""
        return both(self.zh[:1000], self.en[:1000])


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    text = resources.files("pingan_centre.console").joinpath(
        f"schemas/{name}.schema.json").read_text(encoding="utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(value: Any, where: str = "") -> None:
    """Raise Rejected for a string (or key) no database keeps: NUL, lone surrogates."""
    if isinstance(value, str):
        at_zh, at_en = where or "(顶层)", where or "(top)"
        if "\x00" in value:
            raise Rejected(f"在 {at_zh} 有 NUL 字符", f"NUL character at {at_en}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Rejected(f"在 {at_zh} 有无效的 Unicode 字符",
                           f"invalid Unicode at {at_en}: {exc.reason}") from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key, where)
            _storable(item, f"{where}/{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _storable(item, f"{where}/{i}" if where else str(i))


def check(kind: str, payload: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode and validate one payload of `kind` (event, state); raise Rejected."""
    if len(payload) > max_bytes:
        raise Rejected(f"过大：{len(payload)} 字节，上限 {max_bytes}",
                       f"oversized: {len(payload)} bytes, limit {max_bytes}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejected("不是有效的 JSON", f"not JSON: {exc}") from exc
    try:
        _storable(data)
    except RecursionError as exc:
        raise Rejected("嵌套过深", "nested too deep") from exc
    error = jsonschema.exceptions.best_match(_validator(kind).iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        what = _KEYWORD_ZH.get(str(error.validator), "不符合格式")
        noun = "事件" if kind == "event" else "状态"
        raise Rejected(f"{noun}不符合格式：{where or '(顶层)'} {what}",
                       f"{kind} schema: at {where or '(top)'}: {error.message}")
    if not isinstance(data, dict):
        raise Rejected(f"{kind} 不是 JSON 对象", f"{kind} is not an object")
    return data
