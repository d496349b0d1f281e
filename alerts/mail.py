"""Render alert mails from the Jinja2 templates: subject, text and HTML.

Text from HN (titles, names, URLs) is untrusted. It can never add a header or
a MIME part: every header value built from it goes through
:func:`header_text`, which folds control characters (CR, LF, tabs ...) into
single spaces (the email package would raise on a bare CR/LF and kill the
send) and breaks up RFC 2047 encoded words (see there). Lone surrogates, which
JSON lets through and no charset encodes, are replaced by U+FFFD where HN text
enters (:mod:`alerts.model`) and again here. The HTML part is autoescaped by
Jinja2.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import replace
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    select_autoescape,
)

from alerts.config import shipped_templates
from alerts.errors import ConfigError, RenderError
from alerts.model import Alert, Story, valid_text

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
MAX_SUBJECT = 250
ELLIPSIS = "…"


def one_line(text: str) -> str:
    """Fold control characters (CR/LF included) and runs of spaces into single spaces."""
    return " ".join(_CONTROL.sub(" ", text).split())


def header_text(text: str) -> str:
    """``text`` made safe for a header value: one line, encodable, and holding no RFC 2047 encoded word.

    The email package parses a value set on a message as if it came off the wire, so it decodes
    an encoded word such as ``=?utf-8?q?a=0D=0AReply-To:_x?=`` found in it; Python 3.11 and 3.12
    then write the decoded CR/LF out verbatim, a forged header or even a forged body. A zero-width
    space after every ``=`` that opens one leaves the text reading the same, and no parser decodes it.
    """
    return one_line(valid_text(text)).replace("=?", "=\u200b?")


def shorten(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit`` ending in "…"."""
    if len(text) <= limit:
        return text
    return text[:limit].rstrip() + ELLIPSIS


def message_id(key: tuple[int, str, int], sender: str) -> str:
    """The fixed Message-ID of an alert: the same (story, kind, tier) gives the same id."""
    story_id, kind, tier = key
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return f"<hn-alerts.{story_id}.{kind}.{tier}@{domain}>"


def _sanitized(alert: Alert) -> Alert:
    story = alert.story.sanitized()
    return alert if story is alert.story else replace(alert, story=story)


def _cut(alert: Alert, title_limit: int | None) -> tuple[Alert, str]:
    """``alert`` with its story's title on one line, and shortened to ``title_limit`` if given."""
    title = one_line(alert.story.title)
    if title_limit is None or len(title) <= title_limit:
        return alert, title
    title = shorten(title, title_limit)
    return replace(alert, story=replace(alert.story, title=title)), title


class Renderer:
    """Loads the templates once and builds :class:`EmailMessage` objects.

    ``templates`` is the folder of ``ALERTS_TEMPLATES_DIR``: it may hold only the templates
    it overrides, the others are taken from the shipped ones (:func:`alerts.config.shipped_templates`).
    ``None`` (or the shipped folder itself) means the shipped templates only.
    """

    def __init__(self, templates: Path | None = None, *, sender: str, recipients: tuple[str, ...]) -> None:
        folders = [shipped_templates()] if templates is None else [templates, shipped_templates()]
        self._env = Environment(
            loader=ChoiceLoader([FileSystemLoader(str(folder)) for folder in folders]),
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
        alert = _sanitized(alert)
        context = self._context(alert, None)
        return self._message(
            self._fit_subject(self._subject, lambda limit: self._context(alert, limit)),
            self._text.render(context),
            self._html.render(context),
            message_id(alert.key, self._sender),
            now,
            str(alert.story.id),
        )

    @staticmethod
    def _context(alert: Alert, title_limit: int | None) -> dict[str, Any]:
        alert, title = _cut(alert, title_limit)
        return {
            "alert": alert,
            "story": alert.story,
            "title": title,
            "count": alert.comments,
            "tier": alert.tier,
            "discussion_url": alert.story.discussion_url,
        }

    def render_digest(
        self, alerts: list[Alert], *, held: bool = False, now: float | None = None, digest_id: str | None = None
    ) -> EmailMessage:
        """One mail listing ``alerts``; its Message-ID is fixed by the set of alerts in it.

        ``digest_id`` (the id the outbox stored the digest under) gives the Message-ID instead.
        """
        try:
            return self._render_digest(alerts, held, now, digest_id)
        except Exception as exc:  # a user's template may raise anything
            raise RenderError(f"{type(exc).__name__}: {exc}") from exc

    def _render_digest(self, alerts: list[Alert], held: bool, now: float | None, digest_id: str | None) -> EmailMessage:
        alerts = [_sanitized(a) for a in alerts]
        context = self._digest_context(alerts, held, None)
        if digest_id is None:
            keys = ",".join(f"{s}.{k}.{t}" for s, k, t in sorted(a.key for a in alerts))
            digest_id = hashlib.sha256(keys.encode("utf-8", "replace")).hexdigest()[:20]
        domain = parseaddr(self._sender)[1].rpartition("@")[2] or "localhost"
        return self._message(
            self._fit_subject(self._digest_subject, lambda limit: self._digest_context(alerts, held, limit)),
            self._digest_text.render(context),
            self._digest_html.render(context),
            f"<hn-alerts.digest.{digest_id}@{domain}>",
            now,
            ",".join(str(a.story.id) for a in alerts),
        )

    @staticmethod
    def _digest_context(alerts: list[Alert], held: bool, title_limit: int | None) -> dict[str, Any]:
        entries = []
        for alert in alerts:
            alert, title = _cut(alert, title_limit)
            entries.append(
                {"alert": alert, "story": alert.story, "title": title, "discussion_url": alert.story.discussion_url}
            )
        return {"alerts": entries, "held": held}

    @staticmethod
    def _fit_subject(template: Template, context: Callable[[int | None], dict[str, Any]]) -> str:
        """The subject from ``template``, at most MAX_SUBJECT long, its titles shortened just enough.

        ``context(limit)`` gives the context with every title cut to ``limit`` characters (None:
        whole). Cutting the titles, not the subject, keeps the count in it, wherever a user's
        template puts it.
        """
        subject = header_text(template.render(context(None)))
        if len(subject) <= MAX_SUBJECT:
            return subject
        fitted = None
        low, high = 0, MAX_SUBJECT  # the longest title limit that fits lies in here
        while low <= high:
            limit = (low + high) // 2
            candidate = header_text(template.render(context(limit)))
            if len(candidate) <= MAX_SUBJECT:
                fitted, low = candidate, limit + 1
            else:
                high = limit - 1
        # None: the subject is too long without any title in it; cutting it is all that is left.
        return fitted if fitted is not None else shorten(subject, MAX_SUBJECT - 1)

    def _message(self, subject: str, text: str, html: str, mid: str, now: float | None, stories: str) -> EmailMessage:
        msg = EmailMessage(policy=SMTP)
        msg["Subject"] = subject
        msg["From"] = self._sender
        msg["To"] = ", ".join(self._recipients)
        msg["Date"] = formatdate(now, usegmt=True)
        msg["Message-ID"] = mid
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: vacation responders and the like stay quiet
        msg["X-HN-Alerts-Story"] = header_text(stories)
        # A user's template may put anything in; a lone surrogate must not fail the send.
        msg.set_content(valid_text(text))
        msg.add_alternative(valid_text(html), subtype="html")
        return msg
