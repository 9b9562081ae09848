"""Township broker identities: the township CA, station certificates, revocation, accounts.

A township directory (default /etc/mosquitto/pingan, the paths broker_config/mosquitto.conf
reads) holds:

    ca.key ca.crt         the township CA (keep ca.key off the broker if you can)
    server.key server.crt the broker's TLS certificate, signed by the CA
    crl.pem               revoked station certificates (mosquitto `crlfile`)
    passwd                the centre accounts' password hashes (mosquitto's `$7$` format)
    acl                   who may use which topic (mosquitto `acl_file`), for this township
    issued/<station>.crt  every station certificate issued, for revocation and audit
    bundles/<station>.tar.gz  what a technician copies onto the unit

A station's identity is its certificate: CN = `<township>/<station>` = MQTT username
(the broker sets `use_identity_as_username`) = client id (`use_username_as_clientid`),
which is also its topic path. The ACL grants by that name, so a unit can only ever speak
as itself, in its own township. Centre accounts are passwords on the loopback listener,
whose client id is the account name too; their names contain a dot and no slash, which
no station identity can, so the two never meet.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import grp
import hashlib
import io
import os
import re
import secrets
import tarfile
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pingan_centre import topics

STATION_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# Centre accounts: `centre.<name>`; the dot keeps them apart from every station id.
ACCOUNT = re.compile(r"[a-z0-9][a-z0-9_-]{0,30}\.[a-z0-9][a-z0-9_-]{0,30}")
DEFAULT_DIR = Path("/etc/mosquitto/pingan")
UNIT_DIR = "/etc/pingan-edge/tls"  # where the bundle's files go on the unit (edge.unit.bundle)
# A past notBefore, so a unit whose clock lags a little behind still accepts the broker.
_BACKDATE = dt.timedelta(days=1)
# mosquitto_passwd's default is 101. A centre login costs the broker's one thread
# ~40 ms at 100,000 (2-vCPU x86); logins are rare (a service starting), and a
# generated password (144 bits) needs no stretching: the rounds guard chosen ones.
PBKDF2_ROUNDS = 100_000

# The township broker's ACL (broker_config/acl is this for t01), made from the topic
# table (edge.contract.topics.TABLE). A station's MQTT username is its certificate CN,
# `<township>/<station>` (use_identity_as_username), so `pingan/v1/%u/...` is exactly its
# own topic tree: it cannot write under another township or station. The township's `all`
# commands need the literal township.
ACL_HEAD = """\
# Ping'an township ACL for township {township} (mosquitto acl_file), written by
# `pingan-centre broker init` and `add-account` into /etc/mosquitto/pingan/acl from the
# topic table (edge/contract/topics.py, docs/topics.md): nothing else is allowed.
# A station's username is its certificate CN = `<township>/<station>`
# (use_identity_as_username), so %u below is the station's own topic path: a unit can
# speak only as itself, and only in its own township.

# Every station: publish what the table says a station publishes (the retained state is
# also its Last Will, which the broker checks against these same rules); read only its
# own commands and its township's township-wide ones.
{station_rules}

# The centre's services (password accounts on the loopback listener; the dot in the
# name means no station certificate can ever carry it): read what the table says the
# centre reads, command the stations.
"""


class ProvisionError(ValueError):
    """A provisioning request is wrong (bad id, missing CA, already issued...)."""


@dataclass(frozen=True, slots=True)
class Township:
    dir: Path

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def server_crt(self) -> Path:
        return self.dir / "server.crt"

    @property
    def crl(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def acl(self) -> Path:
        return self.dir / "acl"

    @property
    def passwd(self) -> Path:
        return self.dir / "passwd"

    def issued(self, station: str) -> Path:
        return self.dir / "issued" / f"{station}.crt"

    def bundle(self, station: str) -> Path:
        return self.dir / "bundles" / f"{station}.tar.gz"

    def township_id(self) -> str:
        """The township id recorded in the CA's organizational unit."""
        ca = _load_cert(self.ca_crt)
        values = ca.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        return str(values[0].value) if values else ""


def identity(township: str, station: str) -> str:
    """A station's certificate CN, MQTT username and client id: its topic path. Unique
    across townships, so a county broker trusting several township CAs keeps them apart."""
    return f"{township}/{station}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic replace, so mosquitto never reads half a CRL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # A temporary file left by a crash keeps its old mode under O_TRUNC: start afresh.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # the exact mode, whatever the umask, before the data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _broker_readable(path: Path) -> None:
    """mosquitto drops to user `mosquitto` before it reads keys on reload (SIGHUP)."""
    _readable_by(path, "mosquitto")


def _readable_by(path: Path, group: str) -> None:
    """Mode 0640 and this group, when the group exists and we may change it."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    with contextlib.suppress(PermissionError):
        os.chown(path, -1, gid)
        os.chmod(path, 0o640)


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise ProvisionError(f"{path} not found: run `pingan-centre broker init` first") from exc


def _load_ca(town: Township) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = _load_cert(town.ca_crt)
    key = serialization.load_pem_private_key(town.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{town.ca_key}: expected an EC private key")
    return cert, key


def _issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject: x509.Name,
           key: ec.EllipticCurvePrivateKey, days: int, usage: x509.ObjectIdentifier,
           san: list[x509.GeneralName] | None = None, now: dt.datetime | None = None
           ) -> x509.Certificate:
    now = now or _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init(town: Township, township: str, hosts: list[str], *, days: int = 7300,
         server_days: int = 1825) -> None:
    """Create the township CA, the broker's server certificate, an empty CRL and passwd."""
    if not STATION_ID.fullmatch(township):
        raise ProvisionError(f"township id {township!r} must match {STATION_ID.pattern}")
    if town.ca_key.exists():
        raise ProvisionError(f"{town.ca_key} exists: this township already has a CA")
    if not hosts:
        raise ProvisionError("give at least one --host: the name or IP stations connect to")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Ping'an {township} CA"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, township)])
    now = _now()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(town.ca_key, _key_pem(key), 0o600)
    _write(town.ca_crt, _pem(ca))
    issue_server(town, hosts, days=server_days)
    _write_crl(town, [])
    if not town.passwd.exists():
        _write(town.passwd, b"", 0o600)
    write_acl(town)


def issue_server(town: Township, hosts: list[str], *, days: int = 1825) -> None:
    """(Re)issue the broker certificate for the names and addresses stations dial."""
    ca, ca_key = _load_ca(town)
    san: list[x509.GeneralName] = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    key = _new_key()
    cert = _issue(ca, ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
                  key, days, ExtendedKeyUsageOID.SERVER_AUTH, san)
    _write(town.server_key, _key_pem(key), 0o600)
    _broker_readable(town.server_key)
    _write(town.server_crt, _pem(cert))


def add_station(town: Township, station: str, broker_host: str, *, broker_port: int = 8883,
                days: int = 1825, replace: bool = False, unit_dir: str = UNIT_DIR,
                issued_at: dt.datetime | None = None) -> Path:
    """Issue `station`'s certificate and write its bundle; returns the bundle's path.

    `replace` (a unit swapped or its key exposed) revokes the old certificate first.
    `issued_at` back-dates the validity (to rehearse an expired certificate)."""
    if not STATION_ID.fullmatch(station) or station == "all":
        raise ProvisionError(
            f"station id {station!r} must match {STATION_ID.pattern} and not be 'all'")
    if town.issued(station).exists():
        if not replace:
            raise ProvisionError(f"{station} already has a certificate; use --replace to "
                                 "revoke it and issue a new one")
        revoke(town, station)
    ca, ca_key = _load_ca(town)
    key = _new_key()
    township = town.township_id()
    cert = _issue(ca, ca_key, x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, township),
        x509.NameAttribute(NameOID.COMMON_NAME, identity(township, station))]),
        key, days, ExtendedKeyUsageOID.CLIENT_AUTH, now=issued_at)
    _write(town.issued(station), _pem(cert))
    toml = (
        f"# Station {station}, township {township}: issued {_now():%Y-%m-%d}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d}.\n"
        f"[station]\nid = \"{station}\"\ntownship = \"{township}\"\n\n"
        f"[broker]\nhost = \"{broker_host}\"\nport = {broker_port}\ntls = true\n"
        f"ca_file = \"{unit_dir}/ca.crt\"\n"
        f"cert_file = \"{unit_dir}/station.crt\"\nkey_file = \"{unit_dir}/station.key\"\n"
    )
    files = {"ca.crt": (_pem(ca), 0o644), "station.crt": (_pem(cert), 0o644),
             "station.key": (_key_pem(key), 0o600), "station.toml": (toml.encode(), 0o644)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(f"{station}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, int(_now().timestamp())
            tar.addfile(info, io.BytesIO(data))
    _write(town.bundle(station), buf.getvalue(), 0o600)
    return town.bundle(station)


def revoke(town: Township, station: str) -> int:
    """Add `station`'s certificate to the CRL; returns its serial. Reload mosquitto after."""
    if not town.issued(station).exists():
        raise ProvisionError(f"{station} has no current certificate in {town.dir / 'issued'}")
    cert = _load_cert(town.issued(station))
    revoked = [r.serial_number for r in _load_crl(town)]
    if cert.serial_number not in revoked:
        revoked.append(cert.serial_number)
    _write_crl(town, revoked)
    town.issued(station).rename(town.issued(station).with_suffix(
        f".revoked-{cert.serial_number:x}"))
    return cert.serial_number


def _load_crl(town: Township) -> list[x509.RevokedCertificate]:
    if not town.crl.exists():
        return []
    return list(x509.load_pem_x509_crl(town.crl.read_bytes()))


def _write_crl(town: Township, serials: list[int], days: int = 3650) -> None:
    """The CRL is a local file read by the broker, not distributed: a long nextUpdate is
    safe, and an expired CRL would make OpenSSL refuse every station."""
    ca, ca_key = _load_ca(town)
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(now - _BACKDATE).next_update(now + dt.timedelta(days=days)))
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    _write(town.crl, builder.sign(ca_key, hashes.SHA256()).public_bytes(
        serialization.Encoding.PEM))


def add_account(town: Township, name: str, password: str | None = None, *,
                rounds: int = PBKDF2_ROUNDS) -> str:
    """Add or change a centre account's password; returns the password.

    The hash is written here in mosquitto's own `$7$` format (PBKDF2-HMAC-SHA512), so the
    password never appears on a command line (`/proc/<pid>/cmdline`) or in an error."""
    if not ACCOUNT.fullmatch(name):
        raise ProvisionError(f"account {name!r} must look like 'centre.ops' "
                             f"({ACCOUNT.pattern}); the dot keeps it apart from station ids")
    password = password or secrets.token_urlsafe(18)
    if "\n" in password or "\r" in password:
        raise ProvisionError("a password cannot contain a line break")
    lines = town.passwd.read_text(encoding="utf-8").splitlines() if town.passwd.exists() else []
    lines = [line for line in lines if line.split(":", 1)[0] != name]
    lines.append(f"{name}:{passwd_hash(password, rounds=rounds)}")
    _write(town.passwd, "".join(f"{line}\n" for line in lines).encode(), 0o600)
    _broker_readable(town.passwd)
    write_acl(town)
    return password


def passwd_hash(password: str, *, rounds: int = PBKDF2_ROUNDS, salt: bytes | None = None
                ) -> str:
    """`$7$<rounds>$<salt>$<hash>`: what mosquitto_passwd writes (mosquitto 2.0's
    PW_SHA512_PBKDF2: 12-byte salt, 64-byte PBKDF2-HMAC-SHA512, standard base64)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds)
    return (f"$7${rounds}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def accounts(town: Township) -> list[str]:
    """The centre accounts in the password file, in file order."""
    if not town.passwd.exists():
        return []
    return [line.split(":", 1)[0] for line in
            town.passwd.read_text(encoding="utf-8").splitlines() if ":" in line]


def acl_text(township: str, centre_accounts: list[str]) -> str:
    """The township broker's ACL, from the topic table: a station writes only under its
    own certificate name, `<township>/<station>`, and reads its own and its township's
    `all` commands; each centre account reads and commands the township."""
    head = ACL_HEAD.format(township=township,
                           station_rules="\n".join(topics.acl_station_rules(township)))
    centre = "".join(f"{line}\n" for line in topics.acl_party_rules(topics.CENTRE, township))
    blocks = [f"user {name}\n{centre}topic read $SYS/#\n" for name in centre_accounts]
    return head + "\n".join(blocks)


def write_acl(town: Township) -> None:
    """(Re)write `acl` from the township id and the accounts; reload mosquitto after."""
    _write(town.acl, acl_text(town.township_id(), accounts(town)).encode())
