"""Rendering: multipart mails whose headers hostile HN text cannot touch."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

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


def alert(
    title: str = "A title", story_id: int = 42, comments: int = 150, *, kind: str = "tier", gain: int = 0
) -> Alert:
    story = Story(id=story_id, title=title, by="pg", score=321, url=None, descendants=comments)
    if kind == "velocity":
        return Alert(story, 0, comments, kind=kind, gain=gain, minutes=30)
    return Alert(story, 100, comments)


def parsed(msg: EmailMessage) -> EmailMessage:
    out = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(out, EmailMessage)
    return out


def test_every_mail_is_auto_submitted() -> None:
    """Alerts and digests carry ``Auto-Submitted: auto-generated`` so vacation responders stay quiet."""
    renderer = Renderer(shipped_templates(), sender="alerts@example.org", recipients=("me@example.org",))
    velocity = alert(kind="velocity", gain=40)
    for msg in (renderer.render(alert()), renderer.render(velocity), renderer.render_digest([alert(), velocity])):
        assert parsed(msg).get_all("Auto-Submitted") == ["auto-generated"]


@pytest.mark.parametrize(
    "title", ["x" * 1_000, "é" * 1_000, "🚀 " * 500, "日本語" * 400], ids=["ascii", "é", "emoji", "cjk"]
)
def test_long_title_is_shortened_never_the_count(title: str) -> None:
    """The subject keeps its count and fits in 250 characters; the title ends in "…", shortened just enough."""
    renderer = Renderer(shipped_templates(), sender="alerts@example.org", recipients=("me@example.org",))
    subject = parsed(renderer.render(alert(title, comments=1234)))["Subject"]
    assert subject.endswith("… — 1234 comments")
    # Python < 3.13 may drop a space where it folds between two encoded words: compare without them.
    assert subject.replace(" ", "").startswith(("[HN] " + title[:100]).replace(" ", ""))
    assert 245 <= len(subject) <= 250
    velocity = parsed(renderer.render(alert(title, kind="velocity", gain=40)))["Subject"]
    assert velocity.endswith("… — +40 comments in 30 min") and len(velocity) <= 250


def test_long_title_is_shortened_in_any_subject_template(tmp_path: Path) -> None:
    """A user's subject with the count first, the title twice or through ``story.title`` still fits."""
    for template in (
        "{{ count }}: {{ title }}",
        "{{ title }} | {{ title }} ({{ count }})",
        "{{ story.title }} #{{ count }}",
    ):
        (tmp_path / "alert.subject.txt").write_text(template)
        renderer = Renderer(tmp_path, sender="a@example.org", recipients=("b@example.org",))
        subject = parsed(renderer.render(alert("ab " * 400, comments=777)))["Subject"]
        assert "777" in subject and "…" in subject and 240 <= len(subject) <= 250, template
    (tmp_path / "digest.subject.txt").write_text(
        "{% for a in alerts %}{{ a.title }} ({{ a.alert.comments }}) {% endfor %}"
    )
    renderer = Renderer(tmp_path, sender="a@example.org", recipients=("b@example.org",))
    subject = parsed(renderer.render_digest([alert("a" * 300, 1, 111), alert("b" * 300, 2, 222)]))["Subject"]
    assert "(111)" in subject and subject.endswith("(222)") and len(subject) <= 250


def test_subject_too_long_without_a_title_is_cut(tmp_path: Path) -> None:
    """A subject template that is too long by itself is cut at 250 characters, the last resort."""
    (tmp_path / "alert.subject.txt").write_text("z" * 300 + " {{ count }}")
    renderer = Renderer(tmp_path, sender="a@example.org", recipients=("b@example.org",))
    subject = parsed(renderer.render(alert()))["Subject"]
    assert subject == "z" * 249 + "…"


def test_html_reads_on_phones() -> None:
    """Both HTML templates declare a viewport and use inline styles only."""
    renderer = Renderer(shipped_templates(), sender="alerts@example.org", recipients=("me@example.org",))
    viewport = '<meta name="viewport" content="width=device-width, initial-scale=1">'
    for msg in (renderer.render(alert()), renderer.render_digest([alert(), alert("B", 43)])):
        html = parts(parsed(msg))[1]
        assert viewport in html and "<style" not in html and "<link" not in html


def test_templates_dir_may_hold_only_what_it_overrides(tmp_path: Path) -> None:
    """A folder holding only alert.subject.txt overrides the subject; the rest comes from the shipped templates."""
    (tmp_path / "alert.subject.txt").write_text("Busy: {{ title }} ({{ count }})")
    renderer = Renderer(tmp_path, sender="a@example.org", recipients=("b@example.org",))
    msg = parsed(renderer.render(alert()))
    assert msg["Subject"] == "Busy: A title (150)"
    text, html = parts(msg)
    assert "150 comments on Hacker News: this story has passed 100 comments." in text
    assert "<strong>150 comments</strong>" in html
    assert parsed(renderer.render_digest([alert()]))["Subject"] == "[HN] 1 busy thread"


def test_no_templates_dir_means_the_shipped_templates() -> None:
    """``Renderer(None, ...)`` renders from the shipped templates alone."""
    renderer = Renderer(None, sender="alerts@example.org", recipients=("me@example.org",))
    assert parsed(renderer.render(alert()))["Subject"] == "[HN] A title — 150 comments"


def test_non_http_url_is_never_a_link_even_when_built_by_hand() -> None:
    """A story that skipped ``from_item`` (built by hand, or an old outbox row) still links only http/https."""
    renderer = Renderer(None, sender="alerts@example.org", recipients=("me@example.org",))
    story = Story(id=5, title="<b>t</b>", by="u", score=1, url="javascript:alert(1)", descendants=100)
    text, html = parts(parsed(renderer.render(Alert(story, 100, 101))))
    assert "javascript" not in html and "javascript" not in text
    assert "&lt;b&gt;t&lt;/b&gt;" in html and "<b>" not in html


def test_digest_message_id_is_fixed_by_its_members_or_its_stored_id() -> None:
    """The same alerts give the same Message-ID, in any order; a stored digest id gives its own."""
    renderer = Renderer(None, sender="alerts@example.org", recipients=("me@example.org",))
    one, two = alert("A", 1), alert("B", 2)
    assert renderer.render_digest([one, two])["Message-ID"] == renderer.render_digest([two, one])["Message-ID"]
    assert renderer.render_digest([one])["Message-ID"] != renderer.render_digest([one, two])["Message-ID"]
    stored = renderer.render_digest([one, two], digest_id="0123456789abcdef0123")
    assert stored["Message-ID"] == "<hn-alerts.digest.0123456789abcdef0123@example.org>"
