"""The service's small HTTP server (``ALERTS_HTTP_ADDR``): ``/healthz``, ``/metrics`` and the status page ``/``.

aiohttp's server, in the service's own event loop. Every answer is built
from the state DB (one read, on the DB's thread) and from what the running
service knows in memory (when it last read HN); nothing here writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import jinja2
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from alerts import snapshot
from alerts.errors import AlertsError
from alerts.ledger import Entry
from alerts.metrics import Metrics
from alerts.model import HN_ITEM_URL
from alerts.operator import alert_id, clock_text
from alerts.rules import next_tier
from alerts.store import Store

log = logging.getLogger(__name__)

#: /healthz answers 503 when HN was last read successfully more than this many poll intervals ago.
STALE_INTERVALS = 3
#: The growth chart's size in CSS pixels.
CHART_WIDTH, CHART_HEIGHT = 120, 28


@dataclass
class Liveness:
    """When the running service last read HN (monotonic seconds), as it knows it."""

    started: float
    last_cycle: Callable[[], float | None]  # the last cycle that ended well
    last_stream: Callable[[], float | None] | None = None  # the stream: the last item handled or keep-alive

    def last_read(self) -> float | None:
        """The latest sign of HN read well: the last good cycle or (stream source) item or keep-alive."""
        return latest(self.last_cycle(), self.last_stream() if self.last_stream is not None else None)


def latest(*times: float | None) -> float | None:
    """The latest of the instants that happened (``None``: never)."""
    return max((t for t in times if t is not None), default=None)


def health(liveness: Liveness, interval: float, stuck: Sequence[Entry], now: float) -> tuple[bool, str]:
    """``(True, "ok")``, or ``(False, why)`` in one line.

    Unhealthy when HN was last read more than :data:`STALE_INTERVALS`
    intervals ago (the last cycle that ended well; with the stream source, a
    handled item or a keep-alive counts too; before any, the start), or
    while an alert has failed for more than an hour.
    """
    last = liveness.last_read()
    since = now - (last if last is not None else liveness.started)
    limit = STALE_INTERVALS * interval
    if since > limit:
        what = "no cycle ended well" if liveness.last_stream is None else "HN not read (no cycle, item or keep-alive)"
        return False, f"{what} for {since:.0f} s (over {STALE_INTERVALS} x ALERTS_POLL_INTERVAL = {limit:g} s)"
    if stuck:
        ids = ", ".join(alert_id(e.key) for e in stuck[:5]) + (" ..." if len(stuck) > 5 else "")
        return False, f"{len(stuck)} alert(s) failing for over an hour: {ids} (see `alerts outbox`)"
    return True, "ok"


class StatusPage:
    """Renders ``/`` from a snapshot with the shipped ``status.html`` (or one in ``ALERTS_TEMPLATES_DIR``)."""

    def __init__(self, templates_dir: Path | None, shipped: Path) -> None:
        folders = [str(p) for p in (templates_dir, shipped) if p is not None]
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folders),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._template = self._env.get_template("status.html")

    def render(self, picture: snapshot.Snapshot, tiers: Sequence[int], *, healthy: tuple[bool, str], now: float) -> str:
        """The page as HTML."""
        stories = [
            {
                "id": s.id,
                "title": s.title,
                "url": HN_ITEM_URL.format(s.id),
                "count": s.count,
                "next_tier": next_tier(tiers, s.alerted),
                "chart": sparkline(s.growth),
                "gained": f"{(s.growth[-1][1] - s.growth[0][1]) if len(s.growth) > 1 else 0:+d}",
                "hours": (s.growth[-1][0] - s.growth[0][0]) / 3600 if len(s.growth) > 1 else 0.0,
            }
            for s in picture.stories
        ]
        return self._template.render(
            picture=picture,
            stories=stories,
            recent=[_entry(e) for e in picture.recent],
            outbox=[_entry(e) for e in picture.outbox],
            healthy=healthy,
            counts=picture.counts,
            last_cycle=clock_text(picture.last_cycle_at, "-"),
            stream_at=clock_text(picture.stream_at, "-"),
            now=clock_text(now, "-"),
        )


def sparkline(samples: Sequence[tuple[float, int]]) -> str:
    """SVG polyline points for a story's counts over time (empty with fewer than two samples)."""
    if len(samples) < 2:
        return ""
    t0, t1 = samples[0][0], samples[-1][0]
    low = min(c for _, c in samples)
    high = max(c for _, c in samples)
    span_t, span_c = (t1 - t0) or 1.0, (high - low) or 1
    points = (
        f"{(t - t0) / span_t * CHART_WIDTH:.1f},{CHART_HEIGHT - 2 - (c - low) / span_c * (CHART_HEIGHT - 4):.1f}"
        for t, c in samples
    )
    return " ".join(points)


def _entry(entry: Entry) -> dict[str, object]:
    return {
        "id": alert_id(entry.key),
        "title": entry.alert.story.title,
        "url": HN_ITEM_URL.format(entry.alert.story.id),
        "comments": entry.alert.comments,
        "what": "heating up" if entry.key[1] == "velocity" else f"tier {entry.key[2]}",
        "status": entry.shown_status,
        "attempts": entry.attempts,
        "error": entry.last_error or "",
        "at": clock_text(entry.done_at or entry.created_at, "-"),
    }


def make_web_app(
    store: Store,
    metrics: Metrics,
    page: StatusPage,
    liveness: Liveness,
    *,
    tiers: Sequence[int],
    interval: float,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The aiohttp application: ``/healthz``, ``/metrics`` and ``/``."""
    prometheus = make_aiohttp_handler(metrics.registry, disable_compression=True)

    async def outbox() -> snapshot.OutboxState:
        return await store.run(snapshot.outbox_state, clock())

    async def healthz(_request: web.Request) -> web.Response:
        ok, why = health(liveness, interval, (await outbox()).stuck, monotonic())
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def scrape(request: web.Request) -> web.StreamResponse:
        metrics.refresh((await outbox()).counts)
        return await prometheus(request)

    async def status(_request: web.Request) -> web.Response:
        now = clock()
        picture = await store.run(snapshot.read, now)
        healthy = health(liveness, interval, picture.stuck, monotonic())
        # Rendering hundreds of rows takes a while: off the event loop, which the service needs.
        html = await asyncio.to_thread(page.render, picture, tiers, healthy=healthy, now=now)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/", status)
    return app


@asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    """Serve ``app`` on ``host:port`` for the life of the block (no access log: it would be a line per scrape)."""
    # A request still running at shutdown gets half a second, not aiohttp's default minute: the service's
    # own shutdown deadline must hold whoever is reading the page.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        shown = f"[{host}]" if ":" in host else host
        try:
            await site.start()
        except OSError as exc:
            raise AlertsError(f"ALERTS_HTTP_ADDR {shown}:{port}: cannot listen: {exc.strerror or exc}") from exc
        log.info("serving /healthz, /metrics and the status page on http://%s:%d/", shown, port)
        yield
    finally:
        await runner.cleanup()
