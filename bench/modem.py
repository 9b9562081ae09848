"""The 4G modem: SMS fallback latency (with and without a restart in mid-send), the
health loop's CPU, and health bytes per day.

What it measures
    sms: a real `edge.station.Station` whose broker is unreachable (the uplink is down)
         and whose modem is the simulated EC25 of pingan_sim.modem on a real
         pseudo-terminal, with 1, 3 and 10 duty numbers. Each round raises one alarm; the
         figures run from the moment it fell due (raised + `modem.sms_after_s`) to the
         first part, and to the last part of the last number's text, reaching the
         simulated modem (after `AT+CMGS=<n>`, the `> ` prompt and Ctrl-Z). Every part is
         durable twice on the way (`submitted` before its PDU is written, `accepted`
         after the +CMGS answer), each a full fsync of sms.db.
         Baseline, interleaved round for round: a bare `AtChannel` sending the same
         number of parts back to back to a second simulated modem: the serial floor.
    restart: the same, but the station is stopped as soon as the first part reaches the
         modem and a new `Station` is started on the same data directory (in the same
         process: no interpreter start-up, which on a Pi adds its import time). The
         figure runs from the moment the alarm fell due to the last part of the last
         number at the modem, the part in doubt sent again included.
    health: the `health-telemetry` thread of a real station connected to a private
         Mosquitto, its CPU time read from its own thread clock
         (`pthread_getcpuclockid`): per report (interval 1 s, so every wake reports)
         and per idle second (interval 300 s: it only checks for a fresh connection every
         2 s). Per hour at the default 300 s: 12 reports + 3600 idle seconds.
         Baseline: building the retained state payload, per call, in the same process.
    bytes: the health payload as published with a live modem, and with MQTT framing
         (PUBLISH fixed header, topic, packet id, properties; the 4-byte PUBACK), times
         the reports per day at the default interval. TCP/IP and TLS add per packet.

Run
    .venv/bin/python bench/modem.py              # ~5 minutes
    .venv/bin/python bench/modem.py --rounds 10 --restarts 3 --health-s 10
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp, station_toml

from edge import config as config_mod
from edge.contract.events import AlarmPanic, decode_event, encode
from edge.modem.fallback import alarm_text
from edge.station import Station
from pingan_modem import pdu
from pingan_modem.at import AtChannel
from pingan_sim.localbroker import Mosquitto
from pingan_sim.modem import ModemSim

DUTY = "+8613800138000"


def duty(n: int) -> list[str]:
    return [f"+86138001380{i:02d}" for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate, timeout: float = 10.0,  # type: ignore[no-untyped-def]
         step: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(step)


def modem_toml(sim: ModemSim, after: float, health_s: float = 300.0,
               numbers: list[str] | None = None) -> str:
    return f"""
[modem]
enabled = true
port = "{sim.path}"
sms_after_s = {after}
duty_numbers = {json.dumps(numbers or [DUTY])}
sms_per_hour = 1000
sms_per_day = 10000

[health]
interval_s = {health_s}

[audio]
enabled = false
"""


def ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def line(label: str, values: list[float]) -> str:
    v = ms(values)
    return (f"p50 {statistics.median(v):8.1f} ms  p99 {pct(v, 99):8.1f} ms  "
            f"max {max(v):8.1f} ms  ({label})")


def floor(chan: AtChannel, floor_sim: ModemSim, parts: int) -> float:
    """A bare AtChannel: `parts` PDUs back to back, first write → last at the modem."""
    part = pdu.encode_submit(DUTY, "平安报警" * 30, 1)[0]
    n = len(floor_sim.submitted)
    start = time.monotonic()
    for _ in range(parts):
        chan.command(f"AT+CMGS={part.length}", 5, data=part.hex)
    wait(lambda: len(floor_sim.submitted) >= n + parts)
    return floor_sim.submitted[-1].at - start


def all_accepted(station: Station, alarm_id: str, numbers: int) -> bool:
    assert station.modem is not None
    parts = station.modem.fallback.log.parts(alarm_id)
    return len({p["number"] for p in parts}) == numbers and all(
        p["state"] == "accepted" for p in parts)


def bench_sms(tmp: Path, rounds: int, after: float, counts: list[int]) -> dict[int, float]:
    """Per number of duty numbers: p50 of alarm due → last part at the modem (s)."""
    print(f"sms: alarm due -> SMS at the modem, {rounds} alarms per row, sms_after_s={after}, "
          f"uplink down")
    medians = {}
    for count in counts:
        sim, floor_sim = ModemSim("EC25", report_status=None), ModemSim("EC25", report_status=None)
        cfg = config_mod.parse(station_toml(tmp / f"sms{count}", free_port(),
                                            modem_toml(sim, after, numbers=duty(count))))
        station = Station(cfg)
        station.start()
        chan = AtChannel(floor_sim.path, lambda _u: None)
        chan.command("ATE0")
        first, last, bare = [], [], []
        parts = 0
        try:
            wait(lambda s=station: s.modem is not None and s.modem.modem.ready)
            for _ in range(rounds):
                before = len(sim.submitted)
                raised = time.monotonic()
                stored = station.alarm.raise_alarm("simulator", 0.0).result(5)
                alarm = decode_event(stored.body)
                assert isinstance(alarm, AlarmPanic)
                parts = pdu.part_count(alarm_text(cfg, alarm))
                total = before + count * parts
                wait(lambda t=total, m=sim: len(m.submitted) >= t, after + 30)
                first.append(sim.submitted[before].at - (raised + after))
                last.append(sim.submitted[total - 1].at - (raised + after))
                wait(lambda a=stored.id, s=station, c=count: all_accepted(s, a, c), 5, 0.002)
                bare.append(floor(chan, floor_sim, count * parts))
        finally:
            chan.close()
            station.stop()
            sim.close()
            floor_sim.close()
        medians[count] = statistics.median(last)
        print(f"  {count:2d} number(s) x {parts} parts = {count * parts:2d} parts")
        print(f"     first part  {line('the first number', first)}")
        print(f"     last part   {line('the last number', last)}")
        print(f"     baseline    {line(f'bare AT+CMGS of {count * parts} parts', bare)}")
        ratio = statistics.median(last) / statistics.median(bare)
        print(f"     ratio p50 last part / baseline {ratio:.1f}x; "
              f"per part {statistics.median(last) * 1000 / (count * parts):.1f} ms")
    base = medians[counts[0]]
    print("  p50 last part vs " + f"{counts[0]} number: " + ", ".join(
        f"{c}: {medians[c] / base:.1f}x" for c in counts))
    return medians


def bench_restart(tmp: Path, rounds: int, after: float, counts: list[int],
                  plain: dict[int, float]) -> None:
    print(f"restart: the station stopped while the first part is at the modem (its +CMGS "
          f"answer held back), started again; {rounds} alarms per row")
    for count in counts:
        sim = ModemSim("EC25", report_status=None)
        cfg = config_mod.parse(station_toml(tmp / f"restart{count}", free_port(),
                                            modem_toml(sim, after, numbers=duty(count))))
        station = Station(cfg)
        station.start()
        last, gaps, resent = [], [], 0
        try:
            wait(lambda s=station: s.modem is not None and s.modem.modem.ready)
            for _ in range(rounds):
                sim.hold_at = ("answer", len(sim.submitted) + 1)
                raised = time.monotonic()
                stored = station.alarm.raise_alarm("simulator", 0.0).result(5)
                assert sim.held.wait(after + 30)
                stopping = time.monotonic()
                station.stop()
                sim.release()  # the modem sends the held part: no one hears its +CMGS
                station = Station(cfg)
                station.start()
                gaps.append(time.monotonic() - stopping)
                wait(lambda a=stored.id, s=station, c=count: all_accepted(s, a, c), 60, 0.002)
                last.append(sim.submitted[-1].at - (raised + after))
                assert station.modem is not None
                resent += sum(p["resent"] for p in station.modem.fallback.log.parts(stored.id))
        finally:
            station.stop()
            sim.close()
        print(f"  {count:2d} number(s): last part {line('due -> last part', last)}")
        print(f"     stop + start of the station p50 {statistics.median(ms(gaps)):.1f} ms; "
              f"parts sent again (in doubt) {resent} in {rounds} restarts")
        ratio = statistics.median(last) / plain[count]
        print(f"     ratio p50 with a restart / without {ratio:.1f}x; without the stop and "
              f"start: {(statistics.median(last) - statistics.median(gaps)) * 1000:.1f} ms")


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def bench_health(tmp: Path, seconds: float) -> None:
    broker = Mosquitto(tmp / "broker", persistence=False).start()
    sim = ModemSim("EC25")
    try:
        results = {}
        for label, interval in (("busy", 1.0), ("idle", 300.0)):
            cfg = config_mod.parse(station_toml(tmp / label, broker.port,
                                                modem_toml(sim, 60.0, interval)))
            station = Station(cfg)
            station.start()
            try:
                wait(lambda s=station: s.uplink.connected and s.modem.modem.ready, 20)
                time.sleep(1.5)  # its first report after connecting
                tel = station.telemetry
                assert tel is not None
                thread = tel._thread
                count0, cpu0, t0 = tel.published, thread_cpu(thread), time.monotonic()
                time.sleep(seconds)
                results[label] = (tel.published - count0, thread_cpu(thread) - cpu0,
                                  time.monotonic() - t0)
                body = encode(tel.report())
                topic = station.uplink.topics.health
                state_cpu = []
                for _ in range(200):
                    c = time.thread_time()
                    station.uplink._state_payload(True)
                    state_cpu.append(time.thread_time() - c)
            finally:
                station.stop()
        reports, busy_cpu, _ = results["busy"]
        _, idle_cpu, idle_s = results["idle"]
        per_report = busy_cpu / max(1, reports)
        per_idle_s = idle_cpu / idle_s
        per_hour = 12 * per_report + 3600 * per_idle_s
        base = statistics.median(state_cpu)
        print(f"health: {reports} reports in {seconds:.0f} s at 1 s; idle {idle_s:.0f} s at 300 s")
        print(f"  per report {per_report * 1000:.3f} ms CPU; idle {per_idle_s * 1e6:.1f} us CPU/s")
        print(f"  per hour at the default 300 s: {per_hour * 1000:.1f} ms CPU "
              f"({per_hour / 3600 * 100:.5f} % of one core)")
        print(f"  baseline: state payload {base * 1000:.3f} ms CPU per build; "
              f"one health report = {per_report / base:.1f}x that")
        mqtt = 2 + 2 + len(topic.encode()) + 2 + 1 + len(body)
        mqtt += 1 if len(body) > 120 else 0  # remaining length takes 2 bytes past 127
        per_day = 86400 / 300
        print(f"bytes: payload {len(body)} B, MQTT PUBLISH {mqtt} B + PUBACK 4 B; "
              f"{per_day:.0f} reports/day = {per_day * len(body) / 1024:.1f} KiB payload, "
              f"{per_day * (mqtt + 4) / 1024:.1f} KiB with MQTT framing "
              f"(TCP/IP, TLS records extra)")
        print(f"  sample: {body.decode()}")
    finally:
        sim.close()
        broker.stop()


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    counts = [int(c) for c in args.numbers.split(",")]
    plain = bench_sms(tmp, args.rounds, args.after, counts)
    if args.restarts:
        bench_restart(tmp, args.restarts, args.after, counts, plain)
    if args.health_s:
        bench_health(tmp, args.health_s)
    print(machine_line(load))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--restarts", type=int, default=10,
                        help="alarms per row with a restart in mid-send (0: none)")
    parser.add_argument("--numbers", default="1,3,10", help="duty numbers per row")
    # At least the watcher's 1 s look at the outbox: a shorter sms_after_s is met late
    # by up to that second (the alarm is seen at the next look).
    parser.add_argument("--after", type=float, default=1.0, help="modem.sms_after_s")
    parser.add_argument("--health-s", type=float, default=20.0, help="0: no health bench")
    add_tmp_args(parser)
    return run_in_tmp(parser.parse_args(), "bench-modem-", run)


if __name__ == "__main__":
    sys.exit(main())
