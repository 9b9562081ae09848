"""A unit gets a plain wheel install (firmware/build-image): the model must be found there,
or the error must say where to provision it; and the wheel carries the unit alone, no
simulation (sim/ is its own package, never on a unit)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "person_ssdlite.tflite"
PROBE = ("from edge import resources; "
         "print(resources.model_path()); print(resources.missing_hint(resources.MODEL))")


def build_wheel(tmp_path: Path, with_model: bool) -> Path:
    """From a clean export of the tracked files (plus the built model, when asked)."""
    src = tmp_path / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    # The working tree's edge/ and pyproject.toml, so the test checks the code under test,
    # not the last commit.
    shutil.rmtree(src / "edge")
    shutil.copytree(ROOT / "edge", src / "edge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    if with_model:
        for f in MODEL.parent.glob("person_ssdlite.*"):
            shutil.copy(f, src / "models" / f.name)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    return next(out.glob("pingan_edge-*.whl"))


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The wheel only (its dependencies are not needed to find files): pip from this venv.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    return venv


@pytest.mark.skipif(not MODEL.exists(), reason="models/build.sh has not built the model")
def test_a_wheel_install_finds_its_model(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, with_model=True)
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".data/data/share/pingan-edge/models/person_ssdlite.tflite")
               for n in names)
    venv = fresh_venv(tmp_path, wheel)
    out = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout.splitlines()
    share = venv / "share" / "pingan-edge"
    assert out[0] == str(share / "models" / "person_ssdlite.tflite")
    assert Path(out[0]).read_bytes() == MODEL.read_bytes()


def test_the_unit_wheel_carries_no_simulation(tmp_path: Path) -> None:
    names = zipfile.ZipFile(build_wheel(tmp_path, with_model=False)).namelist()
    code = [n for n in names if n.endswith(".py")]
    assert "edge/station.py" in code and "edge/contract/events.py" in code, code
    # Only the unit's package, and in it nothing of the simulator: its package, the
    # private broker, software presses, the modem simulator, the camera scenes.
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n and ".data/" not in n} \
        == {"edge"}, names
    simulated = [n for n in names if any(word in n.lower() for word in (
        "sim", "localbroker", "presses", "scene", "township"))]
    assert simulated == [], simulated
    assert not [n for n in names if n.endswith((".jpg", ".png"))]


def test_a_wheel_without_the_model_names_where_to_provision_it(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path, build_wheel(tmp_path, with_model=False))
    out = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout.splitlines()
    assert out[0] == "/usr/share/pingan-edge/models/person_ssdlite.tflite"
    assert "provision it at /usr/share/pingan-edge/models/person_ssdlite.tflite" in out[1]
    assert str(venv / "share" / "pingan-edge" / "models" / "person_ssdlite.tflite") in out[1]
