"""The stream source end to end, in process: the real service against the fake API's event stream.

Every test runs the whole app (``open_app``) with ``ALERTS_SOURCE=stream``:
the event stream of ``/v0/maxitem.json`` (a 307, then ``put`` events),
real SQLite, a recording sender. Items are created live on the fake API's
one id sequence, as HN does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from alerts.app import App, open_app
from alerts.sources import maxitem, stream
from alerts.sources.stream import StreamSource
from tests import trees
from tests.conftest import settings_from, start_cli, wait_for, with_smtp
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.smtpserver import SmtpServer
from tests.test_walk import chain_last


async def until(condition: Callable[[], Any], what: str, within: float = 15.0) -> None:
    """Wait (yielding to the loop) until ``condition()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def stream_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**env, "ALERTS_SOURCE": "stream", "ALERTS_STREAM_POLL": "0.2", **extra}


def source_of(app: App) -> StreamSource:
    assert isinstance(app.source, StreamSource)
    return app.source


@asynccontextmanager
async def service(env: dict[str, str], sender: RecordingSender) -> AsyncIterator[App]:
    """The whole service running (cycles and the stream) until the block ends; then stopped, drained, closed."""
    async with open_app(settings_from(env), sender=sender) as app:
        stop = asyncio.Event()
        task = asyncio.create_task(app.service.run(stop))
        try:
            yield app
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def following(hn: FakeHN, app: App, *stories: int) -> StreamSource:
    """Wait until the stream is open and the given stories are counted."""
    source = source_of(app)
    await until(lambda: source.follower.connected, "the event stream")
    await until(lambda: all(s in source._stories and not source._stories[s].busy for s in stories), "stories")
    return source


async def handled(source: StreamSource, item_id: int) -> None:
    await until(lambda: source._launched >= item_id and item_id not in source._in_flight, f"item {item_id}")


def asked(hn: FakeHN, item_id: int) -> int:
    return hn.requests[f"/v0/item/{item_id}.json"]


async def test_a_crossing_comment_alerts_with_the_walked_count(hn: FakeHN, env: dict[str, str]) -> None:
    """Tier 100 on a story of 95 live comments plus dead and deleted ones: the 5th new live one alerts, for 100.

    HN's ``descendants`` (103) counts the dead and deleted; the walk does not. A dead new comment adds nothing.
    Each new item is fetched once before the crossing; the crossing costs one walk.
    """
    hn.add_story(1, trees.generated(1_000, live=95, dead=5, deleted=3, depth=5, seed=1), title="Growing")
    hn.set_list("topstories", [1])
    sender = RecordingSender()
    async with service(stream_env(env, ALERTS_COMMENT_THRESHOLD="100"), sender) as app:
        source = await following(hn, app, 1)
        assert source._stories[1].count == 95  # the join walked it: 103 is within 10% of 100
        new = [hn.create_item(1), hn.create_item(1, dead=True), hn.create_item(1000), hn.create_item(1)]
        await handled(source, new[-1])
        assert sender.messages == [] and source._stories[1].count == 98
        assert [asked(hn, i) for i in new] == [1, 1, 1, 1]
        walks = asked(hn, 1000)
        hn.create_item(new[0])
        await handled(source, new[-1] + 1)
        assert sender.messages == [] and asked(hn, 1000) == walks
        hn.create_item(new[0])
        await until(lambda: sender.messages, "the alert")
        assert asked(hn, 1000) == walks + 1  # one confirming walk
        last = hn.create_item(1)
        await handled(source, last)
    assert sender.mails() == [("[HN] Growing — 100 comments", "1")]


async def test_attribution_walks_up_deep_parents_once_and_remembers_them_across_a_restart(
    hn: FakeHN, env: dict[str, str]
) -> None:
    """A reply at the end of a 40-deep chain made before watching: each link fetched once, then never again."""
    hn.add_story(1, trees.chain(100, 40))
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_COMMENT_THRESHOLD="1000")
    deepest = 139
    async with service(cfg, RecordingSender()) as app:
        source = await following(hn, app, 1)
        hn.reset_stats()
        first = hn.create_item(deepest)
        second = hn.create_item(deepest)
        await handled(source, second)
        assert [asked(hn, i) for i in range(100, 140)] == [1] * 40
        assert asked(hn, 1) == 1  # the story itself, to know it is the top
        assert source._stories[1].count == 42
        reply = hn.create_item(first)
        await handled(source, reply)
        assert hn.item_requests == 40 + 1 + 3
        exposed = generate_latest(app.metrics.registry).decode()
        assert "\nhn_alerts_stream_items_total 3.0\n" in exposed
    hn.reset_stats()
    async with service(cfg, RecordingSender()) as app:
        source = await following(hn, app, 1)
        late = hn.create_item(deepest)
        await handled(source, late)
        assert source._stories[1].count == 44
    assert hn.item_requests == 1  # the chain came from the state DB


async def test_comments_under_unwatched_stories_and_broken_parent_chains_alert_nothing(
    hn: FakeHN, env: dict[str, str]
) -> None:
    """A story outside the lists, a parent pointing up, a loop of parents: nothing counted, the stream goes on."""
    hn.add_story(1, trees.wide(100, 9), title="Watched")
    hn.add_story(2, trees.wide(200, 50), title="Not in the list")
    hn.set_list("topstories", [1])
    sender = RecordingSender()
    async with service(stream_env(env, ALERTS_COMMENT_THRESHOLD="10"), sender) as app:
        source = await following(hn, app, 1)
        hn.reset_stats()
        for _ in range(3):
            hn.create_item(2)
        up = hostile(hn, parent=10**6)  # a parent id above its own
        a = hostile(hn, parent=up + 2)
        hostile(hn, parent=a)  # a and the next one are each other's parent
        loop = hostile(hn, parent=a + 1)  # a loop of parents below it
        own = hostile(hn, parent=hn.max_item + 1)  # its own parent
        await handled(source, own)
        assert 2 not in source._stories and asked(hn, 200) == 0
        assert asked(hn, 2) == 1  # once, to learn it is a story; remembered after
        assert source._stories[1].count == 9
        crossing = hn.create_item(1)
        await until(lambda: sender.messages, "the alert")
        assert [asked(hn, i) for i in (up, loop, crossing)] == [1, 1, 2]
    assert sender.mails() == [("[HN] Watched — 10 comments", "1")]


def hostile(hn: FakeHN, **fields: Any) -> int:
    """A new comment, made by hand with whatever fields."""
    with hn.lock:
        item_id = hn.max_item + 1
        hn.items[item_id] = {"id": item_id, "type": "comment", "by": "x", **fields}
    return item_id


async def test_items_created_while_stopped_are_caught_up_and_alert_once_across_restarts(
    hn: FakeHN, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped at 8 comments, 2 made meanwhile: the restart alerts for 10, then 12; a third start sends none."""
    hn.add_story(1, trees.wide(100, 8), title="Busy while away")
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_COMMENT_THRESHOLD="10,12")
    sender = RecordingSender()
    async with service(cfg, sender) as app:
        await following(hn, app, 1)
    made = [hn.create_item(1) for _ in range(2)]
    caplog.set_level(logging.INFO)
    async with service(cfg, sender) as app:
        source = await following(hn, app, 1)
        await handled(source, made[-1])
        await until(lambda: len(sender.messages) == 1, "the tier-10 alert")
        made += [hn.create_item(1) for _ in range(2)]
        await until(lambda: len(sender.messages) == 2, "the tier-12 alert")
    assert "catching up on 2 items" in caplog.text
    assert [asked(hn, i) for i in made[:2]] == [3, 3]  # handled once, then in the walks for 10 and 12
    async with service(cfg, sender) as app:
        source = await following(hn, app, 1)
        extra = hn.create_item(1)
        await handled(source, extra)
    assert sender.mails() == [("[HN] Busy while away — 10 comments", "1"), ("[HN] Busy while away — 12 comments", "1")]


async def test_catch_up_stops_at_alerts_stream_catchup(
    hn: FakeHN, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """20 items made while stopped, ALERTS_STREAM_CATCHUP=5: the oldest 15 are skipped with a warning."""
    hn.add_story(1, trees.wide(100, 3))
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_STREAM_CATCHUP="5")
    async with service(cfg, RecordingSender()) as app:
        await following(hn, app, 1)
    made = [hn.create_item(1) for _ in range(20)]
    caplog.set_level(logging.INFO)
    async with service(cfg, RecordingSender()) as app:
        source = await following(hn, app, 1)
        await handled(source, made[-1])
    assert [asked(hn, i) for i in made] == [0] * 15 + [1] * 5
    assert "the oldest 15 are skipped (ALERTS_STREAM_CATCHUP=5)" in caplog.text


async def test_a_refused_stream_falls_back_to_polling_then_reconnects_on_the_default_backoff(
    hn: FakeHN, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Stream refused (503) three times: maxitem is polled every ALERTS_STREAM_POLL and items still alert;
    the fourth try (about 1 + 2 + 4 s later) opens the stream and the polling stops."""
    hn.add_story(1, trees.wide(100, 9), title="Seen by polling")
    hn.set_list("topstories", [1])
    hn.refuse_streams(times=3)
    caplog.set_level(logging.INFO)
    sender = RecordingSender()
    async with service(stream_env(env, ALERTS_COMMENT_THRESHOLD="10"), sender) as app:
        source = source_of(app)
        await until(lambda: hn.maxitem_polls >= 2, "polling")
        await until(lambda: 1 in source._stories and not source._stories[1].busy, "story 1")
        assert not source.follower.connected
        hn.create_item(1)
        await until(lambda: sender.messages, "the alert found by polling")
        started = time.monotonic()
        await until(lambda: source.follower.connected, "the stream back", within=20)
        assert time.monotonic() - started < 11  # 1 + 2 + 4 s of backoff, each with up to 1 s of jitter
        polls = hn.maxitem_polls
        item = hn.create_item(1)
        await handled(source, item)
        assert hn.maxitem_polls <= polls + 1
    assert "event stream down (HTTP 503): polling" in caplog.text
    assert "event stream up" in caplog.text


@pytest.mark.parametrize("fault", ["cut", "cancel", "auth_revoked", "silence", "huge line", "endless event", "bad put"])
async def test_the_stream_reconnects_after_every_kind_of_failure(
    hn: FakeHN, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """After a cut, a cancel, a revoked auth, silence past the limit, a line or an event over 64 KiB or a
    put holding no id, the stream comes back and items made after it are handled."""
    monkeypatch.setattr(maxitem, "SILENCE", 0.5)
    hn.keepalive_interval = None
    hn.add_story(1, trees.wide(100, 3))
    hn.set_list("topstories", [1])
    async with service(stream_env(env), RecordingSender()) as app:
        source = await following(hn, app, 1)
        if fault == "cut":
            await asyncio.to_thread(hn.cut_streams)
        elif fault in ("cancel", "auth_revoked"):
            hn.stream_event(fault, None)
        elif fault == "silence":
            hn.silence_streams()
        elif fault == "huge line":
            hn.stream_write(b"data: " + b"9" * 100_000 + b"\n\n")
        elif fault == "endless event":
            hn.stream_write(b"data: 9\n" * 20_000)  # short lines, never a blank one
        else:
            hn.stream_event("put", raw_data='{"path": "/", "data": "not an id"}')
            hn.stream_event("put", raw_data="[" * 100_000)
        if fault != "bad put":
            await until(lambda: hn.stream_connections >= 2 and source.follower.connected, "a new stream")
        item = hn.create_item(1)
        await handled(source, item)
        assert source._stories[1].count == 4


async def test_a_fresh_item_still_null_is_asked_again(
    hn: FakeHN, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new comment null for its first 3 asks is counted; one null for good is missing after the waits."""
    monkeypatch.setattr(stream, "NULL_WAITS", (0.01, 0.01, 0.01, 0.01))
    hn.add_story(1, trees.wide(100, 3))
    hn.set_list("topstories", [1])
    async with service(stream_env(env), RecordingSender()) as app:
        source = await following(hn, app, 1)
        late = hn.create_item(1, null_requests=3)
        await handled(source, late)
        assert asked(hn, late) == 4 and source._stories[1].count == 4
        gone = hn.create_item(1, null_requests=100)
        await handled(source, gone)
        assert asked(hn, gone) == 5 and source._stories[1].count == 4


async def test_all_takes_old_stories_as_a_baseline_and_new_ones_alert_on_every_tier(
    hn: FakeHN, env: dict[str, str]
) -> None:
    """ALERTS_STORY_LISTS=all, tiers 3,5. Story 1 (made before watching, 4 comments): tier 3 is a baseline,
    its 5th comment alerts for 5. A story made while watching alerts for 3 and for 5."""
    hn.add_story(1, trees.wide(100, 4), title="Old")
    sender = RecordingSender()
    cfg = stream_env(env, ALERTS_STORY_LISTS="all", ALERTS_COMMENT_THRESHOLD="3,5")
    async with service(cfg, sender) as app:
        source = await following(hn, app)
        hn.create_item(100)
        await until(lambda: sender.messages, "the old story's tier 5")
        new = hn.create_item(title="New")
        comments = [hn.create_item(new) for _ in range(2)]
        comments.append(hn.create_item(comments[0]))
        await until(lambda: len(sender.messages) == 2, "the new story's tier 3")
        comments += [hn.create_item(new), hn.create_item(comments[-1])]
        await until(lambda: len(sender.messages) == 3, "the new story's tier 5")
        await handled(source, comments[-1])
    assert sender.mails() == [
        ("[HN] Old — 5 comments", "1"),
        ("[HN] New — 3 comments", str(new)),
        ("[HN] New — 5 comments", str(new)),
    ]


async def test_once_catches_up_from_where_the_last_run_stopped(hn: FakeHN, env: dict[str, str]) -> None:
    """Under cron: the first --once records the position; the next one handles what came since and alerts."""
    hn.add_story(1, trees.wide(100, 9), title="Cron")
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_COMMENT_THRESHOLD="10")
    sender = RecordingSender()
    async with open_app(settings_from(cfg), sender=sender) as app:
        assert await app.service.run_once()
    made = hn.create_item(1)
    async with open_app(settings_from(cfg), sender=sender) as app:
        assert await app.service.run_once()
    assert sender.mails() == [("[HN] Cron — 10 comments", "1")]
    assert asked(hn, made) == 2


async def test_velocity_counts_the_comments_that_arrived_within_the_window(hn: FakeHN, env: dict[str, str]) -> None:
    """ALERTS_VELOCITY=3/10 with a tier far away: the third comment within ten minutes sends one heating-up alert."""
    hn.add_story(1, trees.wide(100, 5), title="Heating")
    hn.set_list("topstories", [1])
    sender = RecordingSender()
    async with service(stream_env(env, ALERTS_COMMENT_THRESHOLD="500", ALERTS_VELOCITY="3/10"), sender) as app:
        source = await following(hn, app, 1)
        made = [hn.create_item(1), hn.create_item(1)]
        await handled(source, made[-1])
        assert sender.messages == []
        made.append(hn.create_item(made[0]))
        await until(lambda: sender.messages, "the velocity alert")
        made.append(hn.create_item(1))
        await handled(source, made[-1])
    assert len(sender.messages) == 1
    assert "heating up" in str(sender.messages[0]["Subject"]).lower() or "+3" in sender.messages[0].as_string()


def test_sigterm_stops_the_stream_source_cleanly_and_a_restart_sends_nothing_twice(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """`alerts run` with the stream source and the real SMTP server: a crossing mails once, SIGTERM exits 0
    within 2 s with no destroyed task, and a second start catches up without mailing it again."""
    hn.add_story(1, trees.wide(100, 9), title="Process")
    hn.set_list("topstories", [1])
    cfg = with_smtp(stream_env(env, ALERTS_COMMENT_THRESHOLD="10", ALERTS_LOG_LEVEL="DEBUG"), smtp)
    for run in range(2):
        proc = start_cli(["run"], cfg, tmp_path)
        try:
            wait_for(lambda: hn.open_streams == 1, what="the event stream")
            if run == 0:
                hn.create_item(1)
                wait_for(lambda: len(smtp.received) == 1, what="the alert")
            else:
                hn.create_item(1)
                wait_for(lambda: hn.requests[f"/v0/item/{hn.max_item}.json"] >= 1, what="the new item fetched")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 3
        assert "Task was destroyed" not in err and "Traceback" not in err
    assert smtp.subjects() == ["[HN] Process — 10 comments"]


async def test_alerts_baseline_holds_for_the_stream_source_too(hn: FakeHN, env: dict[str, str]) -> None:
    """ALERTS_BASELINE=true on an empty DB: a story already past 5 sends nothing; its crossing of 8 mails."""
    hn.add_story(1, trees.wide(100, 6), title="Already busy")
    hn.set_list("topstories", [1])
    sender = RecordingSender()
    async with service(stream_env(env, ALERTS_COMMENT_THRESHOLD="5,8", ALERTS_BASELINE="true"), sender) as app:
        source = await following(hn, app, 1)
        first = hn.create_item(1)
        await handled(source, first)
        assert sender.messages == []
        hn.create_item(1)
        await until(lambda: sender.messages, "the tier-8 alert")
    assert sender.mails() == [("[HN] Already busy — 8 comments", "1")]


async def test_all_starts_a_story_first_seen_from_its_descendants(hn: FakeHN, env: dict[str, str]) -> None:
    """ALERTS_STORY_LISTS=all: a story first seen through a new comment counts its descendants, which hold
    that comment already: 10 old + 1 new is 11, not 12."""
    hn.add_story(1, trees.wide(100, 10))
    cfg = stream_env(env, ALERTS_STORY_LISTS="all", ALERTS_COMMENT_THRESHOLD="100")
    async with service(cfg, RecordingSender()) as app:
        source = await following(hn, app)
        new = hn.create_item(100)
        await handled(source, new)
        await until(lambda: 1 in source._stories and not source._stories[1].busy, "story 1 counted")
        assert source._stories[1].count == 11


async def test_a_crossing_walk_asks_first_for_the_chains_the_join_walk_found(hn: FakeHN, env: dict[str, str]) -> None:
    """The list's join walk and the stream's confirming walk share what they learn of a tree's shape.

    The story's longest reply chain hangs under its last top-level comment.
    One request at a time, so the server sees the order: the confirming walk
    asks for the chain before the leaves, because the join walk measured it.
    """
    tree = chain_last(leaves=20, chain=15)
    hn.add_story(1, tree, title="Chain last")
    hn.set_list("topstories", [1])
    chain = {f"/v0/item/{i}.json" for i in range(1_020, 1_035)}
    sender = RecordingSender()
    settings = stream_env(env, ALERTS_COMMENT_THRESHOLD="36", ALERTS_MAX_CONCURRENCY="1")
    async with service(settings, sender) as app:
        source = await following(hn, app, 1)
        assert source._stories[1].count == 35  # walked when it joined: 35 is within 10 % of 36
        hn.request_order = []
        new = hn.create_item(1)
        await until(lambda: sender.messages, "the alert")
    tree_paths = {f"/v0/item/{i}.json" for i in (*tree.items, new)}
    walk = [path for path in hn.request_order if path in tree_paths]
    walk = walk[walk.index("/v0/item/1000.json") :]  # from the walk's first request on (the new item came before)
    assert len(walk) == 36
    assert set(walk[1:16]) == chain  # after the request that found the slot free
    assert sender.mails() == [("[HN] Chain last — 36 comments", "1")]
