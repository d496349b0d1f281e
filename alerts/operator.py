"""The operator's commands on the outbox: list, retry, drop.

They open the state DB without the service's lock (SQLite lets both work on
it at once), so they work whether or not the service runs; a running service
sees a retried alert at its next cycle. They never create a DB.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts import ledger
from alerts.errors import ConfigError
from alerts.ledger import Entry, Key
from alerts.model import MAX_ID
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


def _status(entry: Entry) -> str:
    return "held" if entry.status == "pending" and entry.held and entry.digest is None else entry.status


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
        "status": _status(entry),
        "attempts": entry.attempts,
        "next_try": _when(entry.next_try) if entry.status == "pending" else None,
        "last_error": entry.last_error,
        "queued_at": _when(entry.created_at),
        "digest": entry.digest,
    }


async def _open(path: Path) -> Store | None:
    if not path.exists():  # noqa: ASYNC240 - one stat of a local file, before any work
        return None
    return await Store.open(path, exclusive=False)


async def list_outbox(path: Path, *, as_json: bool) -> int:
    """Print the alerts not yet delivered (pending, held, failed); exit code 0."""
    store = await _open(path)
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
            _status(e),
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
        why = "no such alert" if entry is None else f"it is {_status(entry)}"
        print(f"alerts: error: {alert_id(key)}: cannot {action}: {why}", file=sys.stderr)
    if all_failed and not keys:
        print("no failed alert to retry")
    return 1 if problems else 0
