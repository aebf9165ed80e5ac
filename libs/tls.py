"""Transport security of every gRPC endpoint: the TLS material, read once at start-up, and the plaintext guard.

Certificate + key set: servers listen with TLS. The CA set too: mutual TLS — servers require client certificates
signed by the CA, channels verify servers with it and present the certificate as their client certificate. The
PEM files are checked here (readable, parseable, key matching certificate, not expired) so that a mistake stops
start-up with a message naming the variable, not a handshake failure later. Without TLS, plaintext is the
embedded default on loopback only; elsewhere it needs NEXTBEST_ALLOW_PLAINTEXT_BIND.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from libs.settings import CommonSettings

log = logging.getLogger("nextbest.tls")

CERT_VARIABLE = "NEXTBEST_TLS_CERT_FILE"
KEY_VARIABLE = "NEXTBEST_TLS_KEY_FILE"
CA_VARIABLE = "NEXTBEST_TLS_CA_FILE"


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes: this process's certificate chain and key (both or neither) and the CA it trusts (optional)."""

    certificate_chain: bytes | None
    private_key: bytes | None
    root_certificates: bytes | None

    @property
    def mutual(self) -> bool:
        return self.root_certificates is not None

    @property
    def mode(self) -> str:
        return "mTLS" if self.mutual else "TLS"

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.certificate_chain is None or self.private_key is None:
            raise SystemExit(f"a TLS server needs {CERT_VARIABLE} and {KEY_VARIABLE}; only {CA_VARIABLE} is set")
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.mutual,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        # No CA: servers are verified against gRPC's default roots (a public CA, or GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def load_tls(settings: CommonSettings) -> TlsMaterial | None:
    """The checked TLS material the settings name; None when no TLS file is set (plaintext)."""
    cert_file, key_file, ca_file = settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file
    if cert_file is None and key_file is None and ca_file is None:
        return None
    if (cert_file is None) != (key_file is None):
        missing = CERT_VARIABLE if cert_file is None else KEY_VARIABLE
        raise SystemExit(f"{missing} is not set: {CERT_VARIABLE} and {KEY_VARIABLE} go together")
    chain = key = ca = None
    if cert_file is not None and key_file is not None:
        chain = _read(CERT_VARIABLE, cert_file)
        key = _read(KEY_VARIABLE, key_file)
        _check_pair(cert_file, chain, key_file, key)
    if ca_file is not None:
        ca = _read(CA_VARIABLE, ca_file)
        _certificates(CA_VARIABLE, ca_file, ca)
    return TlsMaterial(certificate_chain=chain, private_key=key, root_certificates=ca)


def _read(variable: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SystemExit(f"{variable}: no such file: {path}") from None
    except OSError as exc:
        raise SystemExit(f"{variable}: cannot read {path}: {exc.strerror}") from None


def _certificates(variable: str, path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise SystemExit(f"{variable}: {path} holds no PEM certificate") from None
    now = datetime.now(UTC)
    for certificate in certificates:
        if certificate.not_valid_after_utc < now:
            subject = certificate.subject.rfc4514_string()
            raise SystemExit(f"{variable}: {path}: certificate {subject} expired on {certificate.not_valid_after_utc}")
    return certificates


def _check_pair(cert_file: Path, chain: bytes, key_file: Path, key: bytes) -> None:
    """The key must belong to the chain's first (leaf) certificate, or every handshake would fail."""
    leaf = _certificates(CERT_VARIABLE, cert_file, chain)[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        raise SystemExit(f"{KEY_VARIABLE}: {key_file} is not an unencrypted PEM private key ({exc})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise SystemExit(f"{KEY_VARIABLE}: {key_file} is not the private key of the certificate in {cert_file}")


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (bracketed or not); a wildcard or any other name is not."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def guard_plaintext_bind(host: str, allowed: bool, service: str) -> None:
    """Refuse plaintext on a non-loopback host unless explicitly allowed; allowed, it is logged as a warning."""
    if is_loopback(host):
        return
    if not allowed:
        raise SystemExit(
            f"{service}: refusing plaintext gRPC on non-loopback host {host!r}: set {CERT_VARIABLE} and "
            f"{KEY_VARIABLE} for TLS, or NEXTBEST_ALLOW_PLAINTEXT_BIND=true to accept plaintext"
        )
    log.warning(
        "%s: plaintext gRPC on non-loopback host %s (NEXTBEST_ALLOW_PLAINTEXT_BIND): traffic is neither "
        "encrypted nor authenticated",
        service,
        host,
    )
