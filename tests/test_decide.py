"""The per-story decision, pure: a table of stories, what the state DB knew, and what is due."""

from __future__ import annotations

import pytest

from alerts.model import Story
from alerts.rules import Plan, Rules, StoryState, decide, plan


class Title:
    """A stand-in for a compiled pattern: matches when ``word`` is in the title."""

    def __init__(self, word: str) -> None:
        self.word = word

    def search(self, text: str) -> object | None:
        return self.word if self.word in text.lower() else None


def story(descendants: int | None = 120, score: int = 50, title: str = "Rust in production") -> Story:
    return Story(7, title, "pg", score, None, descendants)


TIERS = Rules(tiers=(100, 250))
VELOCITY = Rules(tiers=(100, 250), velocity=(20, 30))

PLANS = [
    # (story, state, rules, expected action)
    (story(120), StoryState(), TIERS, "walk"),  # never walked, past 90% of 100
    (story(80), StoryState(), TIERS, "skip"),  # far below its first tier
    (story(90), StoryState(), TIERS, "walk"),  # exactly 90%
    (story(120), StoryState(120, 118), TIERS, "last"),  # unchanged since its last walk
    (story(130), StoryState(120, 118, alerted=100), TIERS, "skip"),  # 130 < 225: far from 250
    (story(230), StoryState(120, 118, alerted=100), TIERS, "walk"),
    (story(9_000), StoryState(8_000, 7_000, alerted=250), TIERS, "skip"),  # every tier behind it
    (story(9_000), StoryState(8_000, 7_000, alerted=250), VELOCITY, "walk"),  # velocity needs its count
    (story(9_000), StoryState(8_000, 7_000, alerted=250, heated=True), VELOCITY, "skip"),  # already heated
    (story(300), StoryState(alerted=250, baseline=True), TIERS, "walk"),  # owed a baseline: tiers count from 0
    (story(None), StoryState(120, 118, alerted=250), TIERS, "walk"),  # descendants unknown
    (story(120, score=9), StoryState(), Rules(tiers=(100,), min_score=10), "skip"),  # score 9 < 10
    (story(120, score=10), StoryState(), Rules(tiers=(100,), min_score=10), "walk"),  # score 10 >= 10
    (story(120), StoryState(), Rules(tiers=(100,), include=Title("go")), "skip"),
    (story(120), StoryState(), Rules(tiers=(100,), exclude=Title("rust")), "skip"),
    (story(120), StoryState(), Rules(tiers=(100,), include=Title("rust")), "walk"),
]


@pytest.mark.parametrize(("subject", "state", "rules", "action"), PLANS)
def test_plan(subject: Story, state: StoryState, rules: Rules, action: str) -> None:
    """Before counting: filters skip, a steady story keeps its count, a story near its next tier is walked."""
    assert plan(subject, state, rules).action == action


def test_a_filtered_story_says_why() -> None:
    """The plan names the rule that filtered a story out."""
    assert plan(story(score=1), StoryState(), Rules(tiers=(100,), min_score=5)) == Plan(
        "skip", "filtered out: score 1 < ALERTS_MIN_SCORE=5"
    )


NOW = 10_000.0
HISTORY = ((NOW - 30 * 60 - 10, 100), (NOW - 600, 110))  # 100 comments just before a 30-minute window

DECISIONS = [
    # (count, complete, state, rules, alert keys, baseline, owe, sample)
    (99, True, StoryState(), TIERS, [], False, None, True),
    (100, True, StoryState(), TIERS, [(7, "tier", 100)], False, None, True),
    (260, True, StoryState(), TIERS, [(7, "tier", 250)], False, None, True),  # a jump: one alert, the highest
    (260, True, StoryState(alerted=100), TIERS, [(7, "tier", 250)], False, None, True),
    (260, True, StoryState(alerted=250), TIERS, [], False, None, True),  # every tier behind it
    (90, True, StoryState(alerted=100), TIERS, [], False, None, True),  # the count fell: nothing
    (150, False, StoryState(), TIERS, [(7, "tier", 100)], False, None, False),  # partial: alerts on what it counted
    (150, False, StoryState(baseline=True), TIERS, [], False, True, False),  # owed: a partial count cannot take it
    (150, True, StoryState(baseline=True), TIERS, [(7, "tier", 100)], True, False, True),  # recorded, not mailed
    (120, True, StoryState(history=HISTORY), VELOCITY, [(7, "tier", 100), (7, "velocity", 0)], False, None, True),
    (119, True, StoryState(alerted=100, history=HISTORY), VELOCITY, [], False, None, True),  # +19 < 20
    (120, True, StoryState(alerted=100, heated=True, history=HISTORY), VELOCITY, [], False, None, True),
    (120, False, StoryState(alerted=100, history=HISTORY), VELOCITY, [], False, None, False),  # partial: no heat
    (120, True, StoryState(alerted=100, history=HISTORY, baseline=True), VELOCITY, [], True, False, True),
]


@pytest.mark.parametrize(("count", "complete", "state", "rules", "keys", "baseline", "owe", "sample"), DECISIONS)
def test_decide(
    count: int,
    complete: bool,
    state: StoryState,
    rules: Rules,
    keys: list[tuple[int, str, int]],
    baseline: bool,
    owe: bool | None,
    sample: bool,
) -> None:
    """After counting: tiers once each, the highest on a jump, velocity once, the baseline from complete counts."""
    verdict = decide(story(), count, complete, state, rules, now=NOW, gap=180.0)
    assert [a.key for a in verdict.alerts] == keys
    assert (verdict.baseline, verdict.owe_baseline, verdict.sample) == (baseline, owe, sample)
    for alert in verdict.alerts:
        assert alert.comments == count


def test_a_velocity_alert_says_its_gain_and_span() -> None:
    """The heating-up alert carries the gain measured and the minutes it was measured over."""
    verdict = decide(story(), 140, True, StoryState(alerted=100, history=HISTORY), VELOCITY, now=NOW, gap=180.0)
    [heat] = verdict.alerts
    assert (heat.kind, heat.gain, heat.minutes) == ("velocity", 40, 30)
