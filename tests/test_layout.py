"""Nothing outside tests/ reaches into it. import-linter checks the packages
(`lint-imports`, pyproject.toml); this checks every Python file it cannot see as a
package too (bench/, firmware's scripts, bin/): no sys.path edit naming tests/, and no
import of a module that lives there."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
SKIP = {".venv", ".git", "tests", "node_modules", "build"}


def _python_files() -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if parts & SKIP or any(p.startswith(".") for p in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and (path.suffix == ".py" or (
                path.parent.name == "bin" and path.read_bytes()[:40].startswith(b"#!")
                and b"python" in path.read_bytes()[:40])):
            found.append(path)
    return found


def test_nothing_outside_the_tests_reaches_into_them() -> None:
    own = {p.stem for p in TESTS.glob("*.py")} | {"tests"}
    files = _python_files()
    assert any(f.parts[-2] == "bench" for f in files) and any(f.name == "boot_test.py"
                                                               for f in files)
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in own]
            if isinstance(node, (ast.Call, ast.Assign)) and "sys.path" in ast.unparse(node) \
                    and "tests" in ast.unparse(node):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} puts tests/ on sys.path")
    assert found == []
