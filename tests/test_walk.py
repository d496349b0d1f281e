"""The walk counts exactly, over real HTTP, whatever the tree holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from alerts.hn import HNClient, RetryPolicy
from alerts.http import make_client
from alerts.walk import Shapes, WalkResult, priority, walk_kids
from tests import trees
from tests.fakehn import FakeHN


@pytest.fixture
async def client(hn: FakeHN) -> AsyncIterator[HNClient]:
    async with make_client(16) as transport:
        yield HNClient(transport, hn.url, max_concurrency=16, retry=RetryPolicy(attempts=3, backoff=0))


async def count(client: HNClient, story_id: int, max_items: int = 20_000) -> tuple[int, bool, bool]:
    root = await client.item(story_id)
    assert root is not None
    result = await walk_kids(client, story_id, root, max_items=max_items)
    return result.comments, result.complete, result.capped


@pytest.mark.parametrize(
    "tree",
    [
        trees.generated(1_000, live=300, dead=40, deleted=35, depth=12, seed=7),
        trees.generated(1_000, live=50, dead=50, deleted=50, depth=30, fanout=2, seed=8),
        trees.chain(1_000, 60),
        trees.wide(1_000, 400),
    ],
    ids=["mixed", "mostly-dead-deep", "chain-60", "wide-400"],
)
async def test_exact_count_on_generated_trees(hn: FakeHN, client: HNClient, tree: trees.Tree) -> None:
    """Live comments are counted once each, walking through dead and deleted ones."""
    hn.add_story(1, tree)
    assert await count(client, 1) == (tree.live, True, False)
    assert hn.item_requests == 1 + tree.comments


@pytest.mark.parametrize(
    ("name", "live"),
    [("hn-thread-26312516", 485), ("hn-thread-9646971", 296), ("partial-hn-thread-25015967", 1968)],
)
async def test_exact_count_on_real_threads(hn: FakeHN, client: HNClient, name: str, live: int) -> None:
    """Real HN thread shapes (with their dead and deleted flags) count exactly."""
    story, tree = trees.from_shared(name)
    hn.put_story(story, tree)
    assert await count(client, int(story["id"])) == (live, True, False)


async def test_null_items_count_nothing(hn: FakeHN, client: HNClient) -> None:
    """Kids that the API answers with null are skipped, the walk stays complete."""
    tree = trees.with_nulls(trees.generated(1_000, live=80, dead=5, depth=6, seed=3), 12, seed=3)
    hn.add_story(1, tree)
    assert await count(client, 1) == (80, True, False)


async def test_cycle_in_kids_ends_and_counts_once(hn: FakeHN, client: HNClient) -> None:
    """An id that appears again among its own descendants is fetched and counted once."""
    tree = trees.with_cycle(trees.generated(1_000, live=120, deleted=6, depth=8, seed=5))
    hn.add_story(1, tree)
    assert await count(client, 1) == (tree.live, True, False)
    assert max(hn.requests.values()) == 1


async def test_duplicate_kid_ids_count_once(hn: FakeHN, client: HNClient) -> None:
    """A kid listed twice under one parent is fetched once."""
    tree = trees.wide(1_000, 3)
    hn.add_story(1, tree)
    hn.items[1]["kids"] = [1_000, 1_000, 1_001, 1_002, 1_001]
    assert await count(client, 1) == (3, True, False)


async def test_max_comments_caps_the_walk(hn: FakeHN, client: HNClient) -> None:
    """A walk fetches at most ALERTS_MAX_COMMENTS items and says it was capped."""
    hn.add_story(1, trees.wide(1_000, 500))
    comments, complete, capped = await count(client, 1, max_items=200)
    assert (comments, complete, capped) == (200, True, True)
    assert hn.item_requests == 201


async def test_malformed_item_counts_nothing_after_its_attempts(hn: FakeHN, client: HNClient) -> None:
    """An item whose JSON stays malformed is tried 3 times, counts nothing, its siblings still count."""
    tree = trees.wide(1_000, 10)
    hn.add_story(1, tree)
    hn.malformed(1_004)
    assert await count(client, 1) == (9, True, False)
    assert hn.requests["/v0/item/1004.json"] == 3


async def test_unfetchable_item_makes_the_walk_incomplete(hn: FakeHN, client: HNClient) -> None:
    """An item that fails with 503 on every attempt leaves an incomplete walk with a lower bound."""
    tree = trees.chain(1_000, 5)
    hn.add_story(1, tree)
    hn.fail("/v0/item/1002.json", times=3, status=503)
    assert await count(client, 1) == (2, False, False)


async def test_transient_faults_still_count_exactly(hn: FakeHN, client: HNClient) -> None:
    """Every request failing twice (503 then 429) before it succeeds still gives the exact count."""
    tree = trees.generated(1_000, live=60, dead=4, deleted=3, depth=5, seed=11)
    hn.add_story(1, tree)
    hn.fail_all(2, status=503)
    assert await count(client, 1) == (60, True, False)
    assert hn.item_requests == 3 * (1 + tree.comments)


def reference_heights(tree: trees.Tree) -> dict[int, int]:
    """Each item's subtree height (1 for a leaf; a ``null`` item has none), for items with something below."""
    heights: dict[int, int] = {}

    def height(item_id: int) -> int:
        item = tree.items.get(item_id)
        if item is None:
            return 0
        h = 1 + max((height(k) for k in item.get("kids", [])), default=0)
        if h > 1:
            heights[item_id] = h
        return h

    for top in tree.top:
        height(top)
    return heights


@pytest.mark.parametrize(
    "tree",
    [
        trees.generated(1_000, live=300, dead=40, deleted=35, depth=12, seed=7),
        trees.with_nulls(trees.generated(1_000, live=80, dead=5, depth=6, seed=3), 12, seed=3),
        trees.chain(1_000, 60),
    ],
    ids=["mixed", "with-nulls", "chain-60"],
)
async def test_walk_reports_every_subtree_height(hn: FakeHN, client: HNClient, tree: trees.Tree) -> None:
    """The heights a walk hands to the next one are its tree's: dead and deleted count, ``null`` does not."""
    hn.add_story(1, tree)
    root = await client.item(1)
    assert root is not None
    result = await walk_kids(client, 1, root, max_items=20_000)
    assert result.heights == reference_heights(tree)


def chain_last(leaves: int, chain: int) -> trees.Tree:
    """``leaves`` top-level comments with no replies, then one whose reply chain is ``chain`` long."""
    tree = trees.wide(1_000, leaves)
    start = 1_000 + leaves
    for i in range(chain):
        item_id = start + i
        tree.items[item_id] = trees.comment(
            item_id, item_id - 1 if i else 1, kids=[item_id + 1] if i < chain - 1 else None
        )
    tree.top.append(start)
    return trees.Tree(tree.items, tree.top, leaves + chain)


async def test_a_later_walk_asks_for_the_longest_chain_first(hn: FakeHN) -> None:
    """Deepest-first cannot know a chain hangs under the last top-level comment; the heights of a first walk can.

    One request at a time, so the server sees the walk's order: the first
    walk reaches the chain only after every leaf before it; the second asks
    for the chain right after the request that took the free slot.
    """
    tree = chain_last(leaves=20, chain=15)
    chain_paths = {f"/v0/item/{i}.json" for i in range(1_020, 1_035)}
    hn.add_story(1, tree)
    shapes = Shapes()
    orders = []
    async with make_client(1) as transport:
        client = HNClient(transport, hn.url, max_concurrency=1, retry=RetryPolicy(attempts=3, backoff=0))
        root = await client.item(1)
        assert root is not None
        for _ in range(2):
            hn.request_order = []
            result = await walk_kids(client, 1, root, max_items=20_000, shapes=shapes)
            assert (result.comments, result.complete) == (35, True)
            orders.append(hn.request_order)
    first, later = orders
    assert set(first[-15:]) == chain_paths  # the chain waited behind all 20 leaves
    assert set(later[1:16]) == chain_paths  # the chain went first (after the request that found the slot free)


def test_shapes_keep_the_most_recently_walked_stories() -> None:
    """At most ``stories`` stories are remembered; the least recently walked is forgotten first."""
    shapes = Shapes(stories=2)
    for story_id in (1, 2, 1, 3):
        shapes.keep(WalkResult(root=story_id, heights={story_id * 10: 2}))
    assert len(shapes) == 2
    assert shapes.get(2) == {}
    assert shapes.get(1) == {10: 2}
    assert shapes.get(3) == {30: 2}


def test_shapes_hold_a_bounded_number_of_heights_in_all() -> None:
    """Huge threads cannot make the remembered shapes grow past ``items`` heights: the oldest story goes."""
    shapes = Shapes(stories=200, items=5)
    shapes.keep(WalkResult(root=1, heights=dict.fromkeys(range(3), 2)))
    shapes.keep(WalkResult(root=2, heights=dict.fromkeys(range(10, 13), 2)))
    assert shapes.get(1) == {} and len(shapes.get(2)) == 3
    shapes.keep(WalkResult(root=2, heights=dict.fromkeys(range(10, 15), 2)))  # replaces its own, still fits
    assert len(shapes) == 1 and len(shapes.get(2)) == 5
    shapes.keep(WalkResult(root=3, heights=dict.fromkeys(range(20, 26), 2)))  # too big to keep: nothing pushed out
    shapes.keep(WalkResult(root=2, failed=1))  # saw less than the last walk: the last walk's heights stay
    assert len(shapes) == 1 and len(shapes.get(2)) == 5 and shapes.get(3) == {}


def test_priority_orders_height_then_depth_and_stays_behind_first_reads() -> None:
    """A taller known subtree goes first whatever the depth; depth breaks ties; no walk passes the stream's reads."""
    assert priority(3, 1) < priority(2, 50) < priority(2, 49) < priority(1, 1_000_000)
    assert priority(10**12, 10**9) > -1e9  # the stream source reads new items at -1e9
