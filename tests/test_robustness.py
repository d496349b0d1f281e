"""Odd input from HN, broken templates and a failing state DB stay contained: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts import ledger
from alerts.config import TEMPLATE_NAMES, shipped_templates
from alerts.errors import RetryableFetchError, StateError
from alerts.hn import HNClient, RetryPolicy
from alerts.walk import walk_kids
from tests import trees
from tests.conftest import run_cli, start_cli, wait_for, with_smtp
from tests.fakehn import FakeHN
from tests.senders import RecordingSender
from tests.smtpserver import SmtpServer


def test_odd_items_stay_with_their_story(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """An item with a null id, a bad gzip body and a dated Retry-After each leave other stories' alerts intact."""
    hn.add_story(1, trees.wide(1_000, 120), title="Healthy")
    hn.add_story(2, trees.wide(2_000, 120), title="Odd id")
    hn.items[2] = {**hn.items[2], "id": None}
    hn.add_story(3, trees.wide(3_000, 120), title="Bad gzip")
    hn.fail("/v0/item/3.json", 5, status=200, headers={"Content-Encoding": "gzip"}, body=b"not gzip")
    hn.add_story(4, trees.wide(4_000, 120), title="Dated retry")
    hn.fail("/v0/item/4.json", 1, status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"})
    hn.set_list("topstories", [1, 2, 3, 4])
    result = run_cli(["run", "--once"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert names == ["1-tier-100.eml", "2-tier-100.eml", "4-tier-100.eml"]
    assert "story 3 not checked" in result.stderr and "Traceback" not in result.stderr


async def test_a_reply_chain_thousands_deep_is_counted() -> None:
    """A chain of 3,000 only children neither recurses out of stack nor miscounts."""
    depth = 3_000

    def handler(request: httpx.Request) -> httpx.Response:
        item_id = int(request.url.path.rsplit("/", 1)[1].removesuffix(".json"))
        item: dict[str, Any] = {"id": item_id, "type": "comment"}
        if item_id < depth:
            item["kids"] = [item_id + 1]
        return httpx.Response(200, content=json.dumps(item))

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = HNClient(http, "http://hn.test/v0", retry=RetryPolicy(attempts=1))
    result = await walk_kids(client, 0, {"id": 0, "kids": [1]}, max_items=10_000)
    assert (result.comments, result.complete) == (depth, True)


async def test_a_trickling_response_is_cut_at_the_request_timeout() -> None:
    """A body that trickles in forever is a timeout after ALERTS_FETCH_TIMEOUT, then retried."""

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"id": '
        await asyncio.sleep(30)
        yield b"1}"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Stream(trickle()))

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = HNClient(http, "http://hn.test/v0", retry=RetryPolicy(attempts=2, backoff=0), request_timeout=0.2)
    with pytest.raises(RetryableFetchError, match="timeout"):
        await asyncio.wait_for(client.item(1), 10)
    assert client.fetches == 2


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


def _templates(tmp_path: Path, subject: str) -> Path:
    folder = tmp_path / "tpl"
    folder.mkdir()
    for name in TEMPLATE_NAMES:
        (folder / name).write_text((shipped_templates() / name).read_text())
    (folder / "alert.subject.txt").write_text(subject)
    return folder


def test_a_template_that_fails_on_every_alert_is_a_settings_error(env: dict[str, str], tmp_path: Path) -> None:
    """A template using an unknown field fails at start-up with exit 2, before any alert is queued."""
    folder = _templates(tmp_path, "{{ story.nope }}")
    result = run_cli(["run", "--once"], {**env, "ALERTS_TEMPLATES_DIR": str(folder)}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ALERTS_TEMPLATES_DIR" in result.stderr


async def test_a_mail_that_cannot_render_is_recorded_not_retried(
    hn: FakeHN, env: dict[str, str], tmp_path: Path, app_factory: Any
) -> None:
    """A template that fails on one story's data marks that alert failed with the reason; others go out."""
    folder = _templates(tmp_path, "{% if story.id == 2 %}{{ 1 // 0 }}{% endif %}{{ title }}")
    hn.add_story(1, trees.wide(1_000, 120), title="Fine")
    hn.add_story(2, trees.wide(2_000, 120), title="Breaks")
    hn.set_list("topstories", [1, 2])
    sender = RecordingSender()
    app = await app_factory({**env, "ALERTS_TEMPLATES_DIR": str(folder)}, sender=sender)
    await app.service.run_cycle()
    await app.registry.join()
    assert [m["Subject"] for m in sender.messages] == ["Fine"]
    failed = await app.store.get((2, "tier", 100))
    assert failed is not None and failed.status == "failed"
    assert "cannot render the mail: ZeroDivisionError" in (failed.last_error or "")
    await app.service.run_cycle()
    await app.registry.join()
    assert len(sender.messages) == 1


async def test_a_failed_sent_mark_is_retried_without_resending(
    hn: FakeHN, env: dict[str, str], app_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the state DB refuses to record an accepted mail, the record is retried; the mail is not sent again."""
    hn.add_story(1, trees.wide(1_000, 120))
    hn.set_list("topstories", [1])
    sender = RecordingSender()
    app = await app_factory(env, sender=sender)
    real = app.store.run
    failures = iter([True] * 4)  # the outbox tries a record five times before giving the mail up to a resend

    async def flaky(fn: Any, *args: Any) -> Any:
        if fn in (ledger.record_recipients, ledger.finish) and next(failures, False):
            raise StateError("database is locked")
        return await real(fn, *args)

    monkeypatch.setattr(app.store, "run", flaky)
    await app.service.run_cycle()
    await app.registry.join()
    assert next(failures, "spent") == "spent"  # every planned failure happened
    await app.service.run_cycle()
    await app.registry.join()
    assert len(sender.messages) == 1
    assert await app.store.pending() == []
    assert (await app.store.counts())["sent"] == 1


def test_sigterm_during_once_drains_and_exits_1(
    hn: FakeHN, smtp: SmtpServer, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM to `run --once` cancels the hung send after the drain, keeps it, and exits 1 (not delivered)."""
    hn.add_story(1, trees.wide(1_000, 120))
    hn.set_list("topstories", [1])
    smtp.handler.rcpt_delay = 30
    proc = start_cli(["run", "--once"], with_smtp(env, smtp, ALERTS_SHUTDOWN_TIMEOUT="0.2"), tmp_path)
    try:
        wait_for(smtp.handler.rcpt_started.is_set, what="the send to start")
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "SIGTERM received" in err and "Task was destroyed" not in err
    assert "1 alert(s) not delivered" in err


@pytest.mark.parametrize(
    ("name", "value"),
    [("ALERTS_COMMENT_THRESHOLD", "50,,100"), ("ALERTS_POLL_INTERVAL", "inf"), ("ALERTS_FETCH_TIMEOUT", "nan")],
)
def test_more_bad_values_exit_2(tmp_path: Path, name: str, value: str) -> None:
    """Empty list items and non-finite numbers are settings errors naming the variable."""
    result = run_cli(["run", "--once"], {name: value}, tmp_path)
    assert result.returncode == 2 and name in result.stderr


def test_state_db_naming_a_folder_exits_2(tmp_path: Path) -> None:
    """ALERTS_STATE_DB pointing at a folder is a settings error, not a SQLite riddle."""
    result = run_cli(["run", "--once"], {"ALERTS_STATE_DB": str(tmp_path)}, tmp_path)
    assert result.returncode == 2 and "ALERTS_STATE_DB" in result.stderr and "is a folder" in result.stderr


def test_unknown_alerts_variable_is_warned_about(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """A misspelt ALERTS_* variable is named in a warning instead of silently ignored."""
    hn.set_list("topstories", [])
    result = run_cli(["run", "--once"], {**env, "ALERTS_TOPN": "5"}, tmp_path)
    assert result.returncode == 0
    assert "ALERTS_TOPN is not a setting of this version, ignored (a typo?)" in result.stderr
    assert "did you mean ALERTS_TOP_N?" in result.stderr
