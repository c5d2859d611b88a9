"""The alerts and the Grafana dashboard name only metrics that exist: agentarmy's are
read from the /metrics of a real router process and a real operator process (which also
answers a real admission review), the API server's from the real kube-apiserver after it
called the webhook. The chart ships the same files it renders."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentarmy.devcluster.admission import LocalAdmission
from agentarmy.router.testing import RouterProcess, write_token_file
from tests.integration.operator_process import OperatorProcess, wait_for
from tests.integration.test_admission import fleet, policy

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "helm" / "agentarmy" / "files"
ALERTS = FILES / "prometheus-alerts.yaml"
DASHBOARD = FILES / "grafana-dashboard.json"
METRICS_TOKEN = "monitoring-test-metrics-reader"

# Names from outside agentarmy and the API server, which no process here exports.
EXTERNAL = {
    "up": "Prometheus, per scrape target",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "kube_deployment_spec_replicas": "kube-state-metrics",
}
# A metric name in PromQL: an identifier that is neither a function, a keyword nor a
# label name (those are followed by `(` or sit inside `by (...)` / `{...}`).
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENTIFIER = re.compile(r"(?<![\w$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "le"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = _STRINGS.sub('""', expr)
    text = _GROUPINGS.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables ($__rate_interval)
    return {
        name
        for name in _IDENTIFIER.findall(text)
        if name not in _KEYWORDS and not re.fullmatch(r"[0-9.e+-]+", name)
    }


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'sum by (namespace, le) (rate(agentarmy_a_bucket{x="y(z)", phase=~"a|b"}[5m]))'
        " / ignoring(le) agentarmy_b or on() vector(0) > bool 2 unless up{job='j'} offset 5m"
        " - (max(agentarmy_c) or absent(agentarmy_d))[$__rate_interval]"
    )
    assert metric_names(expr) == {
        "agentarmy_a_bucket",
        "agentarmy_b",
        "up",
        "agentarmy_c",
        "agentarmy_d",
    }


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    board = json.loads(DASHBOARD.read_text())
    found = {
        f"{panel['title']} [{target['refId']}]": target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert inner, variable["query"]
            found[f"${variable['name']}"] = inner.group(1)
    return found


def series_names(text: str) -> set[str]:
    """Every series name a /metrics page (text format 0.0.4) carries or declares: the
    samples' names as written, and for a declared family without samples yet (a labelled
    one before its first observation) the names its samples get. In this format a
    counter's TYPE line already names its samples (`x_total` from prometheus_client,
    `x_count` as the API server's Go client writes it); a histogram's does not."""
    suffixes = {
        "counter": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "gauge": ("",),
        "untyped": ("",),
    }
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.update(family + suffix for suffix in suffixes[kind.strip()])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def scrape(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture(scope="module")
def router_metrics(tmp_path_factory: pytest.TempPathFactory) -> str:
    workdir = tmp_path_factory.mktemp("router")
    # Scraped as the chart's ServiceMonitor does: with a token of the metrics role.
    tokens = write_token_file(
        workdir / "tokens.yaml", [{"token": METRICS_TOKEN, "name": "scraper", "role": "metrics"}]
    )
    store = f"sqlite:///{workdir}/router.db"
    with RouterProcess(store, tokens, workdir / "router.log") as router:
        return scrape(f"{router.url}/metrics", METRICS_TOKEN)


@pytest.fixture(scope="module")
def operator_and_apiserver_metrics(
    cluster: Any, admission: LocalAdmission, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """The operator's page after it leads and denied one write, and the API server's."""
    namespace = f"monitoring-{tmp_path_factory.mktemp('ns').name[-6:].lower()}"
    namespace = re.sub(r"[^a-z0-9-]", "", namespace)
    cluster.kubectl("create", "namespace", namespace)
    operator = OperatorProcess(cluster.kubeconfig, "monitoring", admission=admission)
    operator.start().wait_ready(40)
    try:
        wait_for(operator.is_leader, 40, what="the operator to lead")
        body = json.dumps(policy(maxReplicasPerFleet=1))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=body)

        def denied() -> bool:
            out = cluster.kubectl(
                "apply", "-n", namespace, "-f", "-", input=json.dumps(fleet("big", 2)), check=False
            )
            return out.returncode != 0 and "denied the request" in out.stderr

        wait_for(denied, 40, what="the webhook to deny a Fleet over the Policy's limit")
        operator_page = scrape(f"http://127.0.0.1:{operator.port}/metrics")
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    apiserver_page = cluster.kubectl("get", "--raw", "/metrics").stdout
    return operator_page, apiserver_page


def test_every_metric_in_alerts_and_dashboard_is_exported(
    router_metrics: str, operator_and_apiserver_metrics: tuple[str, str]
) -> None:
    operator_page, apiserver_page = operator_and_apiserver_metrics
    ours = series_names(router_metrics) | series_names(operator_page)
    apiserver = {n for n in series_names(apiserver_page) if n.startswith("apiserver_admission")}
    exported = ours | apiserver | set(EXTERNAL)
    used: dict[str, set[str]] = {}
    for source, expressions in (("alert", alert_expressions()), ("panel", dashboard_expressions())):
        for name, expr in expressions.items():
            names = metric_names(expr)
            assert names, f"{source} {name}: no metric found in {expr!r}"
            for metric in names:
                used.setdefault(metric, set()).add(f"{source} {name}")
    unknown = {metric: sorted(where) for metric, where in used.items() if metric not in exported}
    assert unknown == {}, "metrics no process exports"
    # The pages were real: the families the alerts lean on most are on them.
    assert {"agentarmy_router_fleet_halted", "agentarmy_router_attempt_outcomes_total"} <= ours
    assert {"agentarmy_operator_leader", "agentarmy_operator_rollout_aborted"} <= ours
    assert "apiserver_admission_webhook_rejection_count" in apiserver


def test_alerts_cover_what_people_page_on() -> None:
    expressions = alert_expressions()
    wanted = {
        "AgentarmyRouterDown": "kube_deployment_status_replicas_available",
        "AgentarmyRouterNotReady": "kube_deployment_spec_replicas",
        "AgentarmyDeadLettersRising": 'phase="DeadLettered"',
        "AgentarmyFleetHalted": "agentarmy_router_fleet_halted",
        "AgentarmyCanaryAborted": "agentarmy_operator_rollout_aborted",
        "AgentarmyAdmissionSlow": "agentarmy_admission_duration_seconds_bucket",
        "AgentarmyAdmissionErrors": 'name="policy.agentarmy.io"',
        "AgentarmyOperatorNotLeading": "agentarmy_operator_leader",
    }
    for alert, fragment in wanted.items():
        assert fragment in expressions[alert], alert
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_monitoring_folder_ships_the_charts_files() -> None:
    """monitoring/ (for use without the chart) holds the very files the chart renders."""
    for name in (ALERTS.name, DASHBOARD.name):
        shipped = REPO / "monitoring" / name
        assert shipped.read_bytes() == (FILES / name).read_bytes(), f"monitoring/{name} differs"
