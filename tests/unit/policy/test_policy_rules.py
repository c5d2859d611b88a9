"""Each static rule of a Policy: a subject that breaks it, one that keeps it, and the finding."""

from __future__ import annotations

import pytest

from agentarmy.policy import Finding, NamedPolicy, Subject, Verdict, evaluate
from agentarmy.policy.globs import covers, glob_match
from agentarmy.policy.images import normalize_image, under
from tests.unit.policy.builders import a_fleet, a_scale, an_agent, policy


def only(verdict: Verdict) -> Finding:
    assert len(verdict.findings) == 1, verdict.findings
    return verdict.findings[0]


def check(subject: Subject, p: NamedPolicy) -> Verdict:
    return evaluate(subject, [p])


# --- models -------------------------------------------------------------------------------


MODELS = policy(models={"providers": ["openai", "anthropic"], "names": ["gpt-4o*", "claude-*"]})


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-sonnet")],
)
def test_models_allowed(provider: str, model: str) -> None:
    assert check(an_agent(provider=provider, model=model), MODELS) == Verdict(
        policies=("team-a/baseline",)
    )


def test_models_provider_not_listed() -> None:
    finding = only(check(an_agent(provider="ollama", model="gpt-4o"), MODELS))
    assert finding == Finding(
        "team-a/baseline",
        "models",
        "spec.model.provider",
        "enforce",
        'spec.model.provider "ollama" is not one of openai, anthropic',
    )
    assert finding.text() == (
        'policy team-a/baseline, rule models: spec.model.provider "ollama" is not one of '
        "openai, anthropic"
    )


def test_models_name_matches_no_glob() -> None:
    finding = only(check(an_agent(provider="openai", model="gpt-3.5-turbo"), MODELS))
    assert (finding.rule, finding.field) == ("models", "spec.model.name")
    assert finding.message == ('spec.model.name "gpt-3.5-turbo" matches none of gpt-4o*, claude-*')


def test_models_both_broken_gives_two_findings() -> None:
    verdict = check(an_agent(provider="ollama", model="llama3"), MODELS)
    assert [f.field for f in verdict.findings] == ["spec.model.provider", "spec.model.name"]


def test_models_on_a_fleet_name_the_template_field() -> None:
    finding = only(check(a_fleet(provider="openai", model="o1"), MODELS))
    assert finding.field == "spec.template.spec.model.name"
    assert finding.message.startswith('spec.template.spec.model.name "o1" ')


def test_models_empty_lists_allow_any() -> None:
    p = policy(models={})
    assert check(an_agent(provider="ollama", model="anything"), p).findings == ()
    only_providers = policy(models={"providers": ["openai"]})
    assert check(an_agent(provider="openai", model="whatever"), only_providers).findings == ()


def test_models_do_not_apply_to_agents_without_a_model() -> None:
    assert check(an_agent(provider="none", model=""), MODELS).findings == ()


def test_models_names_are_case_sensitive_globs() -> None:
    p = policy(models={"names": ["gpt-4o-????"]})
    assert check(an_agent(model="gpt-4o-mini"), p).findings == ()
    assert len(check(an_agent(model="gpt-4o-mini-2"), p).findings) == 1
    assert len(check(an_agent(model="GPT-4o-mini"), p).findings) == 1


# --- allowedTools -------------------------------------------------------------------------

TOOLS = policy(allowedTools=["github.*", "fs.read", "web.search"])


@pytest.mark.parametrize(
    "tools",
    [
        [],
        ["fs.read"],
        ["github.issues.list", "web.search"],
        ["github.*"],
        ["github.issues.*"],
    ],
)
def test_tools_allowed(tools: list[str]) -> None:
    assert check(an_agent(tools=tools), TOOLS).findings == ()


def test_tool_not_allowed_names_index_and_value() -> None:
    verdict = check(an_agent(tools=["fs.read", "fs.write"]), TOOLS)
    assert only(verdict) == Finding(
        "team-a/baseline",
        "allowedTools",
        "spec.tools.allowed[1]",
        "enforce",
        'spec.tools.allowed[1] "fs.write" is not allowed by github.*, fs.read, web.search',
    )


@pytest.mark.parametrize(
    "entry",
    [
        "*",  # every tool
        "fs.*",  # fs.read is allowed, fs.write is not
        "git*",  # gitlab too
        "github",  # the literal name github does not match github.*
        "web.*",
        "github*",  # githubevil.x
    ],
)
def test_a_wildcard_entry_broader_than_the_policy_is_refused(entry: str) -> None:
    assert len(check(an_agent(tools=[entry]), TOOLS).findings) == 1


def test_tools_on_a_fleet_name_the_template_field() -> None:
    finding = only(check(a_fleet(tools=["shell.exec"]), TOOLS))
    assert finding.field == "spec.template.spec.tools.allowed[0]"


@pytest.mark.parametrize(
    ("pattern", "entry", "covered"),
    [
        ("github.*", "github.read", True),
        ("github.*", "github.*", True),
        ("github.*", "github.issues.*", True),
        ("github.read", "github.read", True),
        ("github.read", "github.*", False),
        ("github.?ead", "github.*", False),
        ("*", "*", True),
        ("github.*", "*", False),
        ("g*.*", "github.issues.*", True),
        # An interior '*' in an Agent's entry is a wildcard for the runtime (fnmatch):
        # "github.*ssues" lets the agent call github.reissues, which "github.?ssues" refuses.
        ("github.?ssues", "github.*ssues", False),
        ("github.issues", "github.*ssues", False),
        ("github.*ssues", "github.*ssues", True),
        ("github.*", "github.*ssues", True),
        ("*", "github.*ssues", True),
    ],
)
def test_covers(pattern: str, entry: str, covered: bool) -> None:
    assert covers(pattern, entry) is covered


def test_covers_is_sound_against_the_runtime_matcher() -> None:
    """Whenever ``covers`` says yes, every name the entry lets through matches the pattern."""
    import fnmatch
    import itertools

    def words(alphabet: str, longest: int) -> list[str]:
        return [
            "".join(w) for n in range(1, longest + 1) for w in itertools.product(alphabet, repeat=n)
        ]

    patterns = words("ab.*?", 3)
    entries = words("ab.*", 3)  # an Agent's tool names have no '?' or '['
    names = ["", *words("ab.", 4)]
    for pattern in patterns:
        for entry in entries:
            if not covers(pattern, entry):
                continue
            for name in names:
                if fnmatch.fnmatchcase(name, entry):
                    assert glob_match(name, pattern), (pattern, entry, name)


# --- allowedImageRegistries ---------------------------------------------------------------

REGISTRIES = policy(allowedImageRegistries=["ghcr.io/acme/", "docker.io/library/"])


@pytest.mark.parametrize(
    "image",
    [
        "ghcr.io/acme/agent:1",
        "ghcr.io/acme/tools/agent@sha256:" + "a" * 64,
        "python:3.11",  # docker.io/library/python:3.11
        "busybox",
        "docker.io/library/busybox:1.36",
        "docker.io/busybox",  # the runtime pulls docker.io/library/busybox
        "index.docker.io/library/busybox",
    ],
)
def test_images_allowed(image: str) -> None:
    assert check(an_agent(image=image), REGISTRIES).findings == ()


@pytest.mark.parametrize(
    ("image", "shown"),
    [
        ("ghcr.io/acmeevil/agent:1", '"ghcr.io/acmeevil/agent:1"'),
        ("ghcr.io/acme", '"ghcr.io/acme"'),
        ("acme/agent:1", '"acme/agent:1" (docker.io/acme/agent:1)'),
        ("quay.io/acme/agent", '"quay.io/acme/agent"'),
        ("localhost:5000/library/x", '"localhost:5000/library/x"'),
    ],
)
def test_images_refused_name_the_image_and_its_normal_form(image: str, shown: str) -> None:
    finding = only(check(an_agent(image=image), REGISTRIES))
    assert (finding.rule, finding.field, finding.mode) == (
        "allowedImageRegistries",
        "spec.image",
        "enforce",
    )
    assert finding.message == f"spec.image {shown} is not under ghcr.io/acme/, docker.io/library/"


def test_image_finding_on_a_fleet_reads_as_the_issue_says() -> None:
    p = policy(allowedImageRegistries=["ghcr.io/acme/"])
    finding = only(check(a_fleet(image="evil.io/x"), p))
    assert finding.field == "spec.template.spec.image"
    assert finding.text() == (
        "policy team-a/baseline, rule allowedImageRegistries: spec.template.spec.image "
        '"evil.io/x" is not under ghcr.io/acme/'
    )


@pytest.mark.parametrize(
    ("reference", "normal"),
    [
        ("busybox", "docker.io/library/busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("busybox@sha256:" + "0" * 64, "docker.io/library/busybox@sha256:" + "0" * 64),
        ("acme/agent", "docker.io/acme/agent"),
        ("docker.io/busybox", "docker.io/library/busybox"),
        ("docker.io/acme:1", "docker.io/library/acme:1"),
        ("docker.io/acme/agent", "docker.io/acme/agent"),
        ("index.docker.io/acme/agent", "docker.io/acme/agent"),
        ("index.docker.io/busybox", "docker.io/library/busybox"),
        ("ghcr.io/acme/agent:1", "ghcr.io/acme/agent:1"),
        ("localhost/agent", "localhost/agent"),
        ("localhost:5000/agent", "localhost:5000/agent"),
        ("registry:5000/agent", "registry:5000/agent"),
    ],
)
def test_normalize_image(reference: str, normal: str) -> None:
    assert normalize_image(reference) == normal


@pytest.mark.parametrize(
    ("image", "entry", "allowed"),
    [
        # Prefix entries end on a boundary, with or without the trailing slash.
        ("ghcr.io/acme/agent:1", "ghcr.io/acme/", True),
        ("ghcr.io/acme/agent:1", "ghcr.io/acme", True),
        ("ghcr.io/acmeevil/agent:1", "ghcr.io/acme", False),
        ("ghcr.io/acmeevil/agent:1", "ghcr.io/acme/", False),
        ("ghcr.io/acme-evil/agent:1", "ghcr.io/acme", False),
        ("ghcr.io/acme/agent:1", "ghcr.io/acme/agent", True),
        ("ghcr.io/acme/agent-evil:1", "ghcr.io/acme/agent", False),
        ("ghcr.io/acme/agent@sha256:" + "a" * 64, "ghcr.io/acme/agent", True),
        ("ghcr.io/acme/agent:1", "ghcr.io", True),
        ("ghcr.io.evil.com/acme/agent:1", "ghcr.io", False),
        # Short entries are qualified like short images.
        ("docker.io/acme/agent:1", "acme/", True),
        ("docker.io/library/python:3.11", "library/python", True),
        ("docker.io/library/python:3.11", "docker.io", True),
        # "docker.io/acme" is the organisation acme; the image "docker.io/acme:1" is
        # docker.io/library/acme:1, which is not acme's.
        ("docker.io/library/acme:1", "docker.io/acme", False),
        ("docker.io/acme/agent:1", "docker.io/acme", True),
        ("docker.io/acme/agent:1", "index.docker.io/acme/", True),
        # Glob entries match the whole (normalised) reference.
        ("quay.io/org/agent:1", "quay.io/*", True),
        ("quay.io.evil/org/agent:1", "quay.io/*", False),
        ("docker.io/acme/agent:1", "acme/*", True),
        ("docker.io/library/acme:1", "docker.io/acme*", False),
        ("docker.io/library/busybox:1", "busybox*", True),
        ("anything/at/all", "*", True),
    ],
)
def test_under(image: str, entry: str, allowed: bool) -> None:
    assert under(normalize_image(image), entry) is allowed


def test_a_short_name_cannot_pass_a_docker_io_organisation() -> None:
    p = policy(allowedImageRegistries=["docker.io/acme"])
    assert check(an_agent(image="docker.io/acme/agent:1"), p).findings == ()
    for image in ("docker.io/acme:1", "acme:1", "index.docker.io/acme:1"):
        assert check(an_agent(image=image), p).outcome == "deny", image


# --- maxReplicasPerFleet ------------------------------------------------------------------

REPLICAS = policy(maxReplicasPerFleet=5)


def test_replicas_at_the_limit_are_allowed() -> None:
    assert check(a_fleet(replicas=5), REPLICAS).findings == ()
    assert check(a_fleet(replicas=0), policy(maxReplicasPerFleet=0)).findings == ()


def test_replicas_above_the_limit() -> None:
    assert only(check(a_fleet(replicas=6), REPLICAS)) == Finding(
        "team-a/baseline",
        "maxReplicasPerFleet",
        "spec.replicas",
        "enforce",
        "spec.replicas 6 is above the limit of 5",
    )


def test_autoscaling_max_above_the_limit() -> None:
    finding = only(check(a_fleet(replicas=2, autoscaling_max=8), REPLICAS))
    assert (finding.rule, finding.field) == ("maxReplicasPerFleet", "spec.autoscaling.maxReplicas")
    assert finding.message == "spec.autoscaling.maxReplicas 8 is above the limit of 5"


def test_replicas_and_autoscaling_both_above() -> None:
    verdict = check(a_fleet(replicas=7, autoscaling_max=9), REPLICAS)
    assert [f.field for f in verdict.findings] == ["spec.replicas", "spec.autoscaling.maxReplicas"]


def test_disabled_autoscaling_is_not_counted() -> None:
    subject = a_fleet(replicas=2, autoscaling_max=8, autoscaling_enabled=False)
    assert check(subject, REPLICAS).findings == ()


def test_a_scale_change_is_checked_on_the_new_replicas() -> None:
    assert check(a_scale(5), REPLICAS).findings == ()
    finding = only(check(a_scale(6), REPLICAS))
    assert (finding.field, finding.message) == (
        "spec.replicas",
        "spec.replicas 6 is above the limit of 5",
    )


def test_replicas_do_not_apply_to_an_agent() -> None:
    assert check(an_agent(), policy(maxReplicasPerFleet=0)).findings == ()


# --- requireResourceLimits ----------------------------------------------------------------

LIMITS = policy(requireResourceLimits=["cpu", "memory"])


def test_limits_set() -> None:
    assert check(an_agent(limits={"cpu": "1", "memory": "512Mi"}), LIMITS).findings == ()


def test_limits_missing_one_finding_each() -> None:
    verdict = check(an_agent(limits={"cpu": "1"}), LIMITS)
    assert only(verdict) == Finding(
        "team-a/baseline",
        "requireResourceLimits",
        "spec.resources.limits.memory",
        "enforce",
        "spec.resources.limits.memory must be set (the policy requires it)",
    )
    assert [f.field for f in check(an_agent(), LIMITS).findings] == [
        "spec.resources.limits.cpu",
        "spec.resources.limits.memory",
    ]


def test_limits_on_a_fleet_name_the_template_field() -> None:
    finding = only(check(a_fleet(limits={"memory": "1Gi"}), LIMITS))
    assert finding.field == "spec.template.spec.resources.limits.cpu"


def test_a_scale_change_has_no_agent_facts() -> None:
    everything = policy(
        models={"providers": ["anthropic"]},
        allowedTools=["x"],
        allowedImageRegistries=["ghcr.io/acme/"],
        requireResourceLimits=["cpu"],
    )
    assert check(a_scale(3, image="evil.io/x", tools=["y"]), everything).findings == ()


def test_findings_come_in_rule_order_then_policy_order() -> None:
    p1 = policy("p1", allowedImageRegistries=["ghcr.io/acme/"], requireResourceLimits=["cpu"])
    p2 = policy("p2", models={"providers": ["anthropic"]}, allowedImageRegistries=["quay.io/"])
    verdict = evaluate(an_agent(image="evil.io/x", provider="openai"), [p2, p1])
    assert [(f.rule, f.policy) for f in verdict.findings] == [
        ("models", "team-a/p2"),
        ("allowedImageRegistries", "team-a/p1"),
        ("allowedImageRegistries", "team-a/p2"),
        ("requireResourceLimits", "team-a/p1"),
    ]
    assert verdict.policies == ("team-a/p1", "team-a/p2")
