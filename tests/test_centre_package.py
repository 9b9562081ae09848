"""The centre's package carries what it needs at run time (no repo checkout), and the
unit's package gains no web dependencies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_schemas_are_the_published_ones() -> None:
    shipped = resources.files("pingan_centre.console").joinpath("schemas")
    published_all = sorted((ROOT / "docs" / "schema").glob("*.schema.json"))
    assert sorted(f.name for f in shipped.iterdir() if f.name.endswith(".schema.json")) == [
        f.name for f in published_all], "the console ships exactly the published schemas"
    for published in published_all:
        copy = shipped.joinpath(published.name).read_text(encoding="utf-8")
        assert copy == published.read_text(encoding="utf-8"), (
            f"centre/pingan_centre/console/schemas/{published.name} differs from "
            "docs/schema: cp docs/schema/*.schema.json centre/pingan_centre/console/schemas/")


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="gettext's msgfmt not installed")
def test_shipped_translations_are_compiled_from_their_source(tmp_path: Path) -> None:
    locale = resources.files("pingan_centre.console").joinpath("locale/zh_Hans/LC_MESSAGES")
    po = Path(str(locale.joinpath("django.po")))
    subprocess.run(["msgfmt", "-o", str(tmp_path / "django.mo"), str(po)], check=True)
    assert (tmp_path / "django.mo").read_bytes() == Path(str(locale.joinpath("django.mo"))
                                                         ).read_bytes(), (
        "django.po changed: msgfmt -o django.mo django.po")


def test_the_unit_does_not_import_web_parts() -> None:
    code = ("import sys, edge.station, edge.cli; "
            "bad = [m for m in ('django', 'uvicorn', 'pingan_centre', 'psycopg', 'selenium') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    deps = (ROOT / "pyproject.toml").read_text(encoding="utf-8").split("[project.optional")[0]
    for web in ("django", "uvicorn", "psycopg", "whitenoise"):
        assert web not in deps.lower()
