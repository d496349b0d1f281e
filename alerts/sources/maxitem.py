"""Follow HN's largest item id: the Firebase event stream of ``/v0/maxitem.json``, polling while it is down.

Firebase answers ``Accept: text/event-stream`` with a 307 to a stream
server, then sends a ``put`` event whose ``data`` holds the new largest id
each time HN creates an item, and a ``keep-alive`` about every 30 s. On
``cancel``, ``auth_revoked``, an error, the end of the stream, an event
over 64 KiB or silence
past :data:`SILENCE` seconds the follower reconnects with exponential
backoff and jitter; while the stream is down it polls the same URL as plain
JSON every ``poll_every`` seconds, so new items are still seen.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from alerts import __version__
from alerts.errors import FetchError
from alerts.hn import HNClient, parse_json
from alerts.http import describe_error
from alerts.model import MAX_ID

log = logging.getLogger(__name__)

#: Seconds without any event (HN sends a keep-alive about every 30) before the stream counts as down.
SILENCE = 60.0
#: The transport's read timeout on the stream: above the keep-alive interval, past the silence watchdog.
READ_TIMEOUT = 90.0
#: The largest event of the stream accepted (its lines together); a larger one is a broken (or hostile) stream.
MAX_EVENT = 65_536
#: Reconnection waits: the first, and the most.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0


class StreamDown(Exception):
    """Why the event stream stopped (internal: it only ever leads to a reconnect)."""


class MaxItemFollower:
    """Calls ``on_max`` with each new largest id: from the event stream, or from polls while it is down.

    ``last_sign`` is the monotonic time of the last sign of life from HN: an
    event (a ``put`` or a ``keep-alive``) or a successful poll (``None``
    before the first).
    """

    def __init__(
        self,
        hn: HNClient,
        on_max: Callable[[int], None],
        *,
        poll_every: float,
        connect_timeout: float,
        first_backoff: float = FIRST_BACKOFF,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._hn = hn
        self._on_max = on_max
        self._poll_every = poll_every
        self._connect_timeout = connect_timeout
        self._first_backoff = first_backoff
        self._sleep = sleep
        self._down = asyncio.Event()
        self._down.set()  # until the first event arrives, polls keep the position moving
        self.connected = False
        self.last_sign: float | None = None  # monotonic: the last event or successful poll
        self._events = 0  # events read on the current connection

    @property
    def url(self) -> str:
        """The URL followed."""
        return f"{self._hn.base_url}/maxitem.json"

    async def run(self) -> None:
        """Follow until cancelled; never returns otherwise."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen())
            group.create_task(self._poll_while_down())

    async def _listen(self) -> None:
        failures = 0
        while True:
            self._events = 0
            try:
                await self._read()
                reason = "the server ended the stream"
            except StreamDown as exc:
                reason = str(exc)
            except TimeoutError:
                reason = f"no event for {SILENCE:g} s"
            except httpx.TransportError as exc:
                reason = describe_error(exc, httpx.URL(self.url))
            except (httpx.HTTPError, SSEError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            failures = 1 if self._events else failures + 1
            delay = self._backoff(failures)
            self._went_down(reason, delay, failures)
            await self._sleep(delay)

    def _backoff(self, failures: int) -> float:
        if self._first_backoff <= 0:
            return 0.0
        base = self._first_backoff * 2.0 ** min(failures - 1, 16)
        return min(base + random.uniform(0, self._first_backoff), MAX_BACKOFF)

    def _went_down(self, reason: str, delay: float, failures: int) -> None:
        was_up = self.connected
        self.connected = False
        self._down.set()
        log.log(
            logging.WARNING if was_up or failures == 1 or delay >= MAX_BACKOFF else logging.INFO,
            "event stream down (%s): polling %s every %g s; reconnecting in %.1f s",
            reason,
            self.url,
            self._poll_every,
            delay,
        )

    async def _read(self) -> None:
        """Read the stream until it ends, handing each new largest id on."""
        timeout = httpx.Timeout(self._connect_timeout, read=READ_TIMEOUT)
        headers = {"User-Agent": f"hn-alerts/{__version__}", "Accept-Encoding": "identity"}
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(SILENCE) as silence:
            async with aconnect_sse(
                self._hn.http, "GET", self.url, headers=headers, timeout=timeout, follow_redirects=True
            ) as source:
                response = source.response
                if response.status_code != 200:
                    raise StreamDown(f"HTTP {response.status_code}")
                response.stream = _CappedEvents(response.stream, MAX_EVENT)
                async for event in source.aiter_sse():
                    silence.reschedule(loop.time() + SILENCE)
                    self._events += 1
                    self._handle(event.event, event.data)

    def _handle(self, kind: str, data: str) -> None:
        if kind == "put":
            self._sign_of_life()
            largest = _largest_id(data)
            if largest is None:
                log.warning("event stream: a put that holds no item id, ignored: %.80r", data)
            else:
                self._on_max(largest)
        elif kind == "keep-alive":
            self._sign_of_life()
        elif kind == "cancel":
            raise StreamDown("the server cancelled the stream")
        elif kind == "auth_revoked":
            raise StreamDown("the server revoked the stream's authorisation")

    def _sign_of_life(self) -> None:
        self.last_sign = time.monotonic()
        if not self.connected:
            self.connected = True
            self._down.clear()
            log.info("event stream up: following new items at %s", self.url)

    async def _poll_while_down(self) -> None:
        failures = 0
        while True:
            await self._down.wait()
            try:
                largest = await self._hn.max_item()
            except FetchError as exc:
                failures += 1
                level = logging.WARNING if failures == 1 or failures % 60 == 0 else logging.DEBUG
                log.log(level, "polling %s failed (%d in a row): %s", self.url, failures, exc.reason)
            else:
                failures = 0
                self.last_sign = time.monotonic()
                self._on_max(largest)
            await self._sleep(self._poll_every)


def _largest_id(data: str) -> int | None:
    """The id in a ``put`` event's data (``{"path": "/", "data": ID}``), or ``None``."""
    try:
        value = parse_json(data.encode(), "event stream")
    except FetchError:
        return None
    if not isinstance(value, dict) or value.get("path") != "/":
        return None
    largest = value.get("data")
    if type(largest) is not int or not 0 <= largest <= MAX_ID:
        return None
    return largest


_BLANK_LINES = (b"\n\n", b"\r\r", b"\r\n\r\n")


class _CappedEvents(httpx.AsyncByteStream):
    """A response body that ends the stream when one event grows past ``limit`` bytes (memory stays bounded).

    An event ends with a blank line; the bytes since the last one are what
    the SSE decoder holds, however they are split into lines.
    """

    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, limit: int) -> None:
        if not isinstance(inner, httpx.AsyncByteStream):
            raise TypeError("the event stream needs an async response stream")
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held = 0  # bytes since the last blank line
        tail = b""  # the end of the previous chunk, for a blank line split across two chunks
        async for chunk in self._inner:
            window = tail + chunk
            cut = max((i + len(sep) for sep in _BLANK_LINES if (i := window.rfind(sep)) >= 0), default=-1)
            held = held + len(chunk) if cut <= len(tail) else len(window) - cut
            if held > self._limit:
                raise StreamDown(f"an event of the stream over {self._limit} bytes")
            tail = window[-3:]
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
