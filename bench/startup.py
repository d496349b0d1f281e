"""Start-up: from exec to the first HTTP request, ``alerts check ID`` against the seed's pattern.

    .venv/bin/python -m bench.startup [--rounds 15]

A small HTTP server in a thread of this process answers every item with a
story that has no comments, and notes (``time.monotonic``, one clock for
every process on Linux) when the first request of each run arrives. The
start-up of a run is that moment less the moment just before this process
started the child. Ours (``python -m alerts check ID --json``) and the
baseline (``python -m bench.baseline URL ID``) alternate within each round,
which of the two goes first alternating too, after one warm-up run of each
that is not counted; the medians are compared. Wall and CPU time of the
whole (short) process come from ``wait4()``. Nothing here asserts a time.

Both run with their bytecode cached (``PYTHONPYCACHEPREFIX`` in a scratch
folder, written by the warm-up runs), as an installed package has it, even
when this shell sets ``PYTHONDONTWRITEBYTECODE``; ``--no-bytecode`` keeps
the inherited setting, so a checkout without ``.pyc`` files compiles its
own modules on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import child_env

PY = sys.executable
STORY = 8863
#: The baseline after importing the libraries ``alerts check`` cannot do without (settings, HTTP client,
#: retries, arguments): the least start-up ours can have as designed.
FLOOR = (
    "import argparse, httpx, httpx_aiohttp, pydantic_settings, tenacity, runpy;"
    " runpy.run_module('bench.baseline', run_name='__main__', alter_sys=True)"
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.first: float | None = None
        self.requests = 0

    def reset(self) -> None:
        with self.lock:
            self.first, self.requests = None, 0

    def seen(self) -> None:
        now = time.monotonic()
        with self.lock:
            if self.first is None:
                self.first = now
            self.requests += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.seen()
        item_id = self.path.rsplit("/", 1)[-1].removesuffix(".json")
        body = json.dumps({"id": int(item_id), "type": "story", "title": "Start-up", "by": "bench"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextmanager
def serve() -> Iterator[_Server]:
    """The server, in a daemon thread, until the block ends."""
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Start:
    """One run: seconds from just before exec to the first request, and the whole process."""

    first_request: float
    wall: float
    cpu: float
    requests: int


def run(server: _Server, argv: list[str], env: dict[str, str], cwd: Path) -> Start:
    """Start ``argv``, wait for its end; when its first request reached ``server``."""
    server.reset()
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or server.first is None:
        raise RuntimeError(f"{argv[2:4]} exited {code} after {server.requests} request(s): {stderr[-500:]}")
    return Start(server.first - started, wall, usage.ru_utime + usage.ru_stime, server.requests)


def measure(rounds: int, *, bytecode: bool = True) -> dict[str, Any]:
    """``rounds`` alternating runs of each; medians and the ratio of the medians."""
    with serve() as server, tempfile.TemporaryDirectory() as tmp:
        url = f"http://127.0.0.1:{server.server_port}/v0"
        scratch = Path(tmp)  # no ./.env there
        contenders = {
            "ours": ([PY, "-m", "alerts", "check", str(STORY), "--json"], child_env(HN_API_URL=url)),
            "baseline": ([PY, "-m", "bench.baseline", url, str(STORY)], child_env()),
            "floor": ([PY, "-c", FLOOR, url, str(STORY)], child_env()),
        }
        if bytecode:
            for _argv, env in contenders.values():
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
        for argv, env in contenders.values():
            run(server, argv, env, scratch)  # warm-up: file caches, .pyc files
        runs: dict[str, list[Start]] = {name: [] for name in contenders}
        for n in range(rounds):
            order = list(contenders) if n % 2 == 0 else list(reversed(contenders))  # none always goes first
            for name in order:
                argv, env = contenders[name]
                runs[name].append(run(server, argv, env, scratch))
    out: dict[str, Any] = {}
    for name, starts in runs.items():
        out[name] = {
            "first_request_ms": 1000 * statistics.median(s.first_request for s in starts),
            "first_request_ms_min": 1000 * min(s.first_request for s in starts),
            "wall_ms": 1000 * statistics.median(s.wall for s in starts),
            "cpu_ms": 1000 * statistics.median(s.cpu for s in starts),
            "requests": statistics.median(s.requests for s in starts),
        }
    out["ratio"] = out["ours"]["first_request_ms"] / out["baseline"]["first_request_ms"]
    out["floor_ratio"] = out["floor"]["first_request_ms"] / out["baseline"]["first_request_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-bytecode", action="store_true", help="keep this shell's PYTHONDONTWRITEBYTECODE")
    args = parser.parse_args()
    result = {"rounds": args.rounds, "python": sys.version.split()[0], "bytecode_cached": not args.no_bytecode}
    result |= measure(args.rounds, bytecode=not args.no_bytecode)
    for name in ("ours", "baseline", "floor"):
        r = result[name]
        print(
            f"{name:9} exec to first request {r['first_request_ms']:6.1f} ms (min {r['first_request_ms_min']:.1f}),"
            f" whole process {r['wall_ms']:.1f} ms wall, {r['cpu_ms']:.1f} ms CPU",
            file=sys.stderr,
        )
    print(f"ratio (ours / baseline, medians of {args.rounds}): {result['ratio']:.2f}", file=sys.stderr)
    print(f"floor (baseline after our libraries' imports) / baseline: {result['floor_ratio']:.2f}", file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
