"""The promises under faults: no lost and no doubled alerts, as processes against real servers."""

from __future__ import annotations

import collections
import email
import email.policy
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from tests import trees
from tests.conftest import run_cli, start_cli, wait_for, with_smtp
from tests.fakehn import FakeHN
from tests.smtpserver import SmtpServer, free_port

DESTROYED = "Task was destroyed but it is pending"


def rows(tmp_path: Path) -> dict[int, tuple[str, str | None]]:
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT story_id, status, last_error FROM alerts")}


def many_stories(hn: FakeHN, n: int) -> list[int]:
    ids = list(range(1, n + 1))
    for i in ids:
        hn.add_story(i, trees.wide(i * 1_000, 100 + i), title=f"Story {i}")
    hn.set_list("topstories", ids)
    return ids


def message_ids(smtp: SmtpServer) -> collections.Counter[str]:
    return collections.Counter(str(r.message["Message-ID"]) for r in smtp.received)


def test_smtp_down_then_up_delivers_each_alert_once_in_a_later_cycle(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """A running service whose SMTP server is down delivers every alert exactly once after it comes up."""
    many_stories(hn, 3)
    port = free_port()
    cfg = with_smtp(env, SmtpServer(port=port), ALERTS_POLL_INTERVAL="0.3", ALERTS_SEND_ATTEMPTS="1")
    proc = start_cli(["run"], cfg, tmp_path)
    server = SmtpServer(port=port)
    try:
        wait_for(lambda: _attempted(tmp_path) == 3, what="failed sends")
        server.start()
        wait_for(lambda: len(server.received) >= 3, what="delivery after the outage")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 0, err
    assert sorted(server.subjects()) == [f"[HN] Story {i} — {100 + i} comments" for i in (1, 2, 3)]
    assert {s for s, _ in rows(tmp_path).values()} == {"sent"}


def _attempted(tmp_path: Path) -> int:
    """Alerts with at least one failed attempt; 0 while the service is still creating its DB."""
    try:
        with sqlite3.connect(tmp_path / "state.sqlite3") as db:
            return int(db.execute("SELECT COUNT(*) FROM alerts WHERE attempts > 0").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_554_for_one_recipient_is_recorded_and_not_retried(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """One recipient refused with 554: the others get the mail once, the refusal is logged, recorded, exit 1 once."""
    many_stories(hn, 1)
    smtp.handler.rcpt_replies = {"boss@example.org": "554 5.7.1 not allowed"}
    cfg = with_smtp(env, smtp, ALERTS_EMAIL_TO="me@example.org,boss@example.org")
    first = run_cli(["run", "--once"], cfg, tmp_path)
    assert first.returncode == 1, first.stderr  # a recipient refused it for good: not every due alert delivered
    assert "boss@example.org refused: 554 5.7.1 not allowed" in first.stderr
    assert rows(tmp_path) == {1: ("sent", "boss@example.org refused: 554 5.7.1 not allowed")}
    assert run_cli(["run", "--once"], cfg, tmp_path).returncode == 0
    assert [r.rcpt_tos for r in smtp.received] == [["me@example.org"]]


def test_sigkill_mid_cycle_loses_nothing_and_only_in_flight_mails_repeat(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL while sends are in flight: after a restart every alert arrives; repeats share a Message-ID."""
    many_stories(hn, 10)
    smtp.handler.data_delay = 0.3
    cfg = with_smtp(env, smtp)
    proc = start_cli(["run"], cfg, tmp_path)
    try:
        wait_for(lambda: len(smtp.received) >= 2, what="the first mails")
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    before = len(smtp.received)
    smtp.handler.data_delay = 0
    again = run_cli(["run", "--once"], cfg, tmp_path)
    assert again.returncode == 0, again.stderr
    ids = message_ids(smtp)
    assert set(ids) == {f"<hn-alerts.{i}.tier.100@example.org>" for i in range(1, 11)}
    repeated = sum(n - 1 for n in ids.values())
    assert repeated <= 4  # at most the sends in flight (4 in parallel) when the process died
    assert len(smtp.received) == 10 + repeated and before < 10
    assert {s for s, _ in rows(tmp_path).values()} == {"sent"}


def test_crash_between_acceptance_and_marking_sent_repeats_with_the_same_message_id(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """The one duplicate window, on purpose: the server has the mail, the client dies before its 250."""
    many_stories(hn, 1)
    smtp.handler.hold_reply = threading.Event()
    cfg = with_smtp(env, smtp)
    proc = start_cli(["run"], cfg, tmp_path)
    try:
        wait_for(lambda: len(smtp.received) == 1, what="the server to accept the mail")
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        smtp.handler.hold_reply.set()
    assert rows(tmp_path) == {1: ("pending", None)}
    smtp.handler.hold_reply = None
    again = run_cli(["run", "--once"], cfg, tmp_path)
    assert again.returncode == 0, again.stderr
    assert message_ids(smtp) == {"<hn-alerts.1.tier.100@example.org>": 2}
    assert run_cli(["run", "--once"], cfg, tmp_path).returncode == 0
    assert len(smtp.received) == 2


def test_hostile_titles_cannot_add_headers_or_recipients(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """CR/LF + Bcc:, <script>, a 10 kB title and RTL/emoji text: headers intact, recipients exact."""
    titles = {
        1: "Hi\r\nBcc: victim@evil.example\r\nX-Evil: 1\r\n\r\n<script>alert(1)</script>",
        2: "A" * 10_000,
        3: "مرحبا بالعالم 🚀 — Ünïcödé",
    }
    for story_id, title in titles.items():
        hn.add_story(story_id, trees.wide(story_id * 1_000, 120), title=title, by="evil\nBcc: x@evil.example")
    hn.set_list("topstories", list(titles))
    result = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(smtp.received) == 3
    for mail in smtp.received:
        msg = mail.message
        assert mail.rcpt_tos == ["me@example.org"]
        assert msg["Bcc"] is None and msg["X-Evil"] is None
        assert msg.get_all("To") == ["me@example.org"]
        html = msg.get_body(("html",))
        assert html is not None and "<script>" not in html.get_content()
    subjects = smtp.subjects()
    assert any("Bcc: victim@evil.example X-Evil: 1 <script>" in s for s in subjects)
    assert any("مرحبا بالعالم 🚀 — Ünïcödé" in s for s in subjects)
    assert any(s.startswith("[HN] AAAA") and len(s) <= 250 for s in subjects)


def test_hostile_api_never_stops_the_service_nor_causes_a_wrong_alert(env: dict[str, str], tmp_path: Path) -> None:
    """Random 502s, resets, truncation, malformed and null items, a cycle, an oversized tree: right alerts only."""
    with FakeHN() as hn:
        exact = trees.with_cycle(trees.with_nulls(trees.generated(1_000, live=150, dead=9, deleted=7, seed=1), 5))
        hn.add_story(1, exact, title="Exact")  # 150 live: tier 100
        below = trees.generated(5_000, live=95, dead=20, deleted=20, seed=2)
        hn.add_story(2, below, title="Below")  # 95 live, 135 items in all: never an alert
        hn.add_story(3, trees.wide(9_000, 400), title="Huge")  # capped at 300 items: tier 250 from what it counted
        hn.malformed(5_010)
        hn.set_list("topstories", [1, 2, 3])
        hn.fail_rate = 0.10
        for path in ("/v0/item/1000.json", "/v0/item/5001.json", "/v0/topstories.json"):
            hn.reset_connection(path, 1)
            hn.truncate(path, 1)
        cfg = {
            **env,
            "ALERTS_HN_API_URL": hn.url,
            "ALERTS_POLL_INTERVAL": "0.2",
            "ALERTS_FETCH_ATTEMPTS": "6",
            "ALERTS_COMMENT_THRESHOLD": "100,250",
            "ALERTS_MAX_COMMENTS": "300",
        }
        proc = start_cli(["run"], cfg, tmp_path)
        try:
            wait_for(lambda: hn.requests["/v0/topstories.json"] >= 12, what="several cycles")
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["1-tier-100.eml", "3-tier-250.eml"]
    assert "150 comments" in (tmp_path / "outbox" / "1-tier-100.eml").read_text()
    assert "item 5010 counts nothing: malformed JSON" in err
    assert "stopped at ALERTS_MAX_COMMENTS=300" in err
    assert "Traceback" not in err and DESTROYED not in err


@pytest.mark.parametrize(
    "answers",
    [
        [(503, {}), (429, {"Retry-After": "0"})],
        [(429, {"Retry-After": "0"}), (500, {})],
        [(500, {}), (503, {"Retry-After": "0"})],
    ],
    ids=["503-then-429", "429-then-500", "500-then-503"],
)
def test_every_request_failing_twice_still_counts_exactly(
    hn: FakeHN, env: dict[str, str], tmp_path: Path, answers: list[tuple[int, dict[str, str]]]
) -> None:
    """Lists and items all fail twice before they answer: exact counts, the right alerts, exit 0."""
    tree = trees.generated(1_000, live=150, dead=6, deleted=4, depth=7, seed=3)
    hn.add_story(1, tree, title="Persistent")
    hn.add_story(2, trees.generated(5_000, live=99, dead=3, seed=4), title="Just under")
    hn.set_list("topstories", [1, 2])
    hn.fail_all_sequence(answers)
    result = run_cli(["run", "--once"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["1-tier-100.eml"]
    assert "150 comments" in (tmp_path / "outbox" / "1-tier-100.eml").read_text()
    assert hn.requests["/v0/item/1.json"] == 3 and hn.requests["/v0/topstories.json"] == 3
    assert "incomplete" not in result.stderr


def test_state_db_in_an_unusable_folder_is_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    """A state DB whose folder cannot be created: one line naming ALERTS_STATE_DB, exit 1, nothing sent."""
    result = run_cli(["run", "--once"], {**env, "ALERTS_STATE_DB": "/proc/hn-alerts/state.sqlite3"}, tmp_path)
    assert result.returncode == 1
    assert "ALERTS_STATE_DB: cannot create folder /proc/hn-alerts" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outbox").exists()


def test_state_db_locked_by_another_process_loses_nothing(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """While another process holds a write lock on the DB, --once fails cleanly; afterwards the alert goes out once."""
    many_stories(hn, 1)
    db_path = tmp_path / "state.sqlite3"
    assert run_cli(["run", "--once"], {**env, "ALERTS_COMMENT_THRESHOLD": "500"}, tmp_path).returncode == 0
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        locked = run_cli(["run", "--once"], env, tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert locked.returncode == 1
    assert "database is locked" in locked.stderr and "Traceback" not in locked.stderr
    assert not (tmp_path / "outbox").exists()
    after = run_cli(["run", "--once"], env, tmp_path)
    assert after.returncode == 0, after.stderr
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["1-tier-100.eml"]


def test_huge_ids_and_deep_json_never_stop_a_cycle(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """Ids and counts past 2^63, JSON nested 100,000 deep and a lone surrogate: the other stories still alert."""
    hn.add_story(1, trees.wide(1_000, 120), title="Fine \ud800 with a lone surrogate")
    hn.add_story(2, trees.wide(2_000, 130), title="Huge count", descendants=2**64)
    hn.add_story(3, trees.wide(3_000, 140), title="Deep kid")
    with hn.lock:  # a comment whose kid id is past 2^63: that comment is malformed, counts nothing
        hn.items[3001] = {**hn.items[3001], "kids": [2**70]}  # type: ignore[dict-item]
    hn.set_list("topstories", [1, 2, 3])
    hn.set_list("showstories", [1, 2**64])  # an id past 2^53 makes a list malformed: it is skipped
    hn.answer("/v0/askstories.json", b"[" * 100_000 + b"]" * 100_000, times=100)
    hn.answer("/v0/item/3000.json", b'{"id": 3000, "kids": ' + b"[" * 200 + b"]" * 200 + b"}", times=100)
    cfg = {**env, "ALERTS_STORY_LISTS": "topstories,askstories,showstories", "ALERTS_DIGEST": "true"}
    result = run_cli(["run", "--once"], cfg, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert "list askstories not read" in result.stderr and "list showstories not read" in result.stderr
    [digest] = list((tmp_path / "outbox").iterdir())
    message = email.message_from_bytes(digest.read_bytes(), policy=email.policy.default)
    assert sorted(message["X-HN-Alerts-Story"].split(",")) == ["1", "3"]  # story 2's huge count: malformed
    assert "138 comments" in str(message)  # story 3: 140 less the deep one and the one with a huge kid
    body = message.get_body(("plain",))
    assert body is not None and "Fine \ufffd with a lone surrogate" in body.get_content()
