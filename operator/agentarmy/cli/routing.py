"""armyctl agents: how the router sees each agent (results, score, circuit breaker)."""

from __future__ import annotations

import argparse
import time

from agentarmy.api import wire
from agentarmy.cli import output
from agentarmy.cli.tasks import router_command
from agentarmy.router.client import RouterClient


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agents = router_command(
        sub, "agents", "per agent: running, results, routing score and breaker", _agents, wide=True
    )
    agents.add_argument("--fleet", help="only this fleet")
    agents.add_argument(
        "-A", "--all-namespaces", action="store_true", help="agents of every namespace"
    )


AGENT_WIDE = ("READY", "TEMPLATE")


def agent_rows(stats: wire.Stats, now: float) -> list[tuple[str, ...]]:
    """The table ``armyctl agents`` prints, header first (fleets and agents in stats order);
    the AGENT_WIDE columns show with ``-o wide``."""
    rows: list[tuple[str, ...]] = [
        (
            "NAMESPACE",
            "FLEET",
            "AGENT",
            "LIVE",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "SUCCESS",
            "LATENCY",
            "SCORE",
            "BREAKER",
            "HEARTBEAT",
            *AGENT_WIDE,
        )
    ]
    for fleet in stats.fleets:
        for agent in fleet.agents:
            rows.append(
                (
                    fleet.namespace,
                    fleet.fleet,
                    agent.name,
                    "yes" if agent.live else "no",
                    str(agent.running),
                    str(agent.succeeded),
                    str(agent.failed),
                    f"{agent.successRate:.0%}",
                    f"{agent.latencySeconds * 1000:.0f}ms" if agent.latencySeconds else "-",
                    f"{agent.score:.2f}",
                    agent.breaker,
                    f"{max(0.0, now - agent.lastHeartbeat):.0f}s ago",
                    "yes" if agent.ready else "no",
                    agent.templateHash or "-",
                )
            )
    return rows


async def _agents(client: RouterClient, args: argparse.Namespace) -> int:
    stats = await client.stats()
    stats.fleets = [
        fleet
        for fleet in stats.fleets
        if (args.all_namespaces or fleet.namespace == args.namespace)
        and (args.fleet is None or fleet.fleet == args.fleet)
    ]
    output.show(
        args.output,
        stats,
        lambda wide: output.table(agent_rows(stats, time.time()), AGENT_WIDE, wide),
    )
    return 0
