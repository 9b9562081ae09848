"""Stripping the station's shared libraries (pingan_firmware.elfstrip): a library loses its
symbol table and still loads; a stripped copy whose segments the loader would refuse is
thrown away and the library left as it was. Built here with the host's gcc and strip."""

from __future__ import annotations

import ctypes
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pingan_firmware import elfstrip

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

SOURCE = "int answer(void) { return 42; }\n"


def library(tmp_path: Path, name: str = "libanswer.so") -> Path:
    src = tmp_path / "answer.c"
    src.write_text(SOURCE)
    out = tmp_path / "lib" / name
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def sections(path: Path) -> str:
    return subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                          check=True).stdout


# Moves the offset of an ELF file's second PT_LOAD by 8 bytes, as a bad rewrite would.
MISALIGN = """
import struct
def misalign(path):
    data = bytearray(path.read_bytes())
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads = [phoff + i * phentsize for i in range(phnum)
             if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 1]
    (offset,) = struct.unpack_from("<Q", data, loads[1] + 8)
    struct.pack_into("<Q", data, loads[1] + 8, offset + 8)
    path.write_bytes(bytes(data))
"""


def misalign(path: Path) -> None:
    scope: dict[str, Any] = {}
    exec(MISALIGN, scope)
    scope["misalign"](path)


def test_a_library_is_stripped_and_still_loads(tmp_path: Path) -> None:
    lib = library(tmp_path)
    lib.chmod(0o755)
    before = lib.stat().st_size
    assert ".symtab" in sections(lib) and ".debug_info" in sections(lib)
    stripped, saved, refused = elfstrip.strip_tree(tmp_path / "lib", "strip")
    assert (stripped, refused) == (1, [])
    assert saved == before - lib.stat().st_size > 0
    assert ".symtab" not in sections(lib) and ".debug_info" not in sections(lib)
    assert stat.S_IMODE(lib.stat().st_mode) == 0o755
    assert ctypes.CDLL(str(lib)).answer() == 42
    assert list((tmp_path / "lib").iterdir()) == [lib]  # no copy left behind


def test_segments_the_loader_would_refuse_are_seen(tmp_path: Path) -> None:
    lib = library(tmp_path)
    assert elfstrip.loadable(lib) is True
    misalign(lib)
    assert elfstrip.loadable(lib) is False
    with pytest.raises(OSError):
        ctypes.CDLL(str(lib))
    text = tmp_path / "lib" / "notes.so.txt"
    text.write_text("not an ELF file")
    assert elfstrip.loadable(text) is None


def test_a_stripped_copy_that_would_not_load_is_thrown_away(tmp_path: Path) -> None:
    lib = library(tmp_path)
    original = lib.read_bytes()
    # A strip that writes what GNU strip wrote for numpy's OpenBLAS: segments misaligned.
    bad_strip = tmp_path / "bad-strip"
    bad_strip.write_text(f"#!{sys.executable}\n"
                         "import subprocess, sys\nfrom pathlib import Path\n" + MISALIGN
                         + "subprocess.run(['strip', *sys.argv[1:]], check=True)\n"
                         "misalign(Path(sys.argv[sys.argv.index('-o') + 1]))\n")
    bad_strip.chmod(0o755)
    assert elfstrip.strip_tree(tmp_path / "lib", str(bad_strip)) == (0, 0, [lib])
    assert lib.read_bytes() == original
    assert list((tmp_path / "lib").iterdir()) == [lib]
    assert ctypes.CDLL(str(lib)).answer() == 42
