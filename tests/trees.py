"""Comment trees in Hacker News item shape, with their expected live counts.

Every builder is deterministic and allocates ids from ``start_id``, so several
trees can share one :class:`fakehn.FakeHN` without clashing. ``live`` is
what a correct walk counts: reachable comments that are neither ``dead`` nor
``deleted``, each once (replies under a dead or deleted comment count).
"""

from __future__ import annotations

import copy
import json
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Item = dict[str, Any]

DATA_DIR = Path(__file__).parent / "data"
#: The live counts of the shared real threads (see ``data/README.md``).
SHARED_LIVE = {
    "hn-thread-26312516": 485,
    "hn-thread-9646971": 296,
    "partial-hn-thread-25015967": 1968,
}
#: The maximum depth of the shared real threads (1 = top-level comment).
SHARED_DEPTH = {
    "hn-thread-26312516": 11,
    "hn-thread-9646971": 10,
    "partial-hn-thread-25015967": 4,
}
#: First synthetic id for rows the source capture had without one.
PLACEHOLDER_BASE = 9_000_000_000
#: First id for the ``null`` kids added by :func:`with_nulls`.
NULL_BASE = 7_000_000_000
BASE_TIME = 1_600_000_000


@dataclass
class Tree:
    """A story's comments: ``items`` by id, the ``top`` level in order, the expected count."""

    items: dict[int, Item | None]
    top: list[int]
    live: int

    @property
    def depth(self) -> int:
        """The deepest reachable level (1 = top-level comment), cycle-safe."""
        return max((d for _, d in _reachable(self)), default=0)

    def count_live(self) -> int:
        """Count the live comments by walking ``kids`` (a check on ``live``)."""
        return sum(1 for item_id, _ in _reachable(self) if _is_live(self.items.get(item_id)))

    @property
    def comments(self) -> int:
        """The number of comment items, dead and deleted included (``None`` items not)."""
        return sum(1 for item in self.items.values() if item is not None)


def _is_live(item: Item | None) -> bool:
    return item is not None and not item.get("dead") and not item.get("deleted")


def _reachable(tree: Tree) -> list[tuple[int, int]]:
    """(id, depth) of every id reachable from ``top``, each once, breadth first."""
    seen: set[int] = set()
    out: list[tuple[int, int]] = []
    queue = deque((i, 1) for i in tree.top)
    while queue:
        item_id, depth = queue.popleft()
        if item_id in seen:
            continue
        seen.add(item_id)
        out.append((item_id, depth))
        item = tree.items.get(item_id)
        if item is not None:
            queue.extend((k, depth + 1) for k in item.get("kids", ()))
    return out


def comment(
    item_id: int,
    parent: int,
    *,
    by: str = "user",
    time: int | None = None,
    text: str | None = None,
    dead: bool = False,
    deleted: bool = False,
    kids: list[int] | None = None,
) -> Item:
    """One comment in HN shape; deleted ones carry no ``by``/``text``, ``kids`` only if any."""
    item: Item = {"id": item_id, "type": "comment", "parent": parent}
    if not deleted:
        item["by"] = by
    item["time"] = BASE_TIME + item_id % 10_000_000 if time is None else time
    if not deleted:
        item["text"] = f"comment {item_id}" if text is None else text
    if dead:
        item["dead"] = True
    if deleted:
        item["deleted"] = True
    if kids:
        item["kids"] = list(kids)
    return item


def _link(items: dict[int, Item | None], parent: int, kid: int) -> None:
    item = items[parent]
    assert item is not None
    item.setdefault("kids", []).append(kid)


def generated(
    start_id: int,
    *,
    live: int,
    dead: int = 0,
    deleted: int = 0,
    depth: int = 6,
    fanout: int = 8,
    seed: int = 0,
    top_share: float = 0.15,
) -> Tree:
    """A random tree of exactly ``live`` live, ``dead`` dead and ``deleted`` deleted comments.

    Its maximum depth is exactly ``depth``: one chain that deep is built
    first; each later one goes to the top level with probability
    ``top_share``, else under a random comment shallower than ``depth``
    with fewer than ``fanout`` kids. Which comments are dead or deleted is
    random, so some of them have live replies. Top-level comments carry
    ``parent: 0`` until :meth:`fakehn.FakeHN.add_story` sets the story id.
    """
    total = live + dead + deleted
    if min(live, dead, deleted) < 0 or fanout < 1:
        raise ValueError("counts must be >= 0 and fanout >= 1")
    if total == 0:
        return Tree({}, [], 0)
    if not 1 <= depth <= total:
        raise ValueError(f"depth must be in 1..{total} (the number of comments)")
    rng = random.Random(seed)
    kinds = ["live"] * live + ["dead"] * dead + ["deleted"] * deleted
    rng.shuffle(kinds)
    ids = list(range(start_id, start_id + total))
    items: dict[int, Item | None] = {}
    top: list[int] = []
    level: dict[int, int] = {}
    open_: list[int] = []  # comments shallower than depth with room for a kid
    pos: dict[int, int] = {}  # id -> its index in open_
    nkids: dict[int, int] = {}
    for n, (item_id, kind) in enumerate(zip(ids, kinds, strict=True)):
        if n < depth:
            parent = ids[n - 1] if n else None
        else:
            on_top = not open_ or rng.random() < top_share
            parent = None if on_top else open_[rng.randrange(len(open_))]
        if parent is None:
            top.append(item_id)
            level[item_id] = 1
        else:
            _link(items, parent, item_id)
            level[item_id] = level[parent] + 1
            nkids[parent] = nkids.get(parent, 0) + 1
            if nkids[parent] >= fanout and parent in pos:
                i = pos.pop(parent)
                last = open_.pop()
                if last != parent:
                    open_[i] = last
                    pos[last] = i
        items[item_id] = comment(
            item_id,
            parent if parent is not None else 0,
            by=f"user{rng.randrange(1000)}",
            dead=kind == "dead",
            deleted=kind == "deleted",
        )
        if level[item_id] < depth:
            pos[item_id] = len(open_)
            open_.append(item_id)
    return Tree(items, top, live)


def chain(start_id: int, n: int) -> Tree:
    """A single chain of ``n`` live comments, each replying to the one before."""
    items: dict[int, Item | None] = {}
    for i in range(n):
        item_id = start_id + i
        kids = [item_id + 1] if i < n - 1 else None
        items[item_id] = comment(item_id, item_id - 1 if i else 0, kids=kids)
    return Tree(items, [start_id] if n else [], n)


def wide(start_id: int, n: int) -> Tree:
    """``n`` live top-level comments, no replies."""
    items: dict[int, Item | None] = {i: comment(i, 0) for i in range(start_id, start_id + n)}
    return Tree(items, list(items), n)


def from_shared(name: str) -> tuple[Item, Tree]:
    """Load a real thread from ``tests/data`` (``"hn-thread-26312516"`` ...) as (story, tree).

    ``kids`` are rebuilt from ``parent`` in file order; a row without an id
    gets ``PLACEHOLDER_BASE + its index`` and its replies find it through
    ``parent_index``. Missing times are made up from the row index.
    """
    name = name.removesuffix(".json")
    data = json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    meta = data["story"]
    story_id = int(meta["id"])
    rows: list[dict[str, Any]] = data["items"]
    ids = [PLACEHOLDER_BASE + i if row["id"] is None else int(row["id"]) for i, row in enumerate(rows)]
    story_time = meta.get("time") or BASE_TIME
    items: dict[int, Item | None] = {}
    top: list[int] = []
    for i, (item_id, row) in enumerate(zip(ids, rows, strict=True)):
        parent = row["parent"] if row["parent"] is not None else ids[row["parent_index"]]
        items[item_id] = comment(
            item_id,
            int(parent),
            by=row.get("by") or "unknown",
            time=row["time"] if row.get("time") is not None else story_time + 60 * (i + 1),
            dead=bool(row.get("dead")),
            deleted=bool(row.get("deleted")),
        )
        if parent == story_id:
            top.append(item_id)
        else:
            _link(items, int(parent), item_id)
    tree = Tree(items, top, 0)
    tree.live = tree.count_live()
    story: Item = {
        "id": story_id,
        "type": "story",
        "by": meta["by"],
        "title": meta["title"],
        "score": meta["score"],
        "time": story_time,
        "descendants": meta["descendants"] if meta.get("descendants") is not None else tree.comments,
        "kids": list(top),
    }
    if meta.get("url"):
        story["url"] = meta["url"]
    return story, tree


def with_nulls(tree: Tree, n: int, seed: int = 0) -> Tree:
    """A copy with ``n`` extra kid ids, answered ``null``, under random comments; live unchanged.

    The new ids are ``NULL_BASE + max id + 1 ...``, away from any real tree's ids.
    """
    items = copy.deepcopy(tree.items)
    hosts = sorted(i for i, item in items.items() if item is not None)
    if n and not hosts:
        raise ValueError("the tree has no comment to hang a null kid under")
    rng = random.Random(seed)
    first = NULL_BASE + max(items, default=0) + 1
    for null_id in range(first, first + n):
        host = items[rng.choice(hosts)]
        assert host is not None
        kids = host.setdefault("kids", [])
        kids.insert(rng.randrange(len(kids) + 1), null_id)
        items[null_id] = None
    return Tree(items, list(tree.top), tree.live)


def with_cycle(tree: Tree) -> Tree:
    """A copy where the deepest comment's ``kids`` also lists a top-level ancestor and itself.

    When the tree is only one level deep, the comment lists itself and
    another top-level comment. Live is unchanged: a correct walk
    counts each comment once.
    """
    items = copy.deepcopy(tree.items)
    parents: dict[int, int | None] = {}
    deepest: tuple[int, int] | None = None
    seen: set[int] = set()
    queue: deque[tuple[int, int, int | None]] = deque((i, 1, None) for i in tree.top)
    while queue:
        item_id, depth, parent = queue.popleft()
        if item_id in seen:
            continue
        seen.add(item_id)
        item = items.get(item_id)
        if item is None:
            continue
        parents[item_id] = parent
        if deepest is None or depth > deepest[1]:
            deepest = (item_id, depth)
        queue.extend((k, depth + 1, item_id) for k in item.get("kids", ()))
    if deepest is None:
        raise ValueError("the tree has no comment to make a cycle with")
    node = deepest[0]
    ancestor = node
    while (up := parents[ancestor]) is not None:
        ancestor = up
    item = items[node]
    assert item is not None
    kids = item.setdefault("kids", [])
    kids.append(node)
    if ancestor == node:  # a top-level comment: point at another one
        ancestor = next((t for t in tree.top if t != node), node)
    kids.append(ancestor)
    return Tree(items, list(tree.top), tree.live)


def hn_like(
    start_id: int,
    *,
    live: int,
    dead: int = 0,
    deleted: int = 0,
    top: int = 300,
    chains: tuple[int, ...] = (25, 18, 12),
    seed: int = 0,
) -> Tree:
    """A thread shaped like a busy HN one: a wide, shallow mass plus a few thin argument chains.

    ``top`` top-level comments; each of ``chains`` is a run of single replies
    (two people arguing) under a random top-level comment, reaching that
    depth; the rest reply to random comments, almost all within depth 6.
    Dead and deleted flags fall on random comments.
    """
    rng = random.Random(seed)
    total = live + dead + deleted
    if total < top + sum(c - 1 for c in chains):
        raise ValueError("not enough comments for the top level and the chains")
    kinds = ["live"] * live + ["dead"] * dead + ["deleted"] * deleted
    rng.shuffle(kinds)
    items: dict[int, Item | None] = {}
    tops: list[int] = []
    level: dict[int, int] = {}
    next_id = iter(range(start_id, start_id + total))

    def add(parent: int | None) -> int:
        item_id = next(next_id)
        kind = kinds[item_id - start_id]
        items[item_id] = comment(
            item_id, parent or 0, by=f"user{rng.randrange(1000)}", dead=kind == "dead", deleted=kind == "deleted"
        )
        if parent is None:
            tops.append(item_id)
            level[item_id] = 1
        else:
            _link(items, parent, item_id)
            level[item_id] = level[parent] + 1
        return item_id

    for _ in range(top):
        add(None)
    for length in chains:
        node = rng.choice(tops)
        for _ in range(length - 1):
            node = add(node)
    open_ = list(items)
    while len(items) < total:
        parent = rng.choice(open_)
        if level[parent] < 6 or rng.random() < 0.2:
            open_.append(add(parent))
    return Tree(items, tops, live)
