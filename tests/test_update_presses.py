"""While a unit updates it cannot take a press: the LED says so, and a button still held
when the station comes back is taken at once (issue 22's goal for the time without presses).
Real parts: gpiozero's MockFactory pins, Mosquitto, the station itself."""

from __future__ import annotations

import time

import pytest
from conftest import make_config, wait_until
from gpiozero import LED
from gpiozero.pins.mock import MockFactory, MockPin

from edge.station import Station
from edge.unit.indicator import AlarmIndicator, Mode


def led_toggles(pin, seconds: float) -> int:  # type: ignore[no-untyped-def]
    pin.clear_states()
    time.sleep(seconds)
    return len(pin.states) - 1


class HeldSwitch(MockPin):
    """A push button to ground, held closed: the pin's pull-up cannot lift the line while
    it is (gpiozero's MockPin drives itself high when a pull-up is set, as if nothing were
    connected; on the unit a closed switch wins)."""

    closed = False

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.closed:
            self.drive_low()

    def press(self) -> None:
        self.closed = True
        self.drive_low()

    def release(self) -> None:
        self.closed = False
        self.drive_high()


@pytest.mark.parametrize("hold_s", [0.3, 0.0])
def test_a_panic_button_held_down_when_the_station_starts_is_taken_at_once(
        broker, township_factory, tmp_path, hold_s: float) -> None:  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    station = Station(make_config(tmp_path / "station", broker.port,
                                  buttons={"panic_hold_s": hold_s}))
    try:
        panic = station.pin_factory.pin(station.config.pins.panic, pin_class=HeldSwitch)
        panic.press()  # held through the reboot: no edge for gpiozero to see
        station.start()
        # Taken while still held, without waiting for a release or a new press.
        alarm = wait_until(lambda: [e for e in township.events()
                                    if e["type"] == "alarm.panic"], 20, "the held alarm")
        assert alarm[0]["payload"] == {"source": "button", "held_s": hold_s}
        time.sleep(hold_s + 0.5)  # past the hold time: the hold timer must not raise it again
        panic.release()
        broadcast = station.pin_factory.pin(station.config.pins.broadcast)
        broadcast.drive_low()  # a marker: once it arrives, a second alarm would have too
        broadcast.drive_high()
        wait_until(lambda: any(e["type"] == "button.broadcast" for e in township.events()),
                   20, "the broadcast marker")
        assert [e["type"] for e in township.unique_events()] == [
            "alarm.panic", "button.broadcast"]
        # The next press is an ordinary one again.
        panic.press()
        time.sleep(hold_s + 0.2)
        panic.release()
        wait_until(lambda: len({e["id"] for e in township.events()
                                if e["type"] == "alarm.panic"}) == 2, 20, "the next alarm")
    finally:
        station.stop()


def test_a_station_started_with_no_button_down_raises_nothing(
        broker, township_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    station = Station(make_config(tmp_path / "station", broker.port))
    try:
        station.start()
        broadcast = station.pin_factory.pin(station.config.pins.broadcast)
        broadcast.drive_low()
        broadcast.drive_high()
        wait_until(lambda: township.events(), 20, "the broadcast marker")
        assert [e["type"] for e in township.unique_events()] == ["button.broadcast"]
    finally:
        station.stop()


def test_the_updating_pattern_is_a_slow_blink_that_an_alarm_outranks() -> None:
    factory = MockFactory()
    led = LED(5, pin_factory=factory)
    now = [100.0]
    indicator = AlarmIndicator(led, ack_display_s=2.0, clock=lambda: now[0])
    indicator.updating()
    assert indicator.mode is Mode.UPDATING
    # 1 s on, 1 s off: two or three changes in 2.5 s (the alarm's fast blink makes ~12).
    assert 2 <= led_toggles(factory.pin(5), 2.5) <= 4
    indicator.raised("e1")  # a press while the unit goes down: the alarm is what shows
    assert indicator.mode is Mode.PENDING
    assert led_toggles(factory.pin(5), 1.0) >= 4
    indicator.delivered("e1")
    assert indicator.mode is Mode.DELIVERED and led.value == 1
    indicator.acknowledged("e1")
    assert indicator.mode is Mode.UPDATING
    now[0] += 2.5  # past the acknowledged display
    indicator.updating(False)
    assert indicator.mode is Mode.IDLE and not led.is_lit
    factory.close()
