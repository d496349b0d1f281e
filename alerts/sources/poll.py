"""The poll source: read the story lists every interval, walk the stories that may have crossed a tier."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from alerts.errors import FetchError, StateError
from alerts.hn import HNClient
from alerts.model import Alert, Item, Story
from alerts.outbox import Outbox
from alerts.rules import Rules, StoryState, decide, plan
from alerts.sources import CycleReport, queue_alert
from alerts.store import LastWalk, Store
from alerts.walk import Shapes, walk_kids

log = logging.getLogger(__name__)

#: The item types a story list holds that can alert; jobs and comments never do.
STORY_TYPES = ("story", "poll")


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


class PollSource:
    """Each cycle: the head of each story list, each story checked concurrently, due alerts queued."""

    name = "poll"

    def __init__(
        self,
        rules: Rules,
        hn: HNClient,
        store: Store,
        outbox: Outbox,
        *,
        api_url: str,
        story_lists: tuple[str, ...],
        top_n: int,
        max_comments: int,
        baseline: bool,
        sample_gap: float,
        shapes: Shapes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = rules
        self._hn = hn
        self._store = store
        self._outbox = outbox
        self._api_url = api_url
        self._lists = story_lists
        self._top_n = top_n
        self._max_comments = max_comments
        self._shapes = Shapes() if shapes is None else shapes
        self._use_baseline = baseline
        # How far before a velocity window a sample may lie and still stand for its start.
        self._sample_gap = sample_gap
        self._clock = clock
        self._baseline: bool | None = None if baseline else False

    async def follow(self) -> None:
        """Nothing happens between poll cycles."""

    async def _baseline_cycle(self) -> bool:
        """Whether this cycle takes the baseline: the first on an empty DB, or one a crash cut short."""
        if self._baseline is None:
            state = await self._store.baseline_state()
            self._baseline = state == "running" or (state is None and await self._store.is_empty())
            if self._baseline:
                await self._store.set_baseline_state("running")
        return self._baseline

    async def cycle(self, number: int) -> CycleReport:
        """One poll cycle; never awaits a send."""
        report = CycleReport(number)
        ids = await self.story_ids()
        report.stories = len(ids)
        await self.check(ids, report)
        return report

    async def check(self, ids: list[int], report: CycleReport) -> dict[int, int]:
        """Check these stories as one cycle does; returns the count each one stands at.

        That is the count of its walk, or of its last walk when it has not
        changed, or its ``descendants`` when it was not walked (filtered out, or
        far below its next tier). Stories that are gone, or no stories, have none.
        """
        baseline = await self._baseline_cycle()
        known = _Known(
            last=await self._store.last_walks(ids),
            alerted=await self._store.alerted_tiers(ids),
            heated=await self._store.velocity_alerted(ids) if self._rules.velocity else set(),
            history=await self._store.count_history(ids) if self._rules.velocity else {},
            now=self._clock(),
            baseline=baseline,
            owed=await self._store.baseline_owed() if self._use_baseline else set(),
        )
        counts: dict[int, int] = {}
        async with asyncio.TaskGroup() as group:
            for story_id in ids:
                group.create_task(self._check(story_id, known, report, counts))
        if self._rules.velocity:
            await self._store.record_counts(report.counts, self._rules.velocity[1] * 60 + self._sample_gap)
        await self._store.note_watching()
        if known.baseline:
            await self._store.set_baseline_state("done")
            self._baseline = False
            log.info("baseline: %d stories recorded, no mail", report.baseline)
        return counts

    async def story_ids(self) -> list[int]:
        """The head of each configured list, merged in order without repeats."""
        names = self._lists
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
            ids.update(dict.fromkeys(result[: self._top_n]))
        if failures == len(names):
            raise FetchError(self._api_url, "no story list could be read")
        return list(ids)

    async def _check(self, story_id: int, known: _Known, report: CycleReport, counts: dict[int, int]) -> None:
        """Check one story; whatever goes wrong stays with this story and this cycle."""
        try:
            count = await self._check_story(story_id, known, report)
            if count is not None:
                counts[story_id] = count
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

    async def _check_story(self, story_id: int, known: _Known, report: CycleReport) -> int | None:
        item = await self._hn.item(story_id)
        if item is None or item.get("deleted") or item.get("dead"):
            return None
        if item.get("type") not in STORY_TYPES:
            log.debug("item %d in a story list is a %s, not a story: never alerts", story_id, item.get("type"))
            return None
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
            report.watched.append((story_id, story.title, story.descendants or 0))
            return story.descendants or 0
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
        report.watched.append((story_id, story.title, count))
        return count

    async def _walk(self, story: Story, item: Item, report: CycleReport) -> tuple[int, bool]:
        """The story's count, and whether the walk fetched every item it tried."""
        result = await walk_kids(self._hn, story.id, item, max_items=self._max_comments, shapes=self._shapes)
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
        await queue_alert(alert, baseline, self._store, self._outbox, report)
