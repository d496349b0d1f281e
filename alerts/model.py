"""The values passed between modules: a story seen in a cycle and an alert."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")

#: Ids and counts lie in 0..MAX_ID: exact in a double, and in SQLite's 64-bit integers.
MAX_ID = 2**53

#: One item of the HN API as its JSON object.
Item = dict[str, Any]

HN_ITEM_URL = "https://news.ycombinator.com/item?id={}"


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD, so it can be encoded.

    JSON lets ``"\\ud800"`` through and ``json.loads`` returns it as is; UTF-8 cannot
    encode it, and one such title would otherwise fail its alert and every digest it is in.
    """
    if not _SURROGATE.search(text):
        return text
    # A pair split over two code points is joined back into its character, not replaced.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def http_url(url: object) -> str | None:
    """``url`` when it is an ``http``/``https`` URL (the only kind that may become a link), else None."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        return None
    return valid_text(url)


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
        return cls(
            id=story_id,
            title=valid_text(str(item.get("title") or f"Item {story_id}")),
            by=valid_text(str(item.get("by") or "unknown")),
            score=score if isinstance(score, int) and not isinstance(score, bool) else 0,
            url=http_url(item.get("url")),
            descendants=desc if isinstance(desc, int) and not isinstance(desc, bool) else None,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Story:
        """Rebuild a story stored by :meth:`Alert.to_json`, held to the rules of :meth:`from_item`."""
        desc = data.get("descendants")
        return cls(
            id=int(data["id"]),
            title=valid_text(str(data["title"])),
            by=valid_text(str(data["by"])),
            score=int(data["score"]),
            url=http_url(data.get("url")),
            descendants=None if desc is None else int(desc),
        )

    def sanitized(self) -> Story:
        """The story with its text held to the rules of :meth:`from_item` (for one built by hand)."""
        title, by, url = valid_text(self.title), valid_text(self.by), http_url(self.url)
        if (title, by, url) == (self.title, self.by, self.url):
            return self
        return replace(self, title=title, by=by, url=url)

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

    def log_fields(self) -> dict[str, object]:
        """Its numbers and ids, as fields of its log lines (``ALERTS_LOG_FORMAT=json``)."""
        what = "velocity" if self.kind == "velocity" else str(self.tier)
        return {
            "story": self.story.id,
            "kind": self.kind,
            "tier": self.tier,
            "comments": self.comments,
            "alert_id": f"{self.story.id}:{what}",
        }

    def to_json(self) -> dict[str, Any]:
        """The alert as plain data for the outbox."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        """Rebuild an alert stored by :meth:`to_json`."""
        return cls(
            story=Story.from_json(data["story"]),
            tier=int(data["tier"]),
            comments=int(data["comments"]),
            kind=valid_text(str(data.get("kind", "tier"))),
            gain=int(data.get("gain", 0)),
            minutes=int(data.get("minutes", 0)),
        )
