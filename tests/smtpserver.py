"""A real SMTP server for tests: aiosmtpd on a free loopback port, with scripted refusals."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    """A loopback port that was free a moment ago (aiosmtpd's Controller cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    """One accepted mail."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        """The mail parsed with the modern email policy."""
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Handler:
    """Records accepted mail; answers DATA/RCPT with scripted codes when asked."""

    received: list[Received] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)  # next DATA answers, e.g. "451 try later"
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> permanent answer
    data_delay: float = 0.0
    rcpt_delay: float = 0.0
    # When set, DATA records the mail and then holds its 250 reply until this event is set:
    # the window where the server has the mail but the client does not know it yet.
    hold_reply: threading.Event | None = None
    rcpt_started: threading.Event = field(default_factory=threading.Event)
    data_started: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        self.rcpt_started.set()
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_started.set()
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            data = envelope.content if isinstance(envelope.content, bytes) else b""
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), data))
        if self.hold_reply is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.hold_reply.wait, 30)
        return "250 Message accepted"


class SmtpServer:
    """aiosmtpd in its own thread; ``stop()`` and ``start()`` simulate an outage on the same port."""

    def __init__(
        self,
        *,
        port: int | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        **controller: Any,
    ) -> None:
        self.handler = Handler()
        self.port = port or free_port()
        self._tls = tls_context
        self._require_starttls = require_starttls
        self._implicit = implicit_tls
        self._controller: Controller | None = None
        self._extra = controller

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self._tls is not None and not self._implicit:
            kwargs["tls_context"] = self._tls
            kwargs["require_starttls"] = self._require_starttls
        if self._implicit:
            kwargs["ssl_context"] = self._tls
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs, **self._extra)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def subjects(self) -> list[str]:
        return [str(r.message["Subject"]) for r in self.received]
