"""The simulated station: the unit's own `Station`, wired as on a Pi, plus what a bare
machine lacks:

- a private mosquitto on loopback when `broker.local_fallback` is set and the configured
  broker does not answer;
- buttons pressed from software (`pingan-edge press`): the `press` request, added to the
  station's control socket;
- with no config file, the simulation defaults: mock pins, the loudspeaker into a null
  device, a camera replaying the bundled scene, and a 4G modem on a pseudo-terminal
  (pingan_sim.modem) with two duty numbers: stop the broker, press panic, and after
  `modem.sms_after_s` the SMS lands in `<data_dir>/sms-phones.txt`, as the phones show it.
  A config file gets the same modem with `modem.port = "sim://modem"`.
"""

from __future__ import annotations

import contextlib
import json
import logging

import msgspec

from edge import config as config_mod
from edge.config import Config
from edge.logs import log
from edge.station import Station
from pingan_sim import SCENE
from pingan_sim.localbroker import BrokerError, Mosquitto, reachable
from pingan_sim.modem import ModemSim
from pingan_sim.presses import Presses

logger = logging.getLogger("edge.station")

# Added to the unit's no-file identity (edge.config.NO_FILE_TOML).
SIMULATION_TOML = f"""
[broker]
local_fallback = true

[pins]
factory = "mock"

[audio]
output = "null"
amp_warm_up_s = 0.0

[camera]
enabled = true
source = "folder"
path = {json.dumps(str(SCENE))}
loop = true
fps = 2

[modem]
enabled = true
port = "sim://modem"
sms_after_s = 15
duty_numbers = ["+8613800138000", "13900139000"]
"""

# `modem.port` that asks for the simulated modem (pingan_sim.modem) on a pseudo-terminal.
SIMULATED_MODEM = "sim://modem"
PHONES_FILE = "sms-phones.txt"


def defaults() -> Config:
    """The simulated station when no config file is given: `pingan-edge press/status/
    tail` without a config file reach it (the unit's no-file identity)."""
    return config_mod.parse(config_mod.NO_FILE_TOML + SIMULATION_TOML,
                            "<simulation defaults>")


class SimulatedStation:
    """Built, started and stopped as one; a part that fails to build closes the rest."""

    def __init__(self, config: Config) -> None:
        self._parts = contextlib.ExitStack()
        try:
            self.local_broker, config = _fallback_broker(config, self._parts)
            self.modem, config = _simulated_modem(config, self._parts)
            self.station = Station(config)
            self._parts.callback(self.station.stop)
            self.presses = Presses(self.station)
            self._parts.callback(self.presses.close)  # first: ends a burst of presses
        except BaseException:
            self._parts.close()
            raise

    def start(self) -> None:
        self.station.start()

    def stop(self) -> None:
        self._parts.close()


def _fallback_broker(config: Config, parts: contextlib.ExitStack
                     ) -> tuple[Mosquitto | None, Config]:
    """If the configured broker cannot be reached, start a private mosquitto on loopback
    (stopped by `parts`) and point the config at it."""
    broker = config.broker
    if not broker.local_fallback or reachable(broker.host, broker.port):
        return None, config
    # On the configured loopback port when it is free: a township console left at its
    # defaults (`bin/centre`: 127.0.0.1:1883, township t01) then finds this station.
    try:
        port = broker.port if broker.host in ("127.0.0.1", "localhost") else None
        local = Mosquitto(config.data_dir / "broker", port).start()
    except BrokerError:
        if port is None:
            raise
        local = Mosquitto(config.data_dir / "broker").start()
    parts.callback(local.stop)
    # To stop it by hand (the SMS fallback shows once the broker is gone): kill this pid.
    if local.pid is not None:
        (local.workdir / "mosquitto.pid").write_text(f"{local.pid}\n", encoding="utf-8")
    log(logger, "warning", "station.local_broker", port=local.port,
        unreachable=f"{broker.host}:{broker.port}",
        action="simulation only: started a private mosquitto on loopback")
    broker = msgspec.structs.replace(broker, host="127.0.0.1", port=local.port)
    return local, msgspec.structs.replace(config, broker=broker)


def _simulated_modem(config: Config, parts: contextlib.ExitStack
                     ) -> tuple[ModemSim | None, Config]:
    """With `modem.port = "sim://modem"`: a modem on a pseudo-terminal (closed by `parts`)
    that writes what the phones receive to <data_dir>/sms-phones.txt; the config points
    the station's modem at it."""
    modem = config.modem
    if not modem.enabled or modem.port != SIMULATED_MODEM:
        return None, config
    config.data_dir.mkdir(parents=True, exist_ok=True)
    phones = config.data_dir / PHONES_FILE
    sim = ModemSim("EC25", phones_file=phones)
    parts.callback(sim.close)
    log(logger, "info", "station.simulated_modem", port=sim.path, phones=str(phones),
        duty_numbers=modem.duty_numbers, sms_after_s=modem.sms_after_s,
        action=f"simulation only: stop the broker and press panic; the SMS lands in {phones}")
    return sim, msgspec.structs.replace(
        config, modem=msgspec.structs.replace(modem, port=sim.path))
