"""`pingan-centre`: the township centre's tools, one subcommand per part."""

from __future__ import annotations

import argparse
import sys

from pingan_centre.broker.cli import add_parser as add_broker_parser
from pingan_centre.console.cli import add_parsers as add_console_parsers
from pingan_centre.release.cli import add_parser as add_release_parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pingan-centre", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    add_console_parsers(sub)
    add_broker_parser(sub)
    add_release_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
