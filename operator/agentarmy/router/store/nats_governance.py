"""Runtime-rule state in NATS JetStream KV, shared by every router replica.

- ``<prefix>_rules``: ``rules.<ns>.<fleet>`` and ``halt.<ns>.<fleet>``, watched by every
  replica (a halt stops dispatch on all of them as soon as the watch delivers it).
- ``<prefix>_counters``: ``bucket.<ns>.<fleet>`` (submission token bucket) and
  ``budget.<counter>`` (tokens used in one budget window). Every change is a
  compare-and-set on the key's revision, so N replicas grant what one would: the
  loser re-reads and re-decides. The last revision seen is kept, so the usual
  uncontended change is one round trip.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from nats.js.api import StorageType
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)

from agentarmy.api.rules import FleetRules, Halt
from agentarmy.router import governance
from agentarmy.router.governance import Bucket, RateLimit
from agentarmy.router.store.base import StoreError
from agentarmy.router.store.governance import BudgetCount, Change, FleetKey, GovernanceState

log = logging.getLogger(__name__)
T = TypeVar("T")

CAS_RETRIES = 16


class NatsGovernance(GovernanceState):
    def __init__(self, connection: Callable[[], Any], prefix: str) -> None:
        super().__init__()
        self._connection = connection
        self.prefix = prefix
        self._rules_kv: Any = None
        self._counters_kv: Any = None
        self._rules: dict[FleetKey, FleetRules] = {}
        self._halts: dict[FleetKey, Halt] = {}
        self._seen: dict[str, tuple[int, bytes | None]] = {}
        """counter key -> (revision, value) last read or written here."""
        self._watcher: asyncio.Task[None] | None = None
        self._pending: dict[
            str, list[tuple[Callable[[bytes | None], Any], asyncio.Future[Any]]]
        ] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    async def open(self) -> None:
        js = self._connection().jetstream(timeout=10)
        self._rules_kv = await _bucket(js, f"{self.prefix}_rules")
        self._counters_kv = await _bucket(js, f"{self.prefix}_counters")
        ready = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch(ready), name="governance-watch")
        await asyncio.wait_for(ready.wait(), timeout=120)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _watch(self, ready: asyncio.Event) -> None:
        watcher = await self._rules_kv.watchall()
        async for entry in watcher:
            if entry is None:
                ready.set()
                continue
            try:
                self._apply(entry.key, None if entry.operation else entry.value)
            except Exception:  # one bad entry must not stop the watch
                log.exception("cannot apply %s from the rules bucket", entry.key)

    def _apply(self, key: str, value: bytes | None) -> None:
        what, namespace, fleet = key.split(".", 2)
        fleet_key = (namespace, fleet)
        change: Change
        if what == "rules":
            rules = FleetRules.model_validate_json(value) if value else None
            if rules is None:
                self._rules.pop(fleet_key, None)
            else:
                self._rules[fleet_key] = rules
            change = Change(fleet_key, rules=rules, what="rules")
        else:
            halt = Halt.model_validate_json(value) if value else None
            if halt is None:
                self._halts.pop(fleet_key, None)
            else:
                self._halts[fleet_key] = halt
            change = Change(fleet_key, halt=halt, what="halt")
        if self.listener is not None:
            self.listener(change)

    async def load(self) -> tuple[dict[FleetKey, FleetRules], dict[FleetKey, Halt]]:
        return dict(self._rules), dict(self._halts)

    async def replace_rules(
        self, rules: Mapping[str, Sequence[FleetRules]], namespaces: Sequence[str] | None
    ) -> None:
        scope = set(namespaces) if namespaces is not None else None
        wanted = {
            f"rules.{ns}.{r.fleet}": r.model_dump_json().encode()
            for ns, group in rules.items()
            for r in group
        }
        # The keys as stored, not as this replica's watch has seen them so far: a push
        # right after another (here or on another replica) must still remove what it put.
        try:
            stored = await self._rules_kv.keys()
        except NoKeysError:
            stored = []
        stored = sorted(set(stored))
        stored_keys = set(stored)
        writes: list[Awaitable[Any]] = []
        for key in stored:
            what, namespace, _ = key.split(".", 2)
            if what != "rules" or (scope is not None and namespace not in scope):
                continue
            if key not in wanted:
                writes.append(self._rules_kv.delete(key))
        for key, value in wanted.items():
            _, namespace, fleet = key.split(".", 2)
            known = self._rules.get((namespace, fleet))
            unchanged = known is not None and known.model_dump_json().encode() == value
            if not unchanged or key not in stored_keys:  # stored and unchanged: no write
                writes.append(self._rules_kv.put(key, value))
        await asyncio.gather(*writes)
        for key in stored:  # mirror our own change at once; the watch confirms it later
            what, namespace, fleet = key.split(".", 2)
            if what == "rules" and key not in wanted and (scope is None or namespace in scope):
                self._rules.pop((namespace, fleet), None)
        for group_ns, group in rules.items():
            for fleet_rules in group:
                self._rules[(group_ns, fleet_rules.fleet)] = fleet_rules

    async def halt(self, halt: Halt) -> Halt:
        key = f"halt.{halt.namespace}.{halt.fleet}"
        try:
            await self._rules_kv.create(key, halt.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            entry = await self._rules_kv.get(key)  # another replica halted it first
            return Halt.model_validate_json(entry.value)
        self._halts[(halt.namespace, halt.fleet)] = halt
        return halt

    async def clear_halt(self, key: FleetKey) -> Halt | None:
        name = f"halt.{key[0]}.{key[1]}"
        try:
            entry = await self._rules_kv.get(name)
        except KeyNotFoundError:
            return None
        try:
            await self._rules_kv.delete(name, last=entry.revision)
        except KeyWrongLastSequenceError:
            return None  # cleared (or re-halted) by another replica meanwhile
        self._halts.pop(key, None)
        return Halt.model_validate_json(entry.value)

    async def take_submissions(
        self, key: FleetKey, count: int, limit: RateLimit, now: float
    ) -> float:
        def change(raw: bytes | None) -> tuple[bytes, float]:
            state = json.loads(raw) if raw else None
            bucket = None if state is None else Bucket(state["tokens"], state["at"])
            after, wait = governance.take(bucket, count, limit, now)
            return json.dumps({"tokens": after.tokens, "at": after.at}).encode(), wait

        return await self._compare_and_set(f"bucket.{key[0]}.{key[1]}", change)

    async def count_tokens(self, counter: str, tokens: int, limit: int | None) -> BudgetCount:
        def change(raw: bytes | None) -> tuple[bytes | None, BudgetCount]:
            used = int(raw) if raw else 0
            if limit is not None and tokens > 0 and used + tokens > limit:
                return None, BudgetCount(False, used)
            total = max(0, used + tokens)
            return str(total).encode(), BudgetCount(True, total)

        return await self._compare_and_set(f"budget.{counter}", change)

    async def tokens_counted(self, counter: str) -> int:
        try:
            entry = await self._counters_kv.get(f"budget.{counter}")
        except KeyNotFoundError:
            return 0
        return int(entry.value or 0)

    async def _compare_and_set(
        self, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]]
    ) -> T:
        """Apply ``change`` to the key's value under compare-and-set (None: write nothing).

        Changes of one key made here while a write of it is in flight are applied in one
        write after it (group commit): a busy fleet costs one round trip per batch, and
        replicas contend only with each other, not with themselves."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append((change, future))
        if key not in self._writers:
            self._writers[key] = asyncio.create_task(self._write_pending(key))
        result: T = await future
        return result

    async def _write_pending(self, key: str) -> None:
        try:
            while self._pending.get(key):
                batch = self._pending.pop(key)
                try:
                    results = await self._apply_batch(key, [change for change, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
        finally:
            del self._writers[key]

    async def _apply_batch(
        self, key: str, changes: list[Callable[[bytes | None], tuple[bytes | None, Any]]]
    ) -> list[Any]:
        known: tuple[int, bytes | None] | None = self._seen.get(key)
        for _ in range(CAS_RETRIES):
            revision, raw = known if known is not None else (0, None)
            value, results = raw, []
            for change in changes:
                written, result = change(value)
                value = written if written is not None else value
                results.append(result)
            if value is None or value == raw:
                return results
            try:
                if revision:
                    new_revision = await self._counters_kv.update(key, value, last=revision)
                else:
                    new_revision = await self._counters_kv.create(key, value)
            except KeyWrongLastSequenceError:
                known = await self._read(key)
                continue
            self._seen[key] = (new_revision, value)
            return results
        raise StoreError(f"{key} kept changing under us; giving up after {CAS_RETRIES} tries")

    async def _read(self, key: str) -> tuple[int, bytes | None] | None:
        try:
            entry = await self._counters_kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.revision, entry.value


async def _bucket(js: Any, name: str) -> Any:
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=name, history=1, storage=StorageType.FILE)
