"""`pingan-centre broker …` as a township officer uses it, `pingan-edge install-bundle` as a
technician does."""

from __future__ import annotations

import stat
import tarfile
from pathlib import Path

from cryptography import x509

from edge import config as config_mod
from edge.cli import main as edge_main
from pingan_centre.cli import main


def crl_serials(town: Path) -> list[int]:
    return [r.serial_number for r in x509.load_pem_x509_crl((town / "crl.pem").read_bytes())]


def test_broker_workflow(tmp_path: Path, capsys):
    town = tmp_path / "town"
    d = ["--dir", str(town)]
    assert main(["broker", "init", "t01", *d, "--host", "broker.t01.example",
                 "--host", "10.8.0.1"]) == 0
    assert stat.S_IMODE((town / "ca.key").stat().st_mode) == 0o600
    server = x509.load_pem_x509_certificate((town / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["broker.t01.example", "10.8.0.1"]
    assert main(["broker", "init", "t01", *d, "--host", "x"]) == 1  # one CA per township
    # A trailing newline would yield a CA whose OU, and every station.toml, is broken.
    assert main(["broker", "init", "t02\n", "--dir", str(tmp_path / "t2"), "--host", "x"]) == 1
    assert not (tmp_path / "t2" / "ca.key").exists()

    assert main(["broker", "add-station", "v001", *d, "--broker-host", "10.8.0.1"]) == 0
    bundle = town / "bundles" / "v001.tar.gz"
    with tarfile.open(bundle) as tar:
        assert sorted(tar.getnames()) == ["v001/ca.crt", "v001/station.crt", "v001/station.key",
                                          "v001/station.toml"]
        assert stat.S_IMODE(tar.getmember("v001/station.key").mode) == 0o600
    cert = x509.load_pem_x509_certificate((town / "issued" / "v001.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=t01/v001,OU=t01"

    capsys.readouterr()
    assert main(["broker", "add-station", "v001", *d, "--broker-host", "10.8.0.1"]) == 1
    assert "--replace" in capsys.readouterr().err
    assert crl_serials(town) == []
    assert main(["broker", "add-station", "v001", *d, "--broker-host", "10.8.0.1",
                 "--replace"]) == 0
    assert crl_serials(town) == [cert.serial_number]  # the swapped unit's cert is revoked

    unit = tmp_path / "unit"
    assert edge_main(["install-bundle", str(bundle), "--dest", str(unit)]) == 0
    cfg = config_mod.load(unit / "station.toml")
    assert (cfg.station.id, cfg.station.township) == ("v001", "t01")
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.tls) == ("10.8.0.1", 8883, True)
    assert cfg.broker.key_file == str(unit / "station.key")
    assert stat.S_IMODE((unit / "station.key").stat().st_mode) == 0o600

    assert main(["broker", "revoke", "v001", *d]) == 0
    assert len(crl_serials(town)) == 2
    assert main(["broker", "revoke", "v001", *d]) == 1  # nothing left to revoke
    for bad in ("all", "V001", "a/b", "x+", "v001\n", "\nv001"):
        assert main(["broker", "add-station", bad, *d, "--broker-host", "h"]) == 1

    capsys.readouterr()
    assert main(["broker", "add-account", "centre.ops", *d]) == 0
    password = capsys.readouterr().out.split("password ")[1].split()[0]
    assert len(password) >= 20
    assert (town / "passwd").read_text().startswith("centre.ops:$7$")
    assert main(["broker", "add-account", "v001", *d]) == 1  # would shadow a station
    (town / "acl").unlink()
    assert main(["broker", "acl", *d]) == 0
    acl = (town / "acl").read_text()
    assert "pattern read pingan/v1/t01/all/cmd\n" in acl and "user centre.ops\n" in acl


def test_the_unit_tool_no_longer_issues_identities(tmp_path: Path, capsys):
    """Township tooling left the unit's package: `pingan-edge broker` says where it went."""
    assert edge_main(["broker", "add-station", "v001", "--broker-host", "h"]) == 2
    err = capsys.readouterr().err
    assert "pingan-centre broker add-station" in err and len(err.strip().splitlines()) == 1
    assert edge_main(["broker", "install", "x.tar.gz"]) == 2
    assert "pingan-edge install-bundle" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_install_bundle_refuses_what_is_not_a_bundle(tmp_path: Path, capsys):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    assert edge_main(["install-bundle", str(junk), "--dest", str(tmp_path / "unit")]) == 1
    assert "not a station bundle" in capsys.readouterr().err
    assert not (tmp_path / "unit").exists()
