"""Hostile answers from the API cost bounded memory and time, and are malformed, not fatal.

Every test speaks HTTP to the fake API through the real transport: the body
cap, the decompression and the JSON checks are those the service runs.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts.errors import MalformedItemError
from alerts.hn import MAX_DEPTH, MAX_ID, HNClient, HostileBodyError, RetryPolicy, json_depth
from alerts.http import MAX_BODY, make_client
from alerts.walk import walk_kids
from tests import trees
from tests.fakehn import FakeHN

ITEM = "/v0/item/1.json"
STATUS = Path("/proc/self/status")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(8) as transport:
        yield transport


@pytest.fixture
def client(hn: FakeHN, http: httpx.AsyncClient) -> HNClient:
    """A client that would try everything three times."""
    hn.add_story(1, trees.wide(10, 3))
    return HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0))


def item_body(**fields: Any) -> bytes:
    return json.dumps({"id": 1, "type": "comment", **fields}).encode()


def padded(body: bytes, size: int) -> bytes:
    """``body`` followed by spaces (still the same JSON) up to ``size`` bytes."""
    return body + b" " * (size - len(body))


def gzip_of_zeros(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes, made a MiB at a time so the test itself stays small."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    mib = bytes(1 << 20)
    parts = [compressor.compress(mib) for _ in range(size >> 20)]
    return b"".join(parts) + compressor.flush()


def _kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yields a list that receives the growth of the process's peak RSS (bytes) over the block.

    The peak (VmHWM) is reset first where Linux allows, so earlier tests' peaks cannot hide this one's.
    """
    if not STATUS.exists():
        pytest.skip("needs /proc/self/status")
    with contextlib.suppress(OSError):  # without the reset the check is weaker, never wrong
        Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmHWM")
    growth: list[int] = []
    yield growth
    growth.append((_kib("VmHWM") - before) * 1024)


# -- body size -----------------------------------------------------------------


async def test_a_plain_body_over_1_mib_is_malformed_and_not_retried(hn: FakeHN, client: HNClient) -> None:
    """A valid item of 1 MiB + 1 byte is malformed, asked once; the connection pool still works after."""
    hn.answer(ITEM, padded(item_body(), MAX_BODY + 1), times=3)
    with pytest.raises(HostileBodyError, match="body over 1048576 bytes"):
        await client.item(1)
    assert hn.requests[ITEM] == 1
    hn.clear_faults()
    item = await client.item(1)
    assert item is not None and item["title"] == "Story"


async def test_a_plain_body_of_exactly_1_mib_is_read(hn: FakeHN, client: HNClient) -> None:
    """The cap is inclusive: 1,048,576 bytes are a body like any other."""
    hn.answer(ITEM, padded(item_body(text="x" * 1000), MAX_BODY))
    item = await client.item(1)
    assert item is not None and item["text"] == "x" * 1000


async def test_a_gzip_bomb_is_malformed_in_bounded_memory(hn: FakeHN, client: HNClient) -> None:
    """50 MiB of zeros in a ~50 KB gzip body: malformed, asked once, and the process never holds the 50 MiB."""
    bomb = gzip_of_zeros(50 << 20)
    assert len(bomb) < MAX_BODY
    hn.answer(ITEM, bomb, {"Content-Encoding": "gzip"}, times=3)
    with peak_rss_growth() as growth, pytest.raises(MalformedItemError) as info:
        await client.item(1)
    assert growth[0] < 16 << 20, f"peak RSS grew {growth[0] >> 20} MiB"
    assert isinstance(info.value, HostileBodyError) and "once decompressed" in info.value.reason
    assert hn.requests[ITEM] == 1


@pytest.mark.parametrize(("size", "fits"), [(MAX_BODY, True), (MAX_BODY + 1, False)])
async def test_the_cap_applies_after_decompression(hn: FakeHN, client: HNClient, size: int, fits: bool) -> None:
    """A small gzip body that inflates to the cap is read; one byte more is malformed."""
    hn.answer(ITEM, gzip.compress(padded(item_body(), size)), {"Content-Encoding": "gzip"})
    if fits:
        assert await client.item(1) == {"id": 1, "type": "comment"}
    else:
        with pytest.raises(HostileBodyError):
            await client.item(1)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", bytes), ("GZip", gzip.compress)],
)
async def test_normal_compressed_answers_still_work(hn: FakeHN, client: HNClient, encoding: str, compress: Any) -> None:
    """gzip and deflate (zlib) bodies are decompressed; identity is read as is."""
    hn.answer(ITEM, compress(item_body(title="Zipped")), {"Content-Encoding": encoding})
    item = await client.item(1)
    assert item is not None and item["title"] == "Zipped"


async def test_the_client_asks_only_for_encodings_it_can_bound(hn: FakeHN, client: HNClient) -> None:
    """An unknown Content-Encoding is malformed for good (not read raw); the request offered gzip and deflate only."""
    hn.answer(ITEM, item_body(), {"Content-Encoding": "br"}, times=3)
    with pytest.raises(HostileBodyError, match="unsupported Content-Encoding 'br'"):
        await client.item(1)
    assert hn.requests[ITEM] == 1


async def test_a_gzip_body_cut_short_is_retried(hn: FakeHN, client: HNClient) -> None:
    """A compressed body that ends early may be a hiccup: it is retried, and the next answer is used."""
    hn.answer(ITEM, gzip.compress(item_body())[:-12], {"Content-Encoding": "gzip"})
    item = await client.item(1)
    assert item is not None and item["title"] == "Story"
    assert hn.requests[ITEM] == 2


async def test_a_body_that_is_not_gzip_is_malformed_after_its_attempts(hn: FakeHN, client: HNClient) -> None:
    """Garbage labelled gzip is retried like other garbled bodies, then malformed."""
    hn.answer(ITEM, b"not gzip", {"Content-Encoding": "gzip"}, times=3)
    with pytest.raises(MalformedItemError, match="undecodable"):
        await client.item(1)
    assert hn.requests[ITEM] == 3


# -- JSON depth ------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [MAX_DEPTH, 100_000])
async def test_json_nested_deeper_than_100_is_malformed_without_parsing(
    hn: FakeHN, client: HNClient, depth: int
) -> None:
    """An item 101 deep, or 100,000 deep (a RecursionError for the parser), is malformed and asked once."""
    hn.answer(ITEM, b'{"id": 1, "parts": ' + nested(depth) + b"}", times=3)
    with pytest.raises(HostileBodyError, match="nested deeper than 100"):
        await client.item(1)
    assert hn.requests[ITEM] == 1


async def test_json_nested_exactly_100_deep_is_read(hn: FakeHN, client: HNClient) -> None:
    """The object is level 1, so 99 levels of arrays inside it make 100: allowed."""
    hn.answer(ITEM, b'{"id": 1, "parts": ' + nested(MAX_DEPTH - 1) + b"}")
    assert await client.item(1) is not None


async def test_brackets_inside_strings_do_not_count_as_depth(hn: FakeHN, client: HNClient) -> None:
    """A comment full of brackets (and escaped quotes) is an ordinary item."""
    text = '[{"quoted \\" [' * 200
    hn.answer(ITEM, item_body(text=text))
    item = await client.item(1)
    assert item is not None and item["text"] == text


async def test_a_deep_story_list_is_malformed(hn: FakeHN, client: HNClient) -> None:
    """A story list nested 100,000 deep raises MalformedItemError, not RecursionError."""
    hn.answer("/v0/topstories.json", nested(100_000))
    with pytest.raises(MalformedItemError):
        await client.story_ids("topstories")


async def test_a_deep_item_counts_nothing_and_the_walk_goes_on(hn: FakeHN, http: httpx.AsyncClient) -> None:
    """One comment 100,000 deep in a tree of 40: the other 39 are counted, the walk is complete."""
    tree = trees.wide(100, 40)
    hn.add_story(1, tree)
    bad = tree.top[7]
    hn.answer(f"/v0/item/{bad}.json", b'{"id": 1, "kids": ' + nested(100_000) + b"}")
    client = HNClient(http, hn.url, retry=RetryPolicy(attempts=3, backoff=0))
    root = await client.item(1)
    assert root is not None
    result = await walk_kids(client, 1, root, max_items=1_000)
    assert (result.comments, result.unreadable, result.complete) == (39, 1, True)


def test_json_depth_is_linear_on_hostile_strings() -> None:
    """Unterminated strings full of escaped quotes do not make the depth scan quadratic."""
    body = b'"' + b'\\"' * 400_000 + b"\\"
    assert json_depth(body) == 0
    assert json_depth(b'{"a": [1, {"b": "]]]"}], "c": []}') == 3


# -- ranges and types --------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"id": 2**63},
        {"id": -1},
        {"descendants": 2**64},
        {"descendants": MAX_ID + 1},
        {"kids": [2, 2**63]},
        {"parent": -5},
        {"score": 10**30},
        {"time": 10**4000},
    ],
    ids=[
        "id-2^63",
        "id-negative",
        "descendants-2^64",
        "descendants-2^53+1",
        "kid-2^63",
        "parent-negative",
        "score-10^30",
        "time-4001-digits",
    ],
)
async def test_ids_and_counts_outside_0_to_2_53_are_malformed(
    hn: FakeHN, client: HNClient, fields: dict[str, Any]
) -> None:
    """Such a number would overflow SQLite's integers downstream: the item is malformed, asked once."""
    hn.answer(ITEM, item_body(**fields), times=3)
    with pytest.raises(HostileBodyError, match=r"0\.\.2\^53"):
        await client.item(1)
    assert hn.requests[ITEM] == 1


async def test_ids_and_counts_at_the_limits_are_read(hn: FakeHN, client: HNClient) -> None:
    """0 and 2^53 are in range."""
    hn.answer(ITEM, item_body(id=MAX_ID, descendants=0, kids=[0, MAX_ID], score=0, time=MAX_ID))
    item = await client.item(1)
    assert item is not None and item["id"] == MAX_ID


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "1"},
        {"id": True},
        {"id": 1.0},
        {"type": 7},
        {"by": ["x"]},
        {"title": {"text": "x"}},
        {"url": 1},
        {"text": False},
        {"kids": "2,3"},
        {"kids": [2, "3"]},
        {"kids": [2, None]},
        {"kids": [True]},
        {"parent": "1"},
        {"descendants": True},
        {"descendants": 1.5},
        {"score": "100"},
        {"time": "2020-01-01"},
        {"dead": 1},
        {"deleted": "true"},
    ],
    ids=lambda fields: "-".join(f"{k}={v!r}" for k, v in fields.items()),
)
async def test_fields_of_the_wrong_type_are_malformed(hn: FakeHN, client: HNClient, fields: dict[str, Any]) -> None:
    """Each field the service reads has one JSON type (a bool is not an int); any other is malformed, asked once."""
    hn.answer(ITEM, item_body(**fields), times=3)
    with pytest.raises(HostileBodyError, match=next(iter(fields))):
        await client.item(1)
    assert hn.requests[ITEM] == 1


async def test_null_fields_and_unknown_fields_are_fine(hn: FakeHN, client: HNClient) -> None:
    """``null`` stands for a missing field; fields the service does not read are not checked."""
    body = item_body(id=None, by=None, kids=None, dead=None, parts=["anything", 1.5], poll={"x": 1})
    hn.answer(ITEM, body)
    assert await client.item(1) == json.loads(body)


async def test_a_null_item_is_none(hn: FakeHN, client: HNClient) -> None:
    """``null`` (a missing or not yet visible item) is ``None``, not malformed."""
    hn.answer(ITEM, b"null")
    assert await client.item(1) is None


@pytest.mark.parametrize("body", [b"[1, 2]", b'"story"', b"42", b"true"])
async def test_an_item_body_that_is_not_an_object_is_malformed(hn: FakeHN, client: HNClient, body: bytes) -> None:
    """An array, a string, a number or a bool where an item belongs is malformed, asked once."""
    hn.answer(ITEM, body, times=3)
    with pytest.raises(HostileBodyError, match="expected an item object"):
        await client.item(1)
    assert hn.requests[ITEM] == 1


@pytest.mark.parametrize(
    "ids",
    [[1, "2", 3], [1, 2.0], [1, True], [1, None], [1, 2**63], [-1], {"1": 1}, None],
    ids=["string", "float", "bool", "null", "2^63", "negative", "object", "null-list"],
)
async def test_a_story_list_that_is_not_a_list_of_ids_is_malformed_as_a_whole(
    hn: FakeHN, client: HNClient, ids: Any
) -> None:
    """No entry is silently dropped: the whole list is malformed (the service skips it and reads the others)."""
    hn.answer("/v0/topstories.json", json.dumps(ids).encode(), times=3)
    with pytest.raises(HostileBodyError, match="expected a list of ids"):
        await client.story_ids("topstories")
    assert hn.requests["/v0/topstories.json"] == 1


async def test_a_valid_story_list_is_read_in_order(hn: FakeHN, client: HNClient) -> None:
    """The common case is untouched: ids in the API's order, 0 and 2^53 included."""
    hn.set_list("topstories", [5, 0, MAX_ID, 3])
    assert await client.story_ids("topstories") == [5, 0, MAX_ID, 3]
