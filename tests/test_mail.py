"""Rendering: multipart mails whose headers hostile HN text cannot touch."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from alerts.config import TEMPLATE_NAMES, shipped_templates
from alerts.mail import Renderer, message_id, one_line
from alerts.model import Alert, Story

HOSTILE = "Pwned\r\nBcc: victim@evil.example\r\n\r\n<script>alert(1)</script> & more"


def render(title: str = "A title", by: str = "pg", url: str | None = "https://example.com/a?b=1&c=2") -> EmailMessage:
    renderer = Renderer(shipped_templates(), sender="alerts@example.org", recipients=("me@example.org",))
    story = Story(id=42, title=title, by=by, score=321, url=url, descendants=150)
    raw = renderer.render(Alert(story, tier=100, comments=150)).as_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_mail_is_multipart_alternative_with_every_fact() -> None:
    """Subject names title and count; both bodies name title, count, tier, score, author and links."""
    msg = render()
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Subject"] == "[HN] A title — 150 comments"
    text, html = parts(msg)
    for body in (text, html):
        for fact in ("A title", "150 comments", "100", "321", "pg", "https://news.ycombinator.com/item?id=42"):
            assert fact in body
    assert "https://example.com/a?b=1&c=2" in text
    assert "https://example.com/a?b=1&amp;c=2" in html


def test_hostile_title_adds_no_header_and_is_escaped() -> None:
    """CR/LF and a Bcc: in the title stay inside the Subject; <script> is escaped in HTML."""
    msg = render(title=HOSTILE, by="evil\r\nX-Injected: 1")
    assert msg["Bcc"] is None and msg["X-Injected"] is None
    assert msg.get_all("To") == ["me@example.org"]
    assert "Bcc: victim@evil.example" in msg["Subject"]
    assert "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    text, html = parts(msg)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "X-Injected: 1" in text


def test_long_and_non_ascii_titles_survive() -> None:
    """A 10 kB title is cut in the subject; emoji and right-to-left text arrive intact."""
    long = render(title="x" * 10_000)
    assert len(long["Subject"]) <= 250
    assert "x" * 5_000 in parts(long)[0]
    rtl = render(title="שלום 🚀 Ünïcödé", by="José")
    assert "שלום 🚀 Ünïcödé" in rtl["Subject"]
    assert "José" in parts(rtl)[0]


def test_message_id_is_fixed_by_story_and_tier() -> None:
    """The same (story, tier) gives the same Message-ID; another tier another one."""
    assert render()["Message-ID"] == "<hn-alerts.42.tier.100@example.org>"
    assert message_id((42, "tier", 100), "a@x.org") == message_id((42, "tier", 100), "b@x.org")
    assert message_id((42, "tier", 100), "a@x.org") != message_id((42, "tier", 250), "a@x.org")


def test_non_http_url_is_not_linked() -> None:
    """A javascript: URL from the API is dropped instead of becoming a link."""
    story = Story.from_item(1, {"id": 1, "title": "t", "url": "javascript:alert(1)"})
    assert story.url is None


def test_one_line_folds_every_line_break() -> None:
    """CR, LF, tabs, NEL and Unicode line separators become single spaces."""
    assert one_line("a\r\nb\tc\x85d\u2028e  f\x00g") == "a b c d e f g"


def test_custom_templates_are_used(tmp_path: Path) -> None:
    """ALERTS_TEMPLATES_DIR replaces the shipped templates."""
    for name in TEMPLATE_NAMES:
        (tmp_path / name).write_text((shipped_templates() / name).read_text())
    (tmp_path / "alert.subject.txt").write_text("Busy: {{ title }} ({{ count }})")
    renderer = Renderer(tmp_path, sender="a@example.org", recipients=("b@example.org",))
    story = Story(id=1, title="T", by="u", score=1, url=None, descendants=1)
    assert renderer.render(Alert(story, 100, 101))["Subject"] == "Busy: T (101)"
