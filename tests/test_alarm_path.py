"""Panic button → durable outbox → QoS 1 → township, and the LED that tells staff."""

from __future__ import annotations

import time

from conftest import schema, wait_until

from edge.unit.indicator import Mode


def led_toggles(pin, seconds: float) -> int:  # type: ignore[no-untyped-def]
    """How many times the LED pin changed level while we watched it (MockPin records every
    change itself, so a busy machine cannot make us miss a short flash)."""
    pin.clear_states()
    time.sleep(seconds)
    return len(pin.states) - 1


def test_panic_press_reaches_township_valid_against_schema(broker, start_station,
                                                           township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected, what="station connected")
    pin = station.pin_factory.pin(station.config.pins.panic)

    pin.drive_low()
    time.sleep(0.25)  # longer than panic_hold_s = 0.1
    pin.drive_high()

    events = wait_until(township.events, what="alarm at the township")
    assert [e["type"] for e in events] == ["alarm.panic"]
    alarm = events[0]
    schema("event").validate(alarm)
    assert alarm["station"] == "v001" and alarm["township"] == "t01"
    assert alarm["seq"] == 1 and alarm["priority"] == 0
    assert alarm["payload"] == {"source": "button", "held_s": 0.1}
    state = wait_until(lambda: township.on("/v001/state"), what="state")
    schema("state").validate(state[-1])
    assert state[-1]["online"] is True


def test_short_brush_of_panic_button_sends_nothing(broker, start_station, township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port, buttons={"panic_hold_s": 0.5})
    wait_until(lambda: station.uplink.connected)
    pin = station.pin_factory.pin(station.config.pins.panic)
    pin.drive_low()
    time.sleep(0.1)
    pin.drive_high()
    broadcast = station.pin_factory.pin(station.config.pins.broadcast)
    broadcast.drive_low()
    broadcast.drive_high()
    # The broadcast press is sent after the brush: once it arrives, the brush would have too.
    events = wait_until(township.events, what="broadcast event")
    assert [e["type"] for e in events] == ["button.broadcast"]
    assert station.alarm.indicator.mode is Mode.IDLE


def test_led_blinks_until_delivered_then_steady_then_ack_pattern(own_broker, start_station,
                                                                 township_factory):
    station = start_station(own_broker.port, indicator={"ack_display_s": 30})
    wait_until(lambda: station.uplink.connected)
    led = station.pin_factory.pin(station.config.pins.alarm_led)
    assert led.state == 0
    # Subscribed before the outage, with a session the broker keeps: the alarm may be
    # delivered the moment the broker is back, before a new subscriber could connect.
    township = township_factory(own_broker.port, session="centre")

    own_broker.stop()
    wait_until(lambda: not station.uplink.connected, what="station notices broker down")
    future = station.alarm.raise_alarm("simulator", 0.0)
    stored = future.result(5)
    wait_until(lambda: station.alarm.indicator.mode is Mode.PENDING, 2, "LED told of the alarm")
    assert led_toggles(led, 1.0) >= 3, "LED must blink fast (0.2 s / 0.2 s) while undelivered"

    own_broker.start()
    wait_until(lambda: station.alarm.indicator.mode is Mode.DELIVERED, 15, "delivered")
    time.sleep(0.05)
    assert led.state == 1 and led_toggles(led, 0.6) == 0, "steady once delivered"
    wait_until(lambda: [e for e in township.unique_events() if e["id"] == stored.id])

    township.command("v001", {"cmd": "alarm.ack", "id": "ack-1", "event_id": stored.id,
                              "by": "officer-wang"})
    result = wait_until(lambda: township.on("/v001/cmd/result"), what="ack result")[0]
    schema("event").validate(result)
    assert result["payload"]["ok"] is True and result["payload"]["cmd_id"] == "ack-1"
    assert station.alarm.indicator.mode is Mode.ACKNOWLEDGED
    # Short flash every 2 s: on for 0.1 s, so over 2.5 s the pin goes up and down once or twice.
    toggles = led_toggles(led, 2.5)
    assert 2 <= toggles <= 4, toggles


def test_ack_display_ends_with_led_off():
    from gpiozero import LED
    from gpiozero.pins.mock import MockFactory

    from edge.unit.indicator import AlarmIndicator

    now = [100.0]
    factory = MockFactory()
    led = LED(5, pin_factory=factory)
    indicator = AlarmIndicator(led, ack_display_s=2.0, clock=lambda: now[0])
    indicator.raised("e1")
    indicator.delivered("e1")
    assert indicator.mode is Mode.DELIVERED and led.value == 1
    indicator.acknowledged("e1")
    assert indicator.mode is Mode.ACKNOWLEDGED
    now[0] += 2.5
    assert indicator.mode is Mode.IDLE
    # One flash (2 s / 2 s period), then gpiozero leaves it off for good.
    assert led_toggles(factory.pin(5), 3.0) <= 2
    assert led_toggles(factory.pin(5), 1.0) == 0 and not led.is_lit
    factory.close()


def test_a_delivery_heard_before_the_led_was_told_leaves_it_steady() -> None:
    """The alarm is stored before the LED is told of it: on a loaded unit its PUBACK can
    come first. The LED must then show "delivered", never blink for it."""
    from gpiozero import LED
    from gpiozero.pins.mock import MockFactory

    from edge.unit.indicator import AlarmIndicator

    factory = MockFactory()
    led = LED(5, pin_factory=factory)
    indicator = AlarmIndicator(led, ack_display_s=2.0)
    indicator.delivered("e1")
    indicator.raised("e1")
    assert indicator.mode is Mode.DELIVERED and led.value == 1
    assert led_toggles(factory.pin(5), 0.6) == 0
    indicator.raised("e2")  # another alarm, in the usual order, still blinks
    assert indicator.mode is Mode.PENDING
    indicator.delivered("e2")
    assert indicator.mode is Mode.DELIVERED
    factory.close()


def test_ack_for_unknown_alarm_is_an_error_and_changes_nothing(broker, start_station,
                                                               township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected)
    alarm = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: station.alarm.indicator.mode is Mode.DELIVERED)
    broadcast = station.buttons.broadcast_pressed(0.0).result(5)
    for cmd_id, event_id in (("a1", "no-such-event"), ("a2", broadcast.id)):
        township.command("v001", {"cmd": "alarm.ack", "id": cmd_id, "event_id": event_id})
    results = wait_until(lambda: len(township.on("/cmd/result")) >= 2 and
                         township.on("/cmd/result"))
    assert [(r["payload"]["cmd_id"], r["payload"]["ok"], r["payload"]["error"]["code"])
            for r in results] == [("a1", False, "unknown_event"), ("a2", False, "unknown_event")]
    assert results[0]["payload"]["error"]["message"]["zh"]  # officers read Chinese first
    assert station.alarm.indicator.mode is Mode.DELIVERED
    assert alarm.id in [e["id"] for e in township.events()]


def test_township_wide_command_reaches_station(broker, start_station, township_factory):
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected)
    before = len(township.on("/v001/state"))
    township.command("all", {"cmd": "state.get", "id": "s1"}, topic="pingan/v1/t01/all/cmd")
    result = wait_until(lambda: township.on("/v001/cmd/result"))[0]
    assert result["payload"]["ok"] is True and result["payload"]["cmd"] == "state.get"
    wait_until(lambda: len(township.on("/v001/state")) > before, what="state republished")


def test_window_of_one_still_drains(broker, start_station, township_factory):
    """The state publish on connect takes the only slot; its PUBACK must wake the pump."""
    township = township_factory(broker.port)
    station = start_station(broker.port, uplink={"inflight": 1})
    stored = [station.buttons.broadcast_pressed(0.0).result(5) for _ in range(20)]
    wait_until(lambda: len(township.unique_events()) == 20, 10, "20 events through a window of 1")
    assert [e["seq"] for e in township.unique_events()] == [s.seq for s in stored]
