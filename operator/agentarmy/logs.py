"""Structured logging shared by every process: one JSON object per line.

Fields passed with ``extra=`` (namespace, taskId, ...) land at the top level
of the line, so a person can grep or jq for the ids they follow. Names that
LogRecord reserves (``name``, ``created``) can be passed inside
``extra={"fields": {...}}`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# kopf attaches its whole settings object and a posting flag to each record.
_SKIP = _STANDARD | {"settings", "k8s_skip"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        attributes = vars(record)
        for key in attributes.keys() - _SKIP:  # the extras: a set difference, not a loop
            value = attributes[key]
            if key == "fields" and isinstance(value, dict):
                line.update(value)
            elif not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


_json_handler: logging.Handler | None = None
"""The handler configure_json_logging installed, for log_fields' direct path."""


def log_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """One INFO line with ``fields`` at the top level, for frequent events (the router's
    decisions: two per task).

    When our JSON handler is the only one on the way up from ``logger``, the line — the one
    JsonFormatter would make — goes straight to its stream without a LogRecord: that
    machinery cost the router ~45 µs a line, a fifth of a no-op task's CPU. Any other
    set-up (a test's log capture, extra handlers or filters) gets an ordinary record.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _json_handler
    if handler is None or not _only_handler(logger, handler):
        logger.info("%s", msg, extra={"fields": fields})
        return
    line = {"ts": round(time.time(), 6), "level": "info", "logger": logger.name, "msg": msg}
    line.update(fields)
    text = json.dumps(line, separators=(",", ":"), default=str) + "\n"
    stream = handler.stream  # type: ignore[attr-defined]
    with handler.lock or contextlib.nullcontext():
        stream.write(text)
        stream.flush()


def _only_handler(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether ``handler`` alone (no filters, no level above INFO) would take the record."""
    if handler.filters or handler.level > logging.INFO:
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return False
        if current.handlers:
            return current.handlers == [handler]
        if not current.propagate:
            return False
        current = current.parent
    return False


def configure_json_logging(level: str | int = "INFO") -> None:
    global _json_handler
    # The lines carry none of these, and gathering them costs more than formatting a line
    # (the logging HOWTO's "Optimization": no caller lookup, no thread or process names).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _json_handler = handler
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Per-request and per-handler chatter: one line per API call or watch event
    # would drown the decisions at a thousand agents.
    for noisy in (
        "uvicorn.access",
        "httpx",
        "httpx2",
        "httpcore",
        "aiohttp.access",
        "kopf.objects",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
