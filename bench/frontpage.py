"""A growing front page: what each source costs and how fast it alerts, while 30 threads grow.

Run by hand from the repository root (not in CI)::

    .venv/bin/python -m bench.frontpage                      # every contender, 10 minutes each
    .venv/bin/python -m bench.frontpage --only poll --minutes 2
    .venv/bin/python -m bench.frontpage --only stream --minutes 10 --interval 60

Options: ``--minutes`` (growth window per contender, default 10), ``--only
stream|poll|poll-nogating|poll-one-tier`` (repeatable; default all), ``--interval``
(ALERTS_POLL_INTERVAL, default 60, the realistic value), ``--latency`` (per
request at the fake API, default 0.08 s), ``--concurrency``
(ALERTS_MAX_CONCURRENCY, default 32), ``--rate`` (new comments a minute,
default 28), ``--seed``, ``--sample`` (seconds between /proc samples,
default 5) and ``--out`` (default ``bench/out/frontpage.json``). It prints a
markdown table to stdout and writes every figure (samples, crossings, log
lines) to the JSON file.

**The world.** 30 stories on ``topstories`` with 5,347 live comments in all,
threads of 20 to 1,400 (:data:`SIZES`, most of them small, the sizes falling
roughly log-uniformly from the top), each a ``tests.trees.hn_like`` tree
(a fifth of its comments at the top level, a few thin argument chains, 2 %
dead and 2 % deleted on top of the live ones). ``tests.growth.Growth`` adds
about 28 comments a minute in all through the fake API's ``create_item``
(one shared id sequence; ``descendants``, ``kids`` and the ``maxitem`` event
stream move as on HN): each goes to a story drawn with weight ``sqrt(size)``
(a 1,400-comment thread gets ~3 a minute, a 20-comment one ~0.4), half of
them reply to an earlier new comment of that story. Every request is
answered after ``--latency`` seconds. The fake API and the growth run in a
process of their own (``python -m bench.frontpage --world CONFIG``, started
by the bench), and every contender gets a fresh copy of the same world
(same trees, same growth draws).

**Tiers.** ``ALERTS_COMMENT_THRESHOLD`` is chosen so that crossings happen
during the window, for small and big threads: a dry run of the same
``Growth`` (same seed, same draws, no server) tells which story each new
comment goes to, and for ten slots spread over 10 %-75 % of the window the
bench picks a story of a size band (under 40, 40-120, 120-300, 300-1,000
comments) whose next comment comes just after the slot, and puts a tier at
its count after that comment. Tiers are global, so other stories cross them
too; every crossing counts. A last tier of 1,000,000 is never reached: it
gives every story a next tier, so the "no gating" contender walks every
changed story (see below). ``ALERTS_BASELINE=true``: the tiers the stories
had already passed at the start send nothing.

**The contenders** (one after the other, same machine, each a real
``alerts run`` process with its own empty state DB in a temp dir, mail over
SMTP, security ``none``, to an aiosmtpd server in this process):

- ``stream``: ``ALERTS_SOURCE=stream``, following ``/v0/maxitem.json`` as
  an event stream. Skipped, with the reason, when the service refuses the
  setting (exit 2 naming ALERTS_SOURCE) or runs without ever opening an
  event stream (a version without the stream source).
- ``poll``: ``ALERTS_SOURCE=poll``, with gating: a changed story is walked
  only when its ``descendants`` is within 10 % below its next tier.
- ``poll-nogating``: the poll source with ``alerts.rules.WALK_MARGIN = 0``
  (``python -c "import alerts.rules as r; r.WALK_MARGIN = 0.0; ..." run``),
  so every changed story is walked at every cycle: the behaviour before
  gating.
- ``poll-one-tier``: the poll source with gating and one tier
  (``--one-tier``, default 250) instead of the planned ones: the case the
  gating target speaks of (about one request per story per cycle).

**Timeline of one contender.** The service starts; the window opens once
it has logged ``cycle 1:`` (its first cycle, with the baseline, is
warm-up and is not counted) and, for the stream, once an event stream is
open at the fake API; then the growth runs for ``--minutes``; then the
growth stops and the bench waits (at most the interval + 60 s) for the mail
of every tier crossed in the window; then SIGTERM.

**The figures** (per contender, over the growth window unless said):

- *new comments*: comments the growth created in the window, and a minute.
- *item requests /min* and */new comment*: requests to ``/v0/item/*.json``
  counted at the fake API. Split into *story reads* (the 30 story items),
  *first reads of new comments* (the first request ever for a comment the
  growth created: what following new items costs) and *re-reads*
  (everything else: comments that existed before the window, and new
  comments read again; that is, walks). The stream's ideal is about one
  item request per new comment, plus a walk of a story when it reaches a
  tier.
- *list requests*: requests to the story lists (``/v0/topstories.json``).
- *maxitem*: plain polls of ``/v0/maxitem.json``; *event streams*: streams
  opened (after the 307 redirect) over the whole run.
- *requests / story / cycle* (poll sources): the service's own ``cycle N:
  ... F fetches`` lines for the cycles that began in the window, F over the
  number of stories; with every story steady this is 1 (the story item).
- *detection latency*: for each alert mail, from the creation of the
  crossing comment (``Growth``'s record: the comment whose creation made
  the story's live count reach the mail's tier, ``time.monotonic()`` in the
  world process) to the mail's acceptance by the SMTP server
  (``time.monotonic()`` in this process; CLOCK_MONOTONIC is one clock for
  the whole machine). Median and max, separately for threads under and over
  300 comments at the start. *Crossings* are the tiers the live counts
  reached in the window; a crossing is *mailed* (a mail for that tier),
  *jumped* (only a mail for a higher tier of that story: one cycle saw both)
  or *missed* (no mail at all before the bench gave up). A mail for a tier
  the live count never reached would be a wrong count, and is listed too,
  as are mails for tiers a story had already passed before the start (the
  baseline should make those 0) and duplicates.
- *CPU s*: the service's user + system CPU seconds in the window (from
  ``/proc/PID/stat``), and for the whole process (``wait4``).
- *RSS MiB*: ``VmRSS`` from ``/proc/PID/status`` every ``--sample``
  seconds; the table gives it at the window's start, middle and end and its
  maximum (a flat RSS: end ~ middle); every sample is in the JSON file.
- *peak in flight*: the most requests the fake API handled at once.

**Reading the figures.** The tiers sit just above target stories on
purpose, so the gated poll walks each target at every cycle until it
crosses: a real configuration (a few round tiers) gates more, and this is
its worst case. The stream walks a story once per crossing, and with about
ten crossings a window those walks dominate a short run's requests: its
cost of following the page is the *first reads of new comments* (ideal: one
per new comment) plus the story reads. ``Growth`` replies only to the story
or to its own new comments, never to a comment older than the window, so
finding a new comment's story never needs an old parent fetched.

**What the bench needs from the service.** An INFO log line ``cycle 1:``
(the service's cycle line) once its first cycle is done, on stderr; for the
stream, an event stream open on ``/v0/maxitem.json`` by then (at most 20 s
later); the mail's Message-ID ``<hn-alerts.STORY.KIND.TIER@...>``; exit on
SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.harness import ROOT, child_env
from bench.run import machine
from tests import trees
from tests.fakehn import FakeHN
from tests.growth import Growth
from tests.smtpserver import free_port

PY = sys.executable
OUT = ROOT / "bench" / "out"

#: Live comments of the 30 stories: 5,347 in all, 20 to 1,400, most of them small.
SIZES = (
    1400, 900, 580, 400, 300, 240, 200, 165, 135, 116, 104, 92, 82, 73, 65,
    58, 52, 47, 42, 38, 35, 32, 29, 27, 25, 24, 23, 22, 21, 20,
)  # fmt: skip
#: A thread of this many comments or more at the start is "big" in the latency figures.
BIG = 300
#: A tier no story reaches: every story always has a next tier (so "no gating" walks every changed story).
SENTINEL_TIER = 1_000_000
#: Size bands the tier slots draw from, and the order of the slots over the window.
BANDS = {"tiny": (0, 40), "small": (40, 120), "medium": (120, BIG), "big": (BIG, 1_000)}
SLOTS = ("big", "tiny", "medium", "big", "small", "tiny", "big", "medium", "small", "big")
STORY_BASE = 42_000_000
STORY_STRIDE = 5_000
CONTENDERS = ("stream", "poll", "poll-nogating", "poll-one-tier")
NOGATING = (
    "from alerts.startup import catch_early_signals; catch_early_signals(); "
    "import alerts.rules as r; r.WALK_MARGIN = 0.0; "
    "from alerts.cli import main; raise SystemExit(main())"
)
CYCLE_LINE = re.compile(r"cycle (\d+): (\d+) stories, (\d+) alerts, (\d+) fetches, ([\d.]+) s")
MESSAGE_ID = re.compile(r"<hn-alerts\.(\d+)\.([A-Za-z]+)\.(\d+)@")
ITEM_PATH = re.compile(r"/v0/item/(\d+)\.json")
LIST_PATH = re.compile(r"/v0/([a-z]+stories)\.json")


# -- the world -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoryPlan:
    """One front-page story: its id, rank on the list, live comments and growth weight."""

    id: int
    rank: int
    live: int
    weight: int


def front_page(seed: int) -> list[StoryPlan]:
    """The 30 stories in topstories order (a shuffle of the sizes, fixed by ``seed``)."""
    order = list(range(len(SIZES)))
    random.Random(seed).shuffle(order)
    return [
        StoryPlan(STORY_BASE + n * STORY_STRIDE, rank, SIZES[n], max(1, round(math.sqrt(SIZES[n]))))
        for rank, n in enumerate(order, 1)
    ]


def weighted(stories: list[StoryPlan]) -> list[int]:
    """The list ``Growth`` draws from: each story id ``weight`` times (Growth picks uniformly)."""
    return [s.id for s in sorted(stories, key=lambda s: s.id) for _ in range(s.weight)]


def thread(story: StoryPlan, seed: int) -> trees.Tree:
    """An HN-like tree of ``story.live`` live comments, plus 2 % dead and 2 % deleted."""
    live = story.live
    extra = live // 50
    return trees.hn_like(
        story.id + 1,
        live=live,
        dead=extra,
        deleted=extra,
        top=max(2, round(live * 0.22)),
        chains=tuple(min(c, max(2, live // 8)) for c in (25, 18, 12)),
        seed=seed * 1_000 + story.rank,
    )


def load(hn: FakeHN, stories: list[StoryPlan], seed: int) -> list[dict[str, Any]]:
    """Put the front page into ``hn``; returns each story's figures."""
    rng = random.Random(seed)
    info = []
    for story in stories:
        tree = thread(story, seed)
        assert tree.live == story.live
        hn.add_story(story.id, tree, title=f"Front page #{story.rank}", score=rng.randint(40, 900))
        info.append({**asdict(story), "items": tree.comments, "depth": tree.depth})
    hn.set_list("topstories", [s.id for s in stories])
    return info


def serve_world(config: dict[str, Any]) -> None:
    """The world process: the fake API, its request log and the growth, steered over /_control.

    Commands: ``grow_start`` (returns the growth's start, monotonic), ``grow_stop`` (stops it,
    returns the comments created), ``streams`` (open and opened event streams), ``log`` (every
    request: monotonic time, path, whether it asked for an event stream).
    """
    seed = int(config["seed"])
    stories = front_page(seed)
    hn = FakeHN(latency=float(config["latency"]))
    info = load(hn, stories, seed)
    requests: list[tuple[float, str, bool]] = []
    enter = hn._enter

    def logged_enter(path: str, stream: bool = False) -> None:
        enter(path, stream)
        requests.append((time.monotonic(), path, stream))  # list.append is atomic: handler threads share it

    hn._enter = logged_enter  # type: ignore[method-assign]
    growth = Growth(hn, weighted(stories), float(config["rate"]) / 60, reply_chance=0.5, seed=seed)
    stopped: list[float] = []

    def handle(command: str, params: dict[str, str]) -> Any:
        if command == "grow_start":
            growth.start()
            while growth.started_at is None:
                time.sleep(0.001)
            return {"started": growth.started_at}
        if command == "grow_stop":
            created = growth.stop()
            stopped.append(time.monotonic())
            return {
                "stopped": stopped[0],
                "created": [[c.id, c.story, c.parent, c.dead, c.monotonic] for c in created],
            }
        if command == "streams":
            with hn.lock:
                return {"open": hn.open_streams, "opened": hn.stream_connections}
        if command == "log":
            with hn.lock:
                return {
                    "requests": list(requests),
                    "stream_connections": hn.stream_connections,
                    "stream_redirects": hn.stream_redirects,
                    "stream_events": dict(hn.stream_events),
                    "max_in_flight": hn.max_in_flight,
                    "max_item": hn.max_item,
                }
        return {"error": f"unknown command {command}"}

    hn.control = handle
    hn.start()
    print(json.dumps({"url": hn.url, "stories": info, "max_item": hn.max_item}), flush=True)
    sys.stdin.read()  # serve until the bench closes our stdin
    growth.stop()
    hn.stop()


class World:
    """The world process, from the bench's side."""

    def __init__(self, seed: int, latency: float, rate: float) -> None:
        config = json.dumps({"seed": seed, "latency": latency, "rate": rate})
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.frontpage", "--world", config],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.url: str = hello["url"]
        self.stories: list[dict[str, Any]] = hello["stories"]

    def control(self, command: str) -> Any:
        base = self.url.removesuffix("/v0")
        with urllib.request.urlopen(f"{base}/_control/{command}", timeout=60) as response:
            return json.loads(response.read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- tiers -----------------------------------------------------------------------------------


def growth_sequence(stories: list[StoryPlan], seed: int, count: int) -> list[int]:
    """The story of each of the first ``count`` comments the world's Growth will create.

    The same Growth, seed and draw list on a server that never starts: its draws do not
    depend on timing, so the sequence is the one the world will follow.
    """
    dry = FakeHN()
    for s in stories:
        dry.items[s.id] = {"id": s.id, "type": "story", "title": "dry", "descendants": 0, "time": 1}
    growth = Growth(dry, weighted(stories), rate=100_000, reply_chance=0.5, seed=seed, limit=count)
    with growth:
        growth.wait(count, timeout=120)
    return [c.story for c in growth.created]


def plan_tiers(stories: list[StoryPlan], seed: int, rate: float, minutes: float) -> tuple[list[int], list[dict]]:
    """The tiers (ascending, the sentinel last), and the planned crossing behind each."""
    window = minutes * 60
    per_second = rate / 60
    sequence = growth_sequence(stories, seed, math.ceil(per_second * window) + 1)
    arrivals: dict[int, list[float]] = {s.id: [] for s in stories}
    for k, story in enumerate(sequence, 1):
        arrivals[story].append(k / per_second)  # the schedule: start + k / rate
    used: set[int] = set()
    planned: list[dict] = []
    for j, band in enumerate(SLOTS):
        slot = window * (0.10 + 0.65 * j / (len(SLOTS) - 1))
        low, high = BANDS[band]
        best: tuple[float, StoryPlan, int] | None = None
        for s in stories:
            if s.id in used or not low <= s.live < high:
                continue
            times = arrivals[s.id]
            m = next((i for i, t in enumerate(times, 1) if t >= slot and t <= 0.85 * window), None)
            if m is not None and (best is None or times[m - 1] < best[0]):
                best = (times[m - 1], s, m)
        if best is None:
            continue
        at, s, m = best
        used.add(s.id)
        planned.append({"band": band, "story": s.id, "live": s.live, "tier": s.live + m, "expected_s": round(at, 1)})
    tiers = [*sorted({p["tier"] for p in planned}), SENTINEL_TIER]
    return tiers, planned


# -- the bench's instruments -------------------------------------------------------------------


@dataclass
class Mail:
    """One mail the SMTP server accepted, and when (monotonic)."""

    at: float
    story: int
    kind: str
    tier: int
    subject: str


@dataclass
class Mailbox:
    """An aiosmtpd handler that records each accepted mail with its acceptance time."""

    mails: list[Mail] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.monotonic()
        data = envelope.content if isinstance(envelope.content, bytes) else b""
        msg = message_from_bytes(data, policy=policy.default)
        mid = MESSAGE_ID.search(str(msg.get("Message-ID", "")))
        with self.lock:
            if mid is None:
                self.unparsed.append(str(msg.get("Message-ID")))
            else:
                story, kind, tier = mid.groups()
                self.mails.append(Mail(at, int(story), kind, int(tier), str(msg.get("Subject", ""))))
        return "250 Message accepted"

    def snapshot(self) -> list[Mail]:
        with self.lock:
            return list(self.mails)


class Sampler(threading.Thread):
    """Samples a process's CPU seconds and RSS from /proc every ``every`` seconds."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, cpu s, rss MiB)
        self._halt = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, float, float] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime (fields 14, 15)
        rss = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0) / 1024
        row = (time.monotonic(), cpu, rss)
        self.samples.append(row)
        return row

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class LogReader(threading.Thread):
    """Reads the service's log lines as they come, each with its arrival time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self.first_cycle = threading.Event()

    def run(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            if " cycle 1:" in line:
                self.first_cycle.set()

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


# -- one contender -----------------------------------------------------------------------------


class Skipped(Exception):
    """The contender cannot run in this version; the message says why."""


def command(contender: str) -> list[str]:
    if contender == "poll-nogating":
        return [PY, "-c", NOGATING, "run"]
    return [PY, "-m", "alerts", "run"]


def run_contender(contender: str, args: argparse.Namespace, tiers: list[int], scratch: Path) -> dict[str, Any]:
    """One contender on a fresh world: start, warm up, grow for the window, wait for the mails, stop."""
    world = World(args.seed, args.latency, args.rate)
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    home = scratch / contender
    home.mkdir()
    env = child_env(
        HN_API_URL=world.url,
        SOURCE="stream" if contender == "stream" else "poll",
        STORY_LISTS="topstories",
        TOP_N="30",
        COMMENT_THRESHOLD=",".join(map(str, tiers)),
        POLL_INTERVAL=f"{args.interval:g}",
        MAX_CONCURRENCY=str(args.concurrency),
        BASELINE="true",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port),
        SMTP_SECURITY="none",
        EMAIL_FROM="bench@example.com",
        EMAIL_TO="you@example.com",
        STATE_DB=str(home / "alerts.sqlite3"),
        LOG_LEVEL="INFO",
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        command(contender),
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = LogReader(proc)
    reader.start()
    sampler = Sampler(proc.pid, args.sample)
    sampler.start()
    result: dict[str, Any] = {"contender": contender, "command": command(contender)}
    try:
        _warm_up(contender, proc, reader, world)
        result["warm_up_s"] = time.monotonic() - started
        window_start = float(world.control("grow_start")["started"])
        begin = sampler.sample()
        deadline = window_start + args.minutes * 60
        while time.monotonic() < deadline and _alive(proc):
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        end = sampler.sample()
        grown = world.control("grow_stop")
        window_end = float(grown["stopped"])
        if not _alive(proc):
            raise RuntimeError(f"the service exited during the window (code {_stop(proc)[0]})")
        created = grown["created"]
        grace = _await_mails(mailbox, world.stories, tiers, created, args.interval + 60 if "poll" in contender else 60)
        result["grace_s"] = grace
    except Skipped as exc:
        result["skipped"] = str(exc)
        return result
    finally:
        returncode, cpu_total, maxrss = _stop(proc)
        reader.join(timeout=5)
        sampler.stop()
        log = world.control("log")
        world.close()
        smtp.stop()
        result.update(exit_code=returncode, log_tail=[line for _, line in reader.lines[-40:]])
    result.update(cpu_total_s=cpu_total, peak_rss_mib=maxrss)
    result["window"] = {"start": window_start, "end": window_end, "minutes": (window_end - window_start) / 60}
    for figures in (
        _requests(log, world.stories, created, window_start, window_end),
        _cycles(reader.lines, window_start, window_end),
        _latency(mailbox, world.stories, tiers, created),
        _resources(sampler.samples, begin, end, started),
    ):
        result.update(figures)
    result["new_comments"] = len(created)
    result["created"] = [[c[0], c[1], round(c[4] - window_start, 3)] for c in created]  # id, story, s into window
    result["warnings"] = [line for _, line in reader.lines if " WARNING " in line or " ERROR " in line][:50]
    return result


def _warm_up(contender: str, proc: subprocess.Popen[str], reader: LogReader, world: World) -> None:
    """Wait for the service's first cycle (and, for the stream, an open event stream)."""
    deadline = time.monotonic() + 300
    while not reader.first_cycle.wait(0.2):
        if not _alive(proc):
            code = _stop(proc)[0]
            reader.join(timeout=5)
            text = reader.text()
            if contender == "stream" and code == 2 and "ALERTS_SOURCE" in text:
                raise Skipped(f"the service refuses ALERTS_SOURCE=stream (exit 2): {text.strip()[-300:]}")
            raise RuntimeError(f"the service exited with {code} before its first cycle:\n{text[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("no 'cycle 1:' log line within 300 s")
    if contender != "stream":
        return
    deadline = time.monotonic() + 20
    while world.control("streams")["open"] < 1:
        if not _alive(proc):
            raise RuntimeError(f"the stream service exited with {_stop(proc)[0]}:\n{reader.text()[-2000:]}")
        if time.monotonic() > deadline:
            raise Skipped(
                "ALERTS_SOURCE=stream ran, but no event stream on /v0/maxitem.json was opened within 20 s of"
                " the first cycle: this version has no stream source yet"
            )
        time.sleep(0.2)


def _alive(proc: subprocess.Popen[str]) -> bool:
    """Whether the service still runs; unlike ``proc.poll()`` it leaves an exited one to :func:`_stop` to reap."""
    if proc.pid in _REAPED:
        return False
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


_REAPED: dict[int, tuple[int, float, float]] = {}


def _stop(proc: subprocess.Popen[str]) -> tuple[int, float, float]:
    """SIGTERM the service and reap it: exit code, total CPU seconds, peak RSS MiB (wait4); idempotent."""
    if proc.pid in _REAPED:
        return _REAPED[proc.pid]
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)  # an exited, unreaped child is a zombie: still no lookup error
    deadline = time.monotonic() + 60
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            _REAPED[proc.pid] = (proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
            return _REAPED[proc.pid]
        if time.monotonic() > deadline:
            proc.kill()
            deadline = time.monotonic() + 10
        time.sleep(0.1)


# -- figures ----------------------------------------------------------------------------------


def _crossings(stories: list[dict[str, Any]], tiers: list[int], created: list[list[Any]]) -> list[dict[str, Any]]:
    """Every tier a story's live count reached in the window, with the comment that reached it."""
    out = []
    for s in stories:
        mine = [c for c in created if c[1] == s["id"] and not c[3]]  # live new comments, in creation order
        for tier in tiers:
            j = tier - s["live"]
            if 1 <= j <= len(mine):
                out.append(
                    {
                        "story": s["id"],
                        "live": s["live"],
                        "tier": tier,
                        "comment": mine[j - 1][0],
                        "created": mine[j - 1][4],
                    }
                )
    return out


def _await_mails(
    mailbox: Mailbox, stories: list[dict[str, Any]], tiers: list[int], created: list[list[Any]], limit: float
) -> float:
    """Wait until every story with a crossing has a mail at or above its highest crossed tier."""
    want: dict[int, int] = {}
    for c in _crossings(stories, tiers, created):
        want[c["story"]] = max(want.get(c["story"], 0), c["tier"])
    started = time.monotonic()
    while time.monotonic() - started < limit:
        got: dict[int, int] = {}
        for m in mailbox.snapshot():
            got[m.story] = max(got.get(m.story, 0), m.tier)
        if all(got.get(s, 0) >= t for s, t in want.items()):
            break
        time.sleep(0.2)
    return time.monotonic() - started


def _requests(
    log: dict[str, Any], stories: list[dict[str, Any]], created: list[list[Any]], start: float, end: float
) -> dict[str, Any]:
    story_ids = {s["id"] for s in stories}
    new_ids = {c[0] for c in created}
    seen: set[int] = set()
    counts = dict.fromkeys(
        ("items", "stories", "new_first", "rereads", "lists", "maxitem_polls", "stream_redirects"), 0
    )
    for t, path, stream in log["requests"]:
        m = ITEM_PATH.fullmatch(path)
        item = int(m.group(1)) if m else None
        first = item is not None and item not in seen
        if item is not None:
            seen.add(item)
        if not start <= t < end:
            continue
        if item is not None:
            counts["items"] += 1
            if item in story_ids:
                counts["stories"] += 1
            elif item in new_ids and first:
                counts["new_first"] += 1
            else:
                counts["rereads"] += 1
        elif LIST_PATH.fullmatch(path):
            counts["lists"] += 1
        elif path == "/v0/maxitem.json":
            counts["stream_redirects" if stream else "maxitem_polls"] += 1
    minutes = (end - start) / 60
    n = max(1, len(created))
    return {
        "requests": counts,
        "item_requests_per_minute": counts["items"] / minutes,
        "item_requests_per_new_comment": counts["items"] / n,
        "split_per_minute": {k: counts[k] / minutes for k in ("stories", "new_first", "rereads")},
        "stream_connections": log["stream_connections"],
        "stream_events": log["stream_events"],
        "max_in_flight": log["max_in_flight"],
        "total_requests_whole_run": len(log["requests"]),
    }


def _cycles(lines: list[tuple[float, str]], start: float, end: float) -> dict[str, Any]:
    """The service's cycle lines for the cycles that began in the window."""
    cycles = []
    for at, line in lines:
        m = CYCLE_LINE.search(line)
        if m is None:
            continue
        number, stories, alerts, fetches, seconds = m.groups()
        began = at - float(seconds)
        if start <= began < end:
            cycles.append(
                {
                    "cycle": int(number),
                    "stories": int(stories),
                    "alerts": int(alerts),
                    "fetches": int(fetches),
                    "seconds": float(seconds),
                }
            )
    story_cycles = sum(c["stories"] for c in cycles)
    return {
        "cycles": cycles,
        "requests_per_story_per_cycle": sum(c["fetches"] for c in cycles) / story_cycles if story_cycles else None,
    }


def _latency(
    mailbox: Mailbox, stories: list[dict[str, Any]], tiers: list[int], created: list[list[Any]]
) -> dict[str, Any]:
    """Each mail against the crossing it reports; then crossed, jumped and missed tiers."""
    mails = mailbox.snapshot()
    crossings = {(c["story"], c["tier"]): c for c in _crossings(stories, tiers, created)}
    live = {s["id"]: s["live"] for s in stories}
    rows, wrong, before, dupes = [], [], [], 0
    seen: set[tuple[int, int]] = set()
    for m in sorted(mails, key=lambda m: m.at):
        key = (m.story, m.tier)
        if key in seen:
            dupes += 1
            continue
        seen.add(key)
        if m.tier <= live.get(m.story, 0):
            before.append(asdict(m))
        elif key not in crossings:
            wrong.append(asdict(m))
        else:
            c = crossings[key]
            rows.append({**c, "mailed": m.at, "latency_s": m.at - c["created"], "subject": m.subject})
    mailed: dict[int, set[int]] = {}
    for r in rows:
        mailed.setdefault(r["story"], set()).add(r["tier"])
    jumped = missed = 0
    for c in crossings.values():
        got = mailed.get(c["story"], set())
        if c["tier"] not in got:
            if any(t > c["tier"] for t in got):
                jumped += 1
            else:
                missed += 1
    return {
        "crossed": len(crossings),
        "jumped": jumped,
        "missed": missed,
        "mails": len(mails),
        "latencies": rows,
        "small": _stats([r["latency_s"] for r in rows if r["live"] < BIG]),
        "big": _stats([r["latency_s"] for r in rows if r["live"] >= BIG]),
        "duplicates": dupes,
        "mails_for_tiers_passed_before": before,
        "mails_for_tiers_not_reached": wrong,
    }


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "max": max(values)}


def _resources(
    samples: list[tuple[float, float, float]],
    begin: tuple[float, float, float] | None,
    end: tuple[float, float, float] | None,
    started: float,
) -> dict[str, Any]:
    inside = [s for s in samples if begin is not None and end is not None and begin[0] <= s[0] <= end[0]]
    out: dict[str, Any] = {
        "rss_samples": [[round(t - started, 1), round(cpu, 2), round(rss, 1)] for t, cpu, rss in samples]
    }
    if begin is None or end is None or not inside:
        return out
    middle = min(inside, key=lambda s: abs(s[0] - (begin[0] + end[0]) / 2))
    minutes = (end[0] - begin[0]) / 60
    out.update(
        cpu_window_s=end[1] - begin[1],
        cpu_per_minute_s=(end[1] - begin[1]) / minutes if minutes else None,
        rss_mib={"start": begin[2], "middle": middle[2], "end": end[2], "max": max(s[2] for s in inside)},
    )
    return out


# -- output -----------------------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table: one column per contender."""
    head = "| figure | " + " | ".join(r["contender"] for r in results) + " |"
    rows = [head, "|---|" + "---|" * len(results)]

    def row(name: str, get: Any) -> None:
        cells = []
        for r in results:
            if "skipped" in r or "error" in r:
                cells.append("skipped" if "skipped" in r else "failed")
                continue
            try:
                cells.append(get(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")

    def lat(group: str) -> Any:
        return lambda r: f"{_f(r[group]['median'])} / {_f(r[group]['max'])} (n={r[group]['n']})"

    row("window min", lambda r: _f(r["window"]["minutes"], 2))
    row("new comments (/min)", lambda r: f"{r['new_comments']} ({_f(r['new_comments'] / r['window']['minutes'])})")
    row("item requests /min", lambda r: _f(r["item_requests_per_minute"]))
    row("item requests / new comment", lambda r: _f(r["item_requests_per_new_comment"], 2))
    row(
        "of which /min: stories, first reads of new, re-reads",
        lambda r: " / ".join(_f(r["split_per_minute"][k]) for k in ("stories", "new_first", "rereads")),
    )
    row("list requests", lambda r: _f(r["requests"]["lists"]))
    row(
        "maxitem polls / event streams opened",
        lambda r: f"{r['requests']['maxitem_polls']} / {r['stream_connections']}",
    )
    row("cycles in window", lambda r: _f(len(r["cycles"])))
    row(
        "requests / story / cycle (poll)",
        lambda r: _f(r["requests_per_story_per_cycle"], 2) if r["contender"] != "stream" else "-",
    )
    row(
        "crossings mailed (duplicates, wrong tier; tiers passed before the start)",
        lambda r: (
            f"{len(r['latencies'])} ({r['duplicates']}, {len(r['mails_for_tiers_not_reached'])};"
            f" {len(r['mails_for_tiers_passed_before'])})"
        ),
    )
    row("crossed / jumped / missed", lambda r: f"{r['crossed']} / {r['jumped']} / {r['missed']}")
    row(f"latency s, < {BIG} comments: median / max", lat("small"))
    row(f"latency s, >= {BIG} comments: median / max", lat("big"))
    row("CPU s in window (/min)", lambda r: f"{_f(r['cpu_window_s'], 2)} ({_f(r['cpu_per_minute_s'], 2)})")
    row("CPU s whole process", lambda r: _f(r["cpu_total_s"], 2))
    row(
        "RSS MiB start / middle / end (max)",
        lambda r: "{} / {} / {} ({})".format(*(_f(r["rss_mib"][k]) for k in ("start", "middle", "end", "max"))),
    )
    row("peak in flight", lambda r: _f(r["max_in_flight"]))
    notes = [f"- {r['contender']}: skipped: {r['skipped']}" for r in results if "skipped" in r]
    notes += [f"- {r['contender']}: failed: {r['error']}" for r in results if "error" in r]
    return "\n".join(rows + (["", *notes] if notes else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="growth window per contender (default 10)")
    parser.add_argument("--only", action="append", choices=CONTENDERS, help="run only this contender (repeatable)")
    parser.add_argument("--interval", type=float, default=60.0, help="ALERTS_POLL_INTERVAL (default 60)")
    parser.add_argument("--latency", type=float, default=0.08, help="seconds per request at the fake API")
    parser.add_argument("--concurrency", type=int, default=32, help="ALERTS_MAX_CONCURRENCY (default 32)")
    parser.add_argument("--rate", type=float, default=28.0, help="new comments a minute in all (default 28)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--one-tier", type=int, default=250, help="the single tier of the poll-one-tier contender (default 250)"
    )
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between CPU/RSS samples")
    parser.add_argument("--out", type=Path, default=OUT / "frontpage.json")
    parser.add_argument("--world", help=argparse.SUPPRESS)  # internal: serve the world (a JSON config)
    args = parser.parse_args()
    if args.world:
        serve_world(json.loads(args.world))
        return
    contenders = [c for c in CONTENDERS if not args.only or c in args.only]
    stories = front_page(args.seed)
    tiers, planned = plan_tiers(stories, args.seed, args.rate, args.minutes)
    print(f"tiers {','.join(map(str, tiers))}; {len(planned)} planned crossings", file=sys.stderr, flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="frontpage-") as tmp:
        for contender in contenders:
            print(f"{contender}: {args.minutes:g} min of growth ...", file=sys.stderr, flush=True)
            try:
                own = [args.one_tier] if contender == "poll-one-tier" else tiers
                result = run_contender(contender, args, own, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - reported in the table; the other contenders still run
                traceback.print_exc()
                result = {"contender": contender, "error": f"{type(exc).__name__}: {exc}"}
            if "skipped" in result:
                print(f"{contender}: SKIPPED: {result['skipped']}", file=sys.stderr, flush=True)
            results.append(result)
    report = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("world", "out")} | {"out": str(args.out)},
        "sizes": list(SIZES),
        "tiers": tiers,
        "planned_crossings": planned,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(results))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
