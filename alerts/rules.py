"""Which alert a story is due, if any: pure decisions, no I/O.

Everything here takes its inputs (counts, times, settings values) as
arguments, so each rule is tested without a clock, a network or a DB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, tzinfo
from typing import TYPE_CHECKING, Literal

from alerts.model import Alert, Story

if TYPE_CHECKING:
    from alerts.config import TitlePattern


@dataclass(frozen=True)
class Rules:
    """The alerting rules of ALERTS_COMMENT_THRESHOLD and the "beyond one threshold" settings."""

    tiers: tuple[int, ...]
    min_score: int = 0
    include: TitlePattern | None = None
    exclude: TitlePattern | None = None
    velocity: tuple[int, int] | None = None  # (comments, minutes)
    quiet_hours: tuple[time, time] | None = None
    zone: tzinfo = UTC  # ALERTS_TIMEZONE: a ZoneInfo when set

    def filtered_out(self, story: Story) -> str | None:
        """Why ``story`` may not alert (score, include, exclude), or ``None`` when it may."""
        if story.score < self.min_score:
            return f"score {story.score} < ALERTS_MIN_SCORE={self.min_score}"
        if self.include is not None and not self.include.search(story.title):
            return "title does not match ALERTS_TITLE_INCLUDE"
        if self.exclude is not None and self.exclude.search(story.title):
            return "title matches ALERTS_TITLE_EXCLUDE"
        return None

    def quiet(self, now: float) -> bool:
        """True when the wall-clock time ``now`` (epoch seconds) falls in the quiet hours."""
        if self.quiet_hours is None:
            return False
        return in_quiet_hours(self.quiet_hours, datetime.fromtimestamp(now, UTC).astimezone(self.zone).time())


def due_tier(count: int, tiers: Sequence[int], alerted: int | None) -> int | None:
    """The tier to alert for, or ``None``.

    ``tiers`` is ascending; ``alerted`` is the highest tier this story already
    alerted for. A story alerts once per tier when its count first reaches it;
    a jump past several tiers at once gives one alert, for the highest.
    """
    reached = [t for t in tiers if t <= count]
    if not reached:
        return None
    top = reached[-1]
    if alerted is not None and top <= alerted:
        return None
    return top


#: A changed story is walked once its ``descendants`` is within this fraction below its next tier.
WALK_MARGIN = 0.9


def next_tier(tiers: Sequence[int], alerted: int | None) -> int | None:
    """The lowest tier above ``alerted`` (the first when none was), or ``None`` when all are behind."""
    return next((t for t in tiers if alerted is None or t > alerted), None)


def needs_walk(
    descendants: int | None,
    last_descendants: int | None,
    tiers: Sequence[int] = (),
    alerted: int | None = None,
    *,
    counts_needed: bool = True,
) -> bool:
    """Whether a story's tree must be walked this cycle.

    Not when ``descendants`` is what it was at the last complete walk (that
    count stands). Otherwise only when the count is needed anyway
    (``counts_needed``: a velocity rule, say), or when ``descendants`` could
    have reached the story's next tier: within 10% below it, as HN's figure
    may lag or include comments the walk does not count. ``descendants``
    unknown always walks.
    """
    if descendants is None:
        return True
    if last_descendants is not None and descendants == last_descendants:
        return False
    if counts_needed:
        return True
    upcoming = next_tier(tiers, alerted)
    return upcoming is not None and descendants >= upcoming * WALK_MARGIN


def velocity_gain(
    samples: Sequence[tuple[float, int]], now: float, count: int, minutes: int, gap: float
) -> tuple[int, float]:
    """Comments gained within the last ``minutes``, and over how many minutes that was measured.

    ``samples`` are (time, count) pairs from earlier cycles, oldest first.
    The gain is measured from the latest sample at or before the window's
    start if it is at most ``gap`` seconds older than that start, else from
    the oldest sample inside the window (a gain inside a shorter span is
    inside the window too). A sample from long before the window (the
    service was stopped, or cron runs are sparser than the window) never
    counts: that gain may have taken hours.
    """
    start = now - minutes * 60
    before = [s for s in samples if start - gap <= s[0] <= start]
    inside = [s for s in samples if start < s[0] <= now]
    base = before[-1] if before else inside[0] if inside else None
    if base is None:
        return 0, 0.0
    return count - base[1], (now - base[0]) / 60


def in_quiet_hours(span: tuple[time, time], local: time) -> bool:
    """True when the local wall time ``local`` falls in ``span`` (start inclusive, end exclusive).

    A span whose start is after its end wraps midnight: 23:00-07:00 holds
    23:30 and 06:59 but not 07:00.
    """
    start, end = span
    if start < end:
        return start <= local < end
    return local >= start or local < end


@dataclass(frozen=True)
class StoryState:
    """What the state DB knew about one story before this check."""

    last_descendants: int | None = None  # at its last complete walk ...
    last_count: int | None = None  # ... and the count that walk found
    alerted: int | None = None  # the highest tier it alerted for (or recorded as a baseline)
    heated: bool = False  # its one "heating up" alert is behind it
    history: tuple[tuple[float, int], ...] = ()  # (time, count) samples, oldest first
    baseline: bool = False  # its baseline is owed: tiers it reaches now are recorded, not mailed


@dataclass(frozen=True)
class Plan:
    """How to get a story's count this time: ``skip`` it, use the ``last`` walk's count, or ``walk``."""

    action: Literal["skip", "last", "walk"]
    why: str = ""


@dataclass(frozen=True)
class Verdict:
    """What a counted story is due.

    ``alerts`` are queued, or recorded without mail when ``baseline``;
    ``owe_baseline`` says whether the story is (``True``) or is no longer
    (``False``) owed its baseline, ``None`` for no change; ``sample`` says
    whether the count is a velocity sample (only complete counts are).
    """

    alerts: tuple[Alert, ...] = ()
    baseline: bool = False
    owe_baseline: bool | None = None
    sample: bool = False


def plan(story: Story, state: StoryState, rules: Rules) -> Plan:
    """Before counting: filtered out stories are skipped, steady ones keep their count, the rest may be walked."""
    reason = rules.filtered_out(story)
    if reason is not None:
        return Plan("skip", f"filtered out: {reason}")
    if state.last_count is not None and story.descendants == state.last_descendants:
        return Plan("last", "unchanged since its last walk")
    wanted = rules.velocity is not None and not state.heated
    alerted = None if state.baseline else state.alerted
    if needs_walk(story.descendants, state.last_descendants, rules.tiers, alerted, counts_needed=wanted):
        return Plan("walk")
    return Plan("skip", "far below its next tier")


def decide(
    story: Story, count: int, complete: bool, state: StoryState, rules: Rules, *, now: float, gap: float
) -> Verdict:
    """After counting: the alerts ``story`` is due with ``count`` (``complete`` when every item was fetched).

    A story owed its baseline takes it only from a complete count (a partial
    one is a lower bound: it stays owed); its tiers are recorded, not mailed.
    Otherwise the highest tier newly reached alerts, and a velocity rule
    alerts once when the gain within its window is large enough; ``gap`` is
    how far before the window a sample may lie (see :func:`velocity_gain`).
    """
    if state.baseline and not complete:
        return Verdict(owe_baseline=True, sample=False)
    alerts: list[Alert] = []
    tier = due_tier(count, rules.tiers, state.alerted)
    if tier is not None:
        alerts.append(Alert(story, tier, count))
    if rules.velocity and complete and not state.heated and not state.baseline:
        need, minutes = rules.velocity
        gain, span = velocity_gain(state.history, now, count, minutes, gap)
        if gain >= need:
            alerts.append(Alert(story, 0, count, kind="velocity", gain=gain, minutes=max(1, round(span))))
    return Verdict(tuple(alerts), state.baseline, False if state.baseline else None, complete)
