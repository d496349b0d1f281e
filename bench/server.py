"""The fake HN API in its own process, loaded with the benchmark threads.

    python -m bench.server --latency 0.08

prints one JSON line ``{"url": ..., "stories": {...}}`` and serves until
stdin closes. ``GET /_control/<command>`` steers it from the harness:
``stats``, ``reset``, ``latency?seconds=S``, ``grow?story=ID&n=N``,
``fail_all?status=S&times=N&retry_after=R``, ``clear``, ``list?name=L&ids=1,2``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
from typing import Any

from tests import trees
from tests.fakehn import FakeHN

BIG = (1, 5, 6)  # 2,000 live + dead and deleted, depth 25: wide and shallow, a few thin long chains
BUSHY = 4  # the same counts, random attachment: deep levels are bushy, not thin
EMPTY = 3  # no comments: what a process costs before its first walk
HUGE = 2  # 20,000 live comments
CYCLE = list(range(101, 131))  # 30 stories of 50 to 1,500 comments
REAL = {26312516: "hn-thread-26312516", 9646971: "hn-thread-9646971", 25015967: "partial-hn-thread-25015967"}


def load(hn: FakeHN) -> dict[str, Any]:
    """Put every benchmark thread into ``hn``; returns what each story is."""
    info: dict[str, Any] = {}
    # Target 1's thread: 2,000 live comments plus dead and deleted ones, depth 25, in two shapes.
    for n, sid in enumerate(BIG):
        tree = trees.hn_like(20_000_000 + 1_000_000 * n, live=2_000, dead=120, deleted=120, seed=n)
        hn.add_story(sid, tree, title=f"Big thread, HN-like {n}")
        info[f"big_hn_like_{n}"] = {"id": sid, "live": tree.live, "items": tree.comments, "depth": tree.depth}
    bushy = trees.generated(5_000_000, live=2_000, dead=120, deleted=120, depth=25, fanout=12, seed=1)
    random.Random(5).shuffle(bushy.top)  # the generator builds the deep chain first; let it land anywhere
    hn.add_story(BUSHY, bushy, title="Big thread, bushy")
    info["big_bushy"] = {"id": BUSHY, "live": bushy.live, "items": bushy.comments, "depth": bushy.depth}
    hn.add_story(EMPTY, trees.Tree({}, [], 0), title="No comments")
    info["empty"] = {"id": EMPTY, "live": 0, "items": 0, "depth": 0}
    huge = trees.generated(3_000_000, live=20_000, dead=500, deleted=500, depth=30, fanout=20, seed=2)
    hn.add_story(HUGE, huge, title="Huge thread")
    info["huge"] = {"id": HUGE, "live": huge.live, "items": huge.comments, "depth": huge.depth}
    rng = random.Random(3)
    cycle = []
    # Most threads are small, a few are big: about 10,000 items in all.
    sizes = [50, 1_500, *sorted(int(50 * 30 ** (rng.random() ** 2.2)) for _ in CYCLE[2:])]
    for n, sid in enumerate(CYCLE):
        live = sizes[n]
        tree = trees.generated(
            10_000_000 + n * 100_000,
            live=live,
            dead=live // 20,
            deleted=live // 20,
            depth=rng.randint(4, 20),
            seed=100 + n,
        )
        hn.add_story(sid, tree, title=f"Cycle story {sid}")
        cycle.append({"id": sid, "live": tree.live, "items": tree.comments, "depth": tree.depth})
    info["cycle"] = cycle
    for sid, name in REAL.items():
        story, tree = trees.from_shared(name)
        hn.put_story(story, tree)
        info[name] = {"id": sid, "live": tree.live, "items": tree.comments, "depth": tree.depth}
    hn.set_list("topstories", list(CYCLE))
    return info


def control(hn: FakeHN, grower: random.Random) -> Any:
    def handle(command: str, params: dict[str, str]) -> Any:
        if command == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            with hn.lock:
                return {
                    "requests": sum(hn.requests.values()),
                    "item_requests": hn.item_requests,
                    "max_in_flight": hn.max_in_flight,
                    "cpu": usage.ru_utime + usage.ru_stime,
                }
        if command == "reset":
            hn.reset_stats()
            return {"ok": True}
        if command == "latency":
            hn.latency = float(params["seconds"])
            return {"ok": True}
        if command == "list":
            hn.set_list(params["name"], [int(i) for i in params.get("ids", "").split(",") if i])
            return {"ok": True}
        if command == "grow":
            return {"live_added": _grow(hn, int(params["story"]), int(params["n"]), grower)}
        if command == "fail_all":
            headers = {"Retry-After": params["retry_after"]} if "retry_after" in params else {}
            hn.fail_all(int(params["times"]), int(params["status"]), headers)
            return {"ok": True}
        if command == "clear":
            hn.clear_faults()
            return {"ok": True}
        return {"error": f"unknown command {command}"}

    return handle


def _grow(hn: FakeHN, story_id: int, n: int, rng: random.Random) -> int:
    """Add ``n`` live top-level comments to a story, bumping its descendants."""
    with hn.lock:
        story = hn.items[story_id]
        assert story is not None
        kids = list(story.get("kids", []))
        next_id = max(i for i in hn.items) + 1
        for k in range(n):
            cid = next_id + k
            hn.items[cid] = {"id": cid, "type": "comment", "by": "bench", "parent": story_id, "time": 1}
            kids.insert(rng.randint(0, len(kids)), cid)
        hn.items[story_id] = {**story, "kids": kids, "descendants": int(story.get("descendants") or 0) + n}
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description="fake HN API for benchmarks")
    parser.add_argument("--latency", type=float, default=0.08)
    args = parser.parse_args()
    hn = FakeHN(latency=args.latency)
    info = load(hn)
    hn.control = control(hn, random.Random(4))
    hn.start()
    print(json.dumps({"url": hn.url, "stories": info}), flush=True)
    sys.stdin.read()  # serve until the harness closes our stdin
    hn.stop()


if __name__ == "__main__":
    main()
