"""Settings: defaults, parsing, and one clear line naming the variable for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.config import load_settings
from alerts.errors import ConfigError
from tests.conftest import run_cli, start_cli, wait_for
from tests.fakehn import FakeHN


def test_defaults_match_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing set, every setting has SPEC.md's default and mail goes to .eml files."""
    monkeypatch.chdir(tmp_path)
    s = load_settings({}, env_file=None)
    assert s.hn_api_url == "https://hacker-news.firebaseio.com/v0"
    assert s.story_lists == ("topstories",)
    assert (s.top_n, s.comment_threshold, s.poll_interval) == (30, (100,), 60.0)
    assert (s.max_concurrency, s.fetch_attempts, s.fetch_timeout, s.max_comments) == (32, 5, 10.0, 20000)
    assert (s.smtp_host, s.smtp_port, s.smtp_security) == (None, 587, "starttls")
    assert (s.sender, s.recipients) == ("alerts@localhost", ("you@localhost",))
    assert (s.state_db, s.outbox_dir) == (Path("alerts.sqlite3"), Path("outbox"))
    assert (s.shutdown_timeout, s.log_level, s.smtp_timeout, s.smtp_ca_file) == (30.0, "INFO", 60.0, None)
    assert (s.send_attempts, s.send_backoff, s.fetch_backoff, s.templates_dir) == (3, 1.0, 0.5, None)


def test_lists_and_tiers_parse_from_comma_lists() -> None:
    """Comma lists are split and trimmed; repeated list names are dropped."""
    s = load_settings(
        {
            "ALERTS_STORY_LISTS": "topstories, askstories,topstories",
            "ALERTS_COMMENT_THRESHOLD": "50, 100,250",
            "ALERTS_EMAIL_TO": "a@example.org, b@example.org",
            "ALERTS_POLL_INTERVAL": "0.5",
        },
        env_file=None,
    )
    assert s.story_lists == ("topstories", "askstories")
    assert s.comment_threshold == (50, 100, 250)
    assert s.recipients == ("a@example.org", "b@example.org")
    assert s.poll_interval == 0.5


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    """./.env supplies settings; a variable set in the environment overrides it."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("ALERTS_TOP_N=7\nALERTS_POLL_INTERVAL=5\n")
    s = load_settings({"ALERTS_POLL_INTERVAL": "9"}, env_file=str(dotenv))
    assert (s.top_n, s.poll_interval) == (7, 9.0)


def test_password_never_prints() -> None:
    """The SMTP password is a secret: repr and str of the settings do not show it."""
    s = load_settings({"ALERTS_SMTP_USERNAME": "u", "ALERTS_SMTP_PASSWORD": "hunter2-secret"}, env_file=None)
    assert "hunter2-secret" not in repr(s) and "hunter2-secret" not in str(s)


BAD = [
    ("ALERTS_TOP_N", "abc"),
    ("ALERTS_TOP_N", "0"),
    ("ALERTS_POLL_INTERVAL", "0"),
    ("ALERTS_POLL_INTERVAL", "-3"),
    ("ALERTS_MAX_CONCURRENCY", "0"),
    ("ALERTS_FETCH_ATTEMPTS", "0"),
    ("ALERTS_FETCH_TIMEOUT", "fast"),
    ("ALERTS_MAX_COMMENTS", "-1"),
    ("ALERTS_COMMENT_THRESHOLD", "100,50"),
    ("ALERTS_COMMENT_THRESHOLD", "100;250"),
    ("ALERTS_COMMENT_THRESHOLD", "100,100"),
    ("ALERTS_COMMENT_THRESHOLD", "ten"),
    ("ALERTS_COMMENT_THRESHOLD", "0"),
    ("ALERTS_STORY_LISTS", "topstories,hotstories"),
    ("ALERTS_HN_API_URL", "ftp://example.org/v0"),
    ("ALERTS_HN_API_URL", "not a url"),
    ("ALERTS_SMTP_PORT", "70000"),
    ("ALERTS_SMTP_SECURITY", "ssl"),
    ("ALERTS_EMAIL_TO", "me@example.org,not-an-address"),
    ("ALERTS_EMAIL_FROM", "nobody"),
    ("ALERTS_SHUTDOWN_TIMEOUT", "-1"),
    ("ALERTS_LOG_LEVEL", "LOUD"),
    ("ALERTS_TEMPLATES_DIR", "/nonexistent/templates"),
    ("ALERTS_EMAIL_TO", "me@example.org\x07"),
    ("ALERTS_EMAIL_TO", "me\x1b[31m@example.org"),
    ("ALERTS_EMAIL_TO", "me@exa\tmple.org"),
    ("ALERTS_EMAIL_TO", "me\x85@example.org"),
    ("ALERTS_EMAIL_TO", "me@example.org;you@example.org"),  # a ';' list would lose all but the first
    ("ALERTS_EMAIL_TO", "Me <me@example.org> <you@example.org>"),
    ("ALERTS_EMAIL_FROM", "alerts@example.org\x7f"),
    ("ALERTS_SMTP_CA_FILE", "/nonexistent/ca.pem"),
    ("ALERTS_TITLE_INCLUDE", "(a)\\1"),
    ("ALERTS_TITLE_EXCLUDE", "(?<=x)y"),
    ("ALERTS_SOURCE", "firehose"),
    ("ALERTS_STORY_LISTS", "all"),  # the poll source reads lists: every story needs the stream
    ("ALERTS_STORY_LISTS", "all,topstories"),
    ("ALERTS_STREAM_POLL", "0"),
    ("ALERTS_STREAM_CATCHUP", "-1"),
    ("ALERTS_HTTP_ADDR", "8080"),
    ("ALERTS_HTTP_ADDR", "localhost:"),
    ("ALERTS_HTTP_ADDR", ":8080"),
    ("ALERTS_HTTP_ADDR", "localhost:99999"),
    ("ALERTS_HTTP_ADDR", "local\nhost:8080"),
    ("ALERTS_LOG_FORMAT", "xml"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    """Each bad value raises ConfigError naming its ALERTS_* variable."""
    with pytest.raises(ConfigError) as info:
        load_settings({name: value}, env_file=None)
    assert info.value.name == name


def test_smtp_needs_from_and_to() -> None:
    """With ALERTS_SMTP_HOST set, a missing sender or recipient list is named."""
    with pytest.raises(ConfigError) as info:
        load_settings({"ALERTS_SMTP_HOST": "smtp.example.org"}, env_file=None)
    assert info.value.name == "ALERTS_EMAIL_FROM"
    with pytest.raises(ConfigError) as info:
        load_settings({"ALERTS_SMTP_HOST": "smtp.example.org", "ALERTS_EMAIL_FROM": "a@example.org"}, env_file=None)
    assert info.value.name == "ALERTS_EMAIL_TO"


def test_login_needs_both_halves() -> None:
    """A username without a password (or the reverse) is a settings error."""
    with pytest.raises(ConfigError) as info:
        load_settings({"ALERTS_SMTP_USERNAME": "u"}, env_file=None)
    assert info.value.name == "ALERTS_SMTP_PASSWORD"


@pytest.mark.parametrize(
    ("name", "value"),
    [("ALERTS_TOP_N", "many"), ("ALERTS_COMMENT_THRESHOLD", "250,100"), ("ALERTS_SMTP_SECURITY", "tls1")],
)
@pytest.mark.parametrize("command", [["run", "--once"], ["check", "1"], ["test-email"]])
def test_cli_exits_2_with_one_line(tmp_path: Path, name: str, value: str, command: list[str]) -> None:
    """Every command exits 2 on a bad setting, with one stderr line naming it and no traceback."""
    result = run_cli(command, {name: value}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_setting_in_dotenv_exits_2(tmp_path: Path) -> None:
    """A bad value in ./.env is reported like one in the environment."""
    (tmp_path / ".env").write_text("ALERTS_MAX_CONCURRENCY=lots\n")
    result = run_cli(["run", "--once"], {}, tmp_path)
    assert result.returncode == 2
    assert "ALERTS_MAX_CONCURRENCY" in result.stderr and "Traceback" not in result.stderr


def test_an_exported_variable_changes_no_explicit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_settings(env) reads only ``env``: a variable exported in the shell does not leak in."""
    monkeypatch.setenv("ALERTS_TOP_N", "5")
    monkeypatch.setenv("ALERTS_DIGEST", "true")
    s = load_settings({}, env_file=None)
    assert (s.top_n, s.digest) == (30, False)
    assert load_settings(None, env_file=None).top_n == 5  # the process environment, read only when asked


def test_a_login_over_clear_text_is_refused_unless_loopback() -> None:
    """ALERTS_SMTP_SECURITY=none with a login: exit-2 error for a remote host, allowed on loopback."""
    login = {"ALERTS_SMTP_USERNAME": "u", "ALERTS_SMTP_PASSWORD": "p", "ALERTS_SMTP_SECURITY": "none"}
    mail = {"ALERTS_EMAIL_FROM": "a@example.org", "ALERTS_EMAIL_TO": "b@example.org"}
    with pytest.raises(ConfigError) as info:
        load_settings({**login, **mail, "ALERTS_SMTP_HOST": "smtp.example.org"}, env_file=None)
    assert info.value.name == "ALERTS_SMTP_SECURITY"
    for host in ("127.0.0.1", "localhost", "::1", "127.5.5.5"):
        assert load_settings({**login, **mail, "ALERTS_SMTP_HOST": host}, env_file=None).smtp_host == host
    remote_tls = {**login, **mail, "ALERTS_SMTP_HOST": "smtp.example.org", "ALERTS_SMTP_SECURITY": "starttls"}
    assert load_settings(remote_tls, env_file=None).smtp_security == "starttls"


def test_typos_in_the_environment_and_in_dotenv_are_warned_with_the_closest_name(tmp_path: Path) -> None:
    """An unknown ALERTS_* name, in the environment or in ./.env, is warned about with the nearest valid one."""
    (tmp_path / ".env").write_text("ALERTS_COMENT_THRESHOLD=50\nALERTS_STATE_DB=state.sqlite3\n")
    result = run_cli(["outbox"], {"ALERTS_SMTP_HOTS": "x", "ALERTS_ZZZ": "1"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ALERTS_COMENT_THRESHOLD is not a setting of this version" in result.stderr
    assert "did you mean ALERTS_COMMENT_THRESHOLD?" in result.stderr
    assert "ALERTS_SMTP_HOTS" in result.stderr and "did you mean ALERTS_SMTP_HOST?" in result.stderr
    assert "ALERTS_ZZZ is not a setting" in result.stderr


def test_a_backtracking_title_pattern_cannot_stall_the_service(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """A pattern that backtracks for ever in Python's re runs in linear time on a long hostile title."""
    from tests import trees

    hn.add_story(1, trees.wide(1_000, 120), title="a" * 100_000 + "!")
    hn.add_story(2, trees.wide(2_000, 120), title="a" * 30)
    hn.set_list("topstories", [1, 2])
    result = run_cli(["run", "--once"], {**env, "ALERTS_TITLE_INCLUDE": "^(a+)+$"}, tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "outbox").glob("*.eml")) == ["2-tier-100.eml"]


def catches_sigterm(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (the kernel's SigCgt mask, bit 15)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (15 - 1)))
    return False


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.15, 0.3])
def test_a_signal_during_start_up_exits_0_with_one_line(env: dict[str, str], tmp_path: Path, delay: float) -> None:
    """SIGINT or SIGTERM at any moment of start-up (once Python runs our code): exit 0, no traceback."""
    import signal
    import subprocess
    import time

    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = start_cli(["run"], {**env, "ALERTS_POLL_INTERVAL": "3600"}, tmp_path)
        pid = proc.pid
        wait_for(lambda: catches_sigterm(pid), what="the interpreter to run our first line")  # noqa: B023
        time.sleep(delay)  # a moment of start-up to interrupt; every moment must behave the same
        proc.send_signal(sig)
        try:
            _out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, (sig, delay, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        if "hn-alerts 0.1.0:" not in err:  # stopped before the service began: one line says so
            assert err.count("\n") == 1 and "during start-up" in err, err
