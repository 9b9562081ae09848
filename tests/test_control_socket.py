"""The control socket answers every request (issue 17's CI failure): a refused one with
its reason, and a handler's bug with an error, so `pingan-edge press/status` never read
an empty reply while the station runs on."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Daemon, station_toml, wait_until

from edge.unit.control import ControlServer, StatusRequest, request
from pingan_sim.localbroker import Mosquitto


class Boom(msgspec.Struct, tag_field="op", tag="boom", forbid_unknown_fields=True):
    pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    control = ControlServer(tmp_path / "control.sock")
    control.register(StatusRequest, lambda _r: {"station": "v001"})

    def boom(_r: Boom) -> dict[str, Any]:
        raise AttributeError("'NoneType' object has no attribute 'holding'")

    control.register(Boom, boom)
    control.start()
    yield control
    control.close()


def test_a_handler_that_raises_still_answers_and_the_socket_serves_on(
        server: ControlServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="edge.control"):
        reply = request(server.path, {"op": "boom"}, timeout=10)
    assert reply["ok"] is False and "holding" in reply["error"]
    failed = [r for r in caplog.records if r.getMessage() == "control.failed"]
    assert failed and failed[0].exc_info is not None  # the traceback is logged
    assert request(server.path, {"op": "status"}, timeout=10) == {"ok": True,
                                                                 "station": "v001"}


@pytest.mark.parametrize("line, says", [
    ({"op": "fly"}, "unknown request 'fly'"),
    ({"op": "status", "extra": 1}, "extra"),
    ({"nop": 1}, "op"),
])
def test_malformed_requests_are_refused_with_a_reason(server: ControlServer,
                                                      line: dict[str, Any], says: str) -> None:
    reply = request(server.path, line, timeout=10)
    assert reply["ok"] is False and says in reply["error"]


def test_a_registered_op_cannot_be_taken_twice(server: ControlServer) -> None:
    with pytest.raises(ValueError, match="already has a handler"):
        server.register(StatusRequest, lambda _r: {})


def test_a_press_the_moment_the_socket_appears_raises_the_alarm(
        broker: Mosquitto, tmp_path: Path) -> None:
    """The socket used to answer before the buttons were built: a press then reached a
    gpiozero Button without its hold thread, and the caller read an empty reply."""
    config = tmp_path / "station.toml"
    config.write_text(station_toml(tmp_path / "data", broker.port))
    sock = tmp_path / "data" / "control.sock"
    daemon = Daemon(config, simulated=True)
    try:
        wait_until(sock.exists, 30, "control socket")
        reply = request(sock, {"op": "press", "button": "panic"}, timeout=60)
        assert reply["ok"] is True, reply
        assert [e["type"] for e in reply["events"]] == ["alarm.panic"]
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0
    assert not daemon.logged("control.failed")
