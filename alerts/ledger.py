"""The outbox's tables: every fact that decides whether a mail goes out, as SQL.

Plain functions of a ``sqlite3.Connection``, run on the state DB's thread
through :meth:`alerts.store.Store.run`. A *mail* is either one alert (named
``alert:STORY:KIND:TIER``) or a digest (``digest:ID``) whose members are
the alerts whose ``digest`` column names it. Each mail has its own status,
attempts, next try and per-recipient outcomes; a digest's members are
finished together with it, in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from alerts.model import Alert

Key = tuple[int, str, int]

_COLUMNS = (
    "story_id, kind, tier, alert, status, held, attempts, next_try, last_error, digest, created_at, done_at,"
    " failing_since"
)


@dataclass(frozen=True)
class Entry:
    """One alert row: the alert and where it stands."""

    key: Key
    alert: Alert
    status: str
    held: bool
    attempts: int
    next_try: float
    last_error: str | None
    digest: str | None
    created_at: float
    done_at: float | None
    failing_since: float | None = None  # the first of the failed tries since it was last queued or retried

    @property
    def shown_status(self) -> str:
        """The status operators see: ``held`` while it waits for quiet hours to end (in no digest yet)."""
        return "held" if self.status == "pending" and self.held and self.digest is None else self.status


@dataclass(frozen=True)
class Digest:
    """A digest once formed: its members never change, so neither does its Message-ID."""

    id: str
    status: str
    held: bool
    attempts: int
    members: list[Entry]


def alert_mail(key: Key) -> str:
    """The mail name of a single alert."""
    return f"alert:{key[0]}:{key[1]}:{key[2]}"


def parse_alert_mail(mail: str) -> Key:
    """The key of a single alert's mail name (the inverse of :func:`alert_mail`)."""
    return _key(mail.removeprefix("alert:"))


def digest_mail(digest_id: str) -> str:
    """The mail name of a digest."""
    return f"digest:{digest_id}"


def _entry(row: Any) -> Entry:
    story_id, kind, tier, alert, status, held, attempts, next_try, last_error, digest, created, done, failing = row
    return Entry(
        (story_id, kind, tier),
        Alert.from_json(json.loads(alert)),
        status,
        bool(held),
        attempts,
        next_try,
        last_error,
        digest,
        created,
        done,
        failing,
    )


# -- alerts -----------------------------------------------------------------


def insert(conn: sqlite3.Connection, alert: Alert, status: str, held: bool, now: float) -> bool:
    """Write ``alert`` once; false if its (story, kind, tier) is recorded already."""
    story_id, kind, tier = alert.key
    with conn:
        cur = conn.execute(
            "INSERT OR IGNORE INTO alerts (story_id, kind, tier, status, alert, created_at, held)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (story_id, kind, tier, status, json.dumps(alert.to_json()), now, int(held)),
        )
    return cur.rowcount == 1


def get(conn: sqlite3.Connection, key: Key) -> Entry | None:
    """One alert row, or ``None``."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE story_id = ? AND kind = ? AND tier = ?", key).fetchone()
    return None if row is None else _entry(row)


def entries(conn: sqlite3.Connection, statuses: Sequence[str]) -> list[Entry]:
    """Every alert in one of ``statuses``, oldest first."""
    marks = ",".join("?" * len(statuses))
    sql = f"SELECT {_COLUMNS} FROM alerts WHERE status IN ({marks}) ORDER BY created_at, story_id, kind, tier"
    return [_entry(r) for r in conn.execute(sql, list(statuses))]


def latest(conn: sqlite3.Connection, status: str, limit: int) -> list[Entry]:
    """The ``limit`` alerts in ``status`` that were finished last, newest first."""
    sql = f"SELECT {_COLUMNS} FROM alerts WHERE status = ? ORDER BY done_at DESC, created_at DESC LIMIT ?"
    return [_entry(r) for r in conn.execute(sql, (status, limit))]


#: Alerts some recipient already answered as a single mail: they stay that mail, so those
#: recipients are never sent them again in a digest.
_STARTED = (
    "EXISTS (SELECT 1 FROM recipients WHERE recipients.mail ="
    " 'alert:' || alerts.story_id || ':' || alerts.kind || ':' || alerts.tier)"
)


def hold(conn: sqlite3.Connection, busy: Iterable[Key]) -> int:
    """Hold every pending single alert not being sent right now, for the digest after quiet hours.

    One already delivered to some of its recipients is not held: it stays its
    own mail, so only the recipients still owed get it, after the quiet hours.
    """
    skip = set(busy)
    rows = conn.execute(
        "SELECT story_id, kind, tier FROM alerts WHERE status = 'pending' AND held = 0 AND digest IS NULL"
        f" AND NOT {_STARTED}"
    ).fetchall()
    keys = [tuple(r) for r in rows if tuple(r) not in skip]
    with conn:
        conn.executemany("UPDATE alerts SET held = 1 WHERE story_id = ? AND kind = ? AND tier = ?", keys)
    return len(keys)


def unassigned(conn: sqlite3.Connection, held_only: bool) -> list[Entry]:
    """Pending alerts no digest carries yet (only the held ones with ``held_only``), oldest first.

    Alerts some recipient already answered as single mails are left out: they stay their own mail.
    """
    extra = " AND held = 1" if held_only else ""
    sql = f"SELECT {_COLUMNS} FROM alerts WHERE status = 'pending' AND digest IS NULL AND NOT {_STARTED}{extra}"
    return [_entry(r) for r in conn.execute(sql + " ORDER BY created_at, story_id, kind, tier")]


def form_digest(conn: sqlite3.Connection, digest_id: str, keys: Sequence[Key], held: bool, now: float) -> None:
    """Store a digest and claim its members, in one transaction; none is stored if a member was taken meanwhile."""
    with conn:
        conn.execute(
            "INSERT INTO digests (id, status, held, created_at) VALUES (?, 'pending', ?, ?)",
            (digest_id, int(held), now),
        )
        claimed = 0
        for key in keys:
            cur = conn.execute(
                "UPDATE alerts SET digest = ? WHERE story_id = ? AND kind = ? AND tier = ?"
                " AND status = 'pending' AND digest IS NULL",
                (digest_id, *key),
            )
            claimed += cur.rowcount
        if claimed != len(keys):
            raise sqlite3.IntegrityError("a digest member was claimed meanwhile")


def due_singles(conn: sqlite3.Connection, now: float | None) -> list[Key]:
    """Pending single alerts whose next try has come (all of them when ``now`` is ``None``)."""
    sql = "SELECT story_id, kind, tier FROM alerts WHERE status = 'pending' AND held = 0 AND digest IS NULL"
    return [(r[0], r[1], r[2]) for r in _due(conn, sql, "created_at, story_id, kind, tier", now)]


def due_digests(conn: sqlite3.Connection, now: float | None) -> list[str]:
    """Pending digests whose next try has come (all of them when ``now`` is ``None``)."""
    return [r[0] for r in _due(conn, "SELECT id FROM digests WHERE status = 'pending'", "created_at, id", now)]


def _due(conn: sqlite3.Connection, sql: str, order: str, now: float | None) -> list[Any]:
    if now is None:
        return conn.execute(f"{sql} ORDER BY {order}").fetchall()
    return conn.execute(f"{sql} AND next_try <= ? ORDER BY {order}", (now,)).fetchall()


def digest(conn: sqlite3.Connection, digest_id: str) -> Digest | None:
    """A digest with its members still pending, or ``None``."""
    row = conn.execute("SELECT status, held, attempts FROM digests WHERE id = ?", (digest_id,)).fetchone()
    if row is None:
        return None
    sql = f"SELECT {_COLUMNS} FROM alerts WHERE digest = ? AND status = 'pending' ORDER BY created_at, story_id, tier"
    members = [_entry(r) for r in conn.execute(sql, (digest_id,))]
    return Digest(digest_id, row[0], bool(row[1]), row[2], members)


# -- outcomes -----------------------------------------------------------------


def recipients(conn: sqlite3.Connection, mail: str) -> dict[str, tuple[str, str | None]]:
    """The recipients this mail has an outcome for: address -> (``accepted`` or ``refused``, reply)."""
    rows = conn.execute("SELECT address, outcome, reply FROM recipients WHERE mail = ?", (mail,))
    return {r[0]: (r[1], r[2]) for r in rows}


def record_recipients(
    conn: sqlite3.Connection, mail: str, outcomes: dict[str, tuple[str, str | None]], now: float
) -> None:
    """Record which recipients accepted the mail and which refused it for good."""
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO recipients (mail, address, outcome, reply, at) VALUES (?, ?, ?, ?, ?)",
            [(mail, address, outcome, reply, now) for address, (outcome, reply) in outcomes.items()],
        )


def finish(conn: sqlite3.Connection, mail: str, status: str, note: str | None, now: float) -> None:
    """Mark a mail ``sent`` or ``failed``; a digest and all its pending members together.

    ``sent`` also overrides ``dropped``: an alert dropped while its send was
    already running did go out, and the record says what happened.
    """
    digest_id, where, args = _members(mail)
    before = "('pending', 'dropped')" if status == "sent" else "('pending')"
    with conn:
        if digest_id is not None:
            conn.execute(
                "UPDATE digests SET status = ?, last_error = COALESCE(?, last_error), done_at = ?,"
                f" attempts = attempts + 1 WHERE id = ? AND status IN {before}",
                (status, note, now, digest_id),
            )
        conn.execute(
            "UPDATE alerts SET status = ?, last_error = COALESCE(?, last_error), done_at = ?,"
            f" attempts = attempts + 1 WHERE {where} AND status IN {before}",
            (status, note, now, *args),
        )


def record_failure(conn: sqlite3.Connection, mail: str, error: str, next_try: float, now: float) -> None:
    """A try failed for now: count it, keep the reason and when to try again; the mail stays pending."""
    digest_id, where, args = _members(mail)
    with conn:
        if digest_id is not None:
            conn.execute(
                "UPDATE digests SET attempts = attempts + 1, last_error = ?, next_try = ?"
                " WHERE id = ? AND status = 'pending'",
                (error, next_try, digest_id),
            )
        conn.execute(
            f"UPDATE alerts SET attempts = attempts + 1, last_error = ?, next_try = ?,"
            f" failing_since = COALESCE(failing_since, ?) WHERE {where} AND status = 'pending'",
            (error, next_try, now, *args),
        )


def _members(mail: str) -> tuple[str | None, str, tuple[object, ...]]:
    """The digest id (if a digest), and the WHERE clause with its arguments that selects the mail's alerts."""
    kind, _, rest = mail.partition(":")
    if kind == "digest":
        return rest, "digest = ?", (rest,)
    return None, "story_id = ? AND kind = ? AND tier = ?", _key(rest)


def _key(rest: str) -> Key:
    story, kind, tier = rest.split(":")
    return int(story), kind, int(tier)


# -- operator commands --------------------------------------------------------


def retry(conn: sqlite3.Connection, keys: Sequence[Key]) -> list[Key]:
    """Put failed alerts back to pending and due now (pending ones only due now); returns the keys changed.

    A failed alert leaves its digest and forgets the refusals, so it goes out
    in a new mail to every recipient that did not accept it.
    """
    changed: list[Key] = []
    with conn:
        for key in keys:
            row = conn.execute(
                "SELECT status, digest FROM alerts WHERE story_id = ? AND kind = ? AND tier = ?", key
            ).fetchone()
            if row is None or row[0] not in ("pending", "failed"):
                continue
            if row[0] == "failed":
                mail = alert_mail(key)
                if row[1] is not None:  # leaving its digest: who accepted that digest has this alert
                    conn.execute(
                        "INSERT OR IGNORE INTO recipients (mail, address, outcome, reply, at) SELECT ?,"
                        " address, outcome, reply, at FROM recipients WHERE mail = ? AND outcome = 'accepted'",
                        (mail, digest_mail(row[1])),
                    )
                conn.execute("DELETE FROM recipients WHERE mail = ? AND outcome = 'refused'", (mail,))
                conn.execute(
                    "UPDATE alerts SET status = 'pending', done_at = NULL, next_try = 0, digest = NULL,"
                    " held = 0, failing_since = NULL WHERE story_id = ? AND kind = ? AND tier = ?",
                    key,
                )
            else:
                conn.execute(
                    "UPDATE alerts SET next_try = 0, failing_since = NULL WHERE story_id = ? AND kind = ? AND tier = ?",
                    key,
                )
                if row[1] is not None:
                    conn.execute("UPDATE digests SET next_try = 0 WHERE id = ?", (row[1],))
            changed.append(key)
    return changed


def drop(conn: sqlite3.Connection, keys: Sequence[Key], now: float) -> list[Key]:
    """Give up on alerts not yet sent: never sent, recorded as ``dropped``; returns the keys changed.

    A digest whose members are all dropped is dropped too.
    """
    changed: list[Key] = []
    with conn:
        for key in keys:
            cur = conn.execute(
                "UPDATE alerts SET status = 'dropped', done_at = ? WHERE story_id = ? AND kind = ? AND tier = ?"
                " AND status IN ('pending', 'failed')",
                (now, *key),
            )
            if cur.rowcount:
                changed.append(key)
        conn.execute(
            "UPDATE digests SET status = 'dropped', done_at = ? WHERE status = 'pending' AND NOT EXISTS"
            " (SELECT 1 FROM alerts WHERE alerts.digest = digests.id AND alerts.status = 'pending')",
            (now,),
        )
    return changed


def failed_keys(conn: sqlite3.Connection) -> list[Key]:
    """Every alert refused for good."""
    return [(r[0], r[1], r[2]) for r in conn.execute("SELECT story_id, kind, tier FROM alerts WHERE status = 'failed'")]


def undelivered(conn: sqlite3.Connection, since: float, quiet: bool) -> int:
    """Alerts not delivered: still owed a mail, refused for good since ``since``, or refused by a recipient since.

    While ``quiet`` (quiet hours), what waits for them is held, not undelivered:
    held singles and every pending digest. Otherwise a held single is only
    waiting for its digest to form.
    """
    waiting = "held = 0 AND digest IS NULL" if quiet else "held = 0 OR digest IS NOT NULL"
    row = conn.execute(
        f"SELECT COUNT(*) FROM alerts WHERE (status = 'pending' AND ({waiting}))"
        " OR (status = 'failed' AND done_at >= ?)",
        (since,),
    ).fetchone()
    # Mails taken by some recipients and refused for good by others (a mail refused by all is failed above).
    refused = conn.execute(
        "SELECT COUNT(DISTINCT mail) FROM recipients r WHERE outcome = 'refused' AND at >= ?"
        " AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.status = 'failed'"
        " AND r.mail = 'alert:' || a.story_id || ':' || a.kind || ':' || a.tier)"
        " AND NOT EXISTS (SELECT 1 FROM digests d WHERE d.status = 'failed' AND r.mail = 'digest:' || d.id)",
        (since,),
    ).fetchone()
    return int(row[0]) + int(refused[0])


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many alerts are pending, held, sent, failed and dropped."""
    out = dict.fromkeys(("pending", "held", "sent", "failed", "dropped", "baseline"), 0)
    rows = conn.execute(
        "SELECT CASE WHEN status = 'pending' AND held = 1 AND digest IS NULL THEN 'held' ELSE status END, COUNT(*)"
        " FROM alerts GROUP BY 1"
    )
    out.update({r[0]: r[1] for r in rows})
    return out
