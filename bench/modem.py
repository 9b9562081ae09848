"""The 4G modem: SMS fallback latency, the health loop's CPU, and health bytes per day.

What it measures
    sms: a real `edge.station.Station` whose broker is unreachable (the uplink is down)
         and whose modem is the simulated EC25 of pingan_sim.modem on a real
         pseudo-terminal. Each round raises one alarm; the figure is from the moment it
         became overdue (raised + `modem.sms_after_s`) to the first part of its SMS
         reaching the simulated modem (after `AT+CMGS=<n>`, the `> ` prompt and Ctrl-Z).
         Baseline, interleaved one for one: a bare `AtChannel` sending the same first
         PDU to a second simulated modem: the serial floor.
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
    .venv/bin/python bench/modem.py              # ~1 minute
    .venv/bin/python bench/modem.py --rounds 10 --health-s 10
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp, station_toml

from edge import config as config_mod
from edge.contract.events import encode
from edge.modem import pdu
from edge.modem.at import AtChannel
from edge.station import Station
from pingan_sim.localbroker import Mosquitto
from pingan_sim.modem import ModemSim

DUTY = "+8613800138000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.0005)


def modem_toml(sim: ModemSim, after: float, health_s: float = 300.0) -> str:
    return f"""
[modem]
enabled = true
port = "{sim.path}"
sms_after_s = {after}
duty_numbers = ["{DUTY}"]
sms_per_hour = 1000
sms_per_day = 10000

[health]
interval_s = {health_s}

[audio]
enabled = false
"""


def bench_sms(tmp: Path, rounds: int, after: float) -> None:
    sim, floor_sim = ModemSim("EC25", report_status=None), ModemSim("EC25", report_status=None)
    cfg = config_mod.parse(station_toml(tmp / "sms", free_port(), modem_toml(sim, after)))
    station = Station(cfg)
    station.start()
    chan = AtChannel(floor_sim.path, lambda _u: None)
    chan.command("ATE0")
    fallback, floor = [], []
    try:
        wait(lambda: station.modem is not None and station.modem.modem.ready)
        for _ in range(rounds):
            before = len(sim.submitted)
            raised = time.monotonic()
            station.alarm.raise_alarm("simulator", 0.0).result(5)
            wait(lambda b=before: len(sim.submitted) > b, after + 10)
            fallback.append(sim.submitted[before].at - (raised + after))
            wait(lambda b=before: len(sim.submitted) == b + 2)  # both parts: the modem is free
            part = pdu.encode_submit(DUTY, "平安报警" * 30, 1)[0]
            n = len(floor_sim.submitted)
            start = time.monotonic()
            chan.command(f"AT+CMGS={part.length}", 5, data=part.hex)
            wait(lambda n=n: len(floor_sim.submitted) > n)
            floor.append(floor_sim.submitted[n].at - start)
    finally:
        chan.close()
        station.stop()
        sim.close()
        floor_sim.close()
    ms = [x * 1000 for x in fallback]
    base = [x * 1000 for x in floor]
    print(f"sms: overdue alarm -> first SMS part at the modem, {rounds} alarms, "
          f"sms_after_s={after}")
    print(f"  fallback  p50 {statistics.median(ms):7.2f} ms  p90 {pct(ms, 90):7.2f} ms  "
          f"max {max(ms):7.2f} ms")
    print(f"  baseline  p50 {statistics.median(base):7.2f} ms  p90 {pct(base, 90):7.2f} ms  "
          f"(bare AT+CMGS of one part)")
    print(f"  ratio p50 {statistics.median(ms) / statistics.median(base):.1f}x")


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
    bench_sms(tmp, args.rounds, args.after)
    bench_health(tmp, args.health_s)
    print(machine_line(load))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--after", type=float, default=1.0, help="modem.sms_after_s")
    parser.add_argument("--health-s", type=float, default=20.0)
    add_tmp_args(parser)
    return run_in_tmp(parser.parse_args(), "bench-modem-", run)


if __name__ == "__main__":
    sys.exit(main())
