"""The store, against a real PostgreSQL server and against SQLite, through one interface."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from eicu.models import (
    Batch,
    BedKey,
    DeadLetter,
    NumericsFrame,
    SignalBlock,
    StatusFrame,
    WaveformFrame,
)
from eicu.store import Store, open_store
from eicu.store.segments import decode_blocks, encode_blocks

BED = BedKey("karamay", "bed01")
OTHER = BedKey("karamay", "bed02")


def _now_us() -> int:
    return int(time.time() * 1e6) // 1_000_000 * 1_000_000 - 600_000_000


def _frames(t0_us: int, n_frames: int = 8) -> tuple[list[WaveformFrame], list[NumericsFrame]]:
    rng = np.random.default_rng(1)
    waves = []
    for i in range(n_frames):
        t = t0_us + i * 200_000
        waves.append(
            WaveformFrame(
                BED,
                i,
                t,
                (
                    SignalBlock(
                        "ECG_II", 250.0, 200.0, 0, rng.integers(-900, 900, 50).astype(np.int16)
                    ),
                    SignalBlock(
                        "PLETH", 125.0, 100.0, 5, rng.integers(0, 900, 25).astype(np.int16)
                    ),
                ),
                received_us=t + 1000,
            )
        )
    numerics = [
        NumericsFrame(BED, i, t0_us + i * 1_000_000, {"HR": 70.0 + i, "SPO2": None, "ACVPU": 0.0})
        for i in range(3)
    ] + [NumericsFrame(OTHER, 0, t0_us, {"RR": 18.0})]
    return waves, numerics


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgresql":
        url = request.getfixturevalue("db_url")
    else:
        url = f"sqlite:///{tmp_path / 'eicu.sqlite'}"
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


def test_container_round_trip_is_lossless() -> None:
    waves, _ = _frames(_now_us(), 1)
    assert decode_blocks(encode_blocks(waves[0].blocks)) == waves[0].blocks


async def test_write_is_idempotent_and_stats_count_every_sample(store: Store) -> None:
    t0 = _now_us()
    waves, numerics = _frames(t0)
    batch = Batch(
        numerics=numerics,
        waveforms=waves,
        statuses=[StatusFrame("karamay", "online", t0, bed="bed01", received_us=t0)],
        dead_letters=[DeadLetter(t0, "eicu/v1/x/y/numerics", "malformed", "not JSON", b"{")],
    )
    await store.write(batch)
    await store.write(batch)  # a retry after an uncertain commit
    stats = await store.stats()
    assert stats == {
        "beds": {
            "karamay/bed01": {"messages": 8 + 3, "samples": 8 * 75 + 3 * 3},
            "karamay/bed02": {"messages": 1, "samples": 1},
        }
    }
    assert await store.dead_letter_counts() == {"malformed": 1}


async def test_queries(store: Store) -> None:
    t0 = _now_us()
    waves, numerics = _frames(t0)
    await store.write(Batch(numerics=numerics, waveforms=waves))

    latest = await store.latest()
    assert latest[BED]["HR"].value == 72.0 and latest[BED]["HR"].ts_us == t0 + 2_000_000
    assert latest[BED]["SPO2"].value is None  # the monitor said "no valid value"
    assert latest[OTHER]["RR"].value == 18.0

    window = await store.waveform(BED, "ECG_II", t0, t0 + 2_000_000)
    assert window.values.shape[0] == 8 * 50
    expected = np.concatenate([w.blocks[0].physical() for w in waves])
    assert window.fs_hz == 250.0
    np.testing.assert_array_equal(window.values, expected)
    assert window.t_us[0] == t0 and np.all(np.diff(window.t_us) == 4000)

    part = await store.waveform(BED, "PLETH", t0 + 500_000, t0 + 1_000_000)
    assert part.values.shape[0] == 62 and part.t_us[0] == t0 + 504_000

    trend = await store.trend(BED, "HR", t0 - 60_000_000, t0 + 120_000_000)
    assert sum(p.n for p in trend) == 3
    assert min(p.min for p in trend if p.min is not None) == 70.0


async def test_numerics_in_a_window_oldest_first(store: Store) -> None:
    t0 = _now_us()
    _, numerics = _frames(t0)
    await store.write(Batch(numerics=numerics))
    rows = await store.numerics(t0 + 1_000_000, t0 + 3_000_000)  # the second and third frames
    got = {(r.bed, r.key, r.value, r.ts_us) for r in rows}
    assert got == {
        (BED, key, value, t0 + i * 1_000_000)
        for i in (1, 2)
        for key, value in (("HR", 70.0 + i), ("SPO2", None), ("ACVPU", 0.0))
    }
    assert [r.ts_us for r in rows] == sorted(r.ts_us for r in rows)
    everything = await store.numerics(t0, t0 + 3_000_000)
    assert len(everything) == 3 * 3 + 1 and (OTHER, "RR") in {(r.bed, r.key) for r in everything}


async def test_concurrent_writers_do_not_duplicate(store: Store) -> None:
    waves, numerics = _frames(_now_us(), 20)
    batch = Batch(numerics=numerics, waveforms=waves)
    await asyncio.gather(*(store.write(batch) for _ in range(4)))
    assert (await store.stats())["beds"]["karamay/bed01"]["messages"] == 23


def test_segments_join_contiguous_frames_and_split_at_gaps_and_changes() -> None:
    from eicu.store.segments import segments

    t0 = _now_us()
    waves, _ = _frames(t0, 6)
    gap = [
        WaveformFrame(BED, 6, t0 + 6 * 200_000 + 4_000, waves[0].blocks),  # one ECG sample late
        WaveformFrame(BED, 7, t0 + 7 * 200_000 + 4_000, waves[1].blocks),
    ]
    changed = WaveformFrame(BED, 8, t0 + 8 * 200_000 + 4_000, waves[2].blocks[:1])  # PLETH gone
    segs = segments([*waves, *gap, changed])
    assert [s.n_frames for s in segs] == [6, 2, 1]
    assert [s.seq for s in segs] == [0, 6, 8]
    assert sum(s.n_samples for s in segs) == 8 * 75 + 50
    blocks = decode_blocks(segs[0].data)
    np.testing.assert_array_equal(
        blocks[0].samples, np.concatenate([w.blocks[0].samples for w in waves])
    )
    assert segs[0].duration_us == 6 * 200_000


def test_damaged_container_raises_storage_error() -> None:
    from eicu.errors import StorageError

    waves, _ = _frames(_now_us(), 1)
    data = encode_blocks(waves[0].blocks)
    for bad in (data[:5], data[:-3], b"\x09" + data[1:]):
        with pytest.raises(StorageError):
            decode_blocks(bad)


async def test_trend_merges_minutes_into_wider_buckets_keeping_spikes(store: Store) -> None:
    """A week of heart rate, one value every 10 minutes and a 2-minute spike: 30-minute
    buckets hold the count-weighted mean, the smallest minimum and the largest maximum."""
    bucket_us = 1800 * 1_000_000
    end_us = _now_us() // bucket_us * bucket_us
    start_us = end_us - 7 * 86_400 * 1_000_000
    frames = [
        NumericsFrame(BED, i, start_us + i * 600_000_000, {"HR": 60.0 + i % 3})
        for i in range(7 * 144)
    ]
    spike_us = start_us + 3 * 86_400 * 1_000_000 + 60_000_000
    frames += [
        NumericsFrame(BED, 5000, spike_us, {"HR": 180.0}),
        NumericsFrame(BED, 5001, spike_us + 1_000_000, {"HR": 170.0}),
    ]
    await store.write(Batch(numerics=frames))

    minutes = await store.trend(BED, "HR", start_us, end_us)
    assert len(minutes) == 7 * 144 + 1 and sum(p.n for p in minutes) == len(frames)
    week = await store.trend(BED, "HR", start_us, end_us, bucket_s=1800)
    assert len(week) == 7 * 48
    assert [p.bucket_us for p in week] == [start_us + k * bucket_us for k in range(7 * 48)]
    assert sum(p.n for p in week) == len(frames)
    spike = next(p for p in week if p.bucket_us <= spike_us < p.bucket_us + bucket_us)
    assert spike.max == 180.0 and spike.n == 5  # three 10-minute values and the spike's two
    expected = (
        sum(
            f.values["HR"]
            for f in frames
            if spike.bucket_us <= f.ts_us < spike.bucket_us + bucket_us
        )
    ) / 5  # type: ignore[operator]
    assert spike.avg == pytest.approx(expected)
    quiet = week[0]
    assert (quiet.min, quiet.max, quiet.n) == (60.0, 62.0, 3)
    assert quiet.avg == pytest.approx(61.0)

    day = await store.trend(BED, "HR", end_us - 86_400 * 1_000_000, end_us, bucket_s=300)
    assert len(day) == 144 and all(p.n == 1 for p in day)
    with pytest.raises(ValueError, match="multiple of 60"):
        await store.trend(BED, "HR", start_us, end_us, bucket_s=90)
