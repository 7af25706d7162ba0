"""The injected clock: the real one, and the test clock that moves only when told."""

from __future__ import annotations

import asyncio
import time

import pytest

from eicu.clock import SYSTEM_CLOCK, Clock, ManualClock

T0_US = 1_780_000_000_000_000


def test_the_system_clock_reads_real_time() -> None:
    before = time.time_ns() // 1000
    now_us = SYSTEM_CLOCK.now_us()
    assert before <= now_us <= time.time_ns() // 1000
    assert SYSTEM_CLOCK.monotonic_s() <= time.monotonic()


async def test_the_system_clock_waits_for_an_event_or_its_timeout() -> None:
    event = asyncio.Event()
    assert not await SYSTEM_CLOCK.wait(event, 0.01)
    asyncio.get_running_loop().call_soon(event.set)
    assert await SYSTEM_CLOCK.wait(event, 60.0)


async def test_a_sleeper_wakes_when_the_clock_reaches_its_time_and_not_before() -> None:
    clock = ManualClock(T0_US)
    woke: list[int] = []

    async def sleeper() -> None:
        await clock.sleep(30.0)
        woke.append(clock.now_us())

    task = asyncio.create_task(sleeper())
    await clock.until_waiting()
    clock.advance(29.999)
    await asyncio.sleep(0)
    assert clock.waiting == 1 and not woke
    clock.advance(0.001)
    assert clock.waiting == 0  # woken at once, before it has run
    await task
    assert woke == [T0_US + 30_000_000]
    assert clock.sleeps == [30.0]


async def test_a_waiter_returns_on_its_event_or_on_its_timeout() -> None:
    clock = ManualClock(T0_US)
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, 5.0))
    await clock.until_waiting()
    event.set()
    assert clock.waiting == 0  # a set event is no longer waited for
    assert await waiter
    event.clear()
    waiter = asyncio.create_task(clock.wait(event, 5.0))
    await clock.until_waiting()
    clock.advance(5.0)
    assert not await waiter


async def test_the_wall_time_may_step_back_the_monotonic_reading_never() -> None:
    clock = ManualClock(T0_US)
    clock.set_us(T0_US + 2_000_000)
    assert (clock.now_us(), clock.monotonic_s()) == (T0_US + 2_000_000, 2.0)
    clock.set_us(T0_US - 1_000_000)
    assert (clock.now_us(), clock.monotonic_s()) == (T0_US - 1_000_000, 2.0)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1.0)


async def test_autojump_moves_the_clock_by_each_sleep() -> None:
    clock = ManualClock(T0_US, autojump=True)
    await clock.sleep(0.5)
    await clock.sleep(8.0)
    assert clock.now_us() == T0_US + 8_500_000
    assert clock.sleeps == [0.5, 8.0]


async def test_a_running_clock_follows_real_time_and_jumps_ahead() -> None:
    clock = ManualClock(T0_US, running=True)
    event = asyncio.Event()
    assert not await clock.wait(event, 0.02)  # real time passes on a running clock
    assert clock.now_us() >= T0_US + 20_000
    sleeper = asyncio.create_task(clock.sleep(3600.0))
    await clock.until_waiting()
    clock.advance(3600.0)
    await asyncio.wait_for(sleeper, 5.0)
    assert clock.now_us() >= T0_US + 3_600_020_000


def test_both_clocks_are_clocks() -> None:
    clocks: list[Clock] = [SYSTEM_CLOCK, ManualClock()]
    assert all(c.now_us() > T0_US // 2 for c in clocks)
