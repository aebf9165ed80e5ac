"""`nextbest certs create`: a development CA and one certificate per service (plus the CLI's), offline.

Every leaf certificate names localhost, 127.0.0.1, ::1 and its service's DNS name (identity, profile, … as in
docker-compose and Kubernetes), and is valid for both server and client authentication: a service is a server
to its callers and a client of its peers under mutual TLS. Keys are EC P-256, written 0600. Not for production:
there, certificates come from the organisation's CA (cert-manager, Vault, …) through the same three settings.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("identity", "profile", "scoring", "inventory", "decision")
#: The identity the CLI (and operators' tools) present under mutual TLS.
CLIENT_NAME = "cli"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Start of validity a little in the past, so a peer whose clock is slightly behind still accepts the certificate.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def create_certificates(
    out: Path, days: int = 365, hosts: Sequence[str] = (), force: bool = False, ca_name: str = "NextBest development CA"
) -> list[Path]:
    """Write ca.pem/ca.key and <name>.pem/<name>.key for every service and the CLI into `out`; the files written.

    Refuses (FileExistsError) to replace an existing CA unless `force`: certificates already handed out would stop
    being trusted.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if (out / "ca.pem").exists() and not force:
        raise FileExistsError(f"{out / 'ca.pem'} exists; --force replaces the CA and every certificate")
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca = _create_ca(ca_name, now, days)
    written = _write_pair(out, "ca", ca.certificate, ca.key)
    for name in (*SERVICES, CLIENT_NAME):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _leaf(ca, name, key, [name, *LOOPBACK_NAMES, *hosts], now, days)
        written += _write_pair(out, name, certificate, key)
    return written


def _create_ca(common_name: str, now: datetime, days: int) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(name, key, certificate)


def _leaf(
    ca: _Issuer, common_name: str, key: ec.EllipticCurvePrivateKey, hosts: Sequence[str], now: datetime, days: int
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(_general_names(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses as IP SANs (gRPC checks 127.0.0.1 against those), anything else as a DNS name; no duplicates."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts if h.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_pair(out: Path, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> list[Path]:
    cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_pem)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)  # public by nature: peers, tools and other users' processes read it
    return [cert_path, key_path]


def _write_private(path: Path, data: bytes) -> None:
    """Owner-only from the first byte: the file is created 0600, never world-readable for a moment."""
    path.unlink(missing_ok=True)  # an existing file would keep its old, maybe wider, mode
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def cmd_create(args: argparse.Namespace) -> int:
    hosts = [h for h in (args.hosts or "").split(",") if h.strip()]
    try:
        written = create_certificates(args.out, days=args.days, hosts=hosts, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"nextbest certs: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files to {args.out} (keys 0600). Mutual TLS for a service, e.g. decision:")
    print(f"  NEXTBEST_TLS_CERT_FILE={args.out / 'decision.pem'} NEXTBEST_TLS_KEY_FILE={args.out / 'decision.key'}")
    print(f"  NEXTBEST_TLS_CA_FILE={args.out / 'ca.pem'}   (the CLI: {CLIENT_NAME}.pem / {CLIENT_NAME}.key)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    certs = subparsers.add_parser("certs", help="development TLS certificates")
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "create", help="a development CA and one certificate per service and for the CLI (EC P-256, offline)"
    )
    p.add_argument("--out", type=Path, default=Path("var/certs"), help="output folder (default: var/certs)")
    p.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    p.add_argument("--hosts", help="extra DNS names or IP addresses for every certificate, comma-separated")
    p.add_argument("--force", action="store_true", help="replace an existing CA and all its certificates")
    p.set_defaults(func=cmd_create)
