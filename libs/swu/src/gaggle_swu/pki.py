"""Keys and certificates for signed test images, valid relative to a given time.

Tests must not depend on the calendar: every certificate here is valid from ``now +
not_before`` to ``now + not_after`` (negative for the past), so an expired signer is simply one
whose ``not_after`` is below zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Usage = Literal["sign", "ca", "encipher"]
_EKU = {
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
}


@dataclass(frozen=True)
class Identity:
    """A private key and its certificate."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        """The private key, PKCS#8 PEM, unencrypted."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def cert_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def public_key_pem(self) -> bytes:
        """The public key, SubjectPublicKeyInfo PEM (``openssl rsa -pubout``)."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write(self, directory: str | Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.key.pem`` and ``<stem>.cert.pem`` into ``directory``; their paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        key, cert = out / f"{stem}.key.pem", out / f"{stem}.cert.pem"
        key.write_bytes(self.key_pem)
        cert.write_bytes(self.cert_pem)
        return key, cert


def make_identity(
    common_name: str,
    now: datetime,
    *,
    issuer: Identity | None = None,
    usage: Usage | None = "sign",
    eku: Sequence[str] | None = ("emailProtection",),
    ca: bool | None = None,
    not_before: timedelta = timedelta(days=-1),
    not_after: timedelta = timedelta(days=30),
    key_type: Literal["rsa", "ec"] = "rsa",
) -> Identity:
    """A key and a certificate for it, self-signed unless ``issuer`` is given.

    Args:
        common_name: The subject's CN.
        now: The time validity is relative to.
        issuer: Who signs the certificate; None for a self-signed one.
        usage: Key usage: ``sign`` (digitalSignature), ``ca`` (keyCertSign, cRLSign),
            ``encipher`` (keyEncipherment only), or None for no key-usage extension.
        eku: Extended key usages by name (``emailProtection``, ``codeSigning``,
            ``serverAuth``), or None for no such extension.
        ca: ``basicConstraints`` CA flag; None for no such extension.
        not_before: Start of validity, relative to ``now``.
        not_after: End of validity, relative to ``now``.
        key_type: RSA 2048 or EC P-256.
    """
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if usage is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=usage == "sign",
                content_commitment=False,
                key_encipherment=usage == "encipher",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=usage == "ca",
                crl_sign=usage == "ca",
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([_EKU[e] for e in eku]), False)
    signer = issuer.key if issuer else key
    return Identity(key, builder.sign(signer, hashes.SHA256()))
