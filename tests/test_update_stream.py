"""The streamed update's local server (edge/update/stream.py) and a streamed offer up to
the install, on real parts: a static HTTP server with Range requests that drops the link,
real verity bundles signed by openssl keys and checked by Debian's `rauc info`.

RAUC's streaming itself (its NBD device, dm-verity) needs a kernel this machine lacks; it
is shown by `firmware/boot-test --update` in QEMU with the image's rebuilt RAUC."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_update_offer import Rig, rig  # noqa: F401  (the fixture)

from edge.update import stream
from edge.update.verify import UpdateRefused
from pingan_sim.update_rig import BundleServer, build_release, make_signer


@pytest.fixture
def server() -> Iterator[BundleServer]:
    s = BundleServer().start()
    yield s
    s.stop()


def get(url: str, rng: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Range": rng} if rng else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def proxy_for(url: str, part: Path, size: int, **kw: object) -> stream.BundleProxy:
    return stream.BundleProxy(url, stream.BundleCache(part, size), rate_bytes_s=1 << 30,
                              stop=threading.Event(), retry_min_s=0.01, retry_max_s=0.05,
                              **kw)  # type: ignore[arg-type]


def test_ranges_come_through_whole_over_a_dropping_link_and_no_block_twice(
        tmp_path: Path, server: BundleServer) -> None:
    data = bytes(range(256)) * (3 * 4096 + 17)  # not a whole number of blocks
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(data)
    server.drop_every = 20 * 1024
    url = server.serve("b.raucb", bundle)
    part = tmp_path / "update/x.raucb"
    proxy = proxy_for(url, part, len(data))
    local = proxy.start()
    try:
        # RAUC's first request (the squashfs magic), a range across blocks, the tail.
        assert get(local, "bytes=0-3") == (206, data[:4])
        assert get(local, "bytes=5000-70000") == (206, data[5000:70001])
        assert get(local, f"bytes={len(data) - 100}-") == (206, data[-100:])
        fetched = proxy.fetched
        assert get(local, "bytes=4096-8191") == (206, data[4096:8192])
        assert proxy.fetched == fetched, "a block already held is not fetched again"
        assert proxy.tries > 0, "the link dropped"
    finally:
        proxy.close()
    # A new server (a restart of the station) resumes from what is on the data partition.
    kept = stream.BundleCache(part, len(data))
    assert 0 < kept.held() < len(data)
    served = len(server.requests)
    again = proxy_for(url, part, len(data))
    local = again.start()
    try:
        assert get(local) == (200, data)
    finally:
        again.close()
    starts = [int(r[6:].split("-")[0]) for _, r in server.requests[served:] if r]
    assert starts and not any(kept.has(s // 4096) for s in starts), starts
    assert part.read_bytes() == data


def test_a_file_shorter_or_longer_than_signed_is_refused(
        tmp_path: Path, server: BundleServer) -> None:
    bundle = tmp_path / "b.raucb"
    bundle.write_bytes(b"x" * 10000)
    url = server.serve("b.raucb", bundle)
    for size, code in ((20000, "truncated"), (8000, "too_large"), (10000 + 40960, "truncated")):
        proxy = proxy_for(url, tmp_path / f"p{size}.raucb", size)
        local = proxy.start()
        try:
            with pytest.raises(urllib.error.HTTPError) as answered:
                get(local, f"bytes={size - 10}-{size - 1}")
            assert answered.value.code == 502
            assert isinstance(proxy.refusal, UpdateRefused) and proxy.refusal.code == code
        finally:
            proxy.close()


def test_a_link_that_stays_down_gives_up_within_the_budget(tmp_path: Path) -> None:
    proxy = proxy_for("http://127.0.0.1:9/b.raucb", tmp_path / "p.raucb", 10000,
                      request_budget_s=0.5)
    with pytest.raises(stream.Unavailable):
        proxy.ensure(0, 9999)
    assert proxy.unavailable and proxy.tries >= 2


def test_a_streamed_offer_checks_the_signature_from_the_tail_alone(rig: Rig) -> None:  # noqa: F811
    """`update.stream` on (as on a unit): before RAUC is asked to install, only the
    bundle's signature is fetched, and every refusal holds."""
    rig.config_path.write_text(rig.config_path.read_text().replace(
        "stream = false", "stream = true"))
    good = build_release(rig.tmp, "0.2.0", rig.signer)
    stranger = make_signer(rig.tmp / "keys", "stranger")
    foreign = build_release(rig.tmp, "0.2.0", stranger)
    older = build_release(rig.tmp, "0.0.9", rig.signer)
    tampered = rig.tmp / "tampered.raucb"
    data = bytearray(good.bundle.read_bytes())
    data[-200] ^= 0x01  # inside the CMS signature at the end
    tampered.write_bytes(bytes(data))
    truncated = rig.tmp / "truncated.raucb"
    truncated.write_bytes(good.bundle.read_bytes()[: good.release.size - 4096])
    rig.start_station()
    cases = [
        ("wrong_key", foreign, None, None),
        ("bad_signature", good, rig.server.serve("t.raucb", tampered), None),
        ("truncated", good, rig.server.serve("h.raucb", truncated), None),
        ("downgrade", older, None, None),
        # The descriptor of 0.2.0 in front of a validly signed bundle of 0.0.9 (same size
        # or not: the size is refused first, else the version RAUC reads).
        ("too_large" if older.release.size > good.release.size else "truncated"
         if older.release.size < good.release.size else "bad_version", good,
         rig.server.serve("o.raucb", older.bundle), None),
    ]
    for n, (code, built, url, changes) in enumerate(cases):
        sent = len(rig.server.requests)
        refused = rig.wait_update("update.refused", rig.offer(
            built, f"s-{n}", url=url, changes=changes)["id"])
        assert refused["payload"]["code"] == code, refused["payload"]
        ranges = [r for _, r in rig.server.requests[sent:]]
        assert all(r is not None for r in ranges), "range requests only"
        fetched = sum(int(b) - int(a) + 1 for a, b in (r[6:].split("-") for r in ranges
                                                          if r))
        assert fetched <= 2 * 4096 + 8192, f"more than the tail was fetched: {ranges}"
    assert list((rig.tmp / "data/update").glob("*.raucb*")) == []
    # A good one is verified from its tail; the install is RAUC's (streamed on a unit).
    sent = len(rig.server.requests)
    rig.offer(good, "s-good")
    rig.wait_update("update.verified", "s-good")
    ranges = [r for _, r in rig.server.requests[sent:]]
    assert ranges and ranges[0] is not None and int(ranges[0][6:].split("-")[0]) > \
        good.release.size // 2, ranges
