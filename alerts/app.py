"""Assemble the parts from the settings: the one place that wires I/O together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from alerts.config import Settings
from alerts.delivery import FileSender, Sender, SmtpSender, smtp_tls_context
from alerts.hn import HNClient
from alerts.http import make_transport
from alerts.mail import Renderer
from alerts.outbox import Outbox
from alerts.service import Service
from alerts.store import Store
from alerts.tasks import TaskRegistry


def make_renderer(settings: Settings) -> Renderer:
    """The mail renderer, templates loaded and tried once."""
    renderer = Renderer(settings.templates_dir, sender=settings.sender, recipients=settings.recipients)
    renderer.check()
    return renderer


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
            tls_context=smtp_tls_context(settings.smtp_ca_file),
        )
    return FileSender(settings.outbox_dir)


@dataclass
class App:
    """Everything ``alerts run`` needs, open and ready."""

    settings: Settings
    hn: HNClient
    store: Store
    sender: Sender
    registry: TaskRegistry
    outbox: Outbox
    service: Service


@asynccontextmanager
async def open_app(
    settings: Settings, *, sender: Sender | None = None, clock: Callable[[], float] = time.time
) -> AsyncIterator[App]:
    """Open the HTTP client and the state DB, build the service, close both on exit.

    ``sender`` and the wall ``clock`` can be swapped (tests).
    """
    renderer = make_renderer(settings)
    sender = sender or make_sender(settings)
    async with make_transport(settings.max_concurrency) as transport:
        hn = HNClient.from_settings(settings, transport)
        store = await Store.open(settings.state_db, clock=clock)
        try:
            registry = TaskRegistry()
            rules = settings.rules
            outbox = Outbox(
                store,
                renderer,
                sender,
                registry,
                quiet=rules.quiet,
                digest=settings.digest,
                mail_from=settings.sender,
                recipients=settings.recipients,
                attempts=settings.send_attempts,
                backoff=settings.send_backoff,
            )
            service = Service(settings, hn, store, outbox, registry, clock=clock)
            yield App(settings, hn, store, sender, registry, outbox, service)
        finally:
            await store.close()
