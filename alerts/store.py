"""The SQLite state DB: alerts sent, the outbox, and each story's last complete walk.

All SQLite work runs on one dedicated thread, so the event loop never blocks
on disk and the connection is only ever used from that thread. An alert is
written to the outbox (status ``pending``) before it is sent and marked
``sent`` once the server accepts it; ``failed`` records a permanent refusal.
The DB is held with an exclusive lock on a ``.lock`` file beside it, so a
second service on the same DB is refused instead of doubling mails.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from alerts.errors import StateError
from alerts.model import Alert
from alerts.schema import connect

T = TypeVar("T")
Key = tuple[int, str, int]


@dataclass(frozen=True)
class LastWalk:
    """A story's last complete walk."""

    descendants: int | None
    comments: int


@dataclass(frozen=True)
class OutboxEntry:
    """One row of the outbox."""

    alert: Alert
    status: str
    attempts: int
    last_error: str | None


class Store:
    """Async access to the state DB; open with :meth:`open`, then :meth:`close`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: IO[bytes] | None,
        executor: ThreadPoolExecutor,
        clock: Callable[[], float],
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._executor = executor
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, exclusive: bool = True, clock: Callable[[], float] = time.time) -> Store:
        """Open (creating if needed) the DB at ``path``.

        With ``exclusive`` the DB is locked for this process; a second one is
        refused with :class:`StateError`.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alerts-db")
        loop = asyncio.get_running_loop()
        try:
            conn, lock = await loop.run_in_executor(executor, connect, path, exclusive)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, lock, executor, clock)

    async def close(self) -> None:
        """Close the DB and release the lock; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_sync)
        finally:
            self._executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        self._conn.close()
        if self._lock is not None:
            self._lock.close()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StateError(f"state DB: {exc}") from exc

    # -- walks -------------------------------------------------------------

    async def last_walks(self, story_ids: Iterable[int]) -> dict[int, LastWalk]:
        """The last complete walk of each story that has one."""
        ids = list(story_ids)
        return await self._run(self._last_walks, ids)

    def _last_walks(self, ids: list[int]) -> dict[int, LastWalk]:
        rows = self._rows_for("SELECT story_id, descendants, comments FROM walks WHERE story_id IN ({})", ids)
        return {r[0]: LastWalk(r[1], r[2]) for r in rows}

    async def save_walk(self, story_id: int, descendants: int | None, comments: int) -> None:
        """Record a complete walk so an unchanged story is not walked again."""
        await self._run(self._save_walk, story_id, descendants, comments, self._clock())

    def _save_walk(self, story_id: int, descendants: int | None, comments: int, now: float) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT INTO walks (story_id, descendants, comments, walked_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (story_id) DO UPDATE SET descendants = excluded.descendants,"
                " comments = excluded.comments, walked_at = excluded.walked_at",
                (story_id, descendants, comments, now),
            )

    # -- alerts and the outbox -----------------------------------------------

    async def alerted_tiers(self, story_ids: Iterable[int]) -> dict[int, int]:
        """The highest tier each story has alerted for (queued, sent or refused)."""
        ids = list(story_ids)
        return await self._run(self._alerted_tiers, ids)

    def _alerted_tiers(self, ids: list[int]) -> dict[int, int]:
        sql = "SELECT story_id, MAX(tier) FROM alerts WHERE kind = 'tier' AND story_id IN ({}) GROUP BY story_id"
        return {r[0]: r[1] for r in self._rows_for(sql, ids)}

    async def enqueue(self, alert: Alert, *, held: bool = False) -> bool:
        """Write ``alert`` to the outbox; false if this (story, kind, tier) exists already.

        ``held`` marks an alert due during quiet hours: it goes out in the digest after them.
        """
        return await self._run(self._insert, alert, "pending", held, self._clock())

    async def record_baseline(self, alert: Alert) -> bool:
        """Record ``alert`` as reached before the service began watching: never mailed."""
        return await self._run(self._insert, alert, "baseline", False, self._clock())

    def _insert(self, alert: Alert, status: str, held: bool, now: float) -> bool:
        story_id, kind, tier = alert.key
        with self._conn:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO alerts (story_id, kind, tier, status, alert, created_at, held)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (story_id, kind, tier, status, json.dumps(alert.to_json()), now, int(held)),
            )
        return cur.rowcount == 1

    async def pending(self) -> list[Key]:
        """Keys of every alert waiting in the outbox, oldest first."""
        return [key for key, _held in await self.pending_held()]

    async def pending_held(self) -> list[tuple[Key, bool]]:
        """Every alert waiting in the outbox with whether quiet hours held it, oldest first."""
        return await self._run(self._pending)

    def _pending(self) -> list[tuple[Key, bool]]:
        rows = self._conn.execute(
            "SELECT story_id, kind, tier, held FROM alerts WHERE status = 'pending' ORDER BY created_at, story_id, tier"
        )
        return [((r[0], r[1], r[2]), bool(r[3])) for r in rows]

    async def hold_pending(self) -> None:
        """Mark every pending alert as held for the digest after quiet hours."""
        await self._run(self._hold_pending)

    def _hold_pending(self) -> None:
        with self._conn:
            self._conn.execute("UPDATE alerts SET held = 1 WHERE status = 'pending' AND held = 0")

    async def is_empty(self) -> bool:
        """True when the DB has recorded no alert and no walk yet (a first start)."""
        return await self._run(self._is_empty)

    def _is_empty(self) -> bool:
        row = self._conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM alerts) AND NOT EXISTS (SELECT 1 FROM walks)"
        ).fetchone()
        return bool(row[0])

    async def velocity_alerted(self, story_ids: Iterable[int]) -> set[int]:
        """The stories that already had their one "heating up" alert."""
        ids = list(story_ids)
        return await self._run(self._velocity_alerted, ids)

    def _velocity_alerted(self, ids: list[int]) -> set[int]:
        sql = "SELECT story_id FROM alerts WHERE kind = 'velocity' AND story_id IN ({})"
        return {r[0] for r in self._rows_for(sql, ids)}

    # -- counts over time (velocity) ------------------------------------------

    async def record_counts(self, counts: list[tuple[int, int]], keep_seconds: float) -> None:
        """Store this cycle's (story, count) pairs; forget samples older than ``keep_seconds``."""
        await self._run(self._record_counts, counts, self._clock(), keep_seconds)

    def _record_counts(self, counts: list[tuple[int, int]], now: float, keep_seconds: float) -> None:
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO counts (story_id, at, comments) VALUES (?, ?, ?)",
                [(story_id, now, comments) for story_id, comments in counts],
            )
            self._conn.execute("DELETE FROM counts WHERE at < ?", (now - keep_seconds,))

    async def count_history(self, story_ids: Iterable[int]) -> dict[int, list[tuple[float, int]]]:
        """Each story's recorded (time, count) samples, oldest first."""
        ids = list(story_ids)
        return await self._run(self._count_history, ids)

    def _count_history(self, ids: list[int]) -> dict[int, list[tuple[float, int]]]:
        out: dict[int, list[tuple[float, int]]] = {}
        sql = "SELECT story_id, at, comments FROM counts WHERE story_id IN ({}) ORDER BY at"
        for story_id, at, comments in self._rows_for(sql, ids):
            out.setdefault(story_id, []).append((at, comments))
        return out

    def _rows_for(self, sql: str, ids: list[int]) -> Iterator[Any]:
        """Rows of ``sql`` whose ``IN ({})`` takes ``ids``, in chunks under SQLite's variable limit."""
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            yield from self._conn.execute(sql.format(",".join("?" * len(chunk))), chunk)

    async def get(self, key: Key) -> OutboxEntry | None:
        """One outbox row, or ``None``."""
        return await self._run(self._get, key)

    def _get(self, key: Key) -> OutboxEntry | None:
        row = self._conn.execute(
            "SELECT alert, status, attempts, last_error FROM alerts WHERE story_id = ? AND kind = ? AND tier = ?",
            key,
        ).fetchone()
        if row is None:
            return None
        return OutboxEntry(Alert.from_json(json.loads(row[0])), row[1], row[2], row[3])

    async def mark_sent(self, key: Key, note: str | None = None) -> None:
        """The server accepted the mail: it is never sent again.

        ``note`` records recipients the server refused while accepting the rest.
        """
        await self._run(self._finish, key, "sent", note, self._clock())

    async def mark_failed(self, key: Key, error: str) -> None:
        """The server refused the mail for good: record its reply, never retry."""
        await self._run(self._finish, key, "failed", error, self._clock())

    def _finish(self, key: Key, status: str, error: str | None, now: float) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE alerts SET status = ?, last_error = COALESCE(?, last_error), done_at = ?,"
                " attempts = attempts + 1"
                " WHERE story_id = ? AND kind = ? AND tier = ? AND status = 'pending'",
                (status, error, now, *key),
            )

    async def record_attempt(self, key: Key, error: str) -> None:
        """A send failed for now: count it and keep the reason; the entry stays pending."""
        await self._run(self._record_attempt, key, error)

    def _record_attempt(self, key: Key, error: str) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE alerts SET attempts = attempts + 1, last_error = ?"
                " WHERE story_id = ? AND kind = ? AND tier = ? AND status = 'pending'",
                (error, *key),
            )

    async def counts(self) -> dict[str, int]:
        """How many alerts are pending, sent and failed."""
        return await self._run(self._counts)

    def _counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT status, COUNT(*) FROM alerts GROUP BY status")
        out = {"pending": 0, "sent": 0, "failed": 0}
        out.update({r[0]: r[1] for r in rows})
        return out
