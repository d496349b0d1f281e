"""Delivery: hand a rendered mail to an SMTP server, or write it as an .eml file.

A sender either returns (the mail was accepted, for at least one recipient;
it returns the refused ones with the server's reply), raises
:class:`PermanentDeliveryError` (a 5xx reply: never retried) or raises
:class:`DeliveryError` (anything else: the mail stays in the outbox).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from alerts.config import Settings
from alerts.errors import DeliveryError, PermanentDeliveryError

log = logging.getLogger(__name__)


class Sender(Protocol):
    """Something that delivers one mail to the given recipients."""

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> dict[str, str]:
        """Deliver ``message`` or raise :class:`DeliveryError`; return refused recipients and replies."""
        ...

    def describe(self) -> str:
        """Where mail goes, for the log (never the password)."""
        ...


class SmtpSender:
    """Delivers through an SMTP server with aiosmtplib, one connection per mail."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
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
        """``smtp://host:port (security)``, plus the login name if any."""
        who = f" as {self._username}" if self._username else ""
        return f"SMTP {self._host}:{self._port} ({self._security}){who}"

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> dict[str, str]:
        """Send ``message`` to exactly ``recipients`` (never to addresses found in its headers).

        Returns the recipients the server refused while accepting the others.
        """
        if self._local_hostname is None:
            # socket.getfqdn() can block on DNS; do it once, off the loop.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        try:
            errors, _reply = await aiosmtplib.send(
                message,
                sender=sender,
                recipients=list(recipients),
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                use_tls=self._security == "tls",
                start_tls=self._security == "starttls",
                tls_context=self._tls_context,
                timeout=self._timeout,
                local_hostname=self._local_hostname,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise _classify_refusals(exc.recipients) from exc
        except aiosmtplib.SMTPResponseException as exc:
            text = f"{exc.code} {exc.message}"
            if 500 <= exc.code < 600:
                raise PermanentDeliveryError(text) from exc
            raise DeliveryError(text) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        return {rcpt: f"{refusal.code} {refusal.message}" for rcpt, refusal in errors.items()}


def _classify_refusals(refusals: list[aiosmtplib.SMTPRecipientRefused]) -> DeliveryError:
    """Every recipient was refused: permanent only when every refusal was a 5xx."""
    text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in refusals)
    if refusals and all(500 <= r.code < 600 for r in refusals):
        return PermanentDeliveryError(text)
    return DeliveryError(text)


class FileSender:
    """Writes each mail as ``<story>-<kind>-<tier>.eml`` in a folder (no SMTP set)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def describe(self) -> str:
        """The folder .eml files go to."""
        return f".eml files in {self._folder}"

    async def send(self, message: EmailMessage, *, sender: str, recipients: tuple[str, ...]) -> dict[str, str]:
        """Write the mail atomically; a later write of the same alert replaces it."""
        name = _file_name(message)
        try:
            await asyncio.to_thread(self._write, name, message.as_bytes())
        except OSError as exc:
            raise DeliveryError(f"cannot write {self._folder / name}: {exc.strerror}") from exc
        return {}

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


def make_sender(settings: Settings) -> Sender:
    """SMTP when ``ALERTS_SMTP_HOST`` is set, else .eml files in ``ALERTS_OUTBOX_DIR``."""
    if settings.smtp_host:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return SmtpSender(
            settings.smtp_host,
            settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=password,
            timeout=settings.smtp_timeout,
        )
    return FileSender(settings.outbox_dir)
