"""``deploy/compose.yaml`` describes the cluster it says: read as YAML, without Docker.

Three routed NATS nodes with a store each; two replicas of every Gaggle service, each given every
node and three replicas for the stream and buckets; one proxy publishing each service's port in
front of its replicas (``deploy/proxy.conf``); images built from ``deploy/Dockerfile`` for
workspace packages that exist.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gaggle_contracts.settings import CommonSettings, nats_servers

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NODES = ("nats-1", "nats-2", "nats-3")
GAGGLE = {
    "gateway": 8080,
    "registry": 8081,
    "artifacts": 8082,
    "rollouts": 8083,
    "console": 8084,
}
"""Each Gaggle service and the port it listens on (and the proxy publishes)."""
_DEFAULTED = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def interpolated(value: Any) -> str:
    """``value`` as compose reads it with no variable set: each ``${NAME:-default}`` its default."""
    return _DEFAULTED.sub(lambda m: m.group(2), str(value))


def option(command: list[str], name: str) -> str:
    """The value following ``name`` in a command line."""
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def published(service: dict[str, Any]) -> list[int]:
    """Host ports a service publishes."""
    return [int(str(p).split(":")[0]) for p in service.get("ports") or []]


def test_three_routed_nats_nodes_each_with_its_own_store(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "nats" not in services, "the single server is replaced by the cluster"
    cluster_names, volumes = set(), []
    for node in NODES:
        command = services[node]["command"]
        assert "-js" in command
        assert option(command, "--server_name") == node
        cluster_names.add(option(command, "--cluster_name"))
        assert urlsplit(option(command, "--cluster")).port == 6222
        routes = {
            urlsplit(u).hostname: urlsplit(u).port for u in option(command, "--routes").split(",")
        }
        assert routes == dict.fromkeys(NODES, 6222), routes
        store = option(command, "-sd")
        mounts = [str(v).split(":") for v in services[node]["volumes"]]
        assert [m[0] for m in mounts if m[1] == store] != [], f"{node}: no volume at {store}"
        volumes += [m[0] for m in mounts if m[1] == store]
        assert "js-enabled-only" in " ".join(services[node]["healthcheck"]["test"])
        assert services[node]["restart"] == "unless-stopped"
    assert len(cluster_names) == 1
    assert sorted(volumes) == sorted(set(volumes)) and len(volumes) == len(NODES), volumes
    assert set(volumes) <= set(compose["volumes"])


def test_two_replicas_of_each_service_on_every_node_with_three_replicas_of_the_stream(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in GAGGLE:
        service = services[name]
        assert service["deploy"]["replicas"] == 2, name
        assert not service.get("ports"), f"{name} publishes a port: its replicas would collide"
        env = {k: interpolated(v) for k, v in service["environment"].items()}
        servers = nats_servers(env["GAGGLE_NATS_URL"])
        assert [(urlsplit(s).hostname, urlsplit(s).port) for s in servers] == [
            (node, 4222) for node in NODES
        ]
        settings = CommonSettings(
            nats_url=env["GAGGLE_NATS_URL"], nats_replicas=int(env["GAGGLE_NATS_REPLICAS"])
        )
        assert (settings.stream_replicas, settings.kv_replicas) == (3, 3)
        assert settings.stream_replicas <= len(NODES)
        assert env[f"GAGGLE_{name.upper()}_PORT"] == str(GAGGLE[name])
        assert env[f"GAGGLE_{name.upper()}_HOST"] == "0.0.0.0"  # noqa: S104 - inside a container
        if name != "console":
            for node in NODES:
                assert service["depends_on"][node]["condition"] == "service_healthy", name


def test_the_images_are_workspace_packages_built_by_the_dockerfile(
    compose: dict[str, Any],
) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG SERVICE$", dockerfile, re.MULTILINE)
    packages = {
        tomllib.loads(p.read_text())["project"]["name"]
        for p in (ROOT / "services").glob("*/pyproject.toml")
    }
    built = set()
    for name in GAGGLE:
        build = compose["services"][name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        built.add(build["args"]["SERVICE"])
        assert build["args"]["SERVICE"] == f"gaggle-{name}"
    assert built == packages


def test_the_proxy_publishes_each_port_once_in_front_of_the_replicas(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    proxy = services["proxy"]
    assert sorted(published(proxy)) == sorted(GAGGLE.values())
    everywhere = [port for service in services.values() for port in published(service)]
    assert len(everywhere) == len(set(everywhere)), "a host port is published twice"
    mount = next(str(v) for v in proxy["volumes"] if "proxy.conf" in str(v))
    source, target = mount.split(":")[:2]
    assert (DEPLOY / source).resolve() == DEPLOY / "proxy.conf"
    assert target == "/etc/nginx/conf.d/default.conf"
    for name in GAGGLE:
        assert proxy["depends_on"][name]["condition"] == "service_healthy"

    conf = (DEPLOY / "proxy.conf").read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.DOTALL))
    listens = re.findall(r"listen (\d+);\s*location / \{ proxy_pass http://(\w+); \}", conf)
    assert sorted((int(port), up) for port, up in listens) == sorted(
        (port, name) for name, port in GAGGLE.items()
    )
    for name, port in GAGGLE.items():
        body = upstreams[name]
        assert f"server {name}:{port} resolve;" in body, body
        assert "zone " in body
    # A device stays on one gateway; an operator on the console holding their session.
    assert "hash $ddi_device consistent;" in upstreams["gateway"]
    assert "hash $remote_addr consistent;" in upstreams["console"]
    assert "resolver 127.0.0.11" in conf
    # The console reaches the APIs through the proxy, on the ports that lead to them.
    env = services["console"]["environment"]
    for name in ("registry", "rollouts", "artifacts"):
        url = urlsplit(env[f"GAGGLE_CONSOLE_{name.upper()}_URL"])
        assert (url.hostname, url.port) == ("proxy", GAGGLE[name])


def test_the_device_key_of_the_gateway_hash_is_tenant_and_controller_id() -> None:
    conf = (DEPLOY / "proxy.conf").read_text()
    pattern, value = re.search(r"~\^(\S+)\s+(\S+);", conf).groups()  # type: ignore[union-attr]
    regex = re.compile("^" + pattern)
    key = value.replace("$1", r"\1").replace("$2", r"\2")
    for path in (
        "/DEFAULT/controller/v1/dev-1",
        "/DEFAULT/controller/v1/dev-1/deploymentBase/7",
        "/DEFAULT/controller/v1/dev-1/softwaremodules/1/artifacts/a.swu",
    ):
        match = regex.match(path)
        assert match is not None, path
        assert match.expand(key) == "DEFAULT/dev-1"
