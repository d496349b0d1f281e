"""Live growth for the fake HN API: comments arriving in real time, each one recorded.

A :class:`Growth` adds comments to some stories of a :class:`~tests.fakehn.FakeHN`
at a steady rate, from a background thread, through
:meth:`FakeHN.create_item` (so ids follow the one shared sequence, ``kids``
and ``descendants`` are updated and open event streams get a ``put``). It
records each new comment's id, story, parent and creation time, so a test or
a benchmark can tell how long the service took to notice it::

    with Growth(hn, [1, 2], rate=20, limit=100) as growth:
        growth.wait(100)
    for c in growth.created:
        latency = seen_at[c.id] - c.monotonic

``monotonic`` is ``time.monotonic()`` (CLOCK_MONOTONIC: comparable across
processes on one Linux machine), ``wall`` is ``time.time()``; both are taken
under the server's lock just before the item is added, so no client can see
the item earlier than its recorded time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.fakehn import FakeHN


@dataclass(frozen=True)
class Created:
    """One comment the growth added."""

    id: int
    story: int
    parent: int
    dead: bool
    monotonic: float
    wall: float


class Growth:
    """Grow ``stories`` of ``hn`` by ``rate`` comments a second in all, in a background thread.

    Each comment goes to a story drawn at random; with ``reply_chance`` it
    answers one of that story's comments made by this growth (else the story
    itself); with ``dead_chance`` it is ``dead`` (kept in ``kids``, not
    counted in ``descendants``). ``limit`` stops it after that many comments.
    Draws come from ``random.Random(seed)``. Comments go out on a fixed
    schedule (start + k / rate), not sleep-after-create, so the rate holds
    under load; :meth:`stop` ends the thread at once and joins it.
    """

    def __init__(
        self,
        hn: FakeHN,
        stories: Sequence[int],
        rate: float,
        *,
        reply_chance: float = 0.5,
        dead_chance: float = 0.0,
        limit: int | None = None,
        seed: int = 0,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 comments a second")
        if not stories:
            raise ValueError("no stories to grow")
        with hn.lock:
            missing = [s for s in stories if hn.items.get(s) is None]
        if missing:
            raise KeyError(f"stories not in the fake API: {missing}")
        self.hn = hn
        self.stories = list(stories)
        self.rate = rate
        self.reply_chance = reply_chance
        self.dead_chance = dead_chance
        self.limit = limit
        self._rng = random.Random(seed)
        self._created: list[Created] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.started_at: float | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Growth:
        """Start the growth thread; returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("Growth already started")
        self._thread = threading.Thread(target=self._run, name="fakehn-growth", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> list[Created]:
        """Stop growing, join the thread and return what was created; re-raises an error of the thread.

        No comment is created after it returns. Idempotent.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError(f"growth thread did not stop within {timeout} s")
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("growth thread failed") from error
        return self.created

    def __enter__(self) -> Growth:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the thread is still creating comments (not stopped, limit not reached)."""
        return self._thread is not None and self._thread.is_alive()

    # -- observation ---------------------------------------------------------

    @property
    def created(self) -> list[Created]:
        """The comments created so far, in creation (and id) order."""
        with self._lock:
            return list(self._created)

    def created_for(self, story: int) -> list[Created]:
        """The comments created so far in one story."""
        return [c for c in self.created if c.story == story]

    def live_for(self, story: int) -> int:
        """How many live (not dead) comments it added to one story."""
        return sum(1 for c in self.created if c.story == story and not c.dead)

    def wait(self, n: int, timeout: float = 20.0) -> list[Created]:
        """Block until ``n`` comments exist (``TimeoutError`` after ``timeout``, or if the thread ended first)."""
        with self._lock:
            ok = self._lock.wait_for(
                lambda: len(self._created) >= n or self._error is not None or self._stop.is_set(), timeout
            )
            if not ok or len(self._created) < n:
                raise TimeoutError(f"{n} comments not created (have {len(self._created)})") from self._error
            return list(self._created)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._grow()
        except BaseException as exc:  # noqa: BLE001 - handed to the test: stop() and wait() re-raise it
            with self._lock:
                self._error = exc
                self._lock.notify_all()

    def _grow(self) -> None:
        period = 1.0 / self.rate
        start = self.started_at = time.monotonic()
        replies_to: dict[int, list[int]] = {story: [] for story in self.stories}
        k = 0
        while self.limit is None or k < self.limit:
            k += 1
            due = start + k * period
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if time.monotonic() - due > 1.0:  # fell far behind (a stopped process?): no burst, restart the schedule
                start, k = time.monotonic() - period, 1
            story = self._rng.choice(self.stories)
            earlier = replies_to[story]
            parent = self._rng.choice(earlier) if earlier and self._rng.random() < self.reply_chance else story
            dead = self._rng.random() < self.dead_chance
            with self.hn.lock:
                mono, wall = time.monotonic(), time.time()
                item_id = self.hn.create_item(parent, by="grower", dead=dead, time=int(wall))
            earlier.append(item_id)
            with self._lock:
                self._created.append(Created(item_id, story, parent, dead, mono, wall))
                self._lock.notify_all()
        with self._lock:
            self._stop.set()  # limit reached: wait() stops waiting
            self._lock.notify_all()
