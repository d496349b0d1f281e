"""Deliver one outbox entry: render, send with bounded retries, record the outcome.

The entry is already in the outbox (written before this runs). It is marked
``sent`` only after the server accepted it, and ``failed`` after a 5xx; a
temporary failure leaves it ``pending`` for the next cycle or the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from email.message import EmailMessage
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
from alerts.errors import DeliveryError, PermanentDeliveryError, RenderError, StateError
from alerts.mail import Renderer
from alerts.model import Alert
from alerts.store import Key, OutboxEntry, Store

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
        # Mails the server accepted whose "sent" mark is not yet in the state DB.
        self._accepted: dict[Key, tuple[str | None, Alert]] = {}

    async def deliver(self, key: Key) -> bool:
        """Send the outbox entry ``key``; true once it is (or already was) accepted."""
        if key in self._accepted:
            # Accepted earlier, but recording it failed: record it now, never resend.
            return await self._record_sent(key, *self._accepted[key])
        entry = await self._load(key)
        if entry is None:
            return await self._was_sent(key)
        try:
            message = self._renderer.render(entry.alert)
        except RenderError as exc:
            return await self._give_up(key, f"cannot render the mail: {exc}")
        return await self._send({key: entry.alert}, message)

    async def deliver_digest(self, keys: list[Key], *, held: bool = False) -> bool:
        """Send the pending ones of ``keys`` as one mail; each is marked sent once it is accepted.

        ``held`` says the alerts waited for the end of quiet hours.
        """
        alerts: dict[Key, Alert] = {}
        for key in keys:
            if key in self._accepted:
                await self._record_sent(key, *self._accepted[key])
            elif (entry := await self._load(key)) is not None:
                alerts[key] = entry.alert
        if not alerts:
            return True
        try:
            message = self._renderer.render_digest(list(alerts.values()), held=held)
        except RenderError as exc:
            for key in alerts:
                await self._give_up(key, f"cannot render the digest: {exc}")
            return False
        log.info("digest of %d alert(s) going out", len(alerts))
        return await self._send(alerts, message)

    async def _load(self, key: Key) -> OutboxEntry | None:
        """The entry while it is pending; an unreadable one is given up (logged) and ``None``."""
        try:
            entry = await self._store.get(key)
        except (ValueError, KeyError, TypeError) as exc:  # a row this version cannot read
            await self._give_up(key, f"unreadable outbox entry: {exc!r}")
            return None
        return entry if entry is not None and entry.status == "pending" else None

    async def _was_sent(self, key: Key) -> bool:
        entry = await self._store.get(key)
        return entry is not None and entry.status == "sent"

    async def _send(self, alerts: dict[Key, Alert], message: EmailMessage) -> bool:
        """Send one mail for ``alerts``, retried; record the outcome for each of them."""
        keys = list(alerts)
        try:
            async for attempt in self._retrying():
                with attempt:
                    refused = await self._send_once(keys, message)
        except PermanentDeliveryError as exc:
            for key in keys:
                await self._give_up(key, str(exc))
            return False
        except DeliveryError as exc:
            for key in keys:
                log.warning("alert not sent, kept in the outbox: story %d tier %d: %s", key[0], key[2], exc)
            return False
        note = "; ".join(f"{rcpt} refused: {reply}" for rcpt, reply in refused.items()) or None
        if note:
            log.error("mail for story %s not delivered to every recipient: %s", message["X-HN-Alerts-Story"], note)
        for key, alert in alerts.items():
            self._accepted[key] = (note, alert)
        for key, alert in alerts.items():
            await self._record_sent(key, note, alert)
        return True

    async def _record_sent(self, key: Key, note: str | None, alert: Alert) -> bool:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(5),
            wait=wait_exponential_jitter(multiplier=0.5, max=10) if self._backoff > 0 else wait_none(),
            retry=retry_if_exception_type(StateError),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._store.mark_sent(key, note)
        del self._accepted[key]
        log.info(
            "alert sent: story %d %r, %d comments (tier %d) via %s",
            key[0],
            alert.story.title,
            alert.comments,
            key[2],
            self._sender.describe(),
        )
        return True

    async def _give_up(self, key: Key, reason: str) -> bool:
        """Record a permanent failure: logged once, never retried, blocking nothing else."""
        await self._store.mark_failed(key, reason)
        log.error("alert refused for good, not retried: story %d tier %d: %s", key[0], key[2], reason)
        return False

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

    async def _send_once(self, keys: list[Key], message: EmailMessage) -> dict[str, str]:
        try:
            async with self._parallel:
                return await self._sender.send(message, sender=self._from, recipients=self._to)
        except PermanentDeliveryError:
            raise
        except DeliveryError as exc:
            for key in keys:
                await self._store.record_attempt(key, str(exc))
            raise
