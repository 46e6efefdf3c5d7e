"""Write Gaggle's generated documentation: AsyncAPI and OpenAPI per service, the architecture page.

``make docs`` runs this into ``docs/``; a test runs it into a temporary folder and compares, so
the committed documents always match the code. Everything here is read from the code:

* ``docs/asyncapi/<service>.json``: the AsyncAPI 3.0 document FastStream generates from the
  service's broker (its subscribers, and the publishers declared from the contracts);
* ``docs/openapi/<service>.json``: the OpenAPI document of the service's FastAPI app;
* ``docs/architecture.md``: services, the subjects each publishes and consumes (the
  ``publishers``/``consumers`` of every event class in ``gaggle_contracts.events``, which a test
  checks against the services' subscriptions), the KV buckets with their writers and readers,
  and the request-reply subjects of ``gaggle_contracts.rpc``, then the workspace members (libs,
  services, apps) with the members each depends on, from their ``pyproject.toml``.

Usage: ``python docs/generate.py [OUTPUT_DIR]`` (default: the folder of this file).
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from gaggle_contracts import names
from gaggle_contracts.events import EVENT_TYPES
from gaggle_contracts.rpc import RPC_TYPES
from gaggle_contracts.settings import CommonSettings

SERVICES = ("gateway", "registry", "artifacts", "rollouts")
"""Service names, as in ``Service(name)`` and in the events' ``publishers``/``consumers``."""

ROOT = Path(__file__).resolve().parent.parent
"""The workspace root: its members are ``libs/*``, ``services/*`` and ``apps/*``."""

MEMBER_KINDS = (
    ("libs", "library: imported, never run"),
    ("services", "service: run, imports only libraries"),
    ("apps", "app: run, imported by no member"),
)

SERVICE_PACKAGES = {
    "gateway": "services/ddi-gateway (gaggle_gateway)",
    "registry": "services/registry (gaggle_registry)",
    "artifacts": "services/artifacts (gaggle_artifacts)",
    "rollouts": "services/rollouts (gaggle_rollouts)",
}


@dataclass(frozen=True)
class Bucket:
    """A KV bucket: who writes it, who follows it into memory, and its value model."""

    name: str
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    value: str
    key: str


BUCKETS = (
    Bucket(
        names.BUCKET_DEVICES,
        ("registry",),
        ("gateway",),
        "gaggle_contracts.kv.DeviceEntry",
        "`<tenant>.<controller id>`",
    ),
    Bucket(
        names.BUCKET_DEPLOYMENTS,
        ("rollouts",),
        ("gateway",),
        "gaggle_contracts.kv.DeploymentEntry",
        "`<tenant>.<controller id>`",
    ),
    Bucket(
        names.BUCKET_TENANTS,
        ("registry",),
        ("gateway", "rollouts"),
        "gaggle_contracts.kv.TenantConfig",
        "`<tenant>`",
    ),
    Bucket(
        names.BUCKET_API_KEYS,
        ("registry",),
        SERVICES,
        "gaggle_contracts.access.ApiKeyEntry",
        "key id",
    ),
)
"""Every bucket of ``names.BUCKETS`` (a test checks the two agree, and the gateway's readers)."""

# Settings that make the documents the same on every machine: the broker URL is the server
# AsyncAPI names; nothing is connected.
DOC_SETTINGS = {
    "nats_url": "nats://nats:4222",
    "database_url": "postgresql://gaggle@postgres:5432/gaggle",
    "otel_endpoint": None,
}


def build_apps(storage_dir: Path) -> dict[str, FastAPI]:
    """Every service's app, built (not started) with fixed settings."""
    from gaggle_artifacts.app import build_app as build_artifacts
    from gaggle_artifacts.settings import ArtifactsSettings
    from gaggle_gateway.app import build_app as build_gateway
    from gaggle_gateway.settings import GatewaySettings
    from gaggle_registry.app import build_app as build_registry
    from gaggle_registry.settings import RegistrySettings
    from gaggle_rollouts.app import build_app as build_rollouts
    from gaggle_rollouts.settings import RolloutsSettings
    from gaggle_storage import StorageSettings

    common = CommonSettings(**DOC_SETTINGS)  # type: ignore[arg-type]
    storage = StorageSettings(backend="local", dir=storage_dir)
    builders: dict[str, Callable[[], FastAPI]] = {
        "gateway": lambda: build_gateway(common, GatewaySettings(), storage),
        "registry": lambda: build_registry(common, RegistrySettings()),
        "artifacts": lambda: build_artifacts(common, ArtifactsSettings(), storage),
        "rollouts": lambda: build_rollouts(common, RolloutsSettings()),
    }
    return {name: builders[name]() for name in SERVICES}


def dump(document: Any) -> str:
    """Stable JSON text: sorted keys, two-space indent, final newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _list(services: tuple[str, ...]) -> str:
    return ", ".join(services) if services else "(operators and tools)"


def _node(name: str) -> str:
    return name.replace("-", "_")


def architecture() -> str:
    """The text of ``docs/architecture.md``."""
    lines = [
        "# Gaggle: services, subjects and buckets",
        "",
        "<!-- Generated by `make docs` (docs/generate.py) from libs/contracts and the services'",
        "     brokers. Do not edit: a test fails when this page and the code disagree. -->",
        "",
        f"Every event is on the JetStream stream `{names.STREAM}`, subject",
        f"`{names.subject('<tenant>', '<entity>.<event>')}`; each consumer is a durable",
        "`<service>_<entity>_<event>`, shared by the service's replicas. The event schemas are in",
        "`docs/asyncapi/<service>.json` (also served at `/asyncapi.json` and `/asyncapi` by each",
        "service), the REST APIs in `docs/openapi/<service>.json` (served at `/docs`).",
        "",
        "```mermaid",
        "flowchart LR",
        "  devices([devices]) -- DDI / HTTP --> gateway",
        "  operators([operators]) -- REST --> registry & artifacts & rollouts",
    ]
    for service in SERVICES:
        lines.append(f"  {service}[{service}]")
    for bucket in BUCKETS:
        lines.append(f"  kv_{_node(bucket.name)}[(KV {bucket.name})]")
    for cls in EVENT_TYPES:
        for publisher in cls.publishers:
            targets = cls.consumers or ("tools",)
            for consumer in targets:
                target = consumer if consumer != "tools" else "tools([operators and tools])"
                lines.append(f"  {publisher} -- {cls.kind} --> {target}")
    for bucket in BUCKETS:
        node = f"kv_{_node(bucket.name)}"
        for writer in bucket.writers:
            source = "operators" if writer == "operators" else writer
            lines.append(f"  {source} -. put .-> {node}")
        readers = ("gateway",) if bucket.readers == SERVICES else bucket.readers
        for reader in readers:
            lines.append(f"  {node} -. watch .-> {reader}")
    lines += [
        "```",
        "",
        f"(`{names.BUCKET_API_KEYS}` is followed by every service; the chart shows one arrow.)",
        "",
        "## Services",
        "",
        "| service | code | publishes | consumes |",
        "| --- | --- | --- | --- |",
    ]
    for service in SERVICES:
        published = [f"`{c.kind}`" for c in EVENT_TYPES if service in c.publishers]
        consumed = [f"`{c.kind}`" for c in EVENT_TYPES if service in c.consumers]
        lines.append(
            f"| {service} | {SERVICE_PACKAGES[service]} | {', '.join(published) or '-'} "
            f"| {', '.join(consumed) or '-'} |"
        )
    lines += [
        "",
        "## Events",
        "",
        "| event | published by | consumed by (durable) | what it says |",
        "| --- | --- | --- | --- |",
    ]
    for cls in EVENT_TYPES:
        durables = [f"{c} (`{names.durable(c, cls.kind)}`)" for c in cls.consumers]
        summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        lines.append(
            f"| `{cls.kind}` | {_list(cls.publishers)} | "
            f"{', '.join(durables) or '(operators and tools)'} | {summary} |"
        )
    lines += [
        "",
        "## KV buckets",
        "",
        "| bucket | key | value | written by | followed into memory by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for bucket in BUCKETS:
        lines.append(
            f"| `{bucket.name}` | {bucket.key} | `{bucket.value}` | {', '.join(bucket.writers)} "
            f"| {', '.join(bucket.readers)} |"
        )
    lines += [
        "",
        "Registry and rollouts write their buckets (and publish their events) through a",
        "transactional outbox, so a write commits with the state it describes. Nobody in Gaggle",
        f"writes `{names.BUCKET_TENANTS}`: operators put per-tenant settings there.",
        "",
        "## Request-reply",
        "",
        "Outside the stream, on core NATS: a service asks the owner of an id it has not been told",
        "of yet, and records the answer as the event would. Each answering service runs a NATS",
        "micro service `gaggle-<service>` (one queue group for its replicas); nothing is stored,",
        "and an unanswered request is the asker's 503. Models in `gaggle_contracts.rpc`.",
        "",
        "| subject | answered by | asked by | request | reply |",
        "| --- | --- | --- | --- | --- |",
    ]
    for req in RPC_TYPES:
        lines.append(
            f"| `{req.subject()}` | {req.service} | {', '.join(req.callers)} "
            f"| `{req.__name__}` | `{req.reply.__name__}` |"
        )
    lines += workspace()
    lines.append("")
    return "\n".join(lines)


def workspace() -> list[str]:
    """The members of the workspace, by kind, with the members each one depends on."""
    lines = [
        "",
        "## Workspace",
        "",
        "Each member declares every package its code imports (`make deps` checks it with deptry).",
        "Services never import each other; `libs/contracts` imports only pydantic, semver and the",
        "standard library.",
        "",
        "| member | kind | depends on (members) | what it is |",
        "| --- | --- | --- | --- |",
    ]
    for folder, kind in MEMBER_KINDS:
        for manifest in sorted((ROOT / folder).glob("*/pyproject.toml")):
            project = tomllib.loads(manifest.read_text(encoding="utf-8"))["project"]
            ours = [
                re.split(r"[<>=\[; ]", dep, maxsplit=1)[0]
                for dep in project.get("dependencies", [])
                if dep.startswith("gaggle-")
            ]
            lines.append(
                f"| `{folder}/{manifest.parent.name}` ({project['name']}) | {kind} "
                f"| {', '.join(ours) or '-'} | {project.get('description', '')} |"
            )
    return lines


def generate(out: Path) -> list[Path]:
    """Write every generated document under ``out``; return the files written."""
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="gaggle-docs-") as storage:
        apps = build_apps(Path(storage))
        for name, app in apps.items():
            service = app.state.service
            documents = {
                out / "asyncapi" / f"{name}.json": service.asyncapi(),
                out / "openapi" / f"{name}.json": app.openapi(),
            }
            for path, document in documents.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(dump(document), encoding="utf-8")
                written.append(path)
    page = out / "architecture.md"
    page.write_text(architecture(), encoding="utf-8")
    written.append(page)
    return written


def main() -> None:
    """Write the documents into the folder given, else next to this file."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for path in generate(out):
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
