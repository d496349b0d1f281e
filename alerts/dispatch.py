"""Which outbox entries go out now, and how: one mail each, one digest, or held for quiet hours.

The crawler never awaits a send: every send here is a task owned by the
registry, at most one per key (``("digest",)`` for the digest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from alerts.notify import Notifier
from alerts.rules import Rules
from alerts.store import Key, Store
from alerts.tasks import TaskRegistry

log = logging.getLogger(__name__)

DIGEST_KEY = ("digest",)


class Dispatcher:
    """Hands outbox entries to the registry according to ALERTS_DIGEST and ALERTS_QUIET_HOURS."""

    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        registry: TaskRegistry,
        rules: Rules,
        *,
        digest: bool,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._registry = registry
        self._rules = rules
        self._digest = digest
        self._clock = clock
        self.track = False
        self.dispatched: set[Key] = set()

    def quiet(self) -> bool:
        """True while the quiet hours hold every mail back."""
        return self._rules.quiet(self._clock())

    def send_now(self, key: Key) -> None:
        """Start the send of one newly queued alert, unless a digest or quiet hours will carry it."""
        if not self._digest and not self.quiet():
            self._spawn_one(key)

    async def dispatch_pending(self) -> int:
        """Start sends for what waits in the outbox; returns how many alerts were handed over."""
        if self.quiet():
            return 0
        pending = [(key, held) for key, held in await self._store.pending_held() if key not in self._registry]
        if not pending:
            return 0
        held = [key for key, was_held in pending if was_held]
        if self._digest:
            return self._spawn_digest([key for key, _ in pending], held=bool(held))
        started = self._spawn_digest(held, held=True) if held else 0
        for key, was_held in pending:
            if not was_held and self._spawn_one(key):
                started += 1
        return started

    def _spawn_one(self, key: Key) -> bool:
        task = self._registry.spawn(key, self._notifier.deliver(key))
        if task is not None and self.track:
            self.dispatched.add(key)
        return task is not None

    def _spawn_digest(self, keys: list[Key], *, held: bool) -> int:
        task = self._registry.spawn(DIGEST_KEY, self._notifier.deliver_digest(keys, held=held))
        if task is None:
            return 0  # a digest is on its way; these go in the next one
        if self.track:
            self.dispatched.update(keys)
        return len(keys)
