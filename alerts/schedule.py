"""A fixed-rate schedule: tick k starts at t0 + k x interval, never overlapping.

The loop clock is read around each tick, so the interval never drifts. A tick
that overruns its slot is logged and the next one starts as soon as it ends;
the schedule then continues at the fixed rate from that moment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def fixed_rate(
    tick: Callable[[], Awaitable[Any]],
    interval: float,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ticks: int | None = None,
) -> None:
    """Call ``tick`` every ``interval`` seconds until cancelled (or ``ticks`` times).

    ``clock`` defaults to the event loop's monotonic clock; ``clock`` and
    ``sleep`` are injectable so tests can run the schedule on virtual time.
    """
    now = clock or asyncio.get_running_loop().time
    anchor = now()
    k = 0
    done = 0
    while ticks is None or done < ticks:
        delay = anchor + k * interval - now()
        if delay > 0:
            await sleep(delay)
        started = now()
        await tick()
        done += 1
        k += 1
        ended = now()
        if ended > anchor + k * interval:
            log.warning(
                "cycle took %.2f s, longer than ALERTS_POLL_INTERVAL=%g s: the next starts now",
                ended - started,
                interval,
            )
            anchor, k = ended, 0
