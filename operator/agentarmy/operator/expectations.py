"""Creations we made but the watch has not shown yet (client-go's "expectations").

Only an optimisation against wasted writes: a deterministic name makes a
repeated create a harmless 409, and a restart starts with a complete cache,
so losing this memory never costs correctness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agentarmy.operator.workqueue import Key

TTL_SECONDS = 30.0


@dataclass
class Expectations:
    _pending: dict[Key, dict[str, float]] = field(default_factory=dict)

    def expect(self, key: Key, names: list[str] | tuple[str, ...]) -> None:
        now = time.monotonic()
        self._pending.setdefault(key, {}).update({n: now for n in names})

    def pending(self, key: Key, seen: set[str]) -> set[str]:
        """Names expected for ``key`` and not yet seen; seen or stale ones are dropped."""
        entries = self._pending.get(key)
        if not entries:
            return set()
        now = time.monotonic()
        for name in [n for n, t in entries.items() if n in seen or now - t > TTL_SECONDS]:
            del entries[name]
        if not entries:
            del self._pending[key]
        return set(entries)
