"""Quick checks of the fake HN server and the tree builders themselves."""

from __future__ import annotations

import contextlib
import copy
import http.client
import itertools
import json
import queue
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import trees
from tests.conftest import wait_for
from tests.fakehn import AUTH_REVOKED_DATA, STREAM_PATH, FakeHN
from tests.growth import Growth


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


# -- the event stream (/v0/maxitem.json as Firebase streams it) ------------------------------------------------------


class Events:
    """One event-stream client in a thread (httpx, following the 307), its events on a queue.

    ``next()`` returns ``(event, data)`` with ``data`` JSON-decoded; the end of
    the stream is ``("end", None)`` and a transport error ``("error", exc)``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: queue.Queue[tuple[str, Any, float]] = queue.Queue()
        self.response: httpx.Response | None = None
        self.opened = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(5, read=15), follow_redirects=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", self.url, headers={"Accept": "text/event-stream"}) as response:
                self.response = response
                self.opened.set()
                name, data = "message", []
                for line in response.iter_lines():
                    if not line:
                        if data:
                            self.queue.put((name, json.loads("\n".join(data)), time.monotonic()))
                        name, data = "message", []
                        continue
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)
            self.queue.put(("end", None, time.monotonic()))
        except httpx.TransportError as exc:
            self.queue.put(("error", exc, time.monotonic()))
        finally:
            self.opened.set()
            self._client.close()

    def next_timed(self, timeout: float = 5.0) -> tuple[str, Any, float]:
        """The next event with its arrival time; fails the test after ``timeout``."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout} s") from None

    def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        """The next ``(event, data)``."""
        name, data, _ = self.next_timed(timeout)
        return name, data

    def until(self, name: str, data: Any, timeout: float = 5.0) -> list[tuple[str, Any]]:
        """Events up to and including ``(name, data)``, skipping keep-alives."""
        seen = []
        while True:
            event = self.next(timeout)
            if event[0] != "keep-alive":
                seen.append(event)
            if event == (name, data) or event[0] in ("end", "error"):
                return seen

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the reading thread to end."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream reader did not end"


def _stream_url(hn: FakeHN) -> str:
    return f"{hn.url}/maxitem.json"


def test_stream_redirects_then_puts_the_current_max(hn: FakeHN, client: httpx.Client) -> None:
    """An event-stream request gets a 307 to the stream path, which opens with a put of the largest id."""
    hn.add_story(1, trees.chain(10, 3))
    conn = http.client.HTTPConnection("127.0.0.1", hn.port, timeout=5)
    conn.request("GET", "/v0/maxitem.json", headers={"Accept": "text/event-stream"})
    redirect = conn.getresponse()
    redirect.read()
    assert redirect.status == 307
    assert redirect.getheader("Location") == f"http://127.0.0.1:{hn.port}{STREAM_PATH}"
    conn.close()
    events = Events(_stream_url(hn))
    assert events.next() == ("put", {"path": "/", "data": 12})
    assert events.response is not None
    assert events.response.status_code == 200
    assert [r.status_code for r in events.response.history] == [307]
    assert events.response.headers["content-type"].startswith("text/event-stream")
    assert events.response.headers["transfer-encoding"] == "chunked"
    # The stream blocks nothing: plain requests go on, and it is not "in flight".
    assert client.get(f"{hn.url}/maxitem.json").json() == 12
    assert client.get(f"{hn.url}/item/10.json").json()["parent"] == 1
    assert hn.open_streams == 1
    wait_for(lambda: hn.in_flight == 0, timeout=5, what="plain requests to finish")
    assert hn.stream_redirects == 2
    assert hn.stream_connections == 1
    assert hn.maxitem_polls == 1
    assert hn.event_stream_requests == {"/v0/maxitem.json": 2, STREAM_PATH: 1}
    assert hn.stream_events["put"] == 1


def test_a_put_for_every_new_item(hn: FakeHN) -> None:
    """Every change of the largest id, by create_item or by writing items directly, is one put, in order."""
    hn.add_story(1, trees.chain(10, 2))
    events = Events(_stream_url(hn))
    assert events.next() == ("put", {"path": "/", "data": 11})
    assert hn.create_item() == 12
    assert hn.create_item(parent=12) == 13
    assert hn.create_item(parent=11) == 14
    assert [events.next() for _ in range(3)] == [("put", {"path": "/", "data": i}) for i in (12, 13, 14)]
    hn.items[100] = {"id": 100, "type": "story"}
    hn.items.update({101: None, 102: {"id": 102}})
    hn.items[5] = {"id": 5}  # below the max: no put
    del hn.items[102]
    assert [events.next()[1]["data"] for _ in range(3)] == [100, 102, 101]
    assert hn.max_item == 101
    assert json.loads(urllib.request.urlopen(_stream_url(hn), timeout=5).read()) == 101
    snapshot = copy.deepcopy(hn.items)
    assert type(snapshot) is dict and snapshot == hn.items
    hn.items = {7: {"id": 7}}  # a new dict is tracked too
    assert events.next() == ("put", {"path": "/", "data": 7})
    hn.items[8] = None
    assert events.next() == ("put", {"path": "/", "data": 8})


def test_keepalives_at_the_interval(hn: FakeHN) -> None:
    """keep-alive events with data null arrive every keepalive_interval seconds, also once it is changed."""
    events = Events(_stream_url(hn))
    assert events.next()[0] == "put"
    hn.keepalive_interval = 0.2  # the stream was opened with 30 s
    stamps = []
    for _ in range(4):
        name, data, at = events.next_timed()
        assert (name, data) == ("keep-alive", None)
        stamps.append(at)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.15 < gap < 1.0 for gap in gaps), gaps
    assert hn.stream_events["keep-alive"] >= 4


@pytest.mark.parametrize("status", [503, 401])
def test_refused_streams_then_a_stream(hn: FakeHN, client: httpx.Client, status: int) -> None:
    """refuse_streams(n, status) answers the next n stream requests with that status; the plain endpoint still works."""
    hn.items[7] = {"id": 7}
    hn.refuse_streams(2, status=status)
    for _ in range(2):
        response = client.get(_stream_url(hn), headers={"Accept": "text/event-stream"}, follow_redirects=True)
        assert response.status_code == status
        assert response.history[0].status_code == 307
        assert client.get(_stream_url(hn)).json() == 7
    events = Events(_stream_url(hn))
    assert events.next() == ("put", {"path": "/", "data": 7})
    assert hn.requests[STREAM_PATH] == 3
    assert hn.stream_connections == 1
    assert hn.maxitem_polls == 2


@pytest.mark.parametrize(("hard", "partial"), [(False, False), (True, False), (False, True)])
def test_cut_streams_mid_stream(hn: FakeHN, hard: bool, partial: bool) -> None:
    """cut_streams() closes every open stream without its last chunk: the client sees a transport error."""
    hn.items[3] = {"id": 3}
    readers = [Events(_stream_url(hn)) for _ in range(2)]
    for events in readers:
        assert events.next() == ("put", {"path": "/", "data": 3})
    hn.wait_streams(2)
    assert hn.cut_streams(hard=hard, partial=partial) == 2
    assert hn.open_streams == 0
    for events in readers:
        name, error = events.next()
        assert name == "error", (name, error)  # a half event is never delivered as one
        assert isinstance(error, httpx.TransportError)
    assert hn.streams_cut == 2
    again = Events(_stream_url(hn))
    assert again.next() == ("put", {"path": "/", "data": 3})
    assert hn.stream_connections == 3


def test_truncate_cuts_a_stream_after_its_first_put(hn: FakeHN) -> None:
    """truncate(STREAM_PATH) lets the next stream send its first put, then cuts it."""
    hn.items[4] = {"id": 4}
    hn.truncate(STREAM_PATH)
    events = Events(_stream_url(hn))
    assert events.next() == ("put", {"path": "/", "data": 4})
    assert events.next()[0] == "error"


def test_without_chunking_a_cut_is_a_clean_end(hn: FakeHN) -> None:
    """stream_chunked=False sends Connection: close and raw events; a cut then reads as the end of the body."""
    hn.stream_chunked = False
    hn.items[4] = {"id": 4}
    events = Events(_stream_url(hn))
    assert events.next() == ("put", {"path": "/", "data": 4})
    assert events.response is not None
    assert events.response.headers["connection"] == "close"
    assert "transfer-encoding" not in events.response.headers
    assert hn.cut_streams() == 1
    assert events.next() == ("end", None)


def test_silent_and_hung_streams_send_nothing(hn: FakeHN, client: httpx.Client) -> None:
    """A silenced stream and a hung one stay open but quiet, while a new stream and the plain endpoint work."""
    hn.keepalive_interval = 0.1
    hn.items[1] = {"id": 1}
    silent = Events(_stream_url(hn))
    assert silent.next() == ("put", {"path": "/", "data": 1})
    assert silent.next() == ("keep-alive", None)
    assert hn.silence_streams() == 1
    hn.hang_streams(1)
    hung = Events(_stream_url(hn))
    assert hung.opened.wait(5)
    assert hung.response is not None
    assert hung.response.status_code == 200
    hn.create_item()
    assert client.get(_stream_url(hn)).json() == 2
    healthy = Events(_stream_url(hn))
    assert healthy.next() == ("put", {"path": "/", "data": 2})
    for _ in range(5):  # five keep-alive intervals pass on the healthy stream ...
        assert healthy.next() == ("keep-alive", None)
    for quiet in (silent, hung):  # ... and nothing at all on the quiet ones
        with contextlib.suppress(queue.Empty):
            pytest.fail(f"a quiet stream sent {quiet.queue.get_nowait()}")
    assert hn.open_streams == 3
    assert hn.cut_streams() == 3  # a quiet stream can still be cut
    assert silent.next()[0] == hung.next()[0] == "error"


@pytest.mark.parametrize(
    ("method", "expected"),
    [("cancel_streams", ("cancel", None)), ("revoke_streams", ("auth_revoked", AUTH_REVOKED_DATA))],
)
def test_cancel_and_auth_revoked_end_the_stream(hn: FakeHN, method: str, expected: tuple[str, Any]) -> None:
    """cancel and auth_revoked go out as Firebase sends them, then the stream ends cleanly."""
    hn.items[2] = {"id": 2}
    events = Events(_stream_url(hn))
    assert events.next()[0] == "put"
    hn.wait_streams(1)
    assert getattr(hn, method)() == 1
    assert events.next() == expected
    assert events.next() == ("end", None)
    events.join()
    wait_for(lambda: hn.open_streams == 0, timeout=5, what="the stream to close")


def test_stream_event_and_raw_bytes_keep_the_stream_open(hn: FakeHN) -> None:
    """stream_event and stream_write send what they are given on open streams, which go on with puts."""
    hn.items[2] = {"id": 2}
    events = Events(_stream_url(hn))
    assert events.next()[0] == "put"
    hn.wait_streams(1)
    assert hn.stream_event("patch", {"path": "/", "data": {"x": 1}}) == 1
    assert hn.stream_write(b": a comment line\n\nevent: put\ndata: 41\n\n") == 1
    hn.create_item()
    assert events.next() == ("patch", {"path": "/", "data": {"x": 1}})
    assert events.next() == ("put", 41)
    assert events.next() == ("put", {"path": "/", "data": 3})


def test_create_item_updates_kids_descendants_and_ids(hn: FakeHN, client: httpx.Client) -> None:
    """create_item takes max+1, appends to the parent's kids and bumps the top story's descendants for live comments."""
    hn.add_story(1, trees.chain(10, 3))  # 10 <- 11 <- 12
    assert hn.create_item(parent=1) == 13
    assert hn.create_item(parent=12, text="deep") == 14
    assert hn.create_item(parent=14, dead=True) == 15
    assert hn.create_item(parent=1, deleted=True) == 16
    story = client.get(f"{hn.url}/item/1.json").json()
    assert story["kids"] == [10, 13, 16]
    assert story["descendants"] == 3 + 2
    assert client.get(f"{hn.url}/item/12.json").json()["kids"] == [14]
    assert client.get(f"{hn.url}/item/14.json").json() == {
        "id": 14,
        "type": "comment",
        "by": "user",
        "parent": 12,
        "text": "deep",
        "time": hn.items[14]["time"],  # type: ignore[index]
        "kids": [15],
    }
    assert hn.items[15]["dead"] is True  # type: ignore[index]
    assert "by" not in hn.items[16] and hn.items[16]["deleted"] is True  # type: ignore[index,operator]
    new_story = hn.create_item(title="Fresh")
    assert new_story == 17
    assert hn.items[17] == {
        "id": 17,
        "type": "story",
        "by": "user",
        "title": "Fresh",
        "score": 1,
        "descendants": 0,
        "time": hn.items[17]["time"],  # type: ignore[index]
    }
    assert hn.story_of(15) == 1 and hn.story_of(17) == 17 and hn.story_of(999) is None
    with pytest.raises(KeyError):
        hn.create_item(parent=999)
    assert hn.max_item == 17


def test_fresh_items_are_null_then_content(hn: FakeHN, client: httpx.Client) -> None:
    """fresh_null makes new items answer null for their first requests or seconds; older items are untouched."""
    hn.add_story(1, trees.chain(10, 1))
    hn.fresh_null(requests=2)
    first = hn.create_item(parent=1)
    url = f"{hn.url}/item/{first}.json"
    assert [client.get(url).content for _ in range(2)] == [b"null", b"null"]
    assert client.get(url).json()["parent"] == 1
    assert client.get(f"{hn.url}/item/10.json").json()["id"] == 10  # created before: never null
    hn.fresh_null(seconds=0.3)
    born = time.monotonic()
    timed = hn.create_item(parent=1)
    assert client.get(f"{hn.url}/item/{timed}.json").content == b"null"
    wait_for(lambda: client.get(f"{hn.url}/item/{timed}.json").content != b"null", timeout=5, what="the item")
    assert time.monotonic() - born >= 0.3
    hn.fresh_null()
    own = hn.create_item(parent=1, null_requests=1)
    assert client.get(f"{hn.url}/item/{own}.json").content == b"null"
    assert client.get(f"{hn.url}/item/{own}.json").json()["id"] == own
    hn.fresh_null(requests=5)
    hn.items[500] = {"id": 500}  # any new id is fresh, however it was added
    assert client.get(f"{hn.url}/item/500.json").content == b"null"
    hn.clear_faults()
    assert client.get(f"{hn.url}/item/500.json").json() == {"id": 500}


def test_growth_records_comments_in_real_time(hn: FakeHN) -> None:
    """Growth adds comments at its rate to its stories, records id, story and times, streams a put each, stops clean."""
    hn.add_story(1, trees.chain(10, 2))
    hn.add_story(2, trees.Tree({}, [], 0))
    events = Events(_stream_url(hn))
    assert events.next() == ("put", {"path": "/", "data": 11})
    wall_before = time.time()
    growth = Growth(hn, [1, 2], rate=50, seed=3, dead_chance=0.2).start()
    created = growth.wait(20)
    growth.stop()
    assert not growth.running
    final = growth.created
    assert final[:20] == created[:20]
    assert [c.id for c in final] == list(range(12, 12 + len(final)))
    assert final[-1].monotonic - growth.started_at >= (len(final) - 1) / 50  # type: ignore[operator]
    assert all(a.monotonic <= b.monotonic for a, b in itertools.pairwise(final))
    assert wall_before <= final[0].wall <= final[-1].wall <= time.time()
    assert {c.story for c in final} == {1, 2}
    assert any(c.parent != c.story for c in final) and any(c.dead for c in final)
    for c in final:
        item = hn.items[c.id]
        assert item is not None and item["parent"] == c.parent and item["time"] == int(c.wall)
        assert c.id in hn.items[c.parent]["kids"]  # type: ignore[index]
        assert hn.story_of(c.id) == c.story
    assert hn.items[1]["descendants"] == 2 + growth.live_for(1)  # type: ignore[index]
    assert hn.items[2]["descendants"] == growth.live_for(2)  # type: ignore[index]
    puts = events.until("put", {"path": "/", "data": final[-1].id})
    assert [data["data"] for _, data in puts] == [c.id for c in final]
    assert hn.max_item == final[-1].id  # nothing created after stop()
    assert growth.stop() == final  # idempotent


def test_growth_limit_and_errors(hn: FakeHN) -> None:
    """Growth stops by itself at its limit, and refuses a story that is not there."""
    hn.add_story(1, trees.Tree({}, [], 0))
    with Growth(hn, [1], rate=200, limit=5) as growth:
        assert len(growth.wait(5)) == 5
        wait_for(lambda: not growth.running, timeout=5, what="the growth to end at its limit")
    assert len(growth.created) == 5
    assert hn.items[1]["descendants"] == 5  # type: ignore[index]
    with pytest.raises(KeyError):
        Growth(hn, [1, 42], rate=1)
    with pytest.raises(ValueError, match="rate"):
        Growth(hn, [1], rate=0)


def test_stop_is_prompt_with_streams_open() -> None:
    """stop() returns at once with open streams (also silent and hung ones), and every stream ends."""
    hn = FakeHN(keepalive_interval=30).start()
    hn.items[1] = {"id": 1}
    readers = [Events(_stream_url(hn)) for _ in range(2)]
    for events in readers:
        assert events.next()[0] == "put"
    hn.silence_streams()
    hn.hang_streams(1)
    readers.append(Events(_stream_url(hn)))
    hn.wait_streams(3)
    started = time.monotonic()
    hn.stop()
    assert time.monotonic() - started < 2.0
    assert hn.open_streams == 0
    for events in readers:
        assert events.next()[0] in ("end", "error")
        events.join()
