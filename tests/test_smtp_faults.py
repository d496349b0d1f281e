"""SMTP faults end to end: logins, refusals, greetings, deferrals, hangs, certificates, shutdown deadlines.

Each test drives the real product (the ``alerts`` CLI as a process, or the
whole app in-process) against the fake HN API and a real SMTP server:
aiosmtpd where it can play the peer, :mod:`tests.rawsmtp` where it cannot
(a 554 greeting, a 530 to MAIL, a server that never answers).
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from alerts import ledger
from alerts.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from tests import trees
from tests.conftest import run_cli, start_cli, with_smtp
from tests.fakehn import FakeHN
from tests.rawsmtp import RawSmtpServer
from tests.smtpserver import SmtpServer, free_port

DESTROYED = "Task was destroyed but it is pending"
ME, YOU = "me@example.org", "you@example.org"
SUBJECT = "[HN] Busy — 120 comments"
KEY = (1, "tier", 100)


def one_busy_story(hn: FakeHN) -> None:
    hn.add_story(1, trees.wide(1_000, 120), title="Busy")
    hn.set_list("topstories", [1])


def smtp_at(env: dict[str, str], port: int, **extra: str) -> dict[str, str]:
    """``env`` plus plain SMTP to ``port`` on loopback (any server: aiosmtpd, the raw one, or none)."""
    return with_smtp(env, SmtpServer(port=port), **extra)


def alert_row(tmp_path: Path) -> tuple[str, int, str | None]:
    """Story 1's alert: (status, attempts, last error)."""
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        rows = db.execute("SELECT status, attempts, last_error FROM alerts WHERE story_id = 1").fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def clean(err: str) -> None:
    assert "Traceback" not in err, err
    assert DESTROYED not in err, err


def sigterm_when(ready: threading.Event, proc: subprocess.Popen[str], what: str) -> tuple[str, float]:
    """Once ``ready`` is set, SIGTERM ``proc``; its stderr and the seconds it took to exit after the signal."""
    try:
        assert ready.wait(20), what
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        return err, time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def deliver_later(env: dict[str, str], smtp: SmtpServer, tmp_path: Path) -> None:
    """A later ``run --once`` against a good server delivers the alert once, and a run after it sends nothing."""
    later = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path, timeout=30)
    assert later.returncode == EXIT_OK, later.stderr
    assert smtp.subjects() == [SUBJECT]
    assert alert_row(tmp_path)[0] == "sent"
    again = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path, timeout=30)
    assert again.returncode == EXIT_OK, again.stderr
    assert len(smtp.received) == 1


def password_checker(password: bytes, logins: list[tuple[bytes, bytes]]) -> Any:
    """An aiosmtpd authenticator that takes ``password`` only and records every login tried."""

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == password, handled=False)

    return authenticator


@pytest.fixture
def logins() -> list[tuple[bytes, bytes]]:
    return []


@pytest.fixture
def auth_smtp(logins: list[tuple[bytes, bytes]]) -> Iterator[SmtpServer]:
    """aiosmtpd offering AUTH in clear text (loopback only), password ``s3cret``."""
    server = SmtpServer(authenticator=password_checker(b"s3cret", logins), auth_require_tls=False).start()
    try:
        yield server
    finally:
        server.stop()


# -- logins, greetings and refusals before MAIL: never permanent -------------------------------


def test_wrong_password_keeps_the_alert_pending_and_the_right_one_delivers_once(
    hn: FakeHN, auth_smtp: SmtpServer, logins: list[tuple[bytes, bytes]], env: dict[str, str], tmp_path: Path
) -> None:
    """A 535 at AUTH keeps the alert pending (exit 1, says what to fix); the right password delivers it once."""
    one_busy_story(hn)
    bad = with_smtp(env, auth_smtp, ALERTS_SMTP_USERNAME="u", ALERTS_SMTP_PASSWORD="wr0ng-pass")
    first = run_cli(["run", "--once"], bad, tmp_path, timeout=30)
    assert first.returncode == EXIT_FAILURE, first.stderr
    assert "535" in first.stderr
    assert "check ALERTS_SMTP_USERNAME and ALERTS_SMTP_PASSWORD" in first.stderr
    assert "wr0ng-pass" not in first.stderr and "wr0ng-pass" not in first.stdout
    assert "refused for good, not retried" not in first.stderr
    clean(first.stderr)
    status, attempts, error = alert_row(tmp_path)
    assert (status, attempts) == ("pending", 3)
    assert error is not None and "535" in error
    assert auth_smtp.received == [] and logins and all(p == b"wr0ng-pass" for _, p in logins)

    good = with_smtp(env, auth_smtp, ALERTS_SMTP_USERNAME="u", ALERTS_SMTP_PASSWORD="s3cret")
    second = run_cli(["run", "--once"], good, tmp_path, timeout=30)
    assert second.returncode == EXIT_OK, second.stderr
    assert auth_smtp.subjects() == [SUBJECT]
    assert alert_row(tmp_path)[0] == "sent"
    third = run_cli(["run", "--once"], good, tmp_path, timeout=30)
    assert third.returncode == EXIT_OK, third.stderr
    assert len(auth_smtp.received) == 1


def test_530_to_mail_keeps_the_alert_pending(hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path) -> None:
    """A 530 (log in first) to MAIL is a settings problem, not this mail's: pending, then delivered later."""
    one_busy_story(hn)
    with RawSmtpServer(replies={"MAIL": "530 5.7.0 Authentication required"}) as raw:
        first = run_cli(["run", "--once"], smtp_at(env, raw.port), tmp_path, timeout=30)
        assert raw.verbs().count("MAIL") == 3 and "DATA" not in raw.verbs()
    assert first.returncode == EXIT_FAILURE, first.stderr
    assert "530 5.7.0 Authentication required" in first.stderr
    assert "ALERTS_SMTP_USERNAME" in first.stderr
    assert "refused for good, not retried" not in first.stderr
    clean(first.stderr)
    assert alert_row(tmp_path)[:2] == ("pending", 3)
    deliver_later(env, smtp, tmp_path)


def test_554_greeting_keeps_the_alert_pending_never_failed(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """A server that greets with 554 is about the server, not the mail: pending after every try, delivered later."""
    one_busy_story(hn)
    with RawSmtpServer(greeting="554 5.7.1 go away") as raw:
        first = run_cli(["run", "--once"], smtp_at(env, raw.port), tmp_path, timeout=30)
        assert raw.connections == 3 and raw.commands == []
    assert first.returncode == EXIT_FAILURE, first.stderr
    assert "554 5.7.1 go away" in first.stderr
    assert "refused for good, not retried" not in first.stderr
    clean(first.stderr)
    status, attempts, error = alert_row(tmp_path)
    assert (status, attempts) == ("pending", 3)
    assert error is not None and "554 5.7.1 go away" in error
    deliver_later(env, smtp, tmp_path)


def test_connection_refused_is_named_and_the_alert_stays_pending(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Nothing listening: the log says "connection refused", the alert stays pending and goes out later."""
    one_busy_story(hn)
    down = run_cli(["run", "--once"], smtp_at(env, free_port()), tmp_path, timeout=30)
    assert down.returncode == EXIT_FAILURE, down.stderr
    assert "connection refused" in down.stderr
    clean(down.stderr)
    status, _attempts, error = alert_row(tmp_path)
    assert status == "pending"
    assert error is not None and "connection refused" in error
    deliver_later(env, smtp, tmp_path)


# -- per-recipient answers -----------------------------------------------------------------------


def test_450_for_one_recipient_is_retried_for_that_recipient_only(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """One recipient answered 450: the other gets the mail once; the next run sends to the deferred one alone."""
    one_busy_story(hn)
    smtp.handler.rcpt_replies = {YOU: "450 4.2.1 mailbox busy"}
    cfg = with_smtp(env, smtp, ALERTS_EMAIL_TO=f"{ME},{YOU}")
    first = run_cli(["run", "--once"], cfg, tmp_path, timeout=30)
    assert first.returncode == EXIT_FAILURE, first.stderr
    assert "450 4.2.1 mailbox busy" in first.stderr
    clean(first.stderr)
    assert [r.rcpt_tos for r in smtp.received] == [[ME]]  # the tries within the run went to YOU alone
    assert alert_row(tmp_path)[0] == "pending"

    smtp.handler.rcpt_replies = {}
    second = run_cli(["run", "--once"], cfg, tmp_path, timeout=30)
    assert second.returncode == EXIT_OK, second.stderr
    assert [r.rcpt_tos for r in smtp.received] == [[ME], [YOU]]
    ids = {str(r.message["Message-ID"]) for r in smtp.received}
    assert ids == {"<hn-alerts.1.tier.100@example.org>"}
    assert alert_row(tmp_path)[0] == "sent"
    third = run_cli(["run", "--once"], cfg, tmp_path, timeout=30)
    assert third.returncode == EXIT_OK, third.stderr
    assert len(smtp.received) == 2


def test_test_email_says_per_recipient_which_was_accepted_and_which_refused(
    smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """`alerts test-email` with one recipient refused (550): exit 1, a line per recipient, the reply quoted."""
    smtp.handler.rcpt_replies = {YOU: "550 5.1.1 no such user"}
    result = run_cli(["test-email"], with_smtp(env, smtp, ALERTS_EMAIL_TO=f"{ME},{YOU}"), tmp_path, timeout=30)
    assert result.returncode == EXIT_FAILURE, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{ME}: accepted") for line in lines), result.stdout
    assert any(line.startswith(f"{YOU}: REFUSED") and "550 5.1.1 no such user" in line for line in lines), lines
    assert not any(line.startswith(f"{ME}:") and "REFUSED" in line for line in lines)
    assert [r.rcpt_tos for r in smtp.received] == [[ME]]
    clean(result.stderr)


# -- shutdown deadlines ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "hang_at", "code"),
    [
        (["run"], "DATA", EXIT_OK),
        (["run"], "greeting", EXIT_OK),
        (["run", "--once"], "DATA", EXIT_FAILURE),  # --once: the alert was not delivered
        (["run", "--once"], "greeting", EXIT_FAILURE),
    ],
    ids=["run-hang-at-DATA", "run-hang-at-greeting", "once-hang-at-DATA", "once-hang-at-greeting"],
)
def test_sigterm_while_the_server_hangs_exits_within_the_shutdown_deadline(
    hn: FakeHN,
    smtp: SmtpServer,
    env: dict[str, str],
    tmp_path: Path,
    args: list[str],
    hang_at: str,
    code: int,
) -> None:
    """A server that never answers cannot hold shutdown: out in shutdown timeout + 2 s, the mail kept pending."""
    one_busy_story(hn)
    shutdown = 1.0
    with RawSmtpServer(hang_at=hang_at) as raw:
        cfg = smtp_at(env, raw.port, ALERTS_SMTP_TIMEOUT="60", ALERTS_SHUTDOWN_TIMEOUT=str(shutdown))
        proc = start_cli(args, cfg, tmp_path)
        err, elapsed = sigterm_when(raw.hung, proc, "the send never reached the step the server hangs at")
        print(f"{args} hanging at {hang_at}: exited {elapsed:.2f} s after SIGTERM")
        assert proc.returncode == code, err
        assert elapsed < shutdown + 2.0, f"exited {elapsed:.2f} s after SIGTERM"
        assert "cancelled 1 send(s)" in err
        clean(err)
        assert raw.closed.wait(5), "the server never saw the client close the connection"
        assert "QUIT" not in raw.verbs()  # closed without waiting on the server for a goodbye
        assert raw.messages == []
    assert alert_row(tmp_path)[0] == "pending"
    deliver_later(env, smtp, tmp_path)


def test_a_server_that_never_answers_quit_cannot_hold_nor_double_an_accepted_mail(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """The mail is accepted at end-of-data; a QUIT never answered neither delays marking it sent nor repeats it."""
    one_busy_story(hn)
    with RawSmtpServer(hang_at="QUIT") as raw:
        cfg = smtp_at(env, raw.port, ALERTS_SMTP_TIMEOUT="60", ALERTS_SHUTDOWN_TIMEOUT="1")
        proc = start_cli(["run"], cfg, tmp_path)
        err, elapsed = sigterm_when(raw.hung, proc, "the send never reached QUIT")
        assert proc.returncode == EXIT_OK, err
        assert elapsed < 1 + 2.0, f"exited {elapsed:.2f} s after SIGTERM"
        clean(err)
        assert len(raw.messages) == 1
        assert raw.closed.wait(5)
    assert alert_row(tmp_path)[0] == "sent", err  # the server took it: it must not be sent again
    again = run_cli(["run", "--once"], with_smtp(env, smtp), tmp_path, timeout=30)
    assert again.returncode == EXIT_OK, again.stderr
    assert smtp.received == []


def test_once_does_not_wait_on_an_unanswered_quit(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """--once against a server that takes the mail and never answers QUIT: sent, exit 0, well before the timeout."""
    one_busy_story(hn)
    with RawSmtpServer(hang_at="QUIT") as raw:
        started = time.monotonic()
        result = run_cli(["run", "--once"], smtp_at(env, raw.port, ALERTS_SMTP_TIMEOUT="60"), tmp_path, timeout=50)
        elapsed = time.monotonic() - started
        assert len(raw.messages) == 1
    assert result.returncode == EXIT_OK, result.stderr
    assert elapsed < 20, f"--once took {elapsed:.1f} s"
    clean(result.stderr)
    assert alert_row(tmp_path)[0] == "sent"


async def test_a_cancelled_send_closes_its_connection_before_the_app_ends(
    hn: FakeHN, env: dict[str, str], app_factory: Any
) -> None:
    """In-process: stopping the service mid-send closes the SMTP connection itself, within the drain budget."""
    one_busy_story(hn)
    with RawSmtpServer(hang_at="DATA") as raw:
        app = await app_factory(smtp_at(env, raw.port, ALERTS_SMTP_TIMEOUT="60", ALERTS_SHUTDOWN_TIMEOUT="0.5"))
        stop = asyncio.Event()
        service = asyncio.create_task(app.service.run(stop))
        assert await asyncio.to_thread(raw.hung.wait, 20), "the send never reached DATA"
        signalled = time.monotonic()
        stop.set()
        await asyncio.wait_for(service, 10)
        assert time.monotonic() - signalled < 0.5 + 2.0
        assert len(app.registry) == 0
        # The app (and this process) is still up: only the cancelled send can have closed the connection.
        assert await asyncio.to_thread(raw.closed.wait, 5), "the cancelled send left its connection open"
        assert raw.connections == raw.closed_connections == 1
        entry = await app.store.run(ledger.get, KEY)
        assert entry is not None and entry.status == "pending"


def test_once_waits_for_its_own_sends_beyond_the_shutdown_timeout(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """--once without a signal waits for a send slower than ALERTS_SHUTDOWN_TIMEOUT: delivered, exit 0."""
    one_busy_story(hn)
    smtp.handler.data_delay = 1.5
    result = run_cli(["run", "--once"], with_smtp(env, smtp, ALERTS_SHUTDOWN_TIMEOUT="0.5"), tmp_path, timeout=30)
    assert result.returncode == EXIT_OK, result.stderr
    assert smtp.subjects() == [SUBJECT]
    assert "cancelled" not in result.stderr
    clean(result.stderr)
    assert alert_row(tmp_path)[0] == "sent"


def test_451_then_accepted_with_the_default_backoffs(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """With ALERTS_SEND_BACKOFF and ALERTS_FETCH_BACKOFF on their defaults, a 451 is retried within one --once."""
    one_busy_story(hn)
    defaults = {k: v for k, v in env.items() if k not in ("ALERTS_SEND_BACKOFF", "ALERTS_FETCH_BACKOFF")}
    smtp.handler.data_replies = ["451 4.7.1 greylisted"]
    result = run_cli(["run", "--once"], with_smtp(defaults, smtp), tmp_path, timeout=30)
    assert result.returncode == EXIT_OK, result.stderr
    assert smtp.subjects() == [SUBJECT]
    assert smtp.handler.data_replies == []  # the 451 was answered, so the mail went out on a retry
    status, attempts, error = alert_row(tmp_path)
    assert status == "sent" and attempts == 2
    assert error is not None and "451 4.7.1 greylisted" in error
    clean(result.stderr)


# -- TLS and login settings ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def starttls_smtp(ca: trustme.CA) -> Iterator[SmtpServer]:
    """aiosmtpd requiring STARTTLS, with a certificate for 127.0.0.1 from a private CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = SmtpServer(tls_context=context, require_starttls=True).start()
    try:
        yield server
    finally:
        server.stop()


def test_ca_file_makes_a_private_ca_trusted(
    ca: trustme.CA, starttls_smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """STARTTLS to a private CA's certificate: not trusted without ALERTS_SMTP_CA_FILE, delivered with it."""
    cfg = with_smtp(env, starttls_smtp, ALERTS_SMTP_SECURITY="starttls")
    untrusted = run_cli(["test-email"], cfg, tmp_path, timeout=30)
    assert untrusted.returncode == EXIT_FAILURE, untrusted.stderr
    assert "certificate not trusted" in untrusted.stderr.lower(), untrusted.stderr
    clean(untrusted.stderr)
    assert starttls_smtp.received == []

    pem = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    trusted = run_cli(["test-email"], {**cfg, "ALERTS_SMTP_CA_FILE": str(pem)}, tmp_path, timeout=30)
    assert trusted.returncode == EXIT_OK, trusted.stderr
    assert trusted.stdout.startswith(f"{ME}: accepted")
    assert len(starttls_smtp.received) == 1


@pytest.mark.parametrize("content", [None, "this is not a certificate\n"], ids=["missing", "not-pem"])
@pytest.mark.parametrize("command", [["test-email"], ["run", "--once"]])
def test_unusable_ca_file_is_a_settings_error(
    smtp: SmtpServer, env: dict[str, str], tmp_path: Path, content: str | None, command: list[str]
) -> None:
    """A missing or non-PEM ALERTS_SMTP_CA_FILE is exit 2 with one line naming it; nothing is sent."""
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    cfg = with_smtp(env, smtp, ALERTS_SMTP_CA_FILE=str(path))
    result = run_cli(command, cfg, tmp_path, timeout=30)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith("alerts: error: ALERTS_SMTP_CA_FILE")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert smtp.received == []


@pytest.mark.parametrize("command", [["test-email"], ["run", "--once"]])
def test_clear_text_login_to_a_remote_host_is_refused(env: dict[str, str], tmp_path: Path, command: list[str]) -> None:
    """Username and password over security=none to a non-loopback host: exit 2 naming ALERTS_SMTP_SECURITY."""
    cfg = {
        **env,
        "ALERTS_SMTP_HOST": "smtp.example.org",
        "ALERTS_SMTP_PORT": "25",
        "ALERTS_SMTP_SECURITY": "none",
        "ALERTS_SMTP_USERNAME": "u",
        "ALERTS_SMTP_PASSWORD": "s3cret-pw",
        "ALERTS_EMAIL_FROM": "alerts@example.org",
        "ALERTS_EMAIL_TO": ME,
    }
    result = run_cli(command, cfg, tmp_path, timeout=30)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith("alerts: error: ALERTS_SMTP_SECURITY")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_clear_text_login_to_loopback_is_allowed(
    auth_smtp: SmtpServer, logins: list[tuple[bytes, bytes]], env: dict[str, str], tmp_path: Path
) -> None:
    """The same login over security=none to 127.0.0.1 is allowed: it logs in and the mail is accepted."""
    cfg = with_smtp(env, auth_smtp, ALERTS_SMTP_USERNAME="u", ALERTS_SMTP_PASSWORD="s3cret")
    result = run_cli(["test-email"], cfg, tmp_path, timeout=30)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.startswith(f"{ME}: accepted")
    assert logins == [(b"u", b"s3cret")]
    assert len(auth_smtp.received) == 1
    assert "s3cret" not in result.stderr + result.stdout
