"""What the station says for a text, as the pinyin espeak-ng's `cmn-latn-pinyin` voice
speaks ("yin2 hang2 hang2 zhang3"): the text written out (`normalise`), the characters
read with pypinyin's phrase dictionary (the voice's own character step misreads
polyphones: 银行 yin2 xing2), then Mandarin tone sandhi, then English words handed to
the English voice.

Tone sandhi is done here, over the whole phrase between two pauses: pypinyin's
`tone_sandhi` option works inside one dictionary entry only (我也很好 stays all third
tones) and leaves 一 before a fourth tone alone when the dictionary says yi1 (一次).

- 3-3: in a run of third tones, all but the last are said as second tones (展览馆
  zhan2 lan2 guan3, 你好 ni2 hao3), as in fluent speech and as espeak-ng does itself.
- 一: yi2 before a fourth (or neutral) tone, yi4 before the others; yi1 at the end of a
  phrase, in numbers, ordinals (第一, 一月, 一号) and words that end with it (统一).
- 不: bu2 before a fourth tone, bu4 otherwise, bu5 between a repeated word (是不是).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from xml.sax.saxutils import escape

from pypinyin import Style, lazy_pinyin
from pypinyin.seg.simpleseg import seg

from edge.audio.normalise import PIECE_CHARS, Span, normalise

_SYLLABLE = re.compile(r"^[a-zv]+[1-5]$")
_DIGITS = "零〇一二两三四五六七八九幺"
_NUMERALS = _DIGITS + "十百千万亿"
# After these, 一 is a name or an ordinal, not a count: 一月 yi1 yue4, 一号, 一楼, 一年级.
_ORDINAL_NEXT = ("月", "号", "楼", "年级")
# Words that end in 一 (it keeps yi1 whatever follows: 统一思想).
_ENDS_IN_YI = ("统一", "唯一", "之一", "合一", "如一", "专一", "划一", "单一", "逐一",
               "归一", "择一", "万一", "星期一", "礼拜一", "周一", "初一")


# Where pypinyin's dictionary is wrong (checked against 现代汉语词典 and the official
# pinyin of place names). Whole names only: 天台 alone is a rooftop (tian1 tai2).
CORRECTIONS: dict[str, tuple[str, ...]] = {
    "长治": ("chang2", "zhi4"), "珲春": ("hun2", "chun1"), "阆中": ("lang4", "zhong1"),
    "会稽": ("kuai4", "ji1"), "浚县": ("xun4", "xian4"), "繁峙": ("fan2", "shi4"),
    "筠连": ("jun1", "lian2"), "洪洞": ("hong2", "tong2"), "漯河": ("luo4", "he2"),
    "天台县": ("tian1", "tai1", "xian4"), "天台山": ("tian1", "tai1", "shan1"),
    "六合区": ("lu4", "he2", "qu1"), "单县": ("shan4", "xian4"), "涡阳": ("guo1", "yang2"),
    "华县": ("hua4", "xian4"), "武都": ("wu3", "du1"),
    "照片": ("zhao4", "pian4"), "孔子": ("kong3", "zi3"),
}


@dataclass(slots=True)
class Syllable:
    han: str
    pinyin: str  # tone number last: hang2, le5
    fixed: bool = False  # written out by `normalise` (numbers): 一 rules do not apply
    count_one: bool = False

    @property
    def tone(self) -> int:
        return int(self.pinyin[-1])

    def set_tone(self, tone: int) -> None:
        self.pinyin = self.pinyin[:-1] + str(tone)


def _dictionary(text: str) -> list[Syllable]:
    """pypinyin's reading of Chinese characters, word by word through its phrase
    dictionary; characters it has no reading for are not said."""
    read: list[str] = []
    for word in seg(text):
        said = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True)
        if len(said) != len(word):  # not one syllable per character: char by char
            said = [lazy_pinyin(c, style=Style.TONE3, neutral_tone_with_five=True)[0]
                    for c in word]
        read += said
    for phrase, syllables in CORRECTIONS.items():
        at = text.find(phrase)
        while at >= 0:
            read[at:at + len(phrase)] = syllables
            at = text.find(phrase, at + len(phrase))
    return [Syllable(c, py) for c, py in zip(text, read, strict=True) if _SYLLABLE.match(py)]


def _yi_bu(phrase: list[Syllable]) -> None:
    for i, s in enumerate(phrase):
        if s.han not in "一不" or (s.fixed and not s.count_one):
            continue
        prev = phrase[i - 1] if i else None
        nxt = phrase[i + 1] if i + 1 < len(phrase) else None
        ahead = "".join(x.han for x in phrase[i + 1:i + 3])
        if s.han == "不":
            if s.tone == 5:
                continue  # the dictionary's neutral tone: 差不多, 对不起
            if nxt is None:
                s.set_tone(4)
            elif prev is not None and prev.han == nxt.han:
                s.set_tone(5)
            else:
                s.set_tone(2 if nxt.tone == 4 else 4)
            continue
        behind = "".join(x.han for x in phrase[max(0, i - 2):i + 1])
        if nxt is not None and nxt.han in "百千万亿":
            s.set_tone(2 if nxt.tone == 4 else 4)  # a multiplier: 一百 yi4, 一万 yi2
        elif (nxt is None or nxt.han in _DIGITS + "十" or ahead.startswith(_ORDINAL_NEXT)
                or behind.endswith(_ENDS_IN_YI)
                or (prev is not None and (prev.han in _NUMERALS or prev.han == "第"
                                          or (prev.han == "月" and nxt.han in "日号")))):
            s.set_tone(1)
        elif prev is not None and prev.han == nxt.han:
            s.set_tone(5)  # 看一看
        else:
            s.set_tone(2 if nxt.tone in (4, 5) else 4)


def _third(phrase: list[Syllable]) -> None:
    tones = [s.tone for s in phrase]
    for i in range(len(phrase) - 1):
        if tones[i] == 3 and tones[i + 1] == 3:
            phrase[i].set_tone(2)


def _syllables(span: Span) -> list[Syllable]:
    if span.kind == "num":
        return [Syllable(c, py, fixed=True, count_one=span.count_one)
                for c, py in zip(span.text, span.syllables, strict=True)]
    return _dictionary(span.text)


def _read(spans: list[Span], voice: str, english: str) -> str:
    """One piece: the pinyin; with SSML voice switches when English words are in it
    (each part named: espeak-ng 1.51 stays in English after a closing </voice>)."""
    runs: list[tuple[str, list[str]]] = []  # (language, words)
    phrase: list[Syllable] = []

    def close_phrase() -> None:
        if phrase:
            _yi_bu(phrase)
            _third(phrase)
            add("zh", [s.pinyin for s in phrase])
            phrase.clear()

    def add(lang: str, words: list[str]) -> None:
        if runs and runs[-1][0] == lang:
            runs[-1][1].extend(words)
        else:
            runs.append((lang, list(words)))

    for span in spans:
        if span.kind in ("zh", "num"):
            phrase += _syllables(span)
            continue
        close_phrase()
        if span.kind == "en":
            add("en", [escape(span.text)])
        elif runs and runs[-1][1]:
            runs[-1][1][-1] += span.text  # a pause: on the word before it
    close_phrase()
    runs = [(lang, words) for lang, words in runs if words]
    if not any(lang == "en" for lang, _ in runs):
        return " ".join(w for _, words in runs for w in words)
    names = {"zh": voice, "en": english}
    return " ".join(f'<voice name="{names[lang]}">{" ".join(words)}</voice>'
                    for lang, words in runs)


def _cut(spans: list[Span], limit: int) -> list[list[Span]]:
    """Spans into pieces of about `limit` characters, cut after a pause where one
    comes (a longer run is cut where it reaches the limit)."""
    pieces: list[list[Span]] = []
    current: list[Span] = []
    size = 0
    sentence: list[Span] = []
    sentence_size = 0

    def flush_sentence() -> None:
        nonlocal current, size, sentence, sentence_size
        if current and size + sentence_size > limit:
            pieces.append(current)
            current, size = [], 0
        current += sentence
        size += sentence_size
        sentence, sentence_size = [], 0

    for span in spans:
        text = span.text
        while span.kind in ("zh", "en") and sentence_size + len(text) > limit:
            room = max(1, limit - sentence_size)
            if span.kind == "en" and " " in text[:room]:
                room = text[:room].rindex(" ") + 1
            sentence.append(Span(span.kind, text[:room].strip()))
            sentence_size = limit
            flush_sentence()
            text = text[room:]
        if not text.strip():
            continue
        span = Span(span.kind, text.strip() if span.kind == "en" else text, span.syllables,
                    span.count_one)
        sentence.append(span)
        sentence_size += len(span.text)
        if span.kind == "break":
            flush_sentence()
    flush_sentence()
    if current:
        pieces.append(current)
    return pieces


def script(text: str, *, voice: str = "cmn-latn-pinyin", english: str = "en",
           limit: int = PIECE_CHARS) -> list[str]:
    """What espeak-ng is handed for `text`, one string per rendering (`-m`: SSML where
    English words are in it); empty when nothing in it can be said."""
    out = [_read(piece, voice, english) for piece in _cut(normalise(text), limit)]
    return [s for s in out if s.strip()]


def main(argv: list[str] | None = None) -> int:
    """`python -m edge.audio.reading --voice V`: a JSON list of texts on standard input,
    the script of each on standard output (how the station reads: `tts.read_aloud`)."""
    p = argparse.ArgumentParser(prog="python -m edge.audio.reading")
    p.add_argument("--voice", default="cmn-latn-pinyin")
    p.add_argument("--english", default="en")
    args = p.parse_args(argv)
    try:
        texts = json.loads(sys.stdin.buffer.read())
    except ValueError:
        texts = None
    if not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
        print("expected a JSON list of texts on standard input", file=sys.stderr)
        return 2
    json.dump([script(t, voice=args.voice, english=args.english) for t in texts],
              sys.stdout, ensure_ascii=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
