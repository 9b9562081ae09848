"""The centre's own settings: one TOML file (optional) plus environment overrides.

A township needs none of it: everything has a default, the database is an SQLite file in
the data directory. A county sets `database = "postgres://..."` and nothing else changes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

from pingan_centre.console import private

ENV_CONFIG = "PINGAN_CENTRE_CONFIG"
# SHA-256 of secret keys that are public: anyone holding one can forge a login session.
# b14ded2e...: centre/centre-data/secret_key, committed to git until issue 17.
LEAKED_SECRET_KEYS = frozenset({
    "b14ded2e53b3abbf4f809d92daf2e9fb4077eff0eb9479bceb83badf28e34266",
})
# Django's own deployment check (security.W009) asks for 50 characters, 5 different.
SECRET_KEY_MIN_LENGTH = 50
NEW_SECRET_KEY = "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"


@dataclass(frozen=True)
class Step:
    """One rung of the escalation ladder: after `after_s` unacknowledged, do it once."""

    after_s: float
    name: str
    notify: tuple[str, ...] = ()
    loud: bool = False


DEFAULT_LADDER = (
    Step(60, "louder", notify=("log",), loud=True),
    Step(180, "leader", notify=("log", "webhook"), loud=True),
)


@dataclass(frozen=True)
class SmsConfig:
    """The `[sms]` table: a 4G modem on the centre PC that texts the officers on duty
    (the `sms` notifier of the escalation ladder; pingan_centre/console/sms.py)."""

    # The modem's AT port, opened by URL: /dev/ttyUSB2, rfc2217://host:port, a pty.
    # "" (the default): no modem, and a rung that names `sms` only logs it.
    port: str = ""
    baudrate: int = 115200
    # Rate limits in SMS parts (what the operator bills), per rolling hour and day.
    per_hour: int = 60
    per_day: int = 300
    command_timeout_s: float = 5.0
    sms_timeout_s: float = 30.0
    # A part refused for a temporary reason is tried again after 1, 2, 4 ... s, up to this.
    retry_max_s: float = 300.0
    # Parts not sent within this are given up (the validity the SMS asks for: 24 h).
    give_up_s: float = 86400.0


@dataclass(frozen=True)
class CapConfig:
    """The `[cap]` table: CAP 1.2 alerts imported as broadcasts (console/cap, docs/cap.md)."""

    # A folder the console watches for CAP files ("" : none). Processed files move to its
    # done/ or rejected/ (with a .reason.txt beside them). Write a file under another name
    # (or a dot name) and rename it in: only *.xml files are read.
    watch_dir: str = ""
    poll_s: float = 5.0
    # Exercise and Test alerts play (marked as drills) only where this is true.
    allow_drills: bool = False
    # Village name -> its GB/T 2260 administrative code (12 digits down to the village, or
    # fewer). A CAP geocode matches a village whose code starts with it.
    areas: dict[str, str] = field(default_factory=dict)
    # The geocode valueNames read as GB/T 2260 codes (compared without case, spaces, '/').
    geocode_names: tuple[str, ...] = ("GB/T 2260", "GB2260", "ADCODE")
    repeat: int = 2
    # An alert without `expires` stops being played after this (a station that comes
    # back online later does not sound a stale warning).
    default_expires_s: float = 6 * 3600.0
    max_bytes: int = 1 << 20


@dataclass(frozen=True)
class CentreConfig:
    data_dir: Path
    database: str = ""
    township: str = "t01"
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_username: str = ""
    broker_password: str = ""
    broker_tls_ca: str = ""
    # Shared-subscription group: two centre processes in one group split the work.
    share_group: str = "centre"
    client_id: str = "pingan-centre"
    session_expiry_s: int = 7 * 86400
    max_payload_bytes: int = 512 * 1024
    # A station whose last state or event is older than this shows as silent.
    stale_after_s: float = 700.0
    # None: not configured, the console keeps a generated one in data_dir/secret_key.
    secret_key: str | None = None
    debug: bool = False
    escalation: tuple[Step, ...] = field(default_factory=lambda: DEFAULT_LADDER)
    webhook_url: str = ""
    sms: SmsConfig = field(default_factory=SmsConfig)
    # Station id -> village name, applied when a station is first seen (admin can edit).
    villages: dict[str, str] = field(default_factory=dict)
    cap: CapConfig = field(default_factory=CapConfig)
    # The TOML file this was read from ("" for none), to name it in errors.
    config_file: str = ""


class SecretKeyError(ImproperlyConfigured):
    """The secret key must not be used: `problem` says why, `action` what to do."""

    def __init__(self, problem: str, action: str) -> None:
        super().__init__(f"{problem}; {action}")
        self.problem = problem
        self.action = action


def _data_dir() -> Path:
    return Path(os.environ.get("PINGAN_CENTRE_DATA", "") or Path.cwd() / "centre-data")


def load(path: str | None = None) -> CentreConfig:
    """Read the TOML file named by `path` or $PINGAN_CENTRE_CONFIG; env vars win."""
    raw: dict[str, Any] = {}
    path = path or os.environ.get(ENV_CONFIG)
    if path:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    broker = raw.get("broker", {})
    env = os.environ
    ladder = tuple(Step(float(s["after_s"]), str(s["name"]), tuple(s.get("notify", ())),
                        bool(s.get("loud", False)))
                   for s in raw.get("escalation", {}).get("steps", [])) or DEFAULT_LADDER
    data_dir = Path(env.get("PINGAN_CENTRE_DATA") or raw.get("data_dir") or _data_dir())
    return CentreConfig(
        data_dir=data_dir,
        database=env.get("PINGAN_CENTRE_DATABASE") or raw.get("database", ""),
        township=env.get("PINGAN_CENTRE_TOWNSHIP") or raw.get("township", "t01"),
        broker_host=env.get("PINGAN_CENTRE_BROKER_HOST") or broker.get("host", "127.0.0.1"),
        broker_port=int(env.get("PINGAN_CENTRE_BROKER_PORT") or broker.get("port", 1883)),
        broker_username=broker.get("username", ""),
        broker_password=broker.get("password", ""),
        broker_tls_ca=broker.get("tls_ca", ""),
        share_group=raw.get("share_group", "centre"),
        client_id=env.get("PINGAN_CENTRE_CLIENT_ID") or raw.get("client_id", "pingan-centre"),
        session_expiry_s=int(raw.get("session_expiry_s", 7 * 86400)),
        max_payload_bytes=int(raw.get("max_payload_bytes", 512 * 1024)),
        stale_after_s=float(env.get("PINGAN_CENTRE_STALE_AFTER_S")
                            or raw.get("stale_after_s", 700.0)),
        secret_key=None if raw.get("secret_key") is None else str(raw["secret_key"]),
        debug=bool(raw.get("debug", False)),
        escalation=ladder,
        webhook_url=raw.get("webhook_url", ""),
        sms=_sms(raw.get("sms", {})),
        villages={str(k): str(v) for k, v in raw.get("villages", {}).items()},
        cap=_cap(raw.get("cap", {})),
        config_file=str(path or ""),
    )


def _sms(raw: dict[str, Any]) -> SmsConfig:
    known = SmsConfig.__dataclass_fields__
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ImproperlyConfigured(f"[sms] has unknown keys {unknown}; known: {sorted(known)}")
    d = SmsConfig()
    cfg = SmsConfig(
        port=str(raw.get("port", d.port)), baudrate=int(raw.get("baudrate", d.baudrate)),
        per_hour=int(raw.get("per_hour", d.per_hour)),
        per_day=int(raw.get("per_day", d.per_day)),
        command_timeout_s=float(raw.get("command_timeout_s", d.command_timeout_s)),
        sms_timeout_s=float(raw.get("sms_timeout_s", d.sms_timeout_s)),
        retry_max_s=float(raw.get("retry_max_s", d.retry_max_s)),
        give_up_s=float(raw.get("give_up_s", d.give_up_s)))
    if min(cfg.per_hour, cfg.per_day) < 1 or min(cfg.command_timeout_s, cfg.sms_timeout_s,
                                                 cfg.retry_max_s, cfg.give_up_s) <= 0:
        raise ImproperlyConfigured("[sms] limits and timeouts must be positive")
    return cfg


def _cap(raw: dict[str, Any]) -> CapConfig:
    known = CapConfig.__dataclass_fields__
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ImproperlyConfigured(f"[cap] has unknown keys {unknown}; known: {sorted(known)}")
    d = CapConfig()
    areas = {str(k): str(v).strip() for k, v in raw.get("areas", {}).items()}
    bad = sorted(k for k, v in areas.items() if not v.isdigit() or not 2 <= len(v) <= 12)
    if bad:
        raise ImproperlyConfigured(f"[cap.areas] {bad}: a GB/T 2260 code is 2 to 12 digits "
                                   "(e.g. \"420102001001\")")
    cfg = CapConfig(
        watch_dir=str(raw.get("watch_dir", d.watch_dir)),
        poll_s=float(raw.get("poll_s", d.poll_s)),
        allow_drills=bool(raw.get("allow_drills", d.allow_drills)),
        areas=areas,
        geocode_names=tuple(str(n) for n in raw.get("geocode_names", d.geocode_names)),
        repeat=int(raw.get("repeat", d.repeat)),
        default_expires_s=float(raw.get("default_expires_s", d.default_expires_s)),
        max_bytes=int(raw.get("max_bytes", d.max_bytes)))
    if cfg.poll_s <= 0 or cfg.default_expires_s <= 0 or cfg.max_bytes < 1024 or not (
            1 <= cfg.repeat <= 50):
        raise ImproperlyConfigured("[cap] poll_s and default_expires_s must be positive, "
                                   "max_bytes at least 1024, repeat 1 to 50")
    return cfg


def secret_key(cfg: CentreConfig) -> str:
    """The configured `secret_key`, else the one in data_dir/secret_key (generated at the
    first start, 0600). Raises SecretKeyError for a public or a weak key."""
    path = cfg.data_dir / "secret_key"
    if cfg.secret_key is not None:
        return _usable(cfg.secret_key.strip(), f"secret_key in {cfg.config_file}", (
            f"set secret_key in {cfg.config_file} to a new random value ({NEW_SECRET_KEY}), "
            f"or delete that line and the console keeps a generated key in {path}"))
    if not path.exists():
        private.write_once(path, secrets.token_urlsafe(50))
    private.narrow(path)
    return _usable(path.read_text(encoding="utf-8").strip(), str(path), (
        f"delete {path} and start the console again: it writes a new random key there "
        "(everyone logged in has to log in again)"))


def _usable(key: str, where: str, action: str) -> str:
    if hashlib.sha256(key.encode()).hexdigest() in LEAKED_SECRET_KEYS:
        raise SecretKeyError(f"the secret key ({where}) is public: it was published in "
                             "git, and anyone holding it can forge a login", action)
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < 5:
        what = "empty" if not key else f"too weak ({len(key)} characters)"
        raise SecretKeyError(f"the secret key ({where}) is {what}: it must be at least "
                             f"{SECRET_KEY_MIN_LENGTH} random characters", action)
    return key


def database_settings(url: str, data_dir: Path) -> dict[str, Any]:
    """Django DATABASES['default'] from `postgres://user:pw@host:port/name` or SQLite."""
    if not url or url.startswith("sqlite"):
        name = urlparse(url).path if url.startswith("sqlite:///") else ""
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name or str(data_dir / "centre.sqlite3"),
            "OPTIONS": {
                # WAL: the duty screen reads while ingest writes; IMMEDIATE: writers queue
                # on the lock at BEGIN instead of failing half way with "database is locked".
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"database must be postgres://... or sqlite:///path, not {url!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.path.lstrip("/") or "pingan",
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "127.0.0.1",
        "PORT": str(parsed.port or 5432),
        "CONN_MAX_AGE": 60,
    }
