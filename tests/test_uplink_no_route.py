"""A unit whose link is not up yet (at boot; a 4G modem still registering) has no route to
the broker. Those failures never reach the broker, so the uplink tries again every
NO_ROUTE_RETRY_S without growing its back-off, and connects as soon as the link comes up.

A real station process in its own network namespace, behind a veth pair whose far end
holds a real Mosquitto listener: the namespace's end down (no route: ENETUNREACH), then up.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, station_toml

from edge.link.uplink import NO_ROUTE_RETRY_S
from pingan_sim.localbroker import Mosquitto

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")

HOST, UNIT = "10.213.7.1", "10.213.7.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    """A namespace for the unit and a cable to this host, the unit's end still down."""
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"pingan-nr-{tag}", f"vh{tag}", f"vu{tag}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"{HOST}/30", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{UNIT}/30", "dev", there)
        yield ns, there
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_no_route_is_tried_again_often_and_the_link_coming_up_connects(
        link: tuple[str, str], tmp_path: Path) -> None:
    ns, there = link
    broker = Mosquitto(tmp_path / "broker", persistence=False)
    port = broker.port
    broker.extra = f"listener {port} {HOST}"  # the township's side of the cable
    broker.start()
    config = tmp_path / "station.toml"
    # A back-off that starts at 1 s: a failure that grew it would say retry_in_s 1.0 first.
    config.write_text(station_toml(tmp_path / "data", port,
                                   broker={"host": HOST, "port": port},
                                   uplink={"backoff_min_s": 1.0, "backoff_max_s": 600.0}))
    daemon = Daemon(config, prefix=("ip", "netns", "exec", ns))
    try:
        failed = daemon.wait_logged("uplink.connect_failed", 30)
        assert "unreachable" in failed["error"].lower(), failed
        assert failed["retry_in_s"] == NO_ROUTE_RETRY_S
        daemon.wait_logged("station.started", 30)
        assert not daemon.logged("uplink.connected")
        ip("-n", ns, "link", "set", there, "up")
        daemon.wait_logged("uplink.connected", 30)
        # Logged once for the whole outage, not once per attempt.
        assert len(daemon.logged("uplink.connect_failed")) == 1
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.finish()
        broker.stop()
    assert code == 0
