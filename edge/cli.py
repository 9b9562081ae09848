"""`pingan-edge`: run the station, ask it how it is, watch what the township sees, and
press the buttons of a simulated one (`pingan-sim run`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge import __version__
from edge import config as config_mod
from edge.config import Config, ConfigError
from edge.contract.topics import township_filter
from edge.logs import log, setup
from edge.store import private
from edge.unit.bundle import UNIT_DIR, BundleError, install_bundle
from edge.unit.control import request

SYSTEM_CONFIG = Path("/etc/pingan-edge/station.toml")
# Exit statuses of `pingan-edge run` (docs/config.md); systemd restarts only on 1.
EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a failure nobody foresaw: logged as JSON; a restart may help
EXIT_CONFIG = 2  # station.toml or the pin factory (or the simulator's broker): fix, then start
EXIT_ALREADY_RUNNING = 3  # another pingan-edge holds the data directory

def _config_path(arg: str | None) -> Path | None:
    """--config, else $PINGAN_EDGE_CONFIG, else /etc/pingan-edge/station.toml, else none
    (edge.config.NO_FILE_TOML: the simulated station's identity)."""
    if arg:
        return Path(arg)
    if os.environ.get("PINGAN_EDGE_CONFIG"):
        return Path(os.environ["PINGAN_EDGE_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def _load(args: argparse.Namespace) -> Config:
    return config_mod.load(_config_path(args.config))


class Runnable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def cmd_run(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    if path is None:
        print(f"pingan-edge: no station config (-c FILE, $PINGAN_EDGE_CONFIG or "
              f"{SYSTEM_CONFIG}); a simulated station runs with `pingan-sim run` (bin/sim)",
              file=sys.stderr)
        return EXIT_CONFIG
    from edge.station import Station

    return serve(config_mod.load(path), Station)


def serve(cfg: Config, build: Callable[[Config], Runnable], *,
          cannot_start: tuple[type[Exception], ...] = ()) -> int:
    """Build the station, start it, stop it on SIGTERM/SIGINT; whatever goes wrong is one
    JSON log line and the exit status docs/config.md gives it (`cannot_start`: more
    errors that a restart cannot fix, e.g. the simulator's broker)."""
    os.umask(private.UMASK)  # before anything is written into the data directory
    stop_logs = setup(cfg.log.level)
    try:
        return _serve(cfg, build, cannot_start)
    finally:
        stop_logs()


def _serve(cfg: Config, build: Callable[[Config], Runnable],
           cannot_start: tuple[type[Exception], ...]) -> int:
    from edge.store.datadir import AlreadyRunning
    from edge.store.schema import DataSchemaError
    from edge.unit.pins import PinFactoryError

    logger = logging.getLogger("edge.cli")
    unfit: tuple[type[Exception], ...] = (ConfigError, PinFactoryError, DataSchemaError,
                                          *cannot_start)
    try:
        station = build(cfg)
    except AlreadyRunning as exc:
        log(logger, "error", "station.already_running", error=str(exc), exit=EXIT_ALREADY_RUNNING,
            action="stop the other pingan-edge (systemctl status pingan-edge) or give this "
                   "one its own station.data_dir")
        return EXIT_ALREADY_RUNNING
    except unfit as exc:
        log(logger, "error", "station.cannot_start", error=str(exc), exit=EXIT_CONFIG,
            action="fix the configuration or the hardware named above, then start again")
        return EXIT_CONFIG
    except Exception as exc:  # whatever it was, one JSON line and a status saying so
        logger.exception("station.start_failed", extra={"fields": {
            "error": str(exc), "exit": EXIT_UNEXPECTED,
            "action": "unexpected: systemd restarts the station; report this log line"}})
        return EXIT_UNEXPECTED
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        station.start()
    except Exception as exc:
        logger.exception("station.start_failed", extra={"fields": {
            "error": str(exc), "exit": EXIT_UNEXPECTED,
            "action": "unexpected: systemd restarts the station; report this log line"}})
        station.stop()
        return EXIT_UNEXPECTED
    stop.wait()
    station.stop()
    return EXIT_OK


def _ask(args: argparse.Namespace, payload: dict[str, Any]) -> dict[str, Any]:
    socket_path = _load(args).control_socket
    try:
        return request(socket_path, payload)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise SystemExit(f"pingan-edge: no station is running at {socket_path} ({exc}); "
                         f"start one with `pingan-edge run` (a simulated one: `pingan-sim run`)"
                         ) from exc


def cmd_press(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"op": "press", "button": args.button, "count": args.count,
                               "interval_s": args.interval}
    if args.hold is not None:
        payload["hold_s"] = args.hold
    reply = _ask(args, payload)
    print(json.dumps(reply, ensure_ascii=False))
    return 0 if reply.get("ok") else 1


def cmd_status(args: argparse.Namespace) -> int:
    reply = _ask(args, {"op": "status"})
    print(json.dumps(reply, ensure_ascii=False, indent=2))
    return 0 if reply.get("ok") else 1


def cmd_tail(args: argparse.Namespace) -> int:
    """Subscribe as the township would, print each message once (duplicates marked)."""
    host, port, township = args.host, args.port, args.township
    if host is None or port is None:
        status = _ask(args, {"op": "status"})
        host = host or status["broker"]["host"]
        port = port or status["broker"]["port"]
        township = township or status["township"]
    seen: set[str] = set()
    received = threading.Event()
    count = 0
    done = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(township_filter(township or "+"), qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = msg.payload.decode(errors="replace")
        event_id = body.get("id") if isinstance(body, dict) and "seq" in body else None
        duplicate = event_id in seen
        if event_id:
            seen.add(event_id)
        line = {"topic": msg.topic, "retained": bool(msg.retain), "duplicate": duplicate,
                "message": body}
        print(json.dumps(line, ensure_ascii=False), flush=True)
        if event_id and not duplicate:
            count += 1
            if args.count and count >= args.count:
                done.set()
        received.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    with contextlib.suppress(KeyboardInterrupt):
        done.wait(args.timeout)
    client.loop_stop()
    client.disconnect()
    return 0 if (not args.count or done.is_set()) else 1


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = config_mod.load(Path(args.path))
    print(f"{args.path}: ok (station {cfg.station.id}, township {cfg.station.township})")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from edge import selftest

    os.umask(private.UMASK)  # it writes the station's data directory too, maybe as root
    return selftest.main(_load(args), as_json=args.json, button_timeout_s=args.timeout)


def cmd_tts(args: argparse.Namespace) -> int:
    """What the station says for a text: `--pinyin` prints what its voice is handed (one
    line per rendering), `-o` writes the speech to a WAV file. Needs no running station."""
    import soundfile

    from edge.audio import tts
    from edge.audio.clips import resample

    if not (args.pinyin or args.out):
        print("pingan-edge tts: say what to do: --pinyin (print what the voice is handed) "
              "and/or -o FILE.wav (render it)", file=sys.stderr)
        return EXIT_CONFIG
    said = sys.stdin.read() if args.text == "-" else args.text
    engine = tts.engine(_load(args).audio)
    script = engine.script(said)
    if not script:
        print("pingan-edge tts: nothing to say: the text has no speakable characters",
              file=sys.stderr)
        return 1
    if args.pinyin:
        print("\n".join(script))
    if args.out:
        try:
            rendered = [engine.render(piece) for piece in script]
        except tts.TtsError as exc:
            print(f"pingan-edge tts: {exc}", file=sys.stderr)
            return 1
        rate = rendered[0][1]
        with soundfile.SoundFile(args.out, "w", samplerate=rate, channels=1,
                                 format="WAV", subtype="PCM_16") as out:
            for samples, piece_rate in rendered:
                out.write(samples if piece_rate == rate
                          else resample(samples, piece_rate, rate))
        print(f"{args.out}: {engine.name}, {out.frames / rate:.1f} s", file=sys.stderr)
    return 0


def cmd_install_bundle(args: argparse.Namespace) -> int:
    try:
        toml = install_bundle(Path(args.bundle), Path(args.dest))
    except (BundleError, OSError) as exc:
        print(f"pingan-edge: {exc}", file=sys.stderr)
        return 1
    print(f"installed into {args.dest}; add this to the station config "
          f"({SYSTEM_CONFIG}), then `pingan-edge check-config` it:\n")
    print(toml.read_text(encoding="utf-8"))
    return 0


def cmd_update_apply(args: argparse.Namespace) -> int:
    """On site, from a USB stick or a laptop: the running station takes the file through
    the same checks, install and commit rule as a township offer."""
    bundle = Path(args.file).resolve()
    if not bundle.is_file():
        print(f"pingan-edge: {bundle}: no such file", file=sys.stderr)
        return 1
    descriptor = args.descriptor or _beside(bundle)
    reply = _ask(args, {"op": "update.apply", "path": str(bundle),
                        "descriptor": str(descriptor) if descriptor else None})
    if not reply.get("ok"):
        print(f"pingan-edge: {reply.get('error')}", file=sys.stderr)
        return 1
    last = None
    while True:  # follow this job (not the end of an earlier one) until it ends
        state = _ask(args, {"op": "update.status"})["update"]
        if state.get("job") != reply["job"]:
            threading.Event().wait(0.2)
            continue
        if state != last:
            print(json.dumps(state, ensure_ascii=False), flush=True)
            last = state
        if state.get("phase") in ("refused", "failed", "rebooting", "waiting"):
            return 0 if state["phase"] in ("rebooting", "waiting") else 1
        threading.Event().wait(0.5)


def _beside(bundle: Path) -> Path | None:
    """pingan-edge-V.raucb's signed descriptor, pingan-edge-V.release.json, if it came too."""
    candidate = bundle.with_name(bundle.name.removesuffix(".raucb") + ".release.json")
    return candidate if candidate.is_file() else None


def cmd_update_status(args: argparse.Namespace) -> int:
    print(json.dumps(_ask(args, {"op": "update.status"}), ensure_ascii=False, indent=2))
    return 0


def cmd_update_commit(args: argparse.Namespace) -> int:
    """After a boot: commit the slot being tried if healthy, else mark it bad and reboot
    into the committed one (edge/update/commit.py). Nothing to do on other boots."""
    from edge import selftest
    from edge.update import commit
    from edge.update.install import Rauc
    from edge.update.updater import read_trial, running_version

    cfg = _load(args)
    directory = cfg.data_dir / "update"
    if read_trial(directory) is None:
        print("pingan-edge: no update is being tried on this boot")
        return 0
    socket_path = cfg.control_socket

    def ask() -> dict[str, Any] | None:
        try:
            reply = request(socket_path, {"op": "update.status"}, timeout=10.0)
        except OSError:
            return None
        return reply if reply.get("ok") else None

    def settle(checks: dict[str, bool]) -> bool:
        try:
            return bool(request(socket_path, {"op": "update.settle", "checks": checks},
                                timeout=10.0).get("ok"))
        except OSError:
            return False

    class _Nobody(selftest.Operator):
        def __init__(self) -> None:
            super().__init__(sys.stderr, sys.stdin, timeout_s=0.0)

        def confirm(self, zh: str, en: str) -> bool | None:
            return None

    test = selftest.Selftest(cfg, _Nobody())

    def rows() -> list[tuple[str, bool, str]]:
        found = [getattr(test, name)() for name in cfg.update.commit_rows]
        return [(r.check, r.status != "fail", r.detail) for r in found]

    health_s = args.health_s if args.health_s is not None else cfg.update.health_s
    running = running_version(cfg.update.release_file)
    done, verdict = commit.run(directory, running=running, installer=Rauc(), ask=ask,
                               settle=settle, rows=rows, health_s=health_s,
                               fallback_command=cfg.update.fallback_command,
                               poll_s=min(2.0, max(health_s / 10, 0.1)))
    print(json.dumps({"result": done, "checks": verdict.checks if verdict else {},
                      "reason": verdict.reason.en if verdict and verdict.reason else None},
                     ensure_ascii=False))
    return 0 if done != "rolled_back" else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pingan-edge", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", help="station TOML (default: $PINGAN_EDGE_CONFIG, "
                        f"{SYSTEM_CONFIG}, else the simulated station)")
        return sp

    with_config(sub.add_parser("run", help="run the station")).set_defaults(fn=cmd_run)
    sp = with_config(sub.add_parser(
        "press", help="press a button of a running simulated station (pingan-sim run)"))
    sp.add_argument("button", choices=["panic", "broadcast"])
    sp.add_argument("--hold", type=float, default=None, help="seconds held (default: enough)")
    sp.add_argument("--count", type=int, default=1)
    sp.add_argument("--interval", type=float, default=0.0)
    sp.set_defaults(fn=cmd_press)
    with_config(sub.add_parser("status", help="show the running station's status")).set_defaults(
        fn=cmd_status)
    sp = with_config(sub.add_parser("tail", help="print what the township receives"))
    sp.add_argument("--host")
    sp.add_argument("--port", type=int)
    sp.add_argument("--township")
    sp.add_argument("--count", type=int, default=0, help="exit after this many distinct events")
    sp.add_argument("--timeout", type=float, default=None)
    sp.set_defaults(fn=cmd_tail)
    sp = sub.add_parser("check-config", help="validate a station TOML and exit")
    sp.add_argument("path")
    sp.set_defaults(fn=cmd_check_config)
    sp = with_config(sub.add_parser(
        "selftest", help="on site: check every part of this unit (stops the station meanwhile)"))
    sp.add_argument("--json", action="store_true", help="the results as JSON")
    sp.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for each button press and answer")
    sp.set_defaults(fn=cmd_selftest)
    sp = with_config(sub.add_parser(
        "tts", help="what the loudspeaker says for a text (the pinyin its voice is handed)"))
    sp.add_argument("text", help='the text ("-": read it from standard input)')
    sp.add_argument("--pinyin", action="store_true",
                    help="print what the voice is handed, one line per rendering")
    sp.add_argument("-o", "--out", help="write the speech to this WAV file")
    sp.set_defaults(fn=cmd_tts)
    sp = sub.add_parser("install-bundle", help="unpack the station bundle the township issued")
    sp.add_argument("bundle")
    sp.add_argument("--dest", default=UNIT_DIR, help=f"default {UNIT_DIR}")
    sp.set_defaults(fn=cmd_install_bundle)
    up = sub.add_parser("update", help="over-the-air updates: apply a bundle on site, "
                        "commit a tried slot, show the state").add_subparsers(
        dest="update_command", required=True)
    sp = with_config(up.add_parser(
        "apply", help="install a release bundle from a USB stick or laptop (same checks "
        "and commit rule as a township offer)"))
    sp.add_argument("file", help="pingan-edge-VERSION.raucb")
    sp.add_argument("--descriptor", help="its signed .release.json (default: beside it)")
    sp.set_defaults(fn=cmd_update_apply)
    sp = with_config(up.add_parser("status", help="the update part's state"))
    sp.set_defaults(fn=cmd_update_status)
    sp = with_config(up.add_parser(
        "commit", help="after a boot: commit the tried slot if healthy, else roll back "
        "(run by systemd)"))
    sp.add_argument("--health-s", type=float, default=None,
                    help="seconds to wait for the checks (default update.health_s)")
    sp.set_defaults(fn=cmd_update_commit)
    return p


def _moved(argv: list[str]) -> str | None:
    """Where a command that left the unit's tool went (issue 9: township tooling lives
    in the township's own package, pingan-centre)."""
    if argv[:1] != ["broker"]:
        return None
    if argv[1:2] == ["install"]:
        return "`pingan-edge broker install` is now `pingan-edge install-bundle BUNDLE`"
    return ("`pingan-edge broker` moved to the township's tool: use `pingan-centre broker "
            f"{' '.join(argv[1:2]) or '...'}` (pip install ./centre)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    moved = _moved(argv)
    if moved:
        print(f"pingan-edge: {moved}", file=sys.stderr)
        return EXIT_CONFIG
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"pingan-edge: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
