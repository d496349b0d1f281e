"""Title patterns that cannot stall the service: RE2, which matches in linear time.

Python's ``re`` backtracks, so a pattern such as ``(a+)+$`` against a long
title can hold the event loop for ever (SIGTERM included). RE2 guarantees
time linear in the title's length and has no backtracking features; a
pattern that uses them (backreferences, lookaround) is refused at start-up
with RE2's reason, instead of being run under a timeout per title.
"""

from __future__ import annotations

from typing import Protocol

import re2


class TitlePattern(Protocol):
    """A compiled pattern: ``search`` finds it anywhere in a title."""

    def search(self, text: str) -> object | None:
        """A match object, or ``None``."""
        ...


def compile_title_pattern(pattern: str) -> TitlePattern:
    """Compile ``pattern`` case-insensitively with RE2; ``ValueError`` with RE2's reason if it cannot."""
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
