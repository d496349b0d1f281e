"""Rules beyond one threshold: velocity, filters, baseline, digest, quiet hours (clock injected)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from alerts.app import make_rules
from alerts.config import load_settings
from alerts.errors import ConfigError
from alerts.model import Alert, Story
from alerts.rules import Rules, in_quiet_hours, velocity_gain
from tests import trees
from tests.conftest import run_cli, with_smtp
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.smtpserver import SmtpServer

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    """A wall clock that moves only when a test says so."""

    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


def grow(hn: FakeHN, story_id: int, start: int, n: int) -> None:
    """Add ``n`` live top-level comments (ids from ``start``) to a story."""
    with hn.lock:
        story = hn.items[story_id]
        assert story is not None
        kids = list(story.get("kids", []))
        for cid in range(start, start + n):
            hn.items[cid] = {"id": cid, "type": "comment", "by": "x", "parent": story_id, "time": 1}
            kids.append(cid)
        hn.items[story_id] = {**story, "kids": kids, "descendants": int(story.get("descendants", 0)) + n}


async def cycle(app: Any) -> Any:
    report = await app.service.run_cycle()
    await app.registry.join()
    return report


async def test_velocity_over_a_window_and_across_a_restart(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """30 comments within 20 minutes sends one "heating up" mail, measured from stored counts after a restart."""
    hn.add_story(1, trees.wide(1_000, 50), title="Warming")
    hn.set_list("topstories", [1])
    cfg = with_smtp(env, smtp, ALERTS_VELOCITY="30/20", ALERTS_COMMENT_THRESHOLD="1000")
    clock = Clock(datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
    first = await app_factory(cfg, clock=clock)
    await cycle(first)  # 50 comments at 12:00
    clock.advance(10)
    grow(hn, 1, 5_000, 20)
    await cycle(first)  # 70 at 12:10: +20, not yet
    assert smtp.received == []
    await first.store.close()  # the service stops; a new one starts on the same DB
    clock.advance(10)
    grow(hn, 1, 6_000, 25)
    second = await app_factory(cfg, clock=clock)
    await cycle(second)  # 95 at 12:20: +45 within 20 minutes
    assert smtp.subjects() == ["[HN] Heating up: Warming — +45 comments in 20 min"]
    body = smtp.received[0].message.get_body(("plain",))
    assert body is not None and "45 comments arrived in the last 20 minutes (95 in all)" in body.get_content()
    clock.advance(10)
    grow(hn, 1, 7_000, 40)
    await cycle(second)  # heating up again: still one mail per story
    assert len(smtp.received) == 1


def test_velocity_gain_reads_the_window_from_history() -> None:
    """The gain counts from the last sample at the window start, else the oldest inside; never from long before."""
    samples = [(0.0, 10), (600.0, 20), (1200.0, 35)]
    assert velocity_gain(samples, 1800.0, 50, 20, gap=120) == (30, 20.0)  # from the sample at 600 s
    assert velocity_gain(samples, 1800.0, 50, 60, gap=120) == (40, 30.0)  # history younger than the window
    assert velocity_gain(samples, 1830.0, 50, 20, gap=120) == (30, 20.5)  # a little before the start: fine
    assert velocity_gain([(0.0, 10)], 10_800.0, 40, 20, gap=120) == (0, 0.0)  # three hours ago: not a gain
    assert velocity_gain([], 1800.0, 50, 20, gap=120) == (0, 0.0)


# now = 3600 s, a 20-minute window: start = 2400 s; gap 120 s: a sample at 2280..2400 s stands for the start.
NOW, START, GAP = 3600.0, 2400.0, 120.0
VELOCITY_EDGES = [
    ("no samples", [], (0, 0.0)),
    ("exactly at start", [(START, 10)], (40, 20.0)),
    ("at start wins over an older one", [(START - 100, 5), (START, 10)], (40, 20.0)),
    ("just before start", [(START - 1, 10)], (40, (NOW - START + 1) / 60)),
    ("latest before start wins", [(START - 100, 5), (START - 50, 8), (START + 100, 20)], (42, (NOW - START + 50) / 60)),
    ("exactly at start - gap", [(START - GAP, 10)], (40, (NOW - START + GAP) / 60)),
    ("just outside start - gap", [(START - GAP - 1, 10)], (0, 0.0)),
    ("outside start - gap, then inside", [(START - GAP - 1, 10), (START + 100, 20)], (30, (NOW - START - 100) / 60)),
    ("just inside the window", [(START + 1, 10)], (40, (NOW - START - 1) / 60)),
    ("oldest inside wins", [(START + 100, 20), (START + 600, 30)], (30, (NOW - START - 100) / 60)),
    ("exactly at now", [(NOW, 45)], (5, 0.0)),
    ("after now", [(NOW + 60, 60)], (0, 0.0)),
    ("after now, with one inside", [(START + 600, 30), (NOW + 60, 60)], (20, (NOW - START - 600) / 60)),
]


@pytest.mark.parametrize(("samples", "expected"), [c[1:] for c in VELOCITY_EDGES], ids=[c[0] for c in VELOCITY_EDGES])
def test_velocity_gain_window_edges(samples: list[tuple[float, int]], expected: tuple[int, float]) -> None:
    """The window is (start, now]; a sample in [start - gap, start] stands for its start, the latest such first."""
    assert velocity_gain(samples, NOW, 50, 20, gap=GAP) == expected


async def test_velocity_ignores_gains_from_before_a_long_stop(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """+30 comments over three hours while the service was stopped is not "heating up" within 20 minutes."""
    hn.add_story(1, trees.wide(1_000, 50), title="Slow")
    hn.set_list("topstories", [1])
    cfg = with_smtp(env, smtp, ALERTS_VELOCITY="30/20", ALERTS_COMMENT_THRESHOLD="1000", ALERTS_POLL_INTERVAL="60")
    clock = Clock(datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
    first = await app_factory(cfg, clock=clock)
    await cycle(first)
    await first.store.close()
    clock.advance(180)
    grow(hn, 1, 5_000, 30)
    second = await app_factory(cfg, clock=clock)
    await cycle(second)
    assert smtp.received == []


async def test_an_incomplete_walk_is_not_a_velocity_sample(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """A walk that missed items does not record its partial count, so the next full count is no fake jump."""
    hn.add_story(1, trees.wide(1_000, 60), title="Flaky")
    hn.set_list("topstories", [1])
    for cid in range(1_000, 1_040):
        hn.fail(f"/v0/item/{cid}.json", times=3, status=503)
    cfg = with_smtp(env, smtp, ALERTS_VELOCITY="30/20", ALERTS_COMMENT_THRESHOLD="1000")
    clock = Clock(datetime(2026, 5, 4, 12, 0, tzinfo=UTC))
    app = await app_factory(cfg, clock=clock)
    await cycle(app)  # 20 of 60 counted, incomplete
    clock.advance(10)
    grow(hn, 1, 5_000, 2)
    await cycle(app)  # 62: the first real sample
    clock.advance(10)
    await cycle(app)
    assert smtp.received == []


async def test_include_and_exclude_patterns_and_min_score(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """Only titles matching INCLUDE and not EXCLUDE, with enough score, alert; the others are not walked."""
    hn.add_story(1, trees.wide(1_000, 120), title="Rust 2.0 released", score=300)
    hn.add_story(2, trees.wide(2_000, 120), title="Show HN: my Rust crate", score=300)
    hn.add_story(3, trees.wide(3_000, 120), title="Python news", score=300)
    hn.add_story(4, trees.wide(4_000, 120), title="RUST in the kernel", score=5)
    hn.set_list("topstories", [1, 2, 3, 4])
    cfg = with_smtp(env, smtp, ALERTS_TITLE_INCLUDE=r"\brust\b", ALERTS_TITLE_EXCLUDE="^show hn", ALERTS_MIN_SCORE="10")
    app = await app_factory(cfg)
    report = await cycle(app)
    assert smtp.subjects() == ["[HN] Rust 2.0 released — 120 comments"]
    assert (report.filtered, report.fetches_saved) == (3, 360)
    assert hn.item_requests == 4 + 120  # four story items, and only story 1's comments


def story(story_id: int = 1, title: str = "T", score: int = 100, comments: int = 120) -> Story:
    return Story(story_id, title, "author", score, "https://example.com/", comments)


def test_min_score_is_inclusive() -> None:
    """ALERTS_MIN_SCORE=MIN: a story scoring exactly MIN may alert, MIN - 1 may not (and says why)."""
    rules = Rules(tiers=(100,), min_score=10)
    assert rules.filtered_out(story(score=10)) is None
    assert rules.filtered_out(story(score=11)) is None
    assert rules.filtered_out(story(score=9)) == "score 9 < ALERTS_MIN_SCORE=10"
    assert Rules(tiers=(100,)).filtered_out(story(score=0)) is None  # the default 0 lets every story through


async def test_min_score_boundary_end_to_end(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """Through the API: with ALERTS_MIN_SCORE=10, the story scoring 10 alerts and the one scoring 9 is not walked."""
    hn.add_story(1, trees.wide(1_000, 120), title="Exactly enough", score=10)
    hn.add_story(2, trees.wide(2_000, 120), title="One short", score=9)
    hn.set_list("topstories", [1, 2])
    app = await app_factory(with_smtp(env, smtp, ALERTS_MIN_SCORE="10"))
    report = await cycle(app)
    assert smtp.subjects() == ["[HN] Exactly enough — 120 comments"]
    assert (report.alerts, report.filtered) == (1, 1)
    assert hn.item_requests == 2 + 120  # two story items, and only story 1's comments


async def test_baseline_on_a_fresh_db_sends_nothing_then_only_new_tiers(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """With ALERTS_BASELINE the first cycle records stories already past tiers; later ones mail new tiers only."""
    caplog.set_level(logging.INFO)
    hn.add_story(1, trees.wide(1_000, 120), title="Old news")
    hn.add_story(2, trees.wide(2_000, 260), title="Older news")
    hn.add_story(3, trees.wide(3_000, 10), title="Quiet one")
    hn.set_list("topstories", [1, 2, 3])
    app = await app_factory(with_smtp(env, smtp, ALERTS_BASELINE="true", ALERTS_COMMENT_THRESHOLD="100,250"))
    await cycle(app)
    assert smtp.received == []
    assert "baseline: 2 stories recorded, no mail" in caplog.text
    grow(hn, 1, 5_000, 140)  # 260: past 250
    grow(hn, 3, 6_000, 100)  # 110: past 100
    await cycle(app)
    assert sorted(smtp.subjects()) == ["[HN] Old news — 260 comments", "[HN] Quiet one — 110 comments"]


async def test_baseline_does_nothing_on_a_db_that_has_history(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """A state DB with records is not empty: ALERTS_BASELINE=true then changes nothing."""
    hn.add_story(1, trees.wide(1_000, 10), title="First")
    hn.set_list("topstories", [1])
    first = await app_factory(with_smtp(env, smtp))
    await cycle(first)
    await first.store.close()
    hn.add_story(2, trees.wide(2_000, 120), title="Second")
    hn.set_list("topstories", [1, 2])
    second = await app_factory(with_smtp(env, smtp, ALERTS_BASELINE="true"))
    await cycle(second)
    assert smtp.subjects() == ["[HN] Second — 120 comments"]


async def test_digest_sends_three_alerts_in_one_mail(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """ALERTS_DIGEST: three due alerts go out as one mail listing all; each is recorded as sent."""
    for n in (1, 2, 3):
        hn.add_story(n, trees.wide(n * 1_000, 100 + n), title=f"Thread <{n}>")
    hn.set_list("topstories", [1, 2, 3])
    app = await app_factory(with_smtp(env, smtp, ALERTS_DIGEST="true"))
    await cycle(app)
    [mail] = smtp.received
    assert mail.message["Subject"] == "[HN] 3 busy threads"
    text = mail.message.get_body(("plain",))
    html = mail.message.get_body(("html",))
    assert text is not None and html is not None
    for n in (1, 2, 3):
        assert f"Thread <{n}>" in text.get_content() and f"{100 + n} comments" in text.get_content()
        assert f"Thread &lt;{n}&gt;" in html.get_content()
    assert (await app.store.counts())["sent"] == 3
    await cycle(app)
    assert len(smtp.received) == 1


async def test_digest_not_accepted_keeps_each_alert_pending(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """A digest refused with 451 leaves all its alerts pending; the next cycle's digest carries them once."""
    for n in (1, 2):
        hn.add_story(n, trees.wide(n * 1_000, 120), title=f"T{n}")
    hn.set_list("topstories", [1, 2])
    smtp.handler.data_replies = ["451 4.3.0 later"]
    app = await app_factory(with_smtp(env, smtp, ALERTS_DIGEST="true", ALERTS_SEND_ATTEMPTS="1"))
    await cycle(app)
    assert smtp.received == [] and len(await app.store.pending()) == 2
    await cycle(app)
    assert smtp.subjects() == ["[HN] 2 busy threads"]
    assert await app.store.pending() == []


async def test_quiet_hours_wrap_midnight_and_end_in_one_digest_after_a_restart(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """23:00-07:00 Berlin: alerts due at 23:30 and 02:00 wait, and go out as one digest after 07:00."""
    hn.add_story(1, trees.wide(1_000, 120), title="Late")
    hn.set_list("topstories", [1])
    cfg = with_smtp(env, smtp, ALERTS_QUIET_HOURS="23:00-07:00", ALERTS_TIMEZONE="Europe/Berlin")
    clock = Clock(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    night = await app_factory(cfg, clock=clock)
    report = await cycle(night)
    assert report.alerts == 1 and smtp.received == []
    clock.set(datetime(2026, 6, 11, 2, 0, tzinfo=BERLIN))
    hn.add_story(2, trees.wide(2_000, 130), title="Later")
    hn.set_list("topstories", [1, 2])
    await cycle(night)
    assert smtp.received == []
    await night.store.close()
    clock.set(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))
    morning = await app_factory(cfg, clock=clock)
    await cycle(morning)
    [mail] = smtp.received
    assert mail.message["Subject"] == "[HN] 2 busy threads (held during quiet hours)"
    assert (await morning.store.counts())["sent"] == 2


def digests(env: dict[str, str]) -> list[tuple[int, str]]:
    """Each stored digest, oldest first: (how many members, status)."""
    with sqlite3.connect(env["ALERTS_STATE_DB"]) as conn:
        rows = conn.execute(
            "SELECT (SELECT COUNT(*) FROM alerts WHERE alerts.digest = digests.id), status"
            " FROM digests ORDER BY created_at, rowid"
        ).fetchall()
    conn.close()
    return [(n, status) for n, status in rows]


def tier_alert(story_id: int) -> Alert:
    return Alert(story(story_id, title=f"S{story_id}"), 100, 120)


def held_flags(env: dict[str, str]) -> dict[int, tuple[int, int | None]]:
    """Each alert's held flag and its digest's held flag (None: no digest)."""
    with sqlite3.connect(env["ALERTS_STATE_DB"]) as conn:
        rows = conn.execute(
            "SELECT a.story_id, a.held, d.held FROM alerts a LEFT JOIN digests d ON d.id = a.digest"
        ).fetchall()
    conn.close()
    return {story_id: (held, digest_held) for story_id, held, digest_held in rows}


QUIET_BERLIN = {"ALERTS_QUIET_HOURS": "23:00-07:00", "ALERTS_TIMEZONE": "Europe/Berlin", "ALERTS_SEND_ATTEMPTS": "1"}


async def test_digest_mode_once_sends_leftovers_and_new_alerts(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """With a digest of leftovers still sending when the cycle ends, this cycle's alerts follow in a second digest."""
    hn.add_story(1, trees.wide(1_000, 120), title="Leftover")
    hn.set_list("topstories", [1])
    cfg = with_smtp(env, smtp, ALERTS_DIGEST="true")
    smtp.handler.data_replies = ["451 4.3.0 later"]
    first = await app_factory({**cfg, "ALERTS_SEND_ATTEMPTS": "1"})
    await cycle(first)
    await first.store.close()
    assert smtp.received == [] and digests(env) == [(1, "pending")]
    hn.add_story(2, trees.wide(2_000, 130), title="Fresh")
    hn.set_list("topstories", [1, 2])
    smtp.handler.data_started.clear()
    smtp.handler.hold_reply = release = threading.Event()  # the server keeps each mail but holds its 250
    second = await app_factory(cfg)
    once = asyncio.create_task(second.service.run_once())
    try:
        # The leftover digest reaches DATA and stays there until the cycle has spawned its own digest.
        await asyncio.wait_for(asyncio.to_thread(smtp.handler.data_started.wait, 10), 10)
        async with asyncio.timeout(10):
            while len(second.registry) < 2 and not once.done():
                await asyncio.wait({once}, timeout=0.005)
        assert not once.done(), "run_once ended while the leftover digest was still sending"
        assert digests(env) == [(1, "pending"), (1, "pending")]
    finally:
        release.set()
        delivered = await asyncio.wait_for(once, 10)
    assert delivered is True
    assert smtp.subjects() == ["[HN] 1 busy thread", "[HN] 1 busy thread"]
    assert sorted(str(m.message["X-HN-Alerts-Story"]) for m in smtp.received) == ["1", "2"]
    assert digests(env) == [(1, "sent"), (1, "sent")]
    assert await second.store.pending() == []
    assert (await second.store.counts())["sent"] == 2


@pytest.mark.parametrize("digest_mode", ["false", "true"])
async def test_a_digest_of_held_alerts_is_labelled_held(
    digest_mode: str, env: dict[str, str], app_factory: Any
) -> None:
    """Alerts held by quiet hours leave in one digest whose subject ends "(held during quiet hours)"."""
    clock = Clock(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    sender = RecordingSender()
    app = await app_factory({**env, **QUIET_BERLIN, "ALERTS_DIGEST": digest_mode}, sender=sender, clock=clock)
    assert await app.outbox.queue(tier_alert(1)) == "held"
    clock.set(datetime(2026, 6, 11, 6, 59, 59, tzinfo=BERLIN))
    assert await app.outbox.queue(tier_alert(2)) == "held"
    assert await app.outbox.dispatch() == 0
    clock.set(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))
    assert await app.outbox.dispatch() == 1
    await app.registry.join()
    assert sender.mails() == [("[HN] 2 busy threads (held during quiet hours)", "1,2")]
    assert held_flags(env) == {1: (1, 1), 2: (1, 1)}


async def test_a_digest_of_fresh_alerts_is_not_labelled_held(env: dict[str, str], app_factory: Any) -> None:
    """ALERTS_DIGEST outside quiet hours: the digest of the cycle's alerts carries no "held" label."""
    clock = Clock(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))
    sender = RecordingSender()
    app = await app_factory({**env, **QUIET_BERLIN, "ALERTS_DIGEST": "true"}, sender=sender, clock=clock)
    assert await app.outbox.queue(tier_alert(1)) == "queued"
    assert await app.outbox.queue(tier_alert(2)) == "queued"
    assert sender.messages == []  # digest mode: queued alerts wait for the dispatch
    assert await app.outbox.dispatch() == 1
    await app.registry.join()
    assert sender.mails() == [("[HN] 2 busy threads", "1,2")]
    assert held_flags(env) == {1: (0, 0), 2: (0, 0)}


async def test_a_digest_mixing_held_and_fresh_alerts_is_labelled_held(env: dict[str, str], app_factory: Any) -> None:
    """ALERTS_DIGEST: one alert held at 06:59:59 and one fresh at 07:00 share one digest, labelled held."""
    clock = Clock(datetime(2026, 6, 11, 6, 59, 59, tzinfo=BERLIN))
    sender = RecordingSender()
    app = await app_factory({**env, **QUIET_BERLIN, "ALERTS_DIGEST": "true"}, sender=sender, clock=clock)
    assert await app.outbox.queue(tier_alert(1)) == "held"
    clock.set(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))  # e.g. a cycle that began in the quiet hours
    assert await app.outbox.queue(tier_alert(2)) == "queued"
    assert await app.outbox.dispatch() == 1
    await app.registry.join()
    # Pinned as it is: `held = any(...)` in Outbox._form_digest, so the fresh alert rides under the held label.
    assert sender.mails() == [("[HN] 2 busy threads (held during quiet hours)", "1,2")]
    assert held_flags(env) == {1: (1, 1), 2: (0, 1)}


async def test_without_digest_mode_held_alerts_leave_in_a_digest_and_fresh_ones_alone(
    env: dict[str, str], app_factory: Any
) -> None:
    """No ALERTS_DIGEST: after quiet hours the held alert goes in a held digest; one due at 07:00 goes alone."""
    clock = Clock(datetime(2026, 6, 11, 6, 59, 59, tzinfo=BERLIN))
    sender = RecordingSender()
    app = await app_factory({**env, **QUIET_BERLIN}, sender=sender, clock=clock)
    assert await app.outbox.queue(tier_alert(1)) == "held"
    clock.set(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))
    assert await app.outbox.queue(tier_alert(2)) == "queued"  # sent at once, on its own
    await app.registry.join()
    assert await app.outbox.dispatch() == 1
    await app.registry.join()
    assert sender.mails() == [("[HN] S2 — 120 comments", "2"), ("[HN] 1 busy thread (held during quiet hours)", "1")]
    assert held_flags(env) == {1: (1, 1), 2: (0, None)}


async def test_a_held_digest_resent_keeps_its_label_and_members(env: dict[str, str], app_factory: Any) -> None:
    """A held digest refused once is resent as formed (label, members, Message-ID); a later alert gets its own."""
    clock = Clock(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    sender = RecordingSender(failures=1)
    app = await app_factory({**env, **QUIET_BERLIN, "ALERTS_DIGEST": "true"}, sender=sender, clock=clock)
    assert await app.outbox.queue(tier_alert(1)) == "held"
    clock.set(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))
    assert await app.outbox.dispatch() == 1
    await app.registry.join()  # refused with 451: the digest stays pending, as formed
    assert await app.outbox.queue(tier_alert(2)) == "queued"
    clock.advance(1)
    assert await app.outbox.dispatch() == 2
    await app.registry.join()
    first = sender.messages[0]
    [resent] = [m for m in sender.messages[1:] if m["X-HN-Alerts-Story"] == "1"]
    [fresh] = [m for m in sender.messages[1:] if m["X-HN-Alerts-Story"] == "2"]
    held = ("[HN] 1 busy thread (held during quiet hours)", "1")
    assert sorted(sender.mails()) == [("[HN] 1 busy thread", "2"), held, held]
    assert resent["Message-ID"] == first["Message-ID"] != fresh["Message-ID"]
    assert await app.store.pending() == []


async def test_alerts_waiting_when_quiet_hours_begin_join_the_digest(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """An alert queued before quiet hours whose send failed leaves with the held ones, in one digest."""
    hn.add_story(1, trees.wide(1_000, 300), title="Before")
    hn.set_list("topstories", [1])
    cfg = with_smtp(
        env, smtp, ALERTS_QUIET_HOURS="23:00-07:00", ALERTS_TIMEZONE="Europe/Berlin", ALERTS_SEND_ATTEMPTS="1"
    )
    clock = Clock(datetime(2026, 6, 10, 22, 59, tzinfo=BERLIN))
    smtp.handler.data_replies = ["451 4.3.0 later"]
    app = await app_factory(cfg, clock=clock)
    await cycle(app)  # queued at 22:59, the send fails
    clock.set(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    hn.add_story(2, trees.wide(2_000, 120), title="During")
    hn.set_list("topstories", [1, 2])
    await cycle(app)
    assert smtp.received == []
    clock.set(datetime(2026, 6, 11, 7, 5, tzinfo=BERLIN))
    await cycle(app)
    assert smtp.subjects() == ["[HN] 2 busy threads (held during quiet hours)"]


async def test_quiet_hours_across_the_spring_dst_change(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """01:00-03:00 Berlin on 29 March 2026: the clock jumps 02:00->03:00, so quiet ends one real hour in."""
    hn.add_story(1, trees.wide(1_000, 120), title="Spring")
    hn.set_list("topstories", [1])
    cfg = with_smtp(env, smtp, ALERTS_QUIET_HOURS="01:00-03:00", ALERTS_TIMEZONE="Europe/Berlin")
    clock = Clock(datetime(2026, 3, 29, 0, 30, tzinfo=UTC))  # 01:30 CET
    app = await app_factory(cfg, clock=clock)
    await cycle(app)
    assert smtp.received == []
    clock.set(datetime(2026, 3, 29, 0, 59, tzinfo=UTC))  # 01:59 CET: still quiet
    await cycle(app)
    assert smtp.received == []
    clock.set(datetime(2026, 3, 29, 1, 0, tzinfo=UTC))  # 03:00 CEST: quiet hours are over
    await cycle(app)
    assert smtp.subjects() == ["[HN] 1 busy thread (held during quiet hours)"]


DAY = (time(9, 0), time(17, 0))
NIGHT = (time(23, 0), time(7, 0))
QUIET_EDGES = [
    (DAY, time(8, 59, 59), False),
    (DAY, time(9, 0), True),
    (DAY, time(9, 0, 1), True),
    (DAY, time(16, 59, 59), True),
    (DAY, time(16, 59, 59, 999_999), True),
    (DAY, time(17, 0), False),
    (DAY, time(0, 0), False),
    (DAY, time(23, 59, 59), False),
    (NIGHT, time(22, 59, 59), False),
    (NIGHT, time(23, 0), True),
    (NIGHT, time(23, 59, 59), True),
    (NIGHT, time(0, 0), True),
    (NIGHT, time(6, 59, 59), True),
    (NIGHT, time(6, 59, 59, 999_999), True),
    (NIGHT, time(7, 0), False),
    (NIGHT, time(7, 0, 1), False),
    (NIGHT, time(12, 0), False),
]


@pytest.mark.parametrize(
    ("span", "local", "quiet"),
    QUIET_EDGES,
    ids=[f"{a:%H%M}-{b:%H%M}@{t.isoformat()}" for (a, b), t, _ in QUIET_EDGES],
)
def test_quiet_hours_membership(span: tuple[time, time], local: time, quiet: bool) -> None:
    """Quiet hours hold their start and not their end, to the second, for a plain span and one wrapping midnight."""
    assert in_quiet_hours(span, local) is quiet


NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
ZONED_EDGES = [
    # 23:00-07:00 in New York (EST, UTC-5 in January): read in UTC, 22:59:59 and 06:59:59 come out wrong.
    (NEW_YORK, datetime(2026, 1, 15, 22, 59, 59), False),
    (NEW_YORK, datetime(2026, 1, 15, 23, 0, 0), True),
    (NEW_YORK, datetime(2026, 1, 16, 6, 59, 59), True),
    (NEW_YORK, datetime(2026, 1, 16, 7, 0, 0), False),
    # The same in summer (EDT, UTC-4).
    (NEW_YORK, datetime(2026, 7, 15, 22, 59, 59), False),
    (NEW_YORK, datetime(2026, 7, 15, 23, 0, 0), True),
    (NEW_YORK, datetime(2026, 7, 16, 6, 59, 59), True),
    (NEW_YORK, datetime(2026, 7, 16, 7, 0, 0), False),
    # A half-hour offset (UTC+5:30): an hour-only conversion gets these wrong.
    (KOLKATA, datetime(2026, 1, 15, 22, 59, 59), False),
    (KOLKATA, datetime(2026, 1, 15, 23, 0, 0), True),
    (KOLKATA, datetime(2026, 1, 16, 6, 59, 59), True),
    (KOLKATA, datetime(2026, 1, 16, 7, 0, 0), False),
]


@pytest.mark.parametrize(
    ("zone", "local", "quiet"), ZONED_EDGES, ids=[f"{z.key}@{t.isoformat()}" for z, t, _ in ZONED_EDGES]
)
def test_quiet_hours_are_read_in_the_configured_zone(zone: ZoneInfo, local: datetime, quiet: bool) -> None:
    """Rules.quiet(epoch) converts the epoch to ALERTS_TIMEZONE's wall time: start inclusive, end exclusive."""
    epoch = local.replace(tzinfo=zone).timestamp()
    rules = Rules(tiers=(100,), quiet_hours=NIGHT, zone=zone)
    assert rules.quiet(epoch) is quiet
    settings = load_settings({"ALERTS_QUIET_HOURS": "23:00-07:00", "ALERTS_TIMEZONE": zone.key}, env_file=None)
    assert make_rules(settings).quiet(epoch) is quiet
    assert Rules(tiers=(100,), zone=zone).quiet(epoch) is False  # no quiet hours set: never quiet


def test_held_alert_is_not_a_failure_for_once(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """`run --once` during quiet hours holds the alert, sends nothing and exits 0."""
    hn.add_story(1, trees.wide(1_000, 120), title="Held")
    hn.set_list("topstories", [1])
    now = datetime.now(UTC)
    span = f"{(now.hour - 1) % 24:02d}:00-{(now.hour + 2) % 24:02d}:00"
    result = run_cli(["run", "--once"], with_smtp(env, smtp, ALERTS_QUIET_HOURS=span), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "alert held for quiet hours: story 1" in result.stderr
    assert smtp.received == []


BAD_RULES = [
    ("ALERTS_MIN_SCORE", "-1"),
    ("ALERTS_TITLE_INCLUDE", "(unclosed"),
    ("ALERTS_TITLE_EXCLUDE", "[z-a]"),
    ("ALERTS_VELOCITY", "50"),
    ("ALERTS_VELOCITY", "0/30"),
    ("ALERTS_VELOCITY", "fast/slow"),
    ("ALERTS_BASELINE", "maybe"),
    ("ALERTS_DIGEST", "perhaps"),
    ("ALERTS_QUIET_HOURS", "25:00-07:00"),
    ("ALERTS_QUIET_HOURS", "23:00"),
    ("ALERTS_QUIET_HOURS", "07:00-07:00"),
    ("ALERTS_TIMEZONE", "Mars/Olympus_Mons"),
]


@pytest.mark.parametrize(("name", "value"), BAD_RULES, ids=[f"{n}={v}" for n, v in BAD_RULES])
def test_bad_rule_values_name_the_variable(name: str, value: str) -> None:
    """Each bad rule value is a settings error naming its variable."""
    with pytest.raises(ConfigError) as info:
        load_settings({name: value}, env_file=None)
    assert info.value.name == name


def test_bad_rule_value_exits_2(tmp_path: Path) -> None:
    """From the command line, a bad rule is exit 2 with one line naming it."""
    result = run_cli(["run", "--once"], {"ALERTS_VELOCITY": "3"}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ALERTS_VELOCITY" in result.stderr


async def test_baseline_waits_for_a_story_it_could_not_count(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """A story whose walk failed in the baseline cycle gets its baseline the next cycle, not a mail."""
    hn.add_story(1, trees.wide(1_000, 150), title="Unreachable at first")
    hn.add_story(2, trees.wide(2_000, 120), title="Fine")
    hn.set_list("topstories", [1, 2])
    hn.fail("/v0/item/1000.json", times=3, status=503)  # story 1's walk is incomplete
    hn.fail("/v0/item/2.json", times=3, status=503)  # story 2 cannot even be read
    app = await app_factory(with_smtp(env, smtp, ALERTS_BASELINE="true", ALERTS_COMMENT_THRESHOLD="100,250"))
    await cycle(app)
    await cycle(app)
    assert smtp.received == []
    counts = await app.store.counts()
    assert counts == {"pending": 0, "held": 0, "sent": 0, "failed": 0, "dropped": 0, "baseline": 2}
    grow(hn, 2, 5_000, 200)  # 320: past 250, a tier the baseline did not record
    await cycle(app)
    assert smtp.subjects() == ["[HN] Fine — 320 comments"]
