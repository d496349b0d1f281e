"""Assemble the parts from the settings: the one place that wires I/O together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alerts.hn import HNClient, RetryPolicy

if TYPE_CHECKING:
    import httpx
    from aiohttp import web

    from alerts.config import Settings
    from alerts.delivery import Sender
    from alerts.mail import Renderer
    from alerts.metrics import Metrics
    from alerts.outbox import Outbox
    from alerts.rules import Rules
    from alerts.service import Service
    from alerts.sources import Source
    from alerts.store import Store
    from alerts.tasks import TaskRegistry
    from alerts.web import Liveness

# `alerts check` builds only the HN client: the service's modules (mail and its templates, SMTP,
# the state DB, the outbox) are imported by the functions that need them, so its start-up stays light.


def make_renderer(settings: Settings) -> Renderer:
    """The mail renderer, templates loaded and tried once."""
    from alerts.mail import Renderer

    renderer = Renderer(settings.templates_dir, sender=settings.sender, recipients=settings.recipients)
    renderer.check()
    return renderer


def make_sender(settings: Settings) -> Sender:
    """SMTP when ``ALERTS_SMTP_HOST`` is set, else .eml files in ``ALERTS_OUTBOX_DIR``."""
    from alerts.delivery import FileSender, SmtpSender, smtp_tls_context

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


def make_hn_client(settings: Settings, client: httpx.AsyncClient) -> HNClient:
    """The HN client with the settings' API URL, concurrency bound, timeout and retry policy."""
    return HNClient(
        client,
        settings.hn_api_url,
        max_concurrency=settings.max_concurrency,
        request_timeout=settings.fetch_timeout,
        retry=RetryPolicy(
            attempts=settings.fetch_attempts,
            backoff=settings.fetch_backoff,
            deadline=max(60.0, settings.fetch_attempts * (settings.fetch_timeout + 30.0)),
        ),
    )


def make_rules(settings: Settings) -> Rules:
    """The alerting rules, from the values the settings parsed."""
    from alerts.rules import Rules

    return Rules(
        tiers=settings.comment_threshold,
        min_score=settings.min_score,
        include=settings.title_include,
        exclude=settings.title_exclude,
        velocity=settings.velocity,
        quiet_hours=settings.quiet_hours,
        zone=settings.timezone,
    )


@dataclass
class App:
    """Everything ``alerts run`` needs, open and ready."""

    settings: Settings
    hn: HNClient
    store: Store
    sender: Sender
    registry: TaskRegistry
    outbox: Outbox
    source: Source
    service: Service
    metrics: Metrics
    liveness: Liveness

    def web_app(self) -> web.Application:
        """The HTTP server's application (``/healthz``, ``/metrics``, the status page)."""
        from alerts.config import shipped_templates
        from alerts.web import StatusPage, make_web_app

        page = StatusPage(self.settings.templates_dir, shipped_templates())
        return make_web_app(
            self.store,
            self.metrics,
            page,
            self.liveness,
            tiers=self.settings.comment_threshold,
            interval=self.settings.poll_interval,
        )


@asynccontextmanager
async def open_app(
    settings: Settings, *, sender: Sender | None = None, clock: Callable[[], float] = time.time
) -> AsyncIterator[App]:
    """Open the HTTP client and the state DB, build the service, close both on exit.

    ``sender`` and the wall ``clock`` can be swapped (tests).
    """
    from alerts.http import make_client
    from alerts.metrics import Live, Metrics
    from alerts.outbox import Outbox
    from alerts.service import Service
    from alerts.sources.poll import PollSource
    from alerts.sources.stream import StreamSource
    from alerts.store import Store
    from alerts.tasks import TaskRegistry
    from alerts.walk import Shapes
    from alerts.web import Liveness, latest

    renderer = make_renderer(settings)
    sender = sender or make_sender(settings)
    # The event stream holds a connection of its own for as long as it is open; requests keep all of theirs.
    connections = settings.max_concurrency + (1 if settings.source == "stream" else 0)
    async with make_client(connections) as http:
        hn = make_hn_client(settings, http)
        store = await Store.open(settings.state_db, clock=clock)
        try:
            registry = TaskRegistry()
            rules = make_rules(settings)
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
            shapes = Shapes()
            lists = PollSource(
                rules,
                hn,
                store,
                outbox,
                api_url=settings.hn_api_url,
                story_lists=settings.story_lists,
                top_n=settings.top_n,
                max_comments=settings.max_comments,
                baseline=settings.baseline,
                sample_gap=2 * settings.poll_interval + 60,
                shapes=shapes,
                clock=clock,
            )
            live = Live(
                fetches=lambda: hn.fetches,
                fetch_errors=lambda: hn.errors,
                sent=lambda: outbox.sent,
                failed=lambda: outbox.failed,
                send_failures=lambda: outbox.send_failures,
            )
            liveness = Liveness(started=time.monotonic(), last_cycle=lambda: service.last_ok)
            source: Source = lists
            if settings.source == "stream":
                stream = StreamSource(
                    rules,
                    hn,
                    store,
                    outbox,
                    lists,
                    every_story=settings.story_lists == ("all",),
                    max_comments=settings.max_comments,
                    in_flight=4 * settings.max_concurrency,
                    stream_poll=settings.stream_poll,
                    catchup=settings.stream_catchup,
                    interval=settings.poll_interval,
                    connect_timeout=settings.fetch_timeout,
                    shapes=shapes,  # a story walked when it joined a list is walked faster at its crossing
                    clock=clock,
                )
                live.stream_items = lambda: stream.handled
                liveness.last_stream = lambda: latest(stream.follower.last_sign, stream.last_handled)
                source = stream
            metrics = Metrics(live)
            service = Service(
                source,
                hn,
                store,
                outbox,
                registry,
                poll_interval=settings.poll_interval,
                shutdown_timeout=settings.shutdown_timeout,
                digest=settings.digest,
                metrics=metrics,
            )
            live.last_success = lambda: _wall(liveness.last_read())
            yield App(settings, hn, store, sender, registry, outbox, source, service, metrics, liveness)
        finally:
            await store.close()


def _wall(monotonic: float | None) -> float | None:
    """A monotonic instant as Unix time."""
    return None if monotonic is None else time.time() - (time.monotonic() - monotonic)
