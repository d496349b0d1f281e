"""The stream source's tables as SQL: items handled with their story, each story's running count, the position.

Plain functions of a ``sqlite3.Connection``, run on the state DB's thread
through :meth:`alerts.store.Store.run`. An item has a row once it was
handled as a new item or looked up as someone's parent; a row's ``story``
is the story at the top of its ``parent`` chain, ``NULL`` when there is
none. The stream's position lives in ``meta``: ``stream_last`` (every item
up to it is handled) and ``stream_first`` (the largest id when the service
first watched).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from alerts.schema import rows_for

#: A handled item: its id, its story (or ``None``), and the story it adds one live comment to (or ``None``).
Row = tuple[int, int | None, int | None]


@dataclass(frozen=True)
class Position:
    """Where the stream stands: the last item handled and the largest id when watching began."""

    last: int | None
    first: int | None


def position(conn: sqlite3.Connection) -> Position:
    """The stream's position (``None`` parts: never recorded)."""
    values = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('stream_last', 'stream_first')"))
    last, first = values.get("stream_last"), values.get("stream_first")
    return Position(None if last is None else int(last), None if first is None else int(first))


def start(conn: sqlite3.Connection, first: int, last: int) -> None:
    """Record where watching begins: ``first`` is kept once set, ``last`` replaced."""
    with conn:
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('stream_first', ?)", (str(first),))
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('stream_last', ?)", (str(last),))


def handled_between(conn: sqlite3.Connection, low: int, high: int) -> set[int]:
    """The ids in ``low..high`` that already have a row (handled before a restart)."""
    return {r[0] for r in conn.execute("SELECT id FROM items WHERE id BETWEEN ? AND ?", (low, high))}


def stories_of(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, int | None]:
    """The story of each id that has a row."""
    return dict(rows_for(conn, "SELECT id, story FROM items WHERE id IN ({})", ids))


def commit(
    conn: sqlite3.Connection, rows: Sequence[Row], known: Iterable[tuple[int, int | None]], last: int, now: float
) -> None:
    """Record handled items and looked-up parents, add each new live comment to its story's count, move ``last``.

    An item that already has a row adds nothing again, so handling it twice
    (a restart between handling and this commit) counts it once.
    """
    with conn:
        for item_id, story, counts in rows:
            added = conn.execute("INSERT OR IGNORE INTO items (id, story) VALUES (?, ?)", (item_id, story)).rowcount
            if added and counts is not None:
                conn.execute("UPDATE tallies SET count = count + 1, at = ? WHERE story_id = ?", (now, counts))
        conn.executemany("INSERT OR IGNORE INTO items (id, story) VALUES (?, ?)", known)
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("stream_last", str(last)), ("stream_at", repr(now))],
        )


def tallies(conn: sqlite3.Connection, story_ids: Sequence[int]) -> dict[int, int]:
    """The running count of each story that has one."""
    return dict(rows_for(conn, "SELECT story_id, count FROM tallies WHERE story_id IN ({})", story_ids))


def set_tally(conn: sqlite3.Connection, story_id: int, count: int, now: float) -> None:
    """Set a story's running count (after a walk, or when it is first seen)."""
    with conn:
        conn.execute(
            "INSERT INTO tallies (story_id, count, at) VALUES (?, ?, ?)"
            " ON CONFLICT (story_id) DO UPDATE SET count = excluded.count, at = excluded.at",
            (story_id, count, now),
        )


def forget_tallies(conn: sqlite3.Connection, story_ids: Sequence[int]) -> None:
    """Stop counting stories (they left the watched lists): seen again, they start afresh."""
    with conn:
        conn.executemany("DELETE FROM tallies WHERE story_id = ?", [(s,) for s in story_ids])


def forget_all(conn: sqlite3.Connection) -> None:
    """Forget every running count (items were skipped: each story starts afresh when next seen)."""
    with conn:
        conn.execute("DELETE FROM tallies")


def prune(conn: sqlite3.Connection, below: int) -> None:
    """Forget items and counts of stories older than the id ``below``: HN closes old threads to replies."""
    with conn:
        conn.execute("DELETE FROM items WHERE id < ?", (below,))
        conn.execute("DELETE FROM tallies WHERE story_id < ?", (below,))
