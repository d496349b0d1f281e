"""A scriptable raw SMTP server for tests: the peers aiosmtpd cannot play.

It runs its own event loop in a thread on a free loopback port and speaks
just enough SMTP for a client to get through a conversation, but every
answer can be scripted: the greeting (``"554 5.7.1 go away"``), the reply
to each command, or no reply at all from a chosen step on (a server that
accepts the connection and then hangs). It records the command lines and
messages it received, counts connections and notices when the client closes
one (``closed`` is set on EOF or a lost connection).

Steps, the keys of ``replies`` and the values of ``hang_at``: ``greeting``,
the command verbs (``EHLO``, ``HELO``, ``MAIL``, ``RCPT``, ``DATA``, ``RSET``,
``NOOP``, ``QUIT``) and ``end-of-data`` (the line ``.`` that ends a message).
A reply is one string; lines separated by ``\\n`` make a multi-line reply.
A list of replies is answered in order, then the default takes over.

    with RawSmtpServer(greeting="554 5.7.1 go away") as server:
        ...  # point the client at server.port
        assert server.connections == 1
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from types import TracebackType

STEPS = ("greeting", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "end-of-data", "RSET", "NOOP", "QUIT")

DEFAULT_REPLIES: dict[str, str] = {
    "greeting": "220 raw.test ESMTP ready",
    "EHLO": "250-raw.test hello\n250-8BITMIME\n250-SMTPUTF8\n250 PIPELINING",
    "HELO": "250 raw.test",
    "MAIL": "250 2.1.0 OK",
    "RCPT": "250 2.1.5 OK",
    "DATA": "354 End data with <CR><LF>.<CR><LF>",
    "end-of-data": "250 2.0.0 queued",
    "RSET": "250 2.0.0 OK",
    "NOOP": "250 2.0.0 OK",
    "QUIT": "221 2.0.0 bye",
}


class RawSmtpServer:
    """A raw asyncio SMTP server in its own thread; use as a context manager or ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        greeting: str | None = None,
        replies: Mapping[str, str | list[str]] | None = None,
        hang_at: str | None = None,
    ) -> None:
        for step in [*(replies or {}), *([hang_at] if hang_at else [])]:
            if step not in STEPS:
                raise ValueError(f"unknown step {step!r}; choose from {', '.join(STEPS)}")
        self._replies: dict[str, list[str] | str] = {}
        for step, reply in (replies or {}).items():
            self._replies[step] = list(reply) if isinstance(reply, list) else reply
        if greeting is not None:
            self._replies["greeting"] = greeting
        self.hang_at = hang_at
        self.port = 0
        self.lock = threading.Lock()
        self.commands: list[str] = []  # every command line received, in order, across connections
        self.messages: list[bytes] = []  # every message body received (after DATA, before the final dot)
        self.connections = 0
        self.closed_connections = 0
        self.hung = threading.Event()  # set when a conversation reaches ``hang_at``
        self.closed = threading.Event()  # set when the client closes a connection (EOF or reset)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()

    # -- life cycle ---------------------------------------------------------

    def start(self) -> RawSmtpServer:
        """Listen on a free loopback port (``self.port``) in a new thread."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="raw-smtp", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(lambda: _Conversation(self), "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Stop listening, drop every open connection, end the thread; stopping again does nothing."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            assert self._thread is not None
            self._thread.join(timeout=10)
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let the aborted transports call connection_lost

    def __enter__(self) -> RawSmtpServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what the conversations use ------------------------------------------

    def reply_for(self, step: str) -> str:
        """The scripted reply for ``step`` (consuming one of a list), else the default."""
        with self.lock:
            scripted = self._replies.get(step)
            if isinstance(scripted, list):
                if scripted:
                    return scripted.pop(0)
            elif scripted is not None:
                return scripted
        return DEFAULT_REPLIES.get(step, "502 5.5.2 command not recognized")

    def verbs(self) -> list[str]:
        """The verbs received so far, e.g. ``["EHLO", "MAIL", "RCPT", "DATA"]``."""
        with self.lock:
            return [c.split(" ", 1)[0].upper() for c in self.commands]

    def _opened(self, transport: asyncio.Transport) -> None:
        self._transports.add(transport)
        with self.lock:
            self.connections += 1

    def _lost(self, transport: asyncio.Transport) -> None:
        self._transports.discard(transport)
        with self.lock:
            self.closed_connections += 1
        self.closed.set()


class _Conversation(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: RawSmtpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._in_data = False
        self._hung = False
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._opened(transport)
        self._answer("greeting")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while not self._hung:
            if self._in_data:
                if not self._take_message():
                    return
                continue
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                return
            self._buffer = rest
            self._command(line.decode("utf-8", "replace"))
        self._record_after_hang()

    def _take_message(self) -> bool:
        """Take a complete message (up to the final dot) off the buffer; false while it is incomplete."""
        if self._buffer.startswith(b".\r\n"):
            body, self._buffer = b"", self._buffer[3:]
        else:
            end = self._buffer.find(b"\r\n.\r\n")
            if end < 0:
                return False
            body, self._buffer = self._buffer[: end + 2], self._buffer[end + 5 :]
        self._in_data = False
        with self._server.lock:
            self._server.messages.append(body.replace(b"\r\n..", b"\r\n."))
        self._answer("end-of-data")
        return True

    def _command(self, line: str) -> None:
        with self._server.lock:
            self._server.commands.append(line)
        verb = line.split(" ", 1)[0].upper()
        reply = self._answer(verb if verb in DEFAULT_REPLIES else "unknown")
        if reply is None:
            return
        if verb == "DATA" and reply.startswith("354"):
            self._in_data = True
        elif verb == "QUIT" and self._transport is not None:
            self._transport.close()

    def _record_after_hang(self) -> None:
        """A hung server still reads (and records) what the client sends; it only never answers."""
        if not self._hung:
            return
        lines = self._buffer.split(b"\r\n")
        self._buffer = lines.pop()
        with self._server.lock:
            self._server.commands.extend(line.decode("utf-8", "replace") for line in lines if line)

    def _answer(self, step: str) -> str | None:
        """Send the reply for ``step``; nothing (for good) when this is the step to hang at."""
        if step == self._server.hang_at:
            self._hung = True
            self._server.hung.set()
            return None
        reply = self._server.reply_for(step)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(("\r\n".join(reply.split("\n")) + "\r\n").encode("utf-8"))
        return reply

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            self._server._lost(self._transport)  # type: ignore[arg-type]
