"""Hostile HN text against the mail headers: encoded words, lone surrogates, custom subjects."""

from __future__ import annotations

import base64
import json
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from alerts.mail import Renderer, header_text, one_line
from alerts.model import Alert, Story, valid_text

SENDER = "alerts@example.org"
TO = ("me@example.org",)
# Exactly the headers the renderer sets, in order; a forged one shows up here.
HEADERS = [
    "Subject",
    "From",
    "To",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "X-HN-Alerts-Story",
    "MIME-Version",
    "Content-Type",
]
FORGED = "Hi\r\nReply-To: evil@x.example\r\nContent-Type: text/plain\r\n\r\nfake body"


def q_word(text: str, charset: str = "utf-8", q: str = "q") -> str:
    """``text`` as one RFC 2047 Q-encoded word."""
    encoded = "".join(
        c if c.isalnum() or c in "@.-:" else ("_" if c == " " else "".join(f"={b:02X}" for b in c.encode(charset)))
        for c in text
    )
    return f"=?{charset}?{q}?{encoded}?="


def b_word(text: str, charset: str = "utf-8", b: str = "b") -> str:
    """``text`` as one RFC 2047 base64-encoded word."""
    return f"=?{charset}?{b}?{base64.b64encode(text.encode(charset)).decode()}?="


ENCODED_TITLES = {
    "brief's example": (
        "=?utf-8?q?Hi=0D=0AReply-To:_evil@x.example=0D=0AContent-Type:_text/plain=0D=0A=0D=0Afake_body?="
    ),
    "q lower": q_word(FORGED),
    "Q upper": q_word(FORGED, "UTF-8", "Q"),
    "b lower": b_word(FORGED),
    "B upper": b_word(FORGED, "UTF-8", "B"),
    "latin-1": q_word(FORGED, "iso-8859-1"),
    "language tag": q_word(FORGED).replace("=?utf-8?", "=?utf-8*en?", 1),
    "LF only": q_word("Hi\nReply-To: evil@x.example\n\nfake body"),
    "split over words": " ".join(q_word(line + "\r\n") for line in FORGED.split("\r\n")),
    "split, no spaces": "".join(b_word(line + "\r\n") for line in FORGED.split("\r\n")),
    "inside text": f"Show HN: my {q_word(FORGED)} project",
    "glued to text": f"Show HN:{b_word(FORGED)}project",
    "with non-ASCII": f"Ünïcödé 🚀 {q_word(FORGED)} שלום",
    "long": "x" * 300 + " " + q_word(FORGED),
    "long, encoded first": q_word(FORGED) + " " + "y" * 300,
}


def parse(msg: EmailMessage) -> EmailMessage:
    """``msg`` as a mail client gets it: its bytes, parsed again."""
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def assert_only_our_headers(msg: EmailMessage) -> None:
    """Exactly the headers we set, no Reply-To, and one multipart/alternative of text and HTML."""
    assert msg.keys() == HEADERS
    assert msg.get_all("Reply-To") is None
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Auto-Submitted"] == "auto-generated"
    subject = msg["Subject"]
    assert "\r" not in subject and "\n" not in subject


def shown(header: str) -> str:
    """The header as a reader sees it (the zero-width spaces that defuse encoded words are invisible)."""
    return header.replace("\u200b", "")


def story(title: str, story_id: int = 42, by: str = "pg", url: str | None = "https://example.com/") -> Story:
    return Story(id=story_id, title=title, by=by, score=321, url=url, descendants=150)


@pytest.mark.parametrize("title", list(ENCODED_TITLES.values()), ids=list(ENCODED_TITLES))
def test_encoded_word_in_title_is_never_decoded_into_headers(title: str) -> None:
    """An RFC 2047 word whose text holds CR/LF stays literal text in the Subject: no header, no body."""
    renderer = Renderer(None, sender=SENDER, recipients=TO)
    msg = parse(renderer.render(Alert(story(title), tier=100, comments=150)))
    assert_only_our_headers(msg)
    assert msg["X-HN-Alerts-Story"] == "42"
    subject = shown(msg["Subject"])
    assert subject.endswith("— 150 comments") and len(msg["Subject"]) <= 250
    if len(title) < 200:
        assert subject == f"[HN] {title} — 150 comments"
    text = msg.get_body(("plain",))
    assert text is not None and "fake body" not in text.get_content()


@pytest.mark.parametrize("title", list(ENCODED_TITLES.values()), ids=list(ENCODED_TITLES))
def test_encoded_words_in_custom_subjects_are_never_decoded(tmp_path: Path, title: str) -> None:
    """Subjects that show title, author and URL, of an alert and of a digest, stay one header each."""
    (tmp_path / "alert.subject.txt").write_text("{{ story.title }} by {{ story.by }} at {{ story.url }} ({{ count }})")
    (tmp_path / "digest.subject.txt").write_text(
        "{% for a in alerts %}{{ a.story.title }} by {{ a.story.by }}; {% endfor %}"
    )
    renderer = Renderer(tmp_path, sender=SENDER, recipients=TO)
    hostile = story(title, by=b_word(FORGED), url="https://x.example/" + q_word(FORGED))
    alerts = [Alert(hostile, tier=100, comments=150), Alert(story("calm", story_id=7), tier=100, comments=101)]
    alert = parse(renderer.render(alerts[0]))
    assert_only_our_headers(alert)
    assert shown(alert["Subject"]).endswith(f"by {b_word(FORGED)} at https://x.example/{q_word(FORGED)} (150)")
    digest = parse(renderer.render_digest(alerts))
    assert_only_our_headers(digest)
    assert digest["X-HN-Alerts-Story"] == "42,7"
    assert "calm by pg" in digest["Subject"]


def test_header_text_breaks_every_encoded_word_opener() -> None:
    """No ``=?`` survives, whatever the case or the text around it; the text reads the same."""
    for title in ENCODED_TITLES.values():
        safe = header_text(title)
        assert "=?" not in safe and "\r" not in safe and "\n" not in safe
        assert shown(safe) == one_line(title)
    assert header_text("a ==?=? b") == "a ==\u200b?=\u200b? b"


SURROGATE_STORIES = {
    "title": {"title": "Lone \ud800 surrogate \udfff here"},
    "author": {"by": "evil\udc80"},
    "URL": {"url": "https://example.com/\ud800"},
}


@pytest.mark.parametrize("fields", list(SURROGATE_STORIES.values()), ids=list(SURROGATE_STORIES))
def test_lone_surrogates_are_replaced_at_render_time(fields: dict[str, str]) -> None:
    """A story built by hand with a lone surrogate renders, alone and in a digest of three."""
    renderer = Renderer(None, sender=SENDER, recipients=TO)
    base = {"id": 1, "title": "Fine title", "by": "pg", "score": 5, "url": "https://example.com/", "descendants": 120}
    bad = Story(**{**base, **fields})  # type: ignore[arg-type]
    msg = parse(renderer.render(Alert(bad, tier=100, comments=120)))
    assert_only_our_headers(msg)
    text = msg.get_body(("plain",))
    assert text is not None and "\ufffd" in text.get_content()
    others = [Story(**{**base, "id": i, "title": f"Story {i}"}) for i in (2, 3)]  # type: ignore[arg-type]
    digest = renderer.render_digest([Alert(s, tier=100, comments=120) for s in (others[0], bad, others[1])])
    parsed = parse(digest)
    assert_only_our_headers(parsed)
    text = parsed.get_body(("plain",))
    assert text is not None and "Story 2" in text.get_content() and "Story 3" in text.get_content()


def test_lone_surrogate_in_subject_is_replaced() -> None:
    """The title with a lone surrogate still names itself and the count in the subject."""
    renderer = Renderer(None, sender=SENDER, recipients=TO)
    msg = parse(renderer.render(Alert(story("Lone \ud800 surrogate"), tier=100, comments=150)))
    assert msg["Subject"] == "[HN] Lone \ufffd surrogate — 150 comments"


def test_lone_surrogates_are_replaced_where_hn_text_enters() -> None:
    """``Story.from_item`` and ``Alert.from_json`` (the outbox) never hold a lone surrogate."""
    item = json.loads(r'{"id": 9, "title": "T\ud800", "by": "u\udfff", "url": "https://e.example/\ud800", "score": 3}')
    from_hn = Story.from_item(9, item)
    assert (from_hn.title, from_hn.by, from_hn.url) == ("T\ufffd", "u\ufffd", "https://e.example/\ufffd")
    stored = json.loads(json.dumps(Alert(story("T\ud800", by="u\udfff"), tier=100, comments=150).to_json()))
    assert stored["story"]["title"] == "T\ud800"  # json.dumps escapes it, json.loads brings it back
    from_outbox = Alert.from_json(stored)
    assert (from_outbox.story.title, from_outbox.story.by) == ("T\ufffd", "u\ufffd")
    assert from_outbox == Alert(story("T\ufffd", by="u\ufffd"), tier=100, comments=150)


def test_from_json_keeps_the_url_rule() -> None:
    """An outbox row whose URL is not http/https loses it, as ``from_item`` would have."""
    data = Alert(story("t", url="https://example.com/"), tier=100, comments=150).to_json()
    data["story"]["url"] = "javascript:alert(1)"
    assert Alert.from_json(data).story.url is None


def test_split_surrogate_pair_is_joined_not_replaced() -> None:
    """A pair held as two code points is one character, kept; only lone halves become U+FFFD."""
    assert valid_text("a\ud83d\ude80b") == "a🚀b"
    assert valid_text("\ude80\ud83d") == "\ufffd\ufffd"
    assert valid_text("plain") == "plain"
