"""The concurrent comment-tree walk: fan out over ``kids``, fan in to one count.

The walk is the recursive coroutine of the classic asyncio example, made safe:
every id is visited at most once (so a cycle in ``kids`` ends), the number of
items one walk fetches is capped, a failed fetch marks the walk incomplete
instead of killing it, and the children run in a TaskGroup, so no task
outlives the walk and a cancel reaches all of them. The concurrency bound
lives in the client, around each request.
"""

from __future__ import annotations

import asyncio
import logging
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

    async def visit(self, item_id: int, depth: int) -> None:
        """Fetch and count ``item_id`` (at ``depth``, 1 = top level) and its subtree.

        A chain of only children is followed in this loop rather than by
        recursion, so a reply chain thousands deep cannot exhaust the stack.
        """
        while True:
            item = await self._fetch(item_id, depth)
            if item is None:
                return
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
        await self.fan_out(fresh, depth + 1)

    async def fan_out(self, ids: list[int], depth: int) -> None:
        """Visit already-claimed ids at ``depth`` concurrently; fan in when all are done."""
        if ids:
            async with asyncio.TaskGroup() as group:
                for kid in ids:
                    group.create_task(self.visit(kid, depth))

    async def _fetch(self, item_id: int, depth: int) -> Item | None:
        """The item, or ``None`` (logged) when it counts nothing or could not be fetched.

        The deepest waiting item is asked for first: a long reply chain sets
        the walk's least possible time, so it must not wait behind the wide
        shallow levels (bench/RESULTS.md compares orders on real and
        generated shapes).
        """
        try:
            item = await self.source.item(item_id, priority=-depth)
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


async def walk_kids(source: ItemSource, root_id: int, root: Item, *, max_items: int, below: int = 0) -> WalkResult:
    """Count the live comments under ``root``, the item ``root_id`` already fetched.

    ``below``: also count (as ``older``) the live comments with a smaller id,
    that is, created before the item ``below``.
    """
    walk = _Walk(source, max_items, WalkResult(root=root_id), below)
    walk.seen.add(root_id)
    walk.limit += 1  # the root itself is not one of the walk's fetches
    await walk.fan_out([i for i in kid_ids(root) if walk.claim(i)], 1)
    if walk.result.capped:
        log.warning("walk of %d stopped at ALERTS_MAX_COMMENTS=%d items", root_id, max_items)
    return walk.result
