"""The service: poll cycles on a fixed-rate schedule, alerts queued and sent in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from alerts.config import Settings
from alerts.errors import FetchError, StateError
from alerts.hn import HNClient
from alerts.model import Alert, Story
from alerts.notify import Notifier
from alerts.rules import due_tier, needs_walk
from alerts.schedule import fixed_rate
from alerts.store import Key, LastWalk, Store
from alerts.tasks import TaskRegistry
from alerts.walk import walk_kids

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    """What one cycle did, for the cycle log line and for tests."""

    number: int
    stories: int = 0
    alerts: int = 0
    fetches: int = 0
    seconds: float = 0.0
    walked: int = 0
    incomplete: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)


class Service:
    """Runs cycles: read the story lists, count each story's comments, queue due alerts."""

    def __init__(
        self,
        settings: Settings,
        hn: HNClient,
        store: Store,
        notifier: Notifier,
        registry: TaskRegistry,
    ) -> None:
        self._settings = settings
        self._hn = hn
        self._store = store
        self._notifier = notifier
        self._registry = registry
        self._cycles = 0
        self._track = False
        self.dispatched: set[Key] = set()

    async def dispatch_pending(self) -> int:
        """Start a send for every outbox entry not already being sent."""
        started = 0
        for key in await self._store.pending():
            if self._spawn(key):
                started += 1
        return started

    def _spawn(self, key: Key) -> bool:
        task = self._registry.spawn(key, self._notifier.deliver(key))
        if task is not None and self._track:
            self.dispatched.add(key)
        return task is not None

    async def run_cycle(self) -> CycleReport:
        """One poll cycle; never awaits a send."""
        self._cycles += 1
        report = CycleReport(self._cycles)
        loop = asyncio.get_running_loop()
        started, fetches = loop.time(), self._hn.fetches
        await self.dispatch_pending()
        ids = await self._story_ids()
        report.stories = len(ids)
        last = await self._store.last_walks(ids)
        alerted = await self._store.alerted_tiers(ids)
        async with asyncio.TaskGroup() as group:
            for story_id in ids:
                group.create_task(self._check(story_id, last.get(story_id), alerted.get(story_id), report))
        report.fetches = self._hn.fetches - fetches
        report.seconds = loop.time() - started
        extra = f", {len(report.incomplete)} incomplete" if report.incomplete else ""
        log.info(
            "cycle %d: %d stories, %d alerts, %d fetches, %.2f s%s",
            report.number,
            report.stories,
            report.alerts,
            report.fetches,
            report.seconds,
            extra,
        )
        return report

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

    async def _check(self, story_id: int, last: LastWalk | None, alerted: int | None, report: CycleReport) -> None:
        """Check one story; whatever goes wrong stays with this story and this cycle."""
        try:
            await self._check_story(story_id, last, alerted, report)
        except FetchError as exc:
            report.incomplete.append(story_id)
            log.warning("story %d not checked: %s", story_id, exc)
        except StateError as exc:
            report.errors.append(story_id)
            log.error("story %d not checked: %s", story_id, exc)
        except Exception as exc:
            report.errors.append(story_id)
            log.error("story %d not checked: %r", story_id, exc, exc_info=log.isEnabledFor(logging.DEBUG))

    async def _check_story(
        self, story_id: int, last: LastWalk | None, alerted: int | None, report: CycleReport
    ) -> None:
        item = await self._hn.item(story_id)
        if item is None or item.get("deleted") or item.get("dead"):
            return
        story = Story.from_item(story_id, item)
        if last is not None and not needs_walk(story.descendants, last.descendants):
            count = last.comments
        else:
            result = await walk_kids(self._hn, story_id, item, max_items=self._settings.max_comments)
            report.walked += 1
            count = result.comments
            if result.complete:
                await self._store.save_walk(story_id, story.descendants, count)
            else:
                report.incomplete.append(story_id)
                log.warning(
                    "story %d: walk incomplete, %d item(s) not fetched; %d comments counted so far,"
                    " walked again next cycle",
                    story_id,
                    result.failed,
                    count,
                )
        tier = due_tier(count, self._settings.comment_threshold, alerted)
        if tier is None:
            return
        alert = Alert(story, tier, count)
        if await self._store.enqueue(alert):
            report.alerts += 1
            log.info("alert queued: story %d %r, %d comments (tier %d)", story.id, story.title, count, tier)
            self._spawn(alert.key)

    async def _safe_cycle(self) -> None:
        try:
            await self.run_cycle()
        except FetchError as exc:
            log.warning("cycle %d failed: %s; the service goes on", self._cycles, exc)
        except Exception:
            log.exception("cycle %d failed; the service goes on", self._cycles)

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
        self._track = True
        reports: list[CycleReport] = []

        async def cycle() -> None:
            reports.append(await self.run_cycle())

        try:
            await _until(cycle(), stop or asyncio.Event())
        finally:
            await self.drain()
        delivered = await self._all_delivered()
        errors = sum(len(r.errors) for r in reports)
        if errors:
            log.warning("%d story(ies) could not be checked; an alert may be due there", errors)
        return delivered and not errors

    async def drain(self) -> None:
        """Give sends in flight up to ALERTS_SHUTDOWN_TIMEOUT, then cancel them."""
        await self._registry.drain(self._settings.shutdown_timeout)

    async def _all_delivered(self) -> bool:
        undelivered = 0
        for key in sorted(self.dispatched):
            entry = await self._store.get(key)
            if entry is None or entry.status != "sent":
                undelivered += 1
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
