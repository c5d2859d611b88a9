"""JSON log lines: the direct path for frequent events writes exactly what a record would."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agentarmy import logs


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    """Our JSON logging on a StringIO; the process's logging set-up restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logs._json_handler)
    logs.configure_json_logging("INFO")
    stream = io.StringIO()
    root.handlers[0].stream = stream  # type: ignore[attr-defined]
    yield stream
    root.handlers[:], _, logs._json_handler = saved
    root.setLevel(saved[1])


FIELDS = {"event": "assigned", "taskId": "t-1", "attempt": 2, "agent": "default/a1"}


def test_the_direct_line_is_the_line_a_log_record_makes(
    json_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest's own capture handler sits on the root logger while a test runs: without it
    # ours is the only one, as in a router process.
    monkeypatch.setattr(logging.getLogger(), "handlers", [logs._json_handler])
    made: list[str] = []
    make_record = logging.Logger.makeRecord
    monkeypatch.setattr(
        logging.Logger,
        "makeRecord",
        lambda self, *args, **kw: made.append(self.name) or make_record(self, *args, **kw),
    )
    logger = logging.getLogger("agentarmy.router.decisions")
    logs.log_fields(logger, "assigned", dict(FIELDS))
    assert made == []  # the direct path: no LogRecord
    logger.info("%s", "assigned", extra={"fields": dict(FIELDS)})
    direct, via_record = (json.loads(line) for line in json_stream.getvalue().splitlines())
    assert direct.pop("ts") <= via_record.pop("ts")
    assert (
        direct
        == via_record
        == {
            "level": "info",
            "logger": "agentarmy.router.decisions",
            "msg": "assigned",
            **FIELDS,
        }
    )
    assert '"event":"assigned"' in json_stream.getvalue()  # compact: what tools grep for


def test_any_other_handler_on_the_way_gets_an_ordinary_record(json_stream: io.StringIO) -> None:
    logger = logging.getLogger("agentarmy.router.decisions")
    captured: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = captured.append  # type: ignore[method-assign]
    logger.addHandler(extra)
    try:
        logs.log_fields(logger, "assigned", dict(FIELDS))
    finally:
        logger.removeHandler(extra)
    assert [r.fields for r in captured] == [FIELDS]  # type: ignore[attr-defined]
    assert json.loads(json_stream.getvalue())["taskId"] == "t-1"  # and it still propagates


def test_nothing_is_written_below_the_configured_level(json_stream: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    logs.log_fields(logging.getLogger("agentarmy.router.decisions"), "assigned", dict(FIELDS))
    assert json_stream.getvalue() == ""
