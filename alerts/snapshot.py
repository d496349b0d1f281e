"""What the service is doing, as operators see it: written after each cycle, read by `alerts status` and the web page.

Plain SQL functions of a ``sqlite3.Connection`` (run through
:meth:`alerts.store.Store.run`), and :class:`Snapshot`, the one picture
that ``alerts status``, ``/healthz`` and the status page all read. The
service records, after each cycle, which stories it watched with their
count (walked, kept or, for the poll source, ``descendants`` standing in)
and a growth sample of each; ``meta`` holds the source and the last cycle.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from alerts import ledger, tallies
from alerts.ledger import Entry
from alerts.schema import rows_for

#: Growth samples older than this are forgotten (the page draws the last hours).
GROWTH_KEEP = 6 * 3600.0
#: Sent alerts listed as "lately".
RECENT = 10
#: Stories read for the views, busiest first; and growth samples kept per story's chart.
STORIES = 200
CHART_POINTS = 60
#: An undelivered alert that has failed for longer than this makes /healthz answer 503.
STUCK_AFTER = 3600.0


@dataclass(frozen=True)
class Watched:
    """One story watched at the last cycle."""

    id: int
    title: str
    count: int
    alerted: int | None
    growth: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything the operator's views show, read in one transaction."""

    source: str | None
    last_cycle: int | None
    last_cycle_at: float | None
    last_cycle_seconds: float | None
    stream_last: int | None
    stream_at: float | None
    failed_cycle: int | None
    failed_at: float | None
    failed_why: str | None
    watching_since: float | None
    counts: dict[str, int]
    stories: tuple[Watched, ...]  # the busiest STORIES of them
    watched: int  # how many stories the last cycle watched
    recent: tuple[Entry, ...]
    outbox: tuple[Entry, ...]
    stuck: tuple[Entry, ...] = field(default=())


def record_cycle(
    conn: sqlite3.Connection,
    source: str,
    number: int,
    seconds: float,
    stories: Sequence[tuple[int, str, int]] | None,
    now: float,
) -> None:
    """After a cycle: the stories watched (id, title, count), one growth sample each, the cycle's facts.

    ``stories`` ``None``: none could be read this time; the last ones stand.
    """
    with conn:
        if stories is not None:
            _record_stories(conn, stories, now)
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [
                ("source", source),
                ("last_cycle", str(number)),
                ("last_cycle_at", repr(now)),
                ("last_cycle_seconds", repr(seconds)),
            ],
        )


def record_failure(conn: sqlite3.Connection, source: str, number: int, error: str, now: float) -> None:
    """A cycle failed: when, and why (``alerts status`` shows it while it is the latest news)."""
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [("source", source), ("failed_cycle", str(number)), ("failed_at", repr(now)), ("failed_why", error)],
        )


def _record_stories(conn: sqlite3.Connection, stories: Sequence[tuple[int, str, int]], now: float) -> None:
    conn.execute("DELETE FROM stories")
    conn.executemany(
        "INSERT INTO stories (story_id, title, count, seen_at) VALUES (?, ?, ?, ?)",
        [(story_id, title, count, now) for story_id, title, count in stories],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO growth (story_id, at, count) VALUES (?, ?, ?)",
        [(story_id, now, count) for story_id, _title, count in stories],
    )
    conn.execute("DELETE FROM growth WHERE at < ?", (now - GROWTH_KEEP,))


def read(conn: sqlite3.Connection, now: float) -> Snapshot:
    """The whole picture, in one read transaction."""
    with conn:
        conn.execute("BEGIN")
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        position = tallies.position(conn)
        alerted = dict(
            conn.execute(
                "SELECT story_id, MAX(tier) FROM alerts WHERE kind = 'tier'"
                " AND story_id IN (SELECT story_id FROM stories) GROUP BY story_id"
            )
        )
        growth: dict[int, list[tuple[float, int]]] = {}
        for story_id, at, count in conn.execute(
            "SELECT story_id, at, count FROM growth WHERE story_id IN (SELECT story_id FROM stories) ORDER BY at"
        ):
            growth.setdefault(story_id, []).append((at, count))
        stories = tuple(
            Watched(story_id, title, count, alerted.get(story_id), _thin(growth.get(story_id, [])))
            for story_id, title, count in conn.execute(
                "SELECT story_id, title, count FROM stories ORDER BY count DESC, story_id LIMIT ?", (STORIES,)
            )
        )
        watched = conn.execute("SELECT COUNT(*) FROM stories").fetchone()[0]
        outbox = tuple(ledger.entries(conn, ("pending", "failed")))
        recent = tuple(ledger.latest(conn, "sent", RECENT))
        counts = ledger.counts(conn)
    return Snapshot(
        source=meta.get("source"),
        last_cycle=_int(meta.get("last_cycle")),
        last_cycle_at=_float(meta.get("last_cycle_at")),
        last_cycle_seconds=_float(meta.get("last_cycle_seconds")),
        stream_last=position.last,
        stream_at=_float(meta.get("stream_at")),
        failed_cycle=_int(meta.get("failed_cycle")),
        failed_at=_float(meta.get("failed_at")),
        failed_why=meta.get("failed_why"),
        watching_since=_float(meta.get("watching_since")),
        counts=counts,
        stories=stories,
        watched=watched,
        recent=recent,
        outbox=outbox,
        stuck=tuple(e for e in outbox if stuck(e, now)),
    )


@dataclass(frozen=True)
class OutboxState:
    """The little /healthz and /metrics need: alerts by status, and the ones stuck."""

    counts: dict[str, int]
    stuck: tuple[Entry, ...]


def outbox_state(conn: sqlite3.Connection, now: float) -> OutboxState:
    """Alerts by status and the stuck ones, without the stories (cheap, for every probe and scrape)."""
    with conn:
        conn.execute("BEGIN")
        counts = ledger.counts(conn)
        waiting = ledger.entries(conn, ("pending", "failed")) if counts["pending"] or counts["failed"] else []
    return OutboxState(counts, tuple(e for e in waiting if stuck(e, now)))


def _thin(samples: list[tuple[float, int]]) -> tuple[tuple[float, int], ...]:
    """At most CHART_POINTS samples, evenly picked, the first and last kept."""
    if len(samples) <= CHART_POINTS:
        return tuple(samples)
    step = (len(samples) - 1) / (CHART_POINTS - 1)
    return tuple(samples[round(i * step)] for i in range(CHART_POINTS))


def titles(conn: sqlite3.Connection, story_ids: Sequence[int]) -> dict[int, str]:
    """The titles the last snapshot knew, of those stories that were in it."""
    return dict(rows_for(conn, "SELECT story_id, title FROM stories WHERE story_id IN ({})", story_ids))


def stuck(entry: Entry, now: float) -> bool:
    """An alert failing for more than an hour: refused for good an hour ago, or its tries failing for an hour.

    Held for quiet hours (and in no digest yet) is waiting, not failing.
    """
    if entry.status == "failed":
        return (entry.done_at or entry.created_at) <= now - STUCK_AFTER
    since = entry.failing_since
    return entry.shown_status == "pending" and since is not None and since <= now - STUCK_AFTER


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)
