"""The values passed between modules: a story seen in a cycle and an alert."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from alerts.hn import Item

HN_ITEM_URL = "https://news.ycombinator.com/item?id={}"


@dataclass(frozen=True)
class Story:
    """The facts about a story that an alert mail shows."""

    id: int
    title: str
    by: str
    score: int
    url: str | None
    descendants: int | None

    @classmethod
    def from_item(cls, story_id: int, item: Item) -> Story:
        """Take story ``story_id`` from its API item, tolerating missing or odd fields."""
        score = item.get("score")
        desc = item.get("descendants")
        url = item.get("url")
        return cls(
            id=story_id,
            title=str(item.get("title") or f"Item {story_id}"),
            by=str(item.get("by") or "unknown"),
            score=score if isinstance(score, int) and not isinstance(score, bool) else 0,
            url=url if isinstance(url, str) and url.lower().startswith(("http://", "https://")) else None,
            descendants=desc if isinstance(desc, int) and not isinstance(desc, bool) else None,
        )

    @property
    def discussion_url(self) -> str:
        """The story's page on news.ycombinator.com."""
        return HN_ITEM_URL.format(self.id)


@dataclass(frozen=True)
class Alert:
    """One alert: a story that reached ``tier`` with ``comments`` live comments.

    ``(story.id, kind, tier)`` identifies it; the outbox holds at most one row per key.
    ``kind`` is ``"tier"`` (the count reached ``tier``) or ``"velocity"`` (tier 0: the
    story gained ``gain`` comments within ``minutes``).
    """

    story: Story
    tier: int
    comments: int
    kind: str = "tier"
    gain: int = 0  # a "velocity" alert: comments gained ...
    minutes: int = 0  # ... within this many minutes

    @property
    def key(self) -> tuple[int, str, int]:
        """The alert's identity in the state DB and its Message-ID."""
        return (self.story.id, self.kind, self.tier)

    def to_json(self) -> dict[str, Any]:
        """The alert as plain data for the outbox."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        """Rebuild an alert stored by :meth:`to_json`."""
        return cls(
            story=Story(**data["story"]),
            tier=int(data["tier"]),
            comments=int(data["comments"]),
            kind=str(data.get("kind", "tier")),
            gain=int(data.get("gain", 0)),
            minutes=int(data.get("minutes", 0)),
        )
