"""A rollout on a three-node NATS cluster, two replicas of every service, one node killed midway.

The deployment ``deploy/compose.yaml`` describes, as local processes: three ``nats-server`` nodes
routed into one JetStream cluster (:mod:`tests.cluster.conftest`), and two processes each of
gateway, registry, artifacts and rollouts (``python -m gaggle_<name>``, as ``make run`` starts
them), every one given all three server URLs in ``GAGGLE_NATS_URL`` and
``GAGGLE_NATS_REPLICAS=3``. The stream and the KV buckets exist before, with one replica (a
deployment moved from one server to the cluster): the services raise them to three.

Two simulated fleets play the devices, one behind each gateway (a load balancer that keeps a
device on one gateway, as ``deploy/proxy.conf`` does). In the middle of the rollout the node
leading the ``OTA`` stream gets SIGKILL; it stays away until the other two have elected a new
leader and the fleet has had reports taken without it, then comes back on its ports and store.
Afterwards nothing may be lost or doubled:

* every device has exactly one action, closed as it reported, and the rollout's counters are
  the fleets' tally;
* every feedback report answered 200 is in its action's history; each action has one final
  status row, and the history holds no more rows than the reports the devices sent (those
  answered 200, plus those left unanswered or answered 429, which may have been stored);
* every acknowledged configData is in the registry, with the version and state it implies;
* on the stream, each action was created once and finished once, after its final feedback, and
  every event id appears once; the restarted node holds the same messages as the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js.api import DeliverPolicy

from gaggle_contracts import names
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.db import ensure_database, with_database
from gaggle_runtime.jetstream import bucket_stream, ensure_all
from gaggle_servers import free_port
from gaggle_sim import Fleet
from gaggle_stack.launcher import Launcher
from gaggle_testing import eventually
from tests.cluster.conftest import ClusterNode, NatsCluster
from tests.fleet_support import (
    NEW_VERSION,
    TENANT,
    ServiceProcesses,
    acknowledged,
    expected_attributes,
    feedback_key,
    fleet_config,
    results,
    server_view,
    settled,
    start_rollout,
    upload_image,
)

BOARD = "cluster-board"
DEVICES = int(os.environ.get("GAGGLE_CLUSTER_DEVICES", "100"))
"""Devices in all, half behind each gateway."""
REPLICAS = 2
SERVICES = {
    "gateway": ("gaggle_gateway", "GAGGLE_GATEWAY_"),
    "registry": ("gaggle_registry", "GAGGLE_REGISTRY_"),
    "artifacts": ("gaggle_artifacts", "GAGGLE_ARTIFACTS_"),
    "rollouts": ("gaggle_rollouts", "GAGGLE_ROLLOUTS_"),
}
FINAL = {"closed", "canceled"}
SUITE = os.environ.get("GAGGLE_CLUSTER_TESTS", "") not in ("", "0")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not SUITE, reason="the cluster suite, a minute or two: make test-cluster"),
]


async def connect(nats_url: str) -> Any:
    """A client of the test's own, to every node; quiet about a node that is down on purpose."""

    async def quiet(_: Exception) -> None:
        """The client moves to another node by itself."""

    return await nats.connect(
        nats_url.split(","), error_cb=quiet, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )


class Replicas(ServiceProcesses):
    """``REPLICAS`` processes of each service, each on its own port with its own log."""

    tail_lines = 12

    def __init__(self, folder: Path, nats_url: str, database_url: str) -> None:
        ports = {f"{name}-{i}": free_port() for name in SERVICES for i in range(1, REPLICAS + 1)}
        super().__init__(folder, nats_url, database_url, ports, {"GAGGLE_NATS_REPLICAS": "3"})

    async def start(self, timeout: float = 90.0) -> None:
        (self.folder / "objects").mkdir(parents=True, exist_ok=True)
        for replica, port in self.ports.items():
            module, prefix = SERVICES[replica.rsplit("-", 1)[0]]
            env = {**self.env, f"{prefix}PORT": str(port)}
            launcher = Launcher(module, env, log_file=self.log(replica))
            self.procs[replica] = launcher.start()
        async with httpx.AsyncClient(timeout=2) as client:

            async def all_ready() -> bool:
                self.check_alive()
                for replica in self.ports:
                    if not await self.ready(client, replica):
                        return False
                return True

            await eventually(all_ready, timeout=timeout, interval=0.2, explain=self.tails)


def unanswered_feedback(fleets: list[Fleet]) -> int:
    """Feedback requests not answered 200: answered 429, 5xx, or not at all."""
    total = 0
    for fleet in fleets:
        stats = fleet.stats
        total += stats.throttled.get("feedback", 0) + stats.dropped.get("feedback", 0)
        total += stats.server_errors.get("feedback", 0)
    return total


def problems(
    fleets: list[Fleet], devices: dict[str, Any], actions: dict[str, Any], rollout: dict[str, Any]
) -> list[str]:
    """What the server lost or doubled, one line each."""
    found: list[str] = []
    extra_rows = 0
    for device in (d for fleet in fleets for d in fleet.devices):
        cid = device.controller_id
        mine = actions.get(cid, {})
        if len(mine) != 1:
            found.append(f"{cid}: {len(mine)} actions, not 1: {sorted(mine)}")
        for action_id, action in mine.items():
            history = Counter(action["history"])
            acknowledged = [
                r for r in device.acknowledged if r.kind == "feedback" and r.action_id == action_id
            ]
            for report in acknowledged:
                status = report.body["status"]
                key = feedback_key(
                    status["execution"], status["result"]["finished"], status["details"]
                )
                if history[key] > 0:
                    history[key] -= 1
                else:
                    found.append(f"{cid}: action {action_id} lacks acknowledged {key}")
            extra_rows += max(0, len(action["history"]) - len(acknowledged))
            finals = [row for row in action["history"] if row[0] in FINAL]
            if len(finals) != 1:
                found.append(f"{cid}: action {action_id} has {len(finals)} final rows: {finals}")
            wanted = "error" if device.behaviour.fails else "finished"
            if action["status"] != wanted or action["active"]:
                found.append(f"{cid}: action {action_id} is {action['status']}, not {wanted}")
        attributes = expected_attributes(device)
        seen = devices.get(cid)
        if attributes is None or seen is None:
            found.append(f"{cid}: registry has {seen}, acknowledged configData {attributes}")
            continue
        if any(seen["attributes"].get(k) != v for k, v in attributes.items()):
            found.append(f"{cid}: registry shows {seen['attributes']}, acknowledged {attributes}")
        state = "error" if device.behaviour.fails else "success"
        shown = (seen["hw_model"], seen["sw_version"], seen["update_state"])
        if shown != (attributes["hw_boardname"], attributes["sw_version"], state):
            found.append(f"{cid}: registry has board, version, state {shown}; expected {state}")
    unanswered = unanswered_feedback(fleets)
    if extra_rows > unanswered:
        found.append(
            f"{extra_rows} history rows beyond the acknowledged reports, but only {unanswered} "
            "feedback requests went unanswered: reports were stored twice"
        )
    failing = sum(1 for fleet in fleets for d in fleet.devices if d.behaviour.fails)
    counters = rollout.get("counters") or {}
    wanted_counters = {"total": DEVICES, "success": DEVICES - failing, "failure": failing}
    if {k: counters.get(k) for k in wanted_counters} != wanted_counters or (
        rollout.get("state") != "finished"
    ):
        found.append(
            f"rollout {rollout.get('id')} is {rollout.get('state')} with counters {counters}; "
            f"expected finished with {wanted_counters}"
        )
    return found


async def stream_events(nats_url: str) -> list[tuple[int, str, dict[str, Any]]]:
    """Every action event of the tenant on the ``OTA`` stream: ``(sequence, kind, payload)``."""
    nc = await connect(nats_url)
    events: list[tuple[int, str, dict[str, Any]]] = []
    try:
        js = nc.jetstream()
        subject = names.subject(TENANT, "action.*")
        info = await js.stream_info(names.STREAM, subjects_filter=subject)
        expected = sum((info.state.subjects or {}).values())
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while len(events) < expected:
                msg = await sub.next_msg(timeout=5)
                kind = msg.subject.rsplit(".", 2)[-2] + "." + msg.subject.rsplit(".", 1)[-1]
                events.append((msg.metadata.sequence.stream, kind, json.loads(msg.data)))
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return events


def stream_problems(
    events: list[tuple[int, str, dict[str, Any]]], actions: dict[str, Any]
) -> list[str]:
    """Actions created or finished other than once, out of order, or an event stored twice."""
    found: list[str] = []
    ids = Counter(payload["event_id"] for _, _, payload in events)
    doubled = [event_id for event_id, n in ids.items() if n > 1]
    if doubled:
        found.append(f"{len(doubled)} event ids stored more than once: {doubled[:5]}")
    created: dict[str, list[int]] = {}
    finished: dict[str, list[int]] = {}
    final_feedback: dict[str, int] = {}
    for seq, kind, payload in events:
        action_id = str(payload.get("action_id"))
        if kind == "action.created":
            created.setdefault(action_id, []).append(seq)
        elif kind == "action.finished":
            finished.setdefault(action_id, []).append(seq)
        elif kind == "action.feedback" and payload["status"]["execution"] in FINAL:
            final_feedback.setdefault(action_id, seq)
    ours = {action_id for per_device in actions.values() for action_id in per_device}
    for action_id in sorted(ours, key=int):
        made, done = created.get(action_id, []), finished.get(action_id, [])
        if len(made) != 1 or len(done) != 1:
            found.append(
                f"action {action_id}: {len(made)} action.created and {len(done)} "
                "action.finished events, not one each"
            )
            continue
        report = final_feedback.get(action_id)
        if not made[0] < done[0] or report is None or not report < done[0]:
            found.append(
                f"action {action_id}: created at {made[0]}, final feedback at {report}, "
                f"finished at {done[0]}: not in this order"
            )
    return found


def node_states(cluster: NatsCluster) -> dict[str, tuple[int, int]]:
    """``(messages, last sequence)`` of the ``OTA`` stream as each node stores it."""
    states = {}
    for node in cluster.nodes:
        jsz = node.monitor("/jsz?streams=true")
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                if stream["name"] == names.STREAM:
                    state = stream["state"]
                    states[node.name] = (state["messages"], state["last_seq"])
    return states


async def stream_leader(nats_url: str, stream: str = names.STREAM) -> str:
    nc = await connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    assert info.cluster is not None and info.cluster.leader, info
    return info.cluster.leader


async def replicas_of(nats_url: str) -> dict[str, tuple[int, int]]:
    """Per stream (``OTA`` and each bucket's): configured replicas and peers that are current."""
    nc = await connect(nats_url)
    found = {}
    try:
        js = nc.jetstream()
        for stream in (names.STREAM, *(bucket_stream(b) for b in names.BUCKETS)):
            info = await js.stream_info(stream)
            peers = (info.cluster.replicas or []) if info.cluster else []
            leader = 1 if info.cluster and info.cluster.leader else 0
            found[stream] = (
                info.config.num_replicas or 1,
                leader + sum(1 for p in peers if p.current),
            )
    finally:
        await nc.close()
    return found


def fleet(services: Replicas, gateway: str, prefix: str, count: int, seed: int) -> Fleet:
    return Fleet(
        fleet_config(
            f"{services.url(gateway)}/DEFAULT",
            count,
            id_prefix=prefix,
            board=BOARD,
            seed=seed,
            connections=16,
            slow_share=0.3,
            slow_install_seconds=5.0,
        )
    )


@pytest.mark.timeout(420)
async def test_rollout_on_a_cluster_loses_and_doubles_nothing_when_a_node_dies(
    nats_cluster: NatsCluster,
    restartable_postgres: Any,  # conftest.RestartablePostgres
    tmp_path: Path,
) -> None:
    database_url = with_database(restartable_postgres.url, "gaggle")
    await ensure_database(database_url)
    url = nats_cluster.url

    # A deployment moved from one server: the stream and buckets exist with one replica.
    nc = await connect(url)
    try:
        await ensure_all(nc.jetstream(), CommonSettings(nats_url=url, nats_replicas=1))
    finally:
        await nc.close()
    assert {r for r, _ in (await replicas_of(url)).values()} == {1}

    services = Replicas(tmp_path, url, database_url)
    half = DEVICES // 2
    fleets = [
        fleet(services, "gateway-1", "cla-", half, seed=21),
        fleet(services, "gateway-2", "clb-", DEVICES - half, seed=22),
    ]
    figures: dict[str, Any] = {}

    def state() -> str:
        stats = [f.stats.snapshot() for f in fleets]
        nodes = "\n".join(f"--- {n.name} log\n{n.log_tail(6)}" for n in nats_cluster.nodes)
        return f"figures: {figures}\nfleets: {stats}\n{nodes}\n{services.tails()}"

    try:
        await services.start()
        # Every service asked for three replicas: the stream and every bucket have them now.
        await eventually(
            lambda: _all_replicated(url),
            timeout=30,
            interval=0.5,
            explain=lambda: f"streams not at three current replicas\n{state()}",
        )
        async with httpx.AsyncClient(timeout=15) as client:
            software_id = await upload_image(
                client, services.url("artifacts-1"), services.headers, "cluster", BOARD
            )
            # The other replica serves the same catalogue.
            r = await client.get(
                f"{services.url('artifacts-2')}/api/v1/software/{software_id}",
                headers=services.headers,
            )
            assert r.status_code == 200 and r.json()["version"] == NEW_VERSION, r.text
            for f in fleets:
                await f.start()

            async def known() -> bool:
                services.check_alive()
                conn = await asyncpg.connect(database_url)
                try:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM rollouts.devices WHERE tenant = $1 AND hw_model = $2",
                        TENANT,
                        BOARD,
                    )
                finally:
                    await conn.close()
                return bool(n == DEVICES)

            await eventually(
                known, timeout=60, interval=0.2, explain=lambda: f"devices not known\n{state()}"
            )
            body = {
                "name": "cluster",
                "software_id": software_id,
                "filter": {"hw_model": BOARD},
                "waves": [{"percent": 30}, {"percent": 70}],
                "success_threshold": 60,
                "error_threshold": 50,
                "start": True,
            }
            rollout = await start_rollout(
                client, services.url("rollouts-2"), services.headers, body
            )
            rollout_id = rollout["id"]

            async def first_results() -> bool:
                services.check_alive()
                return results(fleets) > 0

            await eventually(
                first_results, timeout=60, interval=0.2, explain=lambda: f"no results\n{state()}"
            )

            # Kill the node that leads the stream: its clients move, the stream elects anew.
            leader = await stream_leader(url)
            victim: ClusterNode = nats_cluster.node(leader)
            connz = victim.monitor("/connz?limit=1024")
            figures["clients_on_killed_node"] = sum(
                1
                for c in connz.get("connections") or []
                if str(c.get("name")).startswith("gaggle-")
            )
            figures["results_before_kill"] = results(fleets)
            killed = time.monotonic()
            await asyncio.to_thread(victim.kill)
            figures["killed"] = victim.name

            async def elected() -> str | None:
                services.check_alive()
                with contextlib.suppress(Exception):  # JetStream may not answer meanwhile
                    leader = await stream_leader(url)
                    return leader if leader != victim.name else None
                return None

            figures["new_leader"] = await eventually(
                elected,
                timeout=30,
                interval=0.2,
                explain=lambda: f"no new leader of the stream\n{state()}",
            )
            figures["leader_elected_after_s"] = round(time.monotonic() - killed, 2)
            before = acknowledged(fleets)

            async def served_without_it() -> bool:
                services.check_alive()
                return acknowledged(fleets) > before

            await eventually(
                served_without_it,
                timeout=30,
                interval=0.05,
                explain=lambda: f"nothing taken without {victim.name}\n{state()}",
            )
            figures["report_taken_after_kill_s"] = round(time.monotonic() - killed, 2)
            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - killed)))
            await asyncio.to_thread(nats_cluster.restart, victim)
            figures["down_s"] = round(time.monotonic() - killed, 1)

            async def done() -> bool:
                services.check_alive()
                return settled(fleets, DEVICES)

            await eventually(
                done, timeout=180, interval=0.2, explain=lambda: f"not all done\n{state()}"
            )
            for f in fleets:
                await f.stop()

            found: list[str] = []
            deadline = time.monotonic() + 30
            while True:
                devices, actions = await server_view(database_url, "cl%", device_reports_only=True)
                r = await client.get(
                    f"{services.url('rollouts-1')}/api/v1/rollouts/{rollout_id}",
                    headers=services.headers,
                )
                assert r.status_code == 200, r.text
                found = problems(fleets, devices, actions, r.json())
                if not found:
                    found = stream_problems(await stream_events(url), actions)
                if not found or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert not found, f"{len(found)} problems\n" + "\n".join(found[:30]) + f"\n{state()}"

            # The restarted node caught up: it stores what the others store.
            def same_everywhere() -> bool:
                states = node_states(nats_cluster)
                return len(states) == len(nats_cluster.nodes) and len(set(states.values())) == 1

            await eventually(
                same_everywhere,
                timeout=30,
                interval=0.5,
                explain=lambda: f"nodes differ: {node_states(nats_cluster)}\n{state()}",
            )
            figures["stream"] = node_states(nats_cluster)[victim.name]
            figures["feedback_unanswered"] = unanswered_feedback(fleets)
        print(  # noqa: T201 - the figures, shown by pytest -rP
            f"cluster: {DEVICES} devices, {REPLICAS} replicas of each service; killed "
            f"{figures['killed']} (the OTA leader) after {figures['results_before_kill']} "
            f"results; {figures['clients_on_killed_node']} service connections moved to other "
            f"nodes; new leader {figures['new_leader']} {figures['leader_elected_after_s']} s "
            f"and a report taken {figures['report_taken_after_kill_s']} s after the kill; "
            f"down {figures['down_s']} s; stream "
            f"(messages, last seq) {figures['stream']} on every node; feedback requests "
            f"unanswered or 429: {figures['feedback_unanswered']}"
        )
    finally:
        for f in fleets:
            await f.stop()
        services.stop()


async def _all_replicated(url: str) -> bool:
    found = await replicas_of(url)
    return all(found[stream] == (3, 3) for stream in found)
