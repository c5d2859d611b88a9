"""The agent runtime: register, claim, run skills, report, heartbeat; drain on SIGTERM.

One loop claims work (long-poll, up to the free slots, carrying finished results
with it); one loop renews leases and hears about cancellations; one loop sends
results promptly when the claim loop is busy. Results that cannot be delivered
(router down) are kept and retried: the router's fencing decides whether they
still count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from agentarmy.agent.settings import AgentSettings
from agentarmy.agent.skills import (
    ApprovalAsk,
    ChildrenAsk,
    Parked,
    Skill,
    SkillFailed,
    TaskContext,
    load_skills,
    tool_skills,
)
from agentarmy.api import wire
from agentarmy.heap import freeze_startup_objects
from agentarmy.router.client import TRANSIENT, RouterClient, RouterError, TokenSource

log = logging.getLogger("agentarmy.agent")

POLL_SECONDS = 20.0
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0)


@dataclass
class _Running:
    lease: wire.Lease
    task: asyncio.Task[None]
    dropped: str = ""
    """Set when the router took the lease back (stale or cancelled): do not report."""


class AgentRuntime:
    def __init__(
        self,
        settings: AgentSettings,
        client: RouterClient,
        skills: Mapping[str, Skill],
        tools: Mapping[str, Skill] | None = None,
        drain_seconds: float = 25.0,
    ) -> None:
        self.settings = settings
        self.client = client
        self.skills = dict(skills)
        self.tools = dict(tools or {})
        self.drain_seconds = drain_seconds
        self.stopping = asyncio.Event()
        self._running: dict[str, _Running] = {}
        self._results: list[wire.TaskResult] = []
        self._results_ready = asyncio.Event()
        self._slot_freed = asyncio.Event()
        """Set when a task ends, and by stop(): what a full claim loop waits for."""
        self._polling = False
        self.completed = 0

    @property
    def free_slots(self) -> int:
        return self.settings.concurrency - len(self._running)

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        await self._register()
        freeze_startup_objects()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._flush_loop(), name="flush-results"),
        ]
        claim = asyncio.create_task(self._claim_loop(), name="claim")
        await self.stopping.wait()
        # Tell the router first: it stops dispatching to us and ends our pending long-poll,
        # so no task is leased to us after we stop listening.
        await self._quiet_heartbeat(draining=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(claim, timeout=5.0)
        await self._drain()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._send_results(final=True)
        log.info("agent %s stopped after %d tasks", self.settings.name, self.completed)

    def stop(self) -> None:
        self.stopping.set()
        self._slot_freed.set()

    async def _register(self) -> None:
        registration = wire.RegisterAgent(
            namespace=self.settings.namespace,
            name=self.settings.name,
            fleet=self.settings.fleet,
            capabilities=self.settings.capabilities,
            concurrency=self.settings.concurrency,
            templateHash=self.settings.template_hash,
            role=self.settings.role,
        )
        attempt = 0
        while not self.stopping.is_set():
            try:
                await self.client.register(registration)
                log.info(
                    "registered as %s/%s in fleet %s",
                    self.settings.namespace,
                    self.settings.name,
                    self.settings.fleet,
                )
                return
            except TRANSIENT as error:
                log.info("router not reachable (%s); retrying", type(error).__name__)
            except RouterError as error:
                if error.status < 500:
                    raise
                log.info("router not ready: %s", error)
            await asyncio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
            attempt += 1

    async def _drain(self) -> None:
        """Let running tasks finish for ``drain_seconds``, then hand the rest back."""
        if self._running:
            log.info("draining: %d task(s) running", len(self._running))
            tasks = [r.task for r in self._running.values()]
            await asyncio.wait(tasks, timeout=self.drain_seconds)
        for running in list(self._running.values()):
            running.dropped = "released"
            running.task.cancel()
            self._queue_result(
                wire.TaskResult(
                    taskId=running.lease.taskId,
                    attempt=running.lease.attempt,
                    outcome="released",
                    error="agent shutting down",
                )
            )
        await asyncio.gather(
            *(r.task for r in list(self._running.values())), return_exceptions=True
        )

    # -- claiming ---------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            if self.free_slots <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            results = self._take_results()
            request = wire.ClaimRequest(
                max=self.free_slots, waitSeconds=POLL_SECONDS, results=results
            )
            self._polling = True
            delivered = False
            try:
                response = await self.client.claim(
                    self.settings.namespace, self.settings.name, request
                )
                delivered = True
            except (RouterError, *TRANSIENT) as error:
                failures += 1
                if not self.stopping.is_set():
                    await self._recover(error, failures)
                continue
            finally:
                self._polling = False
                if not delivered:  # not delivered (or not known to be): keep them
                    self._results[:0] = results
            failures = 0
            self._log_acks(response.results)
            for lease in response.tasks:
                self._start(lease)

    async def _recover(self, error: Exception, failures: int) -> None:
        if isinstance(error, RouterError) and error.status == 404 and "register" in error.message:
            await self._register()  # the router lost us (new store?): announce again
            return
        if isinstance(error, RouterError) and error.status in (401, 403):
            log.error("router refused this agent: %s", error)
        else:
            log.info("claim failed (%s); retrying", error)
        await asyncio.sleep(RETRY_SECONDS[min(failures - 1, len(RETRY_SECONDS) - 1)])

    def _start(self, lease: wire.Lease) -> None:
        task = asyncio.create_task(self._execute(lease), name=f"task-{lease.taskId}")
        self._running[lease.taskId] = _Running(lease, task)

    # -- running a task ---------------------------------------------------------------------

    async def _execute(self, lease: wire.Lease) -> None:
        started = time.monotonic()
        result: wire.TaskResult | None = None
        try:
            result = await self._run_skill(lease)
        except asyncio.CancelledError:
            pass  # the router took the lease back, or we are draining (released above)
        finally:
            running = self._running.pop(lease.taskId, None)
            self._slot_freed.set()
            if result is not None and running is not None and not running.dropped:
                self.completed += 1
                self._queue_result(result)
            log.debug(
                "task %s attempt %d took %.3fs",
                lease.taskId,
                lease.attempt,
                time.monotonic() - started,
            )

    async def _run_skill(self, lease: wire.Lease) -> wire.TaskResult | None:
        """The attempt's result; None when the task was parked (the router holds it)."""

        def failed(
            error: str, retryable: bool = True, refused_by: wire.RefusedBy | None = None
        ) -> wire.TaskResult:
            return wire.TaskResult(
                taskId=lease.taskId,
                attempt=lease.attempt,
                outcome="failed",
                error=error[: wire.MAX_ERROR_CHARS],
                retryable=retryable,
                refusedBy=refused_by,
            )

        skill = self.skills.get(lease.capability)
        if skill is None:
            return failed(f"agent {self.settings.name} has no skill for {lease.capability}", False)
        context = TaskContext(
            task_id=lease.taskId,
            attempt=lease.attempt,
            input=lease.input,
            trace_id=lease.traceId,
            settings=self.settings,
            hand_off=lambda child: self._hand_off(lease, child),
            tools=self.tools,
            tool_rules=lease.tools,
            budget=_LeaseBudget(self.client, self.settings, lease),
            checkpoints=_LeaseCheckpoints(self.client, self.settings, lease),
            approval=lease.approval,
            checkpoint=lease.checkpoint,
            children=lease.children,
        )
        timeout = max(0.001, lease.deadlineAt - time.time())
        try:
            async with asyncio.timeout(timeout):  # no extra task per run, unlike wait_for
                outcome = await skill.run(context)
        except TimeoutError:
            return failed(f"skill {skill.name} timed out after {timeout:.1f}s")
        except Parked as parked:
            log.info("task %s waits for %s; lease given back", lease.taskId, parked)
            return None
        except SkillFailed as error:
            return failed(str(error) or "skill failed", error.retryable, error.refused_by)
        except Exception as error:  # a skill bug fails the attempt, not the agent
            log.exception("skill %s crashed on task %s", skill.name, lease.taskId)
            return failed(f"skill {skill.name} crashed: {type(error).__name__}: {error}")
        return wire.TaskResult(
            taskId=lease.taskId,
            attempt=lease.attempt,
            outcome="succeeded",
            result=outcome.output,
            usage=outcome.usage,
        )

    async def _hand_off(self, lease: wire.Lease, child: wire.SubmitTask) -> wire.SubmitResponse:
        try:
            return await self.client.hand_off(
                self.settings.namespace, self.settings.name, lease, child
            )
        except RouterError as error:
            raise SkillFailed(
                f"hand-off refused: {error.message}", retryable=error.status >= 500
            ) from error

    # -- results and heartbeats ---------------------------------------------------------------

    def _queue_result(self, result: wire.TaskResult) -> None:
        self._results.append(result)
        self._results_ready.set()

    def _take_results(self) -> list[wire.TaskResult]:
        taken = self._results[: wire.MAX_BATCH]
        del self._results[: wire.MAX_BATCH]
        return taken

    async def _flush_loop(self) -> None:
        """Send results now when the claim loop will not carry them soon (it is polling or full)."""
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            await asyncio.sleep(0)  # let the claim loop take them if it is about to claim
            if self._results and (self._polling or self.free_slots <= 0):
                await self._send_results()

    async def _send_results(self, final: bool = False) -> None:
        attempts = 0
        while self._results:
            batch = self._take_results()
            try:
                response = await self.client.report(
                    self.settings.namespace, self.settings.name, batch
                )
            except (RouterError, *TRANSIENT) as error:
                self._results[:0] = batch
                attempts += 1
                if final and attempts > 20:
                    log.error("giving up on %d result(s): %s", len(self._results), error)
                    return
                await asyncio.sleep(RETRY_SECONDS[min(attempts - 1, len(RETRY_SECONDS) - 1)])
                continue
            self._log_acks(response.results)

    def _log_acks(self, acks: list[wire.ResultAck]) -> None:
        for ack in acks:
            if ack.status == "stale":
                log.warning(
                    "result for task %s attempt %d not recorded: %s",
                    ack.taskId,
                    ack.attempt,
                    ack.message,
                )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            await self._quiet_heartbeat(draining=self.stopping.is_set())

    async def _quiet_heartbeat(self, draining: bool) -> None:
        leases = [
            wire.LeaseRef(taskId=r.lease.taskId, attempt=r.lease.attempt)
            for r in self._running.values()
        ]
        try:
            response = await self.client.heartbeat(
                self.settings.namespace,
                self.settings.name,
                wire.HeartbeatRequest(leases=leases, draining=draining),
            )
        except RouterError as error:
            if error.status == 404:
                await self._register()
            else:
                log.info("heartbeat refused: %s", error)
            return
        except TRANSIENT as error:
            log.info("heartbeat failed (%s); leases may lapse if the router stays away", error)
            return
        for status in response.leases:
            if status.status != "extended":
                self._drop(status.taskId, status.status, status.message)

    def _drop(self, task_id: str, why: str, message: str) -> None:
        running = self._running.get(task_id)
        if running is None:
            return
        log.warning("stopping task %s: lease %s (%s)", task_id, why, message)
        running.dropped = why
        running.task.cancel()


async def run_agent(settings: AgentSettings, drain_seconds: float) -> None:
    skills = load_skills(settings)
    tools = tool_skills(settings)
    token = TokenSource(path=settings.token_file) if settings.token_file else TokenSource("")
    async with RouterClient(settings.router_url, token, ca_file=settings.router_ca_file) as client:
        runtime = AgentRuntime(settings, client, skills, tools, drain_seconds)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, runtime.stop)
        await runtime.run()


def run_from_environment(env: Mapping[str, str], drain_seconds: float = 25.0) -> int:
    try:
        settings = AgentSettings.from_env(env)
        load_skills(settings)  # fail fast on a capability no plugin serves
    except ValueError as error:
        print(f"armyctl agent: {error}")
        return 2
    try:
        run_event_loop(run_agent(settings, drain_seconds))
    except RouterError as error:
        print(f"armyctl agent: the router refused this agent: {error}")
        return 1
    return 0


def run_event_loop(main: Coroutine[object, object, None]) -> None:
    """uvloop when installed (about a third less overhead per request here), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


class _LeaseBudget:
    """Token reservations for one lease, through the router (which fences them)."""

    def __init__(self, client: RouterClient, settings: AgentSettings, lease: wire.Lease) -> None:
        self.client, self.settings, self.lease = client, settings, lease

    async def reserve(self, tokens: int) -> None:
        try:
            await self.client.reserve_tokens(
                self.settings.namespace, self.settings.name, self.lease, tokens
            )
        except RouterError as error:
            # Over budget: no later attempt can afford it before the window resets either.
            raise SkillFailed(error.message, retryable=error.status != 429) from error

    async def settle(self, reserved: int, used: int) -> None:
        try:
            await self.client.settle_tokens(
                self.settings.namespace, self.settings.name, self.lease, reserved, used
            )
        except RouterError as error:  # the count stays at the reservation: errs high, not low
            log.warning("could not settle a token reservation: %s", error.message)


class _LeaseCheckpoints:
    """The skill's state with the router, fenced by this lease."""

    def __init__(self, client: RouterClient, settings: AgentSettings, lease: wire.Lease) -> None:
        self.client, self.settings, self.lease = client, settings, lease

    async def save(self, checkpoint: dict[str, Any]) -> None:
        try:
            await self.client.save_checkpoint(
                self.settings.namespace, self.settings.name, self.lease, checkpoint
            )
        except RouterError as error:
            raise SkillFailed(f"could not store the task's state: {error.message}") from error

    async def park(self, request: ApprovalAsk) -> NoReturn:
        ask = wire.ApprovalRequest(
            attempt=self.lease.attempt,
            tool=request.tool,
            arguments=request.arguments,
            toolCallId=request.tool_call_id,
            reason=request.reason,
            checkpoint=request.checkpoint,
        )
        try:
            await self.client.request_approval(
                self.settings.namespace, self.settings.name, self.lease, ask
            )
        except RouterError as error:
            raise SkillFailed(
                f"could not ask for approval of {request.tool}: {error.message}",
                retryable=error.status >= 500 or error.status == 409,
            ) from error
        raise Parked(f"a person's approval of {request.tool}")

    async def wait_for(self, request: ChildrenAsk) -> NoReturn:
        ask = wire.ChildrenRequest(
            attempt=self.lease.attempt,
            tasks=request.tasks,
            join=request.join,
            checkpoint=request.checkpoint,
        )
        failures = 0
        while True:
            try:
                await self.client.spawn_children(
                    self.settings.namespace, self.settings.name, self.lease, ask
                )
                break
            except RouterError as error:
                if error.status == 409:
                    # Our lease is gone: most likely an earlier try of this call parked the
                    # task (its answer was lost); else nothing this attempt reports counts.
                    break
                if error.status < 500:
                    raise SkillFailed(  # 429: the fleet's rate limit; a later attempt may pass
                        f"could not start children: {error.message}",
                        retryable=error.status == 429,
                    ) from error
            except TRANSIENT:
                pass  # the router restarts: the same call again is safe (idempotent children)
            failures += 1
            await asyncio.sleep(RETRY_SECONDS[min(failures - 1, len(RETRY_SECONDS) - 1)])
        raise Parked(f"{len(request.tasks)} children ({request.join})")
