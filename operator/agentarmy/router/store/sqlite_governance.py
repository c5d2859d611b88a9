"""Runtime-rule state in the router's SQLite database (one replica: its writer is the
only one, so every read-modify-write below is one transaction of that writer)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agentarmy.api.rules import FleetRules, Halt
from agentarmy.router import governance
from agentarmy.router.governance import Bucket, RateLimit
from agentarmy.router.store.governance import BudgetCount, FleetKey, GovernanceState

Run = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_rules (
    namespace TEXT NOT NULL, fleet TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (namespace, fleet)
);
CREATE TABLE IF NOT EXISTS fleet_halts (
    namespace TEXT NOT NULL, fleet TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (namespace, fleet)
);
CREATE TABLE IF NOT EXISTS submission_buckets (
    namespace TEXT NOT NULL, fleet TEXT NOT NULL, tokens REAL NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (namespace, fleet)
);
CREATE TABLE IF NOT EXISTS token_budgets (
    counter TEXT PRIMARY KEY, used INTEGER NOT NULL
);
"""


def _load_bucket(conn: sqlite3.Connection, key: FleetKey) -> Bucket | None:
    row = conn.execute(
        "SELECT tokens, at FROM submission_buckets WHERE namespace = ? AND fleet = ?", key
    ).fetchone()
    return None if row is None else Bucket(row[0], row[1])


class SqliteGovernance(GovernanceState):
    def __init__(self, write: Run, read: Run) -> None:
        super().__init__()
        self._write = write
        self._read = read
        self._buckets: dict[FleetKey, Bucket | None] = {}
        self._saving: set[asyncio.Future[Any]] = set()

    async def close(self) -> None:
        await asyncio.gather(*self._saving, return_exceptions=True)

    async def open(self) -> None:
        def create(conn: sqlite3.Connection) -> None:
            # Not executescript: it would commit the group-commit writer's transaction.
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

        await self._write(create)

    async def load(self) -> tuple[dict[FleetKey, FleetRules], dict[FleetKey, Halt]]:
        def read(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            rules = conn.execute("SELECT namespace, fleet, body FROM fleet_rules").fetchall()
            halts = conn.execute("SELECT namespace, fleet, body FROM fleet_halts").fetchall()
            return rules, halts

        rules, halts = await self._read(read)
        return (
            {(ns, f): FleetRules.model_validate_json(body) for ns, f, body in rules},
            {(ns, f): Halt.model_validate_json(body) for ns, f, body in halts},
        )

    async def replace_rules(
        self, rules: Mapping[str, Sequence[FleetRules]], namespaces: Sequence[str] | None
    ) -> None:
        def replace(conn: sqlite3.Connection) -> None:
            if namespaces is None:
                conn.execute("DELETE FROM fleet_rules")
            else:
                conn.executemany(
                    "DELETE FROM fleet_rules WHERE namespace = ?", [(ns,) for ns in namespaces]
                )
            conn.executemany(
                "INSERT INTO fleet_rules (namespace, fleet, body) VALUES (?, ?, ?)",
                [(ns, r.fleet, r.model_dump_json()) for ns, group in rules.items() for r in group],
            )

        await self._write(replace)

    async def halt(self, halt: Halt) -> Halt:
        def record(conn: sqlite3.Connection) -> Halt:
            row = conn.execute(
                "SELECT body FROM fleet_halts WHERE namespace = ? AND fleet = ?",
                (halt.namespace, halt.fleet),
            ).fetchone()
            if row is not None:
                return Halt.model_validate_json(row[0])
            conn.execute(
                "INSERT INTO fleet_halts (namespace, fleet, body) VALUES (?, ?, ?)",
                (halt.namespace, halt.fleet, halt.model_dump_json()),
            )
            return halt

        result: Halt = await self._write(record)
        return result

    async def clear_halt(self, key: FleetKey) -> Halt | None:
        def clear(conn: sqlite3.Connection) -> Halt | None:
            row = conn.execute(
                "DELETE FROM fleet_halts WHERE namespace = ? AND fleet = ? RETURNING body", key
            ).fetchone()
            return None if row is None else Halt.model_validate_json(row[0])

        result: Halt | None = await self._write(clear)
        return result

    async def take_submissions(
        self, key: FleetKey, count: int, limit: RateLimit, now: float
    ) -> float:
        """Decided in memory (this process is the database's only writer, so its copy is the
        truth), then written behind, in the group commit that stores the submission: a
        submit costs no extra round through the writer. A crash may forget the last few
        takes, so a bucket can be that much fuller after a restart, never emptier."""
        if key not in self._buckets:
            loaded = await self._read(lambda conn: _load_bucket(conn, key))
            self._buckets.setdefault(key, loaded)  # another take may have loaded it meanwhile
        # From here to the end nothing awaits: takes of one fleet cannot interleave.
        after, wait = governance.take(self._buckets[key], count, limit, now)
        self._buckets[key] = after

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO submission_buckets (namespace, fleet, tokens, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (namespace, fleet) DO UPDATE SET tokens = excluded.tokens,"
                " at = excluded.at",
                (*key, after.tokens, after.at),
            )

        if wait == 0.0:
            saving = asyncio.ensure_future(self._write(save))
            self._saving.add(saving)
            saving.add_done_callback(self._saving.discard)
        return wait

    async def count_tokens(self, counter: str, tokens: int, limit: int | None) -> BudgetCount:
        def count(conn: sqlite3.Connection) -> BudgetCount:
            row = conn.execute("SELECT used FROM token_budgets WHERE counter = ?", (counter,))
            found = row.fetchone()
            if found is None:  # a new window: the fleet's older windows are history
                prefix = counter.rsplit(".", 1)[0] + "."
                conn.execute(
                    "DELETE FROM token_budgets WHERE substr(counter, 1, ?) = ?",
                    (len(prefix), prefix),
                )
            used = found[0] if found else 0
            if limit is not None and tokens > 0 and used + tokens > limit:
                return BudgetCount(False, used)
            conn.execute(
                "INSERT INTO token_budgets (counter, used) VALUES (?, ?)"
                " ON CONFLICT (counter) DO UPDATE SET used = max(0, used + ?)",
                (counter, max(0, tokens), tokens),
            )
            return BudgetCount(True, max(0, used + tokens))

        result: BudgetCount = await self._write(count)
        return result

    async def tokens_counted(self, counter: str) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT used FROM token_budgets WHERE counter = ?", (counter,))
            return int((row.fetchone() or (0,))[0])

        used: int = await self._read(read)
        return used
