"""The clip library: chunked uploads are playable only whole and verified; wrong hash,
oversize, truncation, disorder and hostile ids are refused with the library intact."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edge.audio.clips import ClipError, ClipLibrary
from edge.audio.sound import FileSound
from edge.contract.commands import ClipPut, CommandRejected, parse

RATE = 8000


def wav(hz: float, seconds: float = 0.5, rate: int = RATE, fmt: str = "WAV") -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate,
                    format=fmt)
    return buf.getvalue()


def chunks(clip_id: str, data: bytes, step: int = 3000, **override) -> list[ClipPut]:  # type: ignore[no-untyped-def]
    parts = [data[i:i + step] for i in range(0, len(data), step)]
    fields = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
              "chunks": len(parts), **override}
    return [ClipPut(id=f"c{i}", clip_id=clip_id, chunk=i, data=part, **fields)
            for i, part in enumerate(parts)]


def whole(sound: FileSound) -> np.ndarray:
    try:
        return sound[0:len(sound)]
    finally:
        sound.close()


def upload(lib: ClipLibrary, puts: list[ClipPut]) -> dict[str, object]:
    result: dict[str, object] = {}
    for put in puts:
        result = lib.put_chunk(put)
    return result


def peak_hz(x: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / len(x))


@pytest.fixture
def lib(tmp_path: Path) -> ClipLibrary:
    library = ClipLibrary(tmp_path / "clips", max_bytes=64 * 1024, total_bytes=256 * 1024,
                          max_clips=3)
    assert upload(library, chunks("notice", wav(500)))["complete"] is True
    return library


def intact(lib: ClipLibrary) -> None:
    assert lib.ids() == ["notice"]
    assert peak_hz(whole(lib.load("notice", RATE)), RATE) == pytest.approx(500, abs=5)
    assert not list((lib.root / ".incoming").iterdir()), "no partial left behind"


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_uploaded_clip_in_chunks_plays_resampled(lib, fmt):
    data = wav(1000, rate=22050, fmt=fmt)
    puts = chunks("alert", data, step=2000)
    for put in puts[:-1]:
        assert lib.put_chunk(put)["complete"] is False
        with pytest.raises(ClipError) as err:
            lib.load("alert", RATE)
        assert err.value.code == "unknown_clip", "half-received is never playable"
    done = lib.put_chunk(puts[-1])
    assert done["complete"] is True and done["sha256"] == hashlib.sha256(data).hexdigest()
    samples = whole(lib.load("alert", RATE))
    assert len(samples) == pytest.approx(RATE * 0.5, abs=2)
    assert peak_hz(samples, RATE) == pytest.approx(1000, abs=5)


def test_replacing_a_clip_with_a_bad_upload_keeps_the_old_one(lib):
    data = wav(900)
    with pytest.raises(ClipError, match="sha256 mismatch"):
        upload(lib, chunks("notice", data, sha256="0" * 64))
    intact(lib)


@pytest.mark.parametrize("case", ["wrong-hash", "oversized", "truncated", "too-much-data",
                                  "out-of-order", "not-audio", "changed-header"])
def test_bad_uploads_are_rejected_library_intact(lib, case):
    data = wav(700)
    puts = chunks("new", data)
    if case == "wrong-hash":
        puts = chunks("new", data, sha256=hashlib.sha256(b"other").hexdigest())
    elif case == "oversized":
        big = wav(700, seconds=6)
        puts = chunks("new", big)
    elif case == "truncated":  # declares more than it sends
        puts = chunks("new", data, size=len(data) + 10)
    elif case == "too-much-data":
        puts = chunks("new", data, size=len(data) - 10)
    elif case == "out-of-order":
        puts = [puts[0], puts[2], puts[1], *puts[3:]]
    elif case == "not-audio":
        junk = b"RIFF" + bytes(5000)
        puts = chunks("new", junk)
    elif case == "changed-header":
        puts[1] = ClipPut(id="x", clip_id="new", sha256=puts[1].sha256, size=puts[1].size + 1,
                          chunk=1, chunks=puts[1].chunks, data=puts[1].data)
    with pytest.raises(ClipError) as err:
        upload(lib, puts)
    assert err.value.code == ("clip_interrupted" if case == "out-of-order"
                              else "clip_rejected") and err.value.message.zh
    assert not lib.exists("new")
    intact(lib)


def test_the_library_reports_what_it_holds_and_says_when_it_changes(lib, tmp_path):
    """The state's `clips`: id -> sha256[:16] of each complete clip, kept across a
    restart; a partial upload is not in it, and a restart discards it: its next chunk
    is answered clip_interrupted (the township then sends the clip again)."""
    changes: list[int] = []
    lib.on_change = lambda: changes.append(1)
    notice = hashlib.sha256(wav(500)).hexdigest()[:16]
    assert lib.held() == {"notice": notice}
    data = wav(800, fmt="MP3")
    puts = chunks("mp3", data, step=len(data) // 4 + 1)
    upload(lib, puts[:2])
    assert lib.held() == {"notice": notice} and changes == []
    reopened = ClipLibrary(lib.root, max_bytes=64 * 1024, total_bytes=256 * 1024, max_clips=3)
    with pytest.raises(ClipError) as err:
        reopened.put_chunk(puts[2])
    assert err.value.code == "clip_interrupted"
    assert upload(reopened, puts)["complete"] is True
    reopened.on_change = lambda: changes.append(2)
    assert reopened.held() == {"notice": notice, "mp3": hashlib.sha256(data).hexdigest()[:16]}
    assert reopened.delete("notice") and not reopened.delete("notice")
    assert changes == [2] and list(reopened.held()) == ["mp3"]
    assert ClipLibrary(lib.root, max_bytes=64 * 1024, total_bytes=256 * 1024,
                       max_clips=3).held() == reopened.held()


def test_an_abandoned_upload_is_never_playable_and_can_restart(lib):
    data = wav(800)
    puts = chunks("later", data)
    lib.put_chunk(puts[0])
    lib.put_chunk(puts[1])
    with pytest.raises(ClipError):
        lib.load("later", RATE)
    assert upload(lib, puts)["complete"] is True  # starting again at chunk 0 works
    assert peak_hz(whole(lib.load("later", RATE)), RATE) == pytest.approx(800, abs=5)


@pytest.mark.parametrize("hostile", ["../notice", "..", "a/b", "/etc/passwd", ".hidden",
                                     "x" * 65, "clip\x00", "ok/../../x"])
def test_hostile_ids_are_refused_at_the_edge_and_in_the_library(lib, hostile):
    data = wav(700)
    raw = json.dumps({"cmd": "clip.put", "id": "h", "clip_id": hostile,
                      "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                      "chunk": 0, "chunks": 1, "data": base64.b64encode(data).decode()})
    with pytest.raises(CommandRejected) as err:
        parse(raw.encode(), 1 << 20)
    assert "clip_id" in str(err.value)
    # Past the schema too (defence in depth): the library refuses the id itself.
    put = ClipPut(id="h", clip_id=hostile, sha256=hashlib.sha256(data).hexdigest(),
                  size=len(data), chunk=0, chunks=1, data=data)
    with pytest.raises(ClipError):
        lib.put_chunk(put)
    with pytest.raises(ClipError):
        lib.delete(hostile)
    intact(lib)
    assert sorted(p.name for p in lib.root.iterdir()) == [".incoming", "notice.clip",
                                                          "notice.sha256"]


def test_a_corrupted_clip_on_disk_is_not_played(lib):
    path = lib.root / "notice.clip"
    path.write_bytes(path.read_bytes()[:-100] + bytes(100))
    with pytest.raises(ClipError, match="corrupt"):
        lib.load("notice", RATE)


def test_delete(lib):
    assert lib.delete("notice") is True
    assert lib.delete("notice") is False
    assert lib.ids() == []



def test_disk_full_during_upload_is_a_clear_rejection(tmp_path):
    from test_outbox import fill, tiny_disk

    with tiny_disk(tmp_path / "disk", "256k") as disk:
        library = ClipLibrary(disk / "clips", max_bytes=64 * 1024, total_bytes=1 << 20,
                              max_clips=8)
        upload(library, chunks("notice", wav(500)))
        puts = chunks("big", wav(700))
        library.put_chunk(puts[0])
        filler = fill(disk)
        with pytest.raises(ClipError, match="cannot store the clip") as err:
            upload(library, puts[1:])
        assert err.value.code == "clip_rejected"
        filler.unlink()
        assert not library.exists("big")
        intact(library)


def test_the_library_is_bounded_by_count_and_bytes_and_a_full_one_refuses(lib, tmp_path):
    # The fixture's library: at most 3 clips; "notice" is in it.
    for name in ("b", "c"):
        assert upload(lib, chunks(name, wav(600 + len(name))))["complete"] is True
    with pytest.raises(ClipError, match="clips_max") as err:
        upload(lib, chunks("d", wav(700)))
    assert err.value.code == "clip_rejected"
    assert upload(lib, chunks("b", wav(650)))["complete"] is True, "replacing one still fits"
    assert lib.delete("c")
    assert upload(lib, chunks("d", wav(700)))["complete"] is True

    small = ClipLibrary(tmp_path / "small", max_bytes=64 * 1024, total_bytes=100 * 1024,
                        max_clips=10)
    big = wav(700, seconds=3.0)  # 48 KB: under the per-clip cap; three are over the total
    for name in ("x", "y"):
        assert upload(small, chunks(name, big))["complete"] is True
    with pytest.raises(ClipError, match="clips_total_bytes"):
        upload(small, chunks("z", big))
    assert upload(small, chunks("x", big))["complete"] is True, "replacing one still fits"
    assert small.ids() == ["x", "y"]
    assert not list((small.root / ".incoming").iterdir())


def test_a_sound_streamed_from_a_file_equals_the_whole_file_resampled(tmp_path):
    from edge.audio.clips import resample

    rng = np.random.default_rng(7)
    source = (0.3 * rng.standard_normal(22050 * 3)).astype(np.float32)
    path = tmp_path / "x.flac"
    soundfile.write(path, source, 22050, format="FLAC", subtype="PCM_24")
    expected = resample(soundfile.read(path, dtype="float32")[0], 22050, 16000)
    sound = FileSound(path, 16000)
    assert len(sound) == len(expected)
    blocks = [sound[i:i + 320] for i in range(0, len(sound), 320)]  # as the player reads
    assert np.allclose(np.concatenate(blocks), expected, atol=1e-5)
    assert np.allclose(sound[8000:8320], expected[8000:8320], atol=1e-5), "seek (resume)"
    sound.close()
