"""`nextbest certs create`: a development CA and per-service certificates with the right names, usages and modes."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cli.certs import CLIENT_NAME, SERVICES, create_certificates
from cli.main import main

pytestmark = pytest.mark.unit


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_service_and_the_cli_get_a_certificate_signed_by_the_ca(tmp_path):
    written = create_certificates(tmp_path, days=30, hosts=["nextbest.internal", "10.1.2.3"])
    names = ("ca", *SERVICES, CLIENT_NAME)
    assert sorted(p.name for p in written) == sorted(f"{n}.{ext}" for n in names for ext in ("pem", "key"))
    ca = load(tmp_path / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in (*SERVICES, CLIENT_NAME):
        certificate = load(tmp_path / f"{name}.pem")
        certificate.verify_directly_issued_by(ca)
        assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {name, "localhost", "nextbest.internal"}
        assert set(sans.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")
        }
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert 30 <= lifetime.days <= 31


def test_private_keys_are_owner_only_and_certificates_readable(tmp_path):
    create_certificates(tmp_path)
    for path in tmp_path.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.suffix == ".key":
            assert mode == 0o600, path
        else:
            assert mode & 0o444 == 0o444, path  # certificates are public: peers and tools read them


def test_an_existing_ca_is_kept_unless_forced(tmp_path):
    create_certificates(tmp_path)
    before = (tmp_path / "ca.pem").read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        create_certificates(tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == before
    create_certificates(tmp_path, force=True)
    after = load(tmp_path / "ca.pem")
    assert (tmp_path / "ca.pem").read_bytes() != before
    load(tmp_path / "decision.pem").verify_directly_issued_by(after)


def test_the_command_writes_into_out_and_refuses_a_second_run(tmp_path, capsys):
    out = tmp_path / "certs"
    assert main(["certs", "create", "--out", str(out), "--days", "7", "--hosts", "mesh.local"]) == 0
    assert "NEXTBEST_TLS_CA_FILE" in capsys.readouterr().out
    sans = load(out / "profile.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mesh.local" in sans.get_values_for_type(x509.DNSName)
    assert main(["certs", "create", "--out", str(out)]) == 1
    assert "exists; --force replaces" in capsys.readouterr().err
