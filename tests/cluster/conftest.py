"""A three-node NATS JetStream cluster of one test: local ``nats-server`` processes on free ports.

Each node has its own client, route and monitoring port and its own JetStream store folder, and
routes to the other two, as ``deploy/compose.yaml``'s ``nats-1`` … ``nats-3`` do. A node can be
killed (SIGKILL, a crash) and started again on the same ports and store.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gaggle_servers import NatsProcess, free_port

CLUSTER_NAME = "gaggle"


class ClusterNode(NatsProcess):
    """One ``nats-server`` of the cluster, with its own route and monitoring port."""

    def __init__(self, name: str, folder: Path) -> None:
        super().__init__(folder / name, log_file=folder / f"{name}.log")
        self.name = name
        self.route_port = free_port()
        self.monitor_port = free_port()
        self.routes: list[str] = []
        """The other nodes' route URLs, as :class:`NatsCluster` sets them before a start."""

    @property
    def route_url(self) -> str:
        """Where the other nodes reach this one."""
        return f"nats://127.0.0.1:{self.route_port}"

    def extra_args(self) -> list[str]:
        """Monitoring, the node's name and its routes to the other nodes."""
        return [
            "-m",
            str(self.monitor_port),
            "--server_name",
            self.name,
            "--cluster_name",
            CLUSTER_NAME,
            "--cluster",
            self.route_url,
            "--routes",
            ",".join(self.routes),
        ]

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def monitor(self, path: str) -> dict[str, Any]:
        """A monitoring endpoint's JSON (``/healthz``, ``/jsz?streams=true``, …)."""
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def healthy(self) -> bool:
        """Whether ``/healthz`` says ok (JetStream up, in contact with a meta leader)."""
        with contextlib.suppress(OSError, ValueError):
            return self.monitor("/healthz").get("status") == "ok"
        return False

    def log_tail(self, lines: int = 10) -> str:
        """The last lines of its log."""
        try:
            text = self.log_file.read_text(errors="replace") if self.log_file else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class NatsCluster:
    """Three routed nodes: ``nats-1`` … ``nats-3``."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        self.nodes = [ClusterNode(f"nats-{i}", folder) for i in range(1, size + 1)]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated, as ``GAGGLE_NATS_URL`` takes them."""
        return ",".join(node.url for node in self.nodes)

    @property
    def routes(self) -> list[str]:
        return [node.route_url for node in self.nodes]

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, then wait until each is healthy (a meta leader is elected)."""
        for node in self.nodes:
            node.routes = self.routes
            node.start()
        self.wait_healthy(self.nodes, timeout)

    def restart(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Start ``node`` again on its ports and store; wait until it is healthy."""
        node.start()
        self.wait_healthy([node], timeout)

    def wait_healthy(self, nodes: list[ClusterNode], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(node.healthy() for node in nodes):
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in nodes)
                raise RuntimeError(f"NATS cluster not healthy after {timeout:.0f} s\n{tails}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A three-node JetStream cluster of this test alone, running."""
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
