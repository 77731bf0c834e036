"""What several unit test modules share: the smallest valid specs of Backup and Restore, a sink
that collects what is written to it, and a self-signed certificate. Test modules import from here,
never from one another (tests/unit/test_test_imports.py checks)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def backup_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "database": {"secretRef": {"name": "habitat-db"}},
        "storage": {"filesystem": {"path": "habitat/nightly"}},
        **overrides,
    }


def restore_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "source": {"backupRef": {"name": "habitat-nightly"}},
        "target": {"database": {"secretRef": {"name": "habitat-db"}}},
        **overrides,
    }


class Collected:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def sync(self) -> None:
        pass


def self_signed_certificate(days: int, common_name: str = "habitat.example") -> tuple[bytes, bytes]:
    """A PEM certificate expiring in `days` (negative: expired), and its private key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem
