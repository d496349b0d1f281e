"""Run every benchmark and write bench/out/results.json (the figures behind bench/RESULTS.md).

    .venv/bin/pip install -e '.[test,bench]' && .venv/bin/python -m bench.run [--rounds 5] [--quick]

Each contender runs as a whole process against the fake API in its own
process (``bench.server``); ours and the seed's pattern (``bench.baseline``)
alternate within each round, and medians of the rounds are compared, so a
noisy neighbour slows both alike. Nothing here asserts a time: it measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Api, Run, child_env, measure, median, rss_kib
from tests.smtpserver import SmtpServer

OUT = ROOT / "bench" / "out"
PY = sys.executable


def ours_check(api: Api, story: int, concurrency: int, scratch: Path, **extra: str) -> Run:
    env = child_env(HN_API_URL=api.url, MAX_CONCURRENCY=str(concurrency), **extra)
    return measure(api, [PY, "-m", "alerts", "check", str(story), "--json"], env, scratch)


def baseline(api: Api, stories: list[int]) -> Run:
    return measure(api, [PY, "-m", "bench.baseline", api.url, *map(str, stories)], child_env(), ROOT)


def walk_seconds(run: Run) -> float:
    """The walk's own time, as the process reports it."""
    return float(json.loads(run.stdout)["seconds"])


def bound(latency: float, depth: int, requests: int, concurrency: int) -> float:
    """The least time any walk can take: the longest chain, or the requests through the cap."""
    return max((depth + 1) * latency, math.ceil(requests / concurrency) * latency)


def summarize(runs: list[Run]) -> dict[str, float]:
    return {
        "wall": median(runs, "wall"),
        "cpu": median(runs, "cpu"),
        "rss_mib": median(runs, "rss_mib"),
        "requests": median(runs, "requests"),
        "max_in_flight": max(r.max_in_flight for r in runs),
    }


def big_walk(api: Api, latency: float, rounds: int, scratch: Path, key: str) -> dict[str, Any]:
    """Target 1: one big walk, ours (100 in flight) against the seed's pattern (aiohttp's 100)."""
    story = api.stories[key]
    ours: list[Run] = []
    base: list[Run] = []
    for _ in range(rounds):
        ours.append(ours_check(api, story["id"], 100, scratch))
        base.append(baseline(api, [story["id"]]))
    for r in ours + base:
        assert r.returncode == 0, r.stderr[-500:]
    result: dict[str, Any] = {
        "story": story,
        "latency": latency,
        "ours": summarize(ours) | {"walk_seconds": median_of([walk_seconds(r) for r in ours])},
        "baseline": summarize(base) | {"walk_seconds": median_of([walk_seconds(r) for r in base])},
    }
    result["bound"] = bound(latency, story["depth"], int(result["ours"]["requests"]), 100)
    result["wall_ratio"] = result["ours"]["wall"] / result["baseline"]["wall"]
    result["walk_ratio"] = result["ours"]["walk_seconds"] / result["baseline"]["walk_seconds"]
    result["walk_over_bound"] = result["ours"]["walk_seconds"] / result["bound"]
    result["wall_over_bound"] = result["ours"]["wall"] / result["bound"]
    return result


def median_of(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def cpu_per_request(api: Api, rounds: int, scratch: Path) -> dict[str, Any]:
    """Target 1 at 20 ms: CPU per request, raw and net of the process's start-up cost."""
    big, empty = api.stories["big_hn_like_0"]["id"], api.stories["empty"]["id"]
    rows: dict[str, list[Run]] = {"ours": [], "ours_empty": [], "baseline": [], "baseline_empty": []}
    for _ in range(rounds):
        rows["ours"].append(ours_check(api, big, 100, scratch))
        rows["baseline"].append(baseline(api, [big]))
        rows["ours_empty"].append(ours_check(api, empty, 100, scratch))
        rows["baseline_empty"].append(baseline(api, [empty]))
    out: dict[str, Any] = {name: summarize(runs) for name, runs in rows.items()}
    for who in ("ours", "baseline"):
        full, idle = out[who], out[f"{who}_empty"]
        out[f"{who}_ms_per_request"] = 1000 * full["cpu"] / full["requests"]
        out[f"{who}_net_ms_per_request"] = 1000 * (full["cpu"] - idle["cpu"]) / (full["requests"] - idle["requests"])
    out["ratio_raw"] = out["ours_ms_per_request"] / out["baseline_ms_per_request"]
    out["ratio_net"] = out["ours_net_ms_per_request"] / out["baseline_net_ms_per_request"]
    return out


def cycle(api: Api, latency: float, rounds: int, scratch: Path, concurrency: int) -> dict[str, Any]:
    """Targets 2 and 3: a whole cycle of 30 stories, then a steady one, across a restart."""
    ids = [s["id"] for s in api.stories["cycle"]]
    ours: list[Run] = []
    steady: list[Run] = []
    base: list[Run] = []
    cycle_seconds: list[float] = []
    for n in range(rounds):
        db = scratch / f"cycle-{concurrency}-{n}.sqlite3"
        env = child_env(
            HN_API_URL=api.url,
            MAX_CONCURRENCY=str(concurrency),
            STATE_DB=str(db),
            OUTBOX_DIR=str(scratch / "outbox"),
            COMMENT_THRESHOLD="100000",
        )
        first = measure(api, [PY, "-m", "alerts", "run", "--once"], env, scratch)
        ours.append(first)
        cycle_seconds.append(_cycle_seconds(first.stderr))
        steady.append(measure(api, [PY, "-m", "alerts", "run", "--once"], env, scratch))
        base.append(baseline(api, ids))
    for r in ours + steady + base:
        assert r.returncode == 0, r.stderr[-500:]
    items = sum(s["items"] for s in api.stories["cycle"])
    deepest = max(s["depth"] for s in api.stories["cycle"])
    requests = int(median(ours, "requests"))
    result = {
        "stories": len(ids),
        "items": items,
        "concurrency": concurrency,
        "latency": latency,
        "ours": summarize(ours) | {"cycle_seconds": median_of(cycle_seconds)},
        "baseline": summarize(base) | {"walk_seconds": median_of([walk_seconds(r) for r in base])},
        "steady": summarize(steady),
        "steady_item_requests_per_story": (median(steady, "requests") - 1) / len(ids),
        "bound": bound(latency, deepest, requests, concurrency),
    }
    result["cycle_over_bound"] = result["ours"]["cycle_seconds"] / result["bound"]
    result["cycle_vs_baseline_walk"] = result["ours"]["cycle_seconds"] / result["baseline"]["walk_seconds"]
    return result


def _cycle_seconds(stderr: str) -> float:
    """The duration the service logs on its `cycle 1: ... N fetches, S s` line."""
    for line in stderr.splitlines():
        if "cycle 1:" in line:
            return float(line.split(" fetches, ")[1].split(" s")[0])
    raise ValueError("no cycle line in the output")


def memory(api: Api, scratch: Path) -> dict[str, Any]:
    """Target 4: peak RSS of a 20,000-comment walk, and the idle service's RSS."""
    huge = api.stories["huge"]
    walk = ours_check(api, huge["id"], 32, scratch, MAX_COMMENTS="50000")
    assert walk.returncode == 0, walk.stderr[-500:]
    api.control("list", name="topstories", ids="")
    env = child_env(HN_API_URL=api.url, STATE_DB=str(scratch / "idle.sqlite3"), POLL_INTERVAL="1")
    proc = subprocess.Popen([PY, "-m", "alerts", "run"], env=env, cwd=scratch, stderr=subprocess.DEVNULL)
    time.sleep(8)
    idle_kib = rss_kib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    api.control("list", name="topstories", ids=",".join(str(s["id"]) for s in api.stories["cycle"]))
    return {
        "walk": huge,
        "walk_peak_rss_mib": walk.rss_mib,
        "walk_seconds": walk_seconds(walk),
        "walk_requests": walk.requests,
        "comments_counted": json.loads(walk.stdout)["comments"],
        "idle_service_rss_mib": idle_kib / 1024,
    }


def detection(
    api: Api, scratch: Path, interval: float, stories: dict[int, int], tier: int, concurrency: int
) -> dict[str, Any]:
    """Target 5: from a story passing ``tier`` on the API to its mail accepted by a local SMTP server.

    ``stories`` maps ids to their live counts, all below ``tier``; each in turn grows past it.
    """
    smtp = SmtpServer().start()
    api.control("list", name="topstories", ids=",".join(map(str, stories)))
    env = child_env(
        HN_API_URL=api.url,
        STATE_DB=str(scratch / f"detect-{tier}-{concurrency}.sqlite3"),
        POLL_INTERVAL=str(interval),
        COMMENT_THRESHOLD=str(tier),
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port),
        SMTP_SECURITY="none",
        EMAIL_FROM="bench@example.org",
        EMAIL_TO="me@example.org",
        MAX_CONCURRENCY=str(concurrency),
    )
    proc = subprocess.Popen([PY, "-m", "alerts", "run"], env=env, cwd=scratch, stderr=subprocess.DEVNULL)
    latencies: list[float] = []
    try:
        time.sleep(interval * 1.5)  # a first cycle has seen every story below the tier
        for n, (sid, live) in enumerate(stories.items()):
            time.sleep(interval * ((0.13 + 0.37 * n) % 1.0))  # cross at varied points of the interval
            api.control("grow", story=sid, n=tier - live)
            crossed = time.monotonic()
            deadline = crossed + interval * 3 + 5
            while not _mailed(smtp, sid) and time.monotonic() < deadline:
                time.sleep(0.005)
            latencies.append(time.monotonic() - crossed if _mailed(smtp, sid) else float("inf"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        smtp.stop()
        api.control("list", name="topstories", ids=",".join(str(s["id"]) for s in api.stories["cycle"]))
    return {
        "interval": interval,
        "tier": tier,
        "concurrency": concurrency,
        "stories": stories,
        "latencies": latencies,
        "max": max(latencies),
        "target": interval + 1,
    }


def _mailed(smtp: SmtpServer, story: int) -> bool:
    return any(r.message["X-HN-Alerts-Story"] == str(story) for r in smtp.received)


def politeness(api: Api, scratch: Path) -> dict[str, Any]:
    """Target 6: the cap holds at the server; a 429 with Retry-After 1 is waited out."""
    story = api.stories["hn-thread-26312516"]
    runs = {c: ours_check(api, story["id"], c, scratch) for c in (4, 16, 32)}
    api.control("fail_all", status=429, times=1, retry_after=1)
    throttled = ours_check(api, story["id"], 32, scratch)
    api.control("clear")
    return {
        "story": story,
        "max_in_flight_by_cap": {str(c): r.max_in_flight for c, r in runs.items()},
        "with_429_retry_after_1s": {
            "walk_seconds": walk_seconds(throttled),
            "requests": throttled.requests,
            "least_possible_seconds": story["depth"] + 1,
            "comments": json.loads(throttled.stdout)["comments"],
        },
    }


def sweep(api: Api, scratch: Path, rounds: int) -> dict[str, Any]:
    """The default concurrency: the big walk at several caps, 80 ms."""
    out: dict[str, Any] = {}
    for c in (8, 16, 32, 64, 100):
        runs = [ours_check(api, api.stories["big_hn_like_0"]["id"], c, scratch) for _ in range(rounds)]
        out[str(c)] = {
            "walk_seconds": median_of([walk_seconds(r) for r in runs]),
            "cpu": median(runs, "cpu"),
            "max_in_flight": max(r.max_in_flight for r in runs),
        }
    return out


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds, no sweep (a smoke run)")
    parser.add_argument("--only", choices=["cpu"], help="only CPU per request at 20 ms (bench/out/cpu.json)")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "rounds": rounds, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.only == "cpu":
        with tempfile.TemporaryDirectory() as tmp, Api(0.02) as api:
            results["cpu_20ms"] = cpu_per_request(api, rounds, Path(tmp))
        _write(results, OUT / "cpu.json")
        return
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        with Api(0.08) as api:
            print("big walk at 80 ms ...", flush=True)
            for key in ("big_hn_like_0", "big_hn_like_1", "big_hn_like_2", "big_bushy"):
                results[f"{key}_80ms"] = big_walk(api, 0.08, rounds, scratch, key)
            print("cycle at 80 ms ...", flush=True)
            results["cycle_80ms_c100"] = cycle(api, 0.08, rounds, scratch, 100)
            results["cycle_80ms_c32"] = cycle(api, 0.08, max(2, rounds // 2), scratch, 32)
            print("politeness, detection ...", flush=True)
            results["politeness"] = politeness(api, scratch)
            small = {s["id"]: s["live"] for s in api.stories["cycle"] if s["live"] < 100}
            results["detection"] = detection(api, scratch, 5.0, dict(list(small.items())[:5]), 100, 32)
            big = {s["id"]: s["live"] for s in api.stories["cycle"] if s["live"] >= 1_000}
            tier = max(big.values()) + 10
            results["detection_big_c32"] = detection(api, scratch, 5.0, big, tier, 32)
            grown = dict.fromkeys(big, tier)  # each story now holds exactly `tier` live comments
            results["detection_big_c100"] = detection(api, scratch, 5.0, grown, tier + 20, 100)
            if not args.quick:
                print("concurrency sweep ...", flush=True)
                results["sweep_80ms"] = sweep(api, scratch, 3)
        with Api(0.02) as api:
            print("big walk and CPU at 20 ms ...", flush=True)
            results["big_hn_like_0_20ms"] = big_walk(api, 0.02, rounds, scratch, "big_hn_like_0")
            results["cpu_20ms"] = cpu_per_request(api, rounds, scratch)
            results["memory"] = memory(api, scratch)
    _write(results, OUT / "results.json")


def _write(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
