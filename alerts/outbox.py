"""The outbox: which alerts go out, how, and what is recorded, all of it in the state DB.

An alert is written here before anything is sent. From then on every fact
that decides its delivery lives in SQLite (see :mod:`alerts.ledger`): its
status, attempts and next try, the digest that carries it (stored with its
members and Message-ID once formed), and each recipient's outcome. Nothing
in memory decides whether a mail goes out again, so ``run``, ``--once`` and
a restart behave the same; the only process-local fact is which mails are
being sent right now (the task registry), which a restart rightly forgets.

Sends are fire-and-forget tasks owned by the registry, one per mail. Within
one dispatch a mail is tried ALERTS_SEND_ATTEMPTS times; after that it waits
about ALERTS_SEND_BACKOFF x 2^n seconds (with jitter, at most 10 minutes)
across cycles and restarts, except that the first dispatch of a process,
and ``alerts outbox retry``, try again at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_none,
)

from alerts import ledger
from alerts.delivery import Sender
from alerts.errors import DeliveryError, PermanentDeliveryError, RenderError, StateError
from alerts.ledger import Key
from alerts.mail import Renderer
from alerts.model import Alert
from alerts.store import Store
from alerts.tasks import TaskRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest wait between two tries of one mail.
MAX_GAP = 600.0


def retry_delay(attempts: int, base: float, jitter: float) -> float:
    """Seconds to wait after a mail's ``attempts``-th failed try: ``base`` x 2^(n-1), x1-1.25 jitter, <= 10 min."""
    if base <= 0:
        return 0.0
    return min(MAX_GAP, base * 2.0 ** min(attempts - 1, 30) * (1.0 + 0.25 * jitter))


class Outbox:
    """Queues alerts and hands due mails to the registry; records every outcome in the state DB."""

    def __init__(
        self,
        store: Store,
        renderer: Renderer,
        sender: Sender,
        registry: TaskRegistry,
        *,
        quiet: Callable[[float], bool],
        digest: bool,
        mail_from: str,
        recipients: tuple[str, ...],
        attempts: int = 3,
        backoff: float = 1.0,
        max_parallel: int = 4,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._renderer = renderer
        self.sent = self.failed = self.send_failures = 0  # alerts sent, refused for good; sends kept for a retry
        self._sender = sender
        self._registry = registry
        self._quiet = quiet
        self._digest = digest
        self._from = mail_from
        self._to = recipients
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep
        self._jitter = jitter
        # Many mails in one cycle must not open dozens of SMTP connections at once.
        self._parallel = asyncio.Semaphore(max_parallel)
        self._started = False

    def quiet(self) -> bool:
        """True while the quiet hours hold every mail back."""
        return self._quiet(self._store.now())

    async def queue(self, alert: Alert) -> str | None:
        """Write ``alert`` to the outbox and start its send; ``None`` when it was recorded before.

        Returns ``"queued"``, or ``"held"`` during quiet hours. In digest mode
        the send waits for :meth:`dispatch`, which gathers the cycle's alerts.
        """
        held = self.quiet()
        if not await self._store.run(ledger.insert, alert, "pending", held, self._store.now()):
            return None
        if not held and not self._digest:
            self._spawn(ledger.alert_mail(alert.key))
        return "held" if held else "queued"

    async def dispatch(self) -> int:
        """Start the sends that are due; returns how many mails were handed to the registry.

        During quiet hours nothing starts and waiting alerts are held. After
        them, held alerts leave in one digest; in digest mode every alert no
        digest carries yet joins one.
        """
        now: float | None = self._store.now()
        if not self._started:
            self._started = True
            now = None  # a (re)start tries everything waiting at once
        if self.quiet():
            held = await self._store.run(ledger.hold, self._busy_keys())
            if held:
                log.info("quiet hours: %d alert(s) held for the digest after them", held)
            return 0
        waiting = await self._store.run(ledger.unassigned, not self._digest)
        waiting = [e for e in waiting if ledger.alert_mail(e.key) not in self._registry]
        if waiting:
            await self._form_digest(waiting)
        started = 0
        for key in await self._store.run(ledger.due_singles, now):
            started += self._spawn(ledger.alert_mail(key))
        for digest_id in await self._store.run(ledger.due_digests, now):
            started += self._spawn(ledger.digest_mail(digest_id))
        return started

    def _busy_keys(self) -> frozenset[Key]:
        mails = [m for m in self._registry if isinstance(m, str) and m.startswith("alert:")]
        return frozenset(ledger.parse_alert_mail(m) for m in mails)

    async def _form_digest(self, entries: list[ledger.Entry]) -> None:
        keys = [e.key for e in entries]
        now = self._store.now()
        text = ",".join(f"{s}.{k}.{t}" for s, k, t in sorted(keys)) + f"@{now!r}"
        digest_id = hashlib.sha256(text.encode()).hexdigest()[:20]
        held = any(e.held for e in entries)
        await self._store.run(ledger.form_digest, digest_id, keys, held, now)
        log.info("digest %s formed with %d alert(s)%s", digest_id, len(keys), " held for quiet hours" if held else "")

    def _spawn(self, mail: str) -> bool:
        return self._registry.spawn(mail, self._deliver(mail)) is not None

    # -- one mail ---------------------------------------------------------------

    async def _deliver(self, mail: str) -> None:
        """Send one mail (an alert or a digest) with its tries, and record the outcome."""
        loaded = await self._load(mail)
        if loaded is None:
            return
        attempts, alerts, message = loaded
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait if self._backoff > 0 else wait_none(),
            retry=retry_if_exception_type(DeliveryError) & retry_if_not_exception_type(PermanentDeliveryError),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        await self._try(mail, alerts, message)
                    except PermanentDeliveryError:
                        raise
                    except DeliveryError as exc:
                        attempts += 1
                        delay = retry_delay(attempts, self._backoff, self._jitter())
                        now = self._store.now()
                        await self._store.run(ledger.record_failure, mail, str(exc), now + delay, now)
                        raise
        except PermanentDeliveryError as exc:
            await self._give_up(mail, alerts, str(exc))
        except DeliveryError as exc:
            self.send_failures += 1
            for alert in alerts:
                log.warning(
                    "alert not sent, kept in the outbox: %s: %s",
                    _name(alert),
                    exc,
                    extra=alert.log_fields() | {"event": "alert_not_sent", "error": str(exc)},
                )

    def _wait(self, state: RetryCallState) -> float:
        """tenacity's wait between tries within one dispatch: exponential with jitter, at most a minute."""
        return min(60.0, self._backoff * (2.0 ** (state.attempt_number - 1) + self._jitter()))

    async def _load(self, mail: str) -> tuple[int, list[Alert], EmailMessage] | None:
        """The mail's tries so far, its alerts and the rendered message; ``None`` when nothing is owed."""
        try:
            if mail.startswith("digest:"):
                digest = await self._store.run(ledger.digest, mail.removeprefix("digest:"))
                if digest is None or digest.status != "pending" or not digest.members:
                    return None
                alerts = [m.alert for m in digest.members]
                message = self._renderer.render_digest(alerts, held=digest.held, digest_id=digest.id)
                return digest.attempts, alerts, message
            entry = await self._store.run(ledger.get, ledger.parse_alert_mail(mail))
        except (ValueError, KeyError, TypeError) as exc:  # a row this version cannot read
            await self._give_up(mail, [], f"unreadable outbox entry: {exc!r}")
            return None
        except RenderError as exc:
            await self._give_up(mail, [], f"cannot render the digest: {exc}")
            return None
        if entry is None or entry.status != "pending":
            return None
        try:
            return entry.attempts, [entry.alert], self._renderer.render(entry.alert)
        except RenderError as exc:
            await self._give_up(mail, [entry.alert], f"cannot render the mail: {exc}")
            return None

    async def _try(self, mail: str, alerts: list[Alert], message: EmailMessage) -> None:
        """One try: send to the recipients still owed, record each answer, settle the mail when none is owed."""
        outcomes = await self._store.run(ledger.recipients, mail)
        owed = tuple(r for r in self._to if r not in outcomes)
        if owed:
            async with self._parallel:
                result = await self._sender.send(message, sender=self._from, recipients=owed)
            new: dict[str, tuple[str, str | None]] = dict.fromkeys(result.accepted, ("accepted", None))
            new.update({r: ("refused", reply) for r, reply in result.refused.items()})
            await self._persist(ledger.record_recipients, mail, new, self._store.now())
            outcomes = {**outcomes, **new}
            if result.deferred:
                deferred = "; ".join(f"{r}: {reply}" for r, reply in result.deferred.items())
                raise DeliveryError(f"deferred for {deferred}; tried again for these recipients only")
        refused = "; ".join(f"{r} refused: {reply}" for r, (outcome, reply) in outcomes.items() if outcome == "refused")
        if not any(outcome == "accepted" for outcome, _ in outcomes.values()):
            raise PermanentDeliveryError(refused or "no recipient accepted the mail")
        if refused:
            log.error("mail %s not delivered to every recipient: %s", mail, refused)
        await self._persist(ledger.finish, mail, "sent", refused or None, self._store.now())
        self.sent += len(alerts)
        for alert in alerts:
            log.info(
                "alert sent: %s, %d comments via %s",
                _name(alert),
                alert.comments,
                self._sender.describe(),
                extra=alert.log_fields() | {"event": "alert_sent", "mail": mail},
            )

    async def _persist(self, fn: Callable[..., T], *args: object) -> T:
        """Write what the server accepted; a busy or failing DB is tried again, the mail is not resent."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(5),
            wait=(lambda s: min(10.0, 0.5 * 2.0 ** (s.attempt_number - 1))) if self._backoff > 0 else wait_none(),
            retry=retry_if_exception_type(StateError),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._store.run(fn, *args)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _give_up(self, mail: str, alerts: list[Alert], reason: str) -> None:
        """Record a permanent failure: logged once, never retried, blocking nothing else."""
        await self._persist(ledger.finish, mail, "failed", reason, self._store.now())
        self.failed += max(1, len(alerts))
        names = ", ".join(_name(a) for a in alerts) or mail
        ids = [a.log_fields()["alert_id"] for a in alerts]
        log.error(
            "alert refused for good, not retried: %s: %s",
            names,
            reason,
            extra={"event": "alert_refused", "mail": mail, "alert_ids": ids, "error": reason},
        )


def _name(alert: Alert) -> str:
    what = "velocity" if alert.kind == "velocity" else f"tier {alert.tier}"
    return f"story {alert.story.id} {alert.story.title!r} ({what})"
