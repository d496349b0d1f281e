"""Soak: `alerts run` for minutes against a growing, faulty fake HN and an SMTP server that comes and goes.

Run by hand (not in CI), from the repository root:

    .venv/bin/python -m bench.soak --minutes 10

Stories grow a comment or two at a time; every tier crossing must give
exactly one mail. HN faults (random 502s, every request failing twice)
switch on and off, and the SMTP server goes away and comes back. The
service's RSS and open file descriptors are sampled from /proc. Growth and
faults stop for the last stretch so everything due can be delivered; then
the service gets SIGTERM and must exit 0. Prints a JSON summary and exits 1
if any promise broke.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import child_env, rss_kib
from tests import trees
from tests.fakehn import FakeHN
from tests.smtpserver import SmtpServer

TIERS = (10, 25, 50, 100, 150, 200, 250, 300)


def open_fds(pid: int) -> int:
    """Open file descriptors of a process, from /proc."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Growth:
    """Adds live comments under random existing comments of a story, keeping descendants right."""

    def __init__(self, hn: FakeHN, story_ids: list[int], rng: random.Random) -> None:
        self.hn = hn
        self.rng = rng
        self.next_id = 10_000_000
        self.members: dict[int, list[int]] = {}
        self.live: dict[int, int] = {}
        for sid in story_ids:
            tree = trees.generated(sid * 100_000, live=rng.randint(3, 8), dead=1, deleted=1, depth=3, seed=sid)
            hn.add_story(sid, tree, title=f"Soak story {sid}")
            self.members[sid] = [sid, *[i for i, item in tree.items.items() if item is not None]]
            self.live[sid] = tree.live

    def grow(self, sid: int, n: int) -> None:
        with self.hn.lock:
            for _ in range(n):
                parent = self.rng.choice(self.members[sid])
                kid = self.next_id
                self.next_id += 1
                self.hn.items[kid] = {"id": kid, "type": "comment", "by": "soak", "parent": parent, "time": 1}
                parent_item = self.hn.items[parent]
                assert parent_item is not None
                self.hn.items[parent] = {**parent_item, "kids": [*parent_item.get("kids", []), kid]}
                self.members[sid].append(kid)
                self.live[sid] += 1
            story = self.hn.items[sid]
            assert story is not None
            self.hn.items[sid] = {**story, "descendants": int(story.get("descendants", 0)) + n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--stories", type=int, default=12)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=45.0, help="seconds without growth or faults at the end")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here too")
    args = parser.parse_args()

    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="hn-alerts-soak-"))
    hn = FakeHN(latency=0.002).start()
    ids = list(range(1, args.stories + 1))
    growth = Growth(hn, ids, rng)
    hn.set_list("topstories", ids)
    smtp = SmtpServer().start()
    smtp_up = True
    env = child_env(
        HN_API_URL=hn.url,
        STATE_DB=str(work / "state.sqlite3"),
        POLL_INTERVAL=str(args.interval),
        COMMENT_THRESHOLD=",".join(map(str, TIERS)),
        TOP_N=str(len(ids)),
        FETCH_BACKOFF="0.05",
        FETCH_ATTEMPTS="6",
        SEND_BACKOFF="0.2",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port),
        SMTP_SECURITY="none",
        SMTP_TIMEOUT="5",
        EMAIL_FROM="soak@example.org",
        EMAIL_TO="me@example.org",
        SHUTDOWN_TIMEOUT="15",
    )
    log_path = work / "service.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alerts", "run"], env=env, cwd=work, stderr=log_file, stdout=log_file
        )
    samples: list[dict[str, float]] = []
    events: list[str] = []
    start = time.monotonic()
    end = start + args.minutes * 60
    growth_end = end - args.settle
    next_sample = start + 10
    fault_phase = 0
    try:
        while (now := time.monotonic()) < end:
            t = now - start
            if now >= next_sample:
                samples.append({"t": round(t, 1), "rss_kib": rss_kib(proc.pid), "fds": open_fds(proc.pid)})
                next_sample += 10
            if now < growth_end:
                for sid in rng.sample(ids, k=max(1, len(ids) // 4)):
                    growth.grow(sid, rng.randint(1, 2))
                phase = int(t // 30)
                if phase != fault_phase:
                    fault_phase = phase
                    mode = phase % 4
                    hn.fail_rate = 0.10 if mode == 1 else 0.0
                    if mode == 3:
                        hn.fail_all_sequence([(503, {}), (429, {"Retry-After": "0"})])
                    else:
                        hn.fail_all_sequence([])
                    events.append(f"{t:.0f}s faults mode {mode}")
                if int(t // 45) % 3 == 1 and smtp_up:
                    smtp.stop()
                    smtp_up = False
                    events.append(f"{t:.0f}s smtp down")
                elif int(t // 45) % 3 != 1 and not smtp_up:
                    smtp.start()
                    smtp_up = True
                    events.append(f"{t:.0f}s smtp up")
            else:
                hn.fail_rate = 0.0
                hn.fail_all_sequence([])
                if not smtp_up:
                    smtp.start()
                    smtp_up = True
                    events.append(f"{t:.0f}s smtp up (settle)")
            if proc.poll() is not None:
                events.append(f"{t:.0f}s service died with {proc.returncode}")
                break
            time.sleep(1.0)
        samples.append(
            {"t": round(time.monotonic() - start, 1), "rss_kib": rss_kib(proc.pid), "fds": open_fds(proc.pid)}
        )
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        smtp.stop()
        hn.stop()

    expected = {(sid, tier) for sid in ids for tier in TIERS if growth.live[sid] >= tier}
    got = collections.Counter(str(r.message["Message-ID"]) for r in smtp.received)
    wanted = {f"<hn-alerts.{sid}.tier.{tier}@example.org>" for sid, tier in expected}
    log_text = log_path.read_text()
    summary: dict[str, Any] = {
        "minutes": args.minutes,
        "interval_s": args.interval,
        "stories": len(ids),
        "final_live_comments": sum(growth.live.values()),
        "alerts_due": len(wanted),
        "delivered_distinct": len(set(got) & wanted),
        "duplicated": sum(n - 1 for n in got.values()),
        "unexpected": sorted(set(got) - wanted),
        "missing": sorted(wanted - set(got)),
        "exit_code": code,
        "cycles": log_text.count(" cycle ") - log_text.count("cycle took"),
        "overruns": log_text.count("cycle took"),
        "incomplete_walk_lines": log_text.count("walk incomplete"),
        "not_sent_lines": log_text.count("alert not sent"),
        "destroyed_pending": log_text.count("Task was destroyed"),
        "tracebacks": log_text.count("Traceback"),
        "rss_kib_first_last_max": [samples[0]["rss_kib"], samples[-1]["rss_kib"], max(s["rss_kib"] for s in samples)],
        "rss_kib_after_1min_last": [
            next(s["rss_kib"] for s in samples if s["t"] >= 60) if args.minutes >= 1.5 else None,
            samples[-1]["rss_kib"],
        ],
        "fds_first_last_max": [samples[0]["fds"], samples[-1]["fds"], max(s["fds"] for s in samples)],
        "samples": samples,
        "events": events,
        "log": str(log_path),
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = (
        code == 0
        and not summary["missing"]
        and not summary["unexpected"]
        and summary["duplicated"] == 0
        and summary["destroyed_pending"] == 0
    )
    print("SOAK", "PASSED" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
