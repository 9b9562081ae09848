"""Text as a Mandarin speaker reads it aloud: digits, times, dates, phone numbers,
percentages and units written out, before the characters become pinyin (`reading`).

The result is a list of spans. What this module writes out itself (the numbers) carries
its own pinyin, because the reading of a digit depends on what the digits are: 1 is 幺
(yao1) in a phone number, 一 (yi1) in a year or after a decimal point, and a count 一
takes tone sandhi. Everything else is left to the dictionary.

    15:00          十五点
    2026年12月6日   二零二六年十二月六日
    3.5米 / 3.5m   三点五米
    25%            百分之二十五
    -5℃            零下五摄氏度
    拨打110         拨打幺幺零
    13812345678    幺三八，幺二三四，五六七八
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Kind = Literal["zh", "num", "en", "break"]


@dataclass(frozen=True, slots=True)
class Span:
    """`zh`: characters the dictionary reads; `num`: written out here, `syllables` one
    pinyin per character; `en`: Latin-script words for the English voice; `break`: a
    pause (one of , . ? !)."""

    kind: Kind
    text: str
    syllables: tuple[str, ...] = ()
    # A lone 一 that counts something ("1个"): tone sandhi applies to it as to words.
    count_one: bool = False


# Speech is rendered a piece at a time (edge.audio.tts.Speech), so memory holds one piece
# (≤ ~40 s of speech), not the whole text (2,000 characters are ~7 minutes: ~70 MB as
# float32 samples): pieces of about this many characters.
PIECE_CHARS = 120

DIGITS = "零一二三四五六七八九"
# The syllables of what numbers are written with (yi1 before sandhi).
NUMERAL_PINYIN = {
    "零": "ling2", "一": "yi1", "二": "er4", "两": "liang3", "三": "san1", "四": "si4",
    "五": "wu3", "六": "liu4", "七": "qi1", "八": "ba1", "九": "jiu3", "十": "shi2",
    "百": "bai3", "千": "qian1", "万": "wan4", "亿": "yi4", "幺": "yao1", "点": "dian3",
    "负": "fu4",
}

# Unit symbols after a number, longest first (what NFKC makes of ㎡, ℃, ² is listed).
UNITS: tuple[tuple[str, str], ...] = (
    ("km/h", "公里每小时"), ("m/s", "米每秒"), ("kWh", "千瓦时"), ("km²", "平方公里"),
    ("km2", "平方公里"), ("m²", "平方米"), ("m2", "平方米"), ("m³", "立方米"), ("m3", "立方米"),
    ("°C", "摄氏度"), ("℃", "摄氏度"), ("°F", "华氏度"), ("km", "公里"), ("cm", "厘米"),
    ("mm", "毫米"), ("kg", "公斤"), ("mg", "毫克"), ("ml", "毫升"), ("mL", "毫升"),
    ("kW", "千瓦"), ("dB", "分贝"), ("min", "分钟"), ("m", "米"), ("g", "克"), ("t", "吨"),
    ("L", "升"), ("h", "小时"), ("s", "秒"), ("°", "度"), ("V", "伏"), ("W", "瓦"),
)
_UNIT_RE = "|".join(re.escape(u) for u, _ in UNITS)
_UNIT_ZH = dict(UNITS)
_UNITS_AFTER_NUMBERS = re.compile(rf"\d\s*(?:{_UNIT_RE})(?![A-Za-z])")

# After a bare 2, these make it 两 (两个, 两点, 两公里); 二 elsewhere (二月, 二号, 二楼).
MEASURES = ("个", "位", "名", "次", "天", "周", "只", "条", "张", "件", "辆", "台", "户",
            "家", "人", "小时", "分钟", "秒", "点", "倍", "种", "层", "栋", "间", "所", "座",
            "本", "把", "项", "份", "批", "组", "队", "架", "艘", "头", "匹", "块", "元",
            "斤", "公斤", "公里", "千米", "米", "吨", "岁", "年", "场", "轮", "支", "片")
# A lone 1 before these counts (一个 yi2 ge4); before anything else it is a name or an
# ordinal and keeps yi1 (1月, 1号, 1楼, "1点" the hour).
COUNTED = tuple(m for m in MEASURES if m != "点")
# Numbers a Chinese speaker says digit by digit (emergency and public service lines).
SERVICE_NUMBERS = ("110", "119", "120", "122", "12110", "12119", "12315", "12320", "12333",
                   "12345", "12348", "12369", "12395", "96110")
# Words before a number that make it a phone number, read digit by digit.
PHONE_CUES = ("电话", "热线", "拨打", "拨", "手机", "号码", "联系", "致电", "呼叫", "tel", "Tel",
              "TEL")

HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff〇"
_HAN_RE = re.compile(f"[{HAN}]")
# Pauses; a "." or "," or ":" between digits is part of a number, not a pause.
_BREAKS = {"，": ",", "、": ",", ",": ",", "；": ",", ";": ",", "：": ",", ":": ",",
           "。": ".", ".": ".", "！": "!", "!": "!", "？": "?", "?": "?", "…": ",",
           "\n": ".", "—": ",", "–": ",", "(": ",", ")": ",", "（": ",", "）": ",",
           "《": ",", "》": ",", "【": ",", "】": ",", "[": ",", "]": ","}
_STRENGTH = {",": 1, ".": 2, "!": 3, "?": 3}


def has_han(text: str) -> bool:
    return _HAN_RE.search(text) is not None


# --- numbers as characters ---------------------------------------------------------


def _section(n: int) -> str:
    """0 < n < 10000 in characters: 1005 → 一千零五, 110 → 一百一十."""
    out = ""
    zero = False
    for power, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // power % 10
        if d == 0:
            zero = zero or bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += DIGITS[d] + unit
    return out


def integer(n: int) -> str:
    """A count in characters, as said: 15 → 十五, 10010 → 一万零一十, 2000 → 两千."""
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out = ""
    pending_zero = False
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            pending_zero = bool(out)
            continue
        if out and (pending_zero or g < 1000):
            out += "零"
        pending_zero = False
        out += _section(g) + ("", "万", "亿", "万亿")[i]
    if out.startswith("一十"):
        out = out[1:]  # 十五, not 一十五 (inside a number it stays: 一百一十五)
    if out[0] == "二" and len(out) > 1 and out[1] in "千万亿":
        out = "两" + out[1:]
    return out


def digits(s: str, one: str = "幺") -> str:
    """Digit by digit: phone numbers with 幺 for 1, years and decimals with 一."""
    return "".join(one if c == "1" else DIGITS[int(c)] for c in s if c.isdigit())


def _pinyin(chars: str) -> tuple[str, ...]:
    """Each numeral's syllable, with 一's sandhi inside a number: 一百 yi4 bai3,
    一万 yi2 wan4 (before anything else, and at its end, 一 keeps yi1)."""
    out = []
    for i, c in enumerate(chars):
        py = NUMERAL_PINYIN[c]
        if c == "一" and i + 1 < len(chars):
            py = {"百": "yi4", "千": "yi4", "万": "yi2", "亿": "yi2"}.get(chars[i + 1], py)
        out.append(py)
    return tuple(out)


def num(chars: str, *, count_one: bool = False) -> Span:
    return Span("num", chars, _pinyin(chars), count_one=count_one and chars == "一")


# --- the scanner -------------------------------------------------------------------

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_MONTH = r"(?:1[0-2]|0?[1-9])"
_DAY = r"(?:3[01]|[12]\d|0?[1-9])"
# A number's edges: not inside another number (a "." before a digit is a decimal point,
# one after it ends a sentence: "15:00." is a time).
_S = r"(?<!\d)(?<!\d\.)"
_E = r"(?!\d|\.\d)"
_PATTERNS = [
    ("date", rf"(?<!\d)(?P<y>\d{{4}})(?P<sep>[-/.])(?P<mo>{_MONTH})(?P=sep)(?P<d>{_DAY})(?!\d)"),
    ("year", _S + r"(?P<year>1[89]\d\d|20\d\d|2100)(?=\s*年)"),
    ("time", _S + r"(?P<h>[01]?\d|2[0-3]):(?P<mi>[0-5]\d)(?::(?P<s>[0-5]\d))?" + _E),
    ("mobile", _S + r"(?P<mobile>1[3-9]\d[- ]?\d{4}[- ]?\d{4})" + _E),
    ("landline", _S + r"(?P<landline>\(0\d{2,3}\)\s*\d{7,8}|0\d{2,3}-\d{7,8}"
                 r"|[48]00-?\d{3}-?\d{4})" + _E),
    ("range", r"(?<=\d)\s*[-~～–—]\s*(?=[-−]?\d)"),
    ("money", rf"(?P<cur>[¥￥$])(?P<money>{_NUMBER})"),
    ("fraction", _S + r"(?<!/)(?P<num_>\d{1,3})/(?P<den>\d{1,3})(?![\d/]|\.\d)"),
    ("number", rf"(?P<neg>(?<![\dA-Za-z])[-−])?(?P<n>{_NUMBER})"
               rf"(?:\s*(?P<pct>[%‰])|\s*(?P<unit>{_UNIT_RE})(?![A-Za-z]))?"),
]
_SCAN = re.compile("|".join(f"(?P<_{name}>{rx})" for name, rx in _PATTERNS))


def _following(text: str, end: int) -> str:
    return text[end:end + 4].lstrip()


def _is_measure(after: str) -> bool:
    return after.startswith(MEASURES)


def _value(n: str, after: str) -> list[Span]:
    """A written number: integer or decimal, 两 before a measure word."""
    n = n.replace(",", "")
    whole, _, frac = n.partition(".")
    if len(whole) > 16 or (len(whole) > 1 and whole.startswith("0") and not frac):
        return [num(digits(whole))]  # a code or an account number: digit by digit
    chars = integer(int(whole))
    if chars == "二" and not frac and _is_measure(after):
        chars = "两"
    if frac:
        chars += "点" + digits(frac, one="一")
    return [num(chars, count_one=not frac and after.startswith(COUNTED))]


def _phone(raw: str) -> list[Span]:
    """Digit by digit with 幺, grouped as written or as Chinese numbers are (3-4-4)."""
    groups = [g for g in re.split(r"[^\d]+", raw) if g]
    if len(groups) == 1 and len(groups[0]) == 11:
        g = groups[0]
        groups = [g[:3], g[3:7], g[7:]]
    elif len(groups) == 1 and len(groups[0]) == 8:
        groups = [groups[0][:4], groups[0][4:]]
    out: list[Span] = []
    for i, g in enumerate(groups):
        if i:
            out.append(Span("break", ","))
        out.append(num(digits(g)))
    return out


def _cued_phone(text: str, start: int) -> bool:
    before = text[max(0, start - 8):start]
    return any(cue in before for cue in PHONE_CUES)


def _number(m: re.Match[str], text: str) -> list[Span]:
    n, unit, pct = m["n"], m["unit"], m["pct"]
    after = _UNIT_ZH[unit] if unit else _following(text, m.end())
    plain = n.isdigit() and not m["neg"] and not unit and not pct
    if plain and n in SERVICE_NUMBERS and not _is_measure(after) \
            and text[max(0, m.start() - 1):m.start()] != "第":
        return [num(digits(n))]
    if plain and len(n) >= 5 and _cued_phone(text, m.start()):
        return _phone(n)
    value = _value(n, after)
    if pct:
        value = [Span("zh", "百分之" if pct == "%" else "千分之"), *value]
    if m["neg"]:
        below_zero = unit in ("°C", "℃", "°F", "°")
        value = [Span("zh", "零下") if below_zero else num("负"), *value]
    if unit:
        value.append(Span("zh", _UNIT_ZH[unit]))
    return value


def _spans(m: re.Match[str], text: str) -> list[Span]:
    kind = m.lastgroup
    if kind == "_date":
        return [num(digits(m["y"], one="一")), Span("zh", "年"), num(integer(int(m["mo"]))),
                Span("zh", "月"), num(integer(int(m["d"]))), Span("zh", "日")]
    if kind == "_year":
        return [num(digits(m["year"], one="一"))]
    if kind == "_time":
        hour = int(m["h"])
        out = [num("两" if hour == 2 else integer(hour)), Span("zh", "点")]
        minute, second = int(m["mi"]), int(m["s"] or 0)
        if minute or second:
            out += [num(("零" if minute < 10 else "") + integer(minute)) if minute
                    else num("零"), Span("zh", "分")]
        if second:
            out += [num(("零" if second < 10 else "") + integer(second)), Span("zh", "秒")]
        return out
    if kind in ("_mobile", "_landline"):
        return _phone(m[0])
    if kind == "_range":
        return [Span("zh", "到")]
    if kind == "_money":
        return [*_value(m["money"], "元"), Span("zh", "美元" if m["cur"] == "$" else "元")]
    if kind == "_fraction":
        return [num(integer(int(m["den"]))), Span("zh", "分之"), num(integer(int(m["num_"])))]
    return _number(m, text)


# --- what is left: characters, English words, pauses ---------------------------------

_REST = re.compile(
    rf"(?P<zh>[{HAN}]+)"
    r"|(?P<en>[A-Za-z0-9]+(?:[-'’&.]?[A-Za-z0-9]+)*(?:\s+[A-Za-z0-9]+(?:[-'’&.]?[A-Za-z0-9]+)*)*)"
    r"|(?P<brk>[，、,；;：:。.！!？?…\n—–()（）《》【】\[\]])")


def _rest(text: str) -> list[Span]:
    out = []
    for m in _REST.finditer(text):
        if m["zh"]:
            out.append(Span("zh", m["zh"]))
        elif m["en"]:
            out.append(Span("en", m["en"]))
        else:
            out.append(Span("break", _BREAKS[m["brk"]]))
    return out  # anything else (symbols, emoji, other scripts) is not read


def _english(text: str) -> list[Span]:
    """Text with no Chinese in it: the English voice reads it as written (numbers too),
    cut only where it pauses."""
    out = []
    for part in re.split(r"((?<!\d)[,.;:!?](?!\d)|[,.;:!?](?=\s|$)|\n)", text):
        if part in _BREAKS:
            out.append(Span("break", _BREAKS[part]))
        elif part.strip():
            out.append(Span("en", " ".join(part.split())))
    return out


def _merge(spans: list[Span]) -> list[Span]:
    """Neighbouring characters as one span (the dictionary reads phrases); runs of
    pauses as the strongest of them; no pause first."""
    out: list[Span] = []
    for s in spans:
        prev = out[-1] if out else None
        if s.kind == "break":
            if prev is None:
                continue
            if prev.kind == "break":
                if _STRENGTH[s.text] > _STRENGTH[prev.text]:
                    out[-1] = s
                continue
        elif s.kind == "zh" and prev is not None and prev.kind == "zh":
            out[-1] = Span("zh", prev.text + s.text)
            continue
        out.append(s)
    return out


def normalise(text: str) -> list[Span]:
    """`text` as spans to be read (see the module's docstring)."""
    # A Chinese comma stays a pause, not a thousands separator (110，119，120).
    text = unicodedata.normalize("NFKC", text.replace("，", "、"))
    if not has_han(text) and re.search("[A-Za-z]", _UNITS_AFTER_NUMBERS.sub("", text)):
        return _merge(_english(text))
    spans: list[Span] = []
    pos = 0
    for m in _SCAN.finditer(text):
        spans += _rest(text[pos:m.start()])
        spans += _spans(m, text)
        pos = m.end()
    spans += _rest(text[pos:])
    return _merge(spans)


def written(spans: list[Span]) -> str:
    """The spans as characters again (what the reading reads, for people to check)."""
    return "".join(s.text if s.kind != "en" else f" {s.text} " for s in spans).strip()

