"""armyctl submit | get | list | wait | cancel: talk to the router as a caller."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agentarmy.api import runtime_env, wire
from agentarmy.api.common import parse_duration
from agentarmy.api.task import DEFAULT_PRIORITY, TERMINAL_PHASES, TaskSpec
from agentarmy.cli import output
from agentarmy.router.client import RouterClient, RouterError, TokenSource


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    submit = router_command(sub, "submit", "submit a task to a fleet", _submit)
    submit.add_argument("fleet")
    submit.add_argument("capability")
    submit.add_argument("--input", default="{}", help="JSON object, or @file.json")
    submit.add_argument("--priority", type=int, default=DEFAULT_PRIORITY)
    submit.add_argument("--timeout", default=TaskSpec.model_fields["timeout"].default)
    submit.add_argument(
        "--max-attempts", type=int, default=TaskSpec.model_fields["maxAttempts"].default
    )
    submit.add_argument("--idempotency-key")
    submit.add_argument("--parent")
    submit.add_argument("--wait", action="store_true", help="wait for the result")
    submit.add_argument("--wait-timeout", default="10m")

    get = router_command(sub, "get", "show one task", _get)
    get.add_argument("task_id")

    listing = router_command(sub, "list", "list tasks", _list, wide=True)
    listing.add_argument("--fleet")
    listing.add_argument("--phase")
    listing.add_argument("--parent")
    listing.add_argument("--limit", type=int, default=50)

    wait = router_command(sub, "wait", "wait until a task has ended", _wait)
    wait.add_argument("task_id")
    wait.add_argument("--timeout", default="10m")

    cancel = router_command(sub, "cancel", "cancel a task", _cancel)
    cancel.add_argument("task_id")

    _add_tree(sub)  # `armyctl tree ID`, the short form of `armyctl tasks tree ID`
    group = sub.add_parser("tasks", help="tasks in the router: tree")
    _add_tree(group.add_subparsers(dest="tasks_command", required=True, metavar="COMMAND"))


def _add_tree(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tree = router_command(
        sub, "tree", "show a task and its descendants (fan-out)", _tree, wide=True
    )
    tree.add_argument("task_id")
    tree.add_argument("--limit", type=int, default=1000)


def router_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    run: Callable[[RouterClient, argparse.Namespace], Awaitable[int]],
    *,
    wide: bool = False,
) -> argparse.ArgumentParser:
    """A command that talks to the router; ``wide``: its table has optional columns."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument(
        "--router",
        default=os.environ.get(runtime_env.ROUTER_URL, "http://127.0.0.1:8080"),
        help=f"router URL (env {runtime_env.ROUTER_URL})",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get(runtime_env.TOKEN_FILE),
        help=f"file with the bearer token (env {runtime_env.TOKEN_FILE})",
    )
    parser.add_argument("-n", "--namespace", default="default")
    output.add_output_flag(parser, wide=wide)
    parser.set_defaults(handler=lambda args: _run(run, args))
    return parser


def _run(
    run: Callable[[RouterClient, argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    raw_input = getattr(args, "input", None)
    if raw_input is not None:
        args.input_text = (
            Path(raw_input[1:]).read_text() if raw_input.startswith("@") else raw_input
        )
    token = TokenSource(
        os.environ.get(runtime_env.ROUTER_TOKEN), Path(args.token_file) if args.token_file else None
    )

    async def main() -> int:
        async with RouterClient(args.router, token) as client:
            return await run(client, args)

    try:
        return asyncio.run(main())
    except RouterError as error:
        where = f" (field {error.field})" if error.field else ""
        print(f"error: {error.message}{where}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as error:
        print(f"error: cannot reach the router at {args.router}: {error}", file=sys.stderr)
        return 1
    except (ValueError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


async def _submit(client: RouterClient, args: argparse.Namespace) -> int:
    task = wire.SubmitTask(
        namespace=args.namespace,
        fleet=args.fleet,
        capability=args.capability,
        input=json.loads(args.input_text),
        priority=args.priority,
        timeout=args.timeout,
        maxAttempts=args.max_attempts,
        idempotencyKey=args.idempotency_key,
        parentTaskId=args.parent,
    )
    submitted = await client.submit(task)
    if not args.wait:
        _show(
            args,
            submitted,
            f"{submitted.task.id} {'submitted' if submitted.created else 'already known'}",
        )
        return 0
    final = await _wait_for(client, submitted.task.id, parse_duration(args.wait_timeout))
    _show_task(args, final)
    return 0 if final.phase == "Succeeded" else 1


async def _get(client: RouterClient, args: argparse.Namespace) -> int:
    _show_task(args, await client.get(args.task_id))
    return 0


async def _list(client: RouterClient, args: argparse.Namespace) -> int:
    page = await client.list(
        namespace=args.namespace,
        fleet=args.fleet,
        phase=args.phase,
        parent=args.parent,
        limit=args.limit,
    )
    output.show(args.output, page, lambda wide: task_table(page.tasks, time.time(), wide))
    return 0


TASK_WIDE = ("AGENT", "PARENT", "TRACE")


def task_table(tasks: Sequence[wire.Task], now: float, wide: bool) -> str:
    """The table ``armyctl list`` prints; wide adds the agent, the parent and the trace."""
    rows = [("ID", "FLEET", "CAPABILITY", "PRIORITY", "PHASE", "ATTEMPTS", "AGE", *TASK_WIDE)]
    for task in tasks:
        rows.append(
            (
                task.id,
                task.fleet,
                task.capability,
                str(task.priority),
                task.phase,
                f"{task.attempt}/{task.maxAttempts}",
                _age(now - task.createdAt),
                task.agent or "-",
                task.parentTaskId or "-",
                task.traceId,
            )
        )
    return output.table(rows, TASK_WIDE, wide)


async def _wait(client: RouterClient, args: argparse.Namespace) -> int:
    final = await _wait_for(client, args.task_id, parse_duration(args.timeout))
    _show_task(args, final)
    return 0 if final.phase == "Succeeded" else 1


async def _cancel(client: RouterClient, args: argparse.Namespace) -> int:
    task = await client.cancel(args.task_id)
    _show(args, task, f"{task.id} {task.phase.lower()}")
    return 0


async def _tree(client: RouterClient, args: argparse.Namespace) -> int:
    tree = await client.tree(args.task_id, args.limit)
    if output.structured(args.output):
        output.show(args.output, tree, str)
        return 0
    root_depth = tree.tasks[0].depth if tree.tasks else 0
    header = ("TASK", "FLEET", "CAPABILITY", "PHASE", "ATTEMPTS", "CREATED", "FINISHED", "TOOK")
    rows = [(*header, "AGENT")]
    for task in tree.tasks:
        took = (
            (task.finishedAt - task.createdAt) if task.finishedAt else time.time() - task.createdAt
        )
        waiting = ""
        if task.phase == "WaitingForChildren" and task.join is not None:
            waiting = f" ({task.join.children} children, {task.join.mode})"
        rows.append(
            (
                "  " * (task.depth - root_depth) + task.id,
                task.fleet,
                task.capability,
                task.phase + waiting,
                str(task.attempt),
                _time(task.createdAt),
                _time(task.finishedAt) if task.finishedAt else "-",
                f"{took:.1f}s",
                task.agent or "-",
            )
        )
    print(output.table(rows, ("AGENT",), args.output == output.WIDE))
    if tree.truncated:
        print(f"(more descendants than --limit {args.limit})")
    print(f"trace {tree.tasks[0].traceId}" if tree.tasks else "")
    return 0


async def _wait_for(client: RouterClient, task_id: str, wait_seconds: float) -> wire.Task:
    deadline = time.monotonic() + wait_seconds
    task = await client.get(task_id)
    while task.phase not in TERMINAL_PHASES and time.monotonic() < deadline:
        task = await client.wait(task_id, min(60.0, max(1.0, deadline - time.monotonic())))
    return task


def _show(args: argparse.Namespace, model: BaseModel, text: str) -> None:
    output.show(args.output, model, lambda _wide: text)


def _show_task(args: argparse.Namespace, task: wire.Task) -> None:
    output.show(args.output, task, lambda _wide: task_details(task))


def task_details(task: wire.Task) -> str:
    """One task as ``Label: value`` lines, like kubectl describe."""
    lines: list[tuple[str, Any]] = [
        ("ID", task.id),
        ("Fleet", f"{task.namespace}/{task.fleet}"),
        ("Capability", task.capability),
        ("Priority", task.priority),
        ("Phase", task.phase),
        ("Attempts", f"{task.attempt}/{task.maxAttempts}"),
        ("Trace", task.traceId),
        ("Created", _time(task.createdAt)),
    ]
    if task.parentTaskId:
        lines.append(("Parent", task.parentTaskId))
    if task.finishedAt:
        lines.append(("Finished", _time(task.finishedAt)))
    if task.error:
        lines.append(("Error", task.error))
    for attempt in task.attempts:
        lines.append(
            (
                f"Attempt {attempt.number}",
                f"{attempt.agent} {attempt.outcome or 'Running'}"
                + (f": {attempt.reason}" if attempt.reason else ""),
            )
        )
    if task.usage:
        lines.append(("Tokens", task.usage.totalTokens))
    if task.result is not None:
        lines.append(("Result", json.dumps(task.result)))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in lines)


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
