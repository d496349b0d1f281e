"""Operations under the faults a hostile review found: each of these once lied, hung or wrote where it should not."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from alerts import ledger, snapshot
from alerts.app import open_app
from alerts.model import Alert, Story
from alerts.schema import MIGRATIONS, connect
from tests import trees
from tests.conftest import clean_environ, run_cli, settings_from, start_cli, wait_for
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.smtpserver import free_port
from tests.test_operations import front_page, poll_until, served
from tests.test_rules_beyond import BERLIN, QUIET_BERLIN, Clock, tier_alert
from tests.test_stream import until


async def test_a_digest_after_quiet_hours_failing_for_hours_is_stuck(env: dict[str, str], app_factory: Any) -> None:
    """Held overnight, the morning digest is refused 451 at every try for 3 hours: it counts as stuck."""
    clock = Clock(datetime(2026, 6, 10, 23, 30, tzinfo=BERLIN))
    sender = RecordingSender(failures=10_000)
    app = await app_factory({**env, **QUIET_BERLIN}, sender=sender, clock=clock)
    assert await app.outbox.queue(tier_alert(1)) == "held"
    clock.set(datetime(2026, 6, 11, 7, 0, tzinfo=BERLIN))
    for _ in range(13):
        await app.outbox.dispatch()
        await app.registry.join()
        clock.advance(15 * 60)
    picture = await app.store.run(snapshot.read, clock())
    assert [e.key for e in picture.stuck] == [tier_alert(1).key]
    assert len(sender.messages) >= 10


def test_a_first_failure_of_an_old_alert_is_not_stuck_yet(tmp_path: Path) -> None:
    """Queued two hours ago (its send cut short by a shutdown), its first try fails now: not failing for an hour."""
    conn, _ = connect(tmp_path / "s.db", exclusive=False)
    alert = Alert(Story(7, "T", "a", 1, None, 1), 100, 100)
    t0 = 1_000_000.0
    ledger.insert(conn, alert, "pending", False, t0)
    mail = ledger.alert_mail(alert.key)
    ledger.record_failure(conn, mail, "451 later", t0 + 7300, t0 + 7200)
    assert not snapshot.read(conn, t0 + 7205).stuck
    ledger.record_failure(conn, mail, "451 later", t0 + 11000, t0 + 10900)  # still failing, an hour on
    assert [e.key for e in snapshot.read(conn, t0 + 10900).stuck] == [alert.key]
    ledger.retry(conn, [alert.key])  # the operator's retry starts the clock again
    assert not snapshot.read(conn, t0 + 10901).stuck


async def test_healthz_is_503_while_no_story_can_be_read(hn: FakeHN, env: dict[str, str]) -> None:
    """The lists answer but every story item fails: the cycles do not end well, /healthz turns 503,
    and the status keeps the stories' last figures."""
    front_page(hn)
    port = free_port()
    cfg = {**env, "ALERTS_POLL_INTERVAL": "0.2", "ALERTS_FETCH_ATTEMPTS": "1"}
    async with served(cfg, port) as app:
        await until(lambda: app.service.last_ok is not None, "a good cycle")
        for i in (1, 2, 3):
            hn.fail(f"/v0/item/{i}.json", 100_000)
        down = await poll_until(f"http://127.0.0.1:{port}/healthz", 503)
        picture = await app.store.run(snapshot.read, time.time())
    assert down.text.startswith("no cycle ended well")
    assert picture.watched == 3 and {s.id for s in picture.stories} == {1, 2, 3}


async def test_the_stream_source_shows_every_story_of_its_lists(hn: FakeHN, env: dict[str, str]) -> None:
    """topstories top 150 with the stream source: the status holds all 150, not a first hundred."""
    for i in range(1, 151):
        hn.add_story(i, trees.wide(10_000 + i * 10, 2))
    hn.set_list("topstories", list(range(1, 151)))
    cfg = {**env, "ALERTS_SOURCE": "stream", "ALERTS_TOP_N": "150"}
    async with open_app(settings_from(cfg), sender=RecordingSender()) as app:
        assert await app.service.run_once()
        picture = await app.store.run(snapshot.read, time.time())
    assert picture.watched == 150 and len(picture.stories) == 150


def test_status_and_outbox_never_write_an_older_db(env: dict[str, str], tmp_path: Path) -> None:
    """A DB of the previous schema: `alerts status` and `alerts outbox` say to start the service once, and
    leave it as it was (no migration under a running older service)."""
    path = Path(env["ALERTS_STATE_DB"])
    with sqlite3.connect(path) as conn:
        for number, script in enumerate(MIGRATIONS[:-1], start=1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
    before = path.read_bytes()
    for command in (["status"], ["outbox"], ["status", "--json"]):
        result = run_cli(command, env, tmp_path)
        assert result.returncode == 1, result.stderr
        assert f"has schema {len(MIGRATIONS) - 1}, this version reads {len(MIGRATIONS)}" in result.stderr
        assert "start the service" in result.stderr and "Traceback" not in result.stderr
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_sigterm_while_a_client_stalls_reading_the_page_exits_at_once(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """A client asks for a 4 MB status page and stops reading: SIGTERM still ends the process within 2 s."""
    for i in range(1, 201):
        hn.add_story(i, trees.wide(100_000 + i * 10, 0), title=f"T{i} " + "x" * 20_000)
    hn.set_list("topstories", list(range(1, 201)))
    port = free_port()
    cfg = {**env, "ALERTS_TOP_N": "200", "ALERTS_HTTP_ADDR": f"127.0.0.1:{port}", "ALERTS_SHUTDOWN_TIMEOUT": "5"}
    proc = start_cli(["run"], cfg, tmp_path)
    reader = socket.socket()
    try:

        def page_complete() -> bool:
            result = subprocess.run(
                [sys.executable, "-c", f"import httpx; print(httpx.get('http://127.0.0.1:{port}/').text)"],
                capture_output=True,
                text=True,
                check=False,
                env=clean_environ({}),
            )
            return "Stories watched (200)" in result.stdout

        wait_for(page_complete, timeout=60, what="the status page with 200 stories")
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", port))
        reader.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader.recv(1000)  # a little, then nothing more
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        reader.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 2.0
    assert "Task was destroyed" not in err


def test_a_port_in_use_names_alerts_http_addr(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """The HTTP port is taken: one line naming ALERTS_HTTP_ADDR, exit 1, no traceback."""
    front_page(hn)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["run"], {**env, "ALERTS_HTTP_ADDR": f"127.0.0.1:{port}"}, tmp_path)
    assert result.returncode == 1
    assert f"ALERTS_HTTP_ADDR 127.0.0.1:{port}: cannot listen" in result.stderr
    assert "Traceback" not in result.stderr
