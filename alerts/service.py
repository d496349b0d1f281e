"""The service: poll cycles on a fixed-rate schedule, alerts queued and sent in the background."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from alerts import ledger
from alerts.config import Settings
from alerts.errors import FetchError, StateError
from alerts.hn import HNClient
from alerts.model import Alert, Item, Story
from alerts.outbox import Outbox
from alerts.rules import Rules, StoryState, decide, plan
from alerts.schedule import fixed_rate
from alerts.store import LastWalk, Store
from alerts.tasks import TaskRegistry
from alerts.walk import walk_kids

log = logging.getLogger(__name__)

#: After failed cycles in a row, cycles are skipped until at most this many seconds apart.
MAX_CYCLE_GAP = 600.0
#: The item types a story list holds that can alert; jobs and comments never do.
STORY_TYPES = ("story", "poll")


@dataclass
class CycleReport:
    """What one cycle did, for the cycle log line and for tests."""

    number: int
    stories: int = 0
    alerts: int = 0
    fetches: int = 0
    seconds: float = 0.0
    walked: int = 0
    filtered: int = 0
    fetches_saved: int = 0
    baseline: int = 0
    gated: int = 0
    incomplete: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    counts: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Known:
    """What the state DB knew about this cycle's stories when it began."""

    last: dict[int, LastWalk]
    alerted: dict[int, int]
    heated: set[int]
    history: dict[int, list[tuple[float, int]]]
    now: float
    baseline: bool
    owed: set[int]


class Service:
    """Runs cycles: read the story lists, count each story's comments, queue due alerts."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        hn: HNClient,
        store: Store,
        outbox: Outbox,
        registry: TaskRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._rules = rules
        self._hn = hn
        self._store = store
        self._outbox = outbox
        self._registry = registry
        self._clock = clock
        self._cycles = 0
        # How far before a velocity window a sample may lie and still stand for its start.
        self._sample_gap = 2 * settings.poll_interval + 60
        self._baseline: bool | None = None if settings.baseline else False
        self._failed_cycles = 0
        self._skip = 0

    async def dispatch_pending(self) -> int:
        """Start sends for what waits in the outbox."""
        return await self._outbox.dispatch()

    async def _baseline_cycle(self) -> bool:
        """Whether this cycle takes the baseline: the first on an empty DB, or one a crash cut short."""
        if self._baseline is None:
            state = await self._store.baseline_state()
            self._baseline = state == "running" or (state is None and await self._store.is_empty())
            if self._baseline:
                await self._store.set_baseline_state("running")
        return self._baseline

    async def run_cycle(self) -> CycleReport:
        """One poll cycle; never awaits a send."""
        self._cycles += 1
        report = CycleReport(self._cycles)
        loop = asyncio.get_running_loop()
        started, fetches = loop.time(), self._hn.fetches
        baseline = await self._baseline_cycle()
        await self.dispatch_pending()
        ids = await self._story_ids()
        report.stories = len(ids)
        known = _Known(
            last=await self._store.last_walks(ids),
            alerted=await self._store.alerted_tiers(ids),
            heated=await self._store.velocity_alerted(ids) if self._rules.velocity else set(),
            history=await self._store.count_history(ids) if self._rules.velocity else {},
            now=self._clock(),
            baseline=baseline,
            owed=await self._store.baseline_owed() if self._settings.baseline else set(),
        )
        async with asyncio.TaskGroup() as group:
            for story_id in ids:
                group.create_task(self._check(story_id, known, report))
        if self._rules.velocity:
            await self._store.record_counts(report.counts, self._rules.velocity[1] * 60 + self._sample_gap)
        await self._store.note_watching()
        if known.baseline:
            await self._store.set_baseline_state("done")
            self._baseline = False
            log.info("baseline: %d stories recorded, no mail", report.baseline)
        if self._settings.digest:
            # This cycle's alerts were only queued: the digest carries them. Without a digest each
            # was sent as it was queued, and a second pass would only retry sends that just failed.
            await self.dispatch_pending()
        report.fetches = self._hn.fetches - fetches
        report.seconds = loop.time() - started
        self._log(report)
        return report

    @staticmethod
    def _log(report: CycleReport) -> None:
        extra = ""
        if report.filtered:
            extra += f", {report.filtered} filtered out (~{report.fetches_saved} fetches saved)"
        if report.incomplete:
            extra += f", {len(report.incomplete)} incomplete"
        log.info(
            "cycle %d: %d stories, %d alerts, %d fetches, %.2f s%s",
            report.number,
            report.stories,
            report.alerts,
            report.fetches,
            report.seconds,
            extra,
        )

    async def _story_ids(self) -> list[int]:
        """The head of each configured list, merged in order without repeats."""
        names = self._settings.story_lists
        results = await asyncio.gather(*(self._hn.story_ids(n) for n in names), return_exceptions=True)
        ids: dict[int, None] = {}
        failures = 0
        for name, result in zip(names, results, strict=True):
            if isinstance(result, FetchError):
                failures += 1
                log.warning("list %s not read: %s", name, result)
                continue
            if isinstance(result, BaseException):
                raise result
            ids.update(dict.fromkeys(result[: self._settings.top_n]))
        if failures == len(names):
            raise FetchError(self._settings.hn_api_url, "no story list could be read")
        return list(ids)

    async def _check(self, story_id: int, known: _Known, report: CycleReport) -> None:
        """Check one story; whatever goes wrong stays with this story and this cycle."""
        try:
            await self._check_story(story_id, known, report)
            return
        except FetchError as exc:
            report.incomplete.append(story_id)
            log.warning("story %d not checked: %s", story_id, exc)
        except StateError as exc:
            report.errors.append(story_id)
            log.error("story %d not checked: %s", story_id, exc)
        except Exception as exc:
            report.errors.append(story_id)
            log.error("story %d not checked: %r", story_id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        if known.baseline:
            await self._owe_baseline(story_id, True)  # not counted: its baseline is taken when it can be

    async def _owe_baseline(self, story_id: int, owed: bool) -> None:
        try:
            await self._store.owe_baseline(story_id, owed)
        except StateError as exc:
            log.error("story %d: baseline not recorded: %s", story_id, exc)

    async def _check_story(self, story_id: int, known: _Known, report: CycleReport) -> None:
        item = await self._hn.item(story_id)
        if item is None or item.get("deleted") or item.get("dead"):
            return
        if item.get("type") not in STORY_TYPES:
            log.debug("item %d in a story list is a %s, not a story: never alerts", story_id, item.get("type"))
            return
        story = Story.from_item(story_id, item)
        last = known.last.get(story_id)
        state = StoryState(
            last_descendants=last.descendants if last else None,
            last_count=last.comments if last else None,
            alerted=known.alerted.get(story_id),
            heated=story_id in known.heated,
            history=tuple(known.history.get(story_id, ())),
            baseline=known.baseline or story_id in known.owed,
        )
        todo = plan(story, state, self._rules)
        if todo.action == "skip":
            if todo.why.startswith("filtered"):
                report.filtered += 1
                if story.descendants != state.last_descendants:  # a walk it would have needed
                    report.fetches_saved += story.descendants or 0
            else:
                report.gated += 1  # its descendants stands for its count
            log.debug("story %d: %s", story_id, todo.why)
            return
        if todo.action == "last":
            count, complete = state.last_count or 0, True
        else:
            count, complete = await self._walk(story, item, report)
        verdict = decide(story, count, complete, state, self._rules, now=known.now, gap=self._sample_gap)
        if verdict.sample:  # a partial count would fake a jump in the velocity history
            report.counts.append((story_id, count))
        for alert in verdict.alerts:
            await self._queue(alert, verdict.baseline, report)
        if verdict.owe_baseline is not None and (verdict.owe_baseline or story_id in known.owed):
            await self._store.owe_baseline(story_id, verdict.owe_baseline)

    async def _walk(self, story: Story, item: Item, report: CycleReport) -> tuple[int, bool]:
        """The story's count, and whether the walk fetched every item it tried."""
        result = await walk_kids(self._hn, story.id, item, max_items=self._settings.max_comments)
        report.walked += 1
        if result.complete:
            await self._store.save_walk(story.id, story.descendants, result.comments)
        else:
            report.incomplete.append(story.id)
            log.warning(
                "story %d: walk incomplete, %d item(s) not fetched; %d comments counted so far,"
                " walked again next cycle",
                story.id,
                result.failed,
                result.comments,
            )
        return result.comments, result.complete

    async def _queue(self, alert: Alert, baseline: bool, report: CycleReport) -> None:
        story = alert.story
        if baseline:
            if await self._store.record_baseline(alert):
                report.baseline += 1
                log.debug("baseline: story %d recorded at tier %d, no mail", story.id, alert.tier)
            return
        state = await self._outbox.queue(alert)
        if state is None:
            return
        report.alerts += 1
        what = f"+{alert.gain} in {alert.minutes} min" if alert.kind == "velocity" else f"tier {alert.tier}"
        state = "held for quiet hours" if state == "held" else state
        log.info("alert %s: story %d %r, %d comments (%s)", state, story.id, story.title, alert.comments, what)

    async def _safe_cycle(self) -> None:
        """One cycle whose failure is logged; after failures in a row, cycles are skipped (exponential backoff)."""
        if self._skip:
            self._skip -= 1
            log.debug("cycle skipped: backing off after %d failed cycle(s)", self._failed_cycles)
            return
        try:
            await self.run_cycle()
        except FetchError as exc:
            self._backoff()
            log.warning("cycle %d failed: %s; %s", self._cycles, exc, self._next_cycle())
        except Exception:
            self._backoff()
            log.exception("cycle %d failed; %s", self._cycles, self._next_cycle())
        else:
            self._failed_cycles = 0

    def _backoff(self) -> None:
        """Skip 0, 1, 3, 7 ... ticks after 1, 2, 3, 4 ... failed cycles in a row, up to 10 minutes apart."""
        self._failed_cycles += 1
        most = max(0, int(MAX_CYCLE_GAP // self._settings.poll_interval) - 1)
        self._skip = min(2 ** min(self._failed_cycles - 1, 30) - 1, most)

    def _next_cycle(self) -> str:
        if not self._skip:
            return "the service goes on"
        wait = (self._skip + 1) * self._settings.poll_interval
        return f"backing off: the next cycle in {wait:g} s ({self._failed_cycles} failed in a row)"

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle at a fixed rate until ``stop`` is set, then cancel the cycle and drain sends."""
        try:
            await _until(fixed_rate(self._safe_cycle, self._settings.poll_interval), stop)
        finally:
            await self.drain()

    async def run_once(self, stop: asyncio.Event | None = None) -> bool:
        """One cycle, then deliver everything due; true when every due alert went out.

        The cycle hands the outbox's pending entries to the registry before it
        reads HN, so they go out even when the cycle fails (its error is
        raised after the drain) or ``stop`` cuts it short.
        """
        stop = stop or asyncio.Event()
        started = self._store.now()
        reports: list[CycleReport] = []

        async def cycle() -> None:
            failure: Exception | None = None
            try:
                reports.append(await self.run_cycle())
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the sends it started are delivered
                failure = exc
            await self._registry.join()  # --once waits for its sends, their tries and backoff included
            if failure is not None:
                raise failure

        try:
            await _until(cycle(), stop)
        finally:
            await self.drain()
        delivered = await self._all_delivered(started)
        errors = sum(len(r.errors) for r in reports)
        if errors:
            log.warning("%d story(ies) could not be checked; an alert may be due there", errors)
        return delivered and not errors

    async def drain(self) -> None:
        """Give sends in flight up to ALERTS_SHUTDOWN_TIMEOUT, then cancel them."""
        await self._registry.drain(self._settings.shutdown_timeout)

    async def _all_delivered(self, since: float) -> bool:
        undelivered = await self._store.run(ledger.undelivered, since, self._outbox.quiet())
        if undelivered:
            log.warning("%d alert(s) not delivered; the ones not refused for good are kept in the outbox", undelivered)
        return undelivered == 0


async def _until(work: Coroutine[Any, Any, Any], stop: asyncio.Event) -> None:
    """Await ``work`` unless ``stop`` is set first; then cancel it and wait for it to end."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            t.cancel()
        await asyncio.wait({task, stopper})
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
