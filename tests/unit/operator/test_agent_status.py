"""Agent status from what the reconciler saw: pure, table-driven."""

from __future__ import annotations

from agentarmy.operator.agents import Observation, agent_status
from agentarmy.operator.cache import AgentView, PodView


def agent(status: dict[str, object] | None = None) -> AgentView:
    return AgentView(
        namespace="ns",
        name="a",
        uid="u",
        resource_version="1",
        generation=2,
        created="",
        deleting=False,
        labels={},
        owner_uid="",
        ready=False,
        ready_since="",
        spec={},
        status=status or {},
    )


def pod(phase: str = "Running", ready: bool = True, exit_code: int | None = None) -> PodView:
    return PodView(
        name="a",
        uid="p",
        phase=phase,
        ready=ready,
        pod_hash="h",
        deleting=False,
        exit_code=exit_code,
        exit_reason="Error" if exit_code else "",
        created="",
    )


def conditions(status: object) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}  # type: ignore[attr-defined]


def test_ready_pod_makes_a_running_agent() -> None:
    status = agent_status(agent(), "", Observation(pod(), "h"))
    assert status.phase == "Running"
    assert conditions(status) == {
        "Ready": ("True", "PodReady"),
        "Progressing": ("False", "Reconciled"),
        "Degraded": ("False", "AgentRunning"),
    }
    assert (status.observedGeneration, status.podName, status.templateHash) == (2, "a", "h")


def test_exited_process_is_degraded_and_counted() -> None:
    failed = pod("Failed", ready=False, exit_code=137)
    status = agent_status(
        agent({"podRestarts": 2}), "", Observation(failed, "h", replaced_exited=failed)
    )
    assert status.phase == "Degraded"
    assert conditions(status)["Degraded"] == ("True", "AgentExited")
    assert "137" in next(c.message for c in status.conditions if c.type == "Degraded")
    assert status.podRestarts == 3


def test_degraded_stays_until_the_new_pod_is_ready() -> None:
    exited = agent_status(
        agent(),
        "",
        Observation(pod("Failed", False, 1), "h", replaced_exited=pod("Failed", False, 1)),
    )
    pending = agent_status(
        agent(exited.model_dump(mode="json")), "", Observation(pod("Pending", ready=False), "h")
    )
    assert conditions(pending)["Degraded"][0] == "True"
    recovered = agent_status(agent(pending.model_dump(mode="json")), "", Observation(pod(), "h"))
    assert conditions(recovered)["Degraded"] == ("False", "AgentRunning")
    assert recovered.podRestarts == 1


def test_pod_create_failure_is_reported() -> None:
    status = agent_status(
        agent(),
        "",
        Observation(None, "h"),
        create_error="cannot create pod: forbidden by PodSecurity",
    )
    assert conditions(status)["Ready"] == ("False", "PodCreateFailed")
    assert status.phase == "Degraded"


def test_invalid_spec_is_reported() -> None:
    status = agent_status(agent(), "spec.concurrency: too big", Observation(None, ""))
    assert status.phase == "Failed"
    assert conditions(status)["Degraded"] == ("True", "InvalidSpec")


def test_router_figures_are_written_only_when_they_change() -> None:
    from agentarmy.api import wire
    from agentarmy.operator.stats import HEARTBEAT_REFRESH_SECONDS, agent_news, rfc3339

    now = 1_800_000_000.0
    figures = wire.AgentStats(
        name="a",
        ready=True,
        live=True,
        templateHash="h",
        running=0,
        succeeded=5,
        failed=1,
        lastHeartbeat=now - 3,
    )
    fresh = {"tasksSucceeded": 5, "tasksFailed": 1, "lastHeartbeatTime": rfc3339(now - 60)}
    assert agent_news(fresh, figures, now) == {}
    moved = agent_news({**fresh, "tasksSucceeded": 4}, figures, now)
    assert moved == {"tasksSucceeded": 5, "tasksFailed": 1, "lastHeartbeatTime": rfc3339(now - 3)}
    old_heartbeat = {**fresh, "lastHeartbeatTime": rfc3339(now - HEARTBEAT_REFRESH_SECONDS - 1)}
    assert agent_news(old_heartbeat, figures, now)["lastHeartbeatTime"] == rfc3339(now - 3)
