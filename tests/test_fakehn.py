"""Quick checks of the fake HN server and the tree builders themselves."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import trees
from tests.conftest import wait_for
from tests.fakehn import FakeHN


@pytest.fixture
def hn() -> Iterator[FakeHN]:
    """A started fake API, stopped after the test."""
    with FakeHN() as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A keep-alive httpx client, like the service's."""
    with httpx.Client(timeout=5) as c:
        yield c


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_items_and_null_are_served(hn: FakeHN, client: httpx.Client) -> None:
    """Known items come back as JSON, unknown and None ones as null, and every request is counted."""
    hn.add_story(1, trees.chain(10, 2), title="Hello")
    hn.items[99] = None
    story = client.get(f"{hn.url}/item/1.json").json()
    assert story["type"] == "story"
    assert story["title"] == "Hello"
    assert story["kids"] == [10]
    assert story["descendants"] == 2
    assert client.get(f"{hn.url}/item/10.json").json()["parent"] == 1
    for missing in (99, 12345):
        response = client.get(f"{hn.url}/item/{missing}.json")
        assert response.status_code == 200
        assert response.content == b"null"
    assert _get(f"{hn.url}/item/11.json?print=pretty")["parent"] == 10
    assert hn.requests["/v0/item/1.json"] == 1
    assert hn.total_requests == hn.item_requests == 5
    hn.reset_stats()
    assert hn.total_requests == 0
    assert hn.max_in_flight == 0


def test_lists_and_unknown_paths(hn: FakeHN, client: httpx.Client) -> None:
    """Story lists serve their ids (unset ones []), anything else is a JSON 404."""
    hn.set_list("topstories", [3, 2, 1])
    assert client.get(f"{hn.url}/topstories.json").json() == [3, 2, 1]
    assert client.get(f"{hn.url}/askstories.json").json() == []
    response = client.get(f"{hn.url}/nosuchthing.json")
    assert response.status_code == 404
    assert "error" in response.json()
    assert client.get(f"{hn.url}/item/abc.json").status_code == 404


def test_fail_gives_status_then_success(hn: FakeHN, client: httpx.Client) -> None:
    """fail() answers the scripted status, headers and body the given times, in order, then the item."""
    hn.items[5] = {"id": 5, "type": "comment"}
    path, url = "/v0/item/5.json", f"{hn.url}/item/5.json"
    hn.fail(path, 2)
    hn.fail(path, 1, status=500, headers={"X-Why": "test"}, body=b"oops")
    first, second, third = (client.get(url) for _ in range(3))
    assert [first.status_code, second.status_code] == [503, 503]
    assert first.json() == {"error": "injected"}
    assert third.status_code == 500
    assert third.headers["x-why"] == "test"
    assert third.content == b"oops"
    assert client.get(url).json() == {"id": 5, "type": "comment"}
    assert hn.requests[path] == 4


def test_fail_all_counts_per_path(hn: FakeHN, client: httpx.Client) -> None:
    """fail_all(2, 429, Retry-After) fails the first two requests of every path, then serves it."""
    hn.items[1] = {"id": 1}
    hn.set_list("topstories", [1])
    hn.fail_all(2, 429, {"Retry-After": "0"})
    for url in (f"{hn.url}/item/1.json", f"{hn.url}/topstories.json"):
        responses = [client.get(url) for _ in range(3)]
        assert [r.status_code for r in responses] == [429, 429, 200]
        assert responses[0].headers["retry-after"] == "0"
    assert hn.total_requests == 6


@pytest.mark.parametrize("hard", [False, True])
def test_reset_connection_is_a_transport_error(hn: FakeHN, client: httpx.Client, hard: bool) -> None:
    """A reset request gets no answer (a transport error); the same client then recovers."""
    hn.items[7] = {"id": 7}
    url = f"{hn.url}/item/7.json"
    assert client.get(url).status_code == 200  # a pooled keep-alive connection
    hn.reset_connection("/v0/item/7.json", hard=hard)
    with pytest.raises(httpx.TransportError):
        client.get(url)
    hn.reset_connection("/v0/item/7.json")
    with pytest.raises(ConnectionResetError):  # urllib: http.client.RemoteDisconnected
        _get(url)
    assert client.get(url).json() == {"id": 7}
    assert hn.requests["/v0/item/7.json"] == 4


def test_truncate_cuts_the_body(hn: FakeHN, client: httpx.Client) -> None:
    """A truncated answer has the full Content-Length but half the body, then the connection closes."""
    hn.items[8] = {"id": 8, "type": "comment", "text": "x" * 100}
    url = f"{hn.url}/item/8.json"
    hn.truncate("/v0/item/8.json", times=2)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    with pytest.raises(http.client.IncompleteRead), urllib.request.urlopen(url, timeout=5) as r:
        json.loads(r.read())
    assert client.get(url).json()["id"] == 8


def test_malformed_stays_malformed(hn: FakeHN, client: httpx.Client) -> None:
    """A malformed item answers 200 with its non-JSON body every time."""
    hn.items[9] = {"id": 9}
    hn.malformed(9)
    for _ in range(3):
        response = client.get(f"{hn.url}/item/9.json")
        assert response.status_code == 200
        assert response.content == b'{"id": '
        with pytest.raises(json.JSONDecodeError):
            response.json()


def test_fail_rate_is_seeded(hn: FakeHN, client: httpx.Client) -> None:
    """fail_rate gives random 502s, the same ones for the same seed."""
    hn.fail_rate = 0.5
    runs = []
    for _ in range(2):
        hn.seed = 42  # starts the sequence over
        runs.append([client.get(f"{hn.url}/item/1.json").status_code for _ in range(20)])
    assert runs[0] == runs[1]
    assert {502, 200} == set(runs[0])


def test_concurrent_requests_overlap_under_latency(hn: FakeHN) -> None:
    """With latency, requests from several threads are handled at the same time."""
    hn.latency = 0.2
    hn.set_delay("/v0/item/2.json", 0.05)
    hn.items.update({i: {"id": i} for i in range(8)})
    results: list[Any] = []
    threads = [threading.Thread(target=lambda i=i: results.append(_get(f"{hn.url}/item/{i}.json"))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["id"] for r in results) == list(range(8))
    assert hn.max_in_flight > 1
    # The handler counts itself out just after its answer is sent: wait for that, do not race it.
    wait_for(lambda: hn.in_flight == 0, timeout=5, what="every handler to finish")


def test_stop_is_idempotent_and_ends_keepalive(client: httpx.Client) -> None:
    """stop() can be called twice and closes pooled connections, so later requests fail."""
    hn = FakeHN().start()
    url = f"{hn.url}/item/1.json"
    assert client.get(url).content == b"null"
    hn.stop()
    hn.stop()
    with pytest.raises(httpx.TransportError):
        client.get(url)


@pytest.mark.parametrize("name", sorted(trees.SHARED_LIVE))
def test_shared_trees(name: str) -> None:
    """The real threads load with their known live counts and depths."""
    story, tree = trees.from_shared(name)
    assert tree.live == trees.SHARED_LIVE[name] == tree.count_live()
    assert tree.depth == trees.SHARED_DEPTH[name]
    assert story["kids"] == tree.top
    assert story["id"] == int(name.rsplit("-", 1)[1])


def test_walk_over_http_counts_shared_tree(hn: FakeHN, client: httpx.Client) -> None:
    """A plain BFS through the server counts a real thread exactly, through nulls and a cycle."""
    story, tree = trees.from_shared("hn-thread-9646971")
    hn.put_story(story, trees.with_cycle(trees.with_nulls(tree, 5, seed=1)))
    seen: set[int] = set()
    live = 0
    queue = deque(story["kids"])
    while queue:
        item_id = queue.popleft()
        if item_id in seen:
            continue
        seen.add(item_id)
        item = client.get(f"{hn.url}/item/{item_id}.json").json()
        if item is None:
            continue
        live += not item.get("dead") and not item.get("deleted")
        queue.extend(item.get("kids", []))
    assert live == 296
    assert hn.item_requests == 297 + 5


def test_generated_tree_shape() -> None:
    """generated() has exactly the asked counts, depth and fanout, deterministically."""
    tree = trees.generated(1000, live=300, dead=20, deleted=20, depth=9, fanout=4, seed=7)
    items = [i for i in tree.items.values() if i is not None]
    assert tree.live == tree.count_live() == 300
    assert sum(bool(i.get("dead")) for i in items) == 20
    assert sum(bool(i.get("deleted")) for i in items) == 20
    assert tree.depth == 9
    assert max(len(i.get("kids", [])) for i in items) <= 4
    assert min(tree.items) == 1000
    assert max(tree.items) == 1339
    assert trees.generated(1000, live=300, dead=20, deleted=20, depth=9, fanout=4, seed=7) == tree
    assert any((i.get("dead") or i.get("deleted")) and i.get("kids") for i in items), (
        "some dead or deleted comment should have replies"
    )


def test_variants_keep_live() -> None:
    """with_nulls, with_cycle, chain and wide keep or give the expected live counts."""
    base = trees.generated(1, live=50, depth=5)
    nulls = trees.with_nulls(base, 7, seed=3)
    assert sum(v is None for v in nulls.items.values()) == 7
    assert nulls.count_live() == nulls.live == 50
    cyc = trees.with_cycle(base)
    assert cyc.count_live() == 50
    links = sum(len(i.get("kids", [])) for i in cyc.items.values() if i)
    assert links == 50 - len(base.top) + 2
    assert trees.chain(5, 12).depth == 12
    assert trees.chain(5, 12).count_live() == 12
    assert trees.wide(5, 30).depth == 1
    assert trees.wide(5, 30).count_live() == 30
    assert base.count_live() == 50  # the variants copied, not changed, the base
