"""The stream source under faults a hostile review found: each of these lost an alert, hung, or grew without bound."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from alerts import tallies
from alerts.app import open_app
from alerts.sources import maxitem, stream
from alerts.sources.maxitem import StreamDown, _CappedEvents
from tests import trees
from tests.conftest import settings_from
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.test_stream import asked, following, handled, service, source_of, stream_env, until


def set_meta(env: dict[str, str], key: str, value: str) -> None:
    with sqlite3.connect(env["ALERTS_STATE_DB"]) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))


async def test_a_put_far_past_the_catch_up_is_believed_only_when_hn_serves_it(
    hn: FakeHN, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A put of 2**40 (an id HN does not serve) is ignored: the next real comment still alerts.
    A saved position past HN's largest id (from an older bug, or a restored backup) is pulled back."""
    hn.add_story(1, trees.wide(100, 8), title="Ten")
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_COMMENT_THRESHOLD="9,10", ALERTS_STREAM_CATCHUP="50")
    sender = RecordingSender()
    async with service(cfg, sender) as app:
        source = await following(hn, app, 1)
        hn.stream_event("put", {"path": "/", "data": 2**40})
        await until(lambda: "announced but not served by HN: ignored" in caplog.text, "the put ignored")
        hn.create_item(1)
        await until(lambda: sender.messages, "the tier-9 alert")
        assert source._launched == hn.max_item
    set_meta(env, "stream_last", str(2**40))
    async with service(cfg, sender) as app:
        source = await following(hn, app, 1)
        hn.create_item(1)
        await until(lambda: len(sender.messages) == 2, "the tier-10 alert after the restart")
    assert "past HN's largest id" in caplog.text


async def test_an_item_in_flight_at_shutdown_is_handled_after_the_restart(
    hn: FakeHN, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crossing comment is still null when the service stops: the saved position stays below it."""
    monkeypatch.setattr(stream, "NULL_WAITS", (1.0,) * 10)
    hn.add_story(1, trees.wide(100, 9), title="Ten")
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_COMMENT_THRESHOLD="10")
    sender = RecordingSender()
    async with service(cfg, sender) as app:
        source = await following(hn, app, 1)
        crossing = hn.create_item(1, null_requests=1_000)
        await until(lambda: crossing in source._in_flight and asked(hn, crossing) >= 1, "the crossing in flight")
    with hn.lock:
        hn._fresh.pop(crossing, None)  # served from now on
    async with service(cfg, sender) as app:
        await until(lambda: sender.messages, "the alert after the restart")


async def test_an_unreadable_parent_counts_nothing_and_blocks_nothing(
    hn: FakeHN, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply whose parent answers a body of the wrong shape: no story, asked once; the stream and --once go on."""
    monkeypatch.setattr(stream, "DOWN_WAITS", (0.2,))
    hn.add_story(1, trees.wide(100, 3))
    hn.set_list("topstories", [1])
    hn.malformed(101, b'{"id": 101, "kids": "not a list"}')
    async with service(stream_env(env), RecordingSender()) as app:
        source = await following(hn, app, 1)
        reply = hn.create_item(101)
        after = hn.create_item(1)
        await handled(source, after)
        await handled(source, reply)
        assert asked(hn, 101) == 1 and source._stories[1].count == 4
    hn.create_item(101)
    async with open_app(settings_from(stream_env(env)), sender=RecordingSender()) as app:
        assert await asyncio.wait_for(app.service.run_once(), 10)


async def test_a_state_db_error_while_looking_up_a_parent_is_retried_and_strands_no_reply(
    hn: FakeHN, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """'database is locked' four times while parent 100 is looked up: both replies are counted in the end."""
    monkeypatch.setattr(stream, "DOWN_WAITS", (0.05,))
    hn.add_story(1, trees.wide(100, 3))
    hn.set_list("topstories", [1])
    real = tallies.stories_of
    calls = [0]

    def flaky(conn: sqlite3.Connection, ids: list[int]) -> dict[int, int | None]:
        calls[0] += 1
        if 100 in ids and calls[0] < 5:
            raise sqlite3.OperationalError("database is locked")
        return real(conn, ids)

    async with service(stream_env(env), RecordingSender()) as app:
        source = await following(hn, app, 1)
        monkeypatch.setattr(tallies, "stories_of", flaky)
        first = hn.create_item(100)
        second = hn.create_item(100)
        await handled(source, first)
        await handled(source, second)
        assert source._stories[1].count == 5 and not source._waiting


async def test_a_cycle_while_follow_waits_for_hn_opens_no_group_of_its_own(
    hn: FakeHN, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/v0/maxitem.json down at start: the cycles go on meanwhile, and once it answers the stream follows
    under the one task group of follow(): a later crossing alerts and the service is still up."""
    monkeypatch.setattr(stream, "DOWN_WAITS", (1.0,))
    hn.add_story(1, trees.wide(100, 9), title="Late start")
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_POLL_INTERVAL="0.3", ALERTS_COMMENT_THRESHOLD="10")
    hn.fail("/v0/maxitem.json", times=4)
    sender = RecordingSender()
    async with open_app(settings_from(cfg), sender=sender) as app:
        stop = asyncio.Event()
        task = asyncio.create_task(app.service.run(stop))
        source = source_of(app)
        await until(lambda: source._group is not None and source.follower.connected, "following", within=20)
        hn.create_item(1)
        await until(lambda: sender.messages, "the alert")
        assert not task.done() and source._group is not None
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_an_incomplete_walk_when_a_story_joins_is_walked_again_next_cycle(
    hn: FakeHN, env: dict[str, str]
) -> None:
    """12 live comments, tier 10; three fail for good in the join walk (counted 9): the next cycle walks again."""
    hn.add_story(1, trees.wide(100, 12), title="Twelve")
    hn.set_list("topstories", [1])
    for i in (100, 101, 102):
        hn.fail(f"/v0/item/{i}.json", times=3)  # ALERTS_FETCH_ATTEMPTS=3: spent
    sender = RecordingSender()
    cfg = stream_env(env, ALERTS_COMMENT_THRESHOLD="10", ALERTS_POLL_INTERVAL="0.3")
    async with service(cfg, sender):
        await until(lambda: sender.messages, "the alert from the second walk")
    assert sender.mails() == [("[HN] Twelve — 12 comments", "1")]


async def test_arrivals_older_than_the_window_never_make_a_velocity_alert(hn: FakeHN, env: dict[str, str]) -> None:
    """3 comments while the story is filtered out by score; an hour later, with none since, its score rises:
    no heating-up alert (the arrivals left the window)."""
    offset = [0.0]
    hn.add_story(1, trees.wide(100, 5), title="Cold", score=5)
    hn.set_list("topstories", [1])
    cfg = stream_env(
        env, ALERTS_COMMENT_THRESHOLD="500", ALERTS_VELOCITY="3/10", ALERTS_MIN_SCORE="50", ALERTS_POLL_INTERVAL="0.3"
    )
    sender = RecordingSender()
    async with open_app(settings_from(cfg), sender=sender, clock=lambda: time.time() + offset[0]) as app:
        stop = asyncio.Event()
        task = asyncio.create_task(app.service.run(stop))
        try:
            source = await following(hn, app, 1)
            made = [hn.create_item(1) for _ in range(3)]
            await handled(source, made[-1])
            offset[0] = 3600.0
            with hn.lock:
                hn.items[1] = {**hn.items[1], "score": 100}  # type: ignore[dict-item]
            cycles = source._handled_before, time.monotonic()
            await until(lambda: time.monotonic() - cycles[1] > 1.0, "three more cycles")
            assert not source._stories[1].arrivals
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    assert sender.messages == []


async def test_items_skipped_while_running_make_every_count_walked_again(
    hn: FakeHN, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stream silent and polls failing while 8 comments are made (CATCHUP=5): 3 are skipped, so the count
    is walked again, and 10 live comments at tier 10 alert."""
    monkeypatch.setattr(maxitem, "SILENCE", 1.0)
    hn.keepalive_interval = None
    hn.add_story(1, trees.wide(100, 2), title="Two")
    hn.set_list("topstories", [1])
    cfg = stream_env(env, ALERTS_COMMENT_THRESHOLD="10", ALERTS_STREAM_CATCHUP="5", ALERTS_POLL_INTERVAL="0.3")
    sender = RecordingSender()
    async with service(cfg, sender) as app:
        source = await following(hn, app, 1)
        hn.fail("/v0/maxitem.json", times=1000)
        hn.silence_streams()
        made = [hn.create_item(1) for _ in range(8)]
        await until(lambda: not source.follower.connected, "the stream down")
        hn.clear_faults()
        await handled(source, made[-1])
        await until(lambda: sender.messages, "the alert from the walk")
    assert sender.mails() == [("[HN] Two — 10 comments", "1")]


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


async def read_all(chunks: list[bytes], limit: int = 1000) -> int:
    total = 0
    async for chunk in _CappedEvents(_Chunks(chunks), limit):
        total += len(chunk)
    return total


@pytest.mark.parametrize("newline", [b"\n", b"\r", b"\r\n"])
async def test_an_event_is_capped_however_its_lines_are_cut(newline: bytes) -> None:
    """Short data lines with no blank line: the stream ends once the event passes the cap; events that end
    in time pass, also with their blank line split across two chunks."""
    line = b"data: " + b"1" * 40 + newline
    with pytest.raises(StreamDown, match="over 1000 bytes"):
        await read_all([line] * 30)
    event = line * 10 + newline
    half = len(event) - 1
    assert await read_all([event[:half], event[half:]] * 50) == len(event) * 50
