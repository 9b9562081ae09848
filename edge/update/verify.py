"""Checks before a byte of a bundle is trusted: the signed descriptor (what the offer
claims), the file against it (size, sha256), and RAUC's own signature check of the bundle.

Each refusal is an `UpdateRefused` with a code the township can count and a message in
Chinese and English saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.contract.events import Text, text
from edge.contract.release import COMPATIBLE, Release, VersionError, canonical, version_key


class UpdateRefused(Exception):
    """An update is refused; `code` names why (update.refused / rolled_back events)."""

    def __init__(self, code: str, message: Text) -> None:
        super().__init__(f"{code}: {message.en}")
        self.code = code
        self.message = message


def _tool(args: list[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as exc:
        raise UpdateRefused("tool_missing", text(
            f"本机缺少 {args[0]}，无法校验更新，请重新刷写系统",
            f"{args[0]} is missing on this unit: updates cannot be checked; re-flash")) from exc


def check_descriptor(release: Release, signature: bytes, keyring: Path) -> None:
    """The offer's descriptor was signed by a key of the unit's keyring (put there at flash
    time, or by a release signed with the previous key)."""
    if release.compatible != COMPATIBLE:
        raise UpdateRefused("incompatible", text(
            f"更新包适用于 {release.compatible}，不是本机型号",
            f"the release is for {release.compatible!r}, not this unit ({COMPATIBLE})"))
    with tempfile.TemporaryDirectory(prefix="pingan-verify-") as tmp:
        content, sig = Path(tmp) / "release", Path(tmp) / "sig"
        content.write_bytes(canonical(release))
        sig.write_bytes(signature)
        done = _tool(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig),
                      "-content", str(content), "-CAfile", str(keyring), "-purpose", "any",
                      "-out", "/dev/null"])
    if done.returncode == 0:
        return
    err = done.stderr
    if "unable to get local issuer certificate" in err or "self-signed certificate" in err \
            or "self signed certificate" in err:
        raise UpdateRefused("wrong_key", text(
            "更新签名的密钥不在本机信任的密钥环中，已拒绝",
            "the release is signed by a key this unit does not trust (not in its keyring): "
            "refused; sign it with the township's current release key"))
    raise UpdateRefused("bad_signature", text(
        "更新说明的签名无效（被篡改或损坏），已拒绝",
        f"the release's signature does not match what it signs (tampered or damaged): "
        f"refused ({err.strip().splitlines()[-1] if err.strip() else done.returncode})"))


def check_version(release: Release, running: str) -> None:
    """Only forward, unless the signing PC allowed a rollback. A replayed older offer is a
    downgrade like any other."""
    try:
        new, old = version_key(release.version), version_key(running)
    except VersionError as exc:
        raise UpdateRefused("bad_version", text(f"版本号无效：{exc}", str(exc))) from exc
    if new == old:
        raise UpdateRefused("already_running", text(
            f"本机已在运行版本 {running}，无需更新",
            f"this unit already runs {running}: nothing to do"))
    if new < old and not release.rollback:
        raise UpdateRefused("downgrade", text(
            f"版本 {release.version} 比本机的 {running} 旧（可能是重放的旧更新），已拒绝",
            f"{release.version} is older than the running {running} (a replayed older "
            f"offer?): refused; a rollback must be signed as one (--allow-rollback)"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, release: Release) -> None:
    """The downloaded (or carried) file is the one the descriptor names."""
    size = path.stat().st_size
    if size < release.size:
        raise UpdateRefused("truncated", text(
            f"更新包不完整（{size}/{release.size} 字节），已拒绝",
            f"the bundle is truncated ({size} of {release.size} bytes): refused"))
    if size > release.size:
        raise UpdateRefused("too_large", text(
            f"更新包比说明的大（{size} > {release.size} 字节），已拒绝",
            f"the bundle is larger than signed ({size} > {release.size} bytes): refused"))
    if sha256_of(path) != release.sha256:
        raise UpdateRefused("hash_mismatch", text(
            "更新包内容与签名说明不符（被篡改或损坏），已拒绝",
            "the bundle's sha256 is not the signed one (tampered or damaged): refused"))


@dataclass(frozen=True)
class BundleInfo:
    version: str
    compatible: str
    raw: dict[str, Any]


# `rauc info` runs as the station (no root, a read-only /data): given the unit's own
# system.conf it would try to create RAUC's data directory (/data/rauc) and fail, found by
# `firmware/boot-test --update`. It reads nothing else from it (the keyring is given), so
# it gets this one, which names no data directory.
INFO_CONF = f"[system]\ncompatible={COMPATIBLE}\nbootloader=noop\n"


def check_bundle(path: Path, keyring: Path) -> BundleInfo:
    """RAUC's own check of the bundle's signature against the keyring (`rauc info`)."""
    with tempfile.TemporaryDirectory(prefix="pingan-rauc-") as tmp:
        conf = Path(tmp) / "system.conf"
        conf.write_text(INFO_CONF, encoding="ascii")
        done = _tool(["rauc", f"--conf={conf}", "info", "--keyring", str(keyring),
                      "--output-format=json", str(path)])
    if done.returncode != 0:
        err = done.stderr.strip()
        if "self-signed" in err or "unable to get local issuer" in err:
            raise UpdateRefused("wrong_key", text(
                "更新包的签名密钥不在本机密钥环中，已拒绝",
                f"the bundle is signed by a key this unit does not trust: refused ({err})"))
        if "exceeds bundle size" in err or "too small" in err or "truncated" in err:
            raise UpdateRefused("truncated", text(
                "更新包不完整，已拒绝", f"the bundle is truncated: refused ({err})"))
        raise UpdateRefused("bad_signature", text(
            "更新包签名校验失败，已拒绝", f"rauc refuses the bundle's signature: {err}"))
    info: dict[str, Any] = json.loads(done.stdout)
    if info.get("compatible") != COMPATIBLE:
        raise UpdateRefused("incompatible", text(
            f"更新包适用于 {info.get('compatible')}，不是本机型号",
            f"the bundle is for {info.get('compatible')!r}, not {COMPATIBLE}"))
    return BundleInfo(version=str(info.get("version")), compatible=COMPATIBLE, raw=info)
