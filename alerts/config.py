"""Settings: every ALERTS_* variable, read once at the edge into typed values and passed in.

:func:`load_settings` is the one place that reads the environment (and
``./.env``), and it is given both explicitly, so a variable exported in the
shell never leaks into a test; everything else receives a frozen
:class:`Settings`.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from datetime import UTC, time, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field, SecretStr, SkipValidation, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from alerts.errors import ConfigError

# Start-up: every command loads these settings before it does anything, so what only some values
# need (RE2 for a pattern, zoneinfo for a zone, ssl for a CA file, httpx for a URL) is imported where
# it is used, and only when that value is set.

PREFIX = "ALERTS_"
STORY_LISTS = ("topstories", "newstories", "beststories", "askstories", "showstories")
TEMPLATE_NAMES = (
    "alert.subject.txt",
    "alert.txt",
    "alert.html",
    "digest.subject.txt",
    "digest.txt",
    "digest.html",
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_ADDRESS = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.?[^@\s<>\"',;]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class TitlePattern(Protocol):
    """A compiled pattern: ``search`` finds it anywhere in a title."""

    def search(self, text: str) -> object | None:
        """A match object, or ``None``."""
        ...


def compile_title_pattern(pattern: str) -> TitlePattern:
    """Compile ``pattern`` case-insensitively with RE2; ``ValueError`` with RE2's reason if it cannot."""
    import re2

    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # RE2 would print its own line on stderr; ours names the variable
    try:
        compiled: TitlePattern = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"not a pattern RE2 accepts (linear-time syntax, no backreferences or lookaround): {reason}"
        ) from None
    return compiled


def parse_velocity(value: str) -> tuple[int, int]:
    """``"N/M"`` as (N comments, M minutes), both positive integers."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(f"{value!r} is not N/M with two positive integers, e.g. 50/30 (50 comments in 30 minutes)")
    return int(match[1]), int(match[2])


def parse_quiet_hours(value: str) -> tuple[time, time]:
    """``"HH:MM-HH:MM"`` as (start, end); the span may wrap midnight."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", value)
    if match:
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60 and (h1, m1) != (h2, m2):
            return time(h1, m1), time(h2, m2)
    raise ValueError(f"{value!r} is not HH:MM-HH:MM with two different times, e.g. 23:00-07:30")


def parse_http_addr(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as a pair; empty means unset; ``ValueError`` otherwise."""
    text = value.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or _CONTROL.search(host):
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    return host, int(port)


def _split(value: Any) -> Any:
    """Turn a comma list from the environment into a tuple of stripped items."""
    if isinstance(value, str):
        parts = tuple(part.strip() for part in value.split(","))
        if any(not p for p in parts):
            raise ValueError(f"empty item in comma list {value!r}")
        return parts
    return value


def _check_address(value: str) -> str:
    """Return ``value`` if it is one plain address such as ``me@example.com``."""
    from email.utils import parseaddr

    if _CONTROL.search(value):
        raise ValueError(f"{value!r} holds a control character")
    _name, addr = parseaddr(value)
    if not addr or not _ADDRESS.match(addr):
        raise ValueError(f"{value!r} is not an email address")
    text = value.strip()
    # Only "me@example.org" or "Me <me@example.org>": anything else around the address (a ';'
    # list, a second address) would be dropped silently when the mail is sent.
    if text != addr and not (text.endswith(f"<{addr}>") and "<" not in text[: -len(addr) - 2]):
        raise ValueError(f"{value!r} is not one email address (separate recipients with commas)")
    return text


def shipped_templates() -> Path:
    """The templates that ship with the package (wheel) or sit beside it (checkout)."""
    from importlib import resources

    packaged = Path(str(resources.files("alerts"))) / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


class Settings(BaseSettings):
    """Every ALERTS_* setting; see SPEC.md and .env.example for what each means."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values :func:`load_settings` passes in: it reads the environment and ./.env itself."""
        return (init_settings,)

    hn_api_url: str = "https://hacker-news.firebaseio.com/v0"
    story_lists: Annotated[tuple[str, ...], NoDecode] = ("topstories",)
    top_n: int = Field(30, ge=1, le=500)
    comment_threshold: Annotated[tuple[int, ...], NoDecode] = (100,)
    poll_interval: float = Field(60.0, gt=0)
    max_concurrency: int = Field(32, ge=1, le=1000)
    fetch_attempts: int = Field(5, ge=1, le=100)
    fetch_timeout: float = Field(10.0, gt=0)
    fetch_backoff: float = Field(0.5, ge=0)
    max_comments: int = Field(20000, ge=1)
    source: Literal["poll", "stream"] = "poll"
    stream_poll: float = Field(5.0, gt=0)
    stream_catchup: int = Field(20000, ge=0)

    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = Field(60.0, gt=0)
    smtp_ca_file: Path | None = None
    send_attempts: int = Field(3, ge=1, le=100)
    send_backoff: float = Field(1.0, ge=0)
    email_from: str | None = None
    email_to: Annotated[tuple[str, ...], NoDecode] = ()

    state_db: Path = Path("alerts.sqlite3")
    outbox_dir: Path = Path("outbox")
    templates_dir: Path | None = None
    shutdown_timeout: float = Field(30.0, ge=0)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    http_addr: Annotated[tuple[str, int] | None, SkipValidation] = None  # (host, port)

    # Rules beyond one threshold (all off by default).
    min_score: int = Field(0, ge=0)
    # Parsed once here into what the rules use: RE2 patterns (linear time: no pattern can stall the
    # service), (comments, minutes), (start, end) local times, and the zone.
    title_include: Annotated[TitlePattern | None, SkipValidation] = None
    title_exclude: Annotated[TitlePattern | None, SkipValidation] = None
    velocity: Annotated[tuple[int, int] | None, SkipValidation] = None
    baseline: bool = False
    digest: bool = False
    quiet_hours: Annotated[tuple[time, time] | None, SkipValidation] = None
    timezone: Annotated[tzinfo, SkipValidation] = UTC  # a ZoneInfo once ALERTS_TIMEZONE is set

    @field_validator("title_include", "title_exclude", mode="before")
    @classmethod
    def _pattern(cls, value: Any) -> Any:
        return compile_title_pattern(value) if isinstance(value, str) else value

    @field_validator("smtp_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            import ssl

            try:
                ssl.create_default_context().load_verify_locations(cafile=str(value))
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise ValueError(f"cannot load certificate authorities from {value}: {reason}") from None
        return value

    @field_validator("velocity", mode="before")
    @classmethod
    def _velocity(cls, value: Any) -> Any:
        return parse_velocity(value) if isinstance(value, str) else value

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _quiet(cls, value: Any) -> Any:
        return parse_quiet_hours(value) if isinstance(value, str) else value

    @field_validator("timezone", mode="before")
    @classmethod
    def _zone(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from None

    @field_validator("hn_api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        import httpx

        try:
            url = httpx.URL(value)
        except Exception as exc:
            raise ValueError(f"{value!r} is not a URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("story_lists", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        names = _split(value)
        if names == ("all",):
            return names
        if isinstance(names, tuple):
            if "all" in names:
                raise ValueError("'all' already holds every story: give it alone")
            unknown = [n for n in names if n not in STORY_LISTS]
            if unknown:
                raise ValueError(f"unknown list {unknown[0]!r}; choose from {', '.join(STORY_LISTS)}")
            if not names:
                raise ValueError("name at least one list")
            return tuple(dict.fromkeys(names))
        return names

    @field_validator("comment_threshold", mode="before")
    @classmethod
    def _tiers_split(cls, value: Any) -> Any:
        return _split(value) if not isinstance(value, int) else (value,)

    @field_validator("comment_threshold")
    @classmethod
    def _tiers(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("give one count or an ascending comma list such as 50,100,250")
        if any(t < 1 for t in value):
            raise ValueError("tiers must be positive")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"tiers must be strictly ascending, got {','.join(map(str, value))}")
        return value

    @field_validator("email_to", mode="before")
    @classmethod
    def _to_split(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("email_to")
    @classmethod
    def _to(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_address(v) for v in value)

    @field_validator("email_from")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @field_validator("http_addr", mode="before")
    @classmethod
    def _addr(cls, value: Any) -> Any:
        return parse_http_addr(value) if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper()
            if value not in LOG_LEVELS:
                raise ValueError(f"choose from {', '.join(LOG_LEVELS)}")
        return value

    @property
    def sender(self) -> str:
        """The From address: the setting, or ``alerts@localhost`` without SMTP."""
        return self.email_from or "alerts@localhost"

    @property
    def recipients(self) -> tuple[str, ...]:
        """The To addresses: the setting, or ``you@localhost`` without SMTP."""
        return self.email_to or ("you@localhost",)


def _variable(loc: tuple[int | str, ...]) -> str:
    return PREFIX + str(loc[0]).upper() if loc else "settings"


def read_env_file(path: str | None) -> dict[str, str]:
    """The ALERTS_* lines of a ``.env`` file (none when it is absent)."""
    if path is None or not os.path.isfile(path):
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if k.startswith(PREFIX) and v is not None}


def load_settings(env: Mapping[str, str] | None = None, *, env_file: str | None = ".env") -> Settings:
    """Build the settings from ``env`` (default: the process environment) over ``env_file``.

    The environment wins over the file; empty values count as unset.
    Raises :class:`ConfigError` naming the first variable at fault.
    """
    merged = {**read_env_file(env_file), **(os.environ if env is None else env)}
    values: dict[str, Any] = {
        k[len(PREFIX) :].lower(): v for k, v in merged.items() if k.startswith(PREFIX) and v != ""
    }
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        raw = err.get("input")
        shown = f" (got {raw!r})" if isinstance(raw, str | int | float) and str(raw) not in msg else ""
        raise ConfigError(_variable(err["loc"]), msg + shown) from None
    _check_combination(settings)
    return settings


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_combination(s: Settings) -> None:
    if s.story_lists == ("all",) and s.source != "stream":
        raise ConfigError(
            "ALERTS_STORY_LISTS", "'all' (every story on HN) needs ALERTS_SOURCE=stream; the poll source reads lists"
        )
    if s.smtp_host:
        if not s.email_from:
            raise ConfigError("ALERTS_EMAIL_FROM", "required when ALERTS_SMTP_HOST is set")
        if not s.email_to:
            raise ConfigError("ALERTS_EMAIL_TO", "required when ALERTS_SMTP_HOST is set")
    if (s.smtp_username is None) != (s.smtp_password is None):
        missing = "ALERTS_SMTP_PASSWORD" if s.smtp_password is None else "ALERTS_SMTP_USERNAME"
        raise ConfigError(missing, "set both ALERTS_SMTP_USERNAME and ALERTS_SMTP_PASSWORD, or neither")
    if s.smtp_host and s.smtp_username and s.smtp_security == "none" and not _is_loopback(s.smtp_host):
        raise ConfigError(
            "ALERTS_SMTP_SECURITY",
            f"'none' would send the password in clear text to {s.smtp_host}; use starttls or tls"
            " (a login without TLS is allowed only to a loopback address)",
        )
    if s.state_db.is_dir():
        raise ConfigError(
            "ALERTS_STATE_DB", f"{s.state_db} is a folder; name a file such as {s.state_db}/alerts.sqlite3"
        )
    if not s.smtp_host and s.outbox_dir.exists() and not s.outbox_dir.is_dir():
        raise ConfigError("ALERTS_OUTBOX_DIR", f"{s.outbox_dir} exists and is not a folder")
    if s.templates_dir is not None and not s.templates_dir.is_dir():
        raise ConfigError("ALERTS_TEMPLATES_DIR", f"{s.templates_dir} is not a folder")


def unknown_variables(*sources: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """ALERTS_* names in ``sources`` that are no setting (likely typos), each with the closest valid name."""
    known = sorted(PREFIX + name.upper() for name in Settings.model_fields)
    names = sorted({k for source in sources for k in source if k.startswith(PREFIX) and k not in known})
    if not names:
        return []
    import difflib

    return [(name, next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.6)), None)) for name in names]
