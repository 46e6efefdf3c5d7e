"""Image signatures, pure: a sw-description's signature checked against a tenant's trust store.

SWUpdate signs ``sw-description`` and keeps the signature in ``sw-description.sig``, in one of:

* **CMS** (``CONFIG_SIGALG_CMS``, what Debian's swupdate uses): a detached PKCS#7/CMS
  SignedData, ``openssl cms -sign -binary -outform DER -nosmimecap -in sw-description
  -signer cert.pem -inkey key.pem``. Every signer must verify (``CMS_verify``), and its
  certificate must chain to a self-signed certificate of the trust store, every certificate of
  the chain valid now and fit for the purpose, as :func:`check_purpose` says.
* **RSA PKCS#1 v1.5** (``CONFIG_SIGALG_RAWRSA``): ``openssl dgst -sha256 -sign key.pem``.
* **RSA-PSS** (``CONFIG_SIGALG_RSAPSS``): the same with ``-sigopt rsa_padding_mode:pss``.
  Raw signatures are checked against the public keys of the store (certificates are for CMS).

``cryptography`` (50.x) signs PKCS#7 but cannot verify it, so ``asn1crypto`` reads the CMS
structure (signer infos, signed attributes, embedded certificates) and ``cryptography`` checks
every signature and certificate; nothing here parses ASN.1 by hand.

A signature that contradicts the sw-description (its message digest or its signature math fail
with the signer's own certificate) is :class:`BadSignatureError`: the image was altered after
signing and is refused whatever the policy. A signature that is sound but whose signer the store
does not trust gives an ``unverified`` :class:`Verdict` with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from asn1crypto import cms  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

Method = Literal["cms", "rsa-pkcs1v15", "rsa-pss"]
Purpose = Literal["emailProtection", "codeSigning"]
State = Literal["verified", "unverified", "unsigned"]

MAX_CHAIN = 8
"""Longest certificate chain followed from a signer to a trust anchor."""
MAX_PEM = 64 * 1024
"""Largest PEM text of one trust-store entry."""
MAX_TEXT = 1024
"""Longest subject or reason kept in a software's signature record (they come from the image)."""

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_PURPOSE_OID = {
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
}


class BadSignatureError(ValueError):
    """The signature contradicts the sw-description: it was altered after signing."""


class BadTrustEntryError(ValueError):
    """PEM text that is not exactly one certificate or public key."""


@dataclass(frozen=True)
class TrustEntry:
    """One certificate or public key of a tenant's trust store, parsed.

    Attributes:
        fingerprint: Hex SHA-256 of the certificate's DER, or of the key's SubjectPublicKeyInfo.
        certificate: The certificate, for a certificate entry.
        public_key: The key (a certificate's own, for a certificate entry).
    """

    fingerprint: str
    certificate: x509.Certificate | None
    public_key: Any

    @property
    def kind(self) -> Literal["certificate", "public_key"]:
        """``certificate`` or ``public_key``."""
        return "certificate" if self.certificate is not None else "public_key"

    def describe(self) -> dict[str, Any]:
        """What the API shows of it besides its id and name."""
        cert = self.certificate
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "subject": cert.subject.rfc4514_string() if cert else None,
            "issuer": cert.issuer.rfc4514_string() if cert else None,
            "not_before": cert.not_valid_before_utc if cert else None,
            "not_after": cert.not_valid_after_utc if cert else None,
            "key": _key_name(self.public_key),
        }


def _key_name(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER, as ``openssl x509 -fingerprint -sha256`` shows it."""
    return cert.fingerprint(hashes.SHA256()).hex()


def parse_trust_entry(pem: str) -> TrustEntry:
    """One PEM certificate or public key.

    Raises:
        BadTrustEntryError: anything else, several blocks, or a private key.
    """
    text = pem.strip()
    if len(text) > MAX_PEM:
        raise BadTrustEntryError(f"PEM text over {MAX_PEM} bytes")
    if text.count("-----BEGIN ") != 1:
        raise BadTrustEntryError("give exactly one PEM certificate or public key per entry")
    raw = text.encode("ascii", "replace")
    if "PRIVATE KEY" in text.split("\n", 1)[0]:
        raise BadTrustEntryError("that is a private key: give its certificate or public key")
    if text.startswith("-----BEGIN CERTIFICATE-----"):
        try:
            cert = x509.load_pem_x509_certificate(raw)
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise BadTrustEntryError(f"not a readable certificate: {exc}") from None
        return TrustEntry(fingerprint(cert), cert, key)
    try:
        public = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadTrustEntryError(f"not a certificate or public key: {exc}") from None
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise BadTrustEntryError("only RSA and EC public keys are supported")
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TrustEntry(hashlib.sha256(spki).hexdigest(), None, public)


@dataclass(frozen=True)
class Signer:
    """Who signed: the CMS signer certificate, or the store's public key."""

    subject: str | None
    fingerprint: str


@dataclass(frozen=True)
class Verdict:
    """What checking an image's signature found.

    Attributes:
        state: ``verified``, ``unverified`` (signed, but not by anyone the store trusts), or
            ``unsigned``.
        method: How it is signed, when signed and recognised.
        signer: Who signed, when known.
        reason: Why it is not verified.
        trusted_by: Fingerprints of the store entries the verification relied on: removing any
            of them makes the software untrusted.
    """

    state: State
    method: Method | None = None
    signer: Signer | None = None
    reason: str | None = None
    trusted_by: tuple[str, ...] = field(default_factory=tuple)

    def document(self, at: datetime) -> dict[str, Any]:
        """The software's ``signature`` record; ``at`` is when it was verified."""
        doc: dict[str, Any] = {"state": self.state, "method": self.method}
        if self.signer is not None:
            subject = self.signer.subject[:MAX_TEXT] if self.signer.subject else None
            doc["signer"] = {"subject": subject, "fingerprint": self.signer.fingerprint}
        if self.state == "verified":
            doc["verified_at"] = at.isoformat()
        else:
            doc["reason"] = (self.reason or "")[:MAX_TEXT]
        return doc


def verify(
    content: bytes,
    signature: bytes | None,
    store: Sequence[TrustEntry],
    now: datetime,
    purpose: Purpose = "emailProtection",
) -> Verdict:
    """Check ``signature`` (``sw-description.sig``) of ``content`` (``sw-description``).

    Args:
        content: The sw-description's exact bytes.
        signature: The signature member's bytes; None for an unsigned image.
        store: The tenant's trust store.
        now: The time certificates must be valid at.
        purpose: The extended key usage CMS signers need (SWUpdate's ``--cert-purpose``).

    Returns:
        The verdict.

    Raises:
        BadSignatureError: the signature contradicts ``content``.
    """
    if signature is None:
        return Verdict("unsigned", reason="the image has no sw-description.sig")
    signed_data = _signed_data(signature)
    if signed_data is None:
        return _verify_raw(content, signature, store)
    try:
        return _verify_cms(content, signed_data, store, now, purpose)
    except BadSignatureError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        # asn1crypto parses lazily: a malformed part deep inside shows only when it is read.
        reason = f"the CMS signature cannot be read: {type(exc).__name__}: {exc}"
        return Verdict("unverified", "cms", reason=reason[:MAX_TEXT])


# raw RSA -------------------------------------------------------------------------------------


def _verify_raw(content: bytes, signature: bytes, store: Sequence[TrustEntry]) -> Verdict:
    keys = [
        e for e in store if e.certificate is None and isinstance(e.public_key, rsa.RSAPublicKey)
    ]
    if not keys:
        return Verdict(
            "unverified",
            reason="the signature is not CMS, and the trust store has no RSA public key",
        )
    attempts: list[tuple[Method, padding.AsymmetricPadding]] = [
        ("rsa-pkcs1v15", padding.PKCS1v15()),
        ("rsa-pss", padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)),
    ]
    for entry in keys:
        for method, pad in attempts:
            try:
                entry.public_key.verify(signature, content, pad, hashes.SHA256())
            except (InvalidSignature, ValueError):
                continue
            return Verdict(
                "verified",
                method,
                Signer(None, entry.fingerprint),
                trusted_by=(entry.fingerprint,),
            )
    return Verdict(
        "unverified",
        reason="the signature is not CMS, and no RSA public key of the trust store verifies it "
        "(PKCS#1 v1.5 or PSS, SHA-256)",
    )


# CMS -----------------------------------------------------------------------------------------


def _signed_data(signature: bytes) -> Any | None:
    """The CMS SignedData in ``signature``, or None when it is not one."""
    if not signature or signature[0] != 0x30:
        return None
    try:
        info = cms.ContentInfo.load(signature, strict=True)
        if info["content_type"].native != "signed_data":
            return None
        signed = info["content"]
        signed["signer_infos"].native  # noqa: B018 - parse it all now, errors here
        return signed
    except (ValueError, TypeError, KeyError):
        return None


def _embedded_certs(signed: Any) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    certs = signed["certificates"]
    if certs.native is None:
        return out
    for choice in certs:
        if choice.name != "certificate":
            continue
        try:
            out.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        except ValueError:
            continue
    return out


def _matches_sid(cert: x509.Certificate, sid: Any) -> bool:
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        return bool(
            cert.serial_number == ias["serial_number"].native
            and cert.issuer.public_bytes() == ias["issuer"].dump()
        )
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return False
    return bool(ski == sid.chosen.native)


def _hash(name: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[name]()
    except KeyError:
        raise BadSignatureError(f"unsupported digest algorithm {name!r}") from None


def _check_signer_info(content: bytes, info: Any, cert: x509.Certificate) -> None:
    """The signer's signature over ``content``, with its own certificate; raise if it fails."""
    digest_name = info["digest_algorithm"]["algorithm"].native
    algorithm = _hash(digest_name)
    attrs = info["signed_attrs"]
    if attrs.native:
        found: dict[str, Any] = {a["type"].native: a["values"] for a in attrs}
        if "message_digest" not in found:
            raise BadSignatureError("the CMS signed attributes have no message digest")
        if "content_type" in found and found["content_type"][0].native != "data":
            raise BadSignatureError("the CMS signature is not over plain data")
        digest = hashes.Hash(algorithm)
        digest.update(content)
        if digest.finalize() != found["message_digest"][0].native:
            raise BadSignatureError("sw-description does not match its signature (digest differs)")
        # The signature covers the attributes DER-encoded as a SET, not as their [0] tag.
        signed = b"\x31" + attrs.dump()[1:]
    else:
        signed = content
    sig_algo = info["signature_algorithm"]
    name = sig_algo.signature_algo
    key = cert.public_key()
    value = info["signature"].native
    try:
        if name == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(value, signed, padding.PKCS1v15(), algorithm)
        elif name == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
            params = sig_algo["parameters"]
            pss_hash = _hash(params["hash_algorithm"]["algorithm"].native)
            mgf_hash = _hash(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
            pad = padding.PSS(padding.MGF1(mgf_hash), params["salt_length"].native)
            key.verify(value, signed, pad, pss_hash)
        elif name == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(value, signed, ec.ECDSA(algorithm))
        else:
            raise BadSignatureError(f"unsupported signature algorithm {name!r} for this key")
    except InvalidSignature:
        raise BadSignatureError("sw-description does not match its signature") from None


def _verify_cms(
    content: bytes, signed: Any, store: Sequence[TrustEntry], now: datetime, purpose: Purpose
) -> Verdict:
    infos = list(signed["signer_infos"])
    if not infos:
        raise BadSignatureError("the CMS signature has no signer")
    embedded = _embedded_certs(signed)
    stored = [e.certificate for e in store if e.certificate is not None]
    by_fingerprint = {e.fingerprint: e for e in store if e.certificate is not None}
    signer: Signer | None = None
    trusted_by: list[str] = []
    problem: str | None = None
    for info in infos:
        cert = next((c for c in embedded + stored if _matches_sid(c, info["sid"])), None)
        if cert is None:
            problem = problem or "the signer's certificate is neither in the image nor trusted"
            continue
        _check_signer_info(content, info, cert)
        if signer is None:
            signer = Signer(cert.subject.rfc4514_string(), fingerprint(cert))
        chain, why = build_chain(cert, embedded + stored, set(by_fingerprint), now, purpose)
        if chain is None:
            problem = problem or why
            continue
        trusted_by += [fp for fp in map(fingerprint, chain) if fp in by_fingerprint]
    if problem is not None:
        return Verdict("unverified", "cms", signer, reason=problem)
    return Verdict("verified", "cms", signer, trusted_by=tuple(dict.fromkeys(trusted_by)))


# certificate chains ---------------------------------------------------------------------------


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def check_purpose(cert: x509.Certificate, *, ca: bool, purpose: Purpose) -> str | None:
    """Why ``cert`` may not sign images (as a signer, or as a CA above one), or None.

    The rules are OpenSSL's for the purpose SWUpdate asks for (``--cert-purpose``,
    ``emailProtection`` by default, i.e. OpenSSL's ``smimesign``; or SWUpdate's own
    ``codeSigning`` check):

    * an extended key usage, if present, must name the purpose (for a CA too with
      ``emailProtection``; a CA needs none with ``codeSigning``);
    * a signer's key usage, if present, must allow ``digitalSignature`` or ``nonRepudiation``
      (``emailProtection``);
    * a CA must say so in ``basicConstraints`` (without that extension: be a self-signed
      version 1 certificate, or have a key usage allowing ``keyCertSign``), and its key usage,
      if present, must allow ``keyCertSign``.
    """
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if (
        eku is not None
        and (not ca or purpose == "emailProtection")
        and _PURPOSE_OID[purpose] not in eku
    ):
        return f"certificate {cert.subject.rfc4514_string()!r} is not for {purpose}"
    usage = _extension(cert, x509.KeyUsage)
    if ca:
        constraints = _extension(cert, x509.BasicConstraints)
        if constraints is not None:
            is_ca = bool(constraints.ca)
        else:
            # OpenSSL tolerates a CA without basicConstraints: a version 1 root, or one whose
            # key usage allows signing certificates.
            v1_root = cert.version == x509.Version.v1 and _self_signed(cert)
            is_ca = v1_root or (usage is not None and usage.key_cert_sign)
        if not is_ca:
            return f"certificate {cert.subject.rfc4514_string()!r} is not a CA"
        if usage is not None and not usage.key_cert_sign:
            return f"certificate {cert.subject.rfc4514_string()!r} may not sign certificates"
    elif (
        purpose == "emailProtection"
        and usage is not None
        and not (usage.digital_signature or usage.content_commitment)
    ):
        return f"certificate {cert.subject.rfc4514_string()!r} may not make signatures"
    return None


def _valid(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"certificate {cert.subject.rfc4514_string()!r} is not valid yet"
    if now > cert.not_valid_after_utc:
        return f"certificate {cert.subject.rfc4514_string()!r} has expired"
    return None


def build_chain(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    anchors: set[str],
    now: datetime,
    purpose: Purpose,
) -> tuple[list[x509.Certificate] | None, str]:
    """The chain from ``leaf`` to a self-signed certificate of ``anchors``; or (None, why).

    Every certificate of the chain must be valid at ``now`` and fit for ``purpose``.
    """
    chain = [leaf]
    current = leaf
    for _ in range(MAX_CHAIN):
        why = _valid(current, now) or check_purpose(
            current, ca=current is not leaf, purpose=purpose
        )
        if why is not None:
            return None, why
        if fingerprint(current) in anchors and _self_signed(current):
            return chain, ""
        if current.issuer == current.subject and _self_signed(current):
            return None, (
                f"certificate {current.subject.rfc4514_string()!r} is not in the trust store"
            )
        issuer = _issuer_of(current, pool)
        if issuer is None:
            return None, (
                f"no certificate of the image or the trust store issued "
                f"{current.subject.rfc4514_string()!r}"
            )
        chain.append(issuer)
        current = issuer
    return None, f"no trust anchor within {MAX_CHAIN} certificates"


def _issuer_of(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for candidate in pool:
        if candidate.subject != cert.issuer or candidate == cert:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            continue
        return candidate
    return None
