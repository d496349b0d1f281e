"""The stream source: every new HN item handled once, counts kept as comments arrive, a walk only to confirm.

Between cycles, :class:`~alerts.sources.maxitem.MaxItemFollower` reports each
new largest id; every id up to it is fetched once (a fresh item that is
still ``null`` is asked again for up to 60 s), attributed to the story at
the top of its ``parent`` chain (a parent not yet known is fetched once and
remembered in the state DB), and a live comment adds one to its story's
running count. When that count reaches the story's next tier (or a velocity
rule may be met), the story is walked and only the walked count decides;
the count then goes on from the walk.

Every cycle re-reads the story lists (a story that joins them is counted
once, as the poll source would, and followed from then on), or, with
``ALERTS_STORY_LISTS=all``, keeps every story that gets comments. The last
item handled, each item's story and each running count live in the state
DB, so a restart catches up on what was created meanwhile (at most
``ALERTS_STREAM_CATCHUP`` items) and counts nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from alerts import snapshot, tallies
from alerts.errors import FetchError, MalformedItemError, RejectedFetchError, StateError
from alerts.hn import HNClient
from alerts.model import Alert, Item, Story
from alerts.outbox import Outbox
from alerts.rules import WALK_MARGIN, Rules, StoryState, decide, due_tier, next_tier
from alerts.sources import CycleReport, queue_alert
from alerts.sources.maxitem import MaxItemFollower
from alerts.sources.poll import STORY_TYPES, PollSource
from alerts.store import Store
from alerts.walk import Shapes, is_live, walk_kids

log = logging.getLogger(__name__)

#: Waits between asks for a fresh item that is still ``null``: 60 s in all before it counts as missing.
NULL_WAITS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 28.25)
#: Waits between tries of an item that could not be fetched at all (HN down): it is never skipped.
DOWN_WAITS = (5.0, 15.0, 60.0, 300.0)
#: Items and counts older than this many ids (about a month of HN) are forgotten: HN closes such threads.
KEEP_IDS = 400_000
#: Item-to-story answers kept in memory (the state DB holds them all).
CACHE = 50_000
#: A story with no comment for this long leaves memory (``all``); its count stays in the state DB.
IDLE = 3600.0
#: Hops up a ``parent`` chain at most (HN threads are a few hundred deep at the very most).
MAX_CHAIN = 10_000
#: With ``all``, the stories shown in the status: the busiest of every story that gets comments.
SHOWN = 100
#: The story fetched to confirm a crossing goes before every other waiting request.
FIRST = -1e9
#: What a wait for an item's story gets when the one finding out could not: ask again.
ASK_AGAIN = -1


@dataclass
class _Story:
    """What the stream keeps in memory about one story it counts."""

    count: int = 0  # its last walk's count plus the live comments seen since
    title: str = ""
    alerted: int | None = None  # the highest tier it alerted for
    heated: bool = False  # its velocity alert is behind it
    owed: bool = False  # created before watching began, tiers passed then not yet recorded (``all``)
    busy: bool = True  # being counted or walked: comments seen meanwhile go to ``extra``
    extra: int = 0
    arrivals: deque[float] = field(default_factory=deque)  # when its recent comments arrived (velocity)
    recheck_at: float = 0.0  # not looked at again before this (monotonic): filtered out, or its walk failed
    retry: bool = False  # its last walk was incomplete: walked again next cycle
    touched: float = 0.0  # last comment seen (monotonic)


def down_wait(failures: int) -> float:
    """Seconds to wait after ``failures`` failed tries in a row (1: the first): DOWN_WAITS, its last repeated."""
    return DOWN_WAITS[min(failures, len(DOWN_WAITS)) - 1]


class StreamSource:
    """Follows every new item; the service drives :meth:`cycle` every interval and :meth:`follow` between."""

    name = "stream"

    def __init__(
        self,
        rules: Rules,
        hn: HNClient,
        store: Store,
        outbox: Outbox,
        lists: PollSource,
        *,
        every_story: bool,
        max_comments: int,
        in_flight: int,
        stream_poll: float,
        catchup: int,
        interval: float,
        connect_timeout: float,
        reconnect_backoff: float = 1.0,
        shapes: Shapes | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._rules = rules
        self._hn = hn
        self._store = store
        self._outbox = outbox
        self._lists = lists
        self._every = every_story
        self._max_comments = max_comments
        self._shapes = Shapes() if shapes is None else shapes
        self._slots = asyncio.Semaphore(in_flight)
        self._catchup = catchup
        self._interval = interval
        self._clock = clock
        self._sleep = sleep
        self.follower = MaxItemFollower(
            hn,
            self._raise_target,
            poll_every=stream_poll,
            connect_timeout=connect_timeout,
            first_backoff=reconnect_backoff,
            sleep=sleep,
        )
        self._stories: dict[int, _Story] = {}
        self._cache: dict[int, int | None] = {}  # item -> story, recent answers
        self._waiting: dict[int, asyncio.Future[int | None]] = {}  # item -> its story, being found out
        self._rows: list[tallies.Row] = []  # handled items not yet in the state DB
        self._known: list[tuple[int, int | None]] = []  # parents looked up, not yet in the state DB
        self._in_flight: set[int] = set()
        self._skip: set[int] = set()  # ids handled before a restart
        self._begun = asyncio.Lock()
        self._launching = asyncio.Lock()
        self._down_logged = -math.inf  # when a fetch failure was last logged as a warning
        self._started = False
        self._first = 0  # the largest id when watching began
        self._launched = 0  # every id up to this one has been started
        self._target = 0  # the largest id known
        self._saved = -1  # the position last written
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._following = False
        self._between = CycleReport(0)  # alerts the stream queued since the last cycle
        self.handled = 0  # items handled since start
        self._handled_before = 0  # ... as of the last cycle
        self.last_handled: float | None = None  # monotonic: when the last item was handled

    # -- the service's two entry points -------------------------------------------

    async def follow(self) -> None:
        """Follow new items until cancelled."""
        self._following = True  # from now on only follow() launches items: cycles never open a group of their own
        try:
            await self._begin_until_it_works()
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self.follower.run())
                group.create_task(self._launch_forever())
                group.create_task(self._flush_forever())
        finally:
            self._following = False
            self._group = None
            await self._flush()  # what was handled is not handled again after a restart

    async def cycle(self, number: int) -> CycleReport:
        """Re-read the lists (not with ``all``) and look at every story again; under ``--once``, catch up too."""
        report = CycleReport(number)
        await self._begin()
        if self._following:
            await self._refresh(report)
            self._reconsider()
        else:
            try:
                async with asyncio.TaskGroup() as group:  # ends once every item and walk it started is done
                    self._group = group
                    await self._refresh(report)
                    self._reconsider()
                    self._raise_target(await self._hn.max_item())
                    await self._launch()
            finally:
                self._group = None
            await self._flush()
        await self._tidy()
        report.alerts += self._between.alerts
        report.baseline += self._between.baseline
        report.walked += self._between.walked
        self._between = CycleReport(0)
        report.position = self._launched
        counted = sorted(self._stories.items(), key=lambda pair: -pair[1].count)
        if self._every:
            counted = counted[:SHOWN]
        report.watched = [(story_id, story.title or f"Item {story_id}", story.count) for story_id, story in counted]
        report.handled, self._handled_before = self.handled - self._handled_before, self.handled
        return report

    async def _refresh(self, report: CycleReport) -> None:
        if self._every:
            report.stories = len(self._stories)
        else:
            ids = await self._lists.story_ids()
            report.stories = len(ids)
            await self._watch(ids, report)

    # -- where the stream starts ---------------------------------------------------

    async def _begin_until_it_works(self) -> None:
        failures = 0
        while True:
            try:
                await self._begin()
                return
            except FetchError as exc:
                failures += 1
                wait = down_wait(failures)
                log.warning("stream: the largest item id could not be read (%s); trying again in %g s", exc, wait)
            await self._sleep(wait)

    async def _begin(self) -> None:
        """Read where the stream stood (or start now, on a first run) and how far HN has gone since."""
        async with self._begun:
            if self._started:
                return
            position = await self._store.run(tallies.position)
            largest = await self._hn.max_item()
            if position.last is None:
                first = last = largest
                log.info("stream: watching from item %d on", largest)
            else:
                first, last = position.first if position.first is not None else position.last, position.last
                if last > largest:
                    log.warning("stream: saved position %d is past HN's largest id %d: going on from it", last, largest)
                    last = largest
                behind = largest - last
                if behind > self._catchup:
                    log.warning(
                        "stream: %d items were created while stopped; the oldest %d are skipped"
                        " (ALERTS_STREAM_CATCHUP=%d), and every count starts afresh",
                        behind,
                        behind - self._catchup,
                        self._catchup,
                    )
                    last = largest - self._catchup
                    await self._store.run(tallies.forget_all)
                elif behind > 0:
                    log.info("stream: catching up on %d items created since item %d", behind, last)
                self._skip = await self._store.run(tallies.handled_between, last + 1, max(largest, last))
            await self._store.run(tallies.start, first, last)
            if self._every:  # with lists, the first check does it: a baseline cycle must still find the DB empty
                await self._store.note_watching()
            self._first, self._launched, self._saved = first, last, last
            self._target = max(largest, last)
            self._started = True
            self._wake.set()

    def _raise_target(self, largest: int) -> None:
        if largest > self._target:
            self._target = largest
            self._wake.set()

    # -- handling each new item once --------------------------------------------------

    async def _launch_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._launch()

    async def _launch(self) -> None:
        """Start a handler for every id up to the target, a bounded number at a time."""
        async with self._launching:
            await self._launch_all()

    async def _launch_all(self) -> None:
        group = self._group
        if group is None:  # pragma: no cover - only called with a group open
            raise RuntimeError("no task group to handle items in")
        behind = self._target - self._launched
        if behind > self._catchup:
            if not await self._served(self._target):
                log.warning("stream: largest id %d announced but not served by HN: ignored", self._target)
                self._target = self._launched
                return
            log.warning(
                "stream: %d new items at once; the oldest %d are skipped (ALERTS_STREAM_CATCHUP=%d),"
                " and every count is taken again from a walk",
                behind,
                behind - self._catchup,
                self._catchup,
            )
            self._launched = self._target - self._catchup
            await self._recount()
        while self._launched < self._target:
            item_id = self._launched + 1
            if item_id in self._skip:
                self._skip.discard(item_id)
                self._launched = item_id
                continue
            await self._slots.acquire()
            self._launched = item_id
            self._in_flight.add(item_id)
            self._waiting[item_id] = asyncio.get_running_loop().create_future()
            group.create_task(self._handle(item_id))

    async def _served(self, item_id: int) -> bool:
        """Whether HN serves item ``item_id`` (a jump past the catch-up is believed only then)."""
        try:
            return await self._hn.item(item_id, priority=FIRST) is not None
        except FetchError as exc:
            log.warning("stream: item %d not read: %s", item_id, exc.reason)
            return False

    async def _recount(self) -> None:
        """Items were skipped: every running count may be short. Each story is walked again."""
        await self._store.run(tallies.forget_all)
        for story in self._stories.values():
            story.retry = True

    async def _handle(self, item_id: int) -> None:
        story: int | None = None
        try:
            story = await self._handle_item(item_id)
        except asyncio.CancelledError:
            # Not handled: it stays in flight, so the position saved on the way out stays below it.
            self._slots.release()
            raise
        except Exception as exc:
            log.error("item %d not handled: %r", item_id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._rows.append((item_id, None, None))
        self._settle(item_id, story)
        self._in_flight.discard(item_id)
        self._slots.release()
        self._dirty.set()
        self.handled += 1
        self.last_handled = time.monotonic()

    async def _handle_item(self, item_id: int) -> int | None:
        """Fetch a new item, find its story, count it; returns its story."""
        item = await self._fetch_new(item_id)
        if item is None:
            self._rows.append((item_id, None, None))
            return None
        kind = item.get("type")
        if kind in STORY_TYPES:
            if self._every and is_live(item):
                await self._new_story(item_id, item)
            self._settle(item_id, item_id)
            self._rows.append((item_id, item_id, None))
            return item_id
        parent = item.get("parent")
        story = await self._story_above(parent, item_id) if isinstance(parent, int) else None
        self._settle(item_id, story)  # its replies need not wait for the rest
        counts = story if story is not None and kind == "comment" and is_live(item) else None
        self._rows.append((item_id, story, counts))
        if counts is not None:
            when = item.get("time")
            await self._arrival(counts, float(when) if isinstance(when, int) else self._clock())
        return story

    async def _fetch_new(self, item_id: int) -> Item | None:
        """A new item, asked again while it is ``null`` (60 s in all) and while HN cannot be reached."""
        nulls = iter(NULL_WAITS)
        downs = 0
        while True:
            try:
                item = await self._hn.item(item_id)
            except (MalformedItemError, RejectedFetchError) as exc:
                log.warning("item %d counts nothing: %s", item_id, exc.reason)
                return None
            except FetchError as exc:
                downs += 1
                wait = down_wait(downs)
                self._log_down("item %d not fetched (%s); trying again in %g s", item_id, exc.reason, wait)
                await self._sleep(wait)
                continue
            if item is not None:
                return item
            pause = next(nulls, None)
            if pause is None:
                log.info("item %d still null after 60 s: counted as missing", item_id)
                return None
            await self._sleep(pause)

    def _log_down(self, message: str, *args: object) -> None:
        """A fetch failure: a warning at most once a minute (HN down fails every item in flight), else debug."""
        now = time.monotonic()
        loud = now - self._down_logged >= 60
        if loud:
            self._down_logged = now
        log.log(logging.WARNING if loud else logging.DEBUG, message, *args)

    def _settle(self, item_id: int, story: int | None) -> None:
        """``item_id`` belongs to ``story``: remember it, and wake whoever waits for that answer."""
        future = self._waiting.pop(item_id, None)
        if future is not None and not future.done():
            future.set_result(story)
        self._remember(item_id, story)

    def _remember(self, item_id: int, story: int | None) -> None:
        self._cache[item_id] = story
        if len(self._cache) > CACHE:
            for old in list(self._cache)[: CACHE // 10]:
                del self._cache[old]

    # -- attribution --------------------------------------------------------------------

    async def _story_above(self, parent: int, child: int) -> int | None:
        """:meth:`_attribute`, tried again while HN cannot be reached: a comment is never left uncounted."""
        downs = 0
        while True:
            try:
                return await self._attribute(parent, child)
            except (FetchError, StateError) as exc:
                downs += 1
                wait = down_wait(downs)
                self._log_down("item %d: parent %d not found out (%s); again in %g s", child, parent, exc, wait)
                await self._sleep(wait)

    async def _attribute(self, parent: int, child: int) -> int | None:
        """The story at the top of ``parent``'s chain, each unknown link fetched once and remembered.

        A link must be older than the item below it (a smaller id): a
        ``parent`` that points up or round in a circle ends the chain with
        no story. Waiting only ever goes to smaller ids, so two handlers can
        never wait for each other.
        """
        chain: list[int] = []
        try:
            story = await self._climb(parent, child, chain)
        except BaseException:
            for link in chain:  # nothing remembered: whoever waits asks again
                future = self._waiting.pop(link, None)
                if future is not None and not future.done():
                    future.set_result(ASK_AGAIN)
            raise
        for link in chain:
            self._settle(link, story)
            self._known.append((link, story))
        return story

    async def _climb(self, parent: int, child: int, chain: list[int]) -> int | None:
        """Walk up from ``parent``; each link this call claims is appended to ``chain``."""
        story: int | None = None
        current, below = parent, child
        while True:
            if current >= below or len(chain) >= MAX_CHAIN:
                log.warning("item %d: its parent chain is broken at %d, no story", child, current)
                break
            found, value = await self._lookup(current)
            if found:
                story = value
                break
            chain.append(current)  # ours to find out: others asking for it wait for our answer
            try:
                item = await self._hn.item(current)
            except (MalformedItemError, RejectedFetchError) as exc:
                log.warning("item %d: parent %d unreadable, no story: %s", child, current, exc.reason)
                break  # asking again will not mend it: remembered as no story
            if item is None:
                break
            if item.get("type") in STORY_TYPES:
                story = current
                break
            up = item.get("parent")
            if not isinstance(up, int):
                break
            current, below = up, current
        return story

    async def _lookup(self, item_id: int) -> tuple[bool, int | None]:
        """``(True, story)`` when ``item_id``'s story is known or being found out, else claim it: ``(False, None)``."""
        if item_id in self._cache:
            return True, self._cache[item_id]
        future = self._waiting.get(item_id)
        if future is not None:
            story = await asyncio.shield(future)
            return (True, story) if story != ASK_AGAIN else await self._lookup(item_id)
        mine: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiting[item_id] = mine
        try:
            stored = await self._store.run(tallies.stories_of, [item_id])
        except BaseException:
            self._waiting.pop(item_id, None)
            mine.set_result(ASK_AGAIN)
            raise
        if item_id in stored:
            self._settle(item_id, stored[item_id])
            return True, stored[item_id]
        return False, None

    # -- counting -------------------------------------------------------------------------

    async def _new_story(self, story_id: int, item: Item) -> None:
        """A story created while watching (``all``): counted from its first comment on, every tier alerts."""
        if story_id in self._stories:
            return
        title = Story.from_item(story_id, item).title
        self._stories[story_id] = _Story(
            count=item.get("descendants") or 0, title=title, busy=False, touched=time.monotonic()
        )
        await self._store.run(tallies.set_tally, story_id, self._stories[story_id].count, self._clock())

    async def _arrival(self, story_id: int, when: float) -> None:
        """One more live comment on ``story_id``."""
        story = self._stories.get(story_id)
        if story is None:
            if not self._every:
                return  # not watched
            story = _Story()
            if not self._spawn(self._load(story_id, story)):
                return  # pragma: no cover - comments are only handled inside a task group
            self._stories[story_id] = story
        story.touched = time.monotonic()
        if self._rules.velocity:
            story.arrivals.append(min(when, self._clock()))  # HN's clock may run ahead of ours
            self._trim(story)
        if story.busy:
            story.extra += 1
            return
        story.count += 1
        self._consider(story_id, story)

    async def _load(self, story_id: int, story: _Story) -> None:
        """A story first seen through a comment (``all``): its count from the state DB, else from HN."""
        try:
            stored = (await self._store.run(tallies.tallies, [story_id])).get(story_id)
            story.alerted = (await self._store.alerted_tiers([story_id])).get(story_id)
            story.heated = bool(await self._store.velocity_alerted([story_id]))
            story.owed = story_id in await self._store.baseline_owed()
            if stored is not None:
                story.count = stored
                story.title = (await self._store.run(snapshot.titles, [story_id])).get(story_id, "")
                return
            item = await self._hn.item(story_id, priority=FIRST)
            story.count = (item or {}).get("descendants") or 0
            story.extra = 0  # what arrived until now is in its descendants already
            story.title = Story.from_item(story_id, item or {}).title
            upcoming = next_tier(self._rules.tiers, story.alerted)
            if story_id < self._first and upcoming is not None and story.count >= upcoming * WALK_MARGIN:
                # It may have passed tiers before watching began: a walk tells which, before any alert.
                story.owed = True
                await self._store.owe_baseline(story_id, True)
            await self._store.run(tallies.set_tally, story_id, story.count, self._clock())
        except (FetchError, StateError) as exc:
            log.warning("story %d: not counted yet: %s", story_id, exc)
            self._stories.pop(story_id, None)
        except Exception as exc:
            log.error("story %d: not counted yet: %r", story_id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._stories.pop(story_id, None)
        finally:
            self._done(story_id, story)

    def _done(self, story_id: int, story: _Story) -> None:
        """The story is free again: what arrived meanwhile is added, and a crossing looked at."""
        story.count += story.extra
        story.extra = 0
        story.busy = False
        if self._stories.get(story_id) is story:
            self._consider(story_id, story)

    def _consider(self, story_id: int, story: _Story) -> None:
        """Walk the story when its count may have reached its next tier, or a velocity rule may be met."""
        if story.busy or time.monotonic() < story.recheck_at:
            return
        upcoming = next_tier(self._rules.tiers, story.alerted)
        due = story.owed or story.retry or (upcoming is not None and story.count >= upcoming)
        if not due and self._rules.velocity and not story.heated:
            due = self._trim(story) >= self._rules.velocity[0]
        if due:  # with no task group open yet, the next cycle takes it (see _reconsider)
            story.busy = self._spawn(self._confirm(story_id, story))

    def _trim(self, story: _Story) -> int:
        """Forget arrivals older than the velocity window; returns how many are left."""
        if self._rules.velocity:
            start = self._clock() - self._rules.velocity[1] * 60
            while story.arrivals and story.arrivals[0] < start:
                story.arrivals.popleft()
        return len(story.arrivals)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` in the open task group; false, and ``work`` dropped, when none is open."""
        if self._group is None:
            work.close()
            return False
        self._group.create_task(work)
        return True

    async def _confirm(self, story_id: int, story: _Story) -> None:
        """Walk the story; only the walked count decides which alert is due, and the count goes on from it."""
        try:
            await self._walk_and_decide(story_id, story)
        except FetchError as exc:
            story.retry = True
            story.recheck_at = time.monotonic() + self._interval
            log.warning("story %d not walked: %s; walked again next cycle", story_id, exc)
        except StateError as exc:
            story.recheck_at = time.monotonic() + self._interval
            log.error("story %d: %s", story_id, exc)
        except Exception as exc:
            story.recheck_at = time.monotonic() + self._interval
            log.error("story %d not walked: %r", story_id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            self._done(story_id, story)
            try:
                await self._store.run(tallies.set_tally, story_id, story.count, self._clock())
            except StateError as exc:
                log.error("story %d: count not saved: %s", story_id, exc)

    async def _walk_and_decide(self, story_id: int, story: _Story) -> None:
        item = await self._hn.item(story_id, priority=FIRST)
        if item is None or not is_live(item) or item.get("type") not in STORY_TYPES:
            story.recheck_at = time.monotonic() + self._interval
            return
        facts = Story.from_item(story_id, item)
        story.title = facts.title
        reason = self._rules.filtered_out(facts)
        if reason is not None and not story.owed:
            story.recheck_at = time.monotonic() + self._interval  # its score may rise: looked at again later
            log.debug("story %d: %s", story_id, reason)
            return
        result = await walk_kids(
            self._hn, story_id, item, max_items=self._max_comments, below=self._first, shapes=self._shapes
        )
        self._between.walked += 1
        if not result.complete:
            story.retry = True
            story.recheck_at = time.monotonic() + self._interval
            log.warning(
                "story %d: walk incomplete, %d item(s) not fetched; %d comments counted so far, walked again",
                story_id,
                result.failed,
                result.comments,
            )
        else:
            story.retry = False
            story.count = result.comments
            await self._store.save_walk(story_id, facts.descendants, result.comments)
        if story.owed:
            if not result.complete:
                return  # a partial count cannot tell which tiers were passed before watching began
            await self._take_baseline(facts, result.older, story)
        if reason is not None:
            return
        state = StoryState(alerted=story.alerted, heated=True)  # velocity: from arrivals, below
        verdict = decide(facts, result.comments, result.complete, state, self._rules, now=self._clock(), gap=0.0)
        alerts = list(verdict.alerts)
        if self._rules.velocity and not story.heated and result.complete:
            need, minutes = self._rules.velocity
            gain = self._trim(story)
            if gain >= need:
                alerts.append(Alert(facts, 0, result.comments, kind="velocity", gain=gain, minutes=minutes))
        for alert in alerts:
            await queue_alert(alert, False, self._store, self._outbox, self._between)
            if alert.kind == "velocity":
                story.heated = True
            else:
                story.alerted = max(alert.tier, story.alerted or 0)

    async def _take_baseline(self, facts: Story, older: int, story: _Story) -> None:
        """Record the tiers a story created before watching had passed by then: they send nothing."""
        tier = due_tier(older, self._rules.tiers, story.alerted)
        if tier is not None:
            await queue_alert(Alert(facts, tier, older), True, self._store, self._outbox, self._between)
            story.alerted = tier
        story.owed = False
        await self._store.owe_baseline(facts.id, False)

    # -- the lists (not with ``all``) -----------------------------------------------------

    async def _watch(self, ids: list[int], report: CycleReport) -> None:
        """Follow the stories now in the lists; a story that joins is counted once, as the poll source would."""
        listed = set(ids)
        gone = [s for s, story in self._stories.items() if s not in listed and not story.busy]
        for story_id in gone:
            del self._stories[story_id]
        if gone:
            await self._store.run(tallies.forget_tallies, gone)
        new = [s for s in ids if s not in self._stories]
        if not new:
            return
        joined = {s: _Story() for s in new}
        self._stories.update(joined)
        try:
            stored = await self._store.run(tallies.tallies, new)
            counts = await self._lists.check([s for s in new if s not in stored], report)
            titles = await self._store.run(snapshot.titles, list(stored))
            titles.update((story_id, title) for story_id, title, _count in report.watched)
            alerted = await self._store.alerted_tiers(new)
            heated = await self._store.velocity_alerted(new) if self._rules.velocity else set()
        except BaseException:
            for story_id in new:
                self._stories.pop(story_id, None)
            raise
        now = self._clock()
        for story_id, story in joined.items():
            base = stored.get(story_id, counts.get(story_id))
            if base is None:  # gone, not a story, or not counted this time: tried again next cycle
                self._stories.pop(story_id, None)
                continue
            story.count, story.alerted, story.heated = base, alerted.get(story_id), story_id in heated
            story.title = titles.get(story_id, "")
            if story_id in report.incomplete:  # a lower bound: walked again next cycle, as the log says
                story.retry = True
                story.recheck_at = time.monotonic() + self._interval
            if story_id not in stored:
                await self._store.run(tallies.set_tally, story_id, base + story.extra, now)
            self._done(story_id, story)

    def _reconsider(self) -> None:
        """Look at every story again: a failed walk is retried, a crossing seen with no task group taken."""
        for story_id, story in list(self._stories.items()):
            if not story.busy:
                if story.retry:
                    story.recheck_at = 0.0
                self._consider(story_id, story)

    # -- keeping the state DB small --------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._flush()

    async def _flush(self) -> None:
        """Write the handled items, their counts and the position (every id up to it handled) in one go."""
        last = min(self._in_flight) - 1 if self._in_flight else self._launched
        rows, known = self._rows, self._known
        if not rows and not known and last == self._saved:
            return
        self._rows, self._known = [], []
        try:
            await self._store.run(tallies.commit, rows, known, last, self._clock())
        except StateError as exc:
            log.error("stream: position not saved: %s", exc)
            self._rows[:0], self._known[:0] = rows, known
            return
        self._saved = last

    async def _tidy(self) -> None:
        """Forget old items and counts, and (``all``) the stories idle for an hour."""
        if self._every:
            idle = time.monotonic() - IDLE
            for story_id in [s for s, story in self._stories.items() if not story.busy and story.touched < idle]:
                del self._stories[story_id]
        if self._launched > KEEP_IDS:
            await self._store.run(tallies.prune, self._launched - KEEP_IDS)
