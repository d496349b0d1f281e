"""The task registry: fire-and-forget sends that are still owned.

``spawn`` starts a task and keeps a strong reference to it (the event loop
keeps only a weak one); a done-callback forgets it and logs its failure.
``drain`` waits for what is running, at most a timeout, then cancels the rest
and waits for the cancellations to finish, so no task is ever destroyed
while pending.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Hashable, Iterator
from typing import Any

log = logging.getLogger(__name__)


class TaskRegistry:
    """Owns background tasks, at most one per key."""

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[Any]] = {}
        self._closed = False
        self.failures = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._tasks

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._tasks))

    def spawn(self, key: Hashable, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run ``coro`` as a task owned by the registry.

        Returns ``None`` (and closes ``coro``) when a task with this key is
        still running or the registry is draining.
        """
        if self._closed or key in self._tasks:
            coro.close()
            return None
        task = asyncio.create_task(coro, name=f"send {key}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))
        return task

    def _forget(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failures += 1
            log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    async def join(self) -> None:
        """Wait until every task (including ones spawned meanwhile) has finished."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def drain(self, timeout: float) -> int:  # noqa: ASYNC109 - a budget, not a cancel scope
        """Stop taking tasks, wait up to ``timeout`` s, cancel the rest.

        Returns how many tasks had to be cancelled.
        """
        self._closed = True
        if not self._tasks:
            return 0
        log.info("draining %d send(s), up to %.1f s", len(self._tasks), timeout)
        _done, pending = await asyncio.wait(list(self._tasks.values()), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "cancelled %d send(s) still running after %.1f s; they stay in the outbox",
                len(pending),
                timeout,
            )
            await asyncio.wait(pending)
        return len(pending)
