"""`pingan-sim run`: a complete simulated station on any Linux box (what `bin/sim` runs).

With no config file (`-c`, else $PINGAN_EDGE_CONFIG) it runs the simulation defaults;
`pingan-edge press/status/tail` then find it without one either. Exit statuses are the
unit's (docs/config.md); a private broker that cannot start is a configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edge import config as config_mod
from edge.cli import EXIT_CONFIG, serve
from edge.config import ConfigError
from pingan_sim.localbroker import BrokerError
from pingan_sim.station import SimulatedStation, defaults


def cmd_run(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("PINGAN_EDGE_CONFIG")
    cfg = config_mod.load(Path(path)) if path else defaults()
    return serve(cfg, SimulatedStation, cannot_start=(BrokerError,))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pingan-sim", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a simulated station")
    run.add_argument("-c", "--config", help="station TOML (default: $PINGAN_EDGE_CONFIG, "
                     "else the simulation defaults)")
    run.set_defaults(fn=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"pingan-sim: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
