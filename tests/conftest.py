"""Shared fixtures: the fake HN API, a real SMTP server, and ways to run the service."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from alerts.app import App, open_app
from alerts.config import Settings, load_settings
from tests.fakehn import FakeHN
from tests.smtpserver import SmtpServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ALERTS_* variable exported in the shell, nor a ./.env, can change a test."""
    for name in [k for k in os.environ if k.startswith("ALERTS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def hn() -> Iterator[FakeHN]:
    """A fake HN API on a free loopback port."""
    with FakeHN() as fake:
        yield fake


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A real aiosmtpd server on a free loopback port, plain SMTP."""
    server = SmtpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path: Path, hn: FakeHN) -> dict[str, str]:
    """ALERTS_* settings pointing at the fake API and a scratch folder, with fast retries."""
    return {
        "ALERTS_HN_API_URL": hn.url,
        "ALERTS_STATE_DB": str(tmp_path / "state.sqlite3"),
        "ALERTS_OUTBOX_DIR": str(tmp_path / "outbox"),
        "ALERTS_FETCH_BACKOFF": "0",
        "ALERTS_FETCH_ATTEMPTS": "3",
        "ALERTS_FETCH_TIMEOUT": "5",
        "ALERTS_SEND_BACKOFF": "0",
        "ALERTS_SMTP_TIMEOUT": "5",
        "ALERTS_SHUTDOWN_TIMEOUT": "10",
        "ALERTS_POLL_INTERVAL": "60",
    }


def with_smtp(env: dict[str, str], smtp: SmtpServer, **extra: str) -> dict[str, str]:
    """``env`` plus settings that deliver to the test SMTP server without TLS."""
    return {
        **env,
        "ALERTS_SMTP_HOST": "127.0.0.1",
        "ALERTS_SMTP_PORT": str(smtp.port),
        "ALERTS_SMTP_SECURITY": "none",
        "ALERTS_EMAIL_FROM": "alerts@example.org",
        "ALERTS_EMAIL_TO": "me@example.org",
        **extra,
    }


def settings_from(env: dict[str, str]) -> Settings:
    """Settings from an explicit mapping, ignoring the real environment's .env."""
    return load_settings(env, env_file=None)


def clean_environ(env: dict[str, str]) -> dict[str, str]:
    """The current environment without ALERTS_* variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ALERTS_")}
    base["PYTHONPATH"] = str(ROOT)
    return {**base, **env}


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m alerts ARGS`` as a separate process and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "alerts", *args],
        env=clean_environ(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``python -m alerts ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "alerts", *args],
        env=clean_environ(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
async def app_factory() -> AsyncIterator[Any]:
    """Open the whole app in-process from an env mapping; closed at the end of the test."""
    stack: list[Any] = []

    async def make(env: dict[str, str], **kwargs: Any) -> App:
        cm = open_app(settings_from(env), **kwargs)
        app = await cm.__aenter__()
        stack.append(cm)
        return app

    yield make
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
