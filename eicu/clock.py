"""Time, injected: the services read the time and wait through a :class:`Clock`.

:data:`SYSTEM_CLOCK` is the real one. :class:`ManualClock` moves only when a test moves it
(or, with ``running=True``, also with real time, for tests where other parts run on the real
clock), so a test of "nothing happens for 30 s" takes milliseconds and a test of "it happens
exactly when its delay is over" can say exactly.

A clock has two readings: ``now_us()``, wall time in microseconds since the epoch (what is stored
and compared with device times; it may step), and ``monotonic_s()``, which never goes back (for
intervals). ``sleep`` and ``wait`` are measured on the clock's own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now_us(self) -> int:
        """Wall time, microseconds since the epoch."""
        ...

    def monotonic_s(self) -> float:
        """Seconds from an arbitrary start; never goes back."""
        ...

    async def sleep(self, delay_s: float) -> None:
        """Return after ``delay_s`` seconds of this clock."""
        ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set (True) or ``timeout_s`` seconds of this clock have
        passed (False)."""
        ...


class SystemClock:
    """The real clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic_s(self) -> float:
        return time.monotonic()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(delay_s, 0.0))

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # comes as the event is set, and the waiting task could not be stopped.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await event.wait()
        return event.is_set()


SYSTEM_CLOCK: SystemClock = SystemClock()


class ManualClock:
    """A clock that moves when told: :meth:`advance` (forward) or :meth:`set_us` (wall time,
    either way, as a real clock may step). Sleepers and waiters whose time has come are woken
    as it moves.

    ``running=True``: it also moves with real time from its creation, and :meth:`advance`
    jumps it ahead (for a test whose other parts stamp messages on the real clock).
    ``autojump=True``: a :meth:`sleep` moves the clock by its own delay and returns at once
    (for code that retries with a backoff). Every requested sleep is kept in :attr:`sleeps`.
    """

    def __init__(
        self, start_us: int | None = None, *, running: bool = False, autojump: bool = False
    ) -> None:
        self._wall_us = time.time_ns() // 1000 if start_us is None else start_us
        self._mono_us = 0
        self._running = running
        self._real_start_s = time.monotonic()
        self._autojump = autojump
        self._timers: list[_Timer] = []  # a heap: the earliest due first
        self._seq = itertools.count()
        self._registered = asyncio.Event()
        self.sleeps: list[float] = []

    # --- readings ---------------------------------------------------------------------------

    def _real_us(self) -> int:
        return int((time.monotonic() - self._real_start_s) * 1e6) if self._running else 0

    def now_us(self) -> int:
        return self._wall_us + self._real_us()

    def monotonic_s(self) -> float:
        return (self._mono_us + self._real_us()) / 1e6

    # --- moving it ----------------------------------------------------------------------------

    def advance(self, delta_s: float) -> None:
        """Move the clock ``delta_s`` seconds forward, waking what has become due."""
        if delta_s < 0:
            raise ValueError(f"a clock advances forward, got {delta_s} s")
        delta_us = round(delta_s * 1e6)
        self._wall_us += delta_us
        self._mono_us += delta_us
        self._wake_due()

    def set_us(self, now_us: int) -> None:
        """Set the wall time; forward, the monotonic reading moves with it (and sleepers due
        wake), backward only the wall time steps back."""
        delta_us = now_us - self.now_us()
        self._wall_us += delta_us
        if delta_us > 0:
            self._mono_us += delta_us
            self._wake_due()

    def _wake_due(self) -> None:
        now = self._mono_us + self._real_us()
        while self._timers and self._timers[0].due_us <= now:
            fut = heapq.heappop(self._timers).fut
            if not fut.done():
                fut.set_result(None)

    # --- waiting ------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """How many tasks wait on this clock now (sleeping, or waiting for an event not set)."""
        return sum(1 for t in self._timers if t.waiting)

    async def until_waiting(self, count: int = 1) -> None:
        """Return once ``count`` tasks wait on this clock: the loops woken by a move have done
        their work and gone back to waiting."""
        while self.waiting < count:
            registered = self._registered
            await registered.wait()

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        if self._autojump:
            self.advance(max(delay_s, 0.0))
            await asyncio.sleep(0)
            return
        await self._until(self.monotonic_s() + delay_s, None)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        return await self._until(self.monotonic_s() + timeout_s, event)

    async def _until(self, due_s: float, event: asyncio.Event | None) -> bool:
        due_us = round(due_s * 1e6)
        loop = asyncio.get_running_loop()
        while True:
            if event is not None and event.is_set():
                return True
            remaining_us = due_us - (self._mono_us + self._real_us())
            if remaining_us <= 0:
                await asyncio.sleep(0)
                return False
            fut: asyncio.Future[None] = loop.create_future()
            heapq.heappush(self._timers, _Timer(due_us, next(self._seq), fut, event))
            waits: set[asyncio.Future[object]] = {fut}  # type: ignore[arg-type]
            setter = None
            if event is not None:
                setter = asyncio.ensure_future(event.wait())
                waits.add(setter)  # type: ignore[arg-type]
            self._registered.set()
            self._registered = asyncio.Event()
            try:
                await asyncio.wait(
                    waits,
                    timeout=remaining_us / 1e6 if self._running else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                if not fut.done():
                    fut.cancel()
                if setter is not None and not setter.done():
                    setter.cancel()


class _Timer:
    """One sleeper or waiter of a :class:`ManualClock`."""

    __slots__ = ("due_us", "event", "fut", "seq")

    def __init__(
        self, due_us: int, seq: int, fut: asyncio.Future[None], event: asyncio.Event | None
    ) -> None:
        self.due_us, self.seq, self.fut, self.event = due_us, seq, fut, event

    def __lt__(self, other: _Timer) -> bool:
        return (self.due_us, self.seq) < (other.due_us, other.seq)

    @property
    def waiting(self) -> bool:
        """Still waiting: not woken, and its event (if any) not set."""
        return not self.fut.done() and (self.event is None or not self.event.is_set())
