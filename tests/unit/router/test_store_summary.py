"""Stats assembly shared by the store backends (counts in, wire.Stats out)."""

from __future__ import annotations

from agentarmy.api import wire
from agentarmy.api.wire import AgentInfo
from agentarmy.router.store.summary import build_stats

NOW = 1_000.0
LIVENESS = 60.0


def info(name: str, fleet: str = "f", namespace: str = "ns", beat: float = NOW) -> AgentInfo:
    return AgentInfo(
        namespace=namespace,
        name=name,
        fleet=fleet,
        capabilities=["echo"],
        templateHash=f"h-{name}",
        registeredAt=0.0,
        lastHeartbeat=beat,
        ready=name != "draining",
    )


def test_counts_become_fleet_stats() -> None:
    stats = build_stats(
        NOW,
        LIVENESS,
        phases={
            ("ns", "f", "Queued"): 3,
            ("ns", "f", "Pending"): 1,
            ("ns", "f", "Running"): 2,
            ("ns", "f", "Succeeded"): 5,
            ("ns", "f", "Failed"): 1,
            ("ns", "f", "DeadLettered"): 1,
            ("ns", "f", "Cancelled"): 4,
        },
        depths={("ns", "f", 50): 1, ("ns", "f", 10): 2, ("ns", "f", 99): 0},
        running={"ns/a2": 2, "other/a1": 7},
        agents=[
            (info("a2"), 3, 1),
            (info("a1", beat=NOW - LIVENESS - 1), 2, 0),
            (info("draining", beat=NOW - LIVENESS), 0, 0),
        ],
        templates={("ns", "f", "zz"): (4, 1), ("ns", "f", "aa"): (3, 0)},
    )
    assert stats.generatedAt == NOW
    (fleet,) = stats.fleets
    assert (fleet.namespace, fleet.fleet) == ("ns", "f")
    assert (fleet.queued, fleet.running, fleet.succeeded) == (4, 2, 5)
    assert (fleet.failed, fleet.deadLettered, fleet.cancelled) == (1, 1, 4)
    assert list(fleet.queuedByPriority.items()) == [("10", 2), ("50", 1)]
    assert [a.name for a in fleet.agents] == ["a1", "a2", "draining"]
    a1, a2, draining = fleet.agents
    assert a2 == wire.AgentStats(
        name="a2",
        ready=True,
        live=True,
        templateHash="h-a2",
        running=2,
        succeeded=3,
        failed=1,
        lastHeartbeat=NOW,
    )
    assert (a1.live, a1.running, a1.succeeded) == (False, 0, 2)
    assert draining.live and not draining.ready
    assert fleet.templates == [
        wire.TemplateStats(templateHash="aa", attempts=3, failures=0, errorRate=0.0),
        wire.TemplateStats(templateHash="zz", attempts=4, failures=1, errorRate=0.25),
    ]


def test_fleets_come_from_tasks_and_agents_in_order() -> None:
    stats = build_stats(
        NOW,
        LIVENESS,
        # Counters keep keys whose count went back to zero: the fleet still shows.
        phases={("ns", "b", "Queued"): 0, ("ns", "b", "Succeeded"): 1, ("a", "z", "Running"): 1},
        depths={("ns", "b", 0): 0},
        running={},
        agents=[(info("idle", fleet="c"), 0, 0), (info("x", fleet="z", namespace="a"), 0, 0)],
        templates={("ns", "b", "gone"): (0, 0)},
    )
    assert [(f.namespace, f.fleet) for f in stats.fleets] == [("a", "z"), ("ns", "b"), ("ns", "c")]
    _, b, c = stats.fleets
    assert (b.queued, b.succeeded, b.queuedByPriority, b.templates) == (0, 1, {}, [])
    assert [a.name for a in c.agents] == ["idle"] and c.queued == c.running == 0
    assert c.templates == [] and c.queuedByPriority == {}


def test_no_counts_no_fleets() -> None:
    empty = build_stats(NOW, LIVENESS, phases={}, depths={}, running={}, agents=[], templates={})
    assert empty == wire.Stats(generatedAt=NOW, fleets=[])
