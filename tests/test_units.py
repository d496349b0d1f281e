"""Pure parts: tier rules, the fixed-rate schedule and the task registry."""

from __future__ import annotations

import asyncio
import gc
import logging

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
    """An unchanged descendants count skips the walk; a change or no record walks."""
    assert not needs_walk(10, 10)
    assert needs_walk(11, 10)
    assert needs_walk(10, None)
    assert needs_walk(None, 10)


class VirtualTime:
    """A clock and sleep that only move when told to: cycles take `durations` seconds each."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 100.0
        self.durations = durations
        self.starts: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    async def tick(self) -> None:
        self.starts.append(self.now)
        self.now += self.durations[len(self.starts) - 1]


async def test_cycles_start_at_a_fixed_rate() -> None:
    """Cycle k starts at t0 + k x interval, however long each cycle took within its slot."""
    vt = VirtualTime([0.1, 0.9, 0.5, 0.0, 0.7])
    await fixed_rate(vt.tick, 1.0, clock=vt.clock, sleep=vt.sleep, ticks=5)
    assert vt.starts == pytest.approx([100.0, 101.0, 102.0, 103.0, 104.0])


async def test_overrunning_cycle_is_logged_and_the_next_starts_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cycle longer than the interval never overlaps the next, which starts at its end."""
    vt = VirtualTime([0.2, 2.5, 0.2, 0.2])
    with caplog.at_level(logging.WARNING):
        await fixed_rate(vt.tick, 1.0, clock=vt.clock, sleep=vt.sleep, ticks=4)
    assert vt.starts == pytest.approx([100.0, 101.0, 103.5, 104.5])
    assert "longer than ALERTS_POLL_INTERVAL" in caplog.text


async def test_registry_keeps_a_reference_until_done() -> None:
    """A spawned task survives garbage collection while running and is forgotten when done."""
    registry = TaskRegistry()
    gate = asyncio.Event()

    async def job() -> str:
        await gate.wait()
        return "done"

    task = registry.spawn("a", job())
    assert task is not None
    del task
    gc.collect()
    assert "a" in registry and len(registry) == 1
    gate.set()
    await registry.join()
    assert len(registry) == 0


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
    limiter.release()  # hands the slot to `handed` ...
    handed.cancel()  # ... which is cancelled before it runs: the slot must come back
    for task in (queued, handed):
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(limiter.acquire(), 1)
