"""Build (optionally signed) SWUpdate ``.swu`` images for tests and tooling.

A ``.swu`` is a cpio newc archive whose first member is ``sw-description``, followed by
``sw-description.sig`` when signed, then the images it lists. The Debian ``swupdate`` package is
built with CMS signature checking, so it refuses unsigned images; :func:`make_signing_cert` and
:func:`sign_cms` drive the ``openssl`` command line to produce a signature it accepts (load the
certificate into swupdate with ``-k cert.pem``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gaggle_swu.cpio import write_archive

SW_DESCRIPTION: str = "sw-description"
"""Name of the first member of every ``.swu``."""
SW_DESCRIPTION_SIG: str = "sw-description.sig"
"""Name of the detached CMS signature member of a signed ``.swu``."""


class SigningError(RuntimeError):
    """Raised when the ``openssl`` command line is missing or fails."""


def build_swu(
    sw_description: str,
    files: list[tuple[str, bytes]],
    *,
    signature: bytes | None = None,
    crc: bool = False,
) -> bytes:
    """Assemble a ``.swu`` image.

    Args:
        sw_description: The sw-description text (libconfig or JSON), stored UTF-8 encoded. Sign
            exactly these bytes: ``sign_cms(sw_description.encode(), ...)``.
        files: ``(name, data)`` pairs for the images, in archive order; names must match the
            ``filename`` entries of the sw-description.
        signature: DER CMS signature of the sw-description, stored as ``sw-description.sig``.
        crc: Write ``070702`` (newc with checksums) instead of ``070701`` headers.

    Returns:
        The image bytes.

    Raises:
        ValueError: If a file uses one of the reserved sw-description names.
    """
    members: list[tuple[str, bytes]] = [(SW_DESCRIPTION, sw_description.encode("utf-8"))]
    if signature is not None:
        members.append((SW_DESCRIPTION_SIG, signature))
    for name, data in files:
        if name in (SW_DESCRIPTION, SW_DESCRIPTION_SIG):
            raise ValueError(f"{name!r} is reserved and written by build_swu itself")
        members.append((name, data))
    return write_archive(members, crc=crc)


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise SigningError(
            "the 'openssl' command is needed to sign images (apt-get install openssl)"
        )
    return path


def _run_openssl(args: Sequence[str], *, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [_openssl(), *args], input=stdin, capture_output=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise SigningError(f"openssl {args[0]} failed ({proc.returncode}): {err}")
    return proc.stdout


def make_signing_cert(
    directory: str | Path,
    *,
    common_name: str = "gaggle-test-signer",
    days: int = 3650,
) -> tuple[Path, Path]:
    """Create a self-signed RSA key and certificate that swupdate accepts as its ``-k`` key.

    The certificate carries ``extendedKeyUsage=emailProtection`` (swupdate's default
    ``--cert-purpose``) and ``keyUsage=digitalSignature``. Existing files are reused.

    Args:
        directory: Where ``signing.key.pem`` and ``signing.cert.pem`` are written (created if
            missing).
        common_name: Subject CN of the certificate (see swupdate's ``--forced-signer-name``).
        days: Validity period.

    Returns:
        ``(key_path, cert_path)``.

    Raises:
        SigningError: If openssl is missing or fails.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    key, cert = out / "signing.key.pem", out / "signing.cert.pem"
    if key.is_file() and cert.is_file():
        return key, cert
    _run_openssl(
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            str(days),
            "-subj",
            f"/CN={common_name}",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "extendedKeyUsage=emailProtection",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ]
    )
    return key, cert


def sign_cms(
    data: bytes, key: str | Path, cert: str | Path, *, certfile: str | Path | None = None
) -> bytes:
    """Return a detached DER CMS signature of ``data``, the ``sw-description.sig`` format.

    Equivalent to ``openssl cms -sign -binary -outform DER -nosmimecap -in sw-description
    -signer cert -inkey key`` (``-certfile`` adds intermediate certificates).

    Args:
        data: The exact sw-description bytes stored in the image.
        key: PEM private key.
        cert: PEM certificate matching ``key``.
        certfile: PEM certificates to embed besides ``cert`` (intermediate CAs).

    Returns:
        The DER-encoded signature.

    Raises:
        SigningError: If openssl is missing or fails.
    """
    with tempfile.TemporaryDirectory(prefix="gaggle-sign-") as tmp:
        src, dst = Path(tmp) / SW_DESCRIPTION, Path(tmp) / SW_DESCRIPTION_SIG
        src.write_bytes(data)
        _run_openssl(
            [
                "cms",
                "-sign",
                "-binary",
                "-nosmimecap",
                "-outform",
                "DER",
                "-md",
                "sha256",
                "-in",
                str(src),
                "-out",
                str(dst),
                "-signer",
                str(cert),
                "-inkey",
                str(key),
                *(["-certfile", str(certfile)] if certfile is not None else []),
            ]
        )
        return dst.read_bytes()


def sign_rsa(data: bytes, key: str | Path, *, pss: bool = False) -> bytes:
    """Return a raw RSA signature of ``data``, SWUpdate's ``RAWRSA`` or ``RSAPSS`` format.

    Equivalent to ``openssl dgst -sha256 -sign key`` (with ``-sigopt rsa_padding_mode:pss
    -sigopt rsa_pss_saltlen:-2`` for PSS).

    Raises:
        SigningError: If openssl is missing or fails.
    """
    with tempfile.TemporaryDirectory(prefix="gaggle-sign-") as tmp:
        src, dst = Path(tmp) / SW_DESCRIPTION, Path(tmp) / SW_DESCRIPTION_SIG
        src.write_bytes(data)
        options = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-2"]
        _run_openssl(
            [
                "dgst",
                "-sha256",
                "-sign",
                str(key),
                *(options if pss else []),
                "-out",
                str(dst),
                str(src),
            ]
        )
        return dst.read_bytes()


def verify_cms(data: bytes, signature: bytes, cert: str | Path) -> bool:
    """Check a detached DER CMS signature against a trusted certificate, as swupdate does.

    Args:
        data: The signed bytes.
        signature: The DER signature.
        cert: PEM certificate used as the only trust anchor.

    Returns:
        True when openssl accepts the signature.

    Raises:
        SigningError: If openssl is missing.
    """
    with tempfile.TemporaryDirectory(prefix="gaggle-verify-") as tmp:
        src, sig = Path(tmp) / SW_DESCRIPTION, Path(tmp) / SW_DESCRIPTION_SIG
        src.write_bytes(data)
        sig.write_bytes(signature)
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [
                _openssl(),
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                str(sig),
                "-content",
                str(src),
                "-CAfile",
                str(cert),
                "-purpose",
                "smimesign",
                "-out",
                "/dev/null",
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        return proc.returncode == 0


def _libconfig_string(value: str) -> str:
    # libconfig string literals use C escapes; JSON string escaping is a compatible subset.
    return json.dumps(value, ensure_ascii=True)


def render_sw_description(
    *,
    version: str,
    board: str,
    revisions: Sequence[str],
    filename: str,
    sha256: str,
    path: str,
    description: str = "Gaggle test image",
) -> str:
    """Render a minimal libconfig sw-description with one ``rawfile`` entry for ``board``.

    The ``rawfile`` handler copies the file to ``path`` without mounting anything (no
    ``device``), so pointing ``path`` into a temporary directory makes the install harmless. The
    entries live under ``software.<board>``, which swupdate selects when started with
    ``-H <board>:<rev>``; ``rev`` must be one of ``revisions`` (exact strings).

    Args:
        version: ``software.version``, reported by suricatta after the install.
        board: Board name, as given to swupdate's ``-H``.
        revisions: Accepted hardware revisions (``hardware-compatibility``).
        filename: Name of the image member inside the ``.swu``.
        sha256: Hex sha256 of that member; swupdate rejects the install on mismatch.
        path: Absolute destination path written by the ``rawfile`` handler.
        description: ``software.description`` text.

    Returns:
        The sw-description text.
    """
    revs = ", ".join(_libconfig_string(r) for r in revisions)
    return (
        "software =\n"
        "{\n"
        f"    version = {_libconfig_string(version)};\n"
        f"    description = {_libconfig_string(description)};\n"
        f"    {board} = {{\n"
        f"        hardware-compatibility = [ {revs} ];\n"
        "        files: (\n"
        "            {\n"
        f"                filename = {_libconfig_string(filename)};\n"
        f"                path = {_libconfig_string(path)};\n"
        f"                sha256 = {_libconfig_string(sha256)};\n"
        '                type = "rawfile";\n'
        "            }\n"
        "        );\n"
        "    };\n"
        "};\n"
    )


def make_rawfile_swu(
    payload: bytes,
    *,
    version: str,
    board: str,
    revisions: Sequence[str],
    install_path: str,
    key: str | Path | None,
    cert: str | Path | None,
    filename: str = "payload.bin",
    sha256: str | None = None,
    crc: bool = False,
) -> bytes:
    """Build a one-file ``rawfile`` test image, signed when ``key`` and ``cert`` are given.

    Args:
        payload: Content written by swupdate to ``install_path``.
        version: ``software.version``.
        board: Board name (``-H board:rev``).
        revisions: Accepted hardware revisions.
        install_path: Absolute destination of the payload on the device.
        key: PEM private key for signing, or None for an unsigned image.
        cert: PEM certificate for signing, or None for an unsigned image.
        filename: Member name of the payload.
        sha256: Override the declared sha256 (e.g. a wrong one to provoke a failed install).
        crc: Use ``070702`` cpio headers.

    Returns:
        The image bytes.
    """
    desc = render_sw_description(
        version=version,
        board=board,
        revisions=revisions,
        filename=filename,
        sha256=sha256 or hashlib.sha256(payload).hexdigest(),
        path=install_path,
    )
    signature = None
    if key is not None and cert is not None:
        signature = sign_cms(desc.encode("utf-8"), key, cert)
    return build_swu(desc, [(filename, payload)], signature=signature, crc=crc)
