"""A fake Hacker News Firebase API on a real local HTTP server, for tests and benchmarks.

It serves the same paths as ``https://hacker-news.firebaseio.com/v0``
(``/v0/item/<id>.json`` and the story lists) from plain dicts, over a
keep-alive HTTP/1.1 ``ThreadingHTTPServer`` bound to ``127.0.0.1`` on a free
port, in a daemon thread. Faults are injected per path (status codes,
dropped connections, truncated bodies, malformed JSON, delays) and every
request is counted, so a test can pin both the result and the traffic::

    with FakeHN() as hn:
        hn.add_story(1, trees.chain(100, 5))
        hn.fail("/v0/item/1.json", times=2)
        ...  # point the client at hn.url

``/v0/maxitem.json`` is also served as a Firebase REST event stream, as the
real API does: a request with ``Accept: text/event-stream`` is redirected
(``307``) to :data:`STREAM_PATH`, which answers ``text/event-stream``: an
``event: put`` with ``{"path":"/","data":<largest id>}`` at once, another on
every change of the largest id, and ``event: keep-alive`` (``data: null``)
every :attr:`FakeHN.keepalive_interval` seconds. New items made with
:meth:`FakeHN.create_item` (or put into :attr:`FakeHN.items` any other way)
move it; stream faults (refused, cut, silent, cancelled, auth revoked) are
scripted like the others::

    with FakeHN(keepalive_interval=0.1) as hn:
        hn.add_story(1, trees.chain(100, 5))
        hn.refuse_streams(2, status=401)
        new_id = hn.create_item(parent=1)  # a put on every open stream
        hn.cut_streams()

Stdlib only. Everything a test may change while the server runs is guarded
by one lock.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import re
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

Item = dict[str, Any]

#: The story lists the real API serves; unset ones answer ``[]``.
LIST_NAMES = frozenset({"topstories", "newstories", "beststories", "askstories", "showstories", "jobstories"})
#: ``time`` given to stories built by :meth:`FakeHN.add_story`.
STORY_TIME = 1_600_000_000

#: The path ``/v0/maxitem.json`` redirects an event-stream request to (Firebase sends it to another host).
STREAM_PATH = "/_stream/v0/maxitem.json"
#: The path that is served as an event stream when asked with ``Accept: text/event-stream``.
MAXITEM_PATH = "/v0/maxitem.json"
#: The ``data`` of an ``auth_revoked`` event, as Firebase words it.
AUTH_REVOKED_DATA = "credential is no longer valid"
_STREAM_PREFIX = "/_stream"
_STREAM_WAKE = 0.5  # longest a stream handler waits without looking at its settings again

_ITEM_PATH = re.compile(r"/v0/item/(\d+)\.json")
_LIST_PATH = re.compile(r"/v0/([a-z]+)\.json")
_IGNORED_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

_Kind = Literal["status", "reset", "hard_reset", "truncate", "hang"]


class TreeLike(Protocol):
    """What :meth:`FakeHN.add_story` needs from a tree (``tests.trees.Tree`` fits)."""

    items: dict[int, Item | None]
    top: list[int]


@dataclass(frozen=True)
class _Fault:
    """One scripted answer for one request."""

    kind: _Kind
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"error":"injected"}'


@dataclass
class _Reply:
    """What the handler decided to do with one request."""

    status: int = 200
    body: bytes = b"null"
    headers: dict[str, str] = field(default_factory=dict)
    kind: _Kind = "status"


class _Items(dict[int, "Item | None"]):
    """:attr:`FakeHN.items`: a plain dict that tells its server when ids come and go.

    Every change takes the server's lock, so the largest id (``maxitem``) is
    tracked exactly and open event streams get a ``put`` for every change of
    it, however the test changed the dict.
    """

    def __init__(self, hn: FakeHN, data: Mapping[int, Item | None] | Iterable[tuple[int, Item | None]] = ()) -> None:
        self._hn = hn
        super().__init__(data)

    def __setitem__(self, key: int, value: Item | None) -> None:
        with self._hn.lock:
            new = key not in self
            super().__setitem__(key, value)
            if new:
                self._hn._inserted([key])

    def update(self, *args: Any, **kwargs: Any) -> None:
        with self._hn.lock:
            incoming = dict(*args, **kwargs)
            new = [key for key in incoming if key not in self]
            super().update(incoming)
            if new:
                self._hn._inserted(new)

    def __ior__(self, other: Any) -> _Items:  # type: ignore[override,misc]
        self.update(other)
        return self

    def setdefault(self, key: int, default: Item | None = None) -> Item | None:
        with self._hn.lock:
            if key not in self:
                self[key] = default
            return self[key]

    def __delitem__(self, key: int) -> None:
        with self._hn.lock:
            super().__delitem__(key)
            self._hn._removed([key])

    def pop(self, key: int, *default: Any) -> Any:
        with self._hn.lock:
            present = key in self
            value = super().pop(key, *default)
            if present:
                self._hn._removed([key])
            return value

    def popitem(self) -> tuple[int, Item | None]:
        with self._hn.lock:
            pair = super().popitem()
            self._hn._removed([pair[0]])
            return pair

    def clear(self) -> None:
        with self._hn.lock:
            super().clear()
            self._hn._removed(None)

    def copy(self) -> dict[int, Item | None]:
        """A plain dict copy (not tracked)."""
        return dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        """``copy.copy``, ``copy.deepcopy`` and pickle give a plain dict."""
        return (dict, (dict(self),))


@dataclass(eq=False)
class _Stream:
    """One open event stream: what its handler still has to send."""

    conn: socket.socket
    opened: float
    pending: collections.deque[tuple[Any, ...]] = field(default_factory=collections.deque)
    silent: bool = False
    last_keepalive: float = 0.0
    chunked: bool = True
    done: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    """The HTTP server: many queued connections, quiet about client disconnects."""

    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, hn: FakeHN) -> None:
        self.hn = hn
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse DNS lookup (it can be slow)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore a client hanging up; report anything else as usual."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _IGNORED_ERRORS) or (isinstance(exc, OSError) and self.hn._stopping.is_set()):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, open_: bool) -> None:
        """Remember the open connections, so :meth:`close_all` can end keep-alives."""
        with self._conns_lock:
            if open_:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def close_all(self) -> None:
        """Shut down every open connection (their handler threads then end)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests from the :class:`FakeHN` state."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive
    # client waits for the delayed ACK (~40 ms) on every request.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log line."""

    def do_GET(self) -> None:
        """Answer one GET, counting it and applying any fault for its path."""
        hn = self.server.hn
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/_control/") and hn.control is not None:
            # Out-of-band commands for a FakeHN in another process (benchmarks); never counted.
            result = hn.control(path.removeprefix("/_control/"), dict(parse_qsl(parts.query)))
            self._send(_Reply(200, _dumps(result)))
            return
        if "text/event-stream" in self.headers.get("Accept", "").lower():
            if path == MAXITEM_PATH:
                self._redirect(path, parts.query)
                return
            if path == STREAM_PATH:
                self._stream(path)
                return
        hn._enter(path)
        try:
            reply, delay = hn._decide(path)
            if delay > 0:
                time.sleep(delay)
            self._send(reply)
        finally:
            hn._leave()

    # -- event stream ------------------------------------------------------------

    def _redirect(self, path: str, query: str) -> None:
        """Send an event-stream request on to :data:`STREAM_PATH`, as Firebase sends it to another host."""
        hn = self.server.hn
        hn._enter(path, stream=True)
        try:
            with hn.lock:
                hn.stream_redirects += 1
                delay = hn.latency + hn._delays.get(path, 0.0)
            if delay > 0:
                time.sleep(delay)
            host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_port}"
            location = f"http://{host}{_STREAM_PREFIX}{path}" + (f"?{query}" if query else "")
            self._send(_Reply(307, b"", {"Location": location, "Content-Type": "text/plain"}))
        finally:
            hn._leave()

    def _stream(self, path: str) -> None:
        """Serve one event stream until it is cut, closed, or the server stops."""
        hn = self.server.hn
        with hn.lock:
            hn.requests[path] += 1
            hn.event_stream_requests[path] += 1
        fault, delay = hn._fault(path)
        if delay > 0:
            time.sleep(delay)
        if fault is not None and fault.kind not in ("truncate", "hang"):
            self._send(fault)
            return
        self.close_connection = True  # a stream's connection is never reused
        stream = hn._open_stream(
            self.connection,
            hang=fault is not None and fault.kind == "hang",
            cut_after_first=fault is not None and fault.kind == "truncate",
        )
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Access-Control-Allow-Origin", "*")
            if stream.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            self._stream_loop(stream)
        except OSError:
            pass  # the client went away, or the stream was cut or stopped under the write
        finally:
            hn._close_stream(stream)

    def _stream_loop(self, stream: _Stream) -> None:
        hn = self.server.hn
        while True:
            with hn._cond:
                while True:
                    if hn._stopping.is_set():
                        return
                    if stream.pending:
                        command = stream.pending.popleft()
                        break
                    timeout = _STREAM_WAKE  # so a new keepalive_interval applies within this
                    interval = hn.keepalive_interval
                    if not stream.silent and interval is not None:
                        now = time.monotonic()
                        due = stream.last_keepalive + interval - now
                        if due <= 0:
                            stream.last_keepalive = now
                            command = ("event", "keep-alive", "null", False)
                            break
                        timeout = min(timeout, due)
                    hn._cond.wait(timeout)
            if not self._run(stream, command):
                return

    def _run(self, stream: _Stream, command: tuple[Any, ...]) -> bool:
        """Carry out one stream command; ``False`` when the stream has ended."""
        hn = self.server.hn
        match command:
            case ("put", value):
                self._event(stream, "put", json.dumps({"path": "/", "data": value}, separators=(",", ":")))
            case ("event", name, data, close):
                self._event(stream, name, data)
                if close:
                    self._end(stream)
                    return False
            case ("raw", payload, close):
                self._write(stream, payload)
                if close:
                    self._end(stream)
                    return False
            case ("cut", hard, partial):
                if partial:
                    self._write(stream, b'event: put\ndata: {"path":"/","da')
                if hard:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
                with hn.lock:
                    hn.streams_cut += 1
                return False
        return True

    def _event(self, stream: _Stream, name: str, data: str) -> None:
        self._write(stream, f"event: {name}\ndata: {data}\n\n".encode())
        with self.server.hn.lock:
            self.server.hn.stream_events[name] += 1

    def _write(self, stream: _Stream, payload: bytes) -> None:
        if stream.chunked:
            payload = b"%x\r\n%s\r\n" % (len(payload), payload)
        self.wfile.write(payload)

    def _end(self, stream: _Stream) -> None:
        """End the stream cleanly: the last chunk (chunked), then the connection closes."""
        if stream.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _send(self, reply: _Reply) -> None:
        if reply.kind in ("reset", "hard_reset"):
            self.close_connection = True
            if reply.kind == "hard_reset":
                # Linger 0: close() sends a RST instead of a FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        for name, value in reply.headers.items():
            if name.lower() == "content-type":
                headers.pop("Content-Type", None)
            if name.lower() != "content-length":
                headers[name] = value
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.kind == "truncate":
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(reply.body)


class FakeHN:
    """The fake API: its content, its faults and its traffic counters.

    ``items`` maps an id to its item dict (HN shape) or ``None`` (answered
    ``null``); ``lists`` maps a list name to ids. Both may be changed while
    the server runs (take :attr:`lock` for anything more than a single
    assignment). ``latency`` seconds are slept before every answer;
    ``fail_rate`` is the chance of a random 502 on any request, drawn from
    ``random.Random(seed)``. ``requests`` counts requests by path (query
    string dropped), faults included; ``in_flight`` is the number being
    handled now and ``max_in_flight`` its peak (an open event stream is not
    in flight: see :attr:`open_streams`). ``request_order``, when set to a
    list, gets every request's path appended as it arrives.

    Event stream (``/v0/maxitem.json`` asked with ``Accept:
    text/event-stream``): ``keepalive_interval`` seconds between keep-alives
    (``None``: none; read live, so a change reaches open streams within
    half a second);
    ``stream_chunked`` (default ``True``) frames new streams with chunked
    transfer encoding, ``False`` sends ``Connection: close`` and raw bytes
    (then a cut looks like a clean end of the body). Counters:
    ``stream_redirects`` (307s sent), ``stream_connections`` (streams opened
    with a 200), ``streams_cut``, ``event_stream_requests`` (requests by path
    that asked for ``text/event-stream``) and ``stream_events`` (events sent,
    by name).
    """

    def __init__(self, latency: float = 0.0, *, keepalive_interval: float | None = 30.0) -> None:
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._max_id = 0
        self._items = _Items(self)
        self.lists: dict[str, list[int]] = {}
        self.latency = latency
        self.fail_rate = 0.0
        self.requests: collections.Counter[str] = collections.Counter()
        self.request_order: list[str] | None = None
        self.max_in_flight = 0
        self.in_flight = 0
        self._seed = 0
        self._rng = random.Random(0)
        self._scripts: dict[str, collections.deque[_Fault]] = {}
        self._fail_all: list[_Fault] = []
        self._fail_all_seen: collections.Counter[str] = collections.Counter()
        self._malformed: dict[int, bytes] = {}
        self._delays: dict[str, float] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: Handler for ``GET /_control/<command>?k=v``: ``control(command, params)`` returns JSON data.
        self.control: Callable[[str, dict[str, str]], Any] | None = None
        # Event stream and live growth.
        self.keepalive_interval = keepalive_interval
        self.stream_chunked = True
        self.stream_redirects = 0
        self.stream_connections = 0
        self.streams_cut = 0
        self.event_stream_requests: collections.Counter[str] = collections.Counter()
        self.stream_events: collections.Counter[str] = collections.Counter()
        self._streams: set[_Stream] = set()
        self._fresh: dict[int, list[float]] = {}  # id -> [null answers left, null until (monotonic)]
        self._fresh_requests = 0
        self._fresh_seconds = 0.0

    @property
    def items(self) -> dict[int, Item | None]:
        """Id -> item dict (or ``None``, answered ``null``); every change moves ``maxitem`` and its streams."""
        return self._items

    @items.setter
    def items(self, value: Mapping[int, Item | None]) -> None:
        with self.lock:
            self._items = _Items(self, value)
            self._fresh.clear()
            self._removed(None)

    @property
    def seed(self) -> int:
        """The seed of the ``fail_rate`` draws; setting it starts the sequence over."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        with self.lock:
            self._seed = value
            self._rng = random.Random(value)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FakeHN:
        """Start serving in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakehn-{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and join the thread; idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()  # open streams see _stopping and end
        server.shutdown()
        server.close_all()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._cond:
            self._cond.wait_for(lambda: not self._streams, timeout=2)
        self._server = self._thread = None

    def __enter__(self) -> FakeHN:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on (it must be started)."""
        if self._server is None:
            raise RuntimeError("FakeHN is not started")
        return self._server.server_port

    @property
    def url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:PORT/v0``."""
        return f"http://127.0.0.1:{self.port}/v0"

    # -- content -------------------------------------------------------------

    def add_story(
        self,
        story_id: int,
        kids_tree: TreeLike,
        *,
        title: str = "Story",
        score: int = 100,
        by: str = "author",
        url: str | None = "https://example.com/",
        descendants: int | None = None,
    ) -> None:
        """Add a story whose ``kids`` are the tree's top level, and all the tree's items.

        ``descendants`` defaults to the number of comments in the tree (dead
        and deleted included, ``None`` items not); ``url=None`` leaves it out.
        """
        if descendants is None:
            descendants = sum(1 for item in kids_tree.items.values() if item is not None)
        story: Item = {
            "id": story_id,
            "type": "story",
            "by": by,
            "title": title,
            "score": score,
            "descendants": descendants,
            "time": STORY_TIME,
        }
        if url is not None:
            story["url"] = url
        if kids_tree.top:
            story["kids"] = list(kids_tree.top)
        self.put_story(story, kids_tree)

    def put_story(self, story: Item, tree: TreeLike | None = None) -> None:
        """Add a ready-made story dict, and the tree's items if given.

        Top-level comments whose ``parent`` is ``0`` (as the tree builders
        make them) are added with ``parent`` set to the story's id.
        """
        story_id = int(story["id"])
        with self.lock:
            if tree is not None:
                self.items.update(tree.items)
                for top_id in tree.top:
                    item = tree.items.get(top_id)
                    if item is not None and item.get("parent") == 0:
                        self.items[top_id] = {**item, "parent": story_id}
            self.items[story_id] = story

    def set_list(self, name: str, ids: list[int]) -> None:
        """Set one story list (``topstories`` ...)."""
        with self.lock:
            self.lists[name] = list(ids)

    def create_item(
        self,
        parent: int | None = None,
        *,
        by: str = "user",
        dead: bool = False,
        deleted: bool = False,
        null_requests: int | None = None,
        null_seconds: float | None = None,
        **fields: Any,
    ) -> int:
        """Create a new item as HN does, live: returns its id, the largest id so far plus one.

        Without ``parent`` it is a story (``title``, ``score`` 1,
        ``descendants`` 0); with one, a comment whose id is appended to the
        parent's ``kids``, and (unless ``dead`` or ``deleted``) the story at
        the top of the parent chain gets ``descendants`` + 1. ``fields``
        (``type``, ``text``, ``title``, ``time``, ``url`` ...) go into the item
        as given. Open event streams get a ``put`` of the new id once the lock
        is released, so the item and its parent are consistent when it is
        read. ``null_requests``/``null_seconds`` override :meth:`fresh_null`
        for this item. Raises ``KeyError`` for a parent that is not an item.
        """
        with self.lock:
            item_id = self._max_id + 1
            now = int(time.time())
            item: Item
            if parent is None:
                item = {"id": item_id, "type": "story", "by": by, "title": f"Story {item_id}", "score": 1}
                item |= {"descendants": 0, "time": now}
            else:
                parent_item = self._items.get(parent)
                if parent_item is None:
                    raise KeyError(f"parent {parent} is not an item")
                item = {"id": item_id, "type": "comment", "by": by, "parent": parent, "text": f"Comment {item_id}"}
                item["time"] = now
            item.update(fields)
            if deleted:
                item["deleted"] = True
                item.pop("by", None)
                item.pop("text", None)
            if dead:
                item["dead"] = True
            self._items[item_id] = item  # moves maxitem: the streams' put goes out after the lock is released
            if null_requests is not None or null_seconds is not None:
                self._fresh[item_id] = [null_requests or 0, time.monotonic() + (null_seconds or 0.0)]
            if parent is not None:
                parent_item = self._items[parent]
                assert parent_item is not None
                self._items[parent] = {**parent_item, "kids": [*parent_item.get("kids", []), item_id]}
                top = self.story_of(parent)
                if top is not None and not dead and not deleted:
                    story = self._items[top]
                    assert story is not None
                    self._items[top] = {**story, "descendants": int(story.get("descendants") or 0) + 1}
            return item_id

    def story_of(self, item_id: int) -> int | None:
        """The id at the top of ``item_id``'s ``parent`` chain (itself for a story); ``None`` if it breaks or loops."""
        with self.lock:
            seen: set[int] = set()
            current = item_id
            while current not in seen:
                seen.add(current)
                item = self._items.get(current)
                if item is None:
                    return None
                if "parent" not in item:
                    return current
                current = int(item["parent"])
            return None

    def fresh_null(self, requests: int = 0, seconds: float = 0.0) -> None:
        """From now on a new item answers ``null`` for its first ``requests`` requests and ``seconds`` once made.

        Both may be given: it is ``null`` while either holds. Applies to every
        id added to :attr:`items` afterwards (by :meth:`create_item` or
        otherwise); ``fresh_null()`` turns it off for later items.
        """
        with self.lock:
            self._fresh_requests = requests
            self._fresh_seconds = seconds

    # -- faults --------------------------------------------------------------

    def fail(
        self,
        path: str,
        times: int,
        status: int = 503,
        headers: dict[str, str] | None = None,
        body: bytes = b'{"error":"injected"}',
    ) -> None:
        """The next ``times`` requests to ``path`` get this status, headers and body."""
        self._script(path, times, _Fault("status", status, dict(headers or {}), body))

    def answer(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, *, times: int = 1, status: int = 200
    ) -> None:
        """The next ``times`` requests to ``path`` get exactly these bytes (e.g. compressed, or hostile).

        ``headers`` go out as given (``Content-Encoding``, say); ``Content-Length`` is always ``len(body)``.
        """
        self._script(path, times, _Fault("status", status, dict(headers or {}), body))

    def fail_all(self, times: int, status: int = 503, headers: dict[str, str] | None = None) -> None:
        """Every path fails its first ``times`` requests from now on, then succeeds.

        Counted per path; calling again starts the count over (``times=0`` ends it).
        """
        self.fail_all_sequence([(status, headers or {})] * times)

    def fail_all_sequence(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        """Every path answers its first requests with these (status, headers), in order, then succeeds.

        ``[(503, {}), (429, {"Retry-After": "0"})]`` makes each path fail twice, differently.
        """
        with self.lock:
            self._fail_all = [_Fault("status", status, dict(headers)) for status, headers in answers]
            self._fail_all_seen.clear()

    def reset_connection(self, path: str, times: int = 1, *, hard: bool = False) -> None:
        """The next ``times`` requests to ``path`` get no answer: the socket is shut down.

        ``hard=True`` closes with linger 0, so the client sees a TCP RST
        (``ECONNRESET``) rather than an EOF.
        """
        self._script(path, times, _Fault("hard_reset" if hard else "reset"))

    def truncate(self, path: str, times: int = 1) -> None:
        """The next ``times`` answers for ``path`` stop halfway through the body."""
        self._script(path, times, _Fault("truncate"))

    def malformed(self, item_id: int, body: bytes = b'{"id": ') -> None:
        """This item always answers 200 with ``body`` (not JSON) from now on."""
        with self.lock:
            self._malformed[item_id] = body

    def set_delay(self, path: str, seconds: float) -> None:
        """Extra latency for one path (``0`` removes it)."""
        with self.lock:
            if seconds > 0:
                self._delays[path] = seconds
            else:
                self._delays.pop(path, None)

    def clear_faults(self) -> None:
        """Forget every scripted fault, ``fail_all``, malformed item and delay."""
        with self.lock:
            self._scripts.clear()
            self._fail_all = []
            self._fail_all_seen.clear()
            self._malformed.clear()
            self._delays.clear()
            self._fresh.clear()
            self._fresh_requests = 0
            self._fresh_seconds = 0.0

    # -- event stream faults ----------------------------------------------------

    def refuse_streams(
        self,
        times: int = 1,
        status: int = 503,
        headers: dict[str, str] | None = None,
        body: bytes = b'{"error":"injected"}',
    ) -> None:
        """The next ``times`` stream requests (after the redirect) get this status instead of a stream.

        The same as ``fail(STREAM_PATH, ...)``; ``reset_connection``,
        ``truncate`` (a stream cut after its first event), ``set_delay`` and
        ``fail_all`` apply to :data:`STREAM_PATH` as to any path. The
        redirecting request to ``/v0/maxitem.json`` takes none of that path's
        faults (they are for the plain polls), only its latency.
        """
        self.fail(STREAM_PATH, times, status, headers, body)

    def hang_streams(self, times: int = 1) -> None:
        """The next ``times`` streams answer 200 and their headers, then nothing at all (no put, no keep-alive)."""
        self._script(STREAM_PATH, times, _Fault("hang"))

    def cut_streams(self, *, hard: bool = False, partial: bool = False, timeout: float = 5.0) -> int:
        """Close every open stream's connection mid-stream; returns how many, once they are closed.

        No last chunk is sent, so a chunked client sees an incomplete body;
        ``hard=True`` closes with a TCP RST; ``partial=True`` first sends half
        an event (``event: put`` and part of its data line).
        """
        streams = self._broadcast(("cut", hard, partial))
        deadline = time.monotonic() + timeout
        for stream in streams:
            stream.done.wait(max(0.0, deadline - time.monotonic()))
        return len(streams)

    def silence_streams(self) -> int:
        """The open streams go silent, like a dead connection: no more puts nor keep-alives; returns how many.

        They stay connected (until cut, or the server stops) and still carry
        out :meth:`cut_streams` and explicit events. Streams opened later are
        healthy; the plain ``/v0/maxitem.json`` keeps answering.
        """
        with self.lock:
            for stream in self._streams:
                stream.silent = True
                stream.pending = collections.deque(c for c in stream.pending if c[0] != "put")
            return len(self._streams)

    def stream_event(self, event: str, data: Any = None, *, raw_data: str | None = None, close: bool = False) -> int:
        """Send ``event: EVENT`` / ``data: <data as JSON>`` (or ``raw_data`` verbatim) on every open stream.

        ``close=True`` then ends each stream cleanly (its last chunk).
        Returns how many streams it went to.
        """
        text = raw_data if raw_data is not None else json.dumps(data, separators=(",", ":"))
        return len(self._broadcast(("event", event, text, close)))

    def cancel_streams(self, data: Any = None, *, close: bool = True) -> int:
        """Send Firebase's ``cancel`` event (``data: null``) on every open stream, then end them."""
        return self.stream_event("cancel", data, close=close)

    def revoke_streams(self, data: Any = AUTH_REVOKED_DATA, *, close: bool = True) -> int:
        """Send Firebase's ``auth_revoked`` event (``data: "credential is no longer valid"``), then end the streams."""
        return self.stream_event("auth_revoked", data, close=close)

    def stream_write(self, payload: bytes, *, close: bool = False) -> int:
        """Write raw bytes on every open stream (hostile or odd framing: comments, CRLF, huge lines)."""
        return len(self._broadcast(("raw", payload, close)))

    def wait_streams(self, n: int = 1, *, total: bool = False, timeout: float = 5.0) -> None:
        """Block until ``n`` streams are open (``total=True``: ``n`` opened in all); else ``TimeoutError``."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (self.stream_connections if total else len(self._streams)) >= n, timeout=timeout
            )
        if not ok:
            what = "opened" if total else "open"
            raise TimeoutError(f"{n} streams {what} not reached in {timeout} s (open: {self.open_streams})")

    def _script(self, path: str, times: int, fault: _Fault) -> None:
        with self.lock:
            self._scripts.setdefault(path, collections.deque()).extend([fault] * times)

    # -- observation ---------------------------------------------------------

    @property
    def total_requests(self) -> int:
        """All requests received, faults included."""
        with self.lock:
            return sum(self.requests.values())

    @property
    def max_item(self) -> int:
        """The largest id in :attr:`items` (what ``/v0/maxitem.json`` answers)."""
        with self.lock:
            return self._max_id

    @property
    def open_streams(self) -> int:
        """Event streams open now."""
        with self.lock:
            return len(self._streams)

    @property
    def maxitem_polls(self) -> int:
        """Plain (non-stream) requests to ``/v0/maxitem.json``."""
        with self.lock:
            return self.requests[MAXITEM_PATH] - self.event_stream_requests[MAXITEM_PATH]

    @property
    def item_requests(self) -> int:
        """Requests to ``/v0/item/...``."""
        with self.lock:
            return sum(n for path, n in self.requests.items() if path.startswith("/v0/item/"))

    def reset_stats(self) -> None:
        """Zero the request counters and ``max_in_flight``."""
        with self.lock:
            self.requests.clear()
            self.max_in_flight = 0
            self.stream_redirects = self.stream_connections = self.streams_cut = 0
            self.event_stream_requests.clear()
            self.stream_events.clear()

    # -- handler side ----------------------------------------------------------

    def _enter(self, path: str, stream: bool = False) -> None:
        with self.lock:
            self.requests[path] += 1
            if self.request_order is not None:
                self.request_order.append(path)
            if stream:
                self.event_stream_requests[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _inserted(self, keys: list[int]) -> None:
        """New ids in :attr:`items` (caller holds the lock): mark them fresh, move maxitem."""
        if self._fresh_requests > 0 or self._fresh_seconds > 0:
            until = time.monotonic() + self._fresh_seconds
            for key in keys:
                self._fresh[key] = [self._fresh_requests, until]
        top = max(keys)
        if top > self._max_id:
            self._set_max(top)

    def _removed(self, keys: list[int] | None = None) -> None:
        """Ids gone from :attr:`items` (``None``: maybe all; caller holds the lock)."""
        if keys is None:
            self._fresh = {k: v for k, v in self._fresh.items() if k in self._items}
        else:
            for key in keys:
                self._fresh.pop(key, None)
        top = max(self._items, default=0)
        if top != self._max_id:
            self._set_max(top)

    def _set_max(self, value: int) -> None:
        self._max_id = value
        for stream in self._streams:
            if not stream.silent:
                stream.pending.append(("put", value))
        self._cond.notify_all()

    def _open_stream(self, conn: socket.socket, *, hang: bool, cut_after_first: bool) -> _Stream:
        """Register a stream; its first put (the current largest id) is queued in the same step."""
        with self.lock:
            now = time.monotonic()
            stream = _Stream(conn, now, silent=hang, last_keepalive=now, chunked=self.stream_chunked)
            if not hang:
                stream.pending.append(("put", self._max_id))
            if cut_after_first:
                stream.pending.append(("cut", False, False))
            self._streams.add(stream)
            self.stream_connections += 1
            self._cond.notify_all()
            return stream

    def _close_stream(self, stream: _Stream) -> None:
        with self.lock:
            self._streams.discard(stream)
            stream.done.set()
            self._cond.notify_all()

    def _broadcast(self, command: tuple[Any, ...]) -> list[_Stream]:
        with self.lock:
            streams = list(self._streams)
            for stream in streams:
                stream.pending.append(command)
            self._cond.notify_all()
            return streams

    def _decide(self, path: str) -> tuple[_Reply, float]:
        """Pick the answer for one request: scripted fault, fail_all, fail_rate, or content."""
        with self.lock:
            reply, delay = self._fault(path)
            return (self._content(path) if reply is None else reply), delay

    def _fault(self, path: str) -> tuple[_Reply | None, float]:
        """The fault for one request (scripted, fail_all, fail_rate), or ``None``; and its delay."""
        with self.lock:
            delay = self.latency + self._delays.get(path, 0.0)
            script = self._scripts.get(path)
            if script:
                fault = script.popleft()
                if not script:
                    del self._scripts[path]
                if fault.kind == "truncate":  # the real answer, cut short
                    reply = self._content(path)
                    reply.kind = "truncate"
                    return reply, delay
                return _Reply(fault.status, fault.body, fault.headers, fault.kind), delay
            if self._fail_all_seen[path] < len(self._fail_all):
                f = self._fail_all[self._fail_all_seen[path]]
                self._fail_all_seen[path] += 1
                return _Reply(f.status, f.body, f.headers), delay
            if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
                return _Reply(502, b'{"error":"random failure"}'), delay
            return None, delay

    def _content(self, path: str) -> _Reply:
        """The normal answer for ``path`` (caller holds the lock)."""
        path = path.removeprefix(_STREAM_PREFIX)  # the stream host serves plain REST too
        if m := _ITEM_PATH.fullmatch(path):
            item_id = int(m.group(1))
            fresh = self._fresh.get(item_id)
            if fresh is not None:
                if fresh[0] > 0 or time.monotonic() < fresh[1]:
                    fresh[0] -= 1
                    return _Reply(body=b"null")
                del self._fresh[item_id]
            if item_id in self._malformed:
                return _Reply(body=self._malformed[item_id])
            return _Reply(body=_dumps(self.items.get(item_id)))
        if (m := _LIST_PATH.fullmatch(path)) and (m.group(1) in LIST_NAMES or m.group(1) in self.lists):
            return _Reply(body=_dumps(self.lists.get(m.group(1), [])))
        if path == MAXITEM_PATH:
            return _Reply(body=_dumps(self._max_id))
        return _Reply(404, b'{"error":"not found"}')


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
