"""The service's promises as a process: outages, refusals, signals, incomplete walks, the schedule."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

from tests import trees
from tests.conftest import run_cli, start_cli, wait_for, with_smtp
from tests.fakehn import FakeHN
from tests.smtpserver import SmtpServer, free_port

DESTROYED = "Task was destroyed but it is pending"


def two_busy_stories(hn: FakeHN) -> None:
    hn.add_story(1, trees.generated(1_000, live=120, dead=3, depth=6, seed=1), title="First")
    hn.add_story(2, trees.generated(2_000, live=150, deleted=3, depth=6, seed=2), title="Second")
    hn.set_list("topstories", [1, 2])


def statuses(tmp_path: Path) -> dict[int, str]:
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        return dict(db.execute("SELECT story_id, status FROM alerts").fetchall())


def stop(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_smtp_outage_keeps_alerts_and_the_next_run_delivers_once(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """SMTP down: --once exits 1 and keeps the alerts; SMTP up: the next run delivers each once."""
    two_busy_stories(hn)
    port = free_port()
    down = run_cli(["run", "--once"], with_smtp(env, SmtpServer(port=port), ALERTS_SEND_ATTEMPTS="2"), tmp_path)
    assert down.returncode == 1, down.stderr
    assert "alert not sent, kept in the outbox" in down.stderr
    assert statuses(tmp_path) == {1: "pending", 2: "pending"}
    server = SmtpServer(port=port).start()
    try:
        up = run_cli(["run", "--once"], with_smtp(env, server), tmp_path)
        assert up.returncode == 0, up.stderr
        assert sorted(server.subjects()) == ["[HN] First — 120 comments", "[HN] Second — 150 comments"]
        again = run_cli(["run", "--once"], with_smtp(env, server), tmp_path)
        assert again.returncode == 0 and len(server.received) == 2
    finally:
        server.stop()
    assert statuses(tmp_path) == {1: "sent", 2: "sent"}


def test_451_is_retried_within_the_run(hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path) -> None:
    """A 451 on the first attempts is retried with backoff in the same run: delivered once, exit 0."""
    hn.add_story(1, trees.wide(1_000, 120), title="Only")
    hn.set_list("topstories", [1])
    smtp.handler.data_replies = ["451 4.7.1 greylisted", "451 4.7.1 greylisted"]
    result = run_cli(["run", "--once"], with_smtp(env, smtp, ALERTS_SEND_ATTEMPTS="3"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert smtp.subjects() == ["[HN] Only — 120 comments"]


def test_554_is_permanent_and_blocks_nothing(hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path) -> None:
    """A 554 is recorded with the reply and never retried; the other alert still goes out."""
    two_busy_stories(hn)
    hn.set_list("topstories", [1])
    smtp.handler.data_replies = ["554 5.7.1 rejected as spam"]
    first = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path)
    assert first.returncode == 1
    assert "refused for good" in first.stderr and "554 5.7.1 rejected as spam" in first.stderr
    assert "1 alert(s) not delivered" in first.stderr  # counted once, not once per refusal record
    hn.set_list("topstories", [1, 2])
    second = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path)
    assert second.returncode == 0, second.stderr
    assert smtp.subjects() == ["[HN] Second — 150 comments"]
    assert statuses(tmp_path) == {1: "failed", 2: "sent"}
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        assert db.execute("SELECT last_error FROM alerts WHERE story_id = 1").fetchone() == (
            "DATA refused: 554 5.7.1 rejected as spam",
        )


def test_sigterm_lets_sends_in_flight_finish(hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM while a slow SMTP server holds a send: the send finishes, exit 0, no destroyed task."""
    hn.add_story(1, trees.wide(1_000, 120), title="Slow one")
    hn.set_list("topstories", [1])
    smtp.handler.data_delay = 1.0
    proc = start_cli(["run"], with_smtp(env, smtp), tmp_path)
    try:
        wait_for(smtp.handler.data_started.is_set, what="the send to reach DATA")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert smtp.subjects() == ["[HN] Slow one — 120 comments"]
    assert DESTROYED not in err
    assert statuses(tmp_path) == {1: "sent"}


def test_sigterm_past_the_timeout_cancels_and_the_next_start_sends(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """A send slower than ALERTS_SHUTDOWN_TIMEOUT is cancelled, stays pending, goes out on the next start."""
    hn.add_story(1, trees.wide(1_000, 120), title="Stuck")
    hn.set_list("topstories", [1])
    smtp.handler.rcpt_delay = 30
    proc = start_cli(["run"], with_smtp(env, smtp, ALERTS_SHUTDOWN_TIMEOUT="0.3"), tmp_path)
    try:
        wait_for(smtp.handler.rcpt_started.is_set, what="the send to reach RCPT")
    finally:
        code, err = stop(proc, signal.SIGINT)
    assert code == 0, err
    assert DESTROYED not in err
    assert "cancelled 1 send(s)" in err
    assert smtp.received == []
    assert statuses(tmp_path) == {1: "pending"}
    smtp.handler.rcpt_delay = 0
    again = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path)
    assert again.returncode == 0, again.stderr
    assert smtp.subjects() == ["[HN] Stuck — 120 comments"]


def test_sigterm_during_a_cycle_cancels_the_walks_at_once(env: dict[str, str], tmp_path: Path) -> None:
    """A signal while a walk waits on a slow API stops the process without waiting for the walk."""
    with FakeHN() as slow:
        slow.add_story(1, trees.wide(1_000, 95))  # near its tier: walked
        slow.set_list("topstories", [1])
        slow.set_delay("/v0/item/1000.json", 60)
        proc = start_cli(["run"], {**env, "ALERTS_HN_API_URL": slow.url, "ALERTS_FETCH_TIMEOUT": "120"}, tmp_path)
        try:
            wait_for(lambda: slow.requests["/v0/item/1000.json"] > 0, what="the walk to start")
        finally:
            code, err = stop(proc)
    assert code == 0, err
    assert DESTROYED not in err and "Traceback" not in err


def test_service_cycles_repeat_and_survive_a_failed_cycle(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """With the story list failing for a cycle, the failure is logged and later cycles run."""
    hn.add_story(1, trees.wide(1_000, 120), title="Later")
    hn.set_list("topstories", [1])
    hn.fail("/v0/topstories.json", times=3, status=500)
    proc = start_cli(["run"], {**env, "ALERTS_POLL_INTERVAL": "0.2", "ALERTS_FETCH_ATTEMPTS": "3"}, tmp_path)
    try:
        wait_for(lambda: (tmp_path / "outbox" / "1-tier-100.eml").exists(), what="the alert after the failure")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "cycle 1 failed: " in err and "no story list could be read; the service goes on" in err
    assert "Traceback" not in err
    assert "cycle 2: 1 stories, 1 alerts" in err


def test_incomplete_walk_is_logged_and_walked_again(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """A walk that could not fetch an item is logged, alerts only on what it counted, and is redone."""
    tree = trees.wide(1_000, 120)
    hn.add_story(1, tree, title="Flaky")
    hn.set_list("topstories", [1])
    hn.fail("/v0/item/1005.json", times=3, status=503)
    first = run_cli(["run", "--once"], {**env, "ALERTS_COMMENT_THRESHOLD": "100,120"}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "walk incomplete, 1 item(s) not fetched; 119 comments counted so far" in first.stderr
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["1-tier-100.eml"]
    hn.reset_stats()
    second = run_cli(["run", "--once"], {**env, "ALERTS_COMMENT_THRESHOLD": "100,120"}, tmp_path)
    assert second.returncode == 0, second.stderr
    assert hn.item_requests == 121
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["1-tier-100.eml", "1-tier-120.eml"]


def test_second_service_on_the_same_db_is_refused(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """While one service holds the state DB, another exits 1 with a line saying so."""
    hn.set_list("topstories", [])
    proc = start_cli(["run"], env, tmp_path)
    try:
        wait_for(lambda: hn.requests["/v0/topstories.json"] > 0, what="the first service to poll")
        second = run_cli(["run", "--once"], env, tmp_path)
    finally:
        code, err = stop(proc)
    assert second.returncode == 1
    assert "in use by another hn-alerts process" in second.stderr
    assert code == 0, err


def test_story_list_failure_skips_only_that_list(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """One list failing is logged; the stories of the other lists are still checked."""
    hn.add_story(1, trees.wide(1_000, 120), title="Asked")
    hn.set_list("askstories", [1])
    hn.fail("/v0/topstories.json", times=3, status=502)
    result = run_cli(["run", "--once"], {**env, "ALERTS_STORY_LISTS": "topstories,askstories"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "list topstories not read" in result.stderr
    assert (tmp_path / "outbox" / "1-tier-100.eml").exists()


def test_once_with_the_api_down_still_delivers_the_outbox(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """--once with every list failing delivers what waited in the outbox, then exits 1 naming the failure."""
    hn.add_story(1, trees.wide(1_000, 120), title="Waiting")
    hn.set_list("topstories", [1])
    dead_port = free_port()
    assert run_cli(["run", "--once"], with_smtp(env, SmtpServer(port=dead_port)), tmp_path).returncode == 1
    assert statuses(tmp_path) == {1: "pending"}
    hn.fail("/v0/topstories.json", times=100, status=503)
    result = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path)
    assert result.returncode == 1
    assert "no story list could be read" in result.stderr and "Traceback" not in result.stderr
    assert smtp.subjects() == ["[HN] Waiting — 120 comments"]
    assert statuses(tmp_path) == {1: "sent"}


def test_a_recipient_refusing_for_good_counts_its_alert_once(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """The only recipient answers 550 at RCPT: the alert is failed, and --once counts it once."""
    two_busy_stories(hn)
    hn.set_list("topstories", [1])
    smtp.handler.rcpt_replies = {"me@example.org": "550 5.1.1 no such user"}
    result = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path)
    assert result.returncode == 1
    assert "1 alert(s) not delivered" in result.stderr, result.stderr
    assert statuses(tmp_path) == {1: "failed"}
