"""Assemble the parts from the settings: the one place that wires I/O together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from alerts.config import Settings
from alerts.delivery import Sender, make_sender
from alerts.dispatch import Dispatcher
from alerts.hn import HNClient
from alerts.http import make_transport
from alerts.mail import Renderer
from alerts.notify import Notifier
from alerts.service import Service
from alerts.store import Store
from alerts.tasks import TaskRegistry


def make_renderer(settings: Settings) -> Renderer:
    """The mail renderer, templates loaded and tried once."""
    renderer = Renderer(settings.templates, sender=settings.sender, recipients=settings.recipients)
    renderer.check()
    return renderer


@dataclass
class App:
    """Everything ``alerts run`` needs, open and ready."""

    settings: Settings
    hn: HNClient
    store: Store
    sender: Sender
    registry: TaskRegistry
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
            notifier = Notifier(
                store,
                renderer,
                sender,
                mail_from=settings.sender,
                recipients=settings.recipients,
                attempts=settings.send_attempts,
                backoff=settings.send_backoff,
            )
            rules = settings.rules
            dispatcher = Dispatcher(store, notifier, registry, rules, digest=settings.digest, clock=clock)
            service = Service(settings, hn, store, dispatcher, registry, clock=clock)
            yield App(settings, hn, store, sender, registry, service)
        finally:
            await store.close()
