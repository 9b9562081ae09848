"""Fetch a bundle over a metered, flaky link: HTTP with a bandwidth cap, resumed with a
Range request after every drop, never more bytes than the signed size.

The partial file stays on the data partition (`<sha256>.part`), so a restart of the
station, or a reboot, resumes where it stopped too. Waits run on a monotonic clock.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path

from edge.contract.events import text
from edge.update.verify import UpdateRefused

CHUNK = 16 * 1024
# The card keeps unsynced writes in RAM for minutes and writes them back in any order, so
# after a power cut a partial file may have holes past its last sync: synced every MiB,
# and cut back to a whole MiB when a download resumes it (not after a mere link drop).
SYNC_EVERY = 1 << 20


class Stopped(Exception):
    """The station is stopping: the partial file is kept for next time."""


def _truncated(have: int, size: int) -> UpdateRefused:
    return UpdateRefused("truncated", text(
        f"服务器上的更新包不完整（{have}/{size} 字节），已拒绝",
        f"the bundle on the server is truncated ({have} of the signed {size} bytes): "
        f"refused; publish the whole file and offer it again"))


def _total(content_range: str | None, content_length: str | None, have: int) -> int | None:
    """The whole file's size as the server states it (206: after the slash; 200: length)."""
    try:
        if content_range and "/" in content_range and not content_range.endswith("/*"):
            return int(content_range.rsplit("/", 1)[1])
        if content_length is not None and not content_range:
            return have + int(content_length)
    except ValueError:
        return None
    return None


def _fetch_once(url: str, part: Path, size: int, *, rate_bytes_s: int, timeout_s: float,
                stop: threading.Event, progress: Callable[[int], None]) -> None:
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have == size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    started, sent = time.monotonic(), 0
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # nothing past `have`: the file served is shorter than signed
            raise _truncated(have, size) from exc
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored Range: start again from the first byte
        total = _total(response.headers.get("Content-Range"),
                       response.headers.get("Content-Length"), have)
        if total is not None and total < size:
            raise _truncated(total, size)
        with part.open("r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            while have < size:
                if stop.is_set():
                    raise Stopped()
                chunk = response.read(min(CHUNK, size - have + 1))
                if not chunk:
                    break
                if have + len(chunk) > size:
                    raise UpdateRefused("too_large", text(
                        f"服务器发送的数据超过签名的大小（{size} 字节），已停止",
                        f"the server sent more than the signed {size} bytes: stopped"))
                out.write(chunk)
                have += len(chunk)
                sent += len(chunk)
                if have // SYNC_EVERY != (have - len(chunk)) // SYNC_EVERY:
                    out.flush()  # what a power cut keeps is a prefix to resume
                    os.fsync(out.fileno())
                progress(have)
                # The cap: never ahead of rate_bytes_s since this connection started.
                ahead = sent / rate_bytes_s - (time.monotonic() - started)
                if ahead > 0 and stop.wait(ahead):
                    raise Stopped()
            out.flush()


def download(url: str, dest: Path, size: int, *, rate_bytes_s: int, stop: threading.Event,
             progress: Callable[[int], None], timeout_s: float = 30.0,
             retry_min_s: float = 1.0, retry_max_s: float = 300.0,
             give_up_s: float = 6 * 3600.0,
             on_retry: Callable[[int, str], None] | None = None) -> Path:
    """Download `url` to `dest` (via `dest.part`), resuming after drops until `size` bytes
    are in or `give_up_s` passed. The caller checks the hash."""
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.exists():  # left by a restart or a power cut: only up to its last sync is sure
        with part.open("r+b") as f:
            f.truncate(part.stat().st_size // SYNC_EVERY * SYNC_EVERY)
    deadline = time.monotonic() + give_up_s
    wait = retry_min_s
    tries = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(url, part, size, rate_bytes_s=rate_bytes_s, timeout_s=timeout_s,
                        stop=stop, progress=progress)
            if part.stat().st_size == size:
                part.replace(dest)
                return dest
            error = f"the connection ended at {part.stat().st_size} of {size} bytes"
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                raise UpdateRefused("download_failed", text(
                    f"下载地址无效（HTTP {exc.code}），请乡镇重新下发",
                    f"the download URL answers HTTP {exc.code}: ask the township to offer "
                    f"the release again")) from exc
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, HTTPException, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        tries += 1
        if part.exists() and part.stat().st_size > before:
            wait = retry_min_s  # it moved: a link that drops often still gets there
        if on_retry is not None:
            on_retry(tries, error)
        if time.monotonic() + wait > deadline:
            raise UpdateRefused("download_failed", text(
                f"下载多次失败，已放弃：{error}",
                f"the download failed {tries} times and was given up: {error}; the "
                f"partial file is kept and the next offer resumes it"))
        if stop.wait(wait):
            raise Stopped()
        wait = min(wait * 2, retry_max_s)
