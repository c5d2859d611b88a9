"""Scale a Fleet on its queue depth, between autoscaling.minReplicas and maxReplicas.

Like the HPA: the wanted size is the work (queued + running tasks) divided by
the target per agent, rounded up and clamped. Growing happens at once;
shrinking only after the wanted size has stayed lower for the whole
stabilization window, using the highest wish seen in that window, so a
momentarily empty queue does not kill busy agents. Replicas are written
through the scale subresource, as `kubectl scale` and an HPA would. With
``minReplicas: 0`` an idle fleet goes to zero Agents and the next task wakes it
(the operator hears of it through the router's watch, not the coarse poll).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentarmy.api.common import parse_duration
from agentarmy.api.fleet import Autoscaling


def manages(autoscaling: Autoscaling | None, replicas: int) -> bool:
    """Whether the autoscaler sizes the fleet now. As for the HPA, ``replicas: 0`` is a
    person stopping the fleet (the autoscaler leaves it alone) unless
    ``autoscaling.minReplicas`` is 0: then zero is within the autoscaler's own range, the
    fleet is idle rather than stopped, and the next task wakes it. To stop such a fleet,
    set ``autoscaling.enabled: false`` (or minReplicas above 0) with ``replicas: 0``."""
    if autoscaling is None or not autoscaling.enabled:
        return False
    return replicas > 0 or autoscaling.minReplicas == 0


def wanted(autoscaling: Autoscaling, queued: int, running: int) -> int:
    work = queued + running
    size = -(-work // autoscaling.targetQueueDepthPerAgent)
    return max(autoscaling.minReplicas, min(autoscaling.maxReplicas, size))


def within_limit(target: int, current: int, limit: int | None) -> int:
    """``target`` held at an enforced Policy limit: never grow past it (a Fleet already
    above it is not shrunk by the limit; see operator/compliance.py)."""
    if limit is None or target <= limit or target <= current:
        return target
    return max(current, limit)


@dataclass
class Recommendations:
    """Recent wishes per fleet (in memory, like the HPA's: a restart only
    restarts the stabilization window, which errs on the side of capacity)."""

    _seen: dict[tuple[str, str], list[tuple[float, int]]] = field(default_factory=dict)
    _since: dict[tuple[str, str], float] = field(default_factory=dict)

    def decide(
        self, key: tuple[str, str], autoscaling: Autoscaling, current: int, wish: int, now: float
    ) -> int:
        window = parse_duration(autoscaling.scaleDownStabilization)
        since = self._since.setdefault(key, now)
        history = [(t, w) for t, w in self._seen.get(key, []) if now - t <= window]
        history.append((now, wish))
        self._seen[key] = history
        if wish >= current:
            return wish
        if now - since < window:
            return current  # not watched for a whole window yet (e.g. just restarted)
        return min(current, max(w for _, w in history))

    def forget(self, key: tuple[str, str]) -> None:
        self._seen.pop(key, None)
        self._since.pop(key, None)
