"""Which alert a story is due, if any: pure decisions, no I/O."""

from __future__ import annotations

from collections.abc import Sequence


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


def needs_walk(descendants: object, last_descendants: int | None) -> bool:
    """False when ``descendants`` has not changed since the story's last complete walk."""
    if last_descendants is None or not isinstance(descendants, int):
        return True
    return descendants != last_descendants
