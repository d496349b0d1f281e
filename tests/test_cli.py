"""The other commands: check, test-email, --version, --help, usage errors."""

from __future__ import annotations

import json
from pathlib import Path

from alerts import __version__
from tests import trees
from tests.conftest import run_cli, with_smtp
from tests.fakehn import FakeHN
from tests.smtpserver import SmtpServer


def test_check_prints_count_fetches_and_time(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """`alerts check ID` prints the live count and the requests made."""
    tree = trees.generated(100, live=72, dead=4, deleted=2, depth=5, seed=9)
    hn.add_story(8863, tree, title="My YC app: Dropbox")
    result = run_cli(["check", "8863"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Post 8863 has 72 comments ({1 + tree.comments} fetches, ")


def test_check_json(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """`--json` prints one object with id, title, comments, fetches (retries included) and seconds."""
    story, tree = trees.from_shared("hn-thread-26312516")
    hn.put_story(story, tree)
    hn.fail("/v0/item/26312516.json", times=1, status=503)
    result = run_cli(["check", "26312516", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"id", "title", "comments", "fetches", "seconds"}
    assert (data["id"], data["title"], data["comments"]) == (26312516, "Speed Is the Killer Feature", 485)
    assert data["fetches"] == 2 + 485
    assert data["seconds"] > 0


def test_check_unknown_item_exits_1(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """An id the API answers null for is an error, exit 1."""
    result = run_cli(["check", "424242"], env, tmp_path)
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_check_incomplete_walk_exits_1(hn: FakeHN, env: dict[str, str], tmp_path: Path) -> None:
    """When an item cannot be fetched the count is printed as a lower bound and the exit is 1."""
    hn.add_story(5, trees.wide(500, 10))
    hn.fail("/v0/item/503.json", times=10, status=500)
    result = run_cli(["check", "5"], env, tmp_path)
    assert result.returncode == 1
    assert "Post 5 has 9 comments" in result.stdout
    assert "lower bound" in result.stderr


def test_check_api_down_exits_1_without_traceback(env: dict[str, str], tmp_path: Path) -> None:
    """An unreachable API is one error line and exit 1."""
    result = run_cli(["check", "1"], {**env, "ALERTS_HN_API_URL": "http://127.0.0.1:9/v0"}, tmp_path)
    assert result.returncode == 1
    assert "not read" in result.stderr and "Traceback" not in result.stderr


def test_test_email_over_smtp(smtp: SmtpServer, env: dict[str, str], tmp_path: Path) -> None:
    """`alerts test-email` sends one sample alert to the configured recipients."""
    result = run_cli(["test-email"], with_smtp(env, smtp), tmp_path)
    assert result.returncode == 0, result.stderr
    [mail] = smtp.received
    assert mail.rcpt_tos == ["me@example.org"]
    assert "hn-alerts test mail" in str(mail.message["Subject"])


def test_test_email_without_smtp_writes_eml(env: dict[str, str], tmp_path: Path) -> None:
    """Without SMTP the sample alert becomes an .eml file."""
    result = run_cli(["test-email"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_test_email_smtp_down_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    """A dead SMTP server is one error line and exit 1."""
    dead = SmtpServer()
    result = run_cli(["test-email"], with_smtp(env, dead), tmp_path)
    assert result.returncode == 1
    assert "test mail not sent" in result.stderr and "Traceback" not in result.stderr


def test_version_and_help(tmp_path: Path) -> None:
    """--version prints the version; --help lists the commands."""
    version = run_cli(["--version"], {}, tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"alerts {__version__}")
    helped = run_cli(["--help"], {}, tmp_path)
    assert helped.returncode == 0
    for command in ("run", "check", "test-email"):
        assert command in helped.stdout


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    """A bad argument exits 2 with one line naming it."""
    for args, name in ((["check", "abc"], "ITEM_ID"), (["frobnicate"], "COMMAND"), ([], "COMMAND")):
        result = run_cli(args, {}, tmp_path)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and name in result.stderr
