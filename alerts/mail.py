"""Render alert mails from the Jinja2 templates: subject, text and HTML.

Text from HN (titles, names, URLs) is untrusted. It can never add a header:
every header value has its control characters (CR, LF, tabs ...) folded
into single spaces before it reaches the email package, which would raise on
a bare CR/LF and kill the send. The HTML part is autoescaped by Jinja2.
"""

from __future__ import annotations

import hashlib
import re
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape

from alerts.errors import ConfigError, RenderError
from alerts.model import Alert, Story

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
MAX_SUBJECT = 250


def one_line(text: str) -> str:
    """Fold control characters (CR/LF included) and runs of spaces into single spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


def message_id(key: tuple[int, str, int], sender: str) -> str:
    """The fixed Message-ID of an alert: the same (story, kind, tier) gives the same id."""
    story_id, kind, tier = key
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return f"<hn-alerts.{story_id}.{kind}.{tier}@{domain}>"


class Renderer:
    """Loads the templates once and builds :class:`EmailMessage` objects."""

    def __init__(self, templates: Path, *, sender: str, recipients: tuple[str, ...]) -> None:
        self._env = Environment(
            loader=FileSystemLoader(str(templates)),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )
        self._env.filters["one_line"] = one_line
        try:
            self._subject = self._env.get_template("alert.subject.txt")
            self._text = self._env.get_template("alert.txt")
            self._html = self._env.get_template("alert.html")
            self._digest_subject = self._env.get_template("digest.subject.txt")
            self._digest_text = self._env.get_template("digest.txt")
            self._digest_html = self._env.get_template("digest.html")
        except TemplateError as exc:
            raise ConfigError("ALERTS_TEMPLATES_DIR", f"template error: {exc}") from exc
        self._sender = sender
        self._recipients = recipients

    def check(self) -> None:
        """Render a sample alert once, so a broken template is a settings error at start-up."""
        sample = Story(1, "Sample <title> & text", "someone", 42, "https://example.com/", 120)
        alerts = [Alert(sample, tier=100, comments=120), Alert(sample, 0, 120, kind="velocity", gain=40, minutes=30)]
        try:
            for alert in alerts:
                self.render(alert)
            self.render_digest(alerts, held=True)
        except RenderError as exc:
            raise ConfigError("ALERTS_TEMPLATES_DIR", f"template error: {exc}") from exc

    def render(self, alert: Alert, *, now: float | None = None) -> EmailMessage:
        """One multipart/alternative mail (text and HTML) for ``alert``.

        Raises :class:`RenderError` when a template fails on it.
        """
        try:
            return self._render(alert, now)
        except Exception as exc:  # a user's template may raise anything
            raise RenderError(f"{type(exc).__name__}: {exc}") from exc

    def _render(self, alert: Alert, now: float | None) -> EmailMessage:
        context: dict[str, Any] = {
            "alert": alert,
            "story": alert.story,
            "title": one_line(alert.story.title),
            "count": alert.comments,
            "tier": alert.tier,
            "discussion_url": alert.story.discussion_url,
        }
        return self._message(
            self._subject.render(context),
            self._text.render(context),
            self._html.render(context),
            message_id(alert.key, self._sender),
            now,
            str(alert.story.id),
        )

    def render_digest(self, alerts: list[Alert], *, held: bool = False, now: float | None = None) -> EmailMessage:
        """One mail listing ``alerts``; its Message-ID is fixed by the set of alerts in it."""
        try:
            return self._render_digest(alerts, held, now)
        except Exception as exc:  # a user's template may raise anything
            raise RenderError(f"{type(exc).__name__}: {exc}") from exc

    def _render_digest(self, alerts: list[Alert], held: bool, now: float | None) -> EmailMessage:
        entries = [
            {"alert": a, "story": a.story, "title": one_line(a.story.title), "discussion_url": a.story.discussion_url}
            for a in alerts
        ]
        context: dict[str, Any] = {"alerts": entries, "held": held}
        keys = ",".join(f"{s}.{k}.{t}" for s, k, t in sorted(a.key for a in alerts))
        digest_id = hashlib.sha256(keys.encode()).hexdigest()[:20]
        domain = parseaddr(self._sender)[1].rpartition("@")[2] or "localhost"
        return self._message(
            self._digest_subject.render(context),
            self._digest_text.render(context),
            self._digest_html.render(context),
            f"<hn-alerts.digest.{digest_id}@{domain}>",
            now,
            ",".join(str(a.story.id) for a in alerts),
        )

    def _message(self, subject: str, text: str, html: str, mid: str, now: float | None, stories: str) -> EmailMessage:
        subject = one_line(subject)
        if len(subject) > MAX_SUBJECT:
            subject = subject[: MAX_SUBJECT - 1] + "…"
        msg = EmailMessage(policy=SMTP)
        msg["Subject"] = subject
        msg["From"] = self._sender
        msg["To"] = ", ".join(self._recipients)
        msg["Date"] = formatdate(now, usegmt=True)
        msg["Message-ID"] = mid
        msg["X-HN-Alerts-Story"] = stories
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg
