"""The SQLite group-commit writer: on the event loop (synchronous=NORMAL) or on a writer
thread (synchronous=FULL), a failing operation is rolled back alone and its caller gets
the error; the others in its transaction are committed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from agentarmy.router.store.sqlite import _connect, _GroupCommitWriter


@pytest.mark.parametrize("inline", [True, False])
async def test_failing_operation_is_rolled_back_alone(tmp_path: Path, inline: bool) -> None:
    conn = _connect(str(tmp_path / "w.db"), "NORMAL" if inline else "FULL")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    writer = _GroupCommitWriter(conn, inline=inline)
    writer.start()

    def insert(key: str, fail: bool = False) -> Callable[[sqlite3.Connection], str]:
        def operation(c: sqlite3.Connection) -> str:
            c.execute("INSERT INTO t (k) VALUES (?)", (key,))
            if fail:
                raise ValueError(f"refused {key}")
            return key

        return operation

    try:
        # Alone in its transaction.
        with pytest.raises(ValueError, match="refused solo"):
            await writer.call(insert("solo", fail=True))
        # Queued together: one transaction, the bad one rolled back to its savepoint.
        outcomes = await asyncio.gather(
            writer.call(insert("a")),
            writer.call(insert("b", fail=True)),
            writer.call(insert("c")),
            return_exceptions=True,
        )
        assert outcomes[0] == "a" and outcomes[2] == "c"
        assert isinstance(outcomes[1], ValueError)
        assert not conn.in_transaction
        rows = sorted(k for (k,) in conn.execute("SELECT k FROM t"))
        assert rows == ["a", "c"]
    finally:
        await writer.stop()
        conn.close()
