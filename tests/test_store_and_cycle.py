"""In-process: the state DB and the cycle's fire-and-forget sends."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from alerts import ledger
from alerts.errors import StateError
from alerts.model import Alert, Story
from alerts.schema import MIGRATIONS
from alerts.store import Store
from tests import trees
from tests.fakehn import FakeHN
from tests.senders import RecordingSender


def alert(story_id: int = 1, tier: int = 100) -> Alert:
    return Alert(Story(story_id, "T", "u", 1, None, 5), tier, tier + 1)


async def enqueue(store: Store, new: Alert) -> bool:
    """Write ``new`` to the outbox as the service does before sending it."""
    return await store.run(ledger.insert, new, "pending", False, store.now())


async def test_enqueue_is_idempotent_and_survives_reopen(tmp_path: Path) -> None:
    """The same (story, tier) is queued once; the outbox and the sent mark persist on disk."""
    db = tmp_path / "s.sqlite3"
    store = await Store.open(db)
    assert await enqueue(store, alert()) is True
    assert await enqueue(store, alert()) is False
    assert await enqueue(store, alert(tier=250)) is True
    await store.run(ledger.finish, ledger.alert_mail((1, "tier", 100)), "sent", None, store.now())
    await store.close()
    store = await Store.open(db)
    try:
        assert await store.pending() == [(1, "tier", 250)]
        assert await store.alerted_tiers([1, 2]) == {1: 250}
        counts = await store.counts()
        assert counts == {"pending": 1, "held": 0, "sent": 1, "failed": 0, "dropped": 0, "baseline": 0}
    finally:
        await store.close()


async def test_second_open_is_refused_while_locked(tmp_path: Path) -> None:
    """A DB held by one Store cannot be opened by another."""
    store = await Store.open(tmp_path / "s.sqlite3")
    try:
        with pytest.raises(StateError, match="in use by another hn-alerts process"):
            await Store.open(tmp_path / "s.sqlite3")
    finally:
        await store.close()


async def test_unwritable_location_is_a_clear_state_error(tmp_path: Path) -> None:
    """A state DB path under a regular file fails with StateError naming ALERTS_STATE_DB."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="ALERTS_STATE_DB"):
        await Store.open(tmp_path / "file" / "s.sqlite3")


async def test_cycle_never_awaits_a_send(hn: FakeHN, env: dict[str, str], app_factory: Any) -> None:
    """The cycle returns while its send is still blocked; the registry owns the send until it ends."""
    hn.add_story(1, trees.wide(1_000, 120))
    hn.set_list("topstories", [1])
    sender = RecordingSender(blocked=True)
    app = await app_factory(env, sender=sender)
    report = await app.service.run_cycle()
    assert report.alerts == 1
    await asyncio.wait_for(sender.started.wait(), 5)
    assert len(app.registry) == 1 and sender.messages == []
    assert await app.store.pending() == [(1, "tier", 100)]
    sender.gate.set()
    await app.registry.join()
    assert len(sender.messages) == 1
    assert await app.store.pending() == []


async def test_cycle_dispatches_outbox_left_from_before(hn: FakeHN, env: dict[str, str], app_factory: Any) -> None:
    """An entry pending from an earlier run is sent in the next cycle even if nothing new is due."""
    hn.set_list("topstories", [])
    store = await Store.open(Path(env["ALERTS_STATE_DB"]))
    await enqueue(store, alert(story_id=77))
    await store.close()
    sender = RecordingSender()
    app = await app_factory(env, sender=sender)
    await app.service.run_cycle()
    await app.registry.join()
    assert [m["X-HN-Alerts-Story"] for m in sender.messages] == ["77"]


OLD_SCHEMA = """
CREATE TABLE alerts (
    story_id INTEGER NOT NULL, kind TEXT NOT NULL, tier INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    alert TEXT NOT NULL, created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, done_at REAL, PRIMARY KEY (story_id, kind, tier)
);
CREATE INDEX alerts_pending ON alerts (status) WHERE status = 'pending';
CREATE TABLE walks (
    story_id INTEGER PRIMARY KEY, descendants INTEGER, comments INTEGER NOT NULL, walked_at REAL NOT NULL
);
"""


async def test_a_db_made_by_the_first_version_is_migrated_with_its_rows(tmp_path: Path) -> None:
    """A 0.1.0 state DB (no user_version, no held column) keeps its pending and sent alerts after migration."""
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
        for story_id, status in ((1, "pending"), (2, "sent")):
            conn.execute(
                "INSERT INTO alerts (story_id, kind, tier, status, alert, created_at) VALUES (?, 'tier', 100, ?, ?, 0)",
                (story_id, status, json.dumps(alert(story_id).to_json())),
            )
    conn.close()
    store = await Store.open(db)
    try:
        assert await store.pending() == [(1, "tier", 100)]
        assert await store.alerted_tiers([1, 2]) == {1: 100, 2: 100}
        assert await store.record_baseline(alert(3)) is True  # a status the old CHECK refused
        await store.record_counts([(1, 50)], keep_seconds=60)
        assert [count for _at, count in (await store.count_history([1]))[1]] == [50]
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    conn.close()
