"""No secret in git (issue 17): the console refuses the secret key that was committed, and
an empty or weak one; its secret files and its database are its own user's alone (0600).

Real `pingan-centre` processes on real data directories, under umask 022 (the usual one),
so that a 0600 file shows the code asked for it, not the umask."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from django.core.exceptions import ImproperlyConfigured

from pingan_centre.console import config
from pingan_sim.localbroker import free_port, reachable

ROOT = Path(__file__).resolve().parent.parent
# centre/centre-data/secret_key as it was committed: read back from git's history, so
# that the key itself is never written into the repository again.
LEAKED_BLOB = "d296ba9778a3ce79c585145c3547b2406a783059"


@pytest.fixture(scope="module")
def leaked_key() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-p", LEAKED_BLOB],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("the leaked key is not in this clone's history (shallow or rewritten)")
    return done.stdout


def centre(tmp: Path, *args: str, toml: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pingan_centre", *args],
                          env=_env(tmp, toml), capture_output=True, text=True, timeout=120,
                          umask=0o022)


def _env(tmp: Path, toml: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINGAN_CENTRE_")}
    env["PINGAN_CENTRE_DATA"] = str(tmp / "data")
    if toml is not None:
        (tmp / "centre.toml").write_text(toml, encoding="utf-8")
        env["PINGAN_CENTRE_CONFIG"] = str(tmp / "centre.toml")
    return env


def refusal(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 2, done.stderr[-3000:]
    line: dict[str, Any] = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["event"] == "centre.cannot_start" and line["level"] == "error"
    assert line["exit"] == 2
    return line


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serve_refuses_the_leaked_key_and_says_how_to_make_a_new_one(
        tmp_path: Path, leaked_key: str) -> None:
    key_file = tmp_path / "data" / "secret_key"
    key_file.parent.mkdir()
    key_file.write_text(leaked_key, encoding="utf-8")
    port = free_port()
    line = refusal(centre(tmp_path, "serve", "--host", "127.0.0.1", "--port", str(port),
                          "--no-ingest"))
    assert "public" in line["error"] and str(key_file) in line["error"]
    assert line["action"].startswith(f"delete {key_file} and start the console again")
    assert leaked_key.strip() not in json.dumps(line)
    assert not reachable("127.0.0.1", port, 0.2)
    assert not (tmp_path / "data" / "centre.sqlite3").exists(), "refused before the database"

    # Doing what the action says is enough.
    key_file.unlink()
    done = centre(tmp_path, "migrate")
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = key_file.read_text(encoding="utf-8")
    assert fresh != leaked_key and len(fresh) >= config.SECRET_KEY_MIN_LENGTH
    assert mode(key_file) == 0o600


@pytest.mark.parametrize(("value", "problem"), [
    ("LEAKED", "is public"),
    ("", "is empty"),
    ("   ", "is empty"),
    ("short-but-random-7Qz", "is too weak (20 characters)"),
    ("a" * 64, "is too weak (64 characters)"),
])
def test_a_configured_key_that_is_public_empty_or_weak_is_refused(
        tmp_path: Path, leaked_key: str, value: str, problem: str) -> None:
    value = leaked_key.strip() if value == "LEAKED" else value
    line = refusal(centre(tmp_path, "migrate", toml=f"secret_key = {json.dumps(value)}\n"))
    toml = tmp_path / "centre.toml"
    assert line["error"].startswith(f"the secret key (secret_key in {toml}) {problem}")
    assert line["action"].startswith(f"set secret_key in {toml} to a new random value (")
    assert f"the console keeps a generated key in {tmp_path / 'data' / 'secret_key'}" in (
        line["action"])


def test_settings_raise_improperly_configured_with_the_action(tmp_path: Path,
                                                             leaked_key: str) -> None:
    """What uvicorn, mypy's Django plugin or anything else importing settings sees."""
    (tmp_path / "secret_key").write_text(leaked_key + "\n", encoding="utf-8")
    with pytest.raises(ImproperlyConfigured) as raised:
        config.secret_key(config.CentreConfig(data_dir=tmp_path))
    assert str(raised.value) == (
        f"the secret key ({tmp_path / 'secret_key'}) is public: it was published in git, "
        f"and anyone holding it can forge a login; delete {tmp_path / 'secret_key'} and "
        "start the console again: it writes a new random key there (everyone logged in "
        "has to log in again)")
    good = secrets.token_urlsafe(50)
    assert config.secret_key(config.CentreConfig(data_dir=tmp_path, secret_key=good)) == good


def test_a_fresh_data_dir_keeps_key_password_and_database_to_the_console(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    with (tmp_path / "centre.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pingan_centre", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--no-ingest"], env=_env(tmp_path, None), stdout=log,
            stderr=subprocess.STDOUT, umask=0o022)
    try:
        wait_until(lambda: reachable("127.0.0.1", port, 0.2) or proc.poll() is not None, 60,
                   "centre web server")
        assert proc.poll() is None, (tmp_path / "centre.log").read_text()[-3000:]
        files = {p.name: mode(p) for p in data.iterdir()}
        # WAL: the database's side files exist while the console runs.
        assert {"secret_key", "admin-password.txt", "centre.sqlite3",
                "centre.sqlite3-wal", "centre.sqlite3-shm"} <= files.keys()
        assert files == dict.fromkeys(files, 0o600)
        assert mode(data) == 0o700
    finally:
        proc.terminate()
        proc.wait(15)


def test_an_older_data_dir_readable_by_all_is_narrowed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert centre(tmp_path, "migrate").returncode == 0
    for name in ("secret_key", "centre.sqlite3"):
        os.chmod(data / name, 0o644)  # as an older console left them
    done = centre(tmp_path, "createuser", "wang", "--role", "viewer")
    assert done.returncode == 0, done.stderr[-3000:]
    assert mode(data / "secret_key") == mode(data / "centre.sqlite3") == 0o600
