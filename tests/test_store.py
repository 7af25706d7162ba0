"""The store, against a real PostgreSQL server and against SQLite, through one interface."""

from __future__ import annotations

import asyncio
import dataclasses
import time
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
from eicu.store import Store
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


@pytest.fixture
def store(store_of_each_kind: Store) -> Store:
    """Every test here runs on PostgreSQL and on SQLite (conftest's store of each kind)."""
    return store_of_each_kind


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


# --- PostgreSQL only: counters, latest values, device clocks, housekeeping ------------------------

# What the per-bed counters and the latest-value table replace: the same figures from the tables.
_STATS_FROM_TABLES = """WITH n AS (SELECT bed_id, count(*) AS messages, sum(k) AS samples
                         FROM (SELECT bed_id, count(*) AS k FROM numerics
                               GROUP BY bed_id, time, seq) m GROUP BY bed_id),
                   w AS (SELECT bed_id, sum(n_frames) AS messages, sum(n_samples) AS samples
                         FROM waveforms GROUP BY bed_id)
              SELECT b.site || '/' || b.bed, coalesce(n.messages, 0) + coalesce(w.messages, 0),
                     coalesce(n.samples, 0) + coalesce(w.samples, 0)
              FROM beds b LEFT JOIN n USING (bed_id) LEFT JOIN w USING (bed_id)"""
_LATEST_FROM_TABLES = """SELECT DISTINCT ON (n.bed_id, n.code) n.bed_id, n.code, n.value, n.time
    FROM numerics n ORDER BY n.bed_id, n.code, n.time DESC, n.seq DESC"""


async def test_counters_and_latest_values_match_the_tables(db_url: str) -> None:
    import psycopg

    from eicu.store.pg import PgStore

    store = PgStore(db_url)
    await store.open()
    t0 = _now_us()
    rng = np.random.default_rng(3)
    for k in range(6):  # overlapping batches, out of order, with retries
        start = int(rng.integers(0, 40))
        waves, _ = _frames(t0 + start * 200_000, 5)
        numerics = [
            NumericsFrame(bed, i, t0 + i * 1_000_000, {"HR": float(i + k), "RR": 12.0})
            for bed in (BED, OTHER)
            for i in range(start, start + 10)
        ]
        await store.write(Batch(numerics=numerics[::-1], waveforms=waves))
    await store.close()
    store = PgStore(db_url)  # a restart keeps them
    await store.open()
    stats, latest = await store.stats(), await store.latest()
    await store.close()
    with psycopg.connect(db_url) as conn:
        expected = conn.execute(_STATS_FROM_TABLES).fetchall()
        latest_rows = conn.execute(_LATEST_FROM_TABLES).fetchall()
    assert {k: {"messages": m, "samples": n} for k, m, n in expected} == stats["beds"]
    assert sum(len(v) for v in latest.values()) == len(latest_rows) == 4
    assert latest[BED]["HR"].value == max(r[2] for r in latest_rows if r[1] == 1 and r[0] == 1)


async def test_a_device_clock_far_off_is_stored_at_its_receipt_time(db_url: str) -> None:
    import psycopg

    from eicu.config import StoreSettings
    from eicu.store.pg import PgStore

    store = PgStore(db_url, settings=StoreSettings(device_time_max_lag_h=24))
    await store.open()
    now = _now_us()
    years_back = now - 3 * 365 * 86_400_000_000
    frames = [
        NumericsFrame(BED, 1, years_back, {"HR": 80.0}, received_us=now),  # clock years back
        NumericsFrame(BED, 2, now + 3_600_000_000, {"HR": 81.0}, received_us=now),  # 1 h ahead
        NumericsFrame(BED, 3, now - 3_600_000_000, {"HR": 82.0}, received_us=now),  # 1 h late
    ]
    waves, _ = _frames(years_back, 1)
    waves = [dataclasses.replace(w, received_us=now) for w in waves]
    await store.write(Batch(numerics=frames, waveforms=waves))
    await store.write(Batch(numerics=frames, waveforms=waves))  # a retry: stored once
    got = {s.value: s.ts_us for s in await store.numerics(now - 86_400_000_000, now + 1)}
    assert got == {80.0: now, 81.0: now, 82.0: now - 3_600_000_000}
    get = store.metrics.registry.get_sample_value
    assert get("eicu_store_device_time_replaced_total", {"kind": "numerics"}) == 2
    assert get("eicu_store_device_time_replaced_total", {"kind": "waveforms"}) == 1
    await store.close()
    with psycopg.connect(db_url) as conn:
        kept = conn.execute(
            "SELECT count(*) FROM numerics WHERE device_time IS NOT NULL AND time = received"
        ).fetchone()
        kept_waves = conn.execute(
            "SELECT count(*) FROM waveforms WHERE device_time < now() - INTERVAL '2 years'"
        ).fetchone()
    assert kept == (2,) and kept_waves == (1,)


async def test_old_status_events_and_dead_letters_are_pruned(db_url: str) -> None:
    from eicu.config import StoreSettings
    from eicu.store.pg import PgStore

    store = PgStore(db_url, settings=StoreSettings(events_keep_days=30))
    await store.open()
    now = _now_us()
    old = now - 31 * 86_400_000_000
    topic = "eicu/v1/x/y/numerics"
    await store.write(
        Batch(
            statuses=[StatusFrame("karamay", "online", t, received_us=t) for t in (old, now)],
            dead_letters=[DeadLetter(t, topic, "malformed", "", b"{") for t in (old, now)],
        )
    )
    assert await store.prune() == {"status_events": 1, "dead_letters": 1}
    assert await store.dead_letter_counts() == {"malformed": 1}
    assert await store.prune() == {"status_events": 0, "dead_letters": 0}
    get = store.metrics.registry.get_sample_value
    assert get("eicu_store_pruned_rows_total", {"table": "status_events"}) == 1
    await store.close()


async def test_export_before_a_date_writes_csv_files(db_url: str, tmp_path: Path) -> None:
    import csv
    import datetime as dt

    from eicu.cli import main
    from eicu.store.pg import PgStore

    store = PgStore(db_url)
    await store.open()
    t0 = _now_us()
    waves, numerics = _frames(t0)
    await store.write(Batch(numerics=numerics, waveforms=waves))
    await store.close()
    cut = dt.datetime.fromtimestamp((t0 + 1_500_000) / 1e6, dt.UTC).isoformat()
    argv = ["export", "--database", db_url, "--before", cut, "--out", str(tmp_path / "a")]
    assert await asyncio.to_thread(main, argv) == 0
    with (tmp_path / "a" / "numerics.csv").open() as f:
        rows = list(csv.DictReader(f))
    # HR, SPO2, ACVPU of seq 0 and 1, and RR of the other bed: the values before the cut
    assert sorted((r["bed"], r["parameter"], r["value"]) for r in rows) == [
        ("bed01", "ACVPU", "0"), ("bed01", "ACVPU", "0"), ("bed01", "HR", "70"),
        ("bed01", "HR", "71"), ("bed01", "SPO2", ""), ("bed01", "SPO2", ""), ("bed02", "RR", "18"),
    ]  # fmt: skip
    with (tmp_path / "a" / "waveforms.csv").open() as f:
        segments = list(csv.DictReader(f))
    assert sum(int(s["n_frames"]) for s in segments) == 8  # all 8 frames start before the cut
    import base64

    blocks = decode_blocks(base64.b64decode(segments[0]["data"]))
    assert blocks and blocks[0].signal == "ECG_II"
    bad = ["export", "--database", db_url, "--before", "yesterday", "--out", str(tmp_path)]
    assert await asyncio.to_thread(main, bad) == 2


async def test_a_longer_segment_redelivered_under_the_same_key_keeps_every_frame(
    db_url: str,
) -> None:
    from eicu.store.pg import PgStore

    store = PgStore(db_url)
    await store.open()
    t0 = _now_us()
    waves, _ = _frames(t0, 8)
    await store.write(Batch(waveforms=waves[:3]))  # stored as one segment before a stop
    await store.write(Batch(waveforms=waves))  # all 8 redelivered: one segment, same key
    await store.write(Batch(waveforms=waves[:5]))  # a shorter one changes nothing
    assert (await store.stats())["beds"]["karamay/bed01"] == {"messages": 8, "samples": 8 * 75}
    window = await store.waveform(BED, "ECG_II", t0, t0 + 2_000_000)
    assert window.values.shape[0] == 8 * 50
    await store.close()


async def test_housekeeping_runs_by_itself_while_the_store_is_open(db_url: str) -> None:
    from eicu.config import StoreSettings
    from eicu.store.pg import PgStore

    store = PgStore(db_url, settings=StoreSettings(events_keep_days=1, maintenance_interval_s=1))
    await store.open()
    old = _now_us() - 2 * 86_400_000_000
    await store.write(Batch(dead_letters=[DeadLetter(old, "eicu/v1/x/y/numerics", "bad", "", b"")]))
    get = store.metrics.registry.get_sample_value
    deadline = asyncio.get_running_loop().time() + 30
    while get("eicu_store_pruned_rows_total", {"table": "dead_letters"}) != 1:
        assert asyncio.get_running_loop().time() < deadline, "no housekeeping round in 30 s"
        await asyncio.sleep(0.1)
    assert await store.dead_letter_counts() == {}
    await store.close()


async def test_the_monitors_bed_statuses_name_are_kept_with_when(store_of_each_kind: Store) -> None:
    store = store_of_each_kind
    bed = BedKey("karamay", "bed01")
    t0 = 1_780_000_000_000_000
    first = ("0123456789ABCDEF", "EUI-64")

    def status(t_us: int, device: tuple[str, str] | None) -> StatusFrame:
        return StatusFrame("karamay", "online", t_us, bed="bed01", received_us=t_us, device=device)

    await store.write(Batch(statuses=[status(t0, first), status(t0 + 60_000_000, None)]))
    await store.write(Batch(statuses=[status(t0 + 5_000_000, first)]))
    await store.write(Batch(statuses=[status(t0 + 5_000_000, first)]))  # the same, again
    await store.write(Batch(statuses=[status(t0 + 9_000_000, ("FEDCBA9876543210", "EUI-64"))]))
    other = StatusFrame("karamay", "online", t0, bed="bed02", received_us=t0, device=("X1", ""))
    await store.write(Batch(statuses=[other]))
    found = await store.bed_devices(bed)
    assert [(d.device_id, d.first_seen_us, d.last_seen_us) for d in found] == [
        ("FEDCBA9876543210", t0 + 9_000_000, t0 + 9_000_000),
        ("0123456789ABCDEF", t0, t0 + 5_000_000),
    ]
    assert {d.bed for d in await store.bed_devices()} == {bed, BedKey("karamay", "bed02")}
