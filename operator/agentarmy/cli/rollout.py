"""armyctl rollout status | retry: follow a Fleet's rollout, and retry an aborted canary.

Reads and writes the Fleet through the Kubernetes API (the kubeconfig's context), like
`kubectl rollout`; the router is not involved.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, Client
from lightkube.types import PatchType

from agentarmy.api import conditions as c
from agentarmy.api.fleet import FleetStatus
from agentarmy.cli import output
from agentarmy.operator.canary import RETRY_ANNOTATION
from agentarmy.operator.kube import FleetResource


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rollout = sub.add_parser("rollout", help="follow or retry a Fleet's rollout")
    verbs = rollout.add_subparsers(dest="verb", required=True, metavar="VERB")
    status = verbs.add_parser("status", help="wait for a Fleet's rollout, printing progress")
    status.add_argument("target", metavar="fleet/NAME")
    status.add_argument("-n", "--namespace", default=None, help="default: the context's")
    status.add_argument("--timeout", type=float, default=0, help="seconds; 0 waits forever")
    status.add_argument(
        "-w", "--watch", default="true", choices=["true", "false"], help="wait until done"
    )
    output.add_output_flag(status)  # the Fleet as it was when the wait ended; progress to stderr
    status.set_defaults(handler=_status)
    retry = verbs.add_parser("retry", help="retry an aborted canary of the same template")
    retry.add_argument("target", metavar="fleet/NAME")
    retry.add_argument("-n", "--namespace", default=None, help="default: the context's")
    output.add_output_flag(retry)  # the Fleet as patched
    retry.set_defaults(handler=_retry)


def fleet_name(target: str) -> str:
    kind, _, name = target.rpartition("/")
    if kind not in ("", "fleet", "fleets", "flt") or not name:
        raise ValueError(f"expected fleet/NAME, not {target!r}")
    return name


def progress(name: str, generation: int, status: FleetStatus) -> tuple[str, bool | None]:
    """(line to print, outcome): True done, False failed for good, None still rolling."""
    conditions = {condition.type: condition for condition in status.conditions}
    progressing = conditions.get(c.PROGRESSING)
    if status.observedGeneration < generation:
        return f'Waiting for fleet "{name}" spec update to be observed...', None
    if progressing is not None and progressing.reason == c.ROLLOUT_ABORTED:
        return f'fleet "{name}" rollout aborted: {progressing.message}', False
    if progressing is not None and progressing.reason == c.ROLLOUT_COMPLETE:
        return f'fleet "{name}" successfully rolled out', True
    if progressing is not None and progressing.reason == c.BLOCKED_BY_POLICY:
        return f'fleet "{name}" rollout held: {progressing.message}', None
    if (
        status.canary is not None
        and progressing is not None
        and progressing.reason == c.CANARY_STEP
    ):
        return f'Waiting for fleet "{name}" canary: {status.canary.message}', None
    return (
        f'Waiting for fleet "{name}" rollout to finish: {status.updatedReplicas} of '
        f"{status.replicas} agents updated, {status.availableReplicas} available...",
        None,
    )


def _status(args: argparse.Namespace) -> int:
    name = fleet_name(args.target)
    client = Client(namespace=args.namespace)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    # With -o json|yaml stdout carries the Fleet alone, so the progress goes to stderr.
    progress_out = sys.stderr if output.structured(args.output) else sys.stdout
    last = ""
    while True:
        try:
            fleet = client.get(FleetResource, name, namespace=args.namespace)
        except ApiError as err:
            print(f"error: {err.status.message}", file=sys.stderr)
            return 1
        status = FleetStatus.model_validate(_plain(fleet.status))
        generation = fleet.metadata.generation if fleet.metadata else 0
        line, outcome = progress(name, int(generation or 0), status)
        if line != last:
            print(line, file=sys.stderr if outcome is False else progress_out, flush=True)
            last = line
        waiting = outcome is None and args.watch == "true"
        timed_out = waiting and deadline is not None and time.monotonic() > deadline
        if waiting and not timed_out:
            time.sleep(1.0)
            continue
        if output.structured(args.output):
            output.show(args.output, _object(fleet), str)
        if timed_out:
            print(f"error: timed out waiting for fleet {name!r} to roll out", file=sys.stderr)
            return 1
        return 0 if outcome is not False else 1


def _retry(args: argparse.Namespace) -> int:
    name = fleet_name(args.target)
    client = Client(namespace=args.namespace)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        fleet = client.patch(
            FleetResource,
            name,
            {"metadata": {"annotations": {RETRY_ANNOTATION: stamp}}},
            namespace=args.namespace,
            patch_type=PatchType.MERGE,
        )
    except ApiError as err:
        print(f"error: {err.status.message}", file=sys.stderr)
        return 1
    output.show(
        args.output, _object(fleet), lambda _wide: f"fleet.agentarmy.io/{name} rollout retried"
    )
    return 0


def _plain(value: Any) -> dict[str, Any]:
    return dict(value or {})


def _object(resource: Any) -> dict[str, Any]:
    """A lightkube object as the API server sent it (camelCase keys)."""
    body: dict[str, Any] = resource.to_dict()
    return body


__all__ = ["fleet_name", "progress", "register"]
