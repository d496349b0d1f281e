"""Where stories and their counts come from: a source, driven by the service.

A source has two parts. ``cycle()`` runs every ALERTS_POLL_INTERVAL (and
once under ``--once``): the poll source reads the story lists and counts
what may have crossed a tier; the stream source re-reads the lists and
catches up. ``follow()`` runs alongside the cycles until cancelled: the
stream source follows every new item there; the poll source has nothing to
follow. Neither ever awaits a send: alerts go to the outbox, whose sends are
tasks of their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from alerts.model import Alert
from alerts.outbox import Outbox
from alerts.store import Store

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    """What one cycle did, for the cycle log line and for tests."""

    number: int
    stories: int = 0
    alerts: int = 0
    fetches: int = 0
    seconds: float = 0.0
    walked: int = 0
    filtered: int = 0
    fetches_saved: int = 0
    baseline: int = 0
    gated: int = 0
    incomplete: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    counts: list[tuple[int, int]] = field(default_factory=list)
    watched: list[tuple[int, str, int]] = field(default_factory=list)  # (id, title, count) for the status
    position: int | None = None  # the stream source: every item up to this one handled or under way ...
    handled: int = 0  # ... and how many items it handled since the last cycle


class Source(Protocol):
    """What the service drives."""

    name: str  # "poll", "stream": what `alerts status` shows

    async def cycle(self, number: int) -> CycleReport:
        """One cycle (number ``number``); raises :class:`alerts.errors.FetchError` when HN could not be read."""
        ...

    async def follow(self) -> None:
        """Work between the cycles until cancelled (return at once when there is none)."""
        ...


async def queue_alert(alert: Alert, baseline: bool, store: Store, outbox: Outbox, report: CycleReport) -> None:
    """Hand a due alert to the outbox, or record it as a baseline (never mailed)."""
    story = alert.story
    if baseline:
        if await store.record_baseline(alert):
            report.baseline += 1
            log.debug("baseline: story %d recorded at tier %d, no mail", story.id, alert.tier)
        return
    state = await outbox.queue(alert)
    if state is None:
        return
    report.alerts += 1
    what = f"+{alert.gain} in {alert.minutes} min" if alert.kind == "velocity" else f"tier {alert.tier}"
    state = "held for quiet hours" if state == "held" else state
    log.info(
        "alert %s: story %d %r, %d comments (%s)",
        state,
        story.id,
        story.title,
        alert.comments,
        what,
        extra=alert.log_fields() | {"event": "alert_queued", "held": state != "queued"},
    )
