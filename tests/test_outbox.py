"""The outbox owns its state: what is sent, when it is tried again, and the operator's commands."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from alerts import ledger
from alerts.errors import StateError
from alerts.outbox import MAX_GAP, retry_delay
from alerts.store import Store
from tests import trees
from tests.conftest import run_cli, start_cli, wait_for, with_smtp
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.smtpserver import SmtpServer
from tests.test_rules_beyond import BERLIN, Clock, cycle


def statuses(db: Path) -> dict[str, str]:
    """Each alert's status by its operator id; empty while the service has not made its tables yet."""
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT story_id, kind, tier, status FROM alerts").fetchall()
        except sqlite3.OperationalError:
            rows = []
    conn.close()
    return {f"{s}:{'velocity' if k == 'velocity' else t}": status for s, k, t, status in rows}


async def test_quiet_hours_beginning_and_ending_while_a_send_runs_mail_it_once(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """A send in flight when quiet hours begin is not held, and the digest after them does not carry it again."""
    hn.add_story(1, trees.wide(1_000, 120), title="In flight")
    hn.set_list("topstories", [1])
    clock = Clock(datetime(2026, 6, 10, 22, 59, tzinfo=BERLIN))
    sender = RecordingSender(blocked=True)
    cfg = {**env, "ALERTS_QUIET_HOURS": "23:00-07:00", "ALERTS_TIMEZONE": "Europe/Berlin"}
    app = await app_factory(cfg, sender=sender, clock=clock)
    await app.service.run_cycle()
    await asyncio.wait_for(sender.started.wait(), 5)
    clock.set(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    await app.service.run_cycle()  # quiet: holds what waits, but not the send that is running
    clock.set(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))
    await app.service.run_cycle()  # quiet hours over: a digest of held alerts, if any
    sender.gate.set()
    await app.registry.join()
    await cycle(app)
    assert [m["X-HN-Alerts-Story"] for m in sender.messages] == ["1"]
    assert await app.store.pending() == []
    assert app.registry.failures == 0


async def test_a_digest_resent_after_a_restart_is_the_same_mail(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """A digest not accepted keeps its members and Message-ID: the restarted service resends the same mail."""
    for n in (1, 2):
        hn.add_story(n, trees.wide(n * 1_000, 120), title=f"T{n}")
    hn.set_list("topstories", [1, 2])
    cfg = {**env, "ALERTS_DIGEST": "true", "ALERTS_SEND_ATTEMPTS": "1"}
    sender = RecordingSender(failures=1)
    first = await app_factory(cfg, sender=sender)
    await cycle(first)
    await first.store.close()
    hn.add_story(3, trees.wide(3_000, 130), title="T3")  # a later alert must not change the stored digest
    hn.set_list("topstories", [1, 2, 3])
    second = await app_factory(cfg, sender=sender)
    await cycle(second)
    first_try, resent, third = sender.messages
    assert resent["Message-ID"] == first_try["Message-ID"]
    assert resent["X-HN-Alerts-Story"] == first_try["X-HN-Alerts-Story"] == "1,2"
    assert third["X-HN-Alerts-Story"] == "3" and third["Message-ID"] != first_try["Message-ID"]
    assert statuses(Path(env["ALERTS_STATE_DB"])) == {"1:100": "sent", "2:100": "sent", "3:100": "sent"}


def test_retry_delay_doubles_with_jitter_and_caps_at_ten_minutes() -> None:
    """About SEND_BACKOFF x 2^(n-1) before the n-th retry, up to 25% more, never over 10 minutes; 0 turns it off."""
    assert [retry_delay(n, 1.0, 0.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(3, 1.0, 1.0) == 5.0
    assert retry_delay(20, 1.0, 0.0) == MAX_GAP == 600.0
    assert retry_delay(10_000, 2.0, 1.0) == MAX_GAP
    assert retry_delay(5, 0.0, 1.0) == 0.0


async def test_a_failed_alert_waits_its_backoff_across_cycles_and_a_restart_tries_at_once(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """With the default backoff, a failed send waits about 2^n s between cycles; a restart sends at once."""
    hn.add_story(1, trees.wide(1_000, 120))
    hn.set_list("topstories", [1])
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=BERLIN))
    cfg = {**env, "ALERTS_SEND_ATTEMPTS": "1"}
    del cfg["ALERTS_SEND_BACKOFF"]  # the default, 1 s
    sender = RecordingSender(failures=2)
    app = await app_factory(cfg, sender=sender, clock=clock)
    await cycle(app)
    entry = await app.store.get((1, "tier", 100))
    assert entry is not None and entry.attempts == 1
    assert 1.0 <= entry.next_try - clock.now <= 1.25
    await cycle(app)  # not due yet
    assert len(sender.messages) == 1
    clock.advance(1.3 / 60)
    await cycle(app)  # due: the second try fails too, and waits twice as long
    assert len(sender.messages) == 2
    entry = await app.store.get((1, "tier", 100))
    assert entry is not None and entry.attempts == 2 and 2.0 <= entry.next_try - clock.now <= 2.5
    await app.store.close()
    restarted = await app_factory(cfg, sender=sender, clock=clock)
    await cycle(restarted)  # a restart tries at once, whatever the backoff said
    assert len(sender.messages) == 3
    assert await restarted.store.pending() == []


async def test_the_lock_holds_on_the_real_path_through_a_symlink(tmp_path: Path) -> None:
    """Two names for one state DB (a symlink) cannot let a second service in."""
    real = tmp_path / "real" / "state.sqlite3"
    real.parent.mkdir()
    link = tmp_path / "link.sqlite3"
    store = await Store.open(real)
    link.symlink_to(real)
    try:
        with pytest.raises(StateError, match="in use by another hn-alerts process"):
            await Store.open(link)
    finally:
        await store.close()


async def test_the_baseline_owed_survives_a_restart(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """A story the baseline cycle could not count is owed its baseline in the DB: a restart takes it, no mail."""
    hn.add_story(1, trees.wide(1_000, 150), title="Unreachable at first")
    hn.add_story(2, trees.wide(2_000, 120), title="Fine")
    hn.set_list("topstories", [1, 2])
    hn.fail("/v0/item/1000.json", times=3, status=503)  # story 1's walk is incomplete
    cfg = with_smtp(env, smtp, ALERTS_BASELINE="true")
    first = await app_factory(cfg)
    await cycle(first)
    await first.store.close()
    second = await app_factory(cfg)
    await cycle(second)
    assert smtp.received == []
    assert statuses(Path(env["ALERTS_STATE_DB"])) == {"1:100": "baseline", "2:100": "baseline"}
    assert await second.store.baseline_owed() == set()


def test_a_baseline_cycle_cut_short_is_taken_again_after_a_restart(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL during the baseline cycle: the next start still takes the baseline instead of mailing."""
    hn.add_story(1, trees.wide(1_000, 150), title="Recorded")
    hn.add_story(2, trees.wide(2_000, 150), title="Not reached")
    hn.set_list("topstories", [1, 2])
    hn.set_delay("/v0/item/2.json", 30)
    cfg = {**env, "ALERTS_BASELINE": "true", "ALERTS_FETCH_TIMEOUT": "60"}
    proc = start_cli(["run"], cfg, tmp_path)
    try:
        wait_for(lambda: statuses(Path(env["ALERTS_STATE_DB"])).get("1:100") == "baseline", what="story 1 recorded")
    finally:
        proc.kill()
        proc.communicate()
    hn.set_delay("/v0/item/2.json", 0)
    result = run_cli(["run", "--once"], cfg, tmp_path)
    assert result.returncode == 0, result.stderr
    assert statuses(Path(env["ALERTS_STATE_DB"])) == {"1:100": "baseline", "2:100": "baseline"}
    assert not list((tmp_path / "outbox").glob("*.eml"))


def test_failed_cycles_back_off_exponentially(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """Lists answering 403 every cycle are asked after 1, 2, 4, 8 ... intervals, not every interval."""
    hn.fail("/v0/topstories.json", times=1_000, status=403)

    async def run() -> int:
        from alerts.app import open_app
        from tests.conftest import settings_from

        async with open_app(settings_from({**env, "ALERTS_POLL_INTERVAL": "1"})) as app:
            for _ in range(16):
                await app.service._safe_cycle()
        return hn.requests["/v0/topstories.json"]

    assert asyncio.run(run()) == 5  # ticks 1, 2, 4, 8 and 16


# -- the operator's commands ---------------------------------------------------------


def seeded_db(env: dict[str, str], tmp_path: Path) -> Path:
    """A state DB with one failed, one pending (tried twice) and one sent alert."""
    db = Path(env["ALERTS_STATE_DB"])

    async def seed() -> None:
        from alerts.model import Alert, Story

        store = await Store.open(db)
        try:
            for story, status in ((11, "failed"), (12, "pending"), (13, "sent")):
                alert = Alert(Story(story, f"Story {story}", "pg", 10, None, 200), 100, 150)
                await store.run(ledger.insert, alert, "pending", False, 1.0)
                mail = ledger.alert_mail(alert.key)
                if status == "pending":
                    await store.run(ledger.record_failure, mail, "451 later", 2e9, 1e9)
                    await store.run(ledger.record_failure, mail, "451 later again", 2e9, 1e9)
                elif status != "pending":
                    await store.run(ledger.finish, mail, status, "554 spam" if status == "failed" else None, 5.0)
            heat = Alert(Story(14, "Hot", "pg", 10, None, 200), 0, 150, kind="velocity", gain=50, minutes=30)
            await store.run(ledger.insert, heat, "pending", True, 2.0)
        finally:
            await store.close()

    asyncio.run(seed())
    return db


def test_outbox_lists_what_is_not_delivered(env: dict[str, str], tmp_path: Path) -> None:
    """`alerts outbox` shows pending, held and failed alerts with their tries, next try and last error."""
    seeded_db(env, tmp_path)
    text = run_cli(["outbox"], env, tmp_path)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATUS", "TRIES", "NEXT"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["11:100", "failed", "1"],
        ["12:100", "pending", "2"],
        ["14:velocity", "held", "0"],
    ]
    assert "554 spam" in lines[1] and "451 later again" in lines[2] and "2033-05-18T03:33:20Z" in lines[2]
    rows = json.loads(run_cli(["outbox", "--json"], env, tmp_path).stdout)
    assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [
        ("11:100", "failed", 1),
        ("12:100", "pending", 2),
        ("14:velocity", "held", 0),
    ]
    assert rows[1]["next_try"] == "2033-05-18T03:33:20Z" and rows[1]["last_error"] == "451 later again"
    assert set(rows[0]) == {
        "id", "story", "title", "kind", "tier", "comments", "status", "attempts", "next_try", "last_error",
        "queued_at", "digest",
    }  # fmt: skip


def test_outbox_retry_and_drop(hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path) -> None:
    """`retry --failed` puts failed alerts back and the next run sends them; `drop` gives up for good."""
    seeded_db(env, tmp_path)
    assert run_cli(["outbox", "drop", "12:100"], env, tmp_path).returncode == 0
    assert "12:100" not in run_cli(["outbox"], env, tmp_path).stdout
    retried = run_cli(["outbox", "retry", "--failed"], env, tmp_path)
    assert retried.returncode == 0 and "11:100" in retried.stdout
    hn.set_list("topstories", [])
    result = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path)
    assert result.returncode == 0, result.stderr
    # 11 goes out alone; 14 was held for quiet hours that are over, so it leaves in a digest.
    assert sorted(r.message["X-HN-Alerts-Story"] for r in smtp.received) == ["11", "14"]
    assert statuses(Path(env["ALERTS_STATE_DB"])) == {
        "11:100": "sent",
        "12:100": "dropped",
        "13:100": "sent",
        "14:velocity": "sent",
    }


def test_outbox_commands_refuse_bad_and_unknown_ids(env: dict[str, str], tmp_path: Path) -> None:
    """A malformed ID is a usage error (exit 2); an unknown or already sent one is exit 1 naming it."""
    seeded_db(env, tmp_path)
    for bad in ("12", "x:100", "12:-1", "12:0", "12:hot", "99999999999999999999:100"):
        result = run_cli(["outbox", "retry", bad], env, tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (bad, result.stderr)
    assert run_cli(["outbox", "retry"], env, tmp_path).returncode == 2
    assert run_cli(["outbox", "retry", "11:100", "--failed"], env, tmp_path).returncode == 2
    unknown = run_cli(["outbox", "drop", "77:100", "13:100", "12:100"], env, tmp_path)
    assert unknown.returncode == 1
    assert (
        "77:100: cannot drop: no such alert" in unknown.stderr and "13:100: cannot drop: it is sent" in unknown.stderr
    )
    assert statuses(Path(env["ALERTS_STATE_DB"]))["12:100"] == "dropped"  # the valid one was still dropped


def test_outbox_works_while_the_service_runs(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """The operator's commands do not take the service's lock; a running service sends a retried alert next cycle."""
    db = seeded_db(env, tmp_path)
    hn.set_list("topstories", [])
    proc = start_cli(["run"], {**env, "ALERTS_POLL_INTERVAL": "0.5"}, tmp_path)
    try:
        wait_for(lambda: statuses(db)["12:100"] == "sent", what="the service's first dispatch")
        listed = run_cli(["outbox", "--json"], env, tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert [r["id"] for r in json.loads(listed.stdout)] == ["11:100"]
        assert run_cli(["outbox", "retry", "11:100"], env, tmp_path).returncode == 0
        wait_for(lambda: statuses(db)["11:100"] == "sent", what="the retried alert to go out")
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert {"11-tier-100.eml", "12-tier-100.eml"} <= {p.name for p in (tmp_path / "outbox").glob("*.eml")}


def test_outbox_without_a_state_db_creates_none(env: dict[str, str], tmp_path: Path) -> None:
    """Listing an outbox that was never created says so and creates no file."""
    result = run_cli(["outbox"], env, tmp_path)
    assert result.returncode == 0 and "no state DB" in result.stdout
    assert not Path(env["ALERTS_STATE_DB"]).exists()
    assert run_cli(["outbox", "retry", "1:100"], env, tmp_path).returncode == 1
