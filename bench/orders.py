"""Which request should go next? Request orders compared by simulation, in rounds of one latency.

    .venv/bin/python -m bench.orders

A walk is simulated on each tree shape with a cap of C requests in flight,
every request taking one round: first-in-first-out (the seed's pattern under
a connection limit), deepest first (ours), and two variants. ``bound`` is a
lower bound no order can beat even knowing the tree: for every depth d,
d - 1 rounds to reach it plus ceil(items at depth >= d / C), plus the story.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random

from tests import trees
from tests.trees import Tree

ORDERS = ("fifo", "deepest", "top-then-deepest", "lifo")


def simulate(tree: Tree, cap: int, order: str) -> int:
    """Rounds to fetch the story and every item of ``tree`` under ``order``."""
    kids = {i: (item.get("kids", []) if item else []) for i, item in tree.items.items()}
    seq = itertools.count()
    queue: list[tuple[float, int, int, int]] = []

    def push(item_id: int, depth: int) -> None:
        n = next(seq)
        key = {"fifo": 0.0, "deepest": -depth, "top-then-deepest": -1e6 if depth == 1 else -depth, "lifo": -n}[order]
        heapq.heappush(queue, (key, n, item_id, depth))

    for item_id in tree.top:
        push(item_id, 1)
    now, flying = 0, []  # type: ignore[var-annotated]
    while queue or flying:
        while queue and len(flying) < cap:
            _key, _n, item_id, depth = heapq.heappop(queue)
            heapq.heappush(flying, (now + 1, next(seq), item_id, depth))
        now, _n, item_id, depth = heapq.heappop(flying)
        for kid in kids[item_id]:
            push(kid, depth + 1)
    return now + 1


def bound(tree: Tree, cap: int) -> int:
    """The level bound: no order finishes in fewer rounds."""
    depth: dict[int, int] = {}
    stack = [(i, 1) for i in tree.top]
    while stack:
        item_id, d = stack.pop()
        depth[item_id] = d
        item = tree.items.get(item_id)
        stack.extend((k, d + 1) for k in (item.get("kids", []) if item else []))
    per_level = collections.Counter(depth.values())
    at_least = {d: sum(n for level, n in per_level.items() if level >= d) for d in per_level}
    return max(d + -(-n // cap) for d, n in at_least.items())


def shapes() -> dict[str, Tree]:
    out = {f"hn-like seed {n}": trees.hn_like(1, live=2_000, dead=120, deleted=120, seed=n) for n in range(6)}
    bushy = trees.generated(1, live=2_000, dead=120, deleted=120, depth=25, fanout=12, seed=1)
    out["bushy, deep chain first"] = bushy
    shuffled = trees.generated(1, live=2_000, dead=120, deleted=120, depth=25, fanout=12, seed=1)
    random.Random(5).shuffle(shuffled.top)
    out["bushy, shuffled top level"] = shuffled
    for name in ("hn-thread-26312516", "hn-thread-9646971", "partial-hn-thread-25015967"):
        out[f"real {name.removeprefix('partial-')}"] = trees.from_shared(name)[1]
    return out


def main() -> None:
    totals: collections.Counter[str] = collections.Counter()
    rows = 0
    print(f"| shape | cap | bound | {' | '.join(ORDERS)} |")
    print("|---|---|---|" + "---|" * len(ORDERS))
    for name, tree in shapes().items():
        for cap in (32, 100):
            least = bound(tree, cap)
            rounds = {o: simulate(tree, cap, o) for o in ORDERS}
            totals.update({o: r / least for o, r in rounds.items()})
            rows += 1
            print(f"| {name} | {cap} | {least} | " + " | ".join(str(rounds[o]) for o in ORDERS) + " |")
    print("| mean rounds / bound | | | " + " | ".join(f"{totals[o] / rows:.3f}" for o in ORDERS) + " |")


if __name__ == "__main__":
    main()
