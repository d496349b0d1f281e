"""An alert that moves between mails (held into a digest, digest mode toggled, retried out of a digest) or is
dropped mid-send keeps its recipients' outcomes; --once counts held and refused alerts right."""

from __future__ import annotations

import asyncio
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import pytest

from alerts import ledger
from alerts.delivery import SendResult
from alerts.errors import DeliveryError, PermanentDeliveryError
from tests import trees
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.test_rules_beyond import BERLIN, Clock, cycle


class Scripted:
    """Per call, a script step: 'partial' (a accepted, b 4xx), 'data5xx', or accept all."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.log: list[tuple[str, tuple[str, ...], str]] = []

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> SendResult:
        step = self.script.pop(0) if self.script else "ok"
        self.log.append((step, recipients, message["X-HN-Alerts-Story"]))
        if step == "partial":
            return SendResult(
                accepted=tuple(r for r in recipients if r.startswith("a")),
                deferred={r: "451 later" for r in recipients if not r.startswith("a")},
            )
        if step == "data5xx":
            raise PermanentDeliveryError("DATA refused: 554 no")
        return SendResult(accepted=recipients)

    def describe(self) -> str:
        return "scripted"

    def deliveries_to(self, addr: str) -> list[str]:
        return [
            story
            for step, rcpts, story in self.log
            if addr in rcpts and (step == "ok" or (step == "partial" and addr.startswith("a")))
        ]


def cfg(env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**env, "ALERTS_EMAIL_TO": "a@x.org,b@x.org", "ALERTS_SEND_ATTEMPTS": "1", **extra}


async def test_quiet_hours_after_a_partial_delivery_send_only_to_the_deferred_recipient(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """A mail half delivered before quiet hours is not held into the digest: the deferred recipient alone gets it."""
    hn.add_story(1, trees.wide(1_000, 120), title="T1")
    hn.set_list("topstories", [1])
    clock = Clock(datetime(2026, 6, 10, 22, 0, tzinfo=BERLIN))
    s = Scripted(["partial"])
    app = await app_factory(
        cfg(env, ALERTS_QUIET_HOURS="23:00-07:00", ALERTS_TIMEZONE="Europe/Berlin"), sender=s, clock=clock
    )
    await cycle(app)  # a accepted, b deferred
    clock.set(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    await cycle(app)  # quiet: held
    clock.set(datetime(2026, 6, 11, 7, 1, tzinfo=BERLIN))
    await cycle(app)  # digest after quiet hours
    assert s.deliveries_to("a@x.org") == ["1"], s.log


async def test_digest_mode_turned_on_after_a_partial_delivery_sends_only_to_the_deferred_recipient(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """Turning ALERTS_DIGEST on does not move a half-delivered alert into a digest: nobody gets it twice."""
    hn.add_story(1, trees.wide(1_000, 120), title="T1")
    hn.set_list("topstories", [1])
    s = Scripted(["partial"])
    first = await app_factory(cfg(env), sender=s)
    await cycle(first)
    await first.store.close()
    second = await app_factory(cfg(env, ALERTS_DIGEST="true"), sender=s)
    await cycle(second)
    assert s.deliveries_to("a@x.org") == ["1"], s.log


async def test_a_failed_digest_member_retried_goes_only_to_those_that_did_not_accept(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """Retrying a failed digest member sends it only to the recipients that had not accepted the digest."""
    for n in (1, 2):
        hn.add_story(n, trees.wide(n * 1_000, 120), title=f"T{n}")
    hn.set_list("topstories", [1, 2])
    s = Scripted(["partial", "data5xx"])
    app = await app_factory(cfg(env, ALERTS_DIGEST="true"), sender=s)
    await cycle(app)  # digest: a accepted, b deferred
    app.outbox._started = True  # as in a running service: past its first dispatch, backoffs apply
    await app.store.run(ledger.retry, [(1, "tier", 100), (2, "tier", 100)])  # pending: due now
    await cycle(app)  # b: DATA 554 -> digest failed
    await app.store.run(ledger.retry, [(1, "tier", 100)])  # what `alerts outbox retry 1:100` does
    await cycle(app)
    assert s.deliveries_to("a@x.org") == ["1,2"], s.log


class Down:
    def __init__(self) -> None:
        self.down = True
        self.sent: list[str] = []

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> SendResult:
        if self.down:
            raise DeliveryError("connection refused")
        self.sent.append(message["X-HN-Alerts-Story"])
        return SendResult(accepted=recipients)

    def describe(self) -> str:
        return "down"


@pytest.mark.parametrize("digest", ["false", "true"])
async def test_once_in_quiet_hours_with_an_earlier_pending_alert(
    hn: FakeHN, env: dict[str, str], app_factory: Any, digest: str
) -> None:
    """--once inside quiet hours exits 0 when only alerts held for them remain, with or without digest mode."""
    hn.add_story(1, trees.wide(1_000, 120), title="T1")
    hn.set_list("topstories", [1])
    clock = Clock(datetime(2026, 6, 10, 22, 0, tzinfo=BERLIN))
    cfg = {
        **env,
        "ALERTS_DIGEST": digest,
        "ALERTS_SEND_ATTEMPTS": "1",
        "ALERTS_QUIET_HOURS": "23:00-07:00",
        "ALERTS_TIMEZONE": "Europe/Berlin",
    }
    s = Down()
    first = await app_factory(cfg, sender=s, clock=clock)
    assert await first.service.run_once() is False  # server down: correct
    await first.store.close()
    clock.set(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    second = await app_factory(cfg, sender=s, clock=clock)
    ok = await second.service.run_once()
    assert ok is True, "only held alerts remain: --once must exit 0"


class HalfRefused:
    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> SendResult:
        return SendResult(
            accepted=tuple(r for r in recipients if r.startswith("a")),
            refused={r: "550 no such user" for r in recipients if not r.startswith("a")},
        )

    def describe(self) -> str:
        return "half"


async def test_once_exit_when_a_recipient_refused_for_good(hn: FakeHN, env: dict[str, str], app_factory: Any) -> None:
    """--once exits 1 when a recipient refused the mail for good, even though the others took it."""
    hn.add_story(1, trees.wide(1_000, 120), title="T1")
    hn.set_list("topstories", [1])
    app = await app_factory({**env, "ALERTS_EMAIL_TO": "a@x.org,b@x.org"}, sender=HalfRefused())
    ok = await app.service.run_once()
    assert ok is False


async def test_a_drop_during_a_send_that_succeeds_is_recorded_as_sent(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """An alert dropped while its send runs, and then accepted, is recorded as sent: the record says what happened."""
    hn.add_story(1, trees.wide(1_000, 120), title="T1")
    hn.set_list("topstories", [1])
    s = RecordingSender(blocked=True)
    app = await app_factory(env, sender=s)
    await app.service.run_cycle()
    await asyncio.wait_for(s.started.wait(), 5)
    assert await app.store.run(ledger.drop, [(1, "tier", 100)], app.store.now()) == [(1, "tier", 100)]
    s.gate.set()
    await app.registry.join()
    entry = await app.store.get((1, "tier", 100))
    assert len(s.messages) == 1 and entry is not None and entry.status == "sent"
