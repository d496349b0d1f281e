"""Say what went wrong on the network in words an operator can act on.

Libraries wrap the error that matters (``socket.gaierror`` inside a connect
error inside a transport error); :func:`describe` walks the chain of causes
and names the first one it knows: a DNS failure, a refused connection, a
TLS problem or a timeout.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe(exc: BaseException) -> str:
    """A short reason for ``exc``: ``DNS lookup failed``, ``connection refused``, ``TLS ...``, ``timeout``."""
    for err in _chain(exc):
        if isinstance(err, socket.gaierror):
            return f"DNS lookup failed ({err.strerror or err})"
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({err.verify_message or err.reason})"
        if isinstance(err, ssl.SSLError):
            return f"TLS error ({err.reason or err})"
        if isinstance(err, TimeoutError):
            return "timeout"
    for err in _chain(exc):
        # aiohttp and aiosmtplib name some of these only in their messages or class names.
        name = type(err).__name__
        if "DNS" in name or "Name or service not known" in str(err):
            return f"DNS lookup failed ({err})"
        if "SSL" in name or "Certificate" in name:
            return f"TLS error ({err})"
        if "Timeout" in name:
            return "timeout"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
