"""The gateway's deployments mirror shares equal deployment documents between devices."""

from __future__ import annotations

from gaggle_contracts import names
from gaggle_contracts.kv import (
    ArtifactDoc,
    ChunkDoc,
    DeploymentDoc,
    DeploymentEntry,
    InstalledAction,
    OpenAction,
)
from gaggle_gateway.mirror import Mirror, SharedDocuments


def doc(version: str = "2.0.0") -> DeploymentDoc:
    artifact = ArtifactDoc(
        filename=f"fw-{version}.swu", size=10, md5="a" * 32, sha1="b" * 40, sha256="c" * 64
    )
    return DeploymentDoc(
        chunks=[ChunkDoc(module_id="1", name="fw", version=version, artifacts=[artifact])]
    )


def payload(action_id: str, version: str = "2.0.0", *, installed: bool = False) -> bytes:
    if installed:
        entry = DeploymentEntry(
            installed=InstalledAction(action_id=action_id, deployment=doc(version)),
            closed=[action_id],
        )
    else:
        entry = DeploymentEntry(open=OpenAction(action_id=action_id, deployment=doc(version)))
    return entry.model_dump_json().encode()


def test_devices_of_one_rollout_share_their_document_and_keep_their_own_action() -> None:
    mirror = Mirror().deployments
    assert mirror.bucket == names.BUCKET_DEPLOYMENTS
    for i in range(50):
        mirror.apply(mirror.values, f"default.dev-{i}", None, payload(str(i)))
    for i in range(50, 100):
        mirror.apply(mirror.values, f"default.dev-{i}", None, payload(str(i), installed=True))
    opened = [mirror.values[f"default.dev-{i}"].open for i in range(50)]
    installed = [mirror.values[f"default.dev-{i}"].installed for i in range(50, 100)]
    assert [a.action_id for a in opened if a] == [str(i) for i in range(50)]
    assert [a.action_id for a in installed if a] == [str(i) for i in range(50, 100)]
    docs = {id(a.deployment) for a in [*opened, *installed] if a}
    assert len(docs) == 1
    assert mirror.values["default.dev-3"].open.deployment == doc()  # type: ignore[union-attr]
    assert mirror.values["default.dev-60"].closed == ["60"]


def test_different_documents_are_never_merged() -> None:
    mirror = Mirror().deployments
    mirror.apply(mirror.values, "default.a", None, payload("1", "2.0.0"))
    mirror.apply(mirror.values, "default.b", None, payload("2", "2.1.0"))
    a, b = mirror.values["default.a"].open, mirror.values["default.b"].open
    assert a is not None and b is not None
    assert a.deployment.chunks[0].version == "2.0.0"
    assert b.deployment.chunks[0].version == "2.1.0"


def test_the_kept_documents_are_bounded() -> None:
    shared = SharedDocuments(limit=4)
    for i in range(20):
        kept = shared.doc(doc(f"1.0.{i}"))
        assert kept.chunks[0].version == f"1.0.{i}"
        assert len(shared._docs) <= 4


def test_an_entry_without_documents_is_returned_as_it_is() -> None:
    entry = DeploymentEntry(closed=["1"])
    assert SharedDocuments()(entry) is entry
