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
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

Item = dict[str, Any]

#: The story lists the real API serves; unset ones answer ``[]``.
LIST_NAMES = frozenset({"topstories", "newstories", "beststories", "askstories", "showstories", "jobstories"})
#: ``time`` given to stories built by :meth:`FakeHN.add_story`.
STORY_TIME = 1_600_000_000

_ITEM_PATH = re.compile(r"/v0/item/(\d+)\.json")
_LIST_PATH = re.compile(r"/v0/([a-z]+)\.json")
_IGNORED_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)

_Kind = Literal["status", "reset", "hard_reset", "truncate"]


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
        hn._enter(path)
        try:
            reply, delay = hn._decide(path)
            if delay > 0:
                time.sleep(delay)
            self._send(reply)
        finally:
            hn._leave()

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
    handled now and ``max_in_flight`` its peak.
    """

    def __init__(self, latency: float = 0.0) -> None:
        self.items: dict[int, Item | None] = {}
        self.lists: dict[str, list[int]] = {}
        self.latency = latency
        self.fail_rate = 0.0
        self.requests: collections.Counter[str] = collections.Counter()
        self.max_in_flight = 0
        self.in_flight = 0
        self.lock = threading.RLock()
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
        server.shutdown()
        server.close_all()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
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
    def item_requests(self) -> int:
        """Requests to ``/v0/item/...``."""
        with self.lock:
            return sum(n for path, n in self.requests.items() if path.startswith("/v0/item/"))

    def reset_stats(self) -> None:
        """Zero the request counters and ``max_in_flight``."""
        with self.lock:
            self.requests.clear()
            self.max_in_flight = 0

    # -- handler side ----------------------------------------------------------

    def _enter(self, path: str) -> None:
        with self.lock:
            self.requests[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _decide(self, path: str) -> tuple[_Reply, float]:
        """Pick the answer for one request: scripted fault, fail_all, fail_rate, or content."""
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
            return self._content(path), delay

    def _content(self, path: str) -> _Reply:
        """The normal answer for ``path`` (caller holds the lock)."""
        if m := _ITEM_PATH.fullmatch(path):
            item_id = int(m.group(1))
            if item_id in self._malformed:
                return _Reply(body=self._malformed[item_id])
            return _Reply(body=_dumps(self.items.get(item_id)))
        if (m := _LIST_PATH.fullmatch(path)) and (m.group(1) in LIST_NAMES or m.group(1) in self.lists):
            return _Reply(body=_dumps(self.lists.get(m.group(1), [])))
        if path == "/v0/maxitem.json":
            return _Reply(body=_dumps(max(self.items, default=0)))
        return _Reply(404, b'{"error":"not found"}')


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
