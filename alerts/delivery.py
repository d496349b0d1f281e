"""Delivery: hand a rendered mail to an SMTP server, or write it as an .eml file.

A sender either returns a :class:`SendResult` (the conversation reached the
recipients: which accepted, which refused for good, which only for now),
raises :class:`PermanentDeliveryError` (a 5xx answer to MAIL or DATA: this
message will never be taken) or raises :class:`DeliveryError` (anything
else: connecting, the greeting, STARTTLS, the login, a 4xx, a timeout).
A failure before MAIL is never permanent, whatever its code: it is about the
server or our settings, not this message, so the mail stays in the outbox
and the error says what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from alerts.errors import DeliveryError, PermanentDeliveryError
from alerts.neterrors import describe

log = logging.getLogger(__name__)

#: A 530 to MAIL means "log in first": a settings problem, not this message's.
_LOGIN_REQUIRED = 530


@dataclass(frozen=True)
class SendResult:
    """What the server said to each recipient of one mail.

    ``refused`` are 5xx answers (never retried), ``deferred`` 4xx answers
    (retried alone later); each maps the address to the server's reply.
    """

    accepted: tuple[str, ...] = ()
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)


class Sender(Protocol):
    """Something that delivers one mail to the given recipients."""

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> SendResult:
        """Deliver ``message`` or raise :class:`DeliveryError`; say what each recipient was told."""
        ...

    def describe(self) -> str:
        """Where mail goes, for the log (never the password)."""
        ...


class SmtpSender:
    """Delivers through an SMTP server with aiosmtplib, one connection per mail.

    Each step of the conversation is its own call, so a failure names the
    step. A cancelled send closes its connection at once instead of waiting
    on the server for QUIT, so shutdown keeps its deadline; a finished one
    sends QUIT without waiting for the reply, so the server's answer to the
    mail reaches the outbox as soon as it is given.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        self._tls_context = tls_context or ssl.create_default_context()
        self._local_hostname: str | None = None

    def describe(self) -> str:
        """``SMTP host:port (security)``, plus the login name if any."""
        who = f" as {self._username}" if self._username else ""
        return f"SMTP {self._host}:{self._port} ({self._security}){who}"

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> SendResult:
        """Send ``message`` to exactly ``recipients`` (never to addresses found in its headers)."""
        if self._local_hostname is None:
            # socket.getfqdn() can block on DNS; do it once, off the loop.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._security == "tls",
            start_tls=False,
            tls_context=self._tls_context,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
        )
        try:
            await self._open(client)
            result = await self._transfer(client, message, sender, recipients)
        except BaseException:
            client.close()  # cancelled or failed: never wait on the server for a QUIT
            raise
        _goodbye(client)
        await asyncio.sleep(0)  # the closed connection lets go of its socket in the loop's next turn
        return result

    async def _open(self, client: aiosmtplib.SMTP) -> None:
        """Connect, greet, start TLS and log in; every failure here is temporary."""
        where = f"{self._host}:{self._port}"
        step = "connect to"
        try:
            await client.connect()
            if self._security == "starttls":
                step = "start TLS with"
                await client.starttls()
            if self._username is not None and self._password is not None:
                step = "log in to"
                await client.login(self._username, self._password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"login to {where} refused: {exc.code} {exc.message}"
                " (check ALERTS_SMTP_USERNAME and ALERTS_SMTP_PASSWORD)"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"cannot {step} {where}: the server answered {exc.code} {exc.message}") from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise DeliveryError(f"cannot {step} {where}: {exc} {self._hint(str(exc))}".rstrip()) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            reason = describe(exc, self._host, self._port)
            raise DeliveryError(f"cannot {step} the SMTP server: {reason} {self._hint(reason)}".rstrip()) from exc

    def _hint(self, reason: str) -> str:
        if reason.startswith(("connection refused", "DNS lookup failed", "timeout connecting")):
            return "(check ALERTS_SMTP_HOST and ALERTS_SMTP_PORT, and that the server is up)"
        if "certificate not trusted" in reason:
            return "(signed by a private authority? set ALERTS_SMTP_CA_FILE to its PEM file)"
        if self._security == "starttls" and self._port == 465:
            return "(port 465 speaks implicit TLS: set ALERTS_SMTP_SECURITY=tls)"
        if self._security == "tls" and self._port in (25, 587):
            return f"(port {self._port} usually speaks STARTTLS: set ALERTS_SMTP_SECURITY=starttls)"
        return ""

    async def _transfer(
        self, client: aiosmtplib.SMTP, message: EmailMessage, sender: str, recipients: tuple[str, ...]
    ) -> SendResult:
        """MAIL, RCPT and DATA: a 5xx to MAIL or DATA is permanent, RCPT answers are per recipient."""
        try:
            errors, _reply = await client.send_message(message, sender=sender, recipients=list(recipients))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return _result(recipients, {r.recipient: (r.code, r.message) for r in exc.recipients})
        except aiosmtplib.SMTPSenderRefused as exc:
            text = f"MAIL FROM refused: {exc.code} {exc.message}"
            if exc.code == _LOGIN_REQUIRED:
                raise DeliveryError(
                    f"{text} (the server wants a login: set ALERTS_SMTP_USERNAME and _PASSWORD)"
                ) from exc
            raise (PermanentDeliveryError if 500 <= exc.code < 600 else DeliveryError)(text) from exc
        except aiosmtplib.SMTPDataError as exc:
            text = f"DATA refused: {exc.code} {exc.message}"
            raise (PermanentDeliveryError if 500 <= exc.code < 600 else DeliveryError)(text) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(describe(exc, self._host, self._port)) from exc
        return _result(recipients, {rcpt: (reply.code, reply.message) for rcpt, reply in errors.items()})


def _goodbye(client: aiosmtplib.SMTP) -> None:
    """Send QUIT and close at once, without waiting for the server's 221.

    The mail was taken (or refused) already. Waiting on the server here would
    hold the answer back from the outbox: a server slow to say goodbye would
    delay marking the mail sent by up to ALERTS_SMTP_TIMEOUT, and a shutdown
    in that wait would cancel a send the server had accepted, so the mail
    would go out again. Closing flushes the QUIT before the connection ends.
    """
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, RuntimeError):
        if client.protocol is not None:
            client.protocol.write(b"QUIT\r\n")
    client.close()


def _result(recipients: tuple[str, ...], answers: dict[str, tuple[int, str]]) -> SendResult:
    """Sort the recipients by the server's answer (those without one were accepted)."""
    refused = {r: f"{code} {text}" for r, (code, text) in answers.items() if 500 <= code < 600}
    deferred = {r: f"{code} {text}" for r, (code, text) in answers.items() if not 500 <= code < 600}
    return SendResult(tuple(r for r in recipients if r not in answers), refused, deferred)


class FileSender:
    """Writes each mail as ``<story>-<kind>-<tier>.eml`` in a folder (no SMTP set)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def describe(self) -> str:
        """The folder .eml files go to."""
        return f".eml files in {self._folder}"

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> SendResult:
        """Write the mail atomically; a later write of the same alert replaces it."""
        name = _file_name(message)
        try:
            await asyncio.to_thread(self._write, name, message.as_bytes())
        except OSError as exc:
            raise DeliveryError(f"cannot write {self._folder / name}: {exc.strerror}") from exc
        return SendResult(accepted=recipients)

    def _write(self, name: str, data: bytes) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        final = self._folder / name
        tmp = final.with_suffix(".eml.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)


def _file_name(message: EmailMessage) -> str:
    mid = str(message.get("Message-ID", "<mail@localhost>")).strip("<>").partition("@")[0]
    safe = "".join(c if c.isalnum() or c in ".-_" else "_" for c in mid)
    return safe.removeprefix("hn-alerts.").replace(".", "-") + ".eml"


def smtp_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's roots, plus the private authorities of ALERTS_SMTP_CA_FILE for the SMTP server only."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context
