"""`pingan-centre broker …`: the township's identity tool (see broker_config/README.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pingan_centre.broker import provision
from pingan_centre.broker.provision import DEFAULT_DIR, UNIT_DIR, ProvisionError, Township

RELOAD = "reload the broker so it reads the change: systemctl reload mosquitto"


def _town(args: argparse.Namespace) -> Township:
    return Township(Path(args.dir))


def cmd_init(args: argparse.Namespace) -> int:
    town = _town(args)
    provision.init(town, args.township, args.host, days=args.days)
    print(f"township {args.township}: CA {town.ca_crt}, broker certificate {town.server_crt} "
          f"for {', '.join(args.host)}, empty CRL {town.crl}")
    print(f"keep {town.ca_key} safe (offline if you can): it signs every station")
    return 0


def cmd_server_cert(args: argparse.Namespace) -> int:
    town = _town(args)
    provision.issue_server(town, args.host, days=args.days)
    print(f"broker certificate {town.server_crt} for {', '.join(args.host)}; {RELOAD}")
    return 0


def cmd_add_station(args: argparse.Namespace) -> int:
    town = _town(args)
    bundle = provision.add_station(town, args.station, args.broker_host,
                                   broker_port=args.broker_port, days=args.days,
                                   replace=args.replace, unit_dir=args.unit_dir)
    identity = provision.identity(town.township_id(), args.station)
    print(f"station {args.station}: bundle {bundle} (broker identity {identity})")
    print(f"on the unit: pingan-edge install-bundle {bundle.name} (as root), "
          "then merge the printed station.toml")
    if args.replace:
        print(f"the old certificate is revoked; {RELOAD}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    serial = provision.revoke(_town(args), args.station)
    print(f"station {args.station}: certificate {serial:x} revoked; {RELOAD}")
    return 0


def cmd_add_account(args: argparse.Namespace) -> int:
    password = None
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    password = provision.add_account(_town(args), args.name, password)
    if not args.password_file:
        print(f"account {args.name}: password {password}")
    else:
        print(f"account {args.name}: password set")
    print(RELOAD)
    return 0


def cmd_acl(args: argparse.Namespace) -> int:
    town = _town(args)
    provision.write_acl(town)
    print(f"{town.acl}: township {town.township_id()}, accounts "
          f"{', '.join(provision.accounts(town)) or 'none'}; {RELOAD}")
    return 0


def add_parser(sub: Any) -> None:
    """Add `broker` and its subcommands to the main parser's subparsers."""
    p = sub.add_parser("broker", help="township broker identities: CA, stations, revocation")
    p.set_defaults(fn=_run)
    bsub = p.add_subparsers(dest="broker_command", required=True)

    def town(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--dir", default=str(DEFAULT_DIR),
                        help=f"the township's identity directory (default {DEFAULT_DIR})")
        return sp

    sp = town(bsub.add_parser("init", help="create the township CA and broker certificate"))
    sp.add_argument("township", help="township id, as in the stations' [station] township")
    sp.add_argument("--host", action="append", required=True,
                    help="a name or IP stations dial (repeat for each)")
    sp.add_argument("--days", type=int, default=7300, help="CA validity (default 20 years)")
    sp.set_defaults(broker_fn=cmd_init)
    sp = town(bsub.add_parser("server-cert", help="reissue the broker's TLS certificate"))
    sp.add_argument("--host", action="append", required=True)
    sp.add_argument("--days", type=int, default=1825)
    sp.set_defaults(broker_fn=cmd_server_cert)
    sp = town(bsub.add_parser("add-station", help="issue a station certificate and bundle"))
    sp.add_argument("station")
    sp.add_argument("--broker-host", required=True, help="what the unit dials")
    sp.add_argument("--broker-port", type=int, default=8883)
    sp.add_argument("--days", type=int, default=1825, help="validity (default 5 years)")
    sp.add_argument("--replace", action="store_true",
                    help="revoke the station's current certificate and issue a new one")
    sp.add_argument("--unit-dir", default=UNIT_DIR, help=f"where the files go on the unit "
                    f"(default {UNIT_DIR})")
    sp.set_defaults(broker_fn=cmd_add_station)
    sp = town(bsub.add_parser("revoke", help="revoke a station's certificate (CRL)"))
    sp.add_argument("station")
    sp.set_defaults(broker_fn=cmd_revoke)
    sp = town(bsub.add_parser("add-account", help="add a centre account (password)"))
    sp.add_argument("name", help="like centre.ops")
    sp.add_argument("--password-file", help="read the password from here (default: generate)")
    sp.set_defaults(broker_fn=cmd_add_account)
    sp = town(bsub.add_parser("acl", help="rewrite the township's ACL (acl) from its CA "
                              "and accounts"))
    sp.set_defaults(broker_fn=cmd_acl)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.broker_fn(args))
    except (ProvisionError, OSError) as exc:
        print(f"pingan-centre broker: {exc}", file=sys.stderr)
        return 1
