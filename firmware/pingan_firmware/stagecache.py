"""The Debian stage's root, cached under a key of its inputs (firmware/build-image).

Stage 10 (mmdebstrap, most of a build's 23 minutes) depends only on its script, the
trim rules, mmdebstrap's version, the architecture and the state of Debian's archive. The
first four are files and strings; the archive is pinned by a snapshot.debian.org date
(`--snapshot`), or, without one, by the day (UTC) of the build: a code-only rebuild the
same day takes the cached root, the next day's build takes Debian's new security updates.
Changing one package in the stage's list changes the key.

The root is kept as a tar (numeric owners, modes, xattrs, links, device nodes), written
beside its final name and renamed, so an interrupted save never leaves a cache entry.
The newest `keep` entries stay; older ones are removed.

    python -m pingan_firmware.stagecache key --input FILE... [--extra NAME=VALUE...]
    python -m pingan_firmware.stagecache restore --cache DIR --key KEY --root DIR
    python -m pingan_firmware.stagecache save --cache DIR --key KEY --root DIR
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PREFIX = "debian-"


def key(inputs: Iterable[Path], extra: dict[str, str]) -> str:
    """sha256 over each input's name and bytes and the extra name=value pairs, in a fixed
    order: the same inputs give the same key on any machine."""
    h = hashlib.sha256()
    for path in sorted(inputs, key=lambda p: p.name):
        h.update(f"file {path.name} {path.stat().st_size}\n".encode())
        h.update(path.read_bytes())
    for name in sorted(extra):
        h.update(f"\nextra {name}={extra[name]}\n".encode())
    return h.hexdigest()[:32]


def entry(cache: Path, k: str) -> Path:
    return cache / f"{PREFIX}{k}.tar"


def _tar(*args: str) -> None:
    done = subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                           "--acls", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"tar {' '.join(args[:2])} failed: {done.stderr.strip()}")


def save(root: Path, cache: Path, k: str, keep: int = 2) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    final = entry(cache, k)
    partial = final.with_name(final.name + ".partial")
    partial.unlink(missing_ok=True)
    _tar("-C", str(root), "-cf", str(partial), ".")
    os.replace(partial, final)
    entries = sorted(cache.glob(f"{PREFIX}*.tar"), key=lambda p: p.stat().st_mtime,
                     reverse=True)
    for old in entries[keep:]:
        old.unlink()
    return final


def restore(root: Path, cache: Path, k: str) -> bool:
    """Replace `root` with the cached tree for `k`; False (root untouched) on a miss."""
    final = entry(cache, k)
    if not final.exists():
        return False
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    _tar("-C", str(root), "-xpf", str(final))
    os.utime(final)  # most recently used: kept by the next save's pruning
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pingan_firmware.stagecache",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("key")
    k.add_argument("--input", type=Path, action="append", default=[])
    k.add_argument("--extra", action="append", default=[], help="NAME=VALUE")
    for name in ("restore", "save"):
        sp = sub.add_parser(name)
        sp.add_argument("--cache", type=Path, required=True)
        sp.add_argument("--key", required=True)
        sp.add_argument("--root", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "key":
        pairs = dict(x.split("=", 1) for x in args.extra)
        print(key(args.input, pairs))
        return 0
    if args.cmd == "restore":
        hit = restore(args.root, args.cache, args.key)
        print(f"stage cache: {'hit' if hit else 'miss'} {args.key}", file=sys.stderr)
        return 0 if hit else 1
    path = save(args.root, args.cache, args.key)
    print(f"stage cache: saved {path} ({path.stat().st_size // 2**20} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
