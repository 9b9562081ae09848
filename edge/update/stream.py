"""The bundle over a metered, flaky link: a local HTTP server (127.0.0.1) in front of the
township's URL, which RAUC reads from.

RAUC streams a verity bundle with HTTP range requests (its NBD helper), and with an
adaptive (`block-hash-index`) image it asks only for the blocks neither root slot holds.
RAUC 1.8 retries a failed request five times a second apart, then fails the install;
this server stands in between so that the unit keeps what the issue asks of a download:

- the cap: every byte from the township passes one token bucket (`rate_bytes_s`);
- resume: each byte fetched is kept in a sparse file on the data partition
  (`<sha256>.raucb.part`, with a map of the 4 KiB blocks it holds), so a dropped link,
  a retried install, a restart of the station or a reboot never fetches a block twice;
- a link that drops: a request waits and retries the township until it has its bytes, up
  to `request_budget_s`, less than the kernel's NBD timeout (300 s, set by RAUC);
- progress: bytes fetched from the township, for the `update.downloading` events;
- the signed size: a server whose file is shorter or longer than the descriptor says is
  refused (`truncated`, `too_large`), and nothing past the signed size is asked for.

Nothing in the file is trusted for holding it: RAUC checks the signature over the
manifest (which holds the payload's dm-verity root hash), and dm-verity checks every block
as it is read; the station's `rauc info` reads the same file for the signature.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from typing import Any

from edge.contract.events import text
from edge.update.verify import UpdateRefused

BLOCK = 4096
# One request to the township: a few seconds at the cap, so a drop costs little.
MAX_FETCH = 256 * 1024
CHUNK = 16 * 1024
# RAUC 1.8 gives the kernel's NBD device a 300 s timeout per request: answer before it.
REQUEST_BUDGET_S = 240.0
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class Stopped(Exception):
    """The station is stopping: the fetched blocks are kept for next time."""


class Unavailable(Exception):
    """The township could not be reached within the budget: try again later."""


def _truncated(have: int, size: int) -> UpdateRefused:
    return UpdateRefused("truncated", text(
        f"服务器上的更新包不完整（{have}/{size} 字节），已拒绝",
        f"the bundle on the server is truncated ({have} of the signed {size} bytes): "
        f"refused; publish the whole file and offer it again"))


def _too_large(have: int, size: int) -> UpdateRefused:
    return UpdateRefused("too_large", text(
        f"服务器上的更新包比签名的大（{have} > {size} 字节），已拒绝",
        f"the bundle on the server is larger than signed ({have} > {size} bytes): refused"))


class BundleCache:
    """The bundle's bytes as they arrive: a sparse file of the signed size and a map of
    the whole 4 KiB blocks it holds (the last block may be short). The map is written
    after the data is on disk, so a block it marks is there after a power cut."""

    def __init__(self, part: Path, size: int) -> None:
        self.part = part
        self.size = size
        self.blocks = (size + BLOCK - 1) // BLOCK
        self.map_path = part.with_name(part.name + ".map")
        part.parent.mkdir(parents=True, exist_ok=True)
        fresh = not part.exists() or part.stat().st_size != size
        if fresh:
            with part.open("wb") as f:
                f.truncate(size)
            self.map_path.unlink(missing_ok=True)
        want = (self.blocks + 7) // 8
        found = b"" if fresh or not self.map_path.exists() else self.map_path.read_bytes()
        self._map = bytearray(found[:want].ljust(want, b"\0"))
        self._lock = threading.Lock()

    def has(self, block: int) -> bool:
        return bool(self._map[block >> 3] & (1 << (block & 7)))

    def held(self) -> int:
        """Bytes held (whole blocks; the short last block counts as its length)."""
        n = sum(bin(b).count("1") for b in self._map)
        if self.blocks and self.has(self.blocks - 1):
            n -= 1
            return n * BLOCK + (self.size - (self.blocks - 1) * BLOCK)
        return n * BLOCK

    def missing(self, first: int, last: int) -> list[tuple[int, int]]:
        """Runs of blocks in [first, last] not held, each at most MAX_FETCH long."""
        runs: list[tuple[int, int]] = []
        b = first
        while b <= last:
            if self.has(b):
                b += 1
                continue
            start = b
            while b <= last and not self.has(b) and (b - start + 1) * BLOCK <= MAX_FETCH:
                b += 1
            runs.append((start, b - 1))
        return runs

    def write(self, offset: int, data: bytes) -> None:
        """Whole blocks starting at a block boundary (the last may end at the file's end)."""
        with self._lock:
            fd = os.open(self.part, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            for b in range(offset // BLOCK, (offset + len(data) + BLOCK - 1) // BLOCK):
                self._map[b >> 3] |= 1 << (b & 7)
            fd = os.open(self.map_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, bytes(self._map), 0)
            finally:
                os.close(fd)

    def read(self, offset: int, length: int) -> bytes:
        with self.part.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def remove(self) -> None:
        self.part.unlink(missing_ok=True)
        self.map_path.unlink(missing_ok=True)


class BundleProxy:
    """Serves the bundle at `url` to RAUC on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, url: str, cache: BundleCache, *, rate_bytes_s: int, stop: threading.Event,
                 timeout_s: float = 30.0, retry_min_s: float = 1.0, retry_max_s: float = 60.0,
                 request_budget_s: float = REQUEST_BUDGET_S,
                 on_fetched: Callable[[int], None] | None = None,
                 on_retry: Callable[[int, str], None] | None = None) -> None:
        self.url = url
        self.cache = cache
        self.rate = rate_bytes_s
        self.stop = stop
        self.timeout_s = timeout_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.request_budget_s = request_budget_s
        self.on_fetched = on_fetched
        self.on_retry = on_retry
        # What RAUC's failure means: a refusal of the township's file, or the link.
        self.refusal: UpdateRefused | None = None
        self.unavailable: str | None = None
        self.fetched = 0  # bytes from the township, this run
        self.tries = 0
        self._bucket = threading.Lock()
        self._due = time.monotonic()
        self._fetch_lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # --- the township's side ------------------------------------------------------
    def _pace(self, n: int) -> None:
        """The cap, over every connection together: never ahead of `rate` bytes/s."""
        with self._bucket:
            now = time.monotonic()
            self._due = max(self._due, now - 1.0) + n / self.rate
            ahead = self._due - now
        if ahead > 0 and self.stop.wait(ahead):
            raise Stopped()

    def _fetch_run(self, first: int, last: int) -> None:
        start = first * BLOCK
        end = min((last + 1) * BLOCK, self.cache.size) - 1
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={start}-{end}"})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # nothing at `start`: the file served is shorter than signed
                total = exc.headers.get("Content-Range", "").rpartition("/")[2]
                raise _truncated(int(total) if total.isdigit() else start, self.cache.size) \
                    from exc
            if exc.code in (403, 404, 410):
                raise UpdateRefused("download_failed", text(
                    f"下载地址无效（HTTP {exc.code}），请乡镇重新下发",
                    f"the download URL answers HTTP {exc.code}: ask the township to offer "
                    f"the release again")) from exc
            raise
        with response:
            if response.status != 206:
                raise UpdateRefused("download_failed", text(
                    "乡镇的服务器不支持分段下载（Range），请换用支持的服务器",
                    f"the township's server answers a range request with HTTP "
                    f"{response.status}: it must support Range requests (nginx and the "
                    f"console do)"))
            total = response.headers.get("Content-Range", "").rpartition("/")[2]
            if total.isdigit() and int(total) != self.cache.size:
                raise (_truncated if int(total) < self.cache.size else _too_large)(
                    int(total), self.cache.size)
            got = bytearray()
            want = end - start + 1
            try:
                while len(got) < want:
                    if self.stop.is_set():
                        raise Stopped()
                    chunk = response.read(min(CHUNK, want - len(got)))
                    if not chunk:
                        raise ConnectionError(f"the connection ended after {len(got)} of "
                                              f"{want} bytes")
                    got += chunk
                    self.fetched += len(chunk)
                    self._pace(len(chunk))
            finally:
                # What came before a drop is kept: whole blocks (or the file's short end).
                keep = len(got) if len(got) == want else len(got) // BLOCK * BLOCK
                if keep:
                    self.cache.write(start, bytes(got[:keep]))
                    if self.on_fetched is not None:
                        self.on_fetched(self.fetched)

    def ensure(self, start: int, end: int, budget_s: float | None = None) -> None:
        """Bytes [start, end] are in the cache when this returns: fetched from the
        township where missing, retried after drops until `budget_s` has passed."""
        if self.refusal is not None:
            raise self.refusal
        if not self.cache.missing(start // BLOCK, end // BLOCK):
            return  # held: served at once, even while another request waits for the link
        deadline = time.monotonic() + (budget_s or self.request_budget_s)
        wait = self.retry_min_s
        with self._fetch_lock:  # one fetch at a time: the cap is the link's, not ours
            while True:
                runs = self.cache.missing(start // BLOCK, end // BLOCK)
                if not runs:
                    return
                before = self.fetched
                try:
                    for first, last in runs:
                        self._fetch_run(first, last)
                    continue
                except UpdateRefused as exc:
                    self.refusal = exc
                    raise
                except (urllib.error.URLError, OSError, HTTPException, TimeoutError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                self.tries += 1
                if self.fetched - before >= BLOCK:
                    wait = self.retry_min_s  # it moved: a link that drops often gets there
                if self.on_retry is not None:
                    self.on_retry(self.tries, error)
                if time.monotonic() + wait > deadline:
                    self.unavailable = error
                    raise Unavailable(error)
                if self.stop.wait(wait):
                    raise Stopped()
                wait = min(wait * 2, self.retry_max_s)

    # --- RAUC's side --------------------------------------------------------------
    def start(self) -> str:
        """Serve; returns the URL RAUC is given."""
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                size = proxy.cache.size
                found = _RANGE.match(self.headers.get("Range", ""))
                start, end = 0, size - 1
                if found:
                    start = int(found[1])
                    end = min(int(found[2]) if found[2] else size - 1, size - 1)
                    if start > end:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                if body:
                    # The first piece before the headers: a refusal is still an HTTP error.
                    first_end = min(end, (start // MAX_FETCH + 1) * MAX_FETCH - 1)
                    try:
                        proxy.ensure(start, first_end)
                    except (UpdateRefused, Unavailable, Stopped):
                        # Why is kept in the proxy (refusal, unavailable) for the updater.
                        self.send_error(502, "the township's bundle could not be fetched")
                        return
                self.send_response(206 if found else 200)
                if found:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if not body:
                    return
                pos = start
                try:
                    while pos <= end:
                        piece_end = min(end, (pos // MAX_FETCH + 1) * MAX_FETCH - 1)
                        proxy.ensure(pos, piece_end)
                        self.wfile.write(proxy.cache.read(pos, piece_end - pos + 1))
                        pos = piece_end + 1
                except (UpdateRefused, Unavailable, Stopped, OSError):
                    self.close_connection = True  # a short body: the client sees it fail

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="update-proxy",
                         daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/bundle.raucb"

    def close(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown()
                self._server.server_close()
            self._server = None
