"""Signature checks of sw-description against a trust store, with images signed as users do."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from gaggle_artifacts.signatures import (
    BadSignatureError,
    BadTrustEntryError,
    TrustEntry,
    parse_trust_entry,
    verify,
)
from gaggle_swu import sign_cms, sign_rsa, verify_cms
from gaggle_swu.pki import Identity, make_identity

NOW = datetime.now(UTC)
DESC = b'software = { version = "1.0.0"; files: ({ filename = "a"; sha256 = "00"; }); };'
JSON_DESC = b'{"software": {"version": "1.0.0", "images": [{"filename": "a"}]}}'
DAY = timedelta(days=1)


def trusted(*identities: Identity) -> list[TrustEntry]:
    return [parse_trust_entry(i.cert_pem.decode()) for i in identities]


def cms(tmp_path: Path, who: Identity, data: bytes = DESC, *chain: Identity) -> bytes:
    key, cert = who.write(tmp_path, "signer")
    certfile = None
    if chain:
        certfile = tmp_path / "chain.pem"
        certfile.write_bytes(b"".join(c.cert_pem for c in chain))
    return sign_cms(data, key, cert, certfile=certfile)


@pytest.fixture(scope="module")
def signer() -> Identity:
    return make_identity("signer", NOW)


def test_openssl_cms_signature_by_a_trusted_certificate_is_verified(
    tmp_path: Path, signer: Identity
) -> None:
    verdict = verify(DESC, cms(tmp_path, signer), trusted(signer), NOW)
    assert verdict.state == "verified"
    assert verdict.method == "cms"
    assert verdict.signer is not None
    assert verdict.signer.subject == "CN=signer"
    assert verdict.trusted_by == (trusted(signer)[0].fingerprint,)
    doc = verdict.document(NOW)
    assert doc["verified_at"] == NOW.isoformat()
    assert doc["signer"]["fingerprint"] == signer.cert.fingerprint(hashes.SHA256()).hex()


def test_json_sw_description_signed_is_verified(tmp_path: Path, signer: Identity) -> None:
    verdict = verify(JSON_DESC, cms(tmp_path, signer, JSON_DESC), trusted(signer), NOW)
    assert verdict.state == "verified"


def test_a_signature_made_by_cryptography_without_attributes_is_verified(
    signer: Identity,
) -> None:
    # Another producer, and the no-signed-attributes form (openssl cms -noattr).
    for options in (
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
        [
            pkcs7.PKCS7Options.DetachedSignature,
            pkcs7.PKCS7Options.Binary,
            pkcs7.PKCS7Options.NoAttributes,
        ],
    ):
        sig = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(DESC)
            .add_signer(signer.cert, signer.key, hashes.SHA256())  # type: ignore[arg-type]
            .sign(serialization.Encoding.DER, options)
        )
        assert verify(DESC, sig, trusted(signer), NOW).state == "verified"
        with pytest.raises(BadSignatureError):
            verify(DESC + b"\n", sig, trusted(signer), NOW)


def test_unknown_signer_is_unverified_with_the_reason(tmp_path: Path, signer: Identity) -> None:
    other = make_identity("other", NOW)
    verdict = verify(DESC, cms(tmp_path, signer), trusted(other), NOW)
    assert verdict.state == "unverified"
    assert verdict.signer is not None and verdict.signer.subject == "CN=signer"
    assert "not in the trust store" in (verdict.reason or "")
    assert verdict.trusted_by == ()
    assert "verified_at" not in verdict.document(NOW)


def test_sw_description_altered_after_signing_is_a_bad_signature(
    tmp_path: Path, signer: Identity
) -> None:
    sig = cms(tmp_path, signer)
    altered = DESC.replace(b"1.0.0", b"1.0.1")
    for store in (trusted(signer), []):
        with pytest.raises(BadSignatureError, match="does not match"):
            verify(altered, sig, store, NOW)


def test_unsigned_image_is_unsigned() -> None:
    assert verify(DESC, None, [], NOW).state == "unsigned"


def test_a_chain_through_an_intermediate_to_a_trusted_root_is_verified(tmp_path: Path) -> None:
    root = make_identity("root", NOW, usage="ca", eku=None, ca=True)
    mid = make_identity("mid", NOW, issuer=root, usage="ca", eku=None, ca=True)
    leaf = make_identity("leaf", NOW, issuer=mid, ca=False)
    sig = cms(tmp_path, leaf, DESC, mid)
    verdict = verify(DESC, sig, trusted(root), NOW)
    assert verdict.state == "verified", verdict.reason
    _, root_cert = root.write(tmp_path, "root")
    assert verify_cms(DESC, sig, root_cert)  # as openssl, and so SWUpdate, sees it
    assert verdict.trusted_by == (trusted(root)[0].fingerprint,)
    # The intermediate in the store instead of the image works too, and is relied on.
    sig_alone = cms(tmp_path, leaf)
    verdict = verify(DESC, sig_alone, trusted(root, mid), NOW)
    assert verdict.state == "verified"
    assert set(verdict.trusted_by) == {e.fingerprint for e in trusted(root, mid)}
    # Without the intermediate anywhere there is no chain.
    assert verify(DESC, sig_alone, trusted(root), NOW).state == "unverified"
    # An intermediate alone is no trust anchor (as for SWUpdate, which needs a root).
    assert verify(DESC, sig, trusted(mid), NOW).state == "unverified"


@pytest.mark.parametrize(
    ("what", "leaf_args", "ca_args", "why"),
    [
        ("expired signer", {"not_after": -DAY, "not_before": -30 * DAY}, {}, "expired"),
        ("signer not valid yet", {"not_before": DAY, "not_after": 30 * DAY}, {}, "not valid yet"),
        ("expired root", {}, {"not_after": -DAY, "not_before": -30 * DAY}, "expired"),
        ("signer for TLS only", {"eku": ["serverAuth"]}, {}, "not for emailProtection"),
        ("signer key for encipherment", {"usage": "encipher"}, {}, "may not make signatures"),
        ("root that is no CA", {}, {"ca": False}, "is not a CA"),
        ("root without CA flag or usage", {}, {"ca": None, "usage": None}, "is not a CA"),
        ("root may not sign certs", {}, {"usage": "sign"}, "may not sign certificates"),
        ("root for TLS only", {}, {"eku": ["serverAuth"]}, "not for emailProtection"),
    ],
)
def test_a_chain_swupdate_would_refuse_is_unverified(
    tmp_path: Path, what: str, leaf_args: dict[str, object], ca_args: dict[str, object], why: str
) -> None:
    root = make_identity(
        "root",
        NOW,
        **{"usage": "ca", "eku": None, "ca": True, **ca_args},  # type: ignore[arg-type]
    )
    leaf = make_identity("leaf", NOW, issuer=root, **leaf_args)  # type: ignore[arg-type]
    sig = cms(tmp_path, leaf)
    verdict = verify(DESC, sig, trusted(root), NOW)
    assert verdict.state == "unverified", what
    assert why in (verdict.reason or ""), verdict.reason
    # openssl cms -verify -purpose smimesign, as SWUpdate calls it, refuses it too.
    _, root_cert = root.write(tmp_path, "root")
    assert not verify_cms(DESC, sig, root_cert)


def test_a_root_without_basic_constraints_but_allowed_to_sign_certificates_is_a_ca(
    tmp_path: Path,
) -> None:
    root = make_identity("root", NOW, usage="ca", eku=None, ca=None)
    leaf = make_identity("leaf", NOW, issuer=root)
    sig = cms(tmp_path, leaf)
    assert verify(DESC, sig, trusted(root), NOW).state == "verified"
    _, root_cert = root.write(tmp_path, "root")
    assert verify_cms(DESC, sig, root_cert)


def test_code_signing_purpose_accepts_code_signing_signers_only(tmp_path: Path) -> None:
    code = make_identity("code", NOW, eku=["codeSigning"])
    mail = make_identity("mail", NOW, eku=["emailProtection"])
    plain = make_identity("plain", NOW, eku=None)
    store = trusted(code, mail, plain)
    assert verify(DESC, cms(tmp_path, code), store, NOW, "codeSigning").state == "verified"
    assert verify(DESC, cms(tmp_path, plain), store, NOW, "codeSigning").state == "verified"
    assert verify(DESC, cms(tmp_path, mail), store, NOW, "codeSigning").state == "unverified"
    assert verify(DESC, cms(tmp_path, code), store, NOW).state == "unverified"


def test_ec_signer_is_verified(tmp_path: Path) -> None:
    ec_signer = make_identity("ec", NOW, key_type="ec")
    assert verify(DESC, cms(tmp_path, ec_signer), trusted(ec_signer), NOW).state == "verified"


@pytest.mark.parametrize(("pss", "method"), [(False, "rsa-pkcs1v15"), (True, "rsa-pss")])
def test_raw_rsa_signatures_verify_against_trusted_public_keys(
    tmp_path: Path, signer: Identity, pss: bool, method: str
) -> None:
    key, _ = signer.write(tmp_path, "raw")
    sig = sign_rsa(DESC, key, pss=pss)
    store = [parse_trust_entry(signer.public_key_pem.decode())]
    verdict = verify(DESC, sig, store, NOW)
    assert (verdict.state, verdict.method) == ("verified", method)
    assert verdict.trusted_by == (store[0].fingerprint,)
    # Altered, or a key nobody trusts: not verified (a raw signature names no signer).
    assert verify(DESC + b" ", sig, store, NOW).state == "unverified"
    other = make_identity("other", NOW)
    assert verify(DESC, sig, [parse_trust_entry(other.public_key_pem.decode())], NOW).reason
    # A certificate in the store is no key for raw signatures.
    assert verify(DESC, sig, trusted(signer), NOW).state == "unverified"


@pytest.mark.parametrize(
    ("pem", "why"),
    [
        ("", "exactly one"),
        ("hello", "exactly one"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "not a readable"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "not a certificate"),
    ],
)
def test_trust_entries_must_be_one_certificate_or_public_key(pem: str, why: str) -> None:
    with pytest.raises(BadTrustEntryError, match=why):
        parse_trust_entry(pem)


def test_private_keys_and_several_blocks_are_refused(signer: Identity) -> None:
    with pytest.raises(BadTrustEntryError, match="private key"):
        parse_trust_entry(signer.key_pem.decode())
    with pytest.raises(BadTrustEntryError, match="exactly one"):
        parse_trust_entry((signer.cert_pem + signer.cert_pem).decode())
    entry = parse_trust_entry(signer.cert_pem.decode())
    assert entry.describe()["subject"] == "CN=signer"
    assert entry.kind == "certificate"


def test_a_signature_member_that_is_no_cms_and_no_key_is_unverified() -> None:
    verdict = verify(DESC, b"\x30\x03garbage", [], NOW)
    assert verdict.state == "unverified"
    assert "not CMS" in (verdict.reason or "")


def test_a_damaged_cms_signature_is_refused_or_unverified_never_an_error(
    tmp_path: Path, signer: Identity
) -> None:
    sig = cms(tmp_path, signer)
    store = trusted(signer)
    rng = random.Random(17)
    outcomes = set()
    for _ in range(400):
        damaged = bytearray(sig)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if rng.random() < 0.2:
            damaged = damaged[: rng.randrange(len(damaged))]
        try:
            verdict = verify(DESC, bytes(damaged), store, NOW)
        except BadSignatureError:
            outcomes.add("refused")
        else:
            outcomes.add(verdict.state)
            if verdict.state == "verified":
                # Only bytes no check covers (e.g. the unsigned certificate bag's padding).
                assert verdict.signer is not None
    assert {"refused", "unverified"} <= outcomes
