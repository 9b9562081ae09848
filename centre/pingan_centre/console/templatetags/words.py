"""`{{ text|lang }}`: a text a station sends in both languages ({"zh": …, "en": …}, or
one stored by words.both) in the reader's language. Anything else is shown as it is."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils import translation

from pingan_centre.console.words import shown

register = template.Library()


@register.filter
def lang(value: Any) -> str:
    if isinstance(value, dict):
        english = (translation.get_language() or "").startswith("en")
        text = value.get("en" if english else "zh")
        return text if isinstance(text, str) else ""
    if isinstance(value, str):
        return shown(value)
    return "" if value is None else str(value)
