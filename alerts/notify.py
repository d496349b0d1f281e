"""Deliver one outbox entry: render, send with bounded retries, record the outcome.

The entry is already in the outbox (written before this runs). It is marked
``sent`` only after the server accepted it, and ``failed`` after a 5xx; a
temporary failure leaves it ``pending`` for the next cycle or the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
    wait_none,
)

from alerts.delivery import Sender
from alerts.errors import DeliveryError, PermanentDeliveryError
from alerts.mail import Renderer
from alerts.store import Key, Store

log = logging.getLogger(__name__)


class Notifier:
    """Sends outbox entries; one call of :meth:`deliver` per entry."""

    def __init__(
        self,
        store: Store,
        renderer: Renderer,
        sender: Sender,
        *,
        mail_from: str,
        recipients: tuple[str, ...],
        attempts: int = 3,
        backoff: float = 1.0,
        max_parallel: int = 4,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._renderer = renderer
        self._sender = sender
        self._from = mail_from
        self._to = recipients
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep
        # Many alerts in one cycle must not open dozens of SMTP connections at once.
        self._parallel = asyncio.Semaphore(max_parallel)

    async def deliver(self, key: Key) -> bool:
        """Send the outbox entry ``key``; true once it is (or already was) accepted."""
        entry = await self._store.get(key)
        if entry is None or entry.status != "pending":
            return entry is not None and entry.status == "sent"
        message = self._renderer.render(entry.alert)
        story = entry.alert.story
        try:
            async for attempt in self._retrying():
                with attempt:
                    refused = await self._send_once(key, message)
        except PermanentDeliveryError as exc:
            await self._store.mark_failed(key, str(exc))
            log.error("alert refused for good, not retried: story %d tier %d: %s", story.id, key[2], exc)
            return False
        except DeliveryError as exc:
            log.warning("alert not sent, stays in the outbox: story %d tier %d: %s", story.id, key[2], exc)
            return False
        note = "; ".join(f"{rcpt} refused: {reply}" for rcpt, reply in refused.items()) or None
        await self._store.mark_sent(key, note)
        if note:
            log.error("alert for story %d not delivered to every recipient: %s", story.id, note)
        log.info(
            "alert sent: story %d %r, %d comments (tier %d) via %s",
            story.id,
            story.title,
            entry.alert.comments,
            key[2],
            self._sender.describe(),
        )
        return True

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=self._backoff, max=60, jitter=self._backoff)
            if self._backoff > 0
            else wait_none(),
            retry=retry_if_exception_type(DeliveryError) & retry_if_not_exception_type(PermanentDeliveryError),
            sleep=self._sleep,
            reraise=True,
        )

    async def _send_once(self, key: Key, message: Any) -> dict[str, str]:
        try:
            async with self._parallel:
                return await self._sender.send(message, sender=self._from, recipients=self._to)
        except PermanentDeliveryError:
            raise
        except DeliveryError as exc:
            await self._store.record_attempt(key, str(exc))
            raise
