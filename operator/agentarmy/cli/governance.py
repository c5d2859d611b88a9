"""armyctl approvals | approve | reject | resume | rules: the router's runtime governance,
for the people who run it. Decisions are recorded with the token's principal."""

from __future__ import annotations

import argparse
import json
import time

from agentarmy.api import wire
from agentarmy.api.rules import AllRules, FleetRules
from agentarmy.cli import output
from agentarmy.cli.tasks import router_command
from agentarmy.router.client import RouterClient


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resume = router_command(
        sub, "resume", "resume dispatch to a fleet the sentinel halted (recorded)", _resume
    )
    resume.add_argument("target", metavar="fleet/NAME", help="the halted fleet")
    resume.add_argument("--reason", default="", help="why, for the record")

    router_command(sub, "rules", "show the runtime rules the router enforces", _rules, wide=True)

    listing = router_command(
        sub, "approvals", "list tool calls waiting for a person", _approvals, wide=True
    )
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    approve = router_command(sub, "approve", "approve the call a task waits on", _approve)
    approve.add_argument("task_id")
    approve.add_argument("--reason", default="", help="why, for the record")
    reject = router_command(sub, "reject", "reject the call a task waits on", _reject)
    reject.add_argument("task_id")
    reject.add_argument("--reason", required=True, help="why (the model is told)")


def _fleet_name(target: str) -> str:
    kind, _, name = target.rpartition("/")
    if kind not in ("", "fleet", "fleets") or not name:
        raise ValueError(f"expected fleet/NAME, not {target!r}")
    return name


async def _resume(client: RouterClient, args: argparse.Namespace) -> int:
    resumed = await client.resume(args.namespace, _fleet_name(args.target), args.reason)
    fleet = f"fleet {resumed.namespace}/{resumed.fleet}"
    if resumed.wasHalted is None:
        text = f"{fleet} was not halted; nothing to resume"
    else:
        text = f"{fleet} resumed by {resumed.resumedBy} (was: {resumed.wasHalted.message})"
    output.show(args.output, resumed, lambda _wide: text)
    return 0


async def _rules(client: RouterClient, args: argparse.Namespace) -> int:
    everything = await client.rules_in_force()
    output.show(args.output, everything, lambda wide: rules_table(everything, wide))
    return 0


RULES_WIDE = ("DEPTH", "POLICIES")


def rules_table(everything: AllRules, wide: bool) -> str:
    """The table ``armyctl rules`` prints: a fleet a row; RULES_WIDE with ``-o wide``."""
    rows = [
        ("NAMESPACE", "FLEET", "RATE", "BUDGETS", "TOOLS", "APPROVALS", "SENTINEL", *RULES_WIDE)
    ]
    for group in everything.namespaces:
        for fleet in group.fleets:
            depth = f"{fleet.maxTaskDepth.value:g}" if fleet.maxTaskDepth else "-"
            policies = ",".join(fleet.policies) or "-"
            rows.append((group.namespace, fleet.fleet, *_summary(fleet), depth, policies))
    return output.table(rows, RULES_WIDE, wide)


def _summary(rules: FleetRules) -> tuple[str, str, str, str, str]:
    rate = f"{rules.tasksPerMinute.value:g}/min" if rules.tasksPerMinute else "-"
    budgets = ",".join(f"{b.tokens}/{b.windowSeconds:g}s" for b in rules.tokenBudgets) or "-"
    tools = ";".join(",".join(entry.globs) for entry in rules.allowedTools) or "-"
    approvals = ",".join(entry.tool for entry in rules.approvalTools) or "-"
    bounds = rules.sentinel
    sentinel = ",".join(
        f"{name}={getattr(bounds, name).value:g}"
        for name in ("maxErrorRate", "maxTokensPerHour", "maxCostPerHour")
        if getattr(bounds, name) is not None
    )
    return rate, budgets, tools, approvals, sentinel or "-"


async def _approvals(client: RouterClient, args: argparse.Namespace) -> int:
    found = await client.approvals(None if args.all_namespaces else args.namespace)
    output.show(args.output, found, lambda wide: approvals_table(found, time.time(), wide))
    return 0


def approvals_table(found: wire.ApprovalList, now: float, wide: bool) -> str:
    """The table ``armyctl approvals`` prints; ``-o wide`` adds the agent's reason and shows
    the arguments whole (else their first 60 characters)."""
    header = ("TASK", "FLEET", "TOOL", "AGENT", "POLICIES", "WAITING", "DEADLINE", "ARGUMENTS")
    rows = [(*header, "REASON")]
    for item in found.approvals:
        approval = item.approval
        arguments = json.dumps(approval.arguments)
        rows.append(
            (
                item.taskId,
                f"{item.namespace}/{item.fleet}",
                approval.tool,
                approval.agent,
                ",".join(approval.policies),
                f"{now - approval.requestedAt:.0f}s",
                f"in {approval.deadlineAt - now:.0f}s",
                arguments if wide else arguments[:60],
                approval.reason or "-",
            )
        )
    return output.table(rows, ("REASON",), wide)


async def _approve(client: RouterClient, args: argparse.Namespace) -> int:
    return _decided(args, await client.decide(args.task_id, True, args.reason))


async def _reject(client: RouterClient, args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise ValueError("a rejection needs a reason (the model and the record see it)")
    return _decided(args, await client.decide(args.task_id, False, args.reason))


def _decided(args: argparse.Namespace, task: wire.Task) -> int:
    approval = task.approval
    assert approval is not None and approval.decision is not None
    text = (
        f"{approval.decision.lower()}: call of {approval.tool} by task {task.id} "
        f"(decided by {approval.decidedBy}); the task is {task.phase}"
    )
    output.show(args.output, task, lambda _wide: text)
    return 0
