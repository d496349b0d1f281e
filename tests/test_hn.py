"""The HN client: what it retries, how it waits, and how many requests it allows at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from alerts.errors import MalformedItemError, RejectedFetchError, RetryableFetchError
from alerts.hn import HNClient, RetryPolicy, retry_after_seconds
from alerts.http import Transport
from tests import trees
from tests.fakehn import FakeHN


class RecordingSleep:
    """An injected sleep that records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncBaseTransport]:
    async with Transport(32) as transport:
        yield transport


async def test_5xx_and_429_are_retried_then_succeed(hn: FakeHN, http: httpx.AsyncBaseTransport) -> None:
    """503, 500 and 429 are retried; the fourth attempt gets the item."""
    hn.add_story(1, trees.wide(10, 1))
    path = "/v0/item/1.json"
    hn.fail(path, 1, 503)
    hn.fail(path, 1, 500)
    hn.fail(path, 1, 429)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=4, backoff=0))
    item = await client.item(1)
    assert item is not None and item["id"] == 1
    assert hn.requests[path] == 4
    assert client.fetches == 4


async def test_retry_after_is_honoured(hn: FakeHN, http: httpx.AsyncBaseTransport) -> None:
    """A 429 with Retry-After: 7 waits 7 s (on the injected sleep), not the backoff."""
    hn.add_story(1, trees.wide(10, 1))
    hn.fail("/v0/item/1.json", 1, 429, {"Retry-After": "7"})
    sleep = RecordingSleep()
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0.01), sleep=sleep)
    assert await client.item(1) is not None
    assert sleep.waits == [7.0]


async def test_backoff_grows_exponentially_with_jitter(hn: FakeHN, http: httpx.AsyncBaseTransport) -> None:
    """Waits between attempts double (plus at most one backoff of jitter)."""
    hn.add_story(1, trees.wide(10, 1))
    hn.fail("/v0/item/1.json", 4, 503)
    sleep = RecordingSleep()
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=5, backoff=1.0), sleep=sleep)
    assert await client.item(1) is not None
    assert len(sleep.waits) == 4
    for n, wait in enumerate(sleep.waits):
        assert 2**n <= wait <= 2**n + 1.0


async def test_other_4xx_is_not_retried(hn: FakeHN, http: httpx.AsyncBaseTransport) -> None:
    """A 404 is final: one request, RejectedFetchError."""
    hn.fail("/v0/item/5.json", 5, 404)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=5, backoff=0))
    with pytest.raises(RejectedFetchError):
        await client.item(5)
    assert hn.requests["/v0/item/5.json"] == 1


async def test_attempts_are_bounded_and_the_last_error_raised(hn: FakeHN, http: httpx.AsyncBaseTransport) -> None:
    """After ALERTS_FETCH_ATTEMPTS failures the last error is raised."""
    hn.fail("/v0/item/5.json", 10, 502)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0))
    with pytest.raises(RetryableFetchError, match="HTTP 502"):
        await client.item(5)
    assert hn.requests["/v0/item/5.json"] == 3


async def test_connection_reset_and_truncated_body_are_retried(hn: FakeHN, http: httpx.AsyncBaseTransport) -> None:
    """A dropped connection and a half-sent body are retried until the item arrives."""
    hn.add_story(1, trees.wide(10, 1))
    hn.reset_connection("/v0/item/1.json", 1)
    hn.truncate("/v0/item/1.json", 1)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0))
    item = await client.item(1)
    assert item is not None and item["title"] == "Story"
    assert hn.requests["/v0/item/1.json"] == 3


async def test_timeout_is_retried(hn: FakeHN) -> None:
    """A request slower than the timeout is retried and counted each time."""
    hn.add_story(1, trees.wide(10, 1))
    hn.set_delay("/v0/item/1.json", 1.0)
    async with Transport(4) as http:
        client = HNClient(http, hn.url, retry=RetryPolicy(attempts=2, backoff=0), request_timeout=0.1)
        with pytest.raises(RetryableFetchError, match="timeout"):
            await client.item(1)
    assert client.fetches == 2


async def test_malformed_json_is_retried_then_raised(hn: FakeHN, http: httpx.AsyncBaseTransport) -> None:
    """A body that is not JSON is retried, then raised as MalformedItemError."""
    hn.malformed(9)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=2, backoff=0))
    with pytest.raises(MalformedItemError):
        await client.item(9)
    assert hn.requests["/v0/item/9.json"] == 2


async def test_in_flight_never_exceeds_the_bound(http: httpx.AsyncBaseTransport) -> None:
    """With a bound of 5 and latency, the server never sees more than 5 requests at once."""
    with FakeHN(latency=0.02) as hn:
        hn.add_story(1, trees.wide(100, 60))
        client = HNClient(http, hn.url, max_concurrency=5, retry=RetryPolicy(attempts=1))
        await asyncio.gather(*(client.item(i) for i in range(100, 160)))
        assert 1 < hn.max_in_flight <= 5


async def test_backoff_sleep_does_not_hold_a_slot() -> None:
    """While one request sleeps before its retry, another request uses the only slot."""
    release = asyncio.Event()
    order: list[str] = []

    async def sleep(_: float) -> None:
        order.append("sleeping")
        await release.wait()

    calls: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls[path] = calls.get(path, 0) + 1
        if path.endswith("/1.json") and calls[path] == 1:
            return httpx.Response(503)
        order.append(path)
        if path.endswith("/2.json"):
            release.set()
        return httpx.Response(200, content=json.dumps({"id": 1}))

    http = httpx.MockTransport(handler)
    client = HNClient(
        http, "http://hn.test/v0", max_concurrency=1, retry=RetryPolicy(attempts=2, backoff=1), sleep=sleep
    )
    first = asyncio.create_task(client.item(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(client.item(2))
    await asyncio.wait_for(asyncio.gather(first, second), timeout=5)
    assert order == ["sleeping", "/v0/item/2.json", "/v0/item/1.json"]


def test_retry_after_parsing() -> None:
    """Retry-After takes seconds or an HTTP date; garbage is ignored."""
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("-1") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None
