"""Plumbing for the benchmarks: a fake API in its own process, and measured child processes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """One measured process: wall and CPU seconds, peak RSS, and what the server saw."""

    wall: float
    cpu: float
    rss_mib: float
    requests: int
    max_in_flight: int
    returncode: int
    stdout: str
    stderr: str

    def row(self) -> dict[str, Any]:
        """The figures without the output."""
        data = asdict(self)
        del data["stdout"], data["stderr"]
        return data


class Api:
    """``python -m bench.server`` as a child process, steered over /_control."""

    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server", "--latency", str(latency)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        self.url: str = hello["url"]
        self.stories: dict[str, Any] = hello["stories"]

    def control(self, command: str, **params: object) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        base = self.url.removesuffix("/v0")
        with urllib.request.urlopen(f"{base}/_control/{command}?{query}", timeout=30) as response:
            return json.loads(response.read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure(api: Api | None, argv: list[str], env: dict[str, str], cwd: Path) -> Run:
    """Run ``argv`` to its end; wall time, its own CPU time and peak RSS via wait4."""
    if api is not None:
        api.control("reset")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    stats = api.control("stats") if api is not None else {"requests": 0, "max_in_flight": 0}
    return Run(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        rss_mib=usage.ru_maxrss / 1024,
        requests=stats["requests"],
        max_in_flight=stats["max_in_flight"],
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
    )


def median(runs: list[Run], field: str) -> float:
    """The median of one figure over runs."""
    return statistics.median(float(getattr(r, field)) for r in runs)


def child_env(**alerts: str) -> dict[str, str]:
    """The environment without ALERTS_* plus ``alerts`` (given without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTS_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update({f"ALERTS_{k}": v for k, v in alerts.items()})
    return env


def rss_kib(pid: int) -> int:
    """Resident set size of a running process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
