"""The state DB's tables, their migrations, and opening the file with its lock."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from alerts.errors import StateError

#: Each entry takes the DB from user_version N to N + 1.
MIGRATIONS = (
    # 1: the first schema.
    """
    CREATE TABLE alerts (
        story_id   INTEGER NOT NULL,
        kind       TEXT    NOT NULL,
        tier       INTEGER NOT NULL,
        status     TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
        alert      TEXT    NOT NULL,
        created_at REAL    NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        done_at    REAL,
        PRIMARY KEY (story_id, kind, tier)
    );
    CREATE INDEX alerts_pending ON alerts (status) WHERE status = 'pending';
    CREATE TABLE walks (
        story_id    INTEGER PRIMARY KEY,
        descendants INTEGER,
        comments    INTEGER NOT NULL,
        walked_at   REAL    NOT NULL
    );
    """,
    # 2: alerts held for quiet hours, alerts recorded by a baseline, and each story's count over time.
    """
    CREATE TABLE alerts2 (
        story_id   INTEGER NOT NULL,
        kind       TEXT    NOT NULL,
        tier       INTEGER NOT NULL,
        status     TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'baseline')),
        alert      TEXT    NOT NULL,
        created_at REAL    NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        done_at    REAL,
        held       INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (story_id, kind, tier)
    );
    INSERT INTO alerts2 (story_id, kind, tier, status, alert, created_at, attempts, last_error, done_at)
        SELECT story_id, kind, tier, status, alert, created_at, attempts, last_error, done_at FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts2 RENAME TO alerts;
    CREATE INDEX alerts_pending ON alerts (status) WHERE status = 'pending';
    CREATE TABLE counts (
        story_id INTEGER NOT NULL,
        at       REAL    NOT NULL,
        comments INTEGER NOT NULL,
        PRIMARY KEY (story_id, at)
    );
    """,
    # 3: the outbox owns all of its state: per-alert next try, dropped alerts, digests stored with
    # their members, per-recipient outcomes; the baseline owed to stories; small key-value facts.
    """
    CREATE TABLE alerts3 (
        story_id   INTEGER NOT NULL,
        kind       TEXT    NOT NULL,
        tier       INTEGER NOT NULL,
        status     TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'baseline', 'dropped')),
        alert      TEXT    NOT NULL,
        created_at REAL    NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        done_at    REAL,
        held       INTEGER NOT NULL DEFAULT 0,
        next_try   REAL    NOT NULL DEFAULT 0,
        digest     TEXT,
        PRIMARY KEY (story_id, kind, tier)
    );
    INSERT INTO alerts3 (story_id, kind, tier, status, alert, created_at, attempts, last_error, done_at, held)
        SELECT story_id, kind, tier, status, alert, created_at, attempts, last_error, done_at, held FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts3 RENAME TO alerts;
    CREATE INDEX alerts_pending ON alerts (status) WHERE status = 'pending';
    CREATE TABLE digests (
        id         TEXT    PRIMARY KEY,
        status     TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'dropped')),
        held       INTEGER NOT NULL DEFAULT 0,
        created_at REAL    NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_try   REAL    NOT NULL DEFAULT 0,
        last_error TEXT,
        done_at    REAL
    );
    CREATE TABLE recipients (
        mail    TEXT NOT NULL,
        address TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused')),
        reply   TEXT,
        at      REAL NOT NULL,
        PRIMARY KEY (mail, address)
    );
    CREATE TABLE baseline_owed (story_id INTEGER PRIMARY KEY);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 4: the stream source: each item handled and the story it belongs to (NULL: none), and each
    # watched story's count kept incrementally (its last walk plus the live comments seen since).
    """
    CREATE TABLE items (id INTEGER PRIMARY KEY, story INTEGER);
    CREATE TABLE tallies (story_id INTEGER PRIMARY KEY, count INTEGER NOT NULL, at REAL NOT NULL);
    """,
    # 5: what operators see: the stories watched at the last cycle with their count, and their growth;
    # since when an alert's tries have been failing (it is "stuck" after an hour of that).
    """
    CREATE TABLE stories (
        story_id INTEGER PRIMARY KEY,
        title    TEXT    NOT NULL,
        count    INTEGER NOT NULL,
        seen_at  REAL    NOT NULL
    );
    CREATE TABLE growth (
        story_id INTEGER NOT NULL,
        at       REAL    NOT NULL,
        count    INTEGER NOT NULL,
        PRIMARY KEY (story_id, at)
    );
    ALTER TABLE alerts ADD COLUMN failing_since REAL;
    """,
)


def rows_for(conn: sqlite3.Connection, sql: str, ids: Sequence[int]) -> Iterator[Any]:
    """Rows of ``sql`` whose ``IN ({})`` takes ``ids``, in chunks under SQLite's variable limit."""
    for start in range(0, len(ids), 500):
        chunk = list(ids[start : start + 500])
        yield from conn.execute(sql.format(",".join("?" * len(chunk))), chunk)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the DB to the newest schema, one version per transaction."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alerts'").fetchone():
        version = 1  # made by 0.1.0, which did not set user_version
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Open the DB to read only (runs on the DB thread): no lock, no migration, nothing written.

    A DB of an older schema is refused with what to do: the service
    migrates it when it starts.
    """
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as exc:
        raise StateError(f"ALERTS_STATE_DB: cannot read {path}: {exc}") from exc
    if version != len(MIGRATIONS):
        conn.close()
        if version < len(MIGRATIONS):
            raise StateError(
                f"ALERTS_STATE_DB: {path} has schema {version}, this version reads {len(MIGRATIONS)}:"
                " start the service (alerts run or run --once) once to upgrade it"
            )
        raise StateError(f"ALERTS_STATE_DB: {path} has schema {version}, made by a newer version of hn-alerts")
    return conn


def connect(path: Path, exclusive: bool) -> tuple[sqlite3.Connection, IO[bytes] | None]:
    """Open, lock and migrate the DB (runs on the DB thread).

    The lock is taken on the file's real path (links resolved), so two names
    for one DB cannot let two services share it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"ALERTS_STATE_DB: cannot create folder {path.parent}: {exc.strerror}") from exc
    lock: IO[bytes] | None = None
    if exclusive:
        lock = _lock(path.resolve())
    try:
        conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level="DEFERRED")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        migrate(conn)
    except sqlite3.Error as exc:
        if lock is not None:
            lock.close()
        raise StateError(f"ALERTS_STATE_DB: cannot use {path}: {exc}") from exc
    return conn, lock


def _lock(path: Path) -> IO[bytes]:
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "ab")  # noqa: SIM115 - held open for the life of the Store
    except OSError as exc:
        raise StateError(f"ALERTS_STATE_DB: cannot open {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StateError(f"ALERTS_STATE_DB: {path} is in use by another hn-alerts process (lock {lock_path})") from None
    os.set_inheritable(handle.fileno(), False)
    return handle
