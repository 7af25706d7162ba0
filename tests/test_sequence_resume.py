"""Sequence tracking survives an engine restart: it goes on from what the store holds, so frames
lost while the engine was down (or in a killed engine's memory) are counted as gaps. A real
Mosquitto and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from eicu import wire
from eicu.config import IngestSettings, MqttSettings
from eicu.devservices import Mosquitto
from eicu.models import BedKey, NumericsFrame, SignalBlock, WaveformFrame
from eicu.store import Store
from ingest.engine import Engine

pytestmark = [pytest.mark.broker, pytest.mark.db]

BED = BedKey("karamay", "bed07")


def _engine(broker: Mosquitto, store: Store, tmp_path: Path) -> Engine:
    mqtt = MqttSettings.from_url(broker.url, client_id="eicu-test-seq")
    settings = IngestSettings(spool_dir=tmp_path / "spool", flush_interval_s=0.1)
    return Engine(mqtt, settings, store)


async def _publish(broker: Mosquitto, seqs: range, t0_us: int) -> None:
    block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.zeros(125, dtype=np.int16))
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-seq") as client:
        for seq in seqs:
            t_us = t0_us + seq * 500_000
            numerics = NumericsFrame(BED, seq, t_us, {"HR": 80.0})
            await client.publish(wire.numerics_topic(BED), wire.encode_numerics(numerics), qos=1)
            frame = WaveformFrame(BED, seq, t_us, (block,))
            await client.publish(wire.waveform_topic(BED), wire.encode_waveform(frame), qos=1)


async def _until_stored(engine: Engine, n: int) -> None:
    async with asyncio.timeout(60.0):
        while engine.writer.stored_frames < n or engine.writer.pending_frames:
            await asyncio.sleep(0.05)


def _gaps(engine: Engine, kind: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        "eicu_ingest_gap_messages_total", {"kind": kind}
    )
    return value or 0.0


async def test_frames_lost_across_a_restart_are_counted_as_gaps(
    broker: Mosquitto, store: Store, tmp_path: Path
) -> None:
    t0_us = time.time_ns() // 1000 - 60_000_000
    first = _engine(broker, store, tmp_path)
    await first.start()
    await first.wait_connected()
    await _publish(broker, range(0, 10), t0_us)
    await _until_stored(first, 20)
    await first.stop()  # stored; the tracker's memory goes, as with a kill
    assert (await store.stats())["beds"][str(BED)]["messages"] == 20
    # Frames 10..14 never reach the store (lost in a killed engine's memory, say).
    again = _engine(broker, store, tmp_path)
    await again.start()
    await again.wait_connected()
    await _publish(broker, range(15, 20), t0_us)
    await _until_stored(again, 10)
    await again.stop()
    assert _gaps(again, "numerics") == 5
    assert _gaps(again, "waveform") == 5
    assert again.router.beds[BED].gaps == 10


async def test_sqlite_store_gives_the_last_sequences_too(tmp_path: Path) -> None:
    from eicu.models import Batch
    from eicu.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "s.sqlite")
    await store.open()
    try:
        t0_us = time.time_ns() // 1000
        block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.zeros(125, dtype=np.int16))
        batch = Batch(
            numerics=[NumericsFrame(BED, s, t0_us + s, {"HR": 80.0}) for s in (7, 8, 9)],
            waveforms=[
                WaveformFrame(BED, s, t0_us + (s - 40) * 500_000, (block,)) for s in (40, 41, 42)
            ],
        )
        await store.write(batch)
        last = await store.last_sequences(t0_us - 10**9, t0_us + 10**9)
        assert last == {(BED, "numerics"): 9, (BED, "waveform"): 42}
        assert await store.last_sequences(t0_us + 10**9, t0_us + 2 * 10**9) == {}
    finally:
        await store.close()


async def test_each_store_gives_the_numbers_it_holds(store_of_each_kind: Store) -> None:
    """What a worker taking a bed over asks: which of the bed's recent messages are stored
    (not only the newest), so one the last owner never stored is not dropped as a repeat."""
    from eicu.models import Batch

    store = store_of_each_kind
    t0_us = time.time_ns() // 1000
    other = BedKey("karamay", "bed08")
    block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.zeros(125, dtype=np.int16))
    numerics = [NumericsFrame(BED, s, t0_us + s, {"HR": 80.0, "SPO2": 97.0}) for s in (7, 9)]
    waves = [WaveformFrame(BED, s, t0_us + (s - 40) * 500_000, (block,)) for s in (40, 41, 43)]
    await store.write(Batch(numerics=numerics, waveforms=waves))
    await store.write(Batch(numerics=[NumericsFrame(other, 1, t0_us, {"HR": 70.0})]))
    got = await store.stored_sequences(t0_us - 10**9, t0_us + 10**9, [BED])
    assert got == {(BED, "numerics"): {7, 9}, (BED, "waveform"): {40, 41, 43}}
    both = await store.stored_sequences(t0_us - 10**9, t0_us + 10**9, [BED, other])
    assert both[(other, "numerics")] == {1}
    assert await store.stored_sequences(t0_us + 10**9, t0_us + 2 * 10**9, [BED]) == {}
    assert await store.stored_sequences(t0_us - 10**9, t0_us + 10**9, []) == {}


@pytest.mark.parametrize("ack", ["receipt", "persist"])
async def test_frames_a_killed_engine_held_are_gaps_or_come_again(
    ack: str, broker: Mosquitto, store: Store, db_url: str, tmp_path: Path
) -> None:
    """A real SIGKILL: the engine took frames 10..14 but had not stored them (they wait for a
    flush that never comes). Acknowledged on receipt, they are lost: the engine started after it
    counts them as a gap. Acknowledged after persist, the broker sends them again: stored, no
    gap, and the frames stored before the kill are not stored twice."""
    root = Path(__file__).resolve().parent.parent
    # It flushes every 10 frames, or else only after 10 minutes.
    cmd = [sys.executable, "-m", "tests.engine_child", broker.url, db_url, str(tmp_path / "k")]
    child = subprocess.Popen(
        [*cmd, "600", "10", ack],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert child.stdout is not None
        lines = child.stdout

        async def until_line(text: str) -> None:
            while True:
                line = await asyncio.to_thread(lines.readline)
                assert line, f"the engine process ended before {text!r}"
                if line.strip() == text:
                    return

        await asyncio.wait_for(until_line("READY"), 120.0)
        t0_us = time.time_ns() // 1000 - 60_000_000
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-kill") as client:
            for seq in range(15):
                frame = NumericsFrame(BED, seq, t0_us + seq * 1_000_000, {"HR": 80.0})
                await client.publish(wire.numerics_topic(BED), wire.encode_numerics(frame), qos=1)
        await asyncio.wait_for(until_line(f"ROUTED {BED} numerics 14"), 60.0)
        async with asyncio.timeout(60.0):
            while (await store.stats())["beds"].get(str(BED), {}).get("messages", 0) < 10:
                await asyncio.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    before = (await store.stats())["beds"][str(BED)]["messages"]
    if ack == "receipt":
        assert before == 10  # 10..14 died with it
    else:
        assert 10 <= before <= 15  # what was not stored died with it, unacknowledged
    again = Engine(
        MqttSettings.from_url(broker.url, client_id="eicu-test-killed", ack=ack),
        IngestSettings(spool_dir=tmp_path / "k", flush_interval_s=0.1),
        store,
    )
    await again.start()
    await again.wait_connected()
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-kill") as client:
        for seq in range(15, 20):
            frame = NumericsFrame(BED, seq, t0_us + seq * 1_000_000, {"HR": 80.0})
            await client.publish(wire.numerics_topic(BED), wire.encode_numerics(frame), qos=1)
    await _until_stored(again, 5 if ack == "receipt" else 20 - before)
    await again.stop()
    if ack == "receipt":
        assert _gaps(again, "numerics") == 5
        assert (await store.stats())["beds"][str(BED)]["messages"] == 15
    else:
        assert _gaps(again, "numerics") == 0
        assert (await store.stats())["beds"][str(BED)]["messages"] == 20
