"""The HN Firebase API client: one shared HTTP transport, a priority concurrency bound, a retry policy.

What is retried is named here and nowhere else: transport errors, timeouts,
5xx and 429, and bodies that are not JSON (a truncated answer looks like
that). Other 4xx answers are final, and so is a body that no retry will
mend (:class:`HostileBodyError`: too large, nested too deep, ids out of
range, fields of the wrong types). A ``Retry-After`` (on a 429, or a 5xx)
pauses the whole client, not only the request that got it, for at most
``MAX_RETRY_AFTER`` seconds. The concurrency limit is taken around each
single request, so the backoff sleeps between attempts and the pauses never
hold a slot.
"""

from __future__ import annotations

import array
import asyncio
import collections
import itertools
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

from alerts import __version__
from alerts.errors import FetchError, MalformedItemError, RejectedFetchError, RetryableFetchError
from alerts.http import BodyError, describe_error, read_body
from alerts.limiter import PriorityLimiter
from alerts.model import MAX_ID, Item

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
#: The longest pause a ``Retry-After`` buys; longer asks are cut to this.
MAX_RETRY_AFTER = 60.0
#: Resuming after a pause is spread over up to 10% of it, at most this many seconds.
MAX_RESUME_JITTER = 1.0
#: Seconds between warnings that the client pauses (the others go to the debug log).
PAUSE_LOG_EVERY = 60.0
#: Deepest JSON nesting accepted; an item is 1 and its ``kids`` 2.
MAX_DEPTH = 100

#: The item fields the service reads, and their one JSON type each (``null`` is always allowed).
ITEM_FIELDS: dict[str, type] = {
    "id": int,
    "parent": int,
    "descendants": int,
    "score": int,
    "time": int,
    "kids": list,
    "type": str,
    "by": str,
    "title": str,
    "url": str,
    "text": str,
    "dead": bool,
    "deleted": bool,
}

# A JSON string, or an unterminated one to the end: every quote matches, so the scan stays linear.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


class HostileBodyError(MalformedItemError):
    """A 200 body that asking again will not mend: never retried.

    Over the size cap (sent or decompressed), in an unknown encoding, nested
    deeper than ``MAX_DEPTH``, or JSON of the wrong shape: an id or count
    outside 0..2^53, a field of the wrong type.
    """


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one request is tried.

    ``backoff`` is the first wait; each later one doubles, plus up to
    ``backoff`` of jitter, capped at ``max_backoff``. ``backoff=0`` turns the
    waiting off (tests). No new attempt starts after ``deadline`` seconds.
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = MAX_BACKOFF
    deadline: float = 300.0

    def delay(self, failed_attempt: int, exc: BaseException | None) -> float:
        """Seconds to sleep after attempt ``failed_attempt`` (1 = the first) failed with ``exc``.

        Zero when the server sent a Retry-After: that pauses the whole client
        (:class:`HNClient`), and the retry waits out the pause like any other
        request. Else exponential backoff with jitter.
        """
        if isinstance(exc, RetryableFetchError) and exc.retry_after is not None:
            return 0.0
        if self.backoff <= 0:
            return 0.0
        return min(self.backoff * 2.0 ** (failed_attempt - 1) + random.uniform(0, self.backoff), self.max_backoff)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no zone named
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class HNClient:
    """Reads items and story lists, bounded and retried.

    It sends through one shared ``httpx.AsyncClient`` (``alerts.http.make_client``
    in the service; over an ``httpx.MockTransport`` in unit tests). ``fetches`` counts every HTTP
    request made, retries included.

    A ``Retry-After`` (capped at ``MAX_RETRY_AFTER``) sets a deadline before
    which no request takes a concurrency slot; waiters resume with a little
    jitter. ``sleep`` and ``clock`` (monotonic seconds) are injectable, so
    tests need not wait.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        max_concurrency: int = 32,
        retry: RetryPolicy | None = None,
        request_timeout: float = 10.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._limit = PriorityLimiter(max_concurrency)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._paused_until = 0.0  # on self._clock; no request takes a slot before it
        self._pause_logged = -PAUSE_LOG_EVERY
        self._deadline = request_timeout
        self._extensions = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), request_timeout)}
        self._headers = [
            (b"User-Agent", f"hn-alerts/{__version__}".encode()),
            (b"Accept", b"application/json"),
            # Named, so no transport offers an encoding read_body cannot bound (aiohttp would add br, zstd).
            (b"Accept-Encoding", b"gzip, deflate"),
        ]
        self.fetches = 0
        self.errors: collections.Counter[str] = collections.Counter()  # failed requests by FetchError.kind

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client (the stream source reads the event stream through it)."""
        return self._client

    @property
    def base_url(self) -> str:
        """The API base URL, without a trailing slash."""
        return self._base

    async def item(self, item_id: int, *, priority: float = 0.0) -> Item | None:
        """One item, or ``None`` when the API answers ``null``.

        Any other answer than an object whose :data:`ITEM_FIELDS` have their
        types (ids and counts in 0..2^53) is a :class:`HostileBodyError`.
        Lower ``priority`` values are sent first when requests queue for a slot.
        """
        url = f"{self._base}/item/{item_id}.json"
        data = await self._get_json(url, priority)
        if data is None:
            return None
        if type(data) is not dict:
            raise HostileBodyError(url, f"expected an item object, got {_json_name(type(data))}")
        problem = item_problem(data)
        if problem is not None:
            raise HostileBodyError(url, problem)
        return data

    async def max_item(self) -> int:
        """The largest item id so far (``/v0/maxitem.json``); anything but an id is a :class:`HostileBodyError`."""
        url = f"{self._base}/maxitem.json"
        data = await self._get_json(url, -1e9)
        if type(data) is not int or not 0 <= data <= MAX_ID:
            raise HostileBodyError(url, "expected an item id")
        return data

    async def story_ids(self, name: str) -> list[int]:
        """The ids of one story list (``topstories`` ...), in the API's order.

        Anything but a list of ids in 0..2^53 is a :class:`HostileBodyError`, for the whole list.
        """
        url = f"{self._base}/{name}.json"
        data = await self._get_json(url, -1e9)
        if type(data) is not list or not _are_ids(data):
            raise HostileBodyError(url, "expected a list of ids")
        return data

    async def _get_json(self, url: str, priority: float) -> Any:
        try:
            # Nearly every request succeeds at once; tenacity takes over from the first failure,
            # which keeps its per-call set-up (a tenth of the CPU per request) off the common path.
            return await self._attempt(url, priority)
        except RETRIED as exc:
            if self._retry.attempts < 2 or not _worth_retrying(exc):
                raise
            first = exc
        await self._pause(1, first)
        # Imported here, at the first failure: most runs never need it, and every start-up would pay for it.
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts - 1) | stop_after_delay(self._retry.deadline),
            wait=lambda state: self._retry.delay(state.attempt_number + 1, _error(state)),
            retry=retry_if_exception(_worth_retrying),
            sleep=self._sleep,
            reraise=True,
            before_sleep=lambda state: _log_retry(
                state.attempt_number + 1, _error(state), state.next_action.sleep if state.next_action else 0.0
            ),
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(url, priority)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _pause(self, failed_attempt: int, exc: BaseException) -> None:
        seconds = self._retry.delay(failed_attempt, exc)
        _log_retry(failed_attempt, exc, seconds)
        await self._sleep(seconds)

    async def _attempt(self, url: str, priority: float) -> Any:
        try:
            return await self._attempt_once(url, priority)
        except FetchError as exc:
            self.errors[exc.kind] += 1
            raise

    async def _attempt_once(self, url: str, priority: float) -> Any:
        await self._take_slot(priority)
        try:
            self.fetches += 1
            # Built only once a slot is ours: thousands may wait, and they should wait light.
            request = httpx.Request("GET", url, headers=self._headers, extensions=self._extensions)
            status, headers, body = await self._exchange(request, url)
        finally:
            self._limit.release()
        if status == 429 or status >= 500:
            retry_after = retry_after_seconds(headers.get("retry-after"))
            if retry_after:
                self._pause_all(retry_after, url)
            raise RetryableFetchError(
                url, f"HTTP {status}", retry_after, kind="http_429" if status == 429 else "http_5xx"
            )
        if status >= 300:
            raise RejectedFetchError(url, f"HTTP {status}")
        return parse_json(body, url)

    async def _take_slot(self, priority: float) -> None:
        """Take a concurrency slot once the client is not paused.

        A pause that began while this request queued for its slot sends it
        back to wait too. Each pause is waited out once: the check is on its
        deadline, so a clock that does not move (tests) cannot spin this loop.
        """
        waited = 0.0  # the end of the last pause this request sat out
        while True:
            if self._paused_until > waited:
                waited = await self._sit_out_pause()
                continue
            await self._limit.acquire(priority)
            if self._paused_until <= waited:
                return
            self._limit.release()

    async def _sit_out_pause(self) -> float:
        """Sleep until the current pause ends, plus jitter; returns that pause's deadline."""
        until = self._paused_until
        left = until - self._clock()
        if left > 0:
            # Spread the resumption, so the waiters do not all fire at the same instant.
            await self._sleep(left + random.uniform(0.0, min(0.1 * left, MAX_RESUME_JITTER)))
        return until

    def _pause_all(self, retry_after: float, url: str) -> None:
        """No request takes a slot for ``retry_after`` seconds (capped at ``MAX_RETRY_AFTER``) from now."""
        now = self._clock()
        seconds = min(retry_after, MAX_RETRY_AFTER)
        if now + seconds <= self._paused_until:
            return
        if self._paused_until <= now:
            # A server that keeps answering 429 would otherwise write a line per pause.
            quiet = now - self._pause_logged < PAUSE_LOG_EVERY
            if not quiet:
                self._pause_logged = now
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "%s asked to wait %.1f s: every request pauses",
                url,
                seconds,
            )
        self._paused_until = now + seconds

    async def _exchange(self, request: httpx.Request, url: str) -> tuple[int, httpx.Headers, bytes]:
        """One request, and the whole body of a 2xx answer, within the overall deadline."""
        try:
            # Transport timeouts bound each phase; this bounds the whole request,
            # so a server trickling bytes cannot hold a slot for ever.
            async with asyncio.timeout(self._deadline):
                response = await self._client.send(request, stream=True)
                try:
                    body = await read_body(response) if response.status_code < 300 else b""
                finally:
                    await response.aclose()
        except BodyError as exc:
            raise (HostileBodyError if exc.final else MalformedItemError)(url, str(exc)) from exc
        except TimeoutError as exc:
            reason = f"timeout: no complete answer within {self._deadline:g} s"
            raise RetryableFetchError(url, reason, kind="timeout") from exc
        except httpx.TransportError as exc:
            raise RetryableFetchError(url, describe_error(exc, request.url)) from exc
        except httpx.RequestError as exc:  # an invalid URL and the like
            raise RejectedFetchError(url, f"{type(exc).__name__}: {exc}", kind="transport") from exc
        return response.status_code, response.headers, body


RETRIED = (RetryableFetchError, MalformedItemError)


def _worth_retrying(exc: BaseException) -> bool:
    return isinstance(exc, RETRIED) and not isinstance(exc, HostileBodyError)


def parse_json(body: bytes, url: str) -> Any:
    """The JSON value of a body; :class:`MalformedItemError` unless it is UTF-8 JSON nested at most ``MAX_DEPTH``.

    The depth is checked before parsing, so a deep body never reaches the
    parser's recursion. Counting the brackets first keeps that check off
    the common path (an item holds a handful).
    """
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and json_depth(body) > MAX_DEPTH:
        raise HostileBodyError(url, f"JSON nested deeper than {MAX_DEPTH}")
    try:
        return json.loads(body.decode())
    except ValueError as exc:  # UnicodeDecodeError included
        raise MalformedItemError(url, f"malformed JSON: {exc}") from exc


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest (brackets inside strings do not count).

    Runs in C over the bytes: the strings are cut out, the brackets turned
    into +1 and -1, and the deepest running sum taken. For UTF-8 only, where
    no byte of a multi-byte character is a quote or a bracket.
    """
    steps = _JSON_STRING.sub(b"", body).translate(_BRACKET_STEP, _NOT_BRACKET)
    return max(itertools.accumulate(array.array("b", steps)), default=0)


def item_problem(item: Item) -> str | None:
    """What is wrong with an item's :data:`ITEM_FIELDS`, or ``None`` when nothing is.

    Types are matched exactly, as ``json`` makes them: a bool is not an int.
    """
    for key, value in item.items():
        want = ITEM_FIELDS.get(key)
        if want is not None and value is not None and (problem := _field_problem(key, value, want)):
            return problem
    return None


def _field_problem(key: str, value: Any, want: type) -> str | None:
    kind = type(value)
    if kind is not want:
        return f"{key} is {_json_name(kind)}, not {_json_name(want)}"
    if kind is int and not 0 <= value <= MAX_ID:
        return f"{key} {_clip(str(value))} is outside 0..2^53"
    if kind is list and not _are_ids(value):
        return f"{key} is not a list of ids in 0..2^53"
    return None


def _clip(digits: str) -> str:
    """A number for a log line: a hostile one may have thousands of digits."""
    return digits if len(digits) <= 24 else f"{digits[:12]}... ({len(digits)} digits)"


def _are_ids(values: list[Any]) -> bool:
    return all(type(v) is int for v in values) and (not values or (min(values) >= 0 and max(values) <= MAX_ID))


def _json_name(kind: type) -> str:
    return _JSON_NAMES.get(kind, kind.__name__)


_JSON_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _log_retry(failed_attempt: int, exc: BaseException | None, wait: float) -> None:
    log.debug("retrying %s in %.2f s (attempt %d failed)", exc, wait, failed_attempt)
