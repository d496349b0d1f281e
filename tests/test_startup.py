"""Start-up: each command imports only what it needs, and the shared HTTP client skips work no request needs."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from alerts.config import load_settings
from alerts.http import Client, Transport, make_client
from tests import trees
from tests.conftest import clean_environ
from tests.fakehn import FakeHN

#: Run the CLI in a fresh interpreter, then write what it imported and how many verified TLS contexts
#: (those that load the certificate authorities) httpx built.
PROBE = """
import json, sys
import httpx
built = []
real = httpx.create_ssl_context
httpx.create_ssl_context = lambda **k: (k.get("verify", True) is True and built.append(1)) or real(**k)
from alerts.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules), "tls_contexts": len(built)}, out)
"""

#: What only `alerts run`, `test-email` and the outbox commands use: mail, templates, SMTP, the state DB
#: (`alerts.app` itself is light: the service's modules load only in the functions that build them).
NOT_FOR_CHECK = (
    "jinja2",
    "aiosmtplib",
    "sqlite3",
    "alerts.mail",
    "alerts.delivery",
    "alerts.outbox",
    "alerts.store",
    "alerts.service",
)


def probe(args: list[str], env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """Run ``alerts ARGS`` under :data:`PROBE` in a new process; what it imported, built and returned."""
    report = tmp_path / "probe.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        env=clean_environ(env),
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def test_check_imports_no_mail_state_or_pattern_module(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """`alerts check` loads none of jinja2, aiosmtplib, SQLite, the service's modules or RE2, and no TLS for http://."""
    hn.add_story(8863, trees.wide(3, 2))
    result = probe(["check", "8863"], env, tmp_path)
    assert result["code"] == 0
    assert [m for m in NOT_FOR_CHECK if m in result["modules"]] == []
    assert "re2" not in result["modules"]
    assert {"alerts.hn", "alerts.http", "alerts.walk"} <= set(result["modules"])
    assert result["tls_contexts"] == 0


def test_check_of_an_https_api_builds_its_tls_context(env: dict[str, str], tmp_path: Path) -> None:
    """An https:// API still gets httpx's verified TLS context (the request itself fails here: nothing listens)."""
    https = {**env, "ALERTS_HN_API_URL": "https://127.0.0.1:9/v0", "ALERTS_FETCH_ATTEMPTS": "1"}
    result = probe(["check", "1"], https, tmp_path)
    assert result["code"] == 1
    assert result["tls_contexts"] == 1


def test_a_title_pattern_loads_re2_only_when_set(tmp_path: Path) -> None:
    """Settings without ALERTS_TITLE_* never import RE2; with one, the pattern is compiled by RE2."""
    code = (
        "import sys; from alerts.config import load_settings; load_settings({}, env_file=None);"
        " print('re2' in sys.modules);"
        " s = load_settings({'ALERTS_TITLE_INCLUDE': 'rust'}, env_file=None);"
        " print('re2' in sys.modules, bool(s.title_include.search('Rust 2.0')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_environ({}), cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == ["False", "True True"]


def test_the_zone_is_utc_unless_set() -> None:
    """Without ALERTS_TIMEZONE the quiet hours are read in UTC; a name set gives that IANA zone."""
    assert load_settings({}, env_file=None).timezone is UTC
    assert load_settings({"ALERTS_TIMEZONE": "Europe/Berlin"}, env_file=None).timezone == ZoneInfo("Europe/Berlin")


async def test_a_client_without_tls_refuses_https() -> None:
    """A client made with tls=False refuses an https:// URL instead of sending it over an unverified context."""
    async with make_client(4, tls=False) as client:
        with pytest.raises(httpx.UnsupportedProtocol, match="without TLS"):
            await client.get("https://127.0.0.1:9/v0/item/1.json")


def test_a_client_without_tls_loads_no_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transport(tls=False) loads no certificate authorities (the start-up cost saved); its context trusts no one."""
    asked: list[object] = []
    real = httpx.create_ssl_context

    def spy(**kwargs: Any) -> ssl.SSLContext:
        asked.append(kwargs["verify"])
        return real(**kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", spy)
    Transport(4, tls=False)
    Transport(4)
    without, default = asked
    assert isinstance(without, ssl.SSLContext)
    assert (without.verify_mode, without.check_hostname, without.get_ca_certs()) == (ssl.CERT_REQUIRED, True, [])
    assert default is True  # httpx's verified context, as before


async def test_cookies_are_kept_as_httpx_keeps_them() -> None:
    """The shared client stores a cookie a response sets and sends it on, as httpx does."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        if request.url.path == "/set":
            return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"}, json=None)
        return httpx.Response(200, json=None)

    async with Client(transport=httpx.MockTransport(handler), cookies={"given": "1"}) as client:
        assert isinstance(client, httpx.AsyncClient)
        await client.get("http://api.test/plain")
        assert dict(client.cookies) == {"given": "1"}
        await client.get("http://api.test/set")
        await client.get("http://api.test/after")
        assert dict(client.cookies) == {"given": "1", "session": "abc"}
        client.cookies = {"replaced": "2"}
        await client.get("http://api.test/set")
        assert dict(client.cookies) == {"replaced": "2", "session": "abc"}
    assert seen[0] == "given=1"
    assert seen[2] is not None and "session=abc" in seen[2]
