"""The 4G modem: AT port (`at`), each model's habits as data (`profiles`), the modem part
(`device`), SMS PDUs (`pdu`), validated readings (`signal`) and the SMS fallback for
alarms, at least once (`fallback`). `attach` wires them
for a station."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from gpiozero import OutputDevice

from edge.config import Config
from edge.contract.events import Event, ModemReport
from edge.health import Health
from edge.link.uplink import Uplink
from edge.modem.device import Modem
from edge.modem.fallback import SmsFallback
from edge.store.outbox import Outbox


class ModemParts:
    """The modem and its SMS fallback, started and closed together."""

    def __init__(self, modem: Modem, fallback: SmsFallback, power: Any | None) -> None:
        self.modem = modem
        self.fallback = fallback
        self._power = power

    def start(self) -> None:
        self.modem.start()
        self.fallback.start()

    def close(self) -> None:
        # The watcher first, then the modem (a part in flight ends at once, and is left
        # `submitted`: sent again at the next start), then the log the modem reports to.
        self.fallback.halt()
        self.modem.close()
        self.fallback.close()
        if self._power is not None:
            self._power.close()

    def report(self) -> ModemReport:
        return self.modem.report()

    def held_back(self) -> int:
        return self.fallback.held_back()

    def status(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self.modem.report()), "held_back": self.held_back()}


def attach(config: Config, pin_factory: Any, outbox: Outbox, uplink: Uplink, health: Health,
           submit: Callable[[Event], Any]) -> ModemParts | None:
    """The modem parts when `modem.enabled`, else None. Nothing here touches the port:
    the modem thread opens it, so an absent modem never delays the start."""
    if not config.modem.enabled:
        return None
    power = (OutputDevice(config.pins.modem_power, initial_value=False, pin_factory=pin_factory)
             if config.modem.power_relay else None)
    modem = Modem(config.modem, health, power=power)
    try:
        fallback = SmsFallback(config, outbox, uplink, health, modem, submit)
    except Exception:
        if power is not None:
            power.close()
        raise
    return ModemParts(modem, fallback, power)
