"""Pure parts: tier rules, the fixed-rate schedule and the task registry."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest

from alerts.limiter import PriorityLimiter
from alerts.rules import due_tier, needs_walk
from alerts.schedule import fixed_rate
from alerts.tasks import TaskRegistry

TIERS = (50, 100, 250)


@pytest.mark.parametrize(
    ("count", "alerted", "due"),
    [
        (49, None, None),
        (50, None, 50),
        (99, 50, None),
        (100, 50, 100),
        (300, None, 250),  # a jump past every tier: one alert, for the highest
        (300, 50, 250),
        (260, 250, None),
        (120, 250, None),  # the count fell: nothing new
    ],
)
def test_due_tier(count: int, alerted: int | None, due: int | None) -> None:
    """A story alerts once per tier, for the highest tier reached, never below one already sent."""
    assert due_tier(count, TIERS, alerted) == due


def test_needs_walk_only_when_descendants_changed() -> None:
    """An unchanged descendants count skips the walk; a change or no record walks when counts are needed."""
    assert not needs_walk(10, 10)
    assert needs_walk(11, 10)
    assert needs_walk(10, None)
    assert needs_walk(None, 10)


@pytest.mark.parametrize(
    ("descendants", "last", "alerted", "counts_needed", "walk"),
    [
        (89, None, None, False, False),  # never walked, below 90% of the first tier (100)
        (90, None, None, False, True),  # exactly 90%: could have reached it
        (89, 80, None, False, False),  # changed, still below
        (90, 80, None, False, True),
        (90, 90, None, False, False),  # unchanged: the last count stands
        (224, 100, 100, False, False),  # next tier 250: 90% is 225
        (225, 100, 100, False, True),
        (5_000, 4_000, 1_000, False, False),  # every tier behind it
        (5_000, 4_000, 1_000, True, True),  # unless a rule needs its count (velocity)
        (10, 9, None, True, True),
        (None, 10, 1_000, False, True),  # descendants unknown: always walk
    ],
)
def test_a_changed_story_is_walked_only_near_its_next_tier(
    descendants: int | None, last: int | None, alerted: int | None, counts_needed: bool, walk: bool
) -> None:
    """Poll source: a changed story is walked only within 10% below its next tier, or when its count is needed."""
    tiers = (100, 250, 1_000)
    assert needs_walk(descendants, last, tiers, alerted, counts_needed=counts_needed) is walk


class VirtualTime:
    """A clock and sleep that only move when told to: cycles take `durations` seconds each."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 100.0
        self.durations = durations
        self.starts: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"slept {seconds} s"
        self.now += seconds

    async def tick(self) -> None:
        self.starts.append(self.now)
        self.now += self.durations[len(self.starts) - 1]


def overrun_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "longer than ALERTS_POLL_INTERVAL" in r.getMessage()]


@pytest.mark.parametrize("interval", [0.25, 2.5])
async def test_cycles_start_at_a_fixed_rate(interval: float, caplog: pytest.LogCaptureFixture) -> None:
    """Cycle k starts at exactly t0 + k x interval, however long each cycle took within its slot."""
    vt = VirtualTime([f * interval for f in (0.1, 0.9, 0.5, 0.0, 0.7, 0.3)])
    with caplog.at_level(logging.WARNING):
        await fixed_rate(vt.tick, interval, clock=vt.clock, sleep=vt.sleep, ticks=6)
    assert vt.starts == pytest.approx([100.0 + k * interval for k in range(6)], rel=0, abs=1e-9)
    assert overrun_warnings(caplog) == []


@pytest.mark.parametrize("interval", [0.25, 2.5])
async def test_a_cycle_that_fills_its_slot_exactly_is_not_an_overrun(
    interval: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A cycle ending exactly where the next slot starts is on time: no warning, the rate is kept."""
    vt = VirtualTime([interval] * 4)
    with caplog.at_level(logging.WARNING):
        await fixed_rate(vt.tick, interval, clock=vt.clock, sleep=vt.sleep, ticks=4)
    assert vt.starts == [100.0 + k * interval for k in range(4)]
    assert overrun_warnings(caplog) == []


@pytest.mark.parametrize(
    ("interval", "durations", "starts"),
    [
        # 2.5 s: the 2nd cycle (102.5) takes 4 s, ends at 106.5 past its slot (105.0); the 3rd starts
        # then, and the fixed rate goes on from there: 109.0, 111.5.
        (2.5, [0.5, 4.0, 1.0, 0.3, 0.2], [100.0, 102.5, 106.5, 109.0, 111.5]),
        # An overrun of several slots: the missed ones are not made up for.
        (2.5, [7.9, 0.1, 0.1], [100.0, 107.9, 110.4]),
        # 0.25 s: the 2nd cycle takes 0.6 s (ends 100.85 > 100.5).
        (0.25, [0.05, 0.6, 0.1, 0.1, 0.1], [100.0, 100.25, 100.85, 101.1, 101.35]),
    ],
    ids=["2.5s", "2.5s-several-slots", "0.25s"],
)
async def test_overrunning_cycle_is_logged_and_the_next_starts_when_it_ends(
    interval: float, durations: list[float], starts: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """A late cycle never overlaps the next: that one starts when it ends, and the fixed rate continues from there."""
    vt = VirtualTime(durations)
    with caplog.at_level(logging.WARNING):
        await fixed_rate(vt.tick, interval, clock=vt.clock, sleep=vt.sleep, ticks=len(durations))
    assert vt.starts == pytest.approx(starts, rel=0, abs=1e-9)
    [warning] = overrun_warnings(caplog)
    assert f"cycle took {max(durations):.2f} s" in warning and f"ALERTS_POLL_INTERVAL={interval:g} s" in warning


async def test_registry_keeps_a_reference_until_done(caplog: pytest.LogCaptureFixture) -> None:
    """The registry's own reference is what keeps a running task from being garbage-collected."""
    registry = TaskRegistry()
    results: list[str] = []
    # Only a weak reference to the future the task waits on leaves the coroutine: holding the future
    # itself would hold the task too (through the future's wake-up callback).
    futures: list[weakref.ref[asyncio.Future[str]]] = []

    async def job() -> None:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        futures.append(weakref.ref(future))
        results.append(await future)

    spawned = registry.spawn("a", job())
    assert spawned is not None
    task = weakref.ref(spawned)
    del spawned
    await asyncio.sleep(0)  # the task runs up to its await: the loop's ready queue no longer holds it
    assert futures, "the task never started"
    gc.collect()
    assert task() is not None, "the running task was garbage-collected: the registry does not own it"
    assert "a" in registry and len(registry) == 1
    future = futures[0]()
    assert future is not None
    future.set_result("done")
    del future
    await registry.join()
    assert results == ["done"] and len(registry) == 0
    gc.collect()
    assert task() is None, "the registry still holds the finished task"
    assert "Task was destroyed" not in caplog.text


async def test_registry_refuses_a_second_task_for_a_running_key() -> None:
    """One task per key: a duplicate spawn is dropped (its coroutine closed, never run)."""
    registry = TaskRegistry()
    gate = asyncio.Event()
    runs: list[int] = []

    async def job(n: int) -> None:
        runs.append(n)
        await gate.wait()

    assert registry.spawn("k", job(1)) is not None
    assert registry.spawn("k", job(2)) is None
    gate.set()
    await registry.join()
    assert runs == [1]


async def test_registry_logs_a_failed_task(caplog: pytest.LogCaptureFixture) -> None:
    """A task's exception is logged and counted, not lost."""
    registry = TaskRegistry()

    async def boom() -> None:
        raise RuntimeError("smtp exploded")

    registry.spawn("x", boom())
    await registry.join()
    assert registry.failures == 1
    assert "smtp exploded" in caplog.text


async def test_drain_waits_then_cancels_what_is_left() -> None:
    """drain lets quick tasks finish, cancels slow ones after the timeout, and leaves none pending."""
    registry = TaskRegistry()
    finished: list[str] = []
    cancelled: list[str] = []

    async def job(name: str, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
            finished.append(name)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    registry.spawn("quick", job("quick", 0.01))
    registry.spawn("slow", job("slow", 30))
    assert await registry.drain(0.5) == 1
    assert (finished, cancelled, len(registry)) == (["quick"], ["slow"], 0)
    assert registry.spawn("late", job("late", 0)) is None


async def test_priority_limiter_serves_the_lowest_priority_first() -> None:
    """With the only slot taken, waiters go in priority order (ties first-come), never more than the limit."""
    limiter = PriorityLimiter(1)
    order: list[str] = []
    await limiter.acquire()

    async def waiter(name: str, priority: float) -> None:
        await limiter.acquire(priority)
        order.append(name)
        limiter.release()

    tasks = [asyncio.create_task(waiter(n, p)) for n, p in (("shallow", 0), ("deep", -5), ("deeper", -9), ("tie", 0))]
    await asyncio.sleep(0)
    limiter.release()
    await asyncio.gather(*tasks)
    assert order == ["deeper", "deep", "shallow", "tie"]


async def test_priority_limiter_survives_a_cancelled_waiter() -> None:
    """A waiter cancelled in the queue, or just as it was handed the slot, does not leak the slot."""
    limiter = PriorityLimiter(1)
    await limiter.acquire()
    queued = asyncio.create_task(limiter.acquire(-1))
    await asyncio.sleep(0)
    queued.cancel()
    handed = asyncio.create_task(limiter.acquire(0))
    await asyncio.sleep(0)
    limiter.release()
    await asyncio.sleep(0)  # the slot is handed to `handed` ...
    handed.cancel()  # ... which is cancelled before it runs: the slot must come back
    for task in (queued, handed):
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(limiter.acquire(), 1)
