"""Rules beyond one threshold: velocity, filters, baseline, digest, quiet hours (clock injected)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from alerts.config import load_settings
from alerts.errors import ConfigError
from alerts.rules import in_quiet_hours, velocity_gain
from tests import trees
from tests.conftest import run_cli, with_smtp
from tests.fakehn import FakeHN
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


async def test_digest_mode_once_sends_leftovers_and_new_alerts(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], app_factory: Any
) -> None:
    """With a digest of leftovers still sending, this cycle's alerts follow in a second digest before --once ends."""
    hn.add_story(1, trees.wide(1_000, 120), title="Leftover")
    hn.set_list("topstories", [1])
    cfg = with_smtp(env, smtp, ALERTS_DIGEST="true")
    smtp.handler.data_replies = ["451 4.3.0 later"]
    first = await app_factory({**cfg, "ALERTS_SEND_ATTEMPTS": "1"})
    await cycle(first)
    await first.store.close()
    assert smtp.received == []
    hn.add_story(2, trees.wide(2_000, 130), title="Fresh")
    hn.set_list("topstories", [1, 2])
    smtp.handler.data_delay = 0.3  # the leftover digest is still sending when the cycle ends
    second = await app_factory(cfg)
    assert await second.service.run_once() is True
    assert sorted(smtp.subjects()) == ["[HN] 1 busy thread", "[HN] 1 busy thread"]
    assert await second.store.pending() == []


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


def test_quiet_hours_membership() -> None:
    """A span that wraps midnight holds late evening and early morning; the end is exclusive."""
    span = (time(23, 0), time(7, 0))
    assert in_quiet_hours(span, time(23, 30)) and in_quiet_hours(span, time(6, 59))
    assert not in_quiet_hours(span, time(7, 0)) and not in_quiet_hours(span, time(12, 0))
    day = (time(9, 0), time(17, 0))
    assert in_quiet_hours(day, time(9, 0)) and not in_quiet_hours(day, time(17, 0))


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
