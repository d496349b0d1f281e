"""The SQLite state DB: the outbox, each story's last complete walk, counts over time, the baseline.

All SQLite work runs on one dedicated thread, so the event loop never blocks
on disk and the connection is only ever used from that thread. The outbox's
own SQL lives in :mod:`alerts.ledger` and runs through :meth:`Store.run`.
The service holds the DB with an exclusive lock on a ``.lock`` file beside
its real path, so a second service on the same DB is refused instead of
doubling mails; the operator commands open it without the lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from alerts import ledger
from alerts.errors import StateError
from alerts.ledger import Key
from alerts.model import Alert
from alerts.schema import connect, connect_readonly, rows_for

T = TypeVar("T")


@dataclass(frozen=True)
class LastWalk:
    """A story's last complete walk."""

    descendants: int | None
    comments: int


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
    async def open_readonly(cls, path: Path, *, clock: Callable[[], float] = time.time) -> Store:
        """Open an existing DB to read only: no lock, no migration (``alerts status``, ``alerts outbox``)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alerts-db")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect_readonly, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, None, executor, clock)

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

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(connection, *args)`` on the DB thread; SQLite errors become :class:`StateError`."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, self._conn, *args)
        except sqlite3.Error as exc:
            raise StateError(f"state DB: {exc}") from exc

    def now(self) -> float:
        """The wall clock the store stamps rows with."""
        return self._clock()

    # -- walks -------------------------------------------------------------

    async def last_walks(self, story_ids: Iterable[int]) -> dict[int, LastWalk]:
        """The last complete walk of each story that has one."""
        ids = list(story_ids)
        return await self.run(self._last_walks, ids)

    def _last_walks(self, conn: sqlite3.Connection, ids: list[int]) -> dict[int, LastWalk]:
        rows = rows_for(conn, "SELECT story_id, descendants, comments FROM walks WHERE story_id IN ({})", ids)
        return {r[0]: LastWalk(r[1], r[2]) for r in rows}

    async def save_walk(self, story_id: int, descendants: int | None, comments: int) -> None:
        """Record a complete walk so an unchanged story is not walked again."""
        await self.run(self._save_walk, story_id, descendants, comments, self._clock())

    @staticmethod
    def _save_walk(conn: sqlite3.Connection, story_id: int, descendants: int | None, comments: int, now: float) -> None:
        with conn:
            conn.execute(
                "INSERT INTO walks (story_id, descendants, comments, walked_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (story_id) DO UPDATE SET descendants = excluded.descendants,"
                " comments = excluded.comments, walked_at = excluded.walked_at",
                (story_id, descendants, comments, now),
            )

    # -- alerts -------------------------------------------------------------------

    async def alerted_tiers(self, story_ids: Iterable[int]) -> dict[int, int]:
        """The highest tier each story has alerted for (queued, sent, refused, dropped or baseline)."""
        ids = list(story_ids)
        return await self.run(self._alerted_tiers, ids)

    @staticmethod
    def _alerted_tiers(conn: sqlite3.Connection, ids: list[int]) -> dict[int, int]:
        sql = "SELECT story_id, MAX(tier) FROM alerts WHERE kind = 'tier' AND story_id IN ({}) GROUP BY story_id"
        return {r[0]: r[1] for r in rows_for(conn, sql, ids)}

    async def record_baseline(self, alert: Alert) -> bool:
        """Record ``alert`` as reached before the service began watching: never mailed."""
        return await self.run(ledger.insert, alert, "baseline", False, self._clock())

    async def get(self, key: Key) -> ledger.Entry | None:
        """One alert row, or ``None``."""
        return await self.run(ledger.get, key)

    async def pending(self) -> list[Key]:
        """Keys of every alert still owed a mail, oldest first."""
        return [e.key for e in await self.run(ledger.entries, ("pending",))]

    async def counts(self) -> dict[str, int]:
        """How many alerts are pending, held, sent, failed, dropped and baseline."""
        return await self.run(ledger.counts)

    async def note_watching(self) -> None:
        """Record that the service has looked at HN with this DB (once; the first time is kept)."""
        await self.run(self._note_watching, self._clock())

    @staticmethod
    def _note_watching(conn: sqlite3.Connection, now: float) -> None:
        with conn:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('watching_since', ?)", (repr(now),))

    async def is_empty(self) -> bool:
        """True when the service has never watched HN with this DB: no alert, no walk, no cycle (a first start)."""
        return await self.run(self._is_empty)

    @staticmethod
    def _is_empty(conn: sqlite3.Connection) -> bool:
        row = conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM alerts) AND NOT EXISTS (SELECT 1 FROM walks)"
            " AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'watching_since')"
        ).fetchone()
        return bool(row[0])

    async def velocity_alerted(self, story_ids: Iterable[int]) -> set[int]:
        """The stories that already had their one "heating up" alert."""
        ids = list(story_ids)
        return await self.run(self._velocity_alerted, ids)

    @staticmethod
    def _velocity_alerted(conn: sqlite3.Connection, ids: list[int]) -> set[int]:
        sql = "SELECT story_id FROM alerts WHERE kind = 'velocity' AND story_id IN ({})"
        return {r[0] for r in rows_for(conn, sql, ids)}

    # -- the baseline ---------------------------------------------------------------

    async def baseline_state(self) -> str | None:
        """``running`` while a baseline cycle has begun but not finished, ``done`` after, else ``None``."""
        return await self.run(self._meta, "baseline")

    async def set_baseline_state(self, state: str) -> None:
        """Record where the baseline stands (see :meth:`baseline_state`)."""
        await self.run(self._set_meta, "baseline", state)

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        with conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    async def baseline_owed(self) -> set[int]:
        """Stories a baseline cycle could not count in full: their baseline is still to be taken."""
        return await self.run(self._owed)

    @staticmethod
    def _owed(conn: sqlite3.Connection) -> set[int]:
        return {r[0] for r in conn.execute("SELECT story_id FROM baseline_owed")}

    async def owe_baseline(self, story_id: int, owed: bool) -> None:
        """Remember (or, once taken, forget) that ``story_id`` is owed its baseline."""
        await self.run(self._owe, story_id, owed)

    @staticmethod
    def _owe(conn: sqlite3.Connection, story_id: int, owed: bool) -> None:
        with conn:
            if owed:
                conn.execute("INSERT OR IGNORE INTO baseline_owed (story_id) VALUES (?)", (story_id,))
            else:
                conn.execute("DELETE FROM baseline_owed WHERE story_id = ?", (story_id,))

    # -- counts over time (velocity) ------------------------------------------

    async def record_counts(self, counts: list[tuple[int, int]], keep_seconds: float) -> None:
        """Store this cycle's (story, count) pairs; forget samples older than ``keep_seconds``."""
        await self.run(self._record_counts, counts, self._clock(), keep_seconds)

    @staticmethod
    def _record_counts(conn: sqlite3.Connection, counts: list[tuple[int, int]], now: float, keep: float) -> None:
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO counts (story_id, at, comments) VALUES (?, ?, ?)",
                [(story_id, now, comments) for story_id, comments in counts],
            )
            conn.execute("DELETE FROM counts WHERE at < ?", (now - keep,))

    async def count_history(self, story_ids: Iterable[int]) -> dict[int, list[tuple[float, int]]]:
        """Each story's recorded (time, count) samples, oldest first."""
        ids = list(story_ids)
        return await self.run(self._count_history, ids)

    @staticmethod
    def _count_history(conn: sqlite3.Connection, ids: list[int]) -> dict[int, list[tuple[float, int]]]:
        out: dict[int, list[tuple[float, int]]] = {}
        sql = "SELECT story_id, at, comments FROM counts WHERE story_id IN ({}) ORDER BY at"
        for story_id, at, comments in rows_for(conn, sql, ids):
            out.setdefault(story_id, []).append((at, comments))
        return out
