"""The Debian stage's cache (pingan_firmware.stagecache): its key follows its inputs, and a
root comes back from it exactly (owners, modes, links, xattrs, device nodes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from firmware_helpers import ROOT

from pingan_firmware import stagecache

STAGE = ROOT / "firmware" / "stages" / "10-debian.sh"
TRIM = ROOT / "firmware" / "trim.dpkg.cfg"
EXTRA = {"arch": "arm64", "mmdebstrap": "mmdebstrap 1.3.5", "archive": "day 2026-12-06"}


def copy(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "10-debian.sh").write_text(text)
    return d / "10-debian.sh"


def test_the_key_follows_the_inputs_and_nothing_else(tmp_path: Path) -> None:
    base = stagecache.key([STAGE, TRIM], EXTRA)
    assert stagecache.key([TRIM, STAGE], dict(reversed(list(EXTRA.items())))) == base
    same = copy(tmp_path, "same", STAGE.read_text())
    assert stagecache.key([same, TRIM], EXTRA) == base  # where the checkout is: no matter
    one_more = copy(tmp_path, "pkg", STAGE.read_text().replace("less\n", "less htop\n", 1))
    assert one_more.read_text() != STAGE.read_text()
    assert stagecache.key([one_more, TRIM], EXTRA) != base
    for name, value in (("archive", "day 2026-12-07"), ("mmdebstrap", "mmdebstrap 1.4.0"),
                        ("archive", "20261201T000000Z")):
        assert stagecache.key([STAGE, TRIM], {**EXTRA, name: value}) != base


def tree(root: Path) -> dict[str, tuple[int, int, int, str, bytes]]:
    """Every path: mode, owner, group, link target or xattr, content."""
    out = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        extra = os.readlink(p) if p.is_symlink() else ""
        if stat.S_ISREG(st.st_mode):
            extra += repr(sorted((a, os.getxattr(p, a)) for a in os.listxattr(p)))
            extra += f" links={st.st_nlink}"
        if stat.S_ISCHR(st.st_mode):
            extra += f" dev={os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, extra, data)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="owners and device nodes need root")
def test_a_root_comes_back_exactly_and_old_entries_are_pruned(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "dev").mkdir()
    sudo = root / "usr" / "bin" / "sudo"
    sudo.write_bytes(b"\x7fELF sudo")
    os.chmod(sudo, 0o4755)
    shadow = root / "etc" / "shadow"
    shadow.parent.mkdir()
    shadow.write_text("root:*:19000::::::\n")
    os.chown(shadow, 0, 42)
    os.chmod(shadow, 0o640)
    home = root / "var" / "lib" / "pingan-edge"
    home.mkdir(parents=True)
    os.chown(home, 998, 997)
    os.symlink("../run/systemd/resolve/stub-resolv.conf", root / "etc" / "resolv.conf")
    os.link(sudo, root / "usr" / "bin" / "sudoedit")
    ping = root / "usr" / "bin" / "ping"
    ping.write_bytes(b"\x7fELF ping")
    os.setxattr(ping, "user.pingan", b"kept")
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    before = tree(root)
    cache = tmp_path / "cache"

    assert not stagecache.restore(root, cache, "0" * 32)  # a miss leaves the root alone
    assert tree(root) == before
    saved = stagecache.save(root, cache, "a" * 32)
    assert saved.exists() and not list(cache.glob("*.partial"))
    (root / "etc" / "shadow").write_text("changed")
    assert stagecache.restore(root, cache, "a" * 32)
    assert tree(root) == before

    stagecache.save(root, cache, "b" * 32)
    os.utime(cache / f"debian-{'b' * 32}.tar", (1, 1))  # the least recently used
    stagecache.save(root, cache, "c" * 32)
    assert sorted(p.name for p in cache.iterdir()) == [f"debian-{'a' * 32}.tar",
                                                       f"debian-{'c' * 32}.tar"]


def test_the_command_line_says_hit_or_miss(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "f").write_text("x")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pingan_firmware.stagecache", *args],
                              capture_output=True, text=True)

    key = cli("key", "--input", str(STAGE), "--input", str(TRIM), "--extra",
              "archive=day 2026-12-06").stdout.strip()
    assert len(key) == 32
    miss = cli("restore", "--cache", str(tmp_path / "c"), "--key", key, "--root", str(root))
    assert miss.returncode == 1 and "miss" in miss.stderr
    assert cli("save", "--cache", str(tmp_path / "c"), "--key", key, "--root",
               str(root)).returncode == 0
    hit = cli("restore", "--cache", str(tmp_path / "c"), "--key", key, "--root", str(root))
    assert hit.returncode == 0 and "hit" in hit.stderr and (root / "f").read_text() == "x"
