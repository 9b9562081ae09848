"""Texts that come in two languages and are stored in one text column: a quarantine
reason, a station's error on an alarm's history. Stored as a small JSON object
`{"zh": …, "en": …}`; shown in the reader's language. A plain text (rows from before
issue 19, an officer's note) is shown as it is."""

from __future__ import annotations

import json

from django.utils import translation


def both(zh: str, en: str) -> str:
    return json.dumps({"zh": zh, "en": en}, ensure_ascii=False)


def shown(stored: str, language: str | None = None) -> str:
    """`stored` in `language` (default: the active one) when it holds both languages."""
    if not stored.startswith('{"zh"'):
        return stored
    try:
        texts = json.loads(stored)
    except ValueError:
        return stored
    if not isinstance(texts, dict) or not all(isinstance(texts.get(k), str)
                                              for k in ("zh", "en")):
        return stored
    lang = language or translation.get_language() or "zh-hans"
    return str(texts["en"] if lang.startswith("en") else texts["zh"])
