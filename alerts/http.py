"""The one shared HTTP client: an ``httpx.AsyncClient`` over aiohttp's connection pool.

httpcore's pool re-checks every pooled connection on every request, which
cost 4.6 ms of CPU per request at 100 connections (bench/RESULTS.md);
aiohttp's pool does not. The client code is written against httpx's
client API only, so tests give it an ``httpx.MockTransport``.

Also here, for any transport: :func:`read_body`, which reads a body within a
size cap before and after decompression, and :func:`describe_error`, which
says what a transport error was (DNS, refused, TLS, timeout ...).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from alerts.neterrors import describe

#: The most bytes of one body, as sent and once decompressed.
MAX_BODY = 1_048_576
#: gzip or zlib, told apart by their header. httpx_aiohttp asks aiohttp for the bytes as sent
#: (``auto_decompress=False``), and httpx would inflate them whole: read_body does it, bounded.
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS
_INFLATED = frozenset({"gzip", "x-gzip", "deflate"})


class Transport(httpx.AsyncBaseTransport):
    """``httpx_aiohttp.AiohttpTransport`` whose errors are all httpx's, body reads included.

    The response comes back unread: its body streams, so the reader can stop
    at a size cap (:func:`read_body`). Every aiohttp error, including the few
    the library leaves unmapped, surfaces as an ``httpx.TransportError`` with
    the original as its cause.
    """

    def __init__(self, max_connections: int, *, tls: bool = True) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # Loading the certificate authorities takes about 15 ms of start-up: skip it where no https URL is
        # asked for. What it would get instead is a context that trusts no one, and it is never used:
        # handle_async_request refuses https first.
        verify: ssl.SSLContext | bool = True if tls else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._tls = tls
        self._inner = AiohttpTransport(limits=limits, verify=verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request; return its response with the body still to be read."""
        if not self._tls and request.url.scheme == "https":
            raise httpx.UnsupportedProtocol(f"{request.url}: https on a client made without TLS", request=request)
        try:
            request.content  # noqa: B018 - raises while the body is still a stream
        except httpx.RequestNotRead:
            # httpx builds a followed redirect with the original body as a stream; given a stream,
            # httpx-aiohttp sends even a GET chunked ("0" as a body), which the server reads as junk.
            await request.aread()
        try:
            response = await self._inner.handle_async_request(request)
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}", request=request) from exc
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _MappedStream(response.stream, request)
        return response

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._inner.aclose()
        # A closed transport lets go of its socket only in the loop's next turn; give it that turn,
        # so a loop that ends right after this does not leave sockets for the garbage collector.
        await asyncio.sleep(0)


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose aiohttp errors become ``httpx.TransportError``."""

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=self._request) from exc

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}", request=self._request) from exc


class _ResponseCookies(httpx.Cookies):
    """httpx's cookie jar, which looks at a response only when it sets a cookie.

    httpx hands every response to the jar, which first wraps the request
    and the response in urllib's types (the URL parsed again, an
    ``email.message.Message`` of every header): about a tenth of the CPU of
    a request, for an API that sets no cookie. A response without
    ``Set-Cookie`` or ``Set-Cookie2`` adds nothing to the jar either way
    (``http.cookiejar`` finds no cookie in it), so skipping it changes nothing.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        """Store the cookies ``response`` sets, if it sets any."""
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class Client(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose cookie jar skips the responses that set no cookie (:class:`_ResponseCookies`).

    Everything else is httpx's own: requests, redirects, auth, event hooks,
    and cookies for whoever sets them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cookies = self.cookies  # through the setter below: the jar httpx made, and its cookies, become ours

    @property
    def cookies(self) -> httpx.Cookies:
        """Cookie values to include when sending requests (as httpx's)."""
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: httpx.Cookies | CookieJar | dict[str, str] | list[tuple[str, str]]) -> None:
        self._cookies = _ResponseCookies(cookies)


def make_client(max_connections: int, *, tls: bool = True) -> httpx.AsyncClient:
    """The one ``httpx.AsyncClient`` the service shares for every HN request, the event stream included.

    A :class:`Client` over :class:`Transport`; redirects are not followed unless a request asks
    (the event stream does), and the environment's proxy settings are not
    read: they would route requests around this transport. ``tls=False``
    saves building a TLS context for a client that asks only ``http://``
    URLs (``alerts check`` follows no redirect); it refuses ``https://``.
    """
    return Client(transport=Transport(max_connections, tls=tls), trust_env=False)


class BodyError(ValueError):
    """A response body that cannot be used.

    ``final`` is true when asking again cannot help (too large, an unknown
    encoding); false when the body may just have been cut short or garbled
    on the way (a broken gzip stream).
    """

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


async def read_body(response: httpx.Response, limit: int = MAX_BODY) -> bytes:
    """The body of an unread ``response``, decompressed, holding at most ``limit`` bytes either way.

    Reading stops at the first chunk past the cap, and decompression never
    makes more than the cap, so a gzip bomb costs no more memory than an
    honest answer. Raises :class:`BodyError`.
    """
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("read_body needs an async response stream")
    inflater = _inflater(response.headers.get("content-encoding"))
    parts: list[bytes] = []
    sent = size = 0
    async for chunk in stream:
        sent += len(chunk)
        if sent > limit:
            raise BodyError(f"body over {limit} bytes", final=True)
        if inflater is not None:
            chunk = _inflate(inflater, chunk, limit - size)
        size += len(chunk)
        if size > limit:
            raise BodyError(f"body over {limit} bytes once decompressed", final=True)
        parts.append(chunk)
    if inflater is not None and (not inflater.eof or inflater.unused_data):
        raise BodyError("compressed body cut short or followed by junk", final=False)
    return b"".join(parts)


def _inflater(encoding: str | None) -> zlib._Decompress | None:
    """A decompressor for the Content-Encoding, ``None`` for none; an unknown one is a BodyError."""
    if encoding is None:
        return None
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in _INFLATED:
        return zlib.decompressobj(wbits=_GZIP_OR_ZLIB)
    raise BodyError(f"unsupported Content-Encoding {encoding!r}", final=True)


def _inflate(inflater: zlib._Decompress, chunk: bytes, room: int) -> bytes:
    """Decompress one chunk into at most ``room + 1`` bytes: one more than the room means over the cap."""
    try:
        # Input left unconsumed once the output is full is never inflated: memory stays bounded.
        return inflater.decompress(chunk, room + 1)
    except zlib.error as exc:
        raise BodyError(f"undecodable compressed body: {exc}", final=False) from exc


def describe_error(exc: BaseException, url: httpx.URL) -> str:
    """What went wrong with a request to ``url``, in words (see :func:`alerts.neterrors.describe`)."""
    return describe(exc, url.host, url.port or (443 if url.scheme == "https" else 80))
