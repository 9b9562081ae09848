"""`pingan-centre release …`: build and check the RAUC bundles units update from."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from pingan_centre.release import build as build_mod
from pingan_centre.release.build import ReleaseError


def cmd_build(args: argparse.Namespace) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="pingan-bom-") as tmp:
            bom = args.bom
            if bom is None:
                if args.dpkg is None or args.lock is None:
                    raise ReleaseError("give --bom FILE (firmware/build-image writes "
                                       "IMAGE.bom.cdx.json) or both --dpkg STATUS and --lock LOCK")
                bom = build_mod.make_bom(version=args.version, dpkg=args.dpkg, lock=args.lock,
                                         out=Path(tmp) / "bom.cdx.json")
            built = build_mod.build(
                version=args.version, out_dir=args.out, cert=args.cert, key=args.key,
                min_data_schema=args.min_data_schema, bom=bom, rootfs=args.rootfs,
                root_dir=args.root_dir, rollback=args.allow_rollback, build_id=args.build_id,
                keyring=args.keyring, bundle_format=args.format)
    except (ReleaseError, ValueError, OSError) as exc:
        print(f"pingan-centre release build: {exc}")
        return 1
    print(f"{built.bundle} ({built.release.size} bytes, sha256 {built.release.sha256})")
    print(f"{built.descriptor}: offer it from the console (staged rollout), or copy the "
          f"bundle to a USB stick for `pingan-edge update apply`")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        info = build_mod.verify_bundle(args.bundle, args.keyring)
    except ReleaseError as exc:
        print(f"pingan-centre release verify: {exc}")
        return 1
    print(f"{args.bundle}: signed by a key of {args.keyring}; version {info.get('version')}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("release", help="build and check update bundles (RAUC) for the units")
    rsub = p.add_subparsers(dest="release_command", required=True)
    sp = rsub.add_parser("build", help="build and sign a release bundle (on the signing PC)")
    sp.add_argument("--version", required=True, help="the release version, e.g. 0.2.0")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--rootfs", type=Path, help="the root slot's ext4 image")
    src.add_argument("--root-dir", type=Path, help="a root tree (firmware's build work dir)")
    sp.add_argument("--min-data-schema", type=int, required=True,
                    help="the oldest data-partition schema this release reads")
    sp.add_argument("--bom", type=Path, help="the image's bill of materials (.bom.cdx.json)")
    sp.add_argument("--dpkg", type=Path, help="with --lock: make the BOM from a dpkg status")
    sp.add_argument("--lock", type=Path, help="locks/unit-aarch64.txt")
    sp.add_argument("--cert", type=Path, required=True, help="the signing certificate (PEM)")
    sp.add_argument("--key", type=Path, required=True, help="the signing key (PEM); never "
                    "copy it off this PC")
    sp.add_argument("--keyring", type=Path, help="check the bundle against this keyring "
                    "(the units'); default: the signing certificate")
    sp.add_argument("--allow-rollback", action="store_true",
                    help="sign this release as allowed to replace a newer one (a rollback)")
    sp.add_argument("--build-id", default="", help="e.g. the git commit")
    sp.add_argument("--format", choices=["verity", "plain"], default="verity",
                    help="verity (units accept only this: streamable, checked block by "
                         "block); plain only for test rigs whose kernel lacks dm-verity")
    sp.add_argument("-o", "--out", type=Path, default=Path("release"))
    sp.set_defaults(fn=cmd_build)
    sp = rsub.add_parser("verify", help="check a bundle's signature against a keyring")
    sp.add_argument("bundle", type=Path)
    sp.add_argument("--keyring", type=Path, required=True)
    sp.set_defaults(fn=cmd_verify)
