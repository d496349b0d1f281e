"""The whole service as a process: `alerts run --once` against the fake API and a real SMTP server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests import trees
from tests.conftest import run_cli, with_smtp
from tests.fakehn import FakeHN
from tests.smtpserver import SmtpServer


def stories_around_threshold(hn: FakeHN) -> None:
    """Four stories: 99, 100, 101 and 260 live comments (dead/deleted mixed in); tiers 100,250."""
    hn.add_story(1, trees.generated(1_000, live=99, dead=5, deleted=4, depth=6, seed=1), title="Just below")
    hn.add_story(2, trees.generated(2_000, live=100, dead=3, deleted=2, depth=7, seed=2), title="Exactly 100")
    hn.add_story(3, trees.generated(3_000, live=101, depth=5, seed=3), title="Just above")
    hn.add_story(4, trees.generated(4_000, live=260, dead=10, deleted=10, depth=9, seed=4), title="Way above")
    hn.set_list("topstories", [1, 2, 3, 4])


def test_once_sends_exactly_the_due_alerts_then_none(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """--once mails each story past a tier once, with its exact count; a second run mails nothing."""
    stories_around_threshold(hn)
    cfg = with_smtp(env, smtp, ALERTS_COMMENT_THRESHOLD="100,250")
    first = run_cli(["run", "--once"], cfg, tmp_path)
    assert first.returncode == 0, first.stderr
    got = sorted(smtp.subjects())
    assert got == [
        "[HN] Exactly 100 — 100 comments",
        "[HN] Just above — 101 comments",
        "[HN] Way above — 260 comments",
    ]
    assert "cycle 1: 4 stories, 3 alerts" in first.stderr
    second = run_cli(["run", "--once"], cfg, tmp_path)
    assert second.returncode == 0, second.stderr
    assert len(smtp.received) == 3
    assert "cycle 1: 4 stories, 0 alerts" in second.stderr


def test_unchanged_story_is_not_walked_again(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """A second run with nothing changed fetches each story item once and no comment."""
    stories_around_threshold(hn)
    assert run_cli(["run", "--once"], env, tmp_path).returncode == 0
    hn.reset_stats()
    assert run_cli(["run", "--once"], env, tmp_path).returncode == 0
    assert hn.item_requests == 4


def test_without_smtp_mails_become_eml_files(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """With no SMTP host, each alert is written as one .eml file in ALERTS_OUTBOX_DIR."""
    stories_around_threshold(hn)
    result = run_cli(["run", "--once"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == ["2-tier-100.eml", "3-tier-100.eml", "4-tier-100.eml"]
    text = (tmp_path / "outbox" / "4-tier-100.eml").read_text()
    assert "To: you@localhost" in text
    assert "260 comments" in text
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM alerts WHERE status = 'sent'").fetchone() == (3,)


def test_a_cycle_costs_one_request_per_story_far_from_its_next_tier(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """Growing stories far below their next tier, or past every tier, are not walked: one request each per cycle."""
    hn.add_story(1, trees.wide(1_000, 40), title="Far below")
    hn.add_story(2, trees.wide(2_000, 95), title="Near")
    hn.add_story(3, trees.wide(3_000, 150), title="Past its only tier")
    hn.add_story(4, trees.wide(4_000, 120), title="A job", descendants=120)
    with hn.lock:
        hn.items[4] = {**hn.items[4], "type": "job"}  # type: ignore[dict-item]
    hn.set_list("topstories", [1, 2, 3, 4])
    first = run_cli(["run", "--once"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["3-tier-100.eml"]  # a job never alerts
    for story_id in (1, 2, 3):  # every story grows by one comment
        with hn.lock:
            story = hn.items[story_id]
            assert story is not None
            hn.items[story_id] = {**story, "descendants": story["descendants"] + 1}
    hn.reset_stats()
    second = run_cli(["run", "--once"], env, tmp_path)
    assert second.returncode == 0, second.stderr
    item_requests = {p: n for p, n in hn.requests.items() if p.startswith("/v0/item/")}
    assert item_requests == {f"/v0/item/{i}.json": 1 for i in (1, 2, 3, 4)} | {
        f"/v0/item/{i}.json": 1 for i in range(2_000, 2_095)
    }  # only story 2, within 10% of its tier, is walked again
