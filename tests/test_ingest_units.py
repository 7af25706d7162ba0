"""Sequence tracking, the spool, and the writer's memory bound: no servers needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eicu.config import IngestSettings
from eicu.errors import StorageUnavailable
from eicu.metrics import IngestMetrics, LatencyRecorder
from eicu.models import (
    Batch,
    BedKey,
    DeadLetter,
    NumericsFrame,
    SignalBlock,
    StatusFrame,
    WaveformFrame,
)
from ingest.spool import Spool, decode_batch, encode_batch
from ingest.state import (
    INPUT_DELAY_MIN_BEDS,
    OFFSET_DRIFT,
    BedRouter,
    SeqTracker,
    input_delay_us,
)
from ingest.writer import StoreWriter

BED = BedKey("s", "b")
T0 = 1_764_302_400_000_000


def test_seq_tracker_verdicts() -> None:
    t = SeqTracker()
    assert t.observe(10, T0) == ("first", 0)
    assert t.observe(11, T0 + 1) == ("next", 0)
    assert t.observe(11, T0 + 1) == ("duplicate", 0)  # QoS 1 redelivery
    assert t.observe(15, T0 + 5) == ("gap", 3)
    assert t.observe(13, T0 + 3) == ("reordered", 0)
    assert t.observe(13, T0 + 3) == ("duplicate", 0)
    # The gateway restarted its count: nothing it sends now is dropped as a duplicate.
    assert all(t.observe(i, T0 + 100 + i)[0] != "duplicate" for i in range(3))
    assert all(t.observe(i, T0 + 200 + i)[0] != "duplicate" for i in range(3, 20))
    assert t.observe(10, T0 + 210) == ("duplicate", 0)


def test_seq_tracker_wraps() -> None:
    t = SeqTracker()
    t.observe(2**32 - 1, T0)
    assert t.observe(0, T0 + 1) == ("next", 0)


def _batch(i: int) -> Batch:
    samples = np.arange(50, dtype=np.int16) * i
    return Batch(
        numerics=[
            NumericsFrame(BED, i, T0 + 1000 * i, {"HR": 60.0 + i, "O2": 1.0, "SPO2": None}, 7)
        ],
        waveforms=[
            WaveformFrame(BED, i, T0 + i, (SignalBlock("ECG_II", 250.0, 200.0, 3, samples),), 8)
        ],
        statuses=[StatusFrame("s", "online", T0, bed="b", received_us=9)],
        dead_letters=[DeadLetter(10, "eicu/v1/s/b/x", "wrong_topic", "no such kind", b"\x00\x01")],
    )


def test_spool_encoding_round_trip() -> None:
    batch = _batch(3)
    assert decode_batch(encode_batch(batch)) == batch


def test_spool_keeps_order_across_reopen_and_front_insert(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.push(_batch(1))
    spool.push(_batch(2))
    spool.push(_batch(0), front=True)
    reopened = Spool(tmp_path)
    seen = []
    while len(reopened):
        seen.append(reopened.peek().numerics[0].seq)
        reopened.pop()
    assert seen == [0, 1, 2]
    assert reopened.frames == 0


class FlakyStore:
    backend = "test"

    def __init__(self) -> None:
        self.up = False
        self.batches: list[Batch] = []

    async def write(self, batch: Batch) -> None:
        if not self.up:
            raise StorageUnavailable("down for the test")
        self.batches.append(batch)


async def test_writer_spills_beyond_memory_and_backfills_in_order(tmp_path: Path) -> None:
    store = FlakyStore()
    settings = IngestSettings(batch_max_frames=2, memory_max_frames=4, spool_dir=tmp_path)
    writer = StoreWriter(store, settings, IngestMetrics())  # type: ignore[arg-type]
    for i in range(20):
        writer.add(NumericsFrame(BED, i, T0 + i, {"HR": 70.0}, T0))
    assert not await writer._write_pending()
    assert writer.pending_frames == 20
    assert len(list(tmp_path.glob("*.batch"))) >= 1  # beyond the memory bound, on disk
    store.up = True
    assert await writer._write_pending()
    seqs = [f.seq for b in store.batches for f in b.numerics]
    assert seqs == list(range(20))
    assert writer.pending_frames == 0 and not list(tmp_path.glob("*.batch"))


async def test_writer_close_spools_what_the_store_cannot_take(tmp_path: Path) -> None:
    store = FlakyStore()
    settings = IngestSettings(batch_max_frames=3, memory_max_frames=100, spool_dir=tmp_path)
    writer = StoreWriter(store, settings, IngestMetrics())  # type: ignore[arg-type]
    for i in range(10):
        writer.add(NumericsFrame(BED, i, T0 + i, {"HR": 70.0}, T0))
    await writer.close(timeout_s=0.3)
    again = StoreWriter(store, settings, IngestMetrics())  # type: ignore[arg-type]
    store.up = True
    assert await again._write_pending()
    assert [f.seq for b in store.batches for f in b.numerics] == list(range(10))


def test_latency_recorder_percentiles() -> None:
    rec = LatencyRecorder(capacity=100)
    rec.add(np.arange(150, dtype=float))  # only the newest 100 are kept
    p = rec.percentiles((50.0,))
    assert p[50.0] == np.percentile(np.arange(50, 150), 50)


def test_ring_keeps_the_newest_samples_in_order_for_any_chunking() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ingest.state import Ring

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 40), max_size=30), st.integers(1, 25), st.integers(0, 60))
    def check(chunks: list[int], capacity: int, n: int) -> None:
        ring = Ring(capacity)
        everything: list[float] = []
        for size in chunks:
            values = np.arange(len(everything), len(everything) + size, dtype=float)
            ring.extend(values)
            everything.extend(values.tolist())
        naive = everything[-min(n, capacity) :] if min(n, capacity) else []
        np.testing.assert_array_equal(ring.last(n), np.array(naive))
        assert ring.total == len(everything)

    check()


def test_a_fault_on_one_message_is_kept_and_does_not_stop_the_loop(tmp_path: Path) -> None:
    from eicu import wire
    from eicu.config import MqttSettings
    from ingest.service import Ingest
    from ingest.state import BedRouter

    metrics = IngestMetrics()
    router = BedRouter(metrics)

    def broken(frame: object, state: object) -> None:
        raise RuntimeError("a consumer fault")

    router.route = lambda frame: broken(frame, None)  # type: ignore[method-assign, assignment]
    writer = StoreWriter(FlakyStore(), IngestSettings(spool_dir=tmp_path), metrics)  # type: ignore[arg-type]
    ingest = Ingest(MqttSettings(), router, writer, metrics)
    frame = NumericsFrame(BED, 1, T0, {"HR": 70.0})
    ingest._handle_safely(wire.numerics_topic(BED), wire.encode_numerics(frame))
    assert metrics.internal_errors._value.get() == 1
    kept = writer._open.dead_letters
    assert len(kept) == 1 and kept[0].reason == "internal_error"
    assert kept[0].payload == wire.encode_numerics(frame)


def test_messages_sent_again_while_held_are_counted_and_warned_of_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that sends messages again while the engine still holds them says the engine is
    further behind than its acknowledgement window allows: each is counted
    (eicu_ingest_redelivered_held), and an operator is told at most once a minute."""
    from eicu.config import MqttSettings
    from ingest.service import OVERLOAD_LOG_EVERY_S, Ingest
    from ingest.state import BedRouter

    metrics = IngestMetrics()
    writer = StoreWriter(FlakyStore(), IngestSettings(spool_dir=tmp_path), metrics)  # type: ignore[arg-type]
    ingest = Ingest(MqttSettings(), BedRouter(metrics), writer, metrics)
    with caplog.at_level("WARNING", logger="ingest.service"):
        for _ in range(3):
            ingest._held_redelivery()
        assert metrics.redelivered_held._value.get() == 3
        warnings = [r.getMessage() for r in caplog.records if "sent again" in r.getMessage()]
        assert len(warnings) == 1 and ": 1 since the last warning" in warnings[0]
        ingest._held_again_warned -= OVERLOAD_LOG_EVERY_S  # a minute later
        ingest._held_redelivery()
        warnings = [r.getMessage() for r in caplog.records if "sent again" in r.getMessage()]
        assert len(warnings) == 2 and ": 3 since the last warning" in warnings[1]


def _numerics(bed: BedKey, seq: int, device_s: float, received_s: float) -> NumericsFrame:
    return NumericsFrame(
        bed, seq, int(device_s * 1e6), {"HR": 80.0}, received_us=int(received_s * 1e6)
    )


def test_clock_offset_is_the_fastest_transit_and_delay_the_rest() -> None:
    router = BedRouter(IngestMetrics())
    bed = BedKey("karamay", "bed-01")
    t0 = 1_780_000_000.0
    # The device clock runs 30 s behind the engine's; transit 0.2 s, once 0.1 s, once 5 s.
    for i, transit in enumerate([0.2, 0.1, 0.2, 5.0]):
        router.route(_numerics(bed, i, t0 + i - 30, t0 + i + transit))
    state = router.beds[bed]
    # The fastest came 0.1 s after it was measured; since then (6.9 s) the offset fell by drift.
    offset_us = -30.1e6 - OFFSET_DRIFT * 6.9e6
    assert state.clock_offset_us == pytest.approx(offset_us)
    assert state.delay_us == pytest.approx(offset_us + 35e6, abs=1)  # skew -35 s
    now_us = int((t0 + 10) * 1e6)
    assert state.device_now_us(now_us) == pytest.approx(now_us + offset_us, abs=1)
    # The device clock is set back by 10 s: the offset follows at OFFSET_DRIFT a second.
    for i in range(100):
        assert router.route(_numerics(bed, 10 + i, t0 + 10 + i - 40, t0 + 10 + i + 0.1))
    assert state.clock_offset_us == pytest.approx(offset_us - OFFSET_DRIFT * 101.1e6)
    # Stepped forward: one message alone could be wrong, so it is held at its receive time on
    # the bed's clock; three messages over at least 2 s on the new clock confirm the step.
    before = state.clock_offset_us
    router.route(_numerics(bed, 200, t0 + 200 - 5, t0 + 200.1))
    assert state.clock_offset_us == pytest.approx(before - OFFSET_DRIFT * 91e6)  # drift only
    assert state.latest["HR"][1] == int((t0 + 200.1) * 1e6) + int(state.clock_offset_us)
    router.route(_numerics(bed, 201, t0 + 201 - 5, t0 + 201.1))
    router.route(_numerics(bed, 202, t0 + 202 - 5, t0 + 202.1))
    assert (state.clock_offset_us, state.delay_us) == (pytest.approx(-5.1e6), 0)
    assert state.latest["HR"][1] == int((t0 + 202 - 5) * 1e6)


def test_a_waveform_frame_counts_from_its_last_sample() -> None:
    router = BedRouter(IngestMetrics())
    bed = BedKey("karamay", "bed-01")
    t0_us = 1_780_000_000_000_000
    block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.zeros(125, dtype=np.int16))
    # Half a second of samples, received 0.1 s after the last one.
    router.route(WaveformFrame(bed, 1, t0_us, (block,), received_us=t0_us + 496_000 + 100_000))
    assert router.beds[bed].clock_offset_us == pytest.approx(-100_000)


def test_input_delay_is_what_every_site_shares() -> None:
    router = BedRouter(IngestMetrics())
    now_s = 1_780_000_000.0

    def feed(site: str, n: int, delay_s: float) -> None:
        for b in range(n):
            bed = BedKey(site, f"bed-{b:02d}")
            router.route(_numerics(bed, 1, now_s - 20, now_s - 20 + 0.1))  # the fast one
            router.route(_numerics(bed, 2, now_s - 1 - delay_s, now_s - 1 + 0.1))

    feed("karamay", 5, 0.0)
    feed("hotan", 5, 0.0)
    now_us = int(now_s * 1e6)
    assert input_delay_us(router.beds, now_us) == pytest.approx(0, abs=1000)
    feed("karamay", 5, 12.0)  # one site's link is slow: not the engine's delay
    assert input_delay_us(router.beds, now_us) == pytest.approx(0, abs=1000)
    feed("hotan", 5, 8.0)  # both: the engine is 8 s behind (at least)
    assert input_delay_us(router.beds, now_us) == pytest.approx(8e6, abs=1000)
    # A site with too few beds, silent beds and offline beds do not count.
    feed("turpan", INPUT_DELAY_MIN_BEDS - 1, 0.0)
    assert input_delay_us(router.beds, now_us) == pytest.approx(8e6, abs=1000)
    assert input_delay_us(router.beds, now_us + int(20e6)) == 0
    assert router.input_delay_us(now_us) == pytest.approx(8e6, abs=1000)
    value = router._metrics.registry.get_sample_value("eicu_ingest_input_delay_seconds")
    assert value is not None and value >= 0
