"""The operator process: win the Lease, then watch (kopf) and reconcile.

A replica that is not the leader only serves /healthz and waits. The leader
runs kopf (watches and indexes), one work queue per kind and its workers,
and keeps renewing the Lease; if renewal fails it stops everything at once
and exits non-zero so its pod restarts as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import kopf
from lightkube import ApiError, AsyncClient

from agentarmy.logs import configure_json_logging
from agentarmy.operator import labels, metrics
from agentarmy.operator.agents import AgentReconciler
from agentarmy.operator.cache import Cache
from agentarmy.operator.fleets import FleetReconciler
from agentarmy.operator.handlers import build_registry
from agentarmy.operator.health import start_health_server
from agentarmy.operator.kube import Kube
from agentarmy.operator.leader import LeaderElector
from agentarmy.operator.netpol import RouterPeer
from agentarmy.operator.pods import PodContext
from agentarmy.operator.policies import PolicyReconciler
from agentarmy.operator.policywatch import PolicyCatalog
from agentarmy.operator.rulesync import RulesSync
from agentarmy.operator.settings import OperatorConfig, kopf_settings
from agentarmy.operator.stats import StatsSync
from agentarmy.operator.statswatch import StatsWatch
from agentarmy.operator.tasks import TaskEvents, TaskReconciler
from agentarmy.operator.taskwatch import TaskWatch
from agentarmy.operator.webhook import WebhookConfig, start_webhook
from agentarmy.operator.workqueue import Key, WorkQueue, run_workers
from agentarmy.router.client import RouterClient, TokenSource

log = logging.getLogger("agentarmy.operator")

EXIT_LOST_LEADERSHIP = 3


class StartupError(RuntimeError):
    """The operator cannot start; the message says what to change."""


def instrumented(
    kind: str, reconcile: Callable[[Key], Awaitable[float | None]]
) -> Callable[[Key], Awaitable[float | None]]:
    async def run(key: Key) -> float | None:
        started = time.perf_counter()
        outcome = "error"
        try:
            requeue = await reconcile(key)
            outcome = "ok" if requeue is None else "requeue"
            return requeue
        finally:
            metrics.RECONCILES.labels(kind, outcome).inc()
            metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)

    return run


def _log_error(kind: str) -> Callable[[Key, BaseException, float], None]:
    def report(key: Key, err: BaseException, delay: float) -> None:
        if isinstance(err, ApiError) and err.status.code == 409:
            # Our cache was behind the object: normal, retried once the watch catches up.
            log.debug("conflict on %s/%s; retrying in %.1fs", key[0], key[1], delay)
            return
        log.warning(
            "reconcile failed, retrying in %.1fs: %s",
            delay,
            err,
            extra={"kind": kind, "namespace": key[0], "object": key[1]},
        )

    return report


async def _report_gauges(cache: Cache, queues: dict[str, WorkQueue]) -> None:
    while True:
        for kind, count in cache.counts().items():
            metrics.MANAGED.labels(kind).set(count)
        for kind, queue in queues.items():
            metrics.QUEUE_DEPTH.labels(kind).set(len(queue))
        await asyncio.sleep(5)


def _router_client(config: OperatorConfig) -> RouterClient | None:
    """One client (one connection pool) for router stats and Tasks; None without a token."""
    if not config.router_token_file:
        log.info("no AGENTARMY_ROUTER_TOKEN_FILE: no task counts in status, no Tasks submitted")
        return None
    token = TokenSource(path=Path(config.router_token_file))
    return RouterClient(config.router_url, token, config.router_ca_file or None)


async def _sync_stats(
    config: OperatorConfig,
    cache: Cache,
    kube: Kube,
    client: RouterClient | None,
    fleet_queue: WorkQueue,
) -> None:
    """The coarse status sync and, beside it, the watch that hears of changes at once."""
    if client is None:
        await asyncio.Event().wait()
        return
    sync = StatsSync(cache, kube, client, config.stats_seconds, fleet_queue.add_all)
    if not config.stats_watch:
        await sync.run()
        return
    watch = StatsWatch(cache, client, fleet_queue.add_all, sync.scale_up)
    await asyncio.gather(sync.run(), watch.run())


@contextlib.asynccontextmanager
async def _admission(config: OperatorConfig, client: AsyncClient) -> AsyncIterator[PolicyCatalog]:
    """Watch Policies and serve the webhook (every replica, leader or not)."""
    catalog = PolicyCatalog(client)
    if not config.webhook_cert_file:
        log.info("no AGENTARMY_WEBHOOK_CERT_FILE: this replica serves no admission webhook")
        catalog.synced.set()
        yield catalog
        return
    webhook = WebhookConfig(
        config.webhook_address,
        config.webhook_port,
        Path(config.webhook_cert_file),
        Path(config.webhook_key_file or config.webhook_cert_file),
        config.webhook_reload_seconds,
    )
    try:
        runner, follower = await start_webhook(webhook, catalog, client)
    except (OSError, ssl.SSLError) as err:
        raise StartupError(
            f"cannot serve the admission webhook on {webhook.address}:{webhook.port} with "
            f"{webhook.cert_file} and {webhook.key_file}: {err}; check "
            "AGENTARMY_WEBHOOK_CERT_FILE, AGENTARMY_WEBHOOK_KEY_FILE and AGENTARMY_WEBHOOK_PORT"
        ) from None
    watching = asyncio.create_task(catalog.run())
    log.info("serving the admission webhook on %s:%d", webhook.address, webhook.port)
    try:
        yield catalog
    finally:
        watching.cancel()
        follower.cancel()
        await runner.cleanup()


async def run(config: OperatorConfig, stop: asyncio.Event) -> int:
    client = AsyncClient(field_manager=labels.FIELD_MANAGER)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.close)
        catalog = await stack.enter_async_context(_admission(config, client))
        return await _run(config, client, catalog, stop)
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the stack may swallow)


async def _run(
    config: OperatorConfig, client: AsyncClient, catalog: PolicyCatalog, stop: asyncio.Event
) -> int:
    cache = Cache()
    try:
        health = await start_health_server(
            config.health_address,
            config.health_port,
            alive=lambda: True,
            # Readiness gates the webhook Service: ready once this replica can answer
            # admission. (A leader's caches fill only with the first object; an empty
            # cluster must not leave the webhook without endpoints.)
            ready=catalog.synced.is_set,
        )
    except OSError as err:
        raise StartupError(
            f"cannot serve /healthz and /metrics on {config.health_address}:"
            f"{config.health_port}: {err.strerror}; set AGENTARMY_HEALTH_PORT to a free port"
        ) from None
    elector = LeaderElector(
        client,
        config.namespace,
        config.lease_name,
        config.identity,
        config.lease_seconds,
        config.renew_seconds,
        config.retry_seconds,
    )
    try:
        acquiring = asyncio.create_task(elector.acquire())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            acquiring.cancel()
            return 0
        stopping.cancel()
        return await _lead(config, client, cache, elector, stop)
    finally:
        await health.cleanup()


async def _lead(
    config: OperatorConfig,
    client: AsyncClient,
    cache: Cache,
    elector: LeaderElector,
    stop: asyncio.Event,
) -> int:
    router = _router_client(config)
    try:
        return await _lead_with(config, client, cache, elector, stop, router)
    finally:
        if router is not None:
            await router.close()


async def _lead_with(
    config: OperatorConfig,
    client: AsyncClient,
    cache: Cache,
    elector: LeaderElector,
    stop: asyncio.Event,
    router: RouterClient | None,
) -> int:
    agent_queue, fleet_queue = WorkQueue("agent"), WorkQueue("fleet")
    policy_queue, task_queue = WorkQueue("policy"), WorkQueue("task")
    kube = Kube(client)
    agents = AgentReconciler(cache, kube, PodContext(config.router_url, config.router_ca_file))
    fleets = FleetReconciler(cache, kube, RouterPeer(config.namespace, config.router_url))
    policies = PolicyReconciler(cache, kube)
    watch = TaskWatch(cache, router, task_queue)
    task_events = TaskEvents(task_queue, watch)
    task_reconciler = TaskReconciler(cache, kube, router, watch, task_events)
    rules = (
        RulesSync(
            cache,
            router,
            config.rules_sync_seconds,
            fleet_queue.add_all,
        )
        if router
        else None
    )
    kopf_stop = asyncio.Event()
    tasks = {
        "kopf": asyncio.create_task(
            kopf.operator(
                registry=build_registry(
                    cache,
                    agent_queue,
                    fleet_queue,
                    policy_queue,
                    task_events,
                    rules.mark if rules else lambda namespace: None,
                ),
                settings=kopf_settings(),
                clusterwide=True,
                standalone=True,
                stop_flag=kopf_stop,
            )
        ),
        "agents": asyncio.create_task(
            run_workers(
                agent_queue,
                instrumented("Agent", agents.reconcile),
                config.agent_workers,
                _log_error("Agent"),
            )
        ),
        "fleets": asyncio.create_task(
            run_workers(
                fleet_queue,
                instrumented("Fleet", fleets.reconcile),
                config.fleet_workers,
                _log_error("Fleet"),
            )
        ),
        "policies": asyncio.create_task(
            run_workers(
                policy_queue,
                instrumented("Policy", policies.reconcile),
                config.policy_workers,
                _log_error("Policy"),
            )
        ),
        "tasks": asyncio.create_task(
            run_workers(
                task_queue,
                instrumented("Task", task_reconciler.reconcile),
                config.task_workers,
                _log_error("Task"),
            )
        ),
        "taskwatch": asyncio.create_task(watch.run()),
        "gauges": asyncio.create_task(
            _report_gauges(
                cache,
                {
                    "Agent": agent_queue,
                    "Fleet": fleet_queue,
                    "Policy": policy_queue,
                    "Task": task_queue,
                },
            )
        ),
        "lease": asyncio.create_task(elector.keep()),
        "stats": asyncio.create_task(_sync_stats(config, cache, kube, router, fleet_queue)),
        "rules": asyncio.create_task(rules.run() if rules else asyncio.Event().wait()),
        "stop": asyncio.create_task(stop.wait()),
    }
    done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    lost = tasks["lease"] in done
    if not lost:
        for name, task in tasks.items():
            if task in done and name != "stop" and not task.cancelled() and task.exception():
                log.error("%s stopped: %r", name, task.exception())
    # Stop acting first; only then hand the lease over.
    for name in (
        "agents",
        "fleets",
        "policies",
        "tasks",
        "taskwatch",
        "gauges",
        "lease",
        "stats",
        "rules",
    ):
        tasks[name].cancel()
    kopf_stop.set()
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
        await asyncio.wait_for(tasks["kopf"], timeout=0 if lost else 10)
    tasks["kopf"].cancel()
    tasks["stop"].cancel()
    if lost:
        log.error("lost leadership; exiting so a standby can take over")
        return EXIT_LOST_LEADERSHIP
    await elector.release()
    return 0


def main() -> int:
    configure_json_logging()
    config = OperatorConfig.from_env()
    log.info("starting operator", extra={"identity": config.identity, "router": config.router_url})

    async def amain() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run(config, stop)

    try:
        return asyncio.run(amain())
    except StartupError as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
