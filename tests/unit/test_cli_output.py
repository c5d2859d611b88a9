"""armyctl's one output helper, and every command that shows something taking -o alike."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest
import yaml

from agentarmy.api import wire
from agentarmy.cli import output
from agentarmy.cli.governance import approvals_table
from agentarmy.cli.main import build_parser
from agentarmy.cli.tasks import task_table

# Commands that run something or act on the machine: no object to print.
NOTHING_TO_SHOW = {
    "cluster build",
    "cluster up",
    "cluster down",
    "cluster env",
    "crds",
    "operator",
    "router",
    "agent",
}
# Commands whose table has optional columns.
WIDE = {"list", "tree", "tasks tree", "agents", "approvals", "rules"}


def commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every leaf command of armyctl, by its words (``rollout status``)."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield prefix.strip(), parser
        return
    for name, child in groups[0].choices.items():
        yield from commands(child, f"{prefix} {name}")


def output_choices(parser: argparse.ArgumentParser) -> set[str] | None:
    flag = next((a for a in parser._actions if "--output" in a.option_strings), None)
    if flag is None:
        return None
    assert flag.option_strings == ["-o", "--output"]
    return set(flag.choices or ())


@pytest.mark.parametrize(
    ("name", "parser"), list(commands(build_parser())), ids=lambda v: str(v)[:20]
)
def test_every_command_that_shows_something_takes_the_same_output_flag(
    name: str, parser: argparse.ArgumentParser
) -> None:
    choices = output_choices(parser)
    if name in NOTHING_TO_SHOW:
        assert choices is None, f"armyctl {name}: -o/--output names a format everywhere else"
        return
    expected = {"json", "yaml", "wide"} if name in WIDE else {"json", "yaml"}
    assert choices == expected, f"armyctl {name} -o"


def test_the_survey_saw_every_kind_of_command() -> None:
    names = {name for name, _ in commands(build_parser())}
    assert {"rollout status", "rollout retry", "resume", "get", "tasks tree"} <= names
    assert names >= NOTHING_TO_SHOW | WIDE  # no stale names in the lists above


def test_wide_is_refused_where_there_is_no_table() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["resume", "fleet/f", "-o", "wide"])
    assert build_parser().parse_args(["list", "-o", "wide"]).output == "wide"
    assert build_parser().parse_args(["rollout", "status", "fleet/f", "-o", "yaml"]).output


def test_table_pads_columns_and_keeps_wide_ones_for_wide() -> None:
    rows = [("NAME", "PHASE", "TRACE"), ("a-long-name", "Queued", "t1"), ("b", "Running", "t2")]
    assert output.table(rows, ("TRACE",)).splitlines() == [
        "NAME         PHASE",
        "a-long-name  Queued",
        "b            Running",
    ]
    assert (
        output.table(rows, ("TRACE",), wide=True).splitlines()[0] == "NAME         PHASE    TRACE"
    )


TASK = wire.Task(
    id="t-1",
    namespace="ns",
    fleet="echo",
    capability="echo",
    priority=5,
    timeout="1m",
    maxAttempts=3,
    parentTaskId="t-0",
    traceId="trace-1",
    phase="Running",
    seq=1,
    createdAt=1_000.0,
    availableAt=1_000.0,
    agent="ns/echo-0",
    attempt=1,
)


def test_json_and_yaml_show_the_same_object(capsys: pytest.CaptureFixture[str]) -> None:
    output.show("json", TASK, lambda wide: "not this")
    as_json = json.loads(capsys.readouterr().out)
    output.show("yaml", TASK, lambda wide: "not this")
    assert yaml.safe_load(capsys.readouterr().out) == as_json == TASK.model_dump(mode="json")
    output.show("yaml", {"kind": "Fleet", "spec": {"replicas": 2}}, str)
    assert capsys.readouterr().out == "kind: Fleet\nspec:\n  replicas: 2\n"


@pytest.mark.parametrize(("flag", "wide"), [(None, False), ("wide", True)])
def test_text_is_rendered_wide_only_for_wide(
    flag: str | None, wide: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    output.show(flag, TASK, lambda is_wide: f"wide={is_wide}")
    assert capsys.readouterr().out == f"wide={wide}\n"


def test_task_list_wide_adds_agent_parent_and_trace() -> None:
    narrow = task_table([TASK], now=1_090.0, wide=False).splitlines()
    assert narrow[0].split() == [
        "ID",
        "FLEET",
        "CAPABILITY",
        "PRIORITY",
        "PHASE",
        "ATTEMPTS",
        "AGE",
    ]
    assert narrow[1].split() == ["t-1", "echo", "echo", "5", "Running", "1/3", "1m"]
    wide = task_table([TASK], now=1_090.0, wide=True).splitlines()
    assert wide[0].split()[-3:] == ["AGENT", "PARENT", "TRACE"]
    assert wide[1].split()[-3:] == ["ns/echo-0", "t-0", "trace-1"]


def test_approvals_wide_shows_the_arguments_whole_and_the_reason() -> None:
    approval = wire.Approval(
        id="a-1",
        tool="http.post",
        arguments={"body": "x" * 100},
        agent="ns/a-0",
        attempt=1,
        policies=["ns/guard"],
        reason="to file the report",
        requestedAt=1_000.0,
        deadlineAt=1_300.0,
    )
    found = wire.ApprovalList(
        approvals=[
            wire.PendingApproval(
                taskId="t-1",
                namespace="ns",
                fleet="f",
                capability="report",
                traceId="trace-1",
                approval=approval,
            )
        ]
    )
    narrow = approvals_table(found, now=1_010.0, wide=False)
    wide = approvals_table(found, now=1_010.0, wide=True)
    assert "REASON" not in narrow and "x" * 100 not in narrow
    assert '{"body": "' + "x" * 50 in narrow  # the first 60 characters
    assert "to file the report" in wide and "x" * 100 in wide
