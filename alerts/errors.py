"""The exceptions hn-alerts raises.

Every error the package raises on purpose derives from :class:`AlertsError`,
and most also inherit the builtin they resemble, so callers may catch either::

    AlertsError
    ├── ConfigError (ValueError)          invalid settings or usage: exit 2
    ├── StateError (OSError)              the SQLite state DB cannot be used
    ├── FetchError (ConnectionError)      an HN API request failed for good
    │   ├── RetryableFetchError           transport error, timeout, 5xx, 429
    │   │                                 (retried; raised once attempts are spent)
    │   ├── MalformedItemError (+ValueError)  the body was not JSON
    │   └── RejectedFetchError            a 4xx other than 429, never retried
    ├── RenderError (ValueError)          a template failed on an alert
    └── DeliveryError (ConnectionError)   a mail was not accepted
        └── PermanentDeliveryError        the server refused it for good (5xx)
"""

from __future__ import annotations


class AlertsError(Exception):
    """Root of every error hn-alerts raises on purpose."""


class ConfigError(AlertsError, ValueError):
    """Settings or command-line arguments are invalid.

    ``name`` is the ALERTS_* variable or the argument at fault.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class StateError(AlertsError, OSError):
    """The state DB cannot be opened, written or locked."""


class FetchError(AlertsError, ConnectionError):
    """An HN API request failed after its attempts.

    ``kind`` names the failure for the metrics: ``timeout``, ``transport``,
    ``http_429``, ``http_5xx``, ``http_4xx`` or ``malformed``.
    """

    default_kind = "transport"

    def __init__(self, url: str, reason: str, *, kind: str | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.kind = kind or self.default_kind


class RetryableFetchError(FetchError):
    """A transport error, timeout, 5xx or 429: worth another attempt.

    ``retry_after`` holds the server's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(self, url: str, reason: str, retry_after: float | None = None, *, kind: str | None = None) -> None:
        super().__init__(url, reason, kind=kind)
        self.retry_after = retry_after


class MalformedItemError(FetchError, ValueError):
    """The API answered 200 with a body that is not JSON."""

    default_kind = "malformed"


class RejectedFetchError(FetchError):
    """The API answered a 4xx other than 429; asking again will not help."""

    default_kind = "http_4xx"


class RenderError(AlertsError, ValueError):
    """A template could not render an alert."""


class DeliveryError(AlertsError, ConnectionError):
    """A mail was not accepted; it stays in the outbox and is tried again."""


class PermanentDeliveryError(DeliveryError):
    """The SMTP server refused a mail for good (a 5xx reply); never retried."""
