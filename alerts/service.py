"""The service: drives one source on a fixed-rate schedule and owns the run, --once and shutdown flow.

Each cycle starts the outbox's due sends, runs the source's cycle, and in
digest mode gathers what it queued into a digest; between cycles the
source follows what it follows (the stream source: every new item).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from alerts import ledger, snapshot
from alerts.errors import FetchError
from alerts.hn import HNClient
from alerts.metrics import Metrics
from alerts.outbox import Outbox
from alerts.schedule import fixed_rate
from alerts.sources import CycleReport, Source
from alerts.store import Store
from alerts.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: After failed cycles in a row, cycles are skipped until at most this many seconds apart.
MAX_CYCLE_GAP = 600.0


class Service:
    """Runs cycles of one source; queued alerts are sent in the background by the outbox."""

    def __init__(
        self,
        source: Source,
        hn: HNClient,
        store: Store,
        outbox: Outbox,
        registry: TaskRegistry,
        *,
        poll_interval: float,
        shutdown_timeout: float,
        digest: bool,
        metrics: Metrics | None = None,
    ) -> None:
        self._source = source
        self._hn = hn
        self._store = store
        self._outbox = outbox
        self._registry = registry
        self._interval = poll_interval
        self._shutdown_timeout = shutdown_timeout
        self._digest = digest
        self._metrics = metrics or Metrics()
        self.last_ok: float | None = None  # when the last cycle that ended well ended (monotonic)
        self._cycles = 0
        self._failed_cycles = 0
        self._skip = 0

    async def dispatch_pending(self) -> int:
        """Start sends for what waits in the outbox."""
        return await self._outbox.dispatch()

    async def run_cycle(self) -> CycleReport:
        """One cycle: the outbox's due sends, the source's cycle, the digest; never awaits a send."""
        self._cycles += 1
        loop = asyncio.get_running_loop()
        started, fetches = loop.time(), self._hn.fetches
        try:
            await self.dispatch_pending()
            report = await self._source.cycle(self._cycles)
        except Exception:
            self._metrics.cycle_failed(loop.time() - started)
            raise
        if self._digest:
            # This cycle's alerts were only queued: the digest carries them. Without a digest each
            # was sent as it was queued, and a second pass would only retry sends that just failed.
            await self.dispatch_pending()
        report.fetches = self._hn.fetches - fetches
        report.seconds = loop.time() - started
        _log(report)
        # Lists read but not one story: HN is not answering as it should. The stories keep their last
        # figures in the status, and the cycle does not count as ended well (/healthz, /metrics).
        read_nothing = report.stories > 0 and not report.watched
        watched = None if read_nothing else report.watched
        await self._store.run(
            snapshot.record_cycle, self._source.name, report.number, report.seconds, watched, self._store.now()
        )
        if read_nothing:
            self._metrics.cycle_failed(report.seconds)
        else:
            self._metrics.cycle_done(report.seconds, report.walked, report.alerts)
            self.last_ok = time.monotonic()
        return report

    async def _safe_cycle(self) -> None:
        """One cycle whose failure is logged; after failures in a row, cycles are skipped (exponential backoff)."""
        if self._skip:
            self._skip -= 1
            log.debug("cycle skipped: backing off after %d failed cycle(s)", self._failed_cycles)
            return
        try:
            await self.run_cycle()
        except FetchError as exc:
            self._backoff()
            log.warning("cycle %d failed: %s; %s", self._cycles, exc, self._next_cycle())
            await self._note_failure(str(exc))
        except Exception as exc:
            self._backoff()
            log.exception("cycle %d failed; %s", self._cycles, self._next_cycle())
            await self._note_failure(repr(exc))
        else:
            self._failed_cycles = 0

    async def _note_failure(self, error: str) -> None:
        """Keep the failed cycle in the state DB, for `alerts status` (a DB that fails too is only logged)."""
        try:
            await self._store.run(snapshot.record_failure, self._source.name, self._cycles, error, self._store.now())
        except Exception as exc:  # noqa: BLE001 - the cycle's own failure is already logged
            log.debug("failed cycle not recorded: %r", exc)

    def _backoff(self) -> None:
        """Skip 0, 1, 3, 7 ... ticks after 1, 2, 3, 4 ... failed cycles in a row, up to 10 minutes apart."""
        self._failed_cycles += 1
        most = max(0, int(MAX_CYCLE_GAP // self._interval) - 1)
        self._skip = min(2 ** min(self._failed_cycles - 1, 30) - 1, most)

    def _next_cycle(self) -> str:
        if not self._skip:
            return "the service goes on"
        return f"backing off: skipping the next {self._skip} cycle(s) ({self._failed_cycles} failed in a row)"

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle at a fixed rate until ``stop`` is set, then cancel the cycle and drain sends."""
        try:
            await _until(self._cycles_and_follow(), stop)
        finally:
            await self.drain()

    async def _cycles_and_follow(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._source.follow())
            group.create_task(fixed_rate(self._safe_cycle, self._interval))

    async def run_once(self, stop: asyncio.Event | None = None) -> bool:
        """One cycle, then deliver everything due; true when every due alert went out.

        The cycle hands the outbox's pending entries to the registry before it
        reads HN, so they go out even when the cycle fails (its error is
        raised after the drain) or ``stop`` cuts it short.
        """
        stop = stop or asyncio.Event()
        started = self._store.now()
        reports: list[CycleReport] = []

        async def cycle() -> None:
            failure: Exception | None = None
            try:
                reports.append(await self.run_cycle())
            except Exception as exc:  # noqa: BLE001 - re-raised below, once the sends it started are delivered
                failure = exc
                await self._note_failure(str(exc) if isinstance(exc, FetchError) else repr(exc))
            await self._registry.join()  # --once waits for its sends, their tries and backoff included
            if failure is not None:
                raise failure

        try:
            await _until(cycle(), stop)
        finally:
            await self.drain()
        delivered = await self._all_delivered(started)
        errors = sum(len(r.errors) for r in reports)
        if errors:
            log.warning("%d story(ies) could not be checked; an alert may be due there", errors)
        return delivered and not errors

    async def drain(self) -> None:
        """Give sends in flight up to ALERTS_SHUTDOWN_TIMEOUT, then cancel them."""
        await self._registry.drain(self._shutdown_timeout)

    async def _all_delivered(self, since: float) -> bool:
        undelivered = await self._store.run(ledger.undelivered, since, self._outbox.quiet())
        if undelivered:
            log.warning("%d alert(s) not delivered; the ones not refused for good are kept in the outbox", undelivered)
        return undelivered == 0


async def _until(work: Coroutine[Any, Any, Any], stop: asyncio.Event) -> None:
    """Await ``work`` unless ``stop`` is set first; then cancel it and wait for it to end."""
    task = asyncio.create_task(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            t.cancel()
        await asyncio.wait({task, stopper})
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def _log(report: CycleReport) -> None:
    extra = ""
    if report.filtered:
        extra += f", {report.filtered} filtered out (~{report.fetches_saved} fetches saved)"
    if report.incomplete:
        extra += f", {len(report.incomplete)} incomplete"
    if report.position is not None:
        extra += f", stream at item {report.position} ({report.handled} new items handled)"
    fields = {
        "cycle": report.number,
        "stories": report.stories,
        "alerts": report.alerts,
        "fetches": report.fetches,
        "seconds": round(report.seconds, 3),
        "walks": report.walked,
        "incomplete": len(report.incomplete),
    }
    if report.position is not None:
        fields |= {"stream_position": report.position, "stream_items": report.handled}
    log.info(
        "cycle %d: %d stories, %d alerts, %d fetches, %.2f s%s",
        report.number,
        report.stories,
        report.alerts,
        report.fetches,
        report.seconds,
        extra,
        extra=fields,
    )
