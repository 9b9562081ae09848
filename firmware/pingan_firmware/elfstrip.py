"""Strip the symbol tables off the station's wheels' shared libraries (stage 20).

The wheels ship some libraries unstripped (cryptography, numpy's OpenBLAS, LiteRT, PyAV's
modules: about 40 MB on a unit). auditwheel rewrote many of them with patchelf, and GNU
strip can turn such a file into one whose loadable segments are no longer aligned, which
the dynamic loader refuses ("ELF load command address/offset not page-aligned": numpy's
OpenBLAS does this). So each library is stripped into a copy, and the copy replaces it
only if every PT_LOAD segment still has offset ≡ address (mod its alignment).

    python -m pingan_firmware.elfstrip --strip aarch64-linux-gnu-strip DIR
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
from pathlib import Path

PT_LOAD = 1


def loadable(path: Path) -> bool | None:
    """Whether a 64-bit little-endian ELF file's loadable segments are aligned as the
    loader needs; None if the file is no such ELF file."""
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        kind, _, offset, vaddr, _, _, _, align = struct.unpack_from("<IIQQQQQQ", table,
                                                                    i * phentsize)
        if kind == PT_LOAD and align > 1 and offset % align != vaddr % align:
            return False
    return True


def strip_tree(top: Path, strip: str) -> tuple[int, int, list[Path]]:
    """Strip every shared library under top; return (files stripped, bytes saved, files
    left as they were because their stripped copy would not load)."""
    stripped, saved, refused = 0, 0, []
    for path in sorted(top.rglob("*.so*")):
        if path.is_symlink() or not path.is_file() or loadable(path) is not True:
            continue
        copy = path.with_name(path.name + ".stripped")
        subprocess.run([strip, "--strip-unneeded", "-o", str(copy), str(path)], check=True)
        if loadable(copy) and copy.stat().st_size < path.stat().st_size:
            saved += path.stat().st_size - copy.stat().st_size
            os.chmod(copy, path.stat().st_mode)
            copy.replace(path)
            stripped += 1
        else:
            if not loadable(copy):
                refused.append(path)
            copy.unlink()
    return stripped, saved, refused


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strip", default="aarch64-linux-gnu-strip")
    ap.add_argument("top", type=Path)
    args = ap.parse_args(argv)
    stripped, saved, refused = strip_tree(args.top, args.strip)
    print(f"elfstrip: {stripped} libraries stripped, {saved} bytes saved; left unstripped "
          f"(their stripped copy would not load): {[str(p) for p in refused]}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
