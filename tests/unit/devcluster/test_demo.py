"""The demo's parts that are pure logic: the text progress bar (drawn in place on a
terminal, a line per tenth on a pipe) and running the steps into a summary."""

from __future__ import annotations

from typing import Any, cast

import pytest

from agentarmy.devcluster.demo import Bar, Demo, Outcome, Step, progress_bar, run_steps, summarize


@pytest.mark.parametrize(
    ("done", "total", "drawn"),
    [
        (0, 100, "[....................] 0/100"),
        (50, 100, "[##########..........] 50/100"),
        (7, 7, "[####################] 7/7"),
        (1, 3, "[######..............] 1/3"),
    ],
)
def test_progress_bar(done: int, total: int, drawn: str) -> None:
    assert progress_bar(done, total) == drawn


def test_on_a_pipe_the_bar_prints_a_line_per_tenth(capsys: Any) -> None:
    bar = Bar(100)
    for _ in range(100):
        bar.advance()
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11  # the first task, then every tenth
    assert lines[0].strip() == "[....................] 1/100"
    assert lines[-1].strip() == "[####################] 100/100"


def _fine(_: Demo) -> Outcome:
    return Outcome(True, "it worked")


def _broken(_: Demo) -> Outcome:
    raise TimeoutError("fleet x: not within 60s")


def _wrong(_: Demo) -> Outcome:
    return Outcome(False, "0/3 agents")


def test_a_step_that_breaks_fails_and_the_next_ones_still_run(capsys: Any) -> None:
    steps = (Step("one", "p1", _fine), Step("two", "p2", _broken), Step("three", "p3", _fine))
    outcomes = run_steps(cast(Demo, None), steps)
    assert [o.passed for _, o in outcomes] == [True, False, True]
    assert outcomes[1][1].evidence == "TimeoutError: fleet x: not within 60s"
    assert not summarize(outcomes)
    out = capsys.readouterr().out
    assert "==> [2/3] two: p2" in out
    assert "  FAIL  2. two    TimeoutError: fleet x: not within 60s" in out
    assert out.rstrip().endswith("2/3 steps passed")


def test_without_the_first_step_nothing_else_runs() -> None:
    steps = (Step("one", "p1", _wrong), Step("two", "p2", _fine))
    outcomes = run_steps(cast(Demo, None), steps)
    assert [(o.passed, o.evidence) for _, o in outcomes] == [
        (False, "0/3 agents"),
        (False, "skipped: step 1 failed"),
    ]


def test_the_summary_passes_only_when_every_step_did() -> None:
    assert summarize([(Step("one", "p1", _fine), Outcome(True, "ok"))])
