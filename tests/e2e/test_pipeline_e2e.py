"""The pipeline example as a user runs it: apply manifests/examples/pipeline.yaml and
task-pipeline.yaml, `kubectl wait --for=condition=Complete`, read the result. Real control
plane, operator, router and agent processes (three fleets)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.devcluster.stack import Stack, local_stack
from tests.e2e.test_tasks_e2e import router_tree
from tests.integration.operator_process import get_json

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with local_stack(cluster, "e2e-pipeline", tmp_path_factory.mktemp("stack")) as running:
        yield running


def test_the_pipeline_example_completes_with_the_reduced_counts(cluster: Any, stack: Stack) -> None:
    ns = stack.namespace
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "pipeline.yaml"))
    cluster.kubectl(
        "wait",
        "-n",
        ns,
        "--for=condition=Available",
        "fleet/lead",
        "fleet/workers",
        "fleet/reducer",
        "--timeout=120s",
    )
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "task-pipeline.yaml"))
    cluster.kubectl(
        "wait", "-n", ns, "--for=condition=Complete", "task/count-words", "--timeout=120s"
    )
    status = get_json(cluster, "task", "count-words", "-n", ns)["status"]
    printed = cluster.kubectl(
        "get", "task", "count-words", "-n", ns, "-o", "jsonpath={.status.result}"
    ).stdout
    print(f"\npipeline result: {printed}")

    text = yaml.safe_load((EXAMPLES / "task-pipeline.yaml").read_text())["spec"]["input"]["text"]
    counts = Counter(text.lower().split())
    result = json.loads(printed)
    assert status["phase"] == "Succeeded"
    assert result["words"] == sum(counts.values()) and result["distinct"] == len(counts)
    assert result["top"][0] == {"word": "the", "count": counts["the"]}
    assert result["parts"] == 3
    # Each part takes a second and each worker takes one at a time: three agents.
    assert len(result["workers"]) == 3 and all(w.startswith("workers-") for w in result["workers"])

    tree = router_tree(stack, status["taskId"])
    shape = [(t.depth, t.fleet, t.phase) for t in tree]
    assert shape == [(0, "lead", "Succeeded")] + [(1, "workers", "Succeeded")] * 3 + [
        (1, "reducer", "Succeeded")
    ]
    assert {t.traceId for t in tree} == {tree[0].traceId}
    lead = tree[0]
    assert [a.outcome for a in lead.attempts] == ["Released", "Released", "Succeeded"]
    parts = [t.attempts[-1] for t in tree if t.fleet == "workers"]
    assert len({a.agent for a in parts}) == 3
    latest_start = max(a.startedAt for a in parts)
    earliest_end = min(a.endedAt or 0.0 for a in parts)
    assert latest_start < earliest_end, "the three parts ran one after another, not together"
