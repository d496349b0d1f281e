"""The operator's commands: ``alerts status``, and ``alerts outbox`` with its retry and drop.

They open the state DB without the service's lock (SQLite lets both work on
it at once), so they work whether or not the service runs; a running service
sees a retried alert at its next cycle. They never create a DB.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts import ledger, snapshot
from alerts.errors import ConfigError
from alerts.ledger import Entry, Key
from alerts.model import MAX_ID
from alerts.rules import next_tier
from alerts.store import Store

_ID = re.compile(r"(\d{1,16}):(velocity|\d{1,9})")


def parse_alert_id(text: str) -> Key:
    """``STORY:TIER`` or ``STORY:velocity`` as a key; :class:`ConfigError` naming the argument otherwise."""
    match = _ID.fullmatch(text.strip())
    if match is None or not 0 < int(match[1]) <= MAX_ID or match[2] == "0":
        raise ConfigError("ID", f"{text!r} is not STORY:TIER or STORY:velocity (e.g. 8863:100)")
    if match[2] == "velocity":
        return int(match[1]), "velocity", 0
    return int(match[1]), "tier", int(match[2])


def alert_id(key: Key) -> str:
    """The operator's id of an alert: ``STORY:TIER`` or ``STORY:velocity``."""
    story, kind, tier = key
    return f"{story}:velocity" if kind == "velocity" else f"{story}:{tier}"


def _when(stamp: float | None) -> str | None:
    if not stamp:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def entry_json(entry: Entry) -> dict[str, Any]:
    """One outbox entry as the stable JSON object of ``alerts outbox --json``."""
    story = entry.alert.story
    return {
        "id": alert_id(entry.key),
        "story": story.id,
        "title": story.title,
        "kind": entry.key[1],
        "tier": entry.key[2],
        "comments": entry.alert.comments,
        "status": entry.shown_status,
        "attempts": entry.attempts,
        # Pending and due now (next_try 0, after a restart or `retry`): the time of asking.
        "next_try": _when(entry.next_try or time.time()) if entry.status == "pending" and not entry.held else None,
        "last_error": entry.last_error,
        "queued_at": _when(entry.created_at),
        "digest": entry.digest,
    }


async def _open(path: Path, *, readonly: bool = False) -> Store | None:
    if not path.exists():  # noqa: ASYNC240 - one stat of a local file, before any work
        return None
    if readonly:
        return await Store.open_readonly(path)
    return await Store.open(path, exclusive=False)


async def show_status(path: Path, tiers: Sequence[int], *, as_json: bool, now: float) -> int:
    """Print what the service is doing (see :func:`status_json`); exit code 0, or 1 with no state DB."""
    store = await _open(path, readonly=True)
    if store is None:
        if as_json:
            print(json.dumps(None))
        print(f"alerts: no state DB at {path}: the service has not run with it yet", file=sys.stderr)
        return 1
    try:
        picture = await store.run(snapshot.read, now)
    finally:
        await store.close()
    if as_json:
        print(json.dumps(status_json(picture, tiers, now), ensure_ascii=False))
    else:
        print(status_text(picture, tiers, now))
    return 0


def status_json(picture: snapshot.Snapshot, tiers: Sequence[int], now: float) -> dict[str, Any]:
    """The stable JSON object of ``alerts status --json`` (documented in the README)."""
    cycle = None
    if picture.last_cycle_at is not None:
        cycle = {
            "number": picture.last_cycle,
            "at": _when(picture.last_cycle_at),
            "age_seconds": round(now - picture.last_cycle_at, 1),
            "seconds": picture.last_cycle_seconds,
        }
    failure = None
    if picture.failed_at is not None and (picture.last_cycle_at is None or picture.failed_at > picture.last_cycle_at):
        failure = {
            "number": picture.failed_cycle,
            "at": _when(picture.failed_at),
            "age_seconds": round(now - picture.failed_at, 1),
            "error": picture.failed_why,
        }
    stream = None
    if picture.stream_last is not None:
        stream = {
            "position": picture.stream_last,
            "at": _when(picture.stream_at),
            "age_seconds": None if picture.stream_at is None else round(now - picture.stream_at, 1),
        }
    return {
        "source": picture.source,
        "watching_since": _when(picture.watching_since),
        "last_cycle": cycle,
        "failing": failure,
        "stream": stream,
        "alerts": {k: picture.counts.get(k, 0) for k in ("pending", "held", "failed", "sent", "dropped", "baseline")},
        "stuck": [alert_id(e.key) for e in picture.stuck],
        "watched": picture.watched,
        "stories": [
            {
                "id": s.id,
                "title": s.title,
                "comments": s.count,
                "alerted_tier": s.alerted,
                "next_tier": next_tier(tiers, s.alerted),
            }
            for s in picture.stories
        ],
    }


def status_text(picture: snapshot.Snapshot, tiers: Sequence[int], now: float) -> str:
    """``alerts status`` for a person: a few lines that read at a glance, then the stories."""
    counts = picture.counts
    since = f", watching since {clock_text(picture.watching_since)}" if picture.watching_since else ""
    lines = [f"source       {picture.source or '?'}{since}"]
    if picture.last_cycle_at is None:
        lines.append("last cycle   none yet")
    else:
        at = picture.last_cycle_at
        took = picture.last_cycle_seconds or 0.0
        lines.append(f"last cycle   #{picture.last_cycle} at {clock_text(at)} ({_ago(now - at)}), took {took:.2f} s")
    failed = picture.failed_at
    if failed is not None and (picture.last_cycle_at is None or failed > picture.last_cycle_at):
        why = _shorten(picture.failed_why or "?", 100)
        lines.append(
            f"failing      cycle #{picture.failed_cycle} failed at {clock_text(failed)} ({_ago(now - failed)}): {why}"
        )
    if picture.stream_last is not None:
        handled = picture.stream_at
        when = f", last item handled at {clock_text(handled)} ({_ago(now - handled)})" if handled else ""
        lines.append(f"stream       at item {picture.stream_last}{when}")
    lines.append(
        f"alerts       {counts['pending']} pending, {counts['held']} held, {counts['failed']} failed,"
        f" {counts['sent']} sent" + (f", {counts['dropped']} dropped" if counts["dropped"] else "")
    )
    if picture.stuck:
        ids = ", ".join(alert_id(e.key) for e in picture.stuck)
        lines.append(f"stuck        failing for over an hour: {ids} (see `alerts outbox`)")
    shown = f" (the busiest {len(picture.stories)} listed)" if picture.watched > len(picture.stories) else ""
    lines.append(f"stories      {picture.watched} watched{shown}")
    if picture.stories:
        rows = [("COMMENTS", "NEXT TIER", "ID", "TITLE")]
        for s in picture.stories:
            upcoming = next_tier(tiers, s.alerted)
            rows.append((str(s.count), "-" if upcoming is None else str(upcoming), str(s.id), _shorten(s.title, 60)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return "\n".join(lines)


def clock_text(stamp: float | None, missing: str = "?") -> str:
    """A Unix time for a person: ``2026-11-25 19:41:03 UTC`` (``missing`` for none)."""
    if stamp is None:
        return missing
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


async def list_outbox(path: Path, *, as_json: bool) -> int:
    """Print the alerts not yet delivered (pending, held, failed); exit code 0."""
    store = await _open(path, readonly=True)
    rows: list[Entry] = []
    if store is not None:
        try:
            rows = await store.run(ledger.entries, ("pending", "failed"))
        finally:
            await store.close()
    if as_json:
        print(json.dumps([entry_json(e) for e in rows], ensure_ascii=False))
        return 0
    if not rows:
        print("the outbox is empty: no alert waits to be delivered" if store else f"no state DB at {path} yet")
        return 0
    header = ("ID", "STATUS", "TRIES", "NEXT TRY", "TITLE", "LAST ERROR")
    table = [
        (
            alert_id(e.key),
            e.shown_status,
            str(e.attempts),
            (_when(e.next_try) or "now") if e.status == "pending" and not e.held else "-",
            _shorten(e.alert.story.title, 40),
            _shorten(e.last_error or "-", 80),
        )
        for e in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


async def retry_alerts(path: Path, ids: Sequence[str], *, failed: bool) -> int:
    """Put failed alerts (the given ones, or all with ``failed``) back to pending; pending ones become due now."""
    keys = [parse_alert_id(i) for i in ids]
    return await _change(path, keys, "retry", all_failed=failed)


async def drop_alerts(path: Path, ids: Sequence[str]) -> int:
    """Give up on alerts: never sent, recorded as dropped."""
    keys = [parse_alert_id(i) for i in ids]
    return await _change(path, keys, "drop", all_failed=False)


async def _change(path: Path, keys: list[Key], action: str, *, all_failed: bool) -> int:
    store = await _open(path)
    if store is None:
        print(f"alerts: error: no state DB at {path}", file=sys.stderr)
        return 1
    try:
        if all_failed:
            keys = await store.run(ledger.failed_keys)
        before = {key: await store.get(key) for key in keys}
        if action == "retry":
            changed = await store.run(ledger.retry, keys)
        else:
            changed = await store.run(ledger.drop, keys, store.now())
    finally:
        await store.close()
    problems = 0
    for key in keys:
        if key in changed:
            verb = "dropped" if action == "drop" else "will be tried again at the next cycle"
            print(f"{alert_id(key)}: {verb}")
            continue
        problems += 1
        entry = before[key]
        why = "no such alert" if entry is None else f"it is {entry.shown_status}"
        print(f"alerts: error: {alert_id(key)}: cannot {action}: {why}", file=sys.stderr)
    if all_failed and not keys:
        print("no failed alert to retry")
    return 1 if problems else 0
