"""Structured logging shared by every process: one JSON object per line.

Fields passed with ``extra=`` (namespace, taskId, ...) land at the top level
of the line, so a person can grep or jq for the ids they follow. Names that
LogRecord reserves (``name``, ``created``) can be passed inside
``extra={"fields": {...}}`` instead.
"""

from __future__ import annotations

import json
import logging
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


def configure_json_logging(level: str | int = "INFO") -> None:
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
