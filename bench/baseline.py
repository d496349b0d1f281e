"""The seed's pattern: a recursive asyncio.gather over ``kids`` on aiohttp, no retries, no bound of its own.

    python -m bench.baseline API_URL ID [ID ...]

As the classic blog post wrote it: every item's kids are fetched at once and
counted (dead and deleted ones included, as the post did); aiohttp's default
connector caps it at 100 connections. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


async def fetch(session: aiohttp.ClientSession, url: str) -> Any:
    async with asyncio.timeout(10), session.get(url) as response:
        return await response.json()


async def post_number_of_comments(session: aiohttp.ClientSession, base: str, post_id: int) -> int:
    response = await fetch(session, f"{base}/item/{post_id}.json")
    if not response or "kids" not in response:
        return 0
    number_of_comments = len(response["kids"])
    results = await asyncio.gather(*[post_number_of_comments(session, base, kid) for kid in response["kids"]])
    return number_of_comments + sum(results)


async def main(base: str, ids: list[int]) -> dict[str, Any]:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        counts = await asyncio.gather(*(post_number_of_comments(session, base, i) for i in ids))
    return {"comments": dict(zip(map(str, ids), counts, strict=True)), "seconds": time.perf_counter() - started}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1].rstrip("/"), [int(a) for a in sys.argv[2:]]))))
