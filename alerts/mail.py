"""Render alert mails from the Jinja2 templates: subject, text and HTML.

Text from HN (titles, names, URLs) is untrusted. It can never add a header:
every header value has its control characters (CR, LF, tabs ...) folded
into single spaces before it reaches the email package, which would raise on
a bare CR/LF and kill the send. The HTML part is autoescaped by Jinja2.
"""

from __future__ import annotations

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
        except TemplateError as exc:
            raise ConfigError("ALERTS_TEMPLATES_DIR", f"template error: {exc}") from exc
        self._sender = sender
        self._recipients = recipients

    def check(self) -> None:
        """Render a sample alert once, so a broken template is a settings error at start-up."""
        sample = Story(1, "Sample <title> & text", "someone", 42, "https://example.com/", 120)
        try:
            self.render(Alert(sample, tier=100, comments=120))
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
        subject = one_line(self._subject.render(context))
        if len(subject) > MAX_SUBJECT:
            subject = subject[: MAX_SUBJECT - 1] + "…"
        msg = EmailMessage(policy=SMTP)
        msg["Subject"] = subject
        msg["From"] = self._sender
        msg["To"] = ", ".join(self._recipients)
        msg["Date"] = formatdate(now, usegmt=True)
        msg["Message-ID"] = message_id(alert.key, self._sender)
        msg["X-HN-Alerts-Story"] = str(alert.story.id)
        msg.set_content(self._text.render(context))
        msg.add_alternative(self._html.render(context), subtype="html")
        return msg
