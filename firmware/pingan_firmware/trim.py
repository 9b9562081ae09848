"""Trim rules for the unit's root, in dpkg's `path-exclude`/`path-include` syntax.

Two files use it. `firmware/trim.dpkg.cfg` is given to dpkg in stage 10 (dpkg never
unpacks what it excludes). `firmware/trim.root.cfg` is applied by stage 35 to the finished
root: files the station's wheels and stage 10 brought that no unit needs (kernel modules
for other boards, the test suites of Python packages, runtimes the station never loads),
kept apart from stage 10 so a change here costs a rebuild of minutes, not a new Debian
root. dpkg's rules: the last pattern that matches a path decides; `*` matches across `/`.

Deleting a kernel module another kept module needs would leave a driver that cannot load,
so `apply` refuses that, from the dependencies stage 10's depmod wrote (modules.dep).

    python -m pingan_firmware.trim --root DIR --rules firmware/trim.root.cfg
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from pathlib import Path

Rules = list[tuple[str, str]]


def load(path: Path) -> Rules:
    """The rules of one file, in order; a line that is not a rule is an error."""
    rules: Rules = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, pattern = line.partition("=")
        if key not in ("path-exclude", "path-include") or not pattern.startswith("/"):
            raise ValueError(f"{path}:{n}: not a path-exclude/path-include rule: {line}")
        rules.append((key, pattern))
    return rules


def kept(path: str, rules: Rules) -> bool:
    """dpkg's decision for one absolute path: the last rule matching it, else kept."""
    keep = True
    for key, pattern in rules:
        if fnmatch.fnmatchcase(path, pattern):
            keep = key == "path-include"
    return keep


class BrokenModules(RuntimeError):
    """The rules delete a kernel module that a kept module depends on."""


def _module_deps(root: Path) -> dict[str, list[str]]:
    """Each module of each kernel in the root, by its path in the root, with the paths of
    the modules it needs (modules.dep: `kernel/a.ko: kernel/b.ko kernel/c.ko`)."""
    deps: dict[str, list[str]] = {}
    for dep_file in sorted((root / "usr/lib/modules").glob("*/modules.dep")):
        base = "/" + str(dep_file.parent.relative_to(root))
        for line in dep_file.read_text(encoding="utf-8").splitlines():
            mod, _, needs = line.partition(":")
            deps[f"{base}/{mod}"] = [f"{base}/{n}" for n in needs.split()]
    return deps


def apply(root: Path, rules: Rules) -> tuple[int, int]:
    """Delete every file or symbolic link of the root the rules exclude; return (files,
    bytes) deleted. Raises BrokenModules, deleting nothing, if a kept module would lose a
    module it needs."""
    doomed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Symbolic links to directories (/lib -> usr/lib) are listed as names, not walked.
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            path = here / name
            if not kept("/" + str(path.relative_to(root)), rules):
                doomed.append(path)
    gone = {"/" + str(p.relative_to(root)) for p in doomed}
    broken = sorted(f"{mod} needs {need}" for mod, needs in _module_deps(root).items()
                    if mod not in gone for need in needs if need in gone)
    if broken:
        raise BrokenModules("the rules delete modules that kept ones need:\n  "
                            + "\n  ".join(broken))
    size = 0
    for path in doomed:
        size += path.lstat().st_size
        path.unlink()
    # Directories the deletions emptied go too (and their parents, once empty); a
    # directory that was empty before (a mount point) stays.
    for here in sorted({p.parent for p in doomed}, key=lambda d: -len(d.parts)):
        while here != root and here.is_dir() and not any(here.iterdir()):
            here.rmdir()
            here = here.parent
    return len(doomed), size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--rules", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        files, size = apply(args.root, load(args.rules))
    except BrokenModules as exc:
        print(f"trim: {exc}", file=sys.stderr)
        return 1
    print(f"trim: {files} files, {size} bytes deleted by {args.rules.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
