"""Delivery through a real SMTP server (aiosmtpd): security modes, login, refusals, outages."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from alerts.config import shipped_templates
from alerts.delivery import FileSender, SendResult, SmtpSender
from alerts.errors import DeliveryError, PermanentDeliveryError
from alerts.mail import Renderer
from alerts.model import Alert, Story
from tests.smtpserver import SmtpServer, free_port

TO = ("me@example.org", "you@example.org")


def mail(title: str = "Busy thread") -> EmailMessage:
    renderer = Renderer(shipped_templates(), sender="alerts@example.org", recipients=TO)
    return renderer.render(Alert(Story(7, title, "pg", 10, None, 120), 100, 120))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts only the test CA."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def starttls_server(ca: trustme.CA) -> Iterator[SmtpServer]:
    server = SmtpServer(tls_context=server_tls(ca), require_starttls=True).start()
    yield server
    server.stop()


async def test_plain_smtp_delivers_to_exactly_the_configured_recipients(smtp: SmtpServer) -> None:
    """security=none: one mail, envelope recipients exactly the configured ones."""
    sender = SmtpSender("127.0.0.1", smtp.port, security="none", timeout=5)
    await sender.send(mail("Hi\r\nBcc: evil@example.org"), sender="alerts@example.org", recipients=TO)
    [got] = smtp.received
    assert got.rcpt_tos == list(TO)
    assert got.mail_from == "alerts@example.org"
    assert got.message["Bcc"] is None


async def test_starttls_verifies_the_certificate(starttls_server: SmtpServer, client_tls: ssl.SSLContext) -> None:
    """security=starttls upgrades and delivers when the certificate is trusted."""
    sender = SmtpSender("127.0.0.1", starttls_server.port, security="starttls", timeout=5, tls_context=client_tls)
    await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    assert len(starttls_server.received) == 1


async def test_untrusted_certificate_is_refused(starttls_server: SmtpServer) -> None:
    """With the system trust store, the test CA's certificate fails verification: nothing is sent."""
    sender = SmtpSender("127.0.0.1", starttls_server.port, security="starttls", timeout=5)
    with pytest.raises(DeliveryError) as info:
        await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    assert not isinstance(info.value, PermanentDeliveryError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) or "certificate" in str(info.value).lower()
    assert starttls_server.received == []


async def test_implicit_tls(ca: trustme.CA, client_tls: ssl.SSLContext) -> None:
    """security=tls talks TLS from the first byte."""
    server = SmtpServer(tls_context=server_tls(ca), implicit_tls=True).start()
    try:
        sender = SmtpSender("127.0.0.1", server.port, security="tls", timeout=5, tls_context=client_tls)
        await sender.send(mail(), sender="alerts@example.org", recipients=TO)
        assert len(server.received) == 1
    finally:
        server.stop()


async def test_login_with_username_and_password() -> None:
    """Both credentials set: the client logs in; a wrong password is temporary and names what to fix."""
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)

    server = SmtpServer(authenticator=authenticator, auth_require_tls=False).start()
    try:
        ok = SmtpSender("127.0.0.1", server.port, security="none", username="u", password="s3cret", timeout=5)
        await ok.send(mail(), sender="alerts@example.org", recipients=TO)
        bad = SmtpSender("127.0.0.1", server.port, security="none", username="u", password="nope", timeout=5)
        with pytest.raises(DeliveryError, match=r"535.*ALERTS_SMTP_PASSWORD") as info:
            await bad.send(mail(), sender="alerts@example.org", recipients=TO)
        assert not isinstance(info.value, PermanentDeliveryError)
        assert len(server.received) == 1
        assert logins[0] == (b"u", b"s3cret")
    finally:
        server.stop()


async def test_4xx_is_temporary_and_5xx_permanent(smtp: SmtpServer) -> None:
    """451 at DATA raises DeliveryError; 554 raises PermanentDeliveryError with the reply."""
    sender = SmtpSender("127.0.0.1", smtp.port, security="none", timeout=5)
    smtp.handler.data_replies = ["451 4.3.0 try again later", "554 5.7.1 spam detected"]
    with pytest.raises(DeliveryError) as temporary:
        await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    assert not isinstance(temporary.value, PermanentDeliveryError)
    with pytest.raises(PermanentDeliveryError, match=r"554 5\.7\.1 spam detected"):
        await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    assert len(smtp.received) == 1


async def test_one_refused_recipient_does_not_stop_the_others(smtp: SmtpServer) -> None:
    """A 550 for one recipient: the mail still goes to the other."""
    smtp.handler.rcpt_replies = {"you@example.org": "550 5.1.1 no such user"}
    sender = SmtpSender("127.0.0.1", smtp.port, security="none", timeout=5)
    result = await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    assert smtp.received[0].rcpt_tos == ["me@example.org"]
    assert result == SendResult(("me@example.org",), {"you@example.org": "550 5.1.1 no such user"}, {})


async def test_every_recipient_refused_is_answered_per_recipient(smtp: SmtpServer) -> None:
    """550 for one recipient and 450 for the other: one refused for good, one deferred, nothing sent."""
    smtp.handler.rcpt_replies = {TO[0]: "550 5.1.1 no such user", TO[1]: "450 4.2.1 mailbox busy"}
    sender = SmtpSender("127.0.0.1", smtp.port, security="none", timeout=5)
    result = await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    assert result == SendResult((), {TO[0]: "550 5.1.1 no such user"}, {TO[1]: "450 4.2.1 mailbox busy"})
    assert smtp.received == []


async def test_server_down_is_temporary() -> None:
    """Nothing listening: a temporary DeliveryError, not a crash."""
    sender = SmtpSender("127.0.0.1", free_port(), security="none", timeout=2)
    with pytest.raises(DeliveryError) as info:
        await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    assert not isinstance(info.value, PermanentDeliveryError)


async def test_file_sender_writes_one_eml_per_alert(tmp_path: Path) -> None:
    """Without SMTP the mail is an .eml file named by story and tier; a resend replaces it."""
    sender = FileSender(tmp_path / "outbox")
    await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    await sender.send(mail(), sender="alerts@example.org", recipients=TO)
    files = list((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == ["7-tier-100.eml"]
    assert b"Busy thread" in files[0].read_bytes()


async def test_file_sender_unwritable_folder_is_a_delivery_error(tmp_path: Path) -> None:
    """An outbox folder that cannot be created raises DeliveryError (the alert stays pending)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DeliveryError):
        await FileSender(blocker / "outbox").send(mail(), sender="a@example.org", recipients=TO)
