"""Say what went wrong on the network in words an operator can act on.

Libraries wrap the error that matters: httpx_aiohttp reports nearly every
connection failure as ``ConnectTimeout``, aiosmtplib wraps ``OSError`` in
``SMTPConnectError``. :func:`describe` reads the chain of causes instead of
the outer type, and names a DNS failure, a refused or reset connection, a
TLS problem or a timeout, with the host it concerns.
"""

from __future__ import annotations

import re
import socket
import ssl

import aiohttp
import httpx

_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def describe(exc: BaseException, host: str, port: int) -> str:
    """What went wrong talking to ``host:port``, from the causes of ``exc``."""
    chain = causes(exc)
    where = f"{host}:{port}"
    for err in chain:
        if isinstance(err, socket.gaierror | aiohttp.ClientConnectorDNSError):
            return f"DNS lookup failed for {host}: {_os_detail(chain, socket.gaierror)}"
        if isinstance(err, ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(err, ssl.SSLError | aiohttp.ClientSSLError):
            return f"TLS error: {_tls_detail(chain)} ({where})"
    timeout = _timeout(chain)
    if timeout is not None:
        return f"timeout {timeout} {where}"
    for err in chain:
        if isinstance(err, ConnectionResetError):
            return f"connection reset by {where}"
        if isinstance(err, aiohttp.ServerDisconnectedError):
            return f"connection closed by {where} before the answer was complete"
        if isinstance(err, aiohttp.ClientPayloadError):
            return f"incomplete answer from {where}: {err}"
    root = chain[-1]
    return f"{type(root).__name__}: {root}"


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _timeout(chain: list[BaseException]) -> str | None:
    """``"connecting to"`` or ``"reading from"`` when the chain is a timeout, else ``None``."""
    if not any(isinstance(e, TimeoutError) for e in chain) and not isinstance(chain[-1], httpx.TimeoutException):
        return None  # httpx_aiohttp's ConnectTimeout on a refused connection, and the like
    for err in reversed(chain):  # the innermost knows the phase
        if isinstance(err, aiohttp.ConnectionTimeoutError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return "connecting to"
        if isinstance(err, aiohttp.SocketTimeoutError | httpx.ReadTimeout):
            return "reading from"
    return "talking to"


def _os_detail(chain: list[BaseException], kind: type[OSError]) -> str:
    for err in reversed(chain):
        if isinstance(err, kind) and err.strerror:
            return err.strerror
    return str(chain[-1])


def _tls_detail(chain: list[BaseException]) -> str:
    for err in reversed(chain):
        if isinstance(err, ssl.SSLCertVerificationError) and err.verify_message:
            return f"certificate not trusted: {err.verify_message}"
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            return str(err.certificate_error)
        if isinstance(err, ssl.SSLError):
            return _SSL_SOURCE.sub("", err.strerror or str(err))
    return str(chain[-1])
