"""The Celery side of the benchmark: one no-op task on Redis, configured for speed and fairness
(no gossip/mingle/events; results in Redis so every task has a recorded outcome, like ours)."""

from __future__ import annotations

import os

from celery import Celery

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/1")
DURABLE = os.environ.get("BENCH_CELERY_DURABLE") == "1"

app = Celery("bench", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
    task_acks_late=DURABLE,
    task_reject_on_worker_lost=DURABLE,
    worker_send_task_events=False,
    task_send_sent_event=False,
    result_extended=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None
