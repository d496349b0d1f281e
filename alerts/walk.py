"""The concurrent comment-tree walk: fan out over ``kids``, fan in to one count.

The walk is the recursive coroutine of the classic asyncio example, made safe:
every id is visited at most once (so a cycle in ``kids`` ends), the number of
items one walk fetches is capped, a failed fetch marks the walk incomplete
instead of killing it, and the children run in a TaskGroup, so no task
outlives the walk and a cancel reaches all of them. The concurrency bound
lives in the client, around each request.

Which waiting request goes first decides how long a walk takes: a walk can
end no sooner than its longest reply chain, one request after another. The
walk asks first for the item with the most levels known below it (each walk
returns the height of every subtree it saw, and :class:`Shapes` keeps them
for the story's next walk), then for the deepest. Without a previous walk
that is deepest-first, the best an order can do not knowing the tree
(bench/orders.py measures both against the lower bounds).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from alerts.errors import FetchError, MalformedItemError, RejectedFetchError
from alerts.model import Item

log = logging.getLogger(__name__)


class ItemSource(Protocol):
    """What the walk needs from the API client."""

    async def item(self, item_id: int, *, priority: float = 0.0) -> Item | None:
        """One item, or ``None`` for ``null``; lower ``priority`` values go first."""
        ...


@dataclass
class WalkResult:
    """What one walk found.

    ``complete`` is false when some item could not be fetched (retries spent);
    ``capped`` is true when the walk stopped at ALERTS_MAX_COMMENTS items. In
    both cases ``comments`` is a lower bound of the true count.
    """

    root: int
    comments: int = 0
    older: int = 0  # the live comments whose id is below the walk's ``below`` bound
    visited: int = 0
    failed: int = 0
    unreadable: int = 0
    capped: bool = False
    heights: dict[int, int] = field(default_factory=dict, repr=False)  # see :class:`Shapes`

    @property
    def complete(self) -> bool:
        """True when every item the walk tried to fetch was fetched."""
        return self.failed == 0


def is_live(item: Item) -> bool:
    """A comment counts when it is neither dead nor deleted."""
    return not item.get("dead") and not item.get("deleted")


def kid_ids(item: Item) -> list[int]:
    """The ``kids`` of an item, ignoring anything that is not an int id."""
    kids = item.get("kids")
    if not isinstance(kids, list):
        return []
    return [k for k in kids if isinstance(k, int) and not isinstance(k, bool)]


@dataclass
class _Walk:
    source: ItemSource
    limit: int
    result: WalkResult
    below: int
    known: Mapping[int, int]
    seen: set[int] = field(default_factory=set)

    def claim(self, item_id: int) -> bool:
        """Reserve an id for this walk: false if seen before or over the cap."""
        if item_id in self.seen:
            return False
        if len(self.seen) >= self.limit:
            self.result.capped = True
            return False
        self.seen.add(item_id)
        return True

    async def visit(self, item_id: int, depth: int) -> int:
        """Fetch and count ``item_id`` (at ``depth``, 1 = top level) and its subtree; return the subtree's height.

        A chain of only children is followed in this loop rather than by
        recursion, so a reply chain thousands deep cannot exhaust the stack.
        """
        chain: list[int] = []
        while True:
            item = await self._fetch(item_id, depth)
            if item is None:
                fresh: list[int] = []
                break
            chain.append(item_id)
            if is_live(item):
                self.result.comments += 1
                if item_id < self.below:
                    self.result.older += 1
            fresh = [i for i in kid_ids(item) if self.claim(i)]
            del item
            if len(fresh) != 1:
                break
            item_id = fresh[0]
            depth += 1
        height = await self.fan_out(fresh, depth + 1)
        for link in reversed(chain):
            height += 1
            if height > 1:  # a leaf is what an unknown item is taken for anyway
                self.result.heights[link] = height
        return height

    async def fan_out(self, ids: list[int], depth: int) -> int:
        """Visit already-claimed ids at ``depth`` concurrently; fan in to the tallest subtree's height."""
        if not ids:
            return 0
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.visit(kid, depth)) for kid in ids]
        return max(task.result() for task in tasks)

    async def _fetch(self, item_id: int, depth: int) -> Item | None:
        """The item, or ``None`` (logged) when it counts nothing or could not be fetched.

        The item with the most levels known below it is asked for first,
        then the deepest: a long reply chain sets the walk's least possible
        time, so it must not wait behind the wide shallow levels
        (bench/RESULTS.md compares orders on real and generated shapes).
        """
        try:
            item = await self.source.item(item_id, priority=priority(self.known.get(item_id, 1), depth))
        except (MalformedItemError, RejectedFetchError) as exc:
            self.result.unreadable += 1
            log.warning("item %d counts nothing: %s", item_id, exc.reason)
            return None
        except FetchError as exc:
            self.result.failed += 1
            log.warning("item %d not fetched, walk of %d incomplete: %s", item_id, self.result.root, exc.reason)
            return None
        self.result.visited += 1
        if item is None:
            self.result.unreadable += 1
            log.debug("item %d is null, counts nothing", item_id)
        return item


#: Heights above this rank alike (a walk visits at most ALERTS_MAX_COMMENTS items).
MAX_HEIGHT = 10_000_000


def priority(height: int, depth: int) -> float:
    """A request's place in the queue (lower goes first): the taller known subtree, then the deeper item.

    ``depth / (depth + 1)`` stays below 1, so depth only breaks ties of
    height; heights are capped well above any walk's so the stream source's
    first reads of new items (a far lower value) still come before any walk.
    """
    return -(min(height, MAX_HEIGHT) + depth / (depth + 1))


class Shapes:
    """The subtree heights of the last walks of the most recently walked stories, to order their next walk.

    Only what speeds a walk up is kept: items with something below them (a
    leaf is what an unknown item is taken for), for at most ``stories``
    stories and ``items`` heights in all (about 100 bytes each), the least
    recently walked story forgotten first. It lives in memory: it decides
    how fast a walk ends, never what it counts, so after a restart the first
    walk of each story is merely deepest-first again.
    """

    def __init__(self, stories: int = 200, items: int = 100_000) -> None:
        self._limit = stories
        self._items_limit = items
        self._items = 0
        self._heights: OrderedDict[int, dict[int, int]] = OrderedDict()

    def get(self, story_id: int) -> Mapping[int, int]:
        """The heights the story's last walk saw (empty if none is remembered)."""
        return self._heights.get(story_id, {})

    def keep(self, result: WalkResult) -> None:
        """Remember the heights ``result`` found, in place of the story's older ones.

        A walk that failed somewhere saw less than the one before it may
        have, and one too big to keep would only push every other story
        out: in both cases what is known stays as it is.
        """
        if result.failed or len(result.heights) > self._items_limit:
            return
        self._items -= len(self._heights.pop(result.root, {}))
        self._heights[result.root] = result.heights
        self._items += len(result.heights)
        while len(self._heights) > self._limit or self._items > self._items_limit:
            _story, heights = self._heights.popitem(last=False)
            self._items -= len(heights)

    def __len__(self) -> int:
        return len(self._heights)


async def walk_kids(
    source: ItemSource,
    root_id: int,
    root: Item,
    *,
    max_items: int,
    below: int = 0,
    shapes: Shapes | None = None,
) -> WalkResult:
    """Count the live comments under ``root``, the item ``root_id`` already fetched.

    ``below``: also count (as ``older``) the live comments with a smaller id,
    that is, created before the item ``below``. ``shapes``: where the heights
    of this story's last walk are read from, to ask for the longest chains
    first, and where this walk's are kept (the result's ``heights``).
    """
    known = {} if shapes is None else shapes.get(root_id)
    walk = _Walk(source, max_items, WalkResult(root=root_id), below, known)
    walk.seen.add(root_id)
    walk.limit += 1  # the root itself is not one of the walk's fetches
    await walk.fan_out([i for i in kid_ids(root) if walk.claim(i)], 1)
    if walk.result.capped:
        log.warning("walk of %d stopped at ALERTS_MAX_COMMENTS=%d items", root_id, max_items)
    if shapes is not None:
        shapes.keep(walk.result)
    return walk.result
