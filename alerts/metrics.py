"""The service's numbers for Prometheus (prometheus-client), all named ``hn_alerts_*``.

One private registry per service. What happens once per cycle is recorded
by the service as it happens (cycles, their seconds, walks, alerts
queued); what other parts already count (requests, errors by kind, items
the stream handled, alerts sent and refused) is read from them at scrape
time; the outbox's entries by status come from the state DB, read just
before each scrape (:meth:`Metrics.refresh`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Bounds of the cycle-seconds histogram: a cycle takes from a fraction of a second to minutes.
CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Live:
    """Where the numbers that other parts keep are read at scrape time (each a function, so nothing is copied)."""

    fetches: Callable[[], int] = lambda: 0
    fetch_errors: Callable[[], Mapping[str, int]] = dict
    stream_items: Callable[[], int] | None = None
    sent: Callable[[], int] = lambda: 0
    failed: Callable[[], int] = lambda: 0
    send_failures: Callable[[], int] = lambda: 0
    last_success: Callable[[], float | None] = lambda: None  # Unix time HN was last read well
    outbox: dict[str, int] = field(default_factory=dict)  # by status, from the state DB (refreshed per scrape)


class Metrics:
    """The registry and its metrics; :attr:`registry` is what ``/metrics`` serves."""

    def __init__(self, live: Live | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: noise to a scraper
        self.registry = CollectorRegistry(auto_describe=True)
        self.live = live or Live()
        self.cycles = Counter(
            "hn_alerts_cycles", "Cycles run, by outcome (ok or failed)", ["outcome"], registry=self.registry
        )
        self.cycle_seconds = Histogram(
            "hn_alerts_cycle_seconds", "How long each cycle took", buckets=CYCLE_BUCKETS, registry=self.registry
        )
        self.walks = Counter("hn_alerts_walks", "Comment trees walked", registry=self.registry)
        self.queued = Counter("hn_alerts_alerts_queued", "Alerts written to the outbox", registry=self.registry)
        self.registry.register(_LiveCollector(self))

    def cycle_done(self, seconds: float, walks: int, queued: int) -> None:
        """A cycle ended well."""
        self.cycles.labels("ok").inc()
        self.cycle_seconds.observe(seconds)
        self.walks.inc(walks)
        self.queued.inc(queued)

    def cycle_failed(self, seconds: float) -> None:
        """A cycle failed (HN unreachable, say)."""
        self.cycles.labels("failed").inc()
        self.cycle_seconds.observe(seconds)

    def refresh(self, outbox: Mapping[str, int]) -> None:
        """The outbox's entries by status, as the state DB has them now."""
        self.live.outbox = dict(outbox)


class _LiveCollector(Collector):
    """Reads the numbers other parts keep, at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        live = self._metrics.live
        yield _counter("hn_alerts_fetches", "HTTP requests to the HN API, retries included", live.fetches())
        errors = CounterMetricFamily(
            "hn_alerts_fetch_errors", "Failed HTTP requests to the HN API, by kind", labels=["kind"]
        )
        for kind in ("timeout", "transport", "http_429", "http_5xx", "http_4xx", "malformed"):
            errors.add_metric([kind], live.fetch_errors().get(kind, 0))
        yield errors
        if live.stream_items is not None:
            yield _counter("hn_alerts_stream_items", "New HN items the stream source handled", live.stream_items())
        yield _counter("hn_alerts_alerts_sent", "Alerts the mail server accepted (or written as .eml)", live.sent())
        yield _counter("hn_alerts_alerts_failed", "Alerts refused for good (a 5xx to the mail)", live.failed())
        yield _counter("hn_alerts_send_failures", "Sends that failed and were kept for a retry", live.send_failures())
        # A gauge, from the state DB: a drop that lost the race with its own send becomes sent again.
        yield GaugeMetricFamily(
            "hn_alerts_alerts_dropped",
            "Alerts recorded as dropped (given up on with `alerts outbox drop`) in the state DB",
            value=live.outbox.get("dropped", 0),
        )
        last = live.last_success()
        if last is not None:
            yield GaugeMetricFamily(
                "hn_alerts_last_success_timestamp_seconds",
                "When HN was last read well: a cycle ended, or the stream handled an item (Unix time)",
                value=last,
            )
        entries = GaugeMetricFamily(
            "hn_alerts_outbox_entries", "Alerts in the outbox now, by status", labels=["status"]
        )
        for status in ("pending", "held", "failed"):
            entries.add_metric([status], live.outbox.get(status, 0))
        yield entries


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
