"""The one shared HTTP transport: aiohttp's connection pool behind httpx's transport API.

httpcore's pool re-checks every pooled connection on every request, which
cost 4.6 ms of CPU per request at 100 connections (bench/RESULTS.md);
aiohttp's pool does not. The client code is written against httpx's
transport interface only, so tests swap in ``httpx.MockTransport``.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class Transport(httpx.AsyncBaseTransport):
    """``httpx_aiohttp.AiohttpTransport`` that reads each (small JSON) body whole.

    Reading here puts every aiohttp error, including the few the library
    leaves unmapped, behind httpx's exception types.
    """

    def __init__(self, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._inner = AiohttpTransport(limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request and return its response with the body read."""
        try:
            response = await self._inner.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return response

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._inner.aclose()


def make_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The transport the service shares for every HN request."""
    return Transport(max_connections)
