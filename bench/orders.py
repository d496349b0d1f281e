"""Which request should go next? Request orders compared by simulation, in rounds of one latency.

    .venv/bin/python -m bench.orders

A walk is simulated on each tree shape with a cap of C requests in flight,
every request taking one round: first-in-first-out (the seed's pattern under
a connection limit), deepest first (ours on a story's first walk), last-in-
first-out, and ours on a later walk: the subtree heights of an earlier walk
known (``known``: the same tree, ``known, 10 % older``: heights from the tree
without its newest tenth of comments, as after the previous tier). Every
"ours" order uses :func:`alerts.walk.priority` itself. ``bound`` is a lower
bound no order can beat even knowing the tree: for every depth d, d - 1
rounds to reach it plus ceil(items at depth >= d / C), plus the story.

A second table takes the front page's 900-comment thread and HN-like seed 0
and shuffles their top-level order twelve ways: where the long chain sits in
``kids`` decides a first walk's time, whatever order does not know the tree.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
from collections.abc import Callable, Mapping

from alerts.walk import priority
from bench import frontpage
from tests import trees
from tests.trees import Tree

#: An order: the waiting item's (id, depth, arrival number) to its sort key.
Order = Callable[[int, int, int], float]


def heights(tree: Tree, keep: Callable[[int], bool] = lambda _id: True) -> dict[int, int]:
    """Every kept item's subtree height (1 for a leaf), counting only kept items."""
    out: dict[int, int] = {}
    order: list[int] = []
    stack = [i for i in tree.top if keep(i)]
    while stack:
        item_id = stack.pop()
        order.append(item_id)
        stack.extend(k for k in _kids(tree, item_id) if keep(k))
    for item_id in reversed(order):  # children before parents
        out[item_id] = 1 + max((out.get(k, 0) for k in _kids(tree, item_id) if keep(k)), default=0)
    return out


def _kids(tree: Tree, item_id: int) -> list[int]:
    item = tree.items.get(item_id)
    return list(item.get("kids", [])) if item else []


def orders(tree: Tree) -> dict[str, Order]:
    """The orders compared, for ``tree`` (the ``known`` ones learn its heights)."""
    exact = heights(tree)
    ids = sorted(tree.items)
    cutoff = ids[int(len(ids) * 0.9)] if ids else 0
    older = heights(tree, lambda i: i < cutoff)

    def known(h: Mapping[int, int]) -> Order:
        return lambda item_id, depth, _n: priority(h.get(item_id, 1), depth)

    return {
        "fifo": lambda _i, _d, n: n,
        "lifo": lambda _i, _d, n: -n,
        "deepest (ours, first walk)": lambda _i, depth, _n: priority(1, depth),
        "known (ours, later walk)": known(exact),
        "known, 10 % older": known(older),
    }


def simulate(tree: Tree, cap: int, order: Order) -> int:
    """Rounds to fetch the story and every item of ``tree`` under ``order``."""
    seq = itertools.count()
    queue: list[tuple[float, int, int, int]] = []

    def push(item_id: int, depth: int) -> None:
        n = next(seq)
        heapq.heappush(queue, (order(item_id, depth, n), n, item_id, depth))

    for item_id in tree.top:
        push(item_id, 1)
    now, flying = 0, []  # type: ignore[var-annotated]
    while queue or flying:
        while queue and len(flying) < cap:
            _key, _n, item_id, depth = heapq.heappop(queue)
            heapq.heappush(flying, (now + 1, next(seq), item_id, depth))
        now, _n, item_id, depth = heapq.heappop(flying)
        for kid in _kids(tree, item_id):
            push(kid, depth + 1)
    return now + 1


def bound(tree: Tree, cap: int) -> int:
    """The level bound: no order finishes in fewer rounds."""
    depth: dict[int, int] = {}
    stack = [(i, 1) for i in tree.top]
    while stack:
        item_id, d = stack.pop()
        depth[item_id] = d
        stack.extend((k, d + 1) for k in _kids(tree, item_id))
    per_level = collections.Counter(depth.values())
    at_least = {d: sum(n for level, n in per_level.items() if level >= d) for d in per_level}
    return max(d + -(-n // cap) for d, n in at_least.items())


def shapes() -> dict[str, Tree]:
    """Section 1's shapes, the real threads, and the front page's threads of 300 comments and more."""
    out = {f"hn-like seed {n}": trees.hn_like(1, live=2_000, dead=120, deleted=120, seed=n) for n in range(6)}
    out["bushy, deep chain first"] = trees.generated(1, live=2_000, dead=120, deleted=120, depth=25, fanout=12, seed=1)
    shuffled = trees.generated(1, live=2_000, dead=120, deleted=120, depth=25, fanout=12, seed=1)
    random.Random(5).shuffle(shuffled.top)
    out["bushy, shuffled top level"] = shuffled
    for name in ("hn-thread-26312516", "hn-thread-9646971", "partial-hn-thread-25015967"):
        out[f"real {name.removeprefix('partial-')}"] = trees.from_shared(name)[1]
    for story in frontpage.front_page(0):
        if story.live >= 300:
            out[f"front page, {story.live}"] = frontpage.thread(story, 0)
    return out


def shuffled(tree: Tree, seed: int) -> Tree:
    """``tree`` with its top-level comments in another order."""
    top = list(tree.top)
    random.Random(seed).shuffle(top)
    return Tree(tree.items, top, tree.live)


def main() -> None:
    all_shapes = shapes()
    names = list(orders(next(iter(all_shapes.values()))))
    totals: collections.Counter[str] = collections.Counter()
    rows = 0
    print(f"| shape | cap | bound | {' | '.join(names)} |")
    print("|---|---|---|" + "---|" * len(names))
    for name, tree in all_shapes.items():
        contenders = orders(tree)
        for cap in (32, 100):
            least = bound(tree, cap)
            rounds = {o: simulate(tree, cap, f) for o, f in contenders.items()}
            totals.update({o: r / least for o, r in rounds.items()})
            rows += 1
            print(f"| {name} | {cap} | {least} | " + " | ".join(str(rounds[o]) for o in names) + " |")
    print("| mean rounds / bound | | | " + " | ".join(f"{totals[o] / rows:.3f}" for o in names) + " |")
    print()
    print("Top level shuffled 12 ways, cap 32: rounds / bound, mean and worst")
    print()
    print(f"| shape | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    for name in ("front page, 900", "hn-like seed 0"):
        ratios = collections.defaultdict(list)
        for seed in range(12):
            tree = shuffled(all_shapes[name], seed)
            least = bound(tree, 32)
            for o, f in orders(tree).items():
                ratios[o].append(simulate(tree, 32, f) / least)
        print(f"| {name} | " + " | ".join(f"{sum(r) / len(r):.2f} / {max(r):.2f}" for r in ratios.values()) + " |")


if __name__ == "__main__":
    main()
