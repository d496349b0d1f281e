"""hn-alerts: email alerts when a Hacker News thread gets busy."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
