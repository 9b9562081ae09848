"""Mandarin read right (issue 23): what the station hands espeak-ng for a text, checked
against readings written from dictionaries (tests/data/mandarin_readings.tsv), and the
real espeak-ng speaking it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import soundfile
from conftest import station_toml

from edge.audio import tts
from edge.audio.normalise import normalise, written
from edge.audio.reading import script
from edge.audio.tts import PIECE_CHARS, EspeakNg, Speech, TtsError
from edge.config import AudioSection
from pingan_sim.localbroker import free_port

READINGS = Path(__file__).parent / "data" / "mandarin_readings.tsv"


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in READINGS.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            text, expected, why = line.split("\t")
            rows.append((text, expected, why))
    return rows


ROWS = _rows()
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (bin/setup installs it)")


def test_the_list_is_long_and_covers_what_the_issue_names():
    assert len(ROWS) >= 100
    texts = "".join(text for text, _, _ in ROWS)
    for needed in ("银行", "行长", "重新", "会计", "长了", "长沙", "重庆", "厦门", "蚌埠",
                   "15:00", "2026年12月6日", "3.5米", "%", "110", "119", "120"):
        assert needed in texts, needed
    assert len({text for text, _, _ in ROWS}) == len(ROWS), "a sentence is listed twice"


@pytest.mark.parametrize(("text", "expected", "why"), ROWS, ids=[r[0] for r in ROWS])
def test_reading_matches_the_dictionary(text, expected, why):
    assert script(text) == [expected], why


def test_normalised_text_reads_as_a_person_would_write_it_out():
    cases = {
        "15:00": "十五点", "08:05": "八点零五分", "2:00": "两点",
        "23:59:30": "二十三点五十九分三十秒",
        "2026年12月6日": "二零二六年十二月六日", "2026/12/6": "二零二六年十二月六日",
        "3.5米": "三点五米", "水深3.5m": "水深三点五米", "3.5 m": "三点五米",
        "25%": "百分之二十五", "0.5‰": "千分之零点五",
        "110": "幺幺零", "拨打119": "拨打幺幺九", "120元": "一百二十元", "第110名": "第一百一十名",
        "10": "十", "15": "十五", "115": "一百一十五", "1005": "一千零五", "10010": "一万零一十",
        "150000": "十五万", "100010000": "一亿零一万", "2000": "两千", "22000": "两万二千",
        "0": "零", "007": "零零七", "-5": "负五", "-5℃": "零下五摄氏度",
        "会议15:00.": "会议十五点.",
        "１５：００": "十五点",  # full-width digits and colon, as Chinese keyboards type them
        "13812345678": "幺三八,幺二三四,五六七八", "电话 87654321": "电话八七六五,四三二幺",
    }
    for text, chinese in cases.items():
        assert written(normalise(text)) == chinese, text


def test_english_goes_to_the_english_voice_and_only_it():
    assert script("Alarm sent, the township has it.") == [
        '<voice name="en">Alarm sent, the township has it.</voice>']
    mixed = script("请按OK键。I can go home")
    assert mixed == ['<voice name="cmn-latn-pinyin">qing3 an4</voice> '
                     '<voice name="en">OK</voice> '
                     '<voice name="cmn-latn-pinyin">jian4.</voice> '
                     '<voice name="en">I can go home</voice>']
    # Text cannot inject markup: what is handed to espeak-ng -m stays well-formed.
    for text in ("AT&T <voice name='en'> 报警", "a < b & c", "x</voice><audio src='/etc'/>"):
        for piece in script(text):
            ET.fromstring(f"<speak>{piece}</speak>")
            assert "<audio" not in piece


def test_nothing_to_say_and_long_text():
    assert script("") == [] and script("★☆ \n ，。") == []
    sentence = "银行行长通知：明天15:00开会，请全体村民准时参加。"
    pieces = script(sentence * 80)  # ~2,000 characters
    assert len(pieces) >= len(sentence * 80) // PIECE_CHARS
    syllables = [len(p.split()) for p in pieces]
    assert max(syllables) <= PIECE_CHARS, "a piece holds more than one piece's speech"
    assert sum(syllables) == 80 * len(script(sentence)[0].split()), "something was lost"
    assert all(p[-1] in ",." for p in pieces), "cut where it does not pause"
    # One run with no pause at all is cut where it reaches the limit.
    run = script("银行" * 200)
    assert [len(p.split()) for p in run] == [PIECE_CHARS] * 3 + [400 - 3 * PIECE_CHARS]


@needs_espeak
def test_espeak_speaks_the_reading_not_its_own(tmp_path):
    """The real voice, asked for its phonemes (-x): handed the characters it reads 行 as
    xing; handed the reading, hang."""
    def phonemes(said: str) -> str:
        done = subprocess.run(["espeak-ng", "-m", "-q", "-x", "-v", "cmn-latn-pinyin"],
                              input=said.encode(), capture_output=True, check=True)
        return done.stdout.decode()

    raw = phonemes("银行行长")
    assert "S;'i35N" in raw, "espeak-ng read 银行 right by itself: the premise changed"
    read = phonemes(script("银行行长")[0])
    assert read.count("X'a35N") == 2 and "S;'i35N" not in read, read
    english = phonemes(script("请注意。Hello, alarm sent")[0])
    assert "h@l'oU" in english.replace("55", "") or "h@" in english, english


@needs_espeak
def test_the_engine_renders_through_real_espeak_and_caches_by_reading(tmp_path):
    """Speech through the engine the station builds: audio comes out for Chinese, digits
    and English; a rendering is kept under what was said, so a changed reading renders
    again and an unchanged one does not."""
    engine = tts.engine(AudioSection())
    assert isinstance(engine, EspeakNg) and engine.voice == "cmn-latn-pinyin"
    # Read in a child process (pypinyin's dictionaries stay out of the station's); what
    # it hands back is the reading, and text that is not valid Unicode is read anyway.
    assert engine.script("银行行长。") == script("银行行长。") == ["yin2 hang2 hang2 zhang3."]
    assert engine.script("\ud800银行") == ["yin2 hang2"]
    station = subprocess.run([sys.executable, "-c", (
        "import sys; from edge.audio import tts; from edge.config import AudioSection; "
        "print(tts.engine(AudioSection()).script('行长'), 'pypinyin' in sys.modules)")],
        capture_output=True, text=True, check=True, timeout=60)
    assert station.stdout.split() == ["['hang2", "zhang3']", "False"], station
    speech = Speech(engine, tmp_path / "cache", 22050, max_bytes=16 << 20, max_entries=16,
                    max_render_bytes=8 << 20)
    text = "银行行长通知：15:00开会，请拨打110。Hello"
    sound = speech.sound(text, cached=True)
    try:
        assert sound.seconds > 3.0
        samples = sound[0:len(sound)]
        assert float(abs(samples).max()) > 0.05, "silence"
    finally:
        sound.close()
    cached = sorted((tmp_path / "cache").glob("*.flac"))
    assert len(cached) == 1
    speech.sound(text, cached=True).close()
    assert sorted((tmp_path / "cache").glob("*.flac")) == cached, "rendered twice"

    class CharactersToTheVoice(EspeakNg):
        """How the station read before: the characters handed to the voice as written."""

        def script(self, text: str) -> list[str]:
            return tts.pieces(text)

    before = Speech(CharactersToTheVoice("cmn-latn-pinyin"), tmp_path / "cache", 22050,
                    max_bytes=16 << 20, max_entries=16, max_render_bytes=8 << 20)
    assert before.engine.name == engine.name
    before.sound(text, cached=True).close()
    assert len(list((tmp_path / "cache").glob("*.flac"))) == 2, "a changed reading reused"
    with pytest.raises(TtsError, match="nothing to say"):
        speech.sound("★", cached=False)
    # A prompt is rendered once and then ready for the alarm path without reading again.
    assert speech.ready("报警已发送") is None
    speech.prompt("报警已发送")
    ready = speech.ready("报警已发送")
    assert ready is not None and len(ready) > 22050 // 2


def test_a_reading_that_fails_or_hangs_is_a_tts_error_not_a_hang():
    """The child that reads: bad input is refused with a message; a timeout and a failure
    reach the caller as TtsError (a broadcast is then refused `tts_failed`)."""
    for bad in (b"not json", b'{"text": 1}', b"[1, 2]"):
        done = subprocess.run([sys.executable, "-m", "edge.audio.reading"], input=bad,
                              capture_output=True, timeout=60)
        assert done.returncode == 2 and b"JSON list of texts" in done.stderr
    with pytest.raises(TtsError, match="took over"):
        tts.read_aloud(["银行"], voice="cmn-latn-pinyin", english="en", timeout_s=0.001)
    with pytest.raises(TtsError, match="reading the text failed"):
        tts.read_aloud(["银行"], voice="cmn-latn-pinyin", english="--voice")  # arguments refused


@needs_espeak
def test_cli_prints_what_the_station_says_and_renders_it(tmp_path):
    config = tmp_path / "station.toml"
    config.write_text(station_toml(tmp_path / "data", free_port()))
    text = "银行行长重新开会，会计15:00到，电话110。"

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge", "tts", "-c", str(config), *args],
                              capture_output=True, text=True, input=stdin, timeout=60)

    done = cli(text, "--pinyin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == script(text)
    assert done.stdout == ("yin2 hang2 hang2 zhang3 chong2 xin1 kai1 hui4, kuai4 ji4 shi2 "
                           "wu2 dian3 dao4, dian4 hua4 yao1 yao1 ling2.\n")
    assert cli("-", "--pinyin", stdin=text).stdout == done.stdout
    wav = tmp_path / "said.wav"
    done = cli(text, "-o", str(wav))
    assert done.returncode == 0, done.stderr
    info = soundfile.info(str(wav))
    assert info.samplerate == 22050 and info.duration > 3.0
    nothing = cli("★", "--pinyin")
    assert nothing.returncode == 1 and "nothing to say" in nothing.stderr
    assert cli(text).returncode == 2  # neither --pinyin nor -o: says what to give
