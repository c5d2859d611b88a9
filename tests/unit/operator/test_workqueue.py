"""The keyed work queue: dedup, no concurrent processing of a key, retries."""

from __future__ import annotations

import asyncio

from agentarmy.operator.workqueue import WorkQueue, run_workers


async def test_key_is_deduplicated_while_queued() -> None:
    queue = WorkQueue("t")
    queue.add(("ns", "a"))
    queue.add(("ns", "a"))
    assert len(queue) == 1


async def test_key_changed_while_processing_runs_again_after() -> None:
    queue = WorkQueue("t")
    key = ("ns", "a")
    queue.add(key)
    got = await queue.get()
    queue.add(key)  # changed while processing: must not be handed to a second worker now
    assert len(queue) == 0
    queue.done(got)
    assert len(queue) == 1


async def test_failures_are_retried_with_backoff() -> None:
    queue = WorkQueue("t")
    calls: list[float] = []
    errors: list[float] = []

    async def reconcile(_: tuple[str, str]) -> float | None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise RuntimeError("boom")
        return None

    queue.add(("ns", "a"))
    workers = asyncio.create_task(
        run_workers(queue, reconcile, 2, lambda _k, _e, delay: errors.append(delay))
    )
    for _ in range(100):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.05)
    workers.cancel()
    assert errors == [0.5, 1.0]
    assert calls[2] - calls[1] >= 0.9
