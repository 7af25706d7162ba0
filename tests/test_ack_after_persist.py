"""Acknowledge after persist: an engine SIGKILLed while gateways publish loses nothing, and the
engine started after it stores nothing twice (Mosquitto, and a NATS node with partitions)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eicu.bus.partitioned import ingest_consumer
from eicu.config import IngestSettings, MqttSettings, Settings, parse_partitions
from eicu.devservices import Mosquitto, NatsServer, ServiceError
from eicu.errors import ConfigError
from eicu.metrics import IngestMetrics
from eicu.models import BedKey, NumericsFrame
from eicu.store import Store, open_store
from ingest.engine import Engine
from ingest.state import SeqTracker
from ingest.writer import Receipt, StoreWriter
from simulators.run import SimulationPlan, simulate

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "eicu-test-killed"  # the child engine's (tests/engine_child.py)
BEDS = 6
WAIT_S = 120.0  # generous: the machine may be busy


@pytest.fixture
def nats_node() -> Iterator[NatsServer]:
    try:
        server = NatsServer(partitions=4).start()
    except ServiceError as exc:
        pytest.fail(f"cannot start NATS for the tests: {exc}")
    yield server
    server.cleanup()


class _Child:
    """``tests/engine_child.py`` in a process of its own; its output read to the end."""

    def __init__(self, mqtt_url: str, db_url: str, spool: Path, partitions: str | None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if partitions is not None:
            env["EICU_TEST_PARTITIONS"] = partitions
        cmd = [sys.executable, "-m", "tests.engine_child", mqtt_url, db_url, str(spool)]
        self.process = subprocess.Popen(
            [*cmd, "0.2", "4000", "persist", "quiet"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "READY":
                self.ready.set()

    async def wait_ready(self) -> None:
        ready = await asyncio.to_thread(self.ready.wait, WAIT_S)
        assert ready, "the engine process did not subscribe"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.reader.join(10.0)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def _until(
    what: str, condition: object, timeout_s: float = WAIT_S, *, fail: bool = True
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    if fail:
        raise AssertionError(f"not within {timeout_s} s: {what}")


async def _crash_and_recover(
    mqtt_url: str, db_url: str, store: Store, spool: Path, partitions: str | None
) -> tuple[dict[str, object], dict[str, dict[str, int]]]:
    """Gateways publish QoS 1 while an engine process runs; it is SIGKILLed mid-stream, a new
    engine (same client id: same session) takes over. Returns what the broker acknowledged to
    the gateways and what the store holds once everything is in."""
    child = _Child(mqtt_url, db_url, spool, partitions)
    try:
        await child.wait_ready()
        gateways = MqttSettings.from_url(mqtt_url)
        plan = SimulationPlan(site="crash", beds=BEDS, duration_s=40.0, speed=4.0)
        publishing = asyncio.create_task(simulate(gateways, plan))

        async def some_stored() -> bool:
            beds = (await store.stats())["beds"]
            return sum(b["messages"] for b in beds.values()) >= BEDS

        await _until("the killed engine stored some messages", some_stored)
    finally:
        child.kill()
    assert not publishing.done(), "the engine was to be killed while the gateways publish"
    mqtt = MqttSettings.from_url(
        mqtt_url, client_id=CLIENT_ID, partitions=parse_partitions(partitions)
    )
    # half-second waveform segments: each bed's last frames are stored 2 s after the stream ends
    settings = IngestSettings(
        spool_dir=spool, flush_interval_s=0.1, analyse_signals=False, waveform_segment_s=0.5
    )
    engine = Engine(mqtt, settings, store)
    await engine.start()
    try:
        await engine.wait_connected(WAIT_S)
        summary = await publishing
        assert "unsent" not in summary and "dropped" not in summary
        published = summary["beds"]

        async def all_in() -> bool:
            return (await store.stats())["beds"] == published

        # Everything the broker acknowledged arrives; a duplicate would count more.
        # (compared, with the difference, below)
        await _until("every published sample stored", all_in, fail=False)
    finally:
        await engine.stop()
    return summary, (await store.stats())["beds"]


def _assert_exactly_once(summary: dict[str, object], stored: dict[str, dict[str, int]]) -> None:
    published = summary["beds"]
    assert isinstance(published, dict) and len(published) == BEDS
    assert stored == published  # messages and samples, bed by bed: none lost, none twice


@pytest.mark.broker
@pytest.mark.db
@pytest.mark.slow
async def test_an_engine_killed_mid_stream_loses_nothing_and_stores_nothing_twice(
    broker: Mosquitto, store: Store, db_url: str, tmp_path: Path
) -> None:
    summary, stored = await _crash_and_recover(broker.url, db_url, store, tmp_path / "s", None)
    _assert_exactly_once(summary, stored)


@pytest.mark.nats
@pytest.mark.db
@pytest.mark.slow
async def test_an_engine_of_nats_partitions_killed_mid_stream_loses_nothing(
    nats_node: NatsServer, store: Store, db_url: str, tmp_path: Path
) -> None:
    summary, stored = await _crash_and_recover(nats_node.url, db_url, store, tmp_path / "s", "0-3")
    _assert_exactly_once(summary, stored)


def test_partitions_setting() -> None:
    assert parse_partitions("0-3,8") == (0, 1, 2, 3, 8)
    assert parse_partitions(" 3,7 ") == (3, 7)
    assert parse_partitions("") is None
    for bad in ("x", "3-1", "-1", "0-5000"):
        with pytest.raises(ConfigError, match="EICU_MQTT_PARTITIONS"):
            parse_partitions(bad)


def test_the_engine_reads_its_partitions_as_its_user() -> None:
    env = {"EICU_MQTT_URL": "mqtt://hub:pw@127.0.0.1", "EICU_MQTT_PARTITIONS": "0-1,3"}
    mqtt = Settings.from_env(env).mqtt
    assert mqtt is not None and mqtt.ack == "persist"
    consumer = ingest_consumer(mqtt, mqtt.partitions)
    assert consumer.client_id == "hub"  # the engine's user name, not a partition's
    assert consumer.topic_filters == (
        "eicu/p/0/#",
        "eicu/p/1/#",
        "eicu/p/3/#",
        "eicu/v1/+/_gateway/+/status",
    )
    everything = Settings.from_env({"EICU_MQTT_URL": "mqtt://hub:pw@127.0.0.1"}).mqtt
    assert everything is not None
    assert ingest_consumer(everything, everything.partitions).topic_filters == ("eicu/#",)
    with pytest.raises(ConfigError, match="EICU_MQTT_ACK"):
        Settings.from_env({**env, "EICU_MQTT_ACK": "never"})


def test_a_resumed_stream_drops_what_was_stored_but_not_a_restarted_sender() -> None:
    t0 = 1_700_000_000_000_000
    tracker = SeqTracker()
    tracker.resume(100)  # the newest number stored before the restart
    assert tracker.observe(98, t0 - 2)[0] == "duplicate"  # stored, not acknowledged: sent again
    assert tracker.observe(101, t0 + 10) == ("next", 0)
    assert tracker.observe(99, t0 - 1)[0] == "duplicate"  # sent again after newer ones
    # The sender counts from 0 again (newer device time): nothing of it is dropped.
    assert [tracker.observe(s, t0 + 20 + s)[0] for s in range(3)].count("duplicate") == 0


async def test_a_message_is_durable_once_its_frames_are_stored(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    try:
        writer = StoreWriter(store, IngestSettings(spool_dir=tmp_path / "s"), IngestMetrics())
        bed = BedKey("site", "bed1")
        receipts = []
        for seq in range(3):
            receipt = writer.receipt = Receipt()
            writer.add(NumericsFrame(bed, seq, 1_700_000_000_000_000 + seq, {"HR": 80.0}))
            writer.receipt = None
            receipt.sealed = True
            receipts.append(receipt)
        durable: list[int] = []
        writer.on_durable = lambda: durable.append(sum(r.durable for r in receipts))
        assert not any(r.durable for r in receipts)
        writer._seal()
        assert not any(r.durable for r in receipts)  # sealed into a batch, in memory
        assert await writer._write_pending()
        assert all(r.durable for r in receipts) and durable == [3]
    finally:
        await store.close()


async def test_a_quiet_beds_held_frames_are_written_before_the_broker_sends_them_again(
    tmp_path: Path,
) -> None:
    """A bed's waveform frames wait in memory, unacknowledged, until a storage segment's worth
    has come. When the bed goes quiet they are written a second after a segment would have
    filled (EICU_WAVEFORM_SEGMENT_S + 1 s from the first frame's receipt), well within NATS's
    ack_wait (MQTT_ACK_WAIT_S, 5 s), after which the broker would send them again."""
    import numpy as np

    from eicu.devservices import MQTT_ACK_WAIT_S
    from eicu.models import SignalBlock, WaveformFrame

    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    try:
        settings = IngestSettings(spool_dir=tmp_path / "s")
        writer = StoreWriter(store, settings, IngestMetrics())
        bed = BedKey("site", "bed1")
        t0 = 1_700_000_000_000_000
        receipts = []
        for i in range(2):  # half a second of a 2 s segment, then nothing
            block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.zeros(62, dtype=np.int16))
            receipt = writer.receipt = Receipt()
            writer.add(
                WaveformFrame(bed, i, t0 + i * 250_000, (block,), received_us=t0 + i * 250_000)
            )
            writer.receipt = None
            receipt.sealed = True
            receipts.append(receipt)
        segment_s = settings.waveform_segment_s
        writer._release_overdue(t0 + int((segment_s + 0.9) * 1e6))
        writer._seal()
        assert await writer._write_pending()
        assert not any(r.durable for r in receipts)  # still waiting for the rest of the segment
        released_us = t0 + int((segment_s + 1.1) * 1e6)
        assert released_us - t0 < (MQTT_ACK_WAIT_S - 1.5) * 1e6
        writer._release_overdue(released_us)
        writer._seal()
        assert await writer._write_pending()
        assert all(r.durable for r in receipts)
        assert (await store.stats())["beds"]["site/bed1"] == {"messages": 2, "samples": 124}
    finally:
        await store.close()


@pytest.mark.broker
async def test_what_is_published_while_the_kernels_warm_up_is_kept(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine subscribes before it warms its kernels up: a first start loses nothing
    published meanwhile (the broker keeps it in the new session)."""
    import aiomqtt

    import ingest.engine as engine_module
    from eicu import wire

    release = threading.Event()
    real_warm_up = engine_module.warm_up

    def slow_warm_up(signals: bool) -> None:
        assert release.wait(60.0), "the test never let the warm-up finish"
        real_warm_up(signals)

    monkeypatch.setattr(engine_module, "warm_up", slow_warm_up)
    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    mqtt = MqttSettings.from_url(broker.url, client_id="eicu-test-warm-up")
    settings = IngestSettings(spool_dir=tmp_path / "s", flush_interval_s=0.1, analyse_signals=False)
    engine = Engine(mqtt, settings, store)
    starting = asyncio.create_task(engine.start())
    try:
        await engine.wait_connected(WAIT_S)  # subscribed, still warming up
        assert not engine.warmed and not starting.done()
        bed = BedKey("icu", "bed-01")
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-early") as gateway:
            for seq in range(1, 21):
                t_us = 1_700_000_000_000_000 + seq * 1_000_000
                frame = NumericsFrame(bed, seq, t_us, {"HR": 70.0})
                await gateway.publish(wire.numerics_topic(bed), wire.encode_numerics(frame), qos=1)
        assert (await store.stats())["beds"] == {}  # nothing taken before the warm-up ends
        release.set()
        await starting

        async def all_stored() -> bool:
            beds = (await store.stats())["beds"]
            return beds.get("icu/bed-01", {}).get("messages") == 20

        await _until("the 20 early messages stored", all_stored)
    finally:
        release.set()
        if not starting.done():
            await starting
        await engine.stop()
        await store.close()


async def test_a_duplicate_is_not_acknowledged_before_the_first_delivery_is_durable(
    tmp_path: Path,
) -> None:
    """The broker sends a message again while the first delivery's data still waits in the
    writer (its acknowledgement window ran out on a busy engine): the repeat is dropped, but
    acknowledging it at once would tell the broker the message is safe before it is; a crash
    then would lose it. The repeat is durable only once what came before it is."""
    import numpy as np

    from eicu import wire
    from eicu.models import SignalBlock, WaveformFrame

    store = open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    engine = Engine(MqttSettings(), IngestSettings(spool_dir=tmp_path / "spool"), store)
    try:
        bed = BedKey("site", "bed1")
        t0 = 1_700_000_000_000_000
        numerics = NumericsFrame(bed, 7, t0, {"HR": 80.0})
        block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.zeros(125, dtype=np.int16))
        wave = WaveformFrame(bed, 7, t0, (block,))
        messages = [
            (wire.numerics_topic(bed), wire.encode_numerics(numerics)),
            (wire.waveform_topic(bed), wire.encode_waveform(wave)),
        ]

        def handle(topic: str, payload: bytes) -> Receipt:
            receipt = engine.writer.receipt = Receipt()
            engine.ingest.handle(topic, payload, t0 + 1000)
            engine.writer.receipt = None
            receipt.sealed = True
            return receipt

        for topic, payload in messages:
            first = handle(topic, payload)
            again = handle(topic, payload)  # the same message, sent again: a duplicate
            assert engine.router.beds[bed].duplicates >= 1
            assert not first.durable and not again.durable, topic
            await engine.writer.close()  # everything written
            assert first.durable and again.durable, topic
        stats = (await store.stats())["beds"]
        assert stats["site/bed1"]["messages"] == 2  # each stored once
        # The first delivery already sealed into a batch that waits to be written: the repeat
        # waits for that batch, not for nothing.
        later = NumericsFrame(bed, 8, t0 + 1_000_000, {"HR": 81.0})
        engine.writer = writer = StoreWriter(
            store, IngestSettings(spool_dir=tmp_path / "spool2"), IngestMetrics()
        )
        engine.ingest._writer = writer
        first = handle(wire.numerics_topic(bed), wire.encode_numerics(later))
        writer._seal()
        again = handle(wire.numerics_topic(bed), wire.encode_numerics(later))
        writer._seal()  # only the repeat since the last batch
        assert not first.durable and not again.durable
        assert await writer._write_pending()
        assert first.durable and again.durable
    finally:
        await store.close()


def test_a_taken_over_stream_drops_only_what_is_stored() -> None:
    """A worker that takes a bed over knows which of its recent messages are stored, not only
    the newest: a message the last owner took after a newer one and never stored (the broker
    sends unacknowledged messages again when it chooses) is new data, not a repeat."""
    t0 = 1_700_000_000_000_000
    tracker = SeqTracker()
    # The last owner stored 90-97 and 99-100; it held 98, unstored, when it died.
    tracker.catch_up(100, stored=frozenset([*range(90, 98), 99, 100]))
    assert tracker.observe(101, t0 + 101)[0] == "next"
    assert tracker.observe(98, t0 + 98)[0] != "duplicate"  # never stored: taken
    assert tracker.observe(99, t0 + 99)[0] == "duplicate"  # stored: sent again
    assert tracker.observe(95, t0 + 95)[0] == "duplicate"
    # Without the stored numbers (only the newest is known), everything near it is a repeat.
    blind = SeqTracker()
    blind.catch_up(100)
    assert blind.observe(98, t0 + 98)[0] == "duplicate"
