"""The HN Firebase API client: one shared HTTP transport, a priority concurrency bound, a retry policy.

What is retried is named here and nowhere else: transport errors, timeouts,
5xx and 429 (honouring ``Retry-After``), and bodies that are not JSON (a
truncated answer looks like that). Other 4xx answers are final. The
concurrency limit is taken around each single request, so the backoff sleeps
between attempts never hold a slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from alerts import __version__
from alerts.errors import MalformedItemError, RejectedFetchError, RetryableFetchError
from alerts.limiter import PriorityLimiter

if TYPE_CHECKING:
    from alerts.config import Settings

log = logging.getLogger(__name__)

Item = dict[str, Any]
MAX_BACKOFF = 30.0
MAX_RETRY_AFTER = 120.0


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

        The server's Retry-After when it sent one, else exponential backoff with jitter.
        """
        if isinstance(exc, RetryableFetchError) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER)
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

    It speaks httpx's transport API to one shared transport (the connection
    pool): ``alerts.http.make_transport`` in the service, an
    ``httpx.MockTransport`` in unit tests. ``fetches`` counts every HTTP
    request made, retries included.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        base_url: str,
        *,
        max_concurrency: int = 32,
        retry: RetryPolicy | None = None,
        request_timeout: float = 10.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._transport = transport
        self._base = base_url.rstrip("/")
        self._limit = PriorityLimiter(max_concurrency)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._deadline = request_timeout
        self._extensions = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), request_timeout)}
        self._headers = [(b"User-Agent", f"hn-alerts/{__version__}".encode()), (b"Accept", b"application/json")]
        self.fetches = 0

    @classmethod
    def from_settings(cls, settings: Settings, transport: httpx.AsyncBaseTransport) -> HNClient:
        """The client with the settings' API URL, concurrency bound, timeout and retry policy."""
        return cls(
            transport,
            settings.hn_api_url,
            max_concurrency=settings.max_concurrency,
            request_timeout=settings.fetch_timeout,
            retry=RetryPolicy(
                attempts=settings.fetch_attempts,
                backoff=settings.fetch_backoff,
                deadline=max(60.0, settings.fetch_attempts * (settings.fetch_timeout + 30.0)),
            ),
        )

    async def item(self, item_id: int, *, priority: float = 0.0) -> Item | None:
        """One item, or ``None`` when the API answers ``null`` (or not an object).

        Lower ``priority`` values are sent first when requests queue for a slot.
        """
        data = await self._get_json(f"{self._base}/item/{item_id}.json", priority)
        return data if isinstance(data, dict) else None

    async def story_ids(self, name: str) -> list[int]:
        """The ids of one story list (``topstories`` ...), in the API's order."""
        data = await self._get_json(f"{self._base}/{name}.json", -1e9)
        if not isinstance(data, list):
            raise MalformedItemError(f"{self._base}/{name}.json", "expected a list of ids")
        return [i for i in data if isinstance(i, int) and not isinstance(i, bool)]

    async def _get_json(self, url: str, priority: float) -> Any:
        try:
            # Nearly every request succeeds at once; tenacity takes over from the first failure,
            # which keeps its per-call set-up (a tenth of the CPU per request) off the common path.
            return await self._attempt(url, priority)
        except RETRIED as exc:
            if self._retry.attempts < 2:
                raise
            first = exc
        await self._pause(1, first)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts - 1) | stop_after_delay(self._retry.deadline),
            wait=lambda state: self._retry.delay(state.attempt_number + 1, _error(state)),
            retry=retry_if_exception_type(RETRIED),
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
        await self._limit.acquire(priority)
        try:
            self.fetches += 1
            # Built only once a slot is ours: thousands may wait, and they should wait light.
            request = httpx.Request("GET", url, headers=self._headers, extensions=self._extensions)
            status, headers, body = await self._exchange(request, url)
        finally:
            self._limit.release()
        if status == 429 or status >= 500:
            raise RetryableFetchError(url, f"HTTP {status}", retry_after_seconds(headers.get("retry-after")))
        if status >= 300:
            raise RejectedFetchError(url, f"HTTP {status}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise MalformedItemError(url, f"malformed JSON: {exc}") from exc

    async def _exchange(self, request: httpx.Request, url: str) -> tuple[int, httpx.Headers, bytes]:
        """One request and its whole body, within the overall deadline."""
        try:
            # Transport timeouts bound each phase; this bounds the whole request,
            # so a server trickling bytes cannot hold a slot for ever.
            async with asyncio.timeout(self._deadline):
                response = await self._transport.handle_async_request(request)
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise RetryableFetchError(url, f"timeout ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise RetryableFetchError(url, f"{type(exc).__name__}: {exc}") from exc
        except httpx.DecodingError as exc:
            raise MalformedItemError(url, f"undecodable body: {exc}") from exc
        except httpx.RequestError as exc:  # an invalid URL and the like
            raise RejectedFetchError(url, f"{type(exc).__name__}: {exc}") from exc
        return response.status_code, response.headers, body


RETRIED = (RetryableFetchError, MalformedItemError)


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _log_retry(failed_attempt: int, exc: BaseException | None, wait: float) -> None:
    log.debug("retrying %s in %.2f s (attempt %d failed)", exc, wait, failed_attempt)
