"""Verified images from the command line: the policy set on the tenant in registry reaches
artifacts through KV ``tenants``; the trust store and signature state through ``gaggle``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_storage import StorageSettings
from gaggle_swu import make_rawfile_swu
from gaggle_swu.pki import make_identity
from tests.integration.support import cli_env, run_cli

pytestmark = pytest.mark.integration


async def test_policy_trust_store_and_signature_state_through_the_command_line(
    common: CommonSettings, serve: Any, operator_key: str, tenant: str, tmp_path: Path
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    artifacts = await serve(build_artifacts(common, ArtifactsSettings(), storage))
    env = cli_env(
        GAGGLE_REGISTRY_URL=registry.url,
        GAGGLE_ARTIFACTS_URL=artifacts.url,
        GAGGLE_API_KEY=operator_key,
        COLUMNS="250",
    )

    async def gaggle(*args: str, code: int = 0) -> str:
        run = await run_cli(env, *args, code=code)
        return run.out if code == 0 else run.err

    async def as_json(*args: str) -> Any:
        return json.loads(await gaggle("--json", *args))

    signer = make_identity(f"signer {secrets.token_hex(3)}", datetime.now(UTC))
    key, cert = signer.write(tmp_path, "signer")

    def image(version: str, signed: bool = True) -> Path:
        data = make_rawfile_swu(
            os.urandom(2048),
            version=version,
            board="board",
            revisions=["1.0"],
            install_path="/tmp/x",
            key=key if signed else None,
            cert=cert if signed else None,
        )
        path = tmp_path / f"update-{version}.swu"
        path.write_bytes(data)
        return path

    shown = await as_json("tenants", "set", tenant, "--require-signature", "--require-image-hashes")
    assert (shown["require_signature"], shown["require_image_hashes"]) == (True, True)
    assert shown["monotonic_versions"] is False
    assert "require signature" in await gaggle("tenants", "show", tenant)

    # The policy travels registry -> KV tenants -> artifacts; an unsigned image is refused.
    policies = artifacts.app.state.gate.policies
    for _ in range(200):
        if policies.policy(tenant).require_signature:
            break
        await asyncio.sleep(0.02)
    refused = await gaggle("software", "upload", str(image("1.0.0", signed=False)), code=1)
    assert "signature_required" in refused or "signed by its trust store" in refused

    added = await as_json("trust", "add", str(cert), "--name", "release")
    assert added["kind"] == "certificate"
    listing = await gaggle("trust", "list")
    assert "release" in listing
    assert "require_signature" in listing

    uploaded = await as_json("software", "upload", str(image("1.0.0")))
    assert uploaded["trust"] == "verified"
    text = await gaggle("software", "show", uploaded["id"])
    assert "verified (cms)" in text
    assert signer.cert.subject.rfc4514_string() in text
    assert "1 checked" in text
    assert "verified (cms)" in await gaggle("software", "list")

    removed = await gaggle("trust", "remove", added["id"])
    assert f"software {uploaded['id']}" in removed
    text = await gaggle("software", "show", uploaded["id"])
    assert "untrusted" in text
    assert "release" in text
