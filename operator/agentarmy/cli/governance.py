"""armyctl approvals | approve | reject | resume | rules: the router's runtime governance,
for the people who run it. Decisions are recorded with the token's principal."""

from __future__ import annotations

import argparse
import json
import time

from agentarmy.api import wire
from agentarmy.api.rules import FleetRules
from agentarmy.cli.tasks import router_command
from agentarmy.router.client import RouterClient


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resume = router_command(
        sub, "resume", "resume dispatch to a fleet the sentinel halted (recorded)", _resume
    )
    resume.add_argument("target", metavar="fleet/NAME", help="the halted fleet")
    resume.add_argument("--reason", default="", help="why, for the record")

    router_command(sub, "rules", "show the runtime rules the router enforces", _rules)

    listing = router_command(sub, "approvals", "list tool calls waiting for a person", _approvals)
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
    if args.output == "json":
        print(resumed.model_dump_json(indent=2))
    elif resumed.wasHalted is None:
        print(f"fleet {resumed.namespace}/{resumed.fleet} was not halted; nothing to resume")
    else:
        print(
            f"fleet {resumed.namespace}/{resumed.fleet} resumed by {resumed.resumedBy} "
            f"(was: {resumed.wasHalted.message})"
        )
    return 0


async def _rules(client: RouterClient, args: argparse.Namespace) -> int:
    everything = await client.rules_in_force()
    if args.output == "json":
        print(everything.model_dump_json(indent=2))
        return 0
    rows = [("NAMESPACE", "FLEET", "RATE", "BUDGETS", "TOOLS", "APPROVALS", "SENTINEL")]
    for group in everything.namespaces:
        for fleet in group.fleets:
            rows.append((group.namespace, fleet.fleet, *_summary(fleet)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


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
    if args.output == "json":
        print(found.model_dump_json(indent=2))
        return 0
    now = time.time()
    rows = [("TASK", "FLEET", "TOOL", "AGENT", "POLICIES", "WAITING", "DEADLINE", "ARGUMENTS")]
    for item in found.approvals:
        approval = item.approval
        rows.append(
            (
                item.taskId,
                f"{item.namespace}/{item.fleet}",
                approval.tool,
                approval.agent,
                ",".join(approval.policies),
                f"{now - approval.requestedAt:.0f}s",
                f"in {approval.deadlineAt - now:.0f}s",
                json.dumps(approval.arguments)[:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


async def _approve(client: RouterClient, args: argparse.Namespace) -> int:
    return _decided(args, await client.decide(args.task_id, True, args.reason))


async def _reject(client: RouterClient, args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise ValueError("a rejection needs a reason (the model and the record see it)")
    return _decided(args, await client.decide(args.task_id, False, args.reason))


def _decided(args: argparse.Namespace, task: wire.Task) -> int:
    if args.output == "json":
        print(task.model_dump_json(indent=2))
        return 0
    approval = task.approval
    assert approval is not None and approval.decision is not None
    print(
        f"{approval.decision.lower()}: call of {approval.tool} by task {task.id} "
        f"(decided by {approval.decidedBy}); the task is {task.phase}"
    )
    return 0
