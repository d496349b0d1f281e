"""Signals that arrive before the event loop takes them over: remembered, then acted on.

Raising ``KeyboardInterrupt`` from a signal handler can land anywhere,
inside an import or a finalizer where it is swallowed, and the signal is
lost. Start-up is short and reads nothing from the network, so instead the
signal is only remembered here, and the service stops (exit 0, one line) as
soon as the event loop runs and sees it.
"""

from __future__ import annotations

import signal
from types import FrameType

#: The signals received so far, in order.
received: list[signal.Signals] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    received.append(signal.Signals(signum))


def catch_early_signals() -> None:
    """Remember SIGINT and SIGTERM from now until the event loop installs its own handlers."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _remember)


def restore_default_signals() -> None:
    """Back to Python's defaults (SIGINT raises ``KeyboardInterrupt``), for the short commands."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
