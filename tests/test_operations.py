"""Operating it: `alerts status`, /healthz, /metrics, the status page and JSON logs, through real parts."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts import web
from alerts.app import App
from alerts.model import Alert, Story
from tests import trees
from tests.conftest import clean_environ, run_cli, start_cli, wait_for, with_smtp
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.smtpserver import SmtpServer, free_port
from tests.test_stream import service, until


@asynccontextmanager
async def served(cfg: dict[str, str], port: int, sender: RecordingSender | None = None) -> AsyncIterator[App]:
    """The whole service running with its HTTP server on ``port`` until the block ends; then stopped and closed."""
    async with service(cfg, sender or RecordingSender()) as app, web.serving(app.web_app(), "127.0.0.1", port):
        yield app


def front_page(hn: FakeHN) -> None:
    """Three stories: 120 comments (past 100), 60, and 95 (near 100); tiers 100,200."""
    hn.add_story(1, trees.wide(1_000, 120), title="Busy <b>thread</b>")
    hn.add_story(2, trees.wide(2_000, 60), title="Quiet one")
    hn.add_story(3, trees.wide(3_000, 95), title="Almost there")
    hn.set_list("topstories", [1, 2, 3])


def test_status_reads_the_state_db_as_text_and_json(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """After one cycle: the source, the cycle, the alert counts and each story with its count and next tier."""
    front_page(hn)
    cfg = {**env, "ALERTS_COMMENT_THRESHOLD": "100,200"}
    assert run_cli(["run", "--once"], cfg, tmp_path).returncode == 0
    text = run_cli(["status"], cfg, tmp_path)
    assert text.returncode == 0, text.stderr
    assert "source       poll" in text.stdout
    assert "last cycle   #1 at " in text.stdout
    assert "alerts       0 pending, 0 held, 0 failed, 1 sent" in text.stdout
    assert "stories      3 watched" in text.stdout
    rows = [line.split(None, 3) for line in text.stdout.splitlines() if line.startswith("  ") and "TITLE" not in line]
    assert rows == [
        ["120", "200", "1", "Busy <b>thread</b>"],
        ["95", "100", "3", "Almost there"],
        ["60", "100", "2", "Quiet one"],
    ]
    data = json.loads(run_cli(["status", "--json"], cfg, tmp_path).stdout)
    assert data["source"] == "poll" and data["last_cycle"]["number"] == 1 and data["stream"] is None
    assert data["alerts"] == {"pending": 0, "held": 0, "failed": 0, "sent": 1, "dropped": 0, "baseline": 0}
    assert data["stuck"] == []
    assert [(s["id"], s["comments"], s["alerted_tier"], s["next_tier"]) for s in data["stories"]] == [
        (1, 120, 100, 200),
        (3, 95, None, 100),
        (2, 60, None, 100),
    ]
    assert set(data) == {
        "source",
        "watching_since",
        "last_cycle",
        "failing",
        "stream",
        "alerts",
        "stuck",
        "watched",
        "stories",
    }
    assert data["watched"] == 3


def test_status_without_a_state_db_says_so_and_creates_none(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["status"], env, tmp_path)
    assert result.returncode == 1
    assert "no state DB at" in result.stderr and "Traceback" not in result.stderr
    assert not Path(env["ALERTS_STATE_DB"]).exists()


def test_status_works_while_the_service_runs_and_shows_the_stream(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """`alerts status` while `alerts run` holds the DB's lock: read without the lock; the stream's position shows."""
    front_page(hn)
    cfg = {**env, "ALERTS_SOURCE": "stream", "ALERTS_POLL_INTERVAL": "0.5"}
    proc = start_cli(["run"], cfg, tmp_path)
    try:
        wait_for(lambda: hn.open_streams == 1, what="the stream")
        item = hn.create_item(1)

        def shows_it() -> bool:
            result = run_cli(["status", "--json"], cfg, tmp_path)
            data = json.loads(result.stdout) if result.returncode == 0 else None
            return bool(data and data["stream"] and data["stream"]["position"] >= item and data["stories"])

        wait_for(shows_it, what="the stream position in the status")
        text = run_cli(["status"], cfg, tmp_path)
        assert "source       stream" in text.stdout and f"stream       at item {item}" in text.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def test_healthz_metrics_and_page_from_the_running_service(hn: FakeHN, env: dict[str, str]) -> None:
    """A real HTTP client against the service's own server: /healthz 200 ok, /metrics with the cycle,
    the requests and the alert, / with the stories (titles escaped), the alert sent and an empty outbox."""
    front_page(hn)
    port = free_port()
    cfg = {**env, "ALERTS_COMMENT_THRESHOLD": "100,200", "ALERTS_POLL_INTERVAL": "0.3"}
    sender = RecordingSender()
    async with served(cfg, port, sender) as app:
        await until(lambda: sender.messages and app.service.last_ok, "the alert and a good cycle")
        base = f"http://127.0.0.1:{port}"
        health = await get(f"{base}/healthz")
        metrics = (await get(f"{base}/metrics")).text
        page = await get(f"{base}/")
    assert (health.status_code, health.text) == (200, "ok\n")
    samples = parse_metrics(metrics)
    assert samples['hn_alerts_cycles_total{outcome="ok"}'] >= 1
    assert samples["hn_alerts_cycle_seconds_count"] >= 1
    assert samples["hn_alerts_fetches_total"] >= 1 + 3 + 120 + 95
    assert samples["hn_alerts_alerts_queued_total"] == 1 and samples["hn_alerts_alerts_sent_total"] == 1
    assert samples["hn_alerts_walks_total"] == 2
    assert samples['hn_alerts_outbox_entries{status="pending"}'] == 0
    assert samples['hn_alerts_fetch_errors_total{kind="timeout"}'] == 0
    assert time.time() - samples["hn_alerts_last_success_timestamp_seconds"] < 30
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Busy &lt;b&gt;thread&lt;/b&gt;" in page.text and "<b>thread" not in page.text
    assert 'id="outbox-empty"' in page.text and "tier 100, 120 comments" in page.text


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as {'name{labels}': value}; every line must parse."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


async def test_healthz_turns_503_when_hn_is_down_and_back_to_200(hn: FakeHN, env: dict[str, str]) -> None:
    """HN answering 503 to everything for more than 3 intervals: /healthz 503 with the reason; HN back: 200."""
    front_page(hn)
    port = free_port()
    cfg = {**env, "ALERTS_POLL_INTERVAL": "0.2", "ALERTS_FETCH_ATTEMPTS": "1"}
    async with served(cfg, port) as app:
        await until(lambda: app.service.last_ok is not None, "a good cycle")
        url = f"http://127.0.0.1:{port}/healthz"
        assert (await get(url)).status_code == 200
        hn.fail_all(10_000, 503)
        down = await poll_until(url, 503)
        hn.clear_faults()
        up = await poll_until(url, 200)
    assert down.text.startswith("no cycle ended well for ") and "ALERTS_POLL_INTERVAL" in down.text
    assert down.text.count("\n") == 1
    assert up.text == "ok\n"


async def poll_until(url: str, status: int, within: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        response = await get(url)
        if response.status_code == status:
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered {status} (last: {response.status_code} {response.text!r})")
        await asyncio.sleep(0.05)


def test_health_counts_an_alert_failing_for_over_an_hour() -> None:
    """An alert failed for good 61 minutes ago, or pending and tried for 61 minutes: 503; 59 minutes: 200."""
    from alerts import snapshot
    from alerts.ledger import Entry

    now = 1_000_000.0
    alert = Alert(Story(7, "T", "a", 1, None, 1), 100, 100)

    def entry(status: str, age: float, attempts: int = 1, held: bool = False, digest: str | None = None) -> Entry:
        failing = now - age if attempts and status == "pending" else None
        return Entry(
            (7, "tier", 100), alert, status, held, attempts, 0.0, "451", digest, now - 7200, now - age, failing
        )

    live = web.Liveness(started=0.0, last_cycle=lambda: 99.0)
    for case, unhealthy in [
        (entry("failed", 3660), True),
        (entry("pending", 3660), True),
        (entry("failed", 3540), False),
        (entry("pending", 3660, attempts=0), False),  # never tried yet: not failing
        (entry("pending", 3660, held=True), False),  # quiet hours: not a failure
        (entry("pending", 3660, held=True, digest="d1"), True),  # the digest after quiet hours keeps failing
        (entry("pending", 60), False),  # queued two hours ago, failing for a minute (a restart, a retry)
    ]:
        stuck = [case] if snapshot.stuck(case, now) else []
        ok, why = web.health(live, 60.0, stuck, 100.0)
        assert ok is not unhealthy, (case, why)
        if unhealthy:
            assert why == "1 alert(s) failing for over an hour: 7:100 (see `alerts outbox`)"


def test_json_logs_are_one_object_a_line_with_the_numbers_as_fields(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """ALERTS_LOG_FORMAT=json: every stderr line is a JSON object with time, level, logger and message;
    the cycle line and the alert lines carry their numbers and ids as fields."""
    front_page(hn)
    cfg = with_smtp(env, smtp, ALERTS_LOG_FORMAT="json", ALERTS_COMMENT_THRESHOLD="100,200")
    result = run_cli(["run", "--once"], cfg, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(line["time"].endswith("Z") for line in lines)
    cycle = next(line for line in lines if line["message"].startswith("cycle 1:"))
    assert {k: cycle[k] for k in ("cycle", "stories", "alerts", "walks")} == {
        "cycle": 1,
        "stories": 3,
        "alerts": 1,
        "walks": 2,
    }
    assert cycle["fetches"] >= 1 + 3 + 120 + 95 and cycle["seconds"] > 0
    events = {line.get("event"): line for line in lines if "event" in line}
    for event in ("alert_queued", "alert_sent"):
        assert {k: events[event][k] for k in ("story", "tier", "comments", "alert_id", "kind")} == {
            "story": 1,
            "tier": 100,
            "comments": 120,
            "alert_id": "1:100",
            "kind": "tier",
        }


def test_the_http_server_answers_from_alerts_run_and_stops_with_it(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """`alerts run` with ALERTS_HTTP_ADDR: /healthz answers; SIGTERM stops the service and the server, exit 0."""
    front_page(hn)
    port = free_port()
    proc = start_cli(["run"], {**env, "ALERTS_HTTP_ADDR": f"127.0.0.1:{port}"}, tmp_path)
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, what="/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"on http://127.0.0.1:{port}/" in err
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def db_rows(path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize(
    ("cycle", "stream", "now", "healthy"),
    [
        (None, None, 100.0 + 179.0, True),  # no cycle yet: the start counts, for 3 intervals
        (None, None, 100.0 + 181.0, False),
        (None, 300.0, 400.0, True),  # stream source: cycles failing (lists unreadable), keep-alives arriving
        (100.0, 100.0, 281.0, False),  # neither a good cycle nor an item or keep-alive for over 3 intervals
        (250.0, None, 281.0, True),
    ],
)
def test_health_takes_the_latest_sign_of_hn_read_well(
    cycle: float | None, stream: float | None, now: float, healthy: bool
) -> None:
    """3 x 60 s: the last good cycle, or with the stream source the last item or keep-alive, or the start."""
    live = web.Liveness(started=100.0, last_cycle=lambda: cycle, last_stream=(lambda: stream) if stream else None)
    ok, why = web.health(live, 60.0, [], now)
    assert ok is healthy, why
    assert "\n" not in why


def test_status_shows_a_failing_service_and_survives_a_closed_pipe(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """HN down after a good cycle: `alerts status` shows the failing cycle and why; `alerts status | head -1`
    ends quietly, exit 0."""
    front_page(hn)
    assert run_cli(["run", "--once"], env, tmp_path).returncode == 0
    hn.fail_all(10_000, 503)
    assert run_cli(["run", "--once"], {**env, "ALERTS_FETCH_ATTEMPTS": "1"}, tmp_path).returncode == 1
    text = run_cli(["status"], env, tmp_path).stdout
    assert "failing      cycle #1 failed at " in text and "no story list could be read" in text
    data = json.loads(run_cli(["status", "--json"], env, tmp_path).stdout)
    assert data["failing"]["number"] == 1 and "no story list could be read" in data["failing"]["error"]
    piped = subprocess.run(
        f"{sys.executable} -m alerts status | head -1",
        shell=True,
        env=clean_environ(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert piped.stdout.startswith("source ") and "BrokenPipe" not in piped.stderr and "failed" not in piped.stderr
