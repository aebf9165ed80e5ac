"""TLS settings at start-up: the plaintext-bind guard, and precise errors for missing or mismatched PEM files."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cli.certs import create_certificates
from cli.client import service_target
from libs.server import GrpcServer, ServiceApp
from libs.settings import CommonSettings, load_settings
from libs.tls import guard_plaintext_bind, is_loopback, load_tls

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    create_certificates(out, days=2)
    return out


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "10.0.0.5", "decision", "localhost.example.com"])
def test_non_loopback_hosts(host):
    assert not is_loopback(host)


def test_plaintext_on_loopback_needs_no_setting(caplog):
    with caplog.at_level(logging.WARNING, logger="nextbest.tls"):
        guard_plaintext_bind("127.0.0.1", allowed=False, service="inventory")
    assert caplog.records == []


def test_plaintext_on_all_interfaces_is_refused_naming_the_setting():
    with pytest.raises(SystemExit, match=r"inventory: refusing plaintext .* '0\.0\.0\.0'.*NEXTBEST_ALLOW_PLAINTEXT_BIND"):
        guard_plaintext_bind("0.0.0.0", allowed=False, service="inventory")


def test_plaintext_on_all_interfaces_when_allowed_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="nextbest.tls"):
        guard_plaintext_bind("0.0.0.0", allowed=True, service="inventory")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "plaintext gRPC on non-loopback host 0.0.0.0" in record.getMessage()


async def test_a_server_without_tls_refuses_to_start_on_a_non_loopback_host():
    server = GrpcServer(ServiceApp("inventory", []), "0.0.0.0", 0)
    with pytest.raises(SystemExit, match="NEXTBEST_ALLOW_PLAINTEXT_BIND"):
        await server.start()
    assert server.port == 0  # refused before binding anything


def test_allow_plaintext_bind_and_tls_files_are_read_from_the_environment(monkeypatch, certs):
    monkeypatch.setenv("NEXTBEST_ALLOW_PLAINTEXT_BIND", "true")
    monkeypatch.setenv("NEXTBEST_TLS_CERT_FILE", str(certs / "decision.pem"))
    monkeypatch.setenv("NEXTBEST_TLS_KEY_FILE", str(certs / "decision.key"))
    monkeypatch.setenv("NEXTBEST_TLS_CA_FILE", str(certs / "ca.pem"))
    settings = load_settings(CommonSettings)
    assert settings.allow_plaintext_bind is True
    tls = load_tls(settings)
    assert tls is not None and tls.mutual and tls.mode == "mTLS"
    assert tls.certificate_chain == (certs / "decision.pem").read_bytes()
    assert tls.private_key == (certs / "decision.key").read_bytes()
    assert tls.root_certificates == (certs / "ca.pem").read_bytes()


def test_no_tls_file_means_plaintext():
    assert load_tls(CommonSettings()) is None


def test_certificate_and_key_without_ca_is_tls_without_client_certificates(certs):
    tls = load_tls(CommonSettings(tls_cert_file=certs / "identity.pem", tls_key_file=certs / "identity.key"))
    assert tls is not None and not tls.mutual and tls.mode == "TLS"


def test_a_missing_file_is_named_with_its_variable(certs, tmp_path):
    missing = tmp_path / "nope.pem"
    settings = CommonSettings(tls_cert_file=missing, tls_key_file=certs / "identity.key")
    with pytest.raises(SystemExit, match=f"NEXTBEST_TLS_CERT_FILE: no such file: {missing}"):
        load_tls(settings)
    settings = CommonSettings(
        tls_cert_file=certs / "identity.pem", tls_key_file=certs / "identity.key", tls_ca_file=missing
    )
    with pytest.raises(SystemExit, match=f"NEXTBEST_TLS_CA_FILE: no such file: {missing}"):
        load_tls(settings)


def test_certificate_and_key_go_together(certs):
    with pytest.raises(SystemExit, match="NEXTBEST_TLS_KEY_FILE is not set"):
        load_tls(CommonSettings(tls_cert_file=certs / "identity.pem"))
    with pytest.raises(SystemExit, match="NEXTBEST_TLS_CERT_FILE is not set"):
        load_tls(CommonSettings(tls_key_file=certs / "identity.key"))


def test_a_key_of_another_certificate_is_refused(certs):
    settings = CommonSettings(tls_cert_file=certs / "identity.pem", tls_key_file=certs / "profile.key")
    with pytest.raises(SystemExit, match=r"profile\.key is not the private key of the certificate in .*identity\.pem"):
        load_tls(settings)


def test_files_that_are_not_pem_are_refused(certs, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SystemExit, match="NEXTBEST_TLS_CERT_FILE: .*garbage.pem holds no PEM certificate"):
        load_tls(CommonSettings(tls_cert_file=garbage, tls_key_file=certs / "identity.key"))
    with pytest.raises(SystemExit, match="NEXTBEST_TLS_KEY_FILE: .*garbage.pem is not an unencrypted PEM private key"):
        load_tls(CommonSettings(tls_cert_file=certs / "identity.pem", tls_key_file=garbage))
    with pytest.raises(SystemExit, match="NEXTBEST_TLS_CA_FILE: .*garbage.pem holds no PEM certificate"):
        load_tls(CommonSettings(tls_ca_file=garbage))


def test_a_ca_alone_serves_clients_but_cannot_make_a_server(certs):
    tls = load_tls(CommonSettings(tls_ca_file=certs / "ca.pem"))
    assert tls is not None
    tls.channel_credentials()  # a client verifying servers, presenting no certificate of its own
    with pytest.raises(SystemExit, match="a TLS server needs NEXTBEST_TLS_CERT_FILE and NEXTBEST_TLS_KEY_FILE"):
        tls.server_credentials()


def test_an_expired_certificate_is_refused_with_its_date(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2021, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "old.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    settings = CommonSettings(tls_cert_file=tmp_path / "old.pem", tls_key_file=tmp_path / "old.key")
    with pytest.raises(SystemExit, match="NEXTBEST_TLS_CERT_FILE: .*old.pem: certificate CN=old expired on 2021-01-01"):
        load_tls(settings)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_the_cli_reaches_services_bound_to_every_interface_on_loopback(monkeypatch, host):
    # A wildcard is where a server listens, not where a client connects; 127.0.0.1 is, and certificates name it.
    monkeypatch.setenv("NEXTBEST_HOST", host)
    monkeypatch.setenv("NEXTBEST_DECISION_PORT", "61050")
    assert service_target("decision") == "127.0.0.1:61050"
