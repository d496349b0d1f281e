"""The command line: arguments, logging setup, signals and exit codes.

Exit codes: 0 success; 2 invalid settings or usage (one line naming the
variable or argument, no traceback); 1 any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from alerts import __version__, startup
from alerts.errors import AlertsError, ConfigError, DeliveryError, FetchError

if TYPE_CHECKING:
    from alerts.config import Settings

log = logging.getLogger("alerts")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Usage errors: one line, exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``alerts`` argument parser."""
    parser = _Parser(
        prog="alerts",
        description="Email alerts when a Hacker News thread gets busy. Configured by ALERTS_* variables.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run = sub.add_parser("run", help="poll HN and send alerts until SIGINT/SIGTERM")
    run.add_argument("--once", action="store_true", help="run one cycle, deliver what is due, exit")
    check = sub.add_parser("check", help="count one item's comments and print the figures")
    check.add_argument("item_id", metavar="ITEM_ID", type=_item_id, help="HN item id, e.g. 8863")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    sub.add_parser("test-email", help="send a sample alert through the configured delivery")
    status = sub.add_parser("status", help="what the service is doing: source, last cycle, alerts, stories")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    outbox = sub.add_parser("outbox", help="list the alerts not yet delivered; retry or drop them")
    outbox.add_argument("--json", action="store_true", help="print one JSON array")
    actions = outbox.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    retry = actions.add_parser("retry", help="put failed alerts back to pending (they go out at the next cycle)")
    retry.add_argument("ids", metavar="ID", nargs="*", help="STORY:TIER or STORY:velocity")
    retry.add_argument("--failed", action="store_true", help="every failed alert")
    drop = actions.add_parser("drop", help="give up on alerts: never sent, recorded as dropped")
    drop.add_argument("ids", metavar="ID", nargs="+", help="STORY:TIER or STORY:velocity")
    return parser


def _item_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ITEM_ID must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"ITEM_ID must be a positive integer, got {text!r}")
    return value


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log lines to stderr, as text or one JSON object a line; the only place logging is configured."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        formatter: logging.Formatter = JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
        formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"  # ISO 8601 UTC, to the millisecond
        formatter.default_msec_format = "%s.%03dZ"
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    formatter.converter = time.gmtime if fmt == "json" else time.localtime
    handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # a library's warning is a log line too (one JSON object in json format)
    if level != "DEBUG":
        # httpx logs every request at INFO; our cycle line sums them up.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    # httpcore's DEBUG is a dozen lines per request; httpx's one line is enough.
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``alerts`` console script; returns the exit code."""
    startup.catch_early_signals()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("alerts: interrupted", file=sys.stderr)
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "outbox" and args.action == "retry" and bool(args.ids) == bool(args.failed):
        print("alerts: error: outbox retry takes alert IDs or --failed (see --help)", file=sys.stderr)
        return EXIT_USAGE
    from alerts.config import load_settings, read_env_file, unknown_variables

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"alerts: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.log_format)
    if args.command != "run":
        if startup.received:
            print("alerts: interrupted during start-up", file=sys.stderr)
            return EXIT_OK
        startup.restore_default_signals()  # the short commands stop at Ctrl-C as usual
    for name, closest in unknown_variables(os.environ, read_env_file(".env")):
        hint = f"; did you mean {closest}?" if closest else ""
        log.warning("%s is not a setting of this version, ignored (a typo?)%s", name, hint)
    try:
        return asyncio.run(_command(settings, args))
    except ConfigError as exc:
        print(f"alerts: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `alerts status | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except AlertsError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except Exception as exc:
        log.error("failed: %r", exc, exc_info=settings.log_level == "DEBUG")
        return EXIT_FAILURE


async def _command(settings: Settings, args: argparse.Namespace) -> int:
    # Imported here, not at the top: each command loads only the modules it needs,
    # which keeps start-up short (and `alerts check` skips the mail and state modules).
    if args.command == "run":
        return await _run(settings, once=args.once)
    if args.command == "check":
        return await _check(settings, args.item_id, as_json=args.json)
    if args.command == "test-email":
        return await _test_email(settings)
    from alerts import operator

    if args.command == "status":
        return await operator.show_status(
            settings.state_db, settings.comment_threshold, as_json=args.json, now=time.time()
        )
    if args.action == "retry":
        return await operator.retry_alerts(settings.state_db, args.ids, failed=args.failed)
    if args.action == "drop":
        return await operator.drop_alerts(settings.state_db, args.ids)
    return await operator.list_outbox(settings.state_db, as_json=args.json)


async def _run(settings: Settings, *, once: bool) -> int:
    stop, serving = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, sig, stop, serving)
    if startup.received:
        stop.set()  # it came during start-up: stop as soon as we can (one line, below)
    try:
        return await _serve(settings, once=once, stop=stop, serving=serving)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(settings: Settings, *, once: bool, stop: asyncio.Event, serving: asyncio.Event) -> int:
    from alerts.app import open_app

    async with open_app(settings) as app:
        if stop.is_set():
            log.info("stopped during start-up; nothing was sent")
            return EXIT_OK
        serving.set()
        watched = (
            "every story"
            if settings.story_lists == ("all",)
            else f"{','.join(settings.story_lists)} top {settings.top_n}"
        )
        log.info(
            "hn-alerts %s: %s source, %s %s, tiers %s, mail to %s via %s",
            __version__,
            settings.source,
            watched,
            "once" if once else f"every {settings.poll_interval:g} s",
            ",".join(map(str, settings.comment_threshold)),
            ", ".join(settings.recipients),
            app.sender.describe(),
        )
        if once:
            delivered = await app.service.run_once(stop)
            return EXIT_OK if delivered else EXIT_FAILURE
        if settings.http_addr is None:
            await app.service.run(stop)
        else:
            from alerts import web

            async with web.serving(app.web_app(), *settings.http_addr):
                await app.service.run(stop)
        log.info("stopped")
        return EXIT_OK


def _on_signal(sig: signal.Signals, stop: asyncio.Event, serving: asyncio.Event) -> None:
    if serving.is_set() and not stop.is_set():  # during start-up, "stopped during start-up" says it all
        log.info("%s received: stopping, draining sends", sig.name)
    stop.set()


async def _check(settings: Settings, item_id: int, *, as_json: bool) -> int:
    from alerts.app import make_hn_client  # light: the service's own modules load only with open_app
    from alerts.http import make_client
    from alerts.walk import walk_kids

    started = time.perf_counter()
    # Only the API's own URLs are asked, and no redirect is followed: an http:// API needs no TLS context.
    tls = not settings.hn_api_url.lower().startswith("http:")
    async with make_client(settings.max_concurrency, tls=tls) as http:
        hn = make_hn_client(settings, http)
        try:
            root = await hn.item(item_id)
        except FetchError as exc:
            log.error("item %d not read: %s", item_id, exc)
            return EXIT_FAILURE
        if root is None:
            log.error("item %d does not exist (the API answered null)", item_id)
            return EXIT_FAILURE
        result = await walk_kids(hn, item_id, root, max_items=settings.max_comments)
        seconds = time.perf_counter() - started
        title = str(root.get("title") or "")
        if as_json:
            print(
                json.dumps(
                    {
                        "id": item_id,
                        "title": title,
                        "comments": result.comments,
                        "fetches": hn.fetches,
                        "seconds": round(seconds, 3),
                    }
                )
            )
        else:
            print(f"Post {item_id} has {result.comments} comments ({hn.fetches} fetches, {seconds:.2f} s)")
    if not result.complete:
        log.error("walk incomplete: %d item(s) could not be fetched; the count is a lower bound", result.failed)
        return EXIT_FAILURE
    return EXIT_OK


async def _test_email(settings: Settings) -> int:
    from alerts.app import make_renderer, make_sender
    from alerts.model import Alert, Story

    renderer = make_renderer(settings)
    sender = make_sender(settings)
    story = Story(
        id=8863,
        title="hn-alerts test mail: delivery works",
        by="hn-alerts",
        score=42,
        url="https://news.ycombinator.com/",
        descendants=123,
    )
    # A fresh Message-ID each time, so a server that drops repeats still shows the test.
    message = renderer.render(Alert(story, tier=100, comments=123, kind=f"test{int(time.time())}"))
    try:
        result = await sender.send(message, sender=settings.sender, recipients=settings.recipients)
    except DeliveryError as exc:
        log.error("test mail not sent via %s: %s", sender.describe(), exc)
        return EXIT_FAILURE
    for rcpt in result.accepted:
        print(f"{rcpt}: accepted by {sender.describe()}")
    for rcpt, reply in {**result.refused, **result.deferred}.items():
        print(f"{rcpt}: REFUSED by {sender.describe()}: {reply}")
    return EXIT_OK if not result.refused and not result.deferred else EXIT_FAILURE
