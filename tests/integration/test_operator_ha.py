"""Levels, not memory: restarts converge without duplicates; of two replicas
exactly one reconciles, and the standby takes over in bounded time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.operator_process import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    apply,
    get_json,
    wait_for,
)
from tests.integration.test_operator import agents, fleet_manifest, pods, wait_fleet

pytestmark = pytest.mark.integration

LEASE_SECONDS = 6.0


def reconciles(process: OperatorProcess) -> float:
    try:
        values = process.metrics()
    except OSError:
        return 0.0
    return sum(v for k, v in values.items() if k.startswith("agentarmy_operator_reconciles_total"))


def assert_one_agent_per_pod(cluster: Any, namespace: str, replicas: int) -> None:
    """Exactly ``replicas`` Agents, and (once the garbage collector has removed
    the pods of deleted Agents) exactly one Pod per Agent."""
    live = [a for a in agents(cluster, namespace) if not a["metadata"].get("deletionTimestamp")]
    assert len(live) == replicas
    expected = sorted(a["metadata"]["name"] for a in live)

    def pods_match() -> bool:
        names = sorted(
            p["metadata"]["name"]
            for p in pods(cluster, namespace)
            if not p["metadata"].get("deletionTimestamp")
        )
        assert set(expected) <= set(names), f"agents without pods: {set(expected) - set(names)}"
        return names == expected

    wait_for(pods_match, 60, what="one pod per agent")


def test_sigkill_mid_rollout_then_restart_converges(cluster: Any, namespace: str) -> None:
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    first = OperatorProcess(cluster.kubeconfig, "restart-a", LEASE_SECONDS).start()
    second = OperatorProcess(cluster.kubeconfig, "restart-b", LEASE_SECONDS)
    try:
        wait_for(first.is_leader, 40, what="first operator to lead")
        apply(cluster, namespace, fleet_manifest("phoenix", 8, min_ready_seconds=2))
        wait_fleet(cluster, namespace, "phoenix", 8)
        apply(cluster, namespace, fleet_manifest("phoenix", 8, image_tag="2", min_ready_seconds=2))

        def mid_rollout() -> bool:
            status = get_json(cluster, "fleet", "phoenix", "-n", namespace).get("status", {})
            return 0 < status.get("updatedReplicas", 0) < 8

        wait_for(mid_rollout, 30, interval=0.1, what="the rollout to be under way")
        first.kill()
        second.start()
        wait_for(second.is_leader, LEASE_SECONDS + 30, what="the restarted operator to lead")
        wait_fleet(cluster, namespace, "phoenix", 8, timeout=120)
        assert_one_agent_per_pod(cluster, namespace, 8)
        images = {p["spec"]["containers"][0]["image"] for p in pods(cluster, namespace)}
        assert images == {"ghcr.io/agentarmy/agent:2"}
    finally:
        first.kill()
        second.stop()


def test_two_replicas_one_leader_and_bounded_failover(cluster: Any, namespace: str) -> None:
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    replicas = [
        OperatorProcess(cluster.kubeconfig, f"ha-{i}", LEASE_SECONDS).start() for i in range(2)
    ]
    try:
        leader = wait_for(
            lambda: next((r for r in replicas if r.is_leader()), None), 40, what="a leader"
        )
        standby = next(r for r in replicas if r is not leader)
        apply(cluster, namespace, fleet_manifest("duo", 5))
        wait_fleet(cluster, namespace, "duo", 5)
        # Watch both for a while: never two leaders, and the standby never reconciles.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert [r.is_leader() for r in replicas].count(True) == 1
            assert reconciles(standby) == 0
            time.sleep(0.2)
        assert_one_agent_per_pod(cluster, namespace, 5)

        leader.kill()
        killed_at = time.monotonic()
        wait_for(standby.is_leader, LEASE_SECONDS + 10, interval=0.1, what="the standby to lead")
        takeover = time.monotonic() - killed_at
        print(
            f"standby took over {takeover:.1f}s after the leader was SIGKILLed "
            f"(lease {LEASE_SECONDS}s)"
        )
        assert takeover <= LEASE_SECONDS + 3
        cluster.kubectl("scale", "-n", namespace, "fleet/duo", "--replicas=7")
        wait_fleet(cluster, namespace, "duo", 7)
        assert_one_agent_per_pod(cluster, namespace, 7)
    finally:
        for replica in replicas:
            replica.stop()
