"""Why a TLS link to the township broker failed, in words a technician can act on.

OpenSSL's messages ("EOF occurred in violation of protocol", "unable to get local issuer
certificate") do not say what to do. The broker refuses a station's certificate by just
closing the handshake, so the station cannot hear *why*; it can check its own files
against its clock and say what is likely. A Pi has no real-time clock: a certificate
that looks expired or not yet valid while the clock is unsynced is a clock problem.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from edge.config import BrokerSection

# OpenSSL X509_V_ERR_* codes seen on the station's side of the handshake.
_NOT_YET_VALID, _EXPIRED = 9, 10
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}
_HOSTNAME_MISMATCH = 62


@dataclass(frozen=True, slots=True)
class TlsProblem:
    zh: str
    en: str
    action: str


def _day(when: dt.datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M}Z"


def _clock(now: dt.datetime) -> tuple[str, str]:
    return (f"本机时钟未同步（当前 {_day(now)}）",
            f"the station clock is not synced (it reads {_day(now)})")


def _read(path: str, zh: str, en: str) -> x509.Certificate | TlsProblem:
    """The certificate at `path`, or the problem a technician must fix to read it."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return TlsProblem(f"无法读取{zh} {path}：{exc}", f"cannot read the {en} {path}: {exc}",
                          "reinstall the station bundle")


def check_files(broker: BrokerSection, *, synced: bool, now: dt.datetime
                ) -> TlsProblem | None:
    """What is wrong with the station's own certificate, or None if it looks usable."""
    if not broker.cert_file:
        return None
    cert = _read(broker.cert_file, "本站证书", "station certificate")
    if isinstance(cert, TlsProblem):
        return cert
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= now <= end:
        which_zh, which_en = (("尚未生效", "not valid yet") if now < start
                              else ("已过期", "expired"))
        if not synced:
            zh, en = _clock(now)
            return TlsProblem(
                f"{zh}，本站证书显得{which_zh}（有效期 {_day(start)} 至 {_day(end)}）",
                f"{en}, so the station certificate looks {which_en} "
                f"(valid {_day(start)} to {_day(end)})",
                "fix time sync (NTP / the modem's network time), then the link recovers")
        return TlsProblem(
            f"本站证书{which_zh}（有效期 {_day(start)} 至 {_day(end)}）",
            f"the station certificate is {which_en} (valid {_day(start)} to {_day(end)})",
            "ask the township for a new bundle (pingan-centre broker add-station --replace)")
    if broker.ca_file:
        ca = _read(broker.ca_file, " CA 证书", "CA certificate")
        if isinstance(ca, TlsProblem):
            return ca
        if cert.issuer != ca.subject:
            return TlsProblem(
                "本站证书与 CA 证书不属于同一乡镇（证书包文件混用）",
                f"the station certificate was issued by {cert.issuer.rfc4514_string()}, "
                f"not by the CA in ca_file ({ca.subject.rfc4514_string()})",
                "install the CA, certificate and key from one bundle")
    return None


def expiring(broker: BrokerSection, *, now: dt.datetime,
             within: dt.timedelta = dt.timedelta(days=30)) -> TlsProblem | None:
    """A warning for the state topic while the link still works: renew in time."""
    if not broker.cert_file:
        return None
    cert = _read(broker.cert_file, "", "")
    if isinstance(cert, TlsProblem):
        return None  # a broken file shows up as uplink_tls at the next connect
    end = cert.not_valid_after_utc
    if end - now > within:
        return None
    return TlsProblem(f"本站证书将于 {_day(end)} 过期，届时无法连接乡镇平台",
                      f"the station certificate expires {_day(end)}; the unit cannot "
                      f"connect after that",
                      "issue a new bundle (pingan-centre broker add-station --replace) and "
                      "install it before then")


def mismatch(broker: BrokerSection, township: str, station: str) -> TlsProblem | None:
    """The broker knows a unit by its certificate's CN, `<township>/<station>` (its topic
    path); a different station.id or township means every publish is refused by the ACL."""
    if not broker.cert_file:
        return None
    cert = _read(broker.cert_file, "", "")
    if isinstance(cert, TlsProblem):
        return None  # as in expiring()
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names == [f"{township}/{station}"]:
        return None
    return TlsProblem(f"本站编号 {township}/{station} 与证书 {names} 不符，平台将拒收所有消息",
                      f"station.township/id is {township}/{station} but the certificate is "
                      f"for {names}: the broker will refuse every message",
                      "install this station's own bundle, or fix station.id and township")


def diagnose(broker: BrokerSection, error: BaseException | None, *, synced: bool,
             now: dt.datetime) -> TlsProblem:
    """Explain a failed TLS link. `error` is what the handshake raised, or None when the
    broker closed the connection before accepting us (it refused our certificate)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code in (_NOT_YET_VALID, _EXPIRED):
            which_zh, which_en = (("尚未生效", "not valid yet") if code == _NOT_YET_VALID
                                  else ("已过期", "expired"))
            if not synced:
                zh, en = _clock(now)
                return TlsProblem(f"{zh}，乡镇平台证书显得{which_zh}",
                                  f"{en}, so the broker's certificate looks {which_en}",
                                  "fix time sync (NTP / the modem's network time)")
            return TlsProblem(f"乡镇平台证书{which_zh}",
                              f"the township broker's certificate is {which_en}",
                              "the township must renew it (pingan-centre broker server-cert)")
        if code in _UNKNOWN_ISSUER:
            return TlsProblem(
                "乡镇平台证书不是由本站 CA 签发（CA 错误或连错平台）",
                f"the broker's certificate is not signed by the CA in {broker.ca_file} "
                f"(wrong CA, or the wrong broker at {broker.host}): {error.verify_message}",
                "check broker.host and install the CA from this township's bundle")
        if code == _HOSTNAME_MISMATCH:
            return TlsProblem(
                f"乡镇平台证书不包含地址 {broker.host}",
                f"the broker's certificate does not name {broker.host}",
                "use the host name the township gave, or have it reissue the server cert")
        return TlsProblem(f"乡镇平台证书校验失败：{error.verify_message}",
                          f"broker certificate rejected: {error.verify_message}",
                          "check the CA file and the broker address")
    own = check_files(broker, synced=synced, now=now)
    if own is not None:
        return own
    if error is None:
        return TlsProblem(
            "乡镇平台拒绝了本站证书（可能已吊销，或属于其他乡镇）",
            "the township broker refused this station's certificate "
            "(revoked, or from another township's CA)",
            "ask the township whether this station was revoked; install a new bundle")
    return TlsProblem(f"TLS 连接失败：{error}", f"TLS handshake failed: {error}",
                      "check the link and the broker's TLS port")
