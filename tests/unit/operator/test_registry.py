"""Every kind the API declares has a handler: a kind nobody reconciles is a promise
the code does not keep."""

from __future__ import annotations

from typing import Any

import pytest

from agentarmy.api.common import GROUP
from agentarmy.api.resources import RESOURCES
from agentarmy.operator.cache import Cache
from agentarmy.operator.handlers import build_registry
from agentarmy.operator.workqueue import WorkQueue


def watched_plurals() -> set[str]:
    """Plurals of our group that an event handler (the reconcilers' trigger) watches."""
    registry = build_registry(Cache(), WorkQueue("a"), WorkQueue("f"), WorkQueue("p"))
    handlers: Any = registry._watching.get_all_handlers()  # kopf has no public listing
    return {h.selector.any_name for h in handlers if h.selector.group == GROUP}


@pytest.mark.parametrize("plural", [r.plural for r in RESOURCES])
def test_every_kind_has_an_event_handler(plural: str) -> None:
    assert plural in watched_plurals()
