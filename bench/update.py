"""Update figures (issue 22): bundle size, what a code-only release changes, the capped
download, the install.

What it measures
    A root tree standing in for the unit's (the station's own package plus Python packages
    from this .venv, `--tree-mb` in all), made into an ext4 image the way a release is
    (fixed UUID, hash seed and time, so that two builds differ only where files do), then
    a signed verity bundle (`pingan_centre.release.build`, Debian's rauc). Then:

    - bundle size, and the time to build it;
    - a code-only release (one line of edge/station.py changed): the 4 KiB blocks of the
      root image that differ, which is what RAUC's adaptive `block-hash-index` update
      fetches when it streams (plus its index); the full bundle against that. Counted on
      the images here: streaming itself needs the kernel's nbd and dm-verity, which a
      host may lack (this one has neither: no CONFIG_BLK_DEV_NBD, no device-mapper); the
      bytes a unit really fetches are `firmware/boot-test --update`'s figures (QEMU);
    - the download with the unit's code (edge.update.stream, the local server RAUC
      streams from) over loopback at the default cap (update.rate_bytes_s = 32,000 B/s,
      256 kbit/s), from a plain HTTP server with Range requests: the whole bundle, in
      seconds, and the rate reached against the cap;
    - checks before install (sha256 against the descriptor, `rauc info --keyring`);
    - `rauc install` into a slot image file, through Debian's RAUC service on a private
      system bus, calling our tryboot back-end (a plain-format bundle of the same image:
      verity needs dm-verity).

    Medians of `--rounds` where a step is repeated; the download runs once (it is slow by
    design).

Run
    .venv/bin/python bench/update.py                  # 24 MB tree, 3 rounds
    .venv/bin/python bench/update.py --tree-mb 64 --rounds 1
    .venv/bin/python bench/update.py --skip-download  # without the capped download
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import add_tmp_args, loadavg, machine_line, run_in_tmp

from edge.contract.release import Release
from edge.update import stream, verify
from pingan_centre.release import build as release_build
from pingan_sim.update_rig import BundleServer, RaucRig, bom_file, make_signer

REPO = Path(__file__).resolve().parent.parent
BLOCK = 4096
CAP = 32000


def make_tree(root: Path, mb: int) -> Path:
    station = root / "opt/pingan-edge/edge"
    shutil.copytree(REPO / "edge", station, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "etc").mkdir(parents=True, exist_ok=True)
    site = next((REPO / ".venv/lib").glob("python3*/site-packages"))
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    for path in sorted(site.rglob("*")):
        if total >= mb << 20:
            break
        if path.is_file() and "__pycache__" not in path.parts:
            dest = root / "opt/pingan-edge/site" / path.relative_to(site)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            total += path.stat().st_size
    return root


def image(tree: Path, out: Path, mb: int) -> Path:
    """ext4 the same way every time: only what changed in the tree changes in the image."""
    with out.open("wb") as f:
        f.truncate(((mb * 5 // 4) + 16) << 20)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1767225600"}
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-U",
                    "50494e47-0000-4000-8000-000000000001", "-E",
                    "hash_seed=50494e47-0000-4000-8000-000000000002", "-d", str(tree),
                    str(out)], check=True, env=env)
    return out


def differing_blocks(a: Path, b: Path) -> int:
    n = 0
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(BLOCK), fb.read(BLOCK)
            if not x and not y:
                return n
            n += x != y


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    signer = make_signer(tmp / "keys", "bench")
    tree = make_tree(tmp / "root", args.tree_mb)
    img1 = image(tree, tmp / "root1.ext4", args.tree_mb)
    station = tree / "opt/pingan-edge/edge/station.py"
    station.write_text(station.read_text().replace(
        'STOP_BUDGET_S = 3.0', 'STOP_BUDGET_S = 3.0  # changed'))
    img2 = image(tree, tmp / "root2.ext4", args.tree_mb)
    bom = bom_file(tmp)

    builds = []
    built = None
    for i in range(args.rounds):
        started = time.perf_counter()
        built = release_build.build(version="0.2.0", out_dir=tmp / f"out{i}", cert=signer.cert,
                                    key=signer.key, min_data_schema=1, bom=bom, rootfs=img1)
        builds.append(time.perf_counter() - started)
    assert built is not None
    code_only = release_build.build(version="0.2.1", out_dir=tmp / "code", cert=signer.cert,
                                    key=signer.key, min_data_schema=1, bom=bom, rootfs=img2)
    changed = differing_blocks(img1, img2)

    print(machine_line(load))
    print(f"root tree {args.tree_mb} MB → ext4 image {img1.stat().st_size / 1e6:.1f} MB")
    print(f"bundle (verity, signed): {built.release.size / 1e6:.2f} MB; build median "
          f"{statistics.median(builds):.2f} s over {len(builds)}")
    print(f"code-only release (one line of edge/station.py): full bundle "
          f"{code_only.release.size / 1e6:.2f} MB; adaptive (changed 4 KiB blocks of the "
          f"root image): {changed} blocks = {changed * BLOCK / 1e6:.3f} MB "
          f"({changed * BLOCK / code_only.release.size:.4f} of the full bundle)")

    release = Release(version="0.2.0", size=built.release.size, sha256=built.release.sha256,
                      min_data_schema=1)
    checks = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        verify.check_file(built.bundle, release)
        verify.check_bundle(built.bundle, signer.cert)
        checks.append(time.perf_counter() - started)
    print(f"checks before install (sha256 + rauc info --keyring): median "
          f"{statistics.median(checks):.2f} s")

    if not args.skip_download:
        server = BundleServer().start()
        try:
            url = server.serve("b.raucb", built.bundle)
            proxy = stream.BundleProxy(url, stream.BundleCache(tmp / "dl.raucb", release.size),
                                       rate_bytes_s=CAP, stop=threading.Event())
            started = time.perf_counter()
            proxy.ensure(0, release.size - 1, budget_s=3600)
            took = time.perf_counter() - started
        finally:
            server.stop()
        print(f"download at the 256 kbit/s cap over loopback: {took:.1f} s for "
              f"{release.size / 1e6:.2f} MB = {release.size * 8 / took / 1000:.1f} kbit/s "
              f"(cap 256; ratio {release.size / took / CAP:.3f})")

    plain = release_build.build(version="0.2.0", out_dir=tmp / "plain", cert=signer.cert,
                                key=signer.key, min_data_schema=1, bom=bom, rootfs=img1,
                                bundle_format="plain")
    ring = tmp / "keyring.pem"
    shutil.copyfile(signer.cert, ring)
    installs = []
    for i in range(args.rounds):
        rig = RaucRig(tmp / f"rauc{i}", ring)
        for slot in ("A", "B"):
            with (rig.dir / f"slot{slot}.img").open("wb") as f:
                f.truncate(img1.stat().st_size)
        rig.start()
        try:
            started = time.perf_counter()
            subprocess.run(["rauc", "install", str(plain.bundle)], env=rig.env, check=True,
                           capture_output=True)
            installs.append(time.perf_counter() - started)
        finally:
            rig.stop()
    print(f"rauc install into the other slot (image file, {img1.stat().st_size / 1e6:.0f} MB): "
          f"median {statistics.median(installs):.2f} s over {len(installs)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tree-mb", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-download", action="store_true")
    add_tmp_args(p)
    return run_in_tmp(p.parse_args(), "pingan-bench-update-", run)


if __name__ == "__main__":
    sys.exit(main())
