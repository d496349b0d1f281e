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
        self._more = False
        self.track = False
        self.dispatched: set[Key] = set()

    def quiet(self) -> bool:
        """True while the quiet hours hold every mail back."""
        return self._rules.quiet(self._clock())

    def send_now(self, key: Key) -> None:
        """Start the send of one newly queued (not held) alert, unless the digest will carry it."""
        if not self._digest:
            self._spawn_one(key)

    async def dispatch_pending(self) -> int:
        """Start sends for what waits in the outbox; returns how many alerts were handed over."""
        if self.quiet():
            # Whatever waits now, retries included, leaves in the one digest after the quiet hours.
            await self._store.hold_pending()
            return 0
        pending = [(key, held) for key, held in await self._store.pending_held() if key not in self._registry]
        if not pending:
            return 0
        held = [key for key, was_held in pending if was_held]
        if self._digest:
            return self._spawn_digest([key for key, _ in pending], held=len(held) == len(pending))
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
        if self.track:
            self.dispatched.update(keys)
        if DIGEST_KEY in self._registry:
            self._more = True  # a digest is on its way; the same task sends these right after it
            return 0
        self._registry.spawn(DIGEST_KEY, self._digests(keys, held))
        return len(keys)

    async def _digests(self, keys: list[Key], held: bool) -> None:
        """Send one digest, then one more for what was queued meanwhile (once, so a failure cannot spin)."""
        await self._notifier.deliver_digest(keys, held=held)
        if self._more and not self.quiet():
            self._more = False
            pending = await self._store.pending_held()
            if pending:
                more = [key for key, _ in pending]
                await self._notifier.deliver_digest(more, held=all(h for _, h in pending))
