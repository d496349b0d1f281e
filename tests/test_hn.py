"""The HN client: what it retries, how it waits, and how many requests it allows at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from alerts.errors import MalformedItemError, RejectedFetchError, RetryableFetchError
from alerts.hn import HNClient, RetryPolicy, retry_after_seconds
from alerts.http import Transport, make_client
from tests import trees
from tests.fakehn import FakeHN
from tests.smtpserver import free_port

#: (task name, "request" or "sleep", path or seconds), in the order they happened.
Events = list[tuple[str, str, object]]


class RecordingSleep:
    """An injected sleep that records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on to the real transport, noting which task sent which path."""

    def __init__(self, inner: httpx.AsyncBaseTransport, events: Events) -> None:
        self._inner = inner
        self._events = events

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._events.append((_task_name(), "request", request.url.path))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def recording_sleep(events: Events) -> Callable[[float], Awaitable[None]]:
    """An injected sleep that notes which task waited how long, and yields as a real sleep would."""

    async def sleep(seconds: float) -> None:
        events.append((_task_name(), "sleep", seconds))
        await asyncio.sleep(0)

    return sleep


def _task_name() -> str:
    task = asyncio.current_task()
    return task.get_name() if task else "?"


def of_task(events: Events, name: str) -> list[tuple[str, object]]:
    return [(kind, what) for task, kind, what in events if task == name]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(32) as transport:
        yield transport


async def test_5xx_and_429_are_retried_then_succeed(hn: FakeHN, http: httpx.AsyncClient) -> None:
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


async def test_retry_after_is_honoured(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """A 429 with Retry-After: 7 waits 7 s plus at most 10% (on the injected sleep), not the backoff."""
    hn.add_story(1, trees.wide(10, 1))
    hn.fail("/v0/item/1.json", 1, 429, {"Retry-After": "7"})
    sleep = RecordingSleep()
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0.01), sleep=sleep, clock=lambda: 0.0)
    assert await client.item(1) is not None
    waits = [w for w in sleep.waits if w > 0]
    assert len(waits) == 1 and 7.0 <= waits[0] <= 7.7


async def test_retry_after_pauses_every_request_of_the_client(hn: FakeHN) -> None:
    """A 429 with Retry-After: 30 on one path holds back a concurrent request to another path too.

    Both wait 30 s plus at most 10% jitter (capped at 1 s) on the injected sleep, before they send.
    """
    hn.add_story(1, trees.wide(10, 1))
    hn.fail("/v0/item/1.json", 1, 429, {"Retry-After": "30"})
    events: Events = []
    async with httpx.AsyncClient(transport=RecordingTransport(Transport(32), events)) as http:
        await _two_requests_under_a_pause(hn, http, events)


async def _two_requests_under_a_pause(hn: FakeHN, http: httpx.AsyncClient, events: Events) -> None:
    client = HNClient(
        http,
        hn.url,
        max_concurrency=1,
        retry=RetryPolicy(attempts=3, backoff=0),
        sleep=recording_sleep(events),
        clock=lambda: 1_000.0,
    )
    first = asyncio.create_task(client.item(1), name="first")
    second = asyncio.create_task(client.item(10), name="second")
    await asyncio.wait_for(asyncio.gather(first, second), timeout=5)
    assert of_task(events, "second")[1:] == [("request", "/v0/item/10.json")]
    (kind, wait) = of_task(events, "second")[0]
    assert kind == "sleep" and 30.0 <= wait <= 31.0  # type: ignore[operator]
    first_events = of_task(events, "first")
    assert first_events[0] == ("request", "/v0/item/1.json") and first_events[-1] == first_events[0]
    assert [w for kind, w in first_events if kind == "sleep" and w] == [pytest.approx(30.5, abs=0.5)]
    assert hn.requests["/v0/item/1.json"] == 2 and hn.requests["/v0/item/10.json"] == 1


async def test_a_request_started_during_a_pause_waits_for_the_rest_of_it(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """20 s into a 30 s pause, a new request waits the 10 s left (plus jitter); after the pause, none."""
    hn.add_story(1, trees.wide(10, 1))
    hn.fail("/v0/item/1.json", 1, 429, {"Retry-After": "30"})
    now = [1_000.0]
    sleep = RecordingSleep()
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0), sleep=sleep, clock=lambda: now[0])
    assert await client.item(1) is not None
    now[0] += 20
    sleep.waits.clear()
    assert await client.item(10) is not None
    assert len(sleep.waits) == 1 and 10.0 <= sleep.waits[0] <= 11.0
    now[0] += 11
    sleep.waits.clear()
    assert await client.item(10) is not None
    assert sleep.waits == []


async def test_retry_after_is_capped_at_60_s(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """Retry-After: 9999 pauses the client for 60 s (plus at most 1 s of jitter), not 2 3/4 hours."""
    hn.add_story(1, trees.wide(10, 1))
    hn.fail("/v0/item/1.json", 1, 429, {"Retry-After": "9999"})
    sleep = RecordingSleep()
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0), sleep=sleep, clock=lambda: 0.0)
    assert await client.item(1) is not None
    waits = [w for w in sleep.waits if w > 0]
    assert len(waits) == 1 and 60.0 <= waits[0] <= 61.0


async def test_backoff_grows_exponentially_with_jitter(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """Waits between attempts double (plus at most one backoff of jitter)."""
    hn.add_story(1, trees.wide(10, 1))
    hn.fail("/v0/item/1.json", 4, 503)
    sleep = RecordingSleep()
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=5, backoff=1.0), sleep=sleep)
    assert await client.item(1) is not None
    assert len(sleep.waits) == 4
    for n, wait in enumerate(sleep.waits):
        assert 2**n <= wait <= 2**n + 1.0


async def test_other_4xx_is_not_retried(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """A 404 is final: one request, RejectedFetchError."""
    hn.fail("/v0/item/5.json", 5, 404)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=5, backoff=0))
    with pytest.raises(RejectedFetchError):
        await client.item(5)
    assert hn.requests["/v0/item/5.json"] == 1


async def test_attempts_are_bounded_and_the_last_error_raised(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """After ALERTS_FETCH_ATTEMPTS failures the last error is raised."""
    hn.fail("/v0/item/5.json", 10, 502)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0))
    with pytest.raises(RetryableFetchError, match="HTTP 502"):
        await client.item(5)
    assert hn.requests["/v0/item/5.json"] == 3


async def test_connection_reset_and_truncated_body_are_retried(hn: FakeHN, http: httpx.AsyncClient) -> None:
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
    async with make_client(4) as http:
        client = HNClient(http, hn.url, retry=RetryPolicy(attempts=2, backoff=0), request_timeout=0.1)
        with pytest.raises(RetryableFetchError, match="timeout"):
            await client.item(1)
    assert client.fetches == 2


async def test_a_refused_connection_says_refused(http: httpx.AsyncClient) -> None:
    """A closed port is "connection refused by HOST:PORT", not a timeout."""
    port = free_port()
    client = HNClient(http, f"http://127.0.0.1:{port}/v0", retry=RetryPolicy(attempts=1))
    with pytest.raises(RetryableFetchError) as info:
        await asyncio.wait_for(client.item(1), timeout=10)
    assert info.value.reason == f"connection refused by 127.0.0.1:{port}"


async def test_a_dns_failure_says_dns(http: httpx.AsyncClient) -> None:
    """A name that cannot resolve (``.invalid`` never does) is a DNS failure naming the host."""
    client = HNClient(http, "http://hn-alerts-test.invalid/v0", retry=RetryPolicy(attempts=1), request_timeout=5)
    with pytest.raises(RetryableFetchError) as info:
        await asyncio.wait_for(client.item(1), timeout=10)
    assert info.value.reason.startswith("DNS lookup failed for hn-alerts-test.invalid")


async def test_tls_to_a_plain_http_server_says_tls(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """https:// to a server that speaks plain HTTP is a TLS error naming the endpoint."""
    client = HNClient(http, hn.url.replace("http://", "https://"), retry=RetryPolicy(attempts=1), request_timeout=5)
    with pytest.raises(RetryableFetchError) as info:
        await asyncio.wait_for(client.item(1), timeout=10)
    assert info.value.reason.startswith("TLS error: ")
    assert f"127.0.0.1:{hn.port}" in info.value.reason


@pytest.mark.parametrize(
    ("hard", "reason"),
    [(True, "connection reset by {where}"), (False, "connection closed by {where} before the answer was complete")],
    ids=["rst", "fin"],
)
async def test_a_dropped_connection_says_how(hn: FakeHN, http: httpx.AsyncClient, hard: bool, reason: str) -> None:
    """A connection the server resets (RST) or closes (FIN) without answering says which, and where."""
    # aiohttp itself sends an idempotent request once more on a dropped connection: drop both.
    hn.reset_connection("/v0/item/1.json", 2, hard=hard)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=1))
    with pytest.raises(RetryableFetchError) as info:
        await client.item(1)
    assert info.value.reason == reason.format(where=f"127.0.0.1:{hn.port}")


async def test_malformed_json_is_retried_then_raised(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """A body that is not JSON is retried, then raised as MalformedItemError."""
    hn.malformed(9)
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=2, backoff=0))
    with pytest.raises(MalformedItemError):
        await client.item(9)
    assert hn.requests["/v0/item/9.json"] == 2


async def test_in_flight_never_exceeds_the_bound(http: httpx.AsyncClient) -> None:
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

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
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


async def test_failed_requests_are_counted_by_kind() -> None:
    """Each failure names its kind for /metrics: 429, 5xx, other 4xx, a body that is not JSON, a timeout."""

    async def handler(request: httpx.Request) -> httpx.Response:
        answer = request.url.path.rsplit("/", 1)[-1].removesuffix(".json")
        if answer == "slow":
            await asyncio.sleep(5)
        status = {"429": 429, "503": 503, "404": 404}.get(answer, 200)
        return httpx.Response(status, content=b"{not json")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = HNClient(http, "http://hn.test/v0", retry=RetryPolicy(attempts=1), request_timeout=0.1)
        for name in ("429", "503", "404", "bad", "slow"):
            with pytest.raises((RetryableFetchError, RejectedFetchError, MalformedItemError)):
                await client.story_ids(name)
    assert dict(client.errors) == {"http_429": 1, "http_5xx": 1, "http_4xx": 1, "malformed": 1, "timeout": 1}
