"""What reading Mandarin right costs: the text → pinyin step (edge/audio/reading.py) that
now comes before espeak-ng, against espeak-ng's own rendering of the same text.

What it measures
    in process:  `reading.script(text)` per sentence of tests/data/mandarin_readings.tsv
                 once pypinyin is loaded (what the child process does per text), and for a
                 2,000-character broadcast (the largest `broadcast.play` text).
    child:       `tts.read_aloud([text])`, the way the station reads: one child process
                 (`python -m edge.audio.reading`, at background priority) per text or per
                 batch of prompts. Wall time and the child's peak RSS.
    station:     the RSS a process has after `tts.engine(...).script(...)` (pypinyin is
                 not loaded into it), against one that imports pypinyin itself.
    espeak-ng:   `EspeakNg.render` of the same short sentence (its pinyin), per call.

    Medians and nearest-rank p90, never means; the first round is not counted.

Run
    .venv/bin/python bench/tts_reading.py            # ~1 min
    .venv/bin/python bench/tts_reading.py --rounds 5
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "银行行长通知：明天15:00开会，请拨打110。"


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, math.ceil(0.9 * len(xs)) - 1)]


def timed(fn: object, rounds: int) -> list[float]:
    out = []
    for i in range(rounds + 1):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        if i:
            out.append(time.perf_counter() - t)
    return out


def rss_after(code: str) -> int:
    done = subprocess.run([sys.executable, "-c", code + (
        "\nprint(int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]))")],
        capture_output=True, text=True, check=True, cwd=ROOT)
    return int(done.stdout.split()[-1]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    from edge.audio import reading, tts
    from edge.config import AudioSection

    rows = [line.split("\t")[0] for line in
            (ROOT / "tests/data/mandarin_readings.tsv").read_text("utf-8").splitlines()
            if line and not line.startswith("#")]
    reading.script("预热")  # pypinyin loaded once, as in the child
    per = timed(lambda: [reading.script(t) for t in rows], args.rounds)
    per_sentence = [x / len(rows) for x in per]
    long = (SENTENCE * 80)[:2000]
    long_t = timed(lambda: reading.script(long), args.rounds)
    child = timed(lambda: tts.read_aloud([SENTENCE], voice="cmn-latn-pinyin", english="en"),
                  args.rounds)
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    engine = tts.EspeakNg(AudioSection().tts_voice)
    said = reading.script(SENTENCE)[0]
    render = timed(lambda: engine.render(said), args.rounds)
    station = rss_after("from edge.audio import tts\nfrom edge.config import AudioSection\n"
                        f"tts.engine(AudioSection()).script({SENTENCE!r})")
    inproc = rss_after(f"from edge.audio import reading\nreading.script({SENTENCE!r})")

    def ms(xs: list[float]) -> str:
        return f"median {statistics.median(xs) * 1e3:.2f} ms, p90 {p90(xs) * 1e3:.2f} ms"

    print(f"reading, in process, per sentence ({len(rows)} sentences): {ms(per_sentence)}")
    print(f"reading, in process, 2,000 characters: {ms(long_t)}")
    print(f"reading in a child process (station's way), one sentence: {ms(child)}; "
          f"child peak RSS {child_rss} MB")
    print(f"espeak-ng render of the same sentence: {ms(render)}")
    print(f"RSS after reading: station's process {station} MB (pypinyin in the child); "
          f"pypinyin in process {inproc} MB; difference {inproc - station} MB")


if __name__ == "__main__":
    main()
