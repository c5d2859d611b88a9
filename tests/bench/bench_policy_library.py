"""The pure policy library: verdicts on 10,000 varied subjects under 100 Policies, on one core.

    .venv/bin/python tests/bench/bench_policy_library.py [--scenario dense|teams]
        [--subjects 10000] [--policies 100]

Two scenarios. teams, the usual shape: four namespace-wide baselines and one
Policy per team; Fleets with their Agents, who share the template's facts; one
template in twenty breaks a rule. dense, a stress case:

One namespace holds the Policies: a mix of empty selectors (namespace-wide
baselines), matchLabels, matchExpressions (In, NotIn, Exists, DoesNotExist) and
both, in enforce and audit mode, with every static rule and the runtime rules.
The subjects are Agents and Fleets (and a few scale changes) with differing
images, tags, models, tools, limits, replica counts and labels; they are built
before the clock starts (parsing the specs is the API server's and pydantic's
work, not the library's).

Timed, each on a fresh PolicySet unless said otherwise:
- compile: building the PolicySet;
- cold: one evaluate() per subject, caches empty at the start (the goal: 0.5 s);
- select: only choosing the Policies of each subject (fresh set);
- warm: the same subjects again on the same PolicySet (a re-evaluation pass);
- naive: every Policy's selector and rules checked per subject, no index or cache
  (what the library replaces; checked to give the same findings);
- effective: effective_rules() for every Fleet.

The process is pinned to one CPU. Figures are printed; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from agentarmy.api.agent import AgentSpec
from agentarmy.api.fleet import FleetSpec
from agentarmy.api.policy import PolicySpec
from agentarmy.policy import (
    NamedPolicy,
    PolicySet,
    Subject,
    Verdict,
    agent_subject,
    effective_rules,
    fleet_subject,
    scale_subject,
)
from agentarmy.policy.rules import RULES, Context

NS = "bench"
GOAL_SECONDS = 0.5

APPS = [f"app-{i}" for i in range(40)]
TEAMS = [f"team-{i}" for i in range(8)]
TIERS = ["gold", "silver", "bronze"]
ENVS = ["prod", "staging", "dev"]
REGISTRIES = [
    "ghcr.io/acme/",
    "ghcr.io/acme-labs/",
    "ghcr.io/acmeevil/",
    "quay.io/acme/",
    "docker.io/acme/",
    "",  # short names: docker.io/library/...
    "registry.internal:5000/",
    "evil.io/",
]
IMAGE_NAMES = ["agent", "researcher", "reviewer", "python", "busybox", "tools/runner"]
PROVIDERS = ["openai", "anthropic", "ollama", "azure-openai", "none"]
MODELS = ["gpt-4o", "gpt-4o-mini", "o1", "claude-3-5-sonnet", "claude-3-haiku", "llama3", "mistral"]
TOOLS = [
    "github.issues.list",
    "github.issues.*",
    "github.*",
    "fs.read",
    "fs.write",
    "fs.*",
    "web.search",
    "shell.exec",
    "db.query",
    "*",
]


def pick(rng: random.Random, values: list[Any], at_most: int) -> list[Any]:
    return rng.sample(values, rng.randint(0, at_most))


def random_selector(rng: random.Random, kind: str) -> dict[str, Any]:
    labels = {"app": APPS, "team": TEAMS, "tier": TIERS, "env": ENVS}
    match_labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    if kind in ("labels", "both"):
        for key in rng.sample(["app", "team", "tier", "env"], rng.randint(1, 2)):
            match_labels[key] = rng.choice(labels[key])
    if kind in ("expressions", "both"):
        for _ in range(rng.randint(1, 2)):
            key = rng.choice(["app", "team", "tier", "env", "canary"])
            operator = rng.choice(["In", "NotIn", "Exists", "DoesNotExist"])
            values = (
                rng.sample(labels.get(key, ["1"]), min(2, len(labels.get(key, ["1"]))))
                if operator in ("In", "NotIn")
                else []
            )
            expressions.append({"key": key, "operator": operator, "values": values})
    return {"matchLabels": match_labels, "matchExpressions": expressions}


def random_rules(rng: random.Random) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    if rng.random() < 0.5:
        rules["allowedImageRegistries"] = rng.sample(
            [
                "ghcr.io/acme/",
                "quay.io/acme/",
                "docker.io/library/",
                "ghcr.io/acme-labs",
                "quay.io/*",
            ],
            rng.randint(1, 3),
        )
    if rng.random() < 0.4:
        rules["models"] = {
            "providers": pick(rng, PROVIDERS[:4], 3),
            "names": pick(rng, ["gpt-4o*", "claude-*", "llama?", "o1"], 2),
        }
    if rng.random() < 0.4:
        rules["allowedTools"] = rng.sample(
            ["github.*", "fs.read", "web.search", "db.*", "github.issues.*"], rng.randint(1, 3)
        )
    if rng.random() < 0.4:
        rules["maxReplicasPerFleet"] = rng.randint(2, 50)
    if rng.random() < 0.3:
        rules["requireResourceLimits"] = pick(rng, ["cpu", "memory"], 2) or ["memory"]
    if rng.random() < 0.3:
        rules["taskRateLimit"] = {"tasksPerMinute": rng.randint(10, 600)}
    if rng.random() < 0.2:
        rules["tokenBudget"] = {"tokens": rng.randint(10_000, 1_000_000), "window": "1h"}
    if rng.random() < 0.2:
        rules["approvalRequiredTools"] = pick(rng, ["shell.exec", "fs.write", "github.merge"], 2)
    if rng.random() < 0.2:
        rules["sentinel"] = {"maxErrorRate": rng.choice([0.1, 0.2, 0.5]), "maxCostPerHour": 10}
    if rng.random() < 0.1:
        rules["egress"] = {"cidrs": rng.sample(["10.0.0.0/8", "192.168.0.0/16"], 1)}
    return rules


def make_policies(count: int, rng: random.Random) -> list[NamedPolicy]:
    kinds = ["empty"] * 10 + ["labels"] * 50 + ["expressions"] * 30 + ["both"] * 10
    policies = []
    for i in range(count):
        spec = PolicySpec.model_validate(
            {
                "mode": "audit" if rng.random() < 0.2 else "enforce",
                "selector": random_selector(rng, kinds[i % len(kinds)]),
                "rules": random_rules(rng),
            }
        )
        policies.append(NamedPolicy(NS, f"policy-{i:03d}", spec))
    return policies


def random_labels(rng: random.Random) -> dict[str, str]:
    labels = {"app": rng.choice(APPS), "team": rng.choice(TEAMS)}
    if rng.random() < 0.7:
        labels["tier"] = rng.choice(TIERS)
    if rng.random() < 0.5:
        labels["env"] = rng.choice(ENVS)
    if rng.random() < 0.1:
        labels["canary"] = "true"
    return labels


def random_agent_spec(rng: random.Random) -> dict[str, Any]:
    tag = rng.choice([f"{rng.randint(0, 30)}.{rng.randint(0, 9)}", "latest"])
    image = f"{rng.choice(REGISTRIES)}{rng.choice(IMAGE_NAMES)}:{tag}"
    provider = rng.choice(PROVIDERS)
    return {
        "capabilities": ["summarize"],
        "image": image,
        "model": {"provider": provider, "name": "" if provider == "none" else rng.choice(MODELS)},
        "tools": {"allowed": pick(rng, TOOLS, 3)},
        "resources": {"limits": {r: "1" for r in pick(rng, ["cpu", "memory"], 2)}},
    }


def make_subjects(count: int, rng: random.Random) -> list[Subject]:
    subjects: list[Subject] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.6:
            spec = AgentSpec.model_validate(random_agent_spec(rng))
            subjects.append(agent_subject(NS, f"agent-{i}", random_labels(rng), spec))
            continue
        body: dict[str, Any] = {
            "replicas": rng.randint(0, 60),
            "template": {
                "metadata": {"labels": random_labels(rng)},
                "spec": random_agent_spec(rng),
            },
        }
        if rng.random() < 0.3:
            body["autoscaling"] = {"minReplicas": 0, "maxReplicas": rng.randint(1, 80)}
        fleet = FleetSpec.model_validate(body)
        own = {"owner": rng.choice(TEAMS)} if rng.random() < 0.5 else random_labels(rng)
        if roll < 0.95:
            subjects.append(fleet_subject(NS, f"fleet-{i}", own, fleet))
        else:
            subjects.append(scale_subject(NS, f"fleet-{i}", own, fleet, rng.randint(0, 80)))
    return subjects


def team_policies(count: int, rng: random.Random) -> list[NamedPolicy]:
    """The usual shape: a few namespace-wide baselines, then one Policy per team."""
    policies = []
    for i in range(count):
        baseline = i < 4
        rules: dict[str, Any] = {"allowedImageRegistries": ["ghcr.io/acme/", "quay.io/acme/"]}
        if baseline:
            rules = [
                rules,
                {"requireResourceLimits": ["memory"]},
                {"models": {"providers": ["none", "openai", "anthropic"]}},
                {"maxReplicasPerFleet": 50},
            ][i]
        else:
            rules = {
                "maxReplicasPerFleet": rng.randint(5, 40),
                "allowedTools": rng.sample(["github.*", "fs.read", "web.search", "db.*"], 2),
                "models": {"names": ["gpt-4o*", "claude-*"]},
            }
        selector = {} if baseline else {"matchLabels": {"team": f"team-{i}"}}
        spec = PolicySpec.model_validate(
            {"mode": "audit" if i % 10 == 9 else "enforce", "selector": selector, "rules": rules}
        )
        policies.append(NamedPolicy(NS, f"policy-{i:03d}", spec))
    return policies


def team_subjects(count: int, teams: int, rng: random.Random) -> list[Subject]:
    """Fleets of a team's app, and their Agents (who share the template's facts); one
    template in twenty breaks a rule."""
    subjects: list[Subject] = []
    while len(subjects) < count:
        team = f"team-{rng.randrange(4, max(5, teams))}"
        labels = {"team": team, "app": rng.choice(APPS)}
        spec = (
            random_agent_spec(rng)
            if rng.random() < 0.05
            else {
                "capabilities": ["summarize"],
                "image": f"ghcr.io/acme/{rng.choice(IMAGE_NAMES)}:{rng.randint(1, 5)}",
                "model": {"provider": "openai", "name": "gpt-4o-mini"},
                "tools": {"allowed": []},
                "resources": {"limits": {"memory": "256Mi"}},
            }
        )
        replicas = rng.randint(1, 40)
        fleet = FleetSpec.model_validate(
            {"replicas": replicas, "template": {"metadata": {"labels": labels}, "spec": spec}}
        )
        name = f"fleet-{len(subjects)}"
        subjects.append(fleet_subject(NS, name, labels, fleet))
        agent_spec = fleet.template.spec
        agent_labels = {**labels, "agentarmy.io/fleet": name}
        subjects += [
            agent_subject(NS, f"{name}-{n}", agent_labels, agent_spec) for n in range(replicas)
        ]
    return subjects[:count]


def naive_evaluate(policies: list[NamedPolicy], subject: Subject) -> tuple[Any, ...]:
    chosen = [
        p
        for p in policies
        if p.namespace == subject.namespace
        and any(p.spec.selector.matches(dict(labels)) for labels in subject.label_sets)
    ]
    contexts = [Context(p.ref, p.spec.mode, p.spec.rules) for p in chosen]
    return tuple(
        f for check in (rule.check for rule in RULES) for c in contexts for f in check(c, subject)
    )


def timed(function: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median shown)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: first)")
    parser.add_argument(
        "--scenario",
        choices=("dense", "teams"),
        default="dense",
        help="dense: random selectors and specs, ~29 Policies and ~44 findings per subject "
        "(a stress case); teams: baselines plus one Policy per team, Agents sharing their "
        "Fleet's template, one template in twenty breaking a rule (the usual shape)",
    )
    args = parser.parse_args()

    allowed = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else allowed[0]
    os.sched_setaffinity(0, {cpu})

    rng = random.Random(args.seed)
    if args.scenario == "dense":
        policies = make_policies(args.policies, rng)
        subjects = make_subjects(args.subjects, rng)
    else:
        policies = team_policies(args.policies, rng)
        subjects = team_subjects(args.subjects, args.policies, rng)
    print(f"scenario: {args.scenario}")
    fleets = [s for s in subjects if s.kind == "Fleet"]
    kinds = {k: sum(s.kind == k for s in subjects) for k in ("Agent", "Fleet", "Scale")}
    distinct = {
        "label sets": len({s.label_sets for s in subjects}),
        "images": len({s.agent.image for s in subjects if s.agent}),
        "models": len({(s.agent.provider, s.agent.model) for s in subjects if s.agent}),
        "tool lists": len({s.agent.tools for s in subjects if s.agent}),
    }
    print(f"python {sys.version.split()[0]}, pinned to CPU {cpu}")
    print(f"{len(policies)} Policies in namespace {NS!r}; {len(subjects)} subjects {kinds}")
    print("distinct: " + ", ".join(f"{n} {k}" for k, n in distinct.items()))

    def cold() -> list[Verdict]:
        policy_set = PolicySet(policies)
        return [policy_set.evaluate(s) for s in subjects]

    compile_times, _ = timed(lambda: PolicySet(policies), args.repeat)
    cold_times, verdicts = timed(cold, args.repeat)

    def select() -> list[Any]:
        policy_set = PolicySet(policies)
        return [policy_set.selecting(s.namespace, s.label_sets) for s in subjects]

    select_times, _ = timed(select, args.repeat)
    warm_set = PolicySet(policies)
    for s in subjects:
        warm_set.evaluate(s)
    warm_times, _ = timed(lambda: [warm_set.evaluate(s) for s in subjects], args.repeat)
    naive_times, naive_findings = timed(
        lambda: [naive_evaluate(policies, s) for s in subjects], max(1, args.repeat // 2)
    )
    effective_set = PolicySet(policies)
    effective_times, _ = timed(
        lambda: [effective_rules(effective_set, s.namespace, s.label_sets) for s in fleets],
        args.repeat,
    )

    assert [v.findings for v in verdicts] == naive_findings, "cached verdicts differ from naive"
    outcomes = {o: sum(v.outcome == o for v in verdicts) for o in ("allow", "warn", "deny")}
    selected = statistics.mean(len(v.policies) for v in verdicts)
    findings = statistics.mean(len(v.findings) for v in verdicts)
    print(
        f"verdicts: {outcomes}; per subject on average {selected:.1f} Policies select it, "
        f"{findings:.1f} findings"
    )

    def line(label: str, times: list[float], count: int, unit: str = "subjects") -> None:
        median = statistics.median(times)
        rate = count / median if median else float("inf")
        print(
            f"  {label:<10} {median * 1000:9.1f} ms  (min {min(times) * 1000:.1f}, "
            f"max {max(times) * 1000:.1f})  {rate:12,.0f} {unit}/s"
        )

    print(f"wall time, median of {args.repeat}:")
    line("compile", compile_times, 1, "sets")
    line("cold", cold_times, len(subjects))
    line("select", select_times, len(subjects))
    line("warm", warm_times, len(subjects))
    line("naive", naive_times, len(subjects))
    line("effective", effective_times, len(fleets), "fleets")
    cold_median = statistics.median(cold_times) + statistics.median(compile_times)
    verdict = "meets" if cold_median <= GOAL_SECONDS else "misses"
    print(
        f"goal: {len(subjects)} subjects in {GOAL_SECONDS} s (compile + cold): "
        f"{cold_median:.3f} s, {verdict} it ({GOAL_SECONDS / cold_median:.1f}x headroom); "
        f"naive would take {statistics.median(naive_times):.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
