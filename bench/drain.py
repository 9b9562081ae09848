"""Outage backlog: durable enqueue rate while the broker is down, then the drain rate.

What it measures
    A real `edge.station.Station` (pins.factory = "mock", outbox durability on: WAL +
    synchronous=FULL) talks to a private Mosquitto (persistence on) that this script
    starts on a free loopback port. The township subscriber runs in a separate process
    (as the township centre is a separate machine; it also keeps its Python work out of
    the station's GIL) with a persistent session: client id fixed, clean_start=False,
    SessionExpiryInterval=3600, subscribed at QoS 1 to `pingan/v1/<township>/#` *before*
    the broker is stopped, so the broker queues everything for it (the Mosquitto helper
    writes `max_queued_messages 0`, i.e. no queue limit).

    1. The station connects, then the broker is stopped (SIGTERM, session saved).
    2. (a) enqueue: `--events` events (about 2 % `AlarmPanic`, the rest `ButtonBroadcast`
       and `Status`, ids/ts from `edge.contract.events.stamp()`), built beforehand, are submitted
       with `station.outbox.submit(event)` (group commit) and all futures are waited for.
       Baselines in the same run, same rows (the outbox's own stored bodies), same disk,
       same table and indexes as the outbox:
         - floor: all rows inserted into a plain sqlite3 WAL, synchronous=FULL table in
           ONE transaction;
         - one commit per event, for `--single-commits` (500) events: what group commit
           saves.
    3. (b) drain: time.monotonic() just before the broker is started again, until the
       township process has received every distinct event id. Checked: every id
       received, and every alarm arrived before the first non-alarm.
       Baseline in the same run: a bare paho QoS 1 publisher (no outbox) publishes the
       same bodies with the same in-flight window (`uplink.inflight`, default 20) to the
       same broker and subscriber; timed from just before the first publish until the
       subscriber has them all.

    Also printed: the station->broker rate (PUBACKs counted by wrapping `mark_delivered`
    on the station's Outbox instance; edge/ is not modified) and the CPU time each side
    used per event while draining (station process split by thread: uplink-net,
    uplink-pump, outbox-writer; baseline publisher; mosquitto; township process), from
    /proc. On a shared or small machine the rates are noisy; CPU per event is steadier.

Targets: drain >= 5,000 events/s, enqueue >= 2,000 events/s. Exit status 0 when met, 1 when not.

Run
    python3 bench/drain.py                   # 50,000 events, ~30-60 s
    python3 bench/drain.py --events 5000     # quick
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import random
import sqlite3
import sys
import threading
import time
from concurrent.futures import Future
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from common import (
    STATION,
    TOWNSHIP,
    Head,
    add_tmp_args,
    fs_of,
    loadavg,
    machine_line,
    run_in_tmp,
    station_toml,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TARGET_DRAIN = 5000.0
TARGET_ENQUEUE = 2000.0
BASELINE_STATION = "baseline"
TOWNSHIP_CLIENT_ID = "bench-township-centre"


# --- the township centre (child process) ----------------------------------------------




def township_main(conn: Connection, port: int) -> None:
    """Child process: a persistent-session subscriber, driven by commands on `conn`."""
    decode = msgspec.json.Decoder(Head).decode
    lock = threading.Lock()
    done = threading.Event()
    subscribed = threading.Event()
    st: dict[str, Any] = {}

    def reset(topic: str, ids: list[str]) -> None:
        with lock:
            done.clear()
            st.clear()
            st.update(topic=topic, expected=set(ids), got=set(), first_t=None, last_t=None,
                      cpu0=time.process_time(),
                      duplicates=0, other_msgs=0, unexpected=0, alarms=0, order_ok=True,
                      first_other_idx=None, last_alarm_idx=None, session_present=None)

    reset("", [])

    def on_connect(c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        with lock:
            st["session_present"] = bool(flags.session_present)
        if not flags.session_present:
            c.subscribe(f"pingan/v1/{TOWNSHIP}/#", qos=1)
        else:
            subscribed.set()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with lock:
            if msg.topic != st["topic"]:
                st["other_msgs"] += 1
                return
            head = decode(msg.payload)
            if head.id not in st["expected"]:
                st["unexpected"] += 1
                return
            got = st["got"]
            if head.id in got:
                st["duplicates"] += 1
                return
            idx = len(got)
            got.add(head.id)
            if st["first_t"] is None:
                st["first_t"] = now
            st["last_t"] = now
            if head.type == "alarm.panic":
                st["alarms"] += 1
                st["last_alarm_idx"] = idx
                if st["first_other_idx"] is not None:
                    st["order_ok"] = False
            elif st["first_other_idx"] is None:
                st["first_other_idx"] = idx
            if len(got) == len(st["expected"]):
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=TOWNSHIP_CLIENT_ID)
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message

    def connect() -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()

    def stats() -> dict[str, Any]:
        with lock:
            out = {k: (len(v) if isinstance(v, set) else v) for k, v in st.items()}
        out["cpu"] = time.process_time() - out.pop("cpu0")
        return out

    connect()
    if not subscribed.wait(10):
        conn.send(("error", "could not subscribe"))
        return
    conn.send(("ready", stats()))
    reported = False
    while True:
        if done.is_set() and not reported:
            conn.send(("done", stats()))
            reported = True
        if not conn.poll(0.005):
            continue
        cmd, *rest = conn.recv()
        if cmd == "expect":
            reset(*rest)
            reported = False
            conn.send(("ok", None))
        elif cmd == "pause":
            client.disconnect()  # session (expiry 3600 s) stays on the broker
            client.loop_stop()
            conn.send(("ok", None))
        elif cmd == "resume":
            connect()
            conn.send(("ok", None))
        elif cmd == "report":
            conn.send(("report", stats()))
        elif cmd == "stop":
            client.disconnect()
            client.loop_stop()
            conn.send(("ok", None))
            return


class TownshipProcess:
    def __init__(self, port: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=township_main, args=(child, port), daemon=True,
                                name="township")
        self.proc.start()
        child.close()
        kind, _ = self._recv(30)
        if kind != "ready":
            raise RuntimeError(f"township process failed: {kind} {_}")

    def _recv(self, timeout: float) -> tuple[str, Any]:
        if not self.conn.poll(timeout):
            raise RuntimeError("township process did not answer")
        msg: tuple[str, Any] = self.conn.recv()
        return msg

    def call(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        kind, value = self._recv(30)
        if kind != "ok":
            raise RuntimeError(f"township: unexpected answer {kind}")
        return value

    def wait_done(self, timeout: float) -> tuple[bool, dict[str, Any]]:
        if self.conn.poll(timeout):
            kind, value = self.conn.recv()
            if kind == "done":
                return True, value
        self.conn.send(("report",))
        kind, value = self._recv(30)
        return False, value

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(RuntimeError, OSError, EOFError):
                self.call("stop")
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(5)
        self.conn.close()


# --- helpers --------------------------------------------------------------------------



_TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str) -> float | None:
    """utime + stime, in seconds, from a /proc/.../stat file."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by each live thread of this process, by thread name."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        cpu = _stat_cpu(f"/proc/self/task/{t.native_id}/stat")
        if cpu is not None:
            out[t.name] = out.get(t.name, 0.0) + cpu
    return out


def process_cpu() -> float:
    return time.process_time()


def broker_cpu(broker: Any) -> float:
    proc = getattr(broker, "_proc", None)  # the Mosquitto helper keeps its Popen private
    return (_stat_cpu(f"/proc/{proc.pid}/stat") or 0.0) if proc else 0.0


def cpu_line(label: str, n: int, total: float, parts: dict[str, float] | None = None) -> str:
    line = f"  {label:<28}: {total:6.2f} s CPU = {total / n * 1e6:6.0f} us/event"
    if parts:
        shown = ", ".join(f"{k} {v / n * 1e6:.0f}" for k, v in parts.items())
        line += f"  ({shown} us/event)"
    return line


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


NO_AUDIO_TOML = """
[audio]
# The drain measures the uplink; 1,000 sirens would only queue behind each other.
enabled = false
"""


def build_events(n: int, alarm_every: int, seed: int = 7) -> list[Any]:
    from edge.contract.events import (
        AlarmPanic,
        ButtonBroadcast,
        ButtonPayload,
        PanicPayload,
        Status,
        StatusPayload,
        stamp,
        text,
    )

    rng = random.Random(seed)
    ident = {"station": STATION, "township": TOWNSHIP}
    out: list[Any] = []
    for i in range(n):
        if i % alarm_every == 0:
            out.append(AlarmPanic(payload=PanicPayload(source="simulator", held_s=0.0),
                                  **ident, **stamp()))
        elif rng.random() < 0.5:
            out.append(ButtonBroadcast(
                payload=ButtonPayload(button="broadcast", source="simulator", held_s=0.0),
                **ident, **stamp()))
        else:
            out.append(Status(payload=StatusPayload(
                code="bench.tick", level="info", message=text(f"第{i}条", f"tick {i}"),
                detail={"i": i}), **ident, **stamp()))
    return out


_SCHEMA = [
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, "
    "priority INTEGER NOT NULL, body BLOB NOT NULL, size INTEGER NOT NULL, "
    "created FLOAT NOT NULL, delivered_at FLOAT)",
    "CREATE UNIQUE INDEX events_id ON events(id)",
    "CREATE INDEX events_pending ON events(priority, seq) WHERE delivered_at IS NULL",
]


def sqlite_baseline(path: Path, rows: list[tuple[Any, ...]], per_event: bool) -> float:
    """Seconds to insert `rows` into a WAL / synchronous=FULL table like the outbox's."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for stmt in _SCHEMA:
        conn.execute(stmt)
    sql = ("INSERT INTO events (seq, id, type, priority, body, size, created) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")
    t0 = time.perf_counter()
    if per_event:
        for row in rows:
            conn.execute("BEGIN")
            conn.execute(sql, row)
            conn.execute("COMMIT")
    else:
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    took = time.perf_counter() - t0
    conn.close()
    return took


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- the run --------------------------------------------------------------------------

def run(args: argparse.Namespace, tmp: Path) -> int:
    load_before = loadavg()
    from edge import config as config_mod
    from edge.logs import JsonFormatter
    from edge.station import Station
    from edge.store.outbox import Stored
    from pingan_sim.localbroker import Mosquitto

    handler = logging.FileHandler(tmp / "station.log", encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("paho").setLevel(logging.WARNING)

    n = args.events
    broker = Mosquitto(tmp / "broker").start()
    township: TownshipProcess | None = None
    station: Station | None = None
    publisher: mqtt.Client | None = None
    try:
        township = TownshipProcess(broker.port)
        toml = station_toml(tmp / "station", broker.port, NO_AUDIO_TOML, args.inflight)
        config = config_mod.parse(toml, "<bench>")
        station = Station(config)
        station.start()
        wait_until(lambda: station.uplink.connected, 10, "station connected")
        time.sleep(0.2)  # let the online state publish settle

        # --- the outage ---
        township.call("pause")
        broker.stop()
        wait_until(lambda: not station.uplink.connected, 10, "station sees the outage")

        t = time.perf_counter()
        events = build_events(n, args.alarm_every)
        build_s = time.perf_counter() - t
        n_alarms = sum(1 for e in events if type(e).__name__ == "AlarmPanic")

        # (a) durable enqueue with group commit
        cpu_enq0, threads_enq0 = process_cpu(), thread_cpu()
        t0 = time.perf_counter()
        futures: list[Future[Stored]] = [station.outbox.submit(e) for e in events]
        t_submitted = time.perf_counter()
        stored = [f.result(120) for f in futures]
        enqueue_s = time.perf_counter() - t0
        cpu_enq = process_cpu() - cpu_enq0
        writer_enq = thread_cpu().get("outbox-writer", 0.0) - threads_enq0.get("outbox-writer", 0)
        enqueue_rate = n / enqueue_s
        seqs_ok = [s.seq for s in stored] == list(range(stored[0].seq, stored[0].seq + n))
        pending = station.outbox.pending_count()

        # baselines on the same disk, with the outbox's own rows
        now = time.time()
        rows = [(s.seq, s.id, s.type, s.priority, s.body, len(s.body), now) for s in stored]
        floor_s = sqlite_baseline(tmp / "floor.db", rows, per_event=False)
        floor_rate = n / floor_s
        k = min(args.single_commits, n)
        single_s = sqlite_baseline(tmp / "single.db", rows[:k], per_event=True)
        single_rate = k / single_s

        # (b) drain after the broker comes back. PUBACKs reach the outbox through
        # mark_delivered(): count them (instance attribute, edge/ untouched) to tell the
        # station->broker rate from the broker->township rate.
        acked = {"n": 0, "last": 0.0, "first": 0.0}
        mark_delivered = station.outbox.mark_delivered

        def counting_mark_delivered(*a: Any, **kw: Any) -> Any:
            acked["n"] += 1
            acked["last"] = time.monotonic()
            if acked["n"] == 1:
                acked["first"] = acked["last"]
            return mark_delivered(*a, **kw)

        station.outbox.mark_delivered = counting_mark_delivered  # type: ignore[method-assign]
        ids = [s.id for s in stored]
        township.call("expect", f"pingan/v1/{TOWNSHIP}/{STATION}/events", ids)
        cpu_d0, threads_d0 = process_cpu(), thread_cpu()
        t_start = time.monotonic()
        broker.start()
        t_up = time.monotonic()
        township.call("resume")
        drained, st = township.wait_done(args.drain_timeout)
        t_seen = time.monotonic()
        cpu_drain = process_cpu() - cpu_d0
        threads_d1 = thread_cpu()
        cpu_threads = {name: threads_d1.get(name, 0.0) - threads_d0.get(name, 0.0)
                       for name in ("uplink-net", "uplink-pump", "outbox-writer")}
        cpu_threads["other"] = cpu_drain - sum(cpu_threads.values())
        cpu_broker = broker_cpu(broker)
        outbox_drained = drained and wait_for(
            lambda: station.outbox.pending_count() == 0, 30)
        t_marked = time.monotonic()
        station_pending = station.outbox.pending_count()
        stop_t = time.monotonic()
        station.stop()
        station_stop_s = time.monotonic() - stop_t
        station = None
        got = st["got"]
        drain_total_s = (st["last_t"] - t_start) if st["last_t"] else float("nan")
        drain_rate = got / drain_total_s if st["last_t"] else 0.0
        steady_s = (st["last_t"] - st["first_t"]) if st["first_t"] else float("nan")
        steady_rate = (got - 1) / steady_s if st["first_t"] and steady_s > 0 else 0.0
        first_after_s = (st["first_t"] - t_start) if st["first_t"] else float("nan")
        order_ok = (st["order_ok"] and st["alarms"] == n_alarms
                    and (st["first_other_idx"] is None or st["first_other_idx"] == n_alarms))

        # baseline drain: bare paho QoS 1, same bodies, same in-flight window
        bodies = [s.body for s in stored]
        base_topic = f"pingan/v1/{TOWNSHIP}/{BASELINE_STATION}/events"
        township.call("expect", base_topic, ids)
        connected = threading.Event()
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                client_id="bench-baseline-publisher")
        publisher.max_inflight_messages_set(args.inflight)
        publisher.on_connect = lambda *_: connected.set()
        publisher.connect("127.0.0.1", broker.port, keepalive=30)
        publisher.loop_start()
        if not connected.wait(10):
            raise RuntimeError("baseline publisher could not connect")
        cpu_b0, cpu_bb0 = process_cpu(), broker_cpu(broker)
        b0 = time.monotonic()
        for body in bodies:
            publisher.publish(base_topic, body, qos=1)
        b_published = time.monotonic()
        b_drained, bst = township.wait_done(args.drain_timeout)
        cpu_base, cpu_base_broker = process_cpu() - cpu_b0, broker_cpu(broker) - cpu_bb0
        b_got = bst["got"]
        base_s = (bst["last_t"] - b0) if bst["last_t"] else float("nan")
        base_rate = b_got / base_s if bst["last_t"] else 0.0
        b_steady_s = (bst["last_t"] - bst["first_t"]) if bst["first_t"] else float("nan")
        b_steady = (b_got - 1) / b_steady_s if bst["first_t"] and b_steady_s > 0 else 0.0

        # --- report ---
        print("drain: outage backlog -> durable enqueue (group commit) -> broker back -> "
              "township")
        print(machine_line(load_before))
        print(f"disk: {tmp} ({fs_of(tmp)}); broker: mosquitto 127.0.0.1:{broker.port}, "
              f"persistence on; township subscriber in a separate process")
        print(f"events={n} ({n_alarms} alarm.panic, {n - n_alarms} button.broadcast/status), "
              f"body {min(len(b) for b in bodies)}-{max(len(b) for b in bodies)} bytes "
              f"(mean {sum(len(b) for b in bodies) / n:.0f}), built in {build_s:.2f} s "
              f"(not timed); uplink.inflight={args.inflight}, "
              f"outbox.batch_max={config.outbox.batch_max}")
        print()
        print("(a) enqueue while the broker is down")
        print(f"  outbox.submit x{n} + wait all futures : {enqueue_s:7.3f} s  "
              f"{enqueue_rate:10,.0f} events/s  (submit loop alone {t_submitted - t0:.3f} s)")
        print(f"  floor: sqlite3 WAL FULL, 1 transaction: {floor_s:7.3f} s  "
              f"{floor_rate:10,.0f} events/s  (outbox = {enqueue_rate / floor_rate:.2f} x floor)")
        print(f"  sqlite3 WAL FULL, 1 commit per event  : {single_s:7.3f} s  "
              f"{single_rate:10,.0f} events/s  ({k} events; {single_s / k * 1000:.2f} ms/commit;"
              f" group commit = {enqueue_rate / single_rate:.1f} x this)")
        print(cpu_line("station process CPU", n, cpu_enq,
                       {"outbox-writer": writer_enq, "rest": cpu_enq - writer_enq}))
        print(f"  stored seqs contiguous: {seqs_ok}; outbox pending after enqueue: {pending}")
        ok_enq = enqueue_rate >= TARGET_ENQUEUE and seqs_ok and pending == n
        print(f"  target enqueue >= {TARGET_ENQUEUE:,.0f} events/s -> {verdict(ok_enq)} "
              f"({enqueue_rate:,.0f}/s)")
        print()
        print("(b) drain after the broker restarts")
        print(f"  broker start took {t_up - t_start:.3f} s; first event at the township "
              f"{first_after_s:.3f} s after broker start; township session_present="
              f"{st['session_present']}")
        print(f"  station  : all {got:,}/{n:,} ids in {drain_total_s:7.3f} s from broker "
              f"start  -> {drain_rate:9,.0f} events/s; first->last {steady_s:.3f} s -> "
              f"{steady_rate:,.0f}/s")
        print(f"  baseline : all {b_got:,}/{n:,} ids in {base_s:7.3f} s from first publish "
              f"-> {base_rate:9,.0f} events/s; first->last {b_steady_s:.3f} s -> "
              f"{b_steady:,.0f}/s (publish loop {b_published - b0:.3f} s; bare paho QoS 1, "
              f"inflight {args.inflight})")
        print(f"  ratio station/baseline: {drain_rate / base_rate:.2f} (from start), "
              f"{steady_rate / b_steady:.2f} (first->last)" if base_rate and b_steady else
              "  ratio: n/a")
        if acked["n"]:
            print(f"  station->broker: {acked['n']:,} PUBACKs, last one "
                  f"{acked['last'] - t_start:.3f} s after broker start -> "
                  f"{acked['n'] / (acked['last'] - t_start):,.0f}/s from start, "
                  f"{(acked['n'] - 1) / max(1e-9, acked['last'] - acked['first']):,.0f}/s "
                  f"first->last")
        if outbox_drained:
            print(f"  outbox: every row marked delivered {t_marked - t_start:.3f} s after broker"
                  f" start ({t_marked - t_seen:.3f} s after the township had them all); "
                  f"station.stop() took {station_stop_s:.3f} s")
        else:
            print(f"  outbox: NOT drained, {station_pending} rows still pending "
                  f"(state_interval_s stall? see the report); station.stop() took "
                  f"{station_stop_s:.3f} s")
        print("  CPU while draining (less sensitive to other load than the rates):")
        print(cpu_line("station process", got or 1, cpu_drain, cpu_threads))
        print(cpu_line("baseline publisher process", b_got or 1, cpu_base))
        print(cpu_line("mosquitto, station phase", got or 1, cpu_broker))
        print(cpu_line("mosquitto, baseline phase", b_got or 1, cpu_base_broker))
        print(cpu_line("township, station phase", got or 1, st["cpu"]))
        print(cpu_line("township, baseline phase", b_got or 1, bst["cpu"]))
        every = drained and got == n and st["unexpected"] == 0
        print(f"  check every id received: {got}/{n} distinct, duplicates={st['duplicates']}, "
              f"unexpected={st['unexpected']} -> {'OK' if every else 'FAILED'}")
        print(f"  check alarms first: {st['alarms']}/{n_alarms} alarms, last alarm was arrival "
              f"#{st['last_alarm_idx']}, first non-alarm was arrival #{st['first_other_idx']} "
              f"-> {'OK' if order_ok else 'FAILED'}")
        print(f"  baseline check: {b_got}/{n} distinct, duplicates={bst['duplicates']} -> "
              f"{'OK' if b_drained and b_got == n else 'FAILED'}")
        ok_drain = drain_rate >= TARGET_DRAIN and every and order_ok
        print(f"  target drain >= {TARGET_DRAIN:,.0f} events/s -> {verdict(ok_drain)} "
              f"({drain_rate:,.0f}/s from broker start)")
        print()
        print(f"summary: enqueue {enqueue_rate:,.0f}/s {verdict(ok_enq)} "
              f"(target >= {TARGET_ENQUEUE:,.0f}); drain {drain_rate:,.0f}/s "
              f"{verdict(ok_drain)} (target >= {TARGET_DRAIN:,.0f}); all ids "
              f"{'OK' if every else 'FAILED'}; alarms first {'OK' if order_ok else 'FAILED'}")
        return 0 if ok_enq and ok_drain else 1
    finally:
        if publisher is not None:
            publisher.disconnect()
            publisher.loop_stop()
        if station is not None:
            station.stop()
        if township is not None:
            township.close()
        broker.stop()
        root.handlers[:] = []
        handler.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50000,
                        help="events buffered during the outage (default 50000)")
    parser.add_argument("--alarm-every", type=int, default=50,
                        help="one alarm.panic every N events (default 50, i.e. 2%%)")
    parser.add_argument("--inflight", type=int, default=20,
                        help="uplink.inflight, and the baseline publisher's window (default 20)")
    parser.add_argument("--single-commits", type=int, default=500,
                        help="events for the one-commit-per-event baseline (default 500)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="give up waiting for a drain after this many seconds")
    add_tmp_args(parser)
    args = parser.parse_args()
    if args.events < 2:
        parser.error("--events must be >= 2")

    return run_in_tmp(args, "pingan-bench-drain-", run)


if __name__ == "__main__":
    sys.exit(main())
