"""A concurrency limit whose waiters are served by priority, not arrival.

Under a cap, first-in-first-out lets a deep reply chain wait behind every
request of the wide levels queued before it, so the walk takes far longer
than its depth requires. Serving the deepest waiting request first keeps the
longest path moving while the wide levels fill the remaining slots.

A freed slot is handed on a moment later (the next turn of the event loop),
not inside ``release()``: the task that released it runs on to its next
request first, so the next link of a reply chain competes for the slot its
parent just left instead of waiting a whole round behind items queued
before it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PriorityLimiter:
    """At most ``limit`` holders at once; the waiter with the lowest ``priority`` goes next.

    Ties go first-come-first-served. A released slot with waiters queued is
    not free in between: it is handed to the best waiter on the next turn of
    the event loop, so nothing jumps the queue, and a request the releasing
    task makes right away is among those it chooses from.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._free = limit
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        """How many acquirers are queued (cancelled ones may still be counted until skipped)."""
        return len(self._waiters)

    async def acquire(self, priority: float = 0.0) -> None:
        """Take a slot, waiting behind every lower ``priority`` value."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            raise

    def release(self) -> None:
        """Give the slot to the best live waiter (on the next turn of the loop), or free it."""
        if self._waiters:
            asyncio.get_running_loop().call_soon(self._hand_on)
        else:
            self._free += 1

    def _hand_on(self) -> None:
        while self._waiters:
            _priority, _n, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
