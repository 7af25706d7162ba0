"""What a broken or hostile gateway can send, against a real Mosquitto and PostgreSQL: a flood
of new bed ids, megabyte junk with the database down, an engine started while the database is
down. Admission rules and dead-letter bounds are also checked alone, on an injected clock."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import psycopg
import pytest

from eicu import wire
from eicu.brokerauth import SESSION_LIMITS
from eicu.config import AdmissionSettings, IngestSettings, MqttSettings, Settings
from eicu.devservices import Mosquitto, Postgres
from eicu.errors import ConfigError
from eicu.metrics import IngestMetrics
from eicu.models import BedKey, DeadLetter, NumericsFrame, StatusFrame
from eicu.store import Store, open_store
from ingest.admission import RELOAD_EVERY_S, Admission, DeadLetters, read_beds_file
from ingest.engine import Engine
from ingest.service import byte_bounded_queue
from ingest.state import BedRouter, input_delay_us
from ingest.writer import batch_bytes
from tests.tcp_proxy import TcpProxy

T0_US = 1_780_000_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _value(engine: Engine, name: str, labels: dict[str, str] | None = None) -> float:
    return engine.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def _until(check: Callable[[], bool], timeout_s: float = 60.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


async def _publish_all(port: int, messages: list[tuple[str, bytes]], chunk: int = 20) -> None:
    """QoS 1, ``chunk`` at a time: as many as the client keeps in flight (paho's default 20),
    so that none waits in its queue of messages not yet sent."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="gw-hostile") as client:
        for i in range(0, len(messages), chunk):
            await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in messages[i : i + chunk]))


def _numerics(bed: BedKey, seq: int, values: dict[str, float | None] | None = None) -> bytes:
    frame = NumericsFrame(bed, seq, T0_US + seq * 1_000_000, values or {"HR": 72.0})
    return wire.encode_numerics(frame)


@pytest.fixture
def pg_proxy(pg_server: Postgres) -> Iterator[TcpProxy]:
    proxy = TcpProxy(pg_server.port).start()
    yield proxy
    proxy.stop()


def _via(db_url: str, proxy: TcpProxy) -> str:
    return db_url.replace(f":{proxy.target[1]}/", f":{proxy.port}/")


# --- admission rules, alone ----------------------------------------------------------------------


def test_beds_file_registers_beds_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "beds.txt"
    path.write_text("# site/bed\nicu/bed-01\nicu/bed-02  # corner\n\nhdu/b1\n")
    expected = {BedKey("icu", "bed-01"), BedKey("icu", "bed-02"), BedKey("hdu", "b1")}
    assert read_beds_file(path) == expected
    path.write_text("icu/bed-01\nicu bed-02\n")
    with pytest.raises(ConfigError, match=r"beds.txt:2"):
        read_beds_file(path)
    path.write_text("icu/bed-01\n\nicu/\n")
    with pytest.raises(ConfigError, match=r"beds.txt:3"):
        read_beds_file(path)


def test_without_auto_registration_only_registered_beds_exist(tmp_path: Path) -> None:
    beds = tmp_path / "beds.txt"
    beds.write_text("icu/bed-01\n")
    clock = FakeClock()
    settings = AdmissionSettings(beds_file=beds, auto_register=False)
    admission = Admission(settings, IngestMetrics(), clock=clock)
    assert admission.check("eicu/v1/icu/bed-01/numerics", 100) is None
    assert admission.check("eicu/v1/icu/bed-02/numerics", 100) == "unknown_bed"
    assert admission.check("eicu/v1/ward/bed-01/waveform", 100) == "unknown_site"
    # a gateway's status keeps the beds that exist
    assert admission.admit_beds("icu", ["bed-01", "bed-02"]) == (("bed-01",), 1)
    # the site's configuration changes: the new bed exists once the file is re-read
    beds.write_text("icu/bed-01\nicu/bed-02\n")
    os.utime(beds, (1, 1))
    clock.now_s += RELOAD_EVERY_S
    assert admission.check("eicu/v1/icu/bed-02/numerics", 100) is None


def test_auto_registration_within_a_rate_and_a_cap_per_site(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = AdmissionSettings(new_beds_burst=3, new_beds_per_s=1.0, site_beds_max=5)
    admitted = tmp_path / "admitted.txt"
    admission = Admission(settings, IngestMetrics(), admitted_path=admitted, clock=clock)
    verdicts = [admission.check(f"eicu/v1/icu/b{i}/numerics", 100) for i in range(5)]
    assert verdicts == [None, None, None, "new_bed_rate", "new_bed_rate"]
    assert admission.check("eicu/v1/hdu/b0/numerics", 100) is None  # each site its own rate
    assert admission.check("eicu/v1/icu/b0/numerics", 100) is None  # admitted beds stay
    clock.now_s += 10.0
    verdicts = [admission.check(f"eicu/v1/icu/b{i}/numerics", 100) for i in range(3, 8)]
    assert verdicts == [None, None, "site_bed_cap", "site_bed_cap", "site_bed_cap"]
    # remembered across a restart, cap included
    again = Admission(settings, IngestMetrics(), admitted_path=admitted, clock=clock)
    assert {b.bed for b in again.admitted if b.site == "icu"} == {f"b{i}" for i in range(5)}
    assert again.check("eicu/v1/icu/b9/numerics", 100) == "site_bed_cap"


def test_rate_limits_per_site_in_messages_and_bytes() -> None:
    clock = FakeClock()
    settings = AdmissionSettings(
        site_messages_per_s=10, site_bytes_per_s=10_000, rate_burst_s=1.0, max_message_bytes=4096
    )
    admission = Admission(settings, IngestMetrics(), clock=clock)
    topic = "eicu/v1/icu/b1/numerics"
    assert [admission.check(topic, 10) for _ in range(11)] == [None] * 10 + ["rate_limited"]
    assert admission.check("eicu/v1/hdu/b1/numerics", 10) is None  # another site: its own
    clock.now_s += 0.5
    assert [admission.check(topic, 10) for _ in range(6)] == [None] * 5 + ["rate_limited"]
    clock.now_s += 10.0
    assert [admission.check(topic, 4000) for _ in range(3)] == [None, None, "rate_limited"]
    assert admission.check(topic, 5000) == "oversized"


def test_dead_letters_keep_a_few_whole_and_sum_up_the_rest() -> None:
    clock = FakeClock()
    kept: list[DeadLetter] = []
    settings = AdmissionSettings(
        dead_letters_per_window=3, dead_letter_window_s=10.0, dead_letter_max_bytes=1000
    )
    letters = DeadLetters(settings, kept.append, clock=clock)
    for i in range(1000):
        letters.add(i, f"eicu/v1/icu/x{i}/numerics", "new_bed_rate", "d", b"{}")
    letters.add(2000, "eicu/v1/icu/b1/numerics", "oversized", "big", b"x" * 5000)
    assert len(kept) == 4
    assert kept[-1].payload == b"x" * 256 and "5000 bytes" in kept[-1].detail
    assert "sha256" in kept[-1].detail
    clock.now_s += 10.0
    letters.add(3000, "eicu/v1/icu/x1/numerics", "new_bed_rate", "d", b"{}")  # a new window
    assert len(kept) == 6
    summary = kept[4]
    assert summary.reason == "new_bed_rate" and summary.detail.startswith("997 more messages")
    assert summary.payload == b""


def test_input_delay_is_not_hidden_by_beds_heard_once() -> None:
    """Every real bed's messages come 8 s late; thousands of beds heard once (delay 0 by
    construction) must not pull the sites' medians to 0."""
    router = BedRouter(IngestMetrics())
    now_s = 1_780_000_000.0

    def feed(bed: BedKey, seq: int, sent_s: float, received_s: float) -> None:
        frame = NumericsFrame(bed, seq, int(sent_s * 1e6), {"HR": 70.0})
        router.route(dataclasses.replace(frame, received_us=int(received_s * 1e6)))

    for site in ("karamay", "hotan"):
        for b in range(5):
            bed = BedKey(site, f"bed-{b:02d}")
            feed(bed, 1, now_s - 20, now_s - 20 + 0.1)  # the fastest one
            feed(bed, 2, now_s - 1 - 8.0, now_s - 1 + 0.1)  # 8 s late
        for b in range(2000):
            feed(BedKey(site, f"x{b}"), 1, now_s - 1, now_s - 0.9)
    # 8 s, less the 19 ms the beds' offsets drifted since their fastest message
    assert input_delay_us(router.beds, int(now_s * 1e6)) == pytest.approx(7.981e6, abs=1000)


async def test_the_incoming_queue_is_bounded_in_bytes() -> None:
    @dataclasses.dataclass
    class Message:
        payload: bytes

    metrics = IngestMetrics()
    queue = byte_bounded_queue(1000, metrics)()
    for size in (400, 400, 400, 100):
        queue.put_nowait(Message(b"x" * size))
    assert queue.qsize() == 3  # the third 400 would have passed 1000 bytes
    value = metrics.registry.get_sample_value
    assert value("eicu_ingest_mqtt_queue_bytes") == 900
    assert value("eicu_ingest_refused_total", {"reason": "engine_overloaded"}) == 1
    await queue.get()
    assert value("eicu_ingest_mqtt_queue_bytes") == 500


# --- against the real servers ---------------------------------------------------------------------


def _engine(
    broker: Mosquitto, store: Store, spool: Path, admission: AdmissionSettings, **kw: object
) -> Engine:
    mqtt = MqttSettings.from_url(broker.url, client_id="eicu-test-hardening")
    settings = IngestSettings(
        spool_dir=spool,
        flush_interval_s=0.1,
        analyse_signals=False,
        admission=admission,
        **kw,  # type: ignore[arg-type]
    )
    return Engine(mqtt, settings, store)


@pytest.mark.broker
@pytest.mark.db
async def test_a_flood_of_new_bed_ids_never_reaches_the_beds(
    broker: Mosquitto, store: Store, db_url: str, tmp_path: Path
) -> None:
    beds_file = tmp_path / "beds.txt"
    real = [BedKey("icu", f"bed-{i:02d}") for i in range(1, 4)]
    beds_file.write_text("".join(f"{b.site}/{b.bed}\n" for b in real))
    admission = AdmissionSettings(
        beds_file=beds_file,
        new_beds_burst=20,
        new_beds_per_s=0.0,
        dead_letters_per_window=10,
        dead_letter_window_s=3600.0,
    )
    engine = _engine(broker, store, tmp_path / "spool", admission)
    await engine.start()
    await engine.wait_connected()
    n_flood, n_real = 2000, 20
    messages: list[tuple[str, bytes]] = []
    for i in range(n_flood):
        fake = BedKey("icu", f"x{i:05d}")
        messages.append((wire.numerics_topic(fake), _numerics(fake, 1)))
        if i % (n_flood // n_real) == 0:
            seq = i // (n_flood // n_real) + 1
            messages += [(wire.numerics_topic(b), _numerics(b, seq)) for b in real]
    # a gateway's status naming every flood bed
    flood_status = StatusFrame(
        "icu", "online", T0_US, gateway="gw1", beds=tuple(f"y{i}" for i in range(500))
    )
    messages.append((wire.gateway_status_topic("icu", "gw1"), wire.encode_status(flood_status)))
    await _publish_all(broker.port, messages)
    refused = {"reason": "new_bed_rate"}
    await _until(
        lambda: (
            _value(engine, "eicu_ingest_refused_total", refused) >= n_flood - 20
            and _value(engine, "eicu_ingest_messages_total", {"kind": "status"}) >= 1
        ),
        what="the flood handled",
    )
    await _until(lambda: engine.writer.stored_data_frames >= 3 * n_real + 20, what="stored")
    await engine.stop()
    # the beds that exist: the registered ones and the burst of new ones, nothing else
    assert set(real) <= set(engine.router.beds)
    assert len(engine.router.beds) == 3 + 20
    assert _value(engine, "eicu_ingest_refused_total", refused) == n_flood - 20
    assert _value(engine, "eicu_ingest_refused_total", {"reason": "unknown_bed"}) == 500
    stats = (await store.stats())["beds"]
    for bed in real:
        assert stats[f"{bed.site}/{bed.bed}"]["messages"] == n_real
    # dead letters: a few whole, the rest summed up in one
    assert await store.dead_letter_counts() == {"new_bed_rate": 11}
    with psycopg.connect(db_url) as conn:
        (detail,) = conn.execute(
            "SELECT detail FROM dead_letters WHERE detail LIKE '%more messages%'"
        ).fetchone()  # type: ignore[misc]
    assert detail.startswith(f"{n_flood - 20 - 10} more messages")
    # the beds admitted are remembered: a restarted engine knows them at once
    again = _engine(broker, store, tmp_path / "spool", admission)
    assert len(again.admission.admitted) == 20


@pytest.mark.broker
@pytest.mark.db
async def test_megabyte_junk_with_the_database_down_stays_bounded_in_bytes(
    broker: Mosquitto, pg_proxy: TcpProxy, db_url: str, tmp_path: Path
) -> None:
    store = open_store(_via(db_url, pg_proxy))
    await store.open()
    memory_max = 2 * 2**20
    # 30 of each kind of junk kept as dead letters, the 200 kB ones whole: 6 MB to hold
    admission = AdmissionSettings(
        dead_letters_per_window=30, dead_letter_window_s=3600.0, dead_letter_max_bytes=2**18
    )
    engine = _engine(
        broker,
        store,
        tmp_path / "spool",
        admission,
        memory_max_bytes=memory_max,
        write_retry_max_s=0.5,
    )
    await engine.start()
    await engine.wait_connected()
    pg_proxy.stop()
    beds = [BedKey("icu", f"bed-{i:02d}") for i in range(4)]
    messages: list[tuple[str, bytes]] = []
    for i in range(40):
        messages.append((wire.numerics_topic(beds[0]), b"\x00" * 2**20))  # oversize
        messages.append((wire.waveform_topic(beds[1]), b"\xff" * 200_000))  # bad, big
        messages += [(wire.numerics_topic(b), _numerics(b, i + 1)) for b in beds]
    peak = 0

    def handled() -> bool:
        nonlocal peak
        waiting = sum(batch_bytes(b) for b, _, _ in engine.writer._queue)
        peak = max(peak, waiting + engine.writer.memory_bytes - engine.writer._queued_bytes)
        accepted = _value(engine, "eicu_ingest_messages_total", {"kind": "numerics"})
        junk = _value(engine, "eicu_ingest_rejected_total", {"reason": "oversized"})
        return accepted >= 160 and junk >= 40 and engine.writer.pending_frames >= 160

    try:
        await _publish_all(broker.port, messages, chunk=20)
        await _until(handled, what="the junk handled")
        assert not engine.writer.available
        # what waits in memory, by the writer's own accounting of its batches
        assert peak <= memory_max + memory_max // 16
        assert engine.writer.memory_bytes <= memory_max + memory_max // 16
        assert engine.metrics.registry.get_sample_value("eicu_ingest_mqtt_queue_bytes") is not None
        assert engine.writer._spool.frames > 0  # the rest went to disk
    finally:
        pg_proxy.start()
    await _until(lambda: engine.writer.pending_frames == 0, what="the outage caught up")
    assert engine.writer.memory_bytes == 0
    assert _value(engine, "eicu_ingest_queue_bytes") == 0
    await engine.stop()
    await store.close()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT reason, length(payload) FROM dead_letters").fetchall()
        n = conn.execute("SELECT count(*) FROM numerics").fetchone()
    assert n == (160,)
    oversize = [size for reason, size in rows if reason == "oversized"]
    assert len(oversize) == 31 and max(oversize) <= 256  # 30 by reference, 1 summing up 10
    assert len([r for r in rows if r[0] != "oversized"]) == 31


# --- eicu serve with the database down ------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.db
async def test_serve_starts_with_the_database_down_alarms_then_stores_everything_once(
    broker: Mosquitto, pg_proxy: TcpProxy, db_url: str, tmp_path: Path
) -> None:
    from eicu.commands.serve import serve

    pg_proxy.stop()
    env = {
        "EICU_MQTT_URL": broker.url,
        "EICU_MQTT_CLIENT_ID": "eicu-serve-test",
        "EICU_DATABASE_URL": _via(db_url, pg_proxy),
        "EICU_SPOOL_DIR": str(tmp_path / "spool"),
        "EICU_OUTBOX_PATH": str(tmp_path / "alarms.db"),
        "EICU_USERS_FILE": str(tmp_path / "users.json"),
        "EICU_HTTP_PORT": "0",
        "EICU_ANALYSE_SIGNALS": "0",
        "EICU_FLUSH_INTERVAL_S": "0.1",
    }
    settings = Settings.from_env(env)
    settings = dataclasses.replace(
        settings, ingest=dataclasses.replace(settings.ingest, write_retry_max_s=0.5)
    )
    assert settings.mqtt is not None
    # The engine's persistent session exists from an earlier run, as after a restart.
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier="eicu-serve-test", clean_session=False
    ) as previous:
        await previous.subscribe(settings.mqtt.topic_filter, qos=1)
    stop = asyncio.Event()
    bed = BedKey("icu", "bed-01")
    alarms: list[dict[str, object]] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="site-icu") as site:
        await site.subscribe(wire.alarms_topic(bed), qos=1)
        engine_task = asyncio.create_task(serve(settings, settings.mqtt, stop))

        async def listen() -> None:
            async for message in site.messages:
                alarms.append(json.loads(bytes(message.payload)))  # type: ignore[arg-type]

        listener = asyncio.create_task(listen())
        try:
            n = 30
            # Published while the engine starts: its persistent session keeps them.
            for seq in range(1, n + 1):
                await site.publish(
                    wire.numerics_topic(bed),
                    _numerics(bed, seq, {"HR": 80.0, "TEMP": 40.0}),
                    qos=1,
                )
            await _until(
                lambda: any("TEMP_HIGH" in json.dumps(a) for a in alarms), what="an alarm on MQTT"
            )
            assert not engine_task.done()
            pg_proxy.start()
            with_db = open_store(db_url)
            await with_db.open()
            try:

                async def stored() -> int:
                    stats = (await with_db.stats())["beds"]
                    return stats.get("icu/bed-01", {}).get("messages", 0)

                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while await stored() < n and loop.time() < deadline:
                    await asyncio.sleep(0.2)
                assert await stored() == n
            finally:
                await with_db.close()
            with psycopg.connect(db_url) as conn:
                rows = conn.execute(
                    "SELECT count(*), count(DISTINCT (time, code)) FROM numerics"
                ).fetchone()
            assert rows == (n * 2, n * 2)  # every value once

            def audited() -> bool:
                with psycopg.connect(db_url) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_tables WHERE tablename = 'alarm_events'"
                    ).fetchone()
                    if row != (1,):
                        return False
                    kinds = conn.execute("SELECT kind, state FROM alarm_events").fetchall()
                return ("TEMP_HIGH", "active") in kinds

            # the alarm's audit trail caught up from the outbox too
            await _until(audited, what="the alarm audit trail in the database")
        finally:
            stop.set()
            await asyncio.wait_for(engine_task, 60)
            listener.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listener


def test_admission_settings_from_the_environment(tmp_path: Path) -> None:
    beds = tmp_path / "beds.txt"
    env = {
        "EICU_BEDS_FILE": str(beds),
        "EICU_AUTO_REGISTER_BEDS": "off",
        "EICU_SITE_BEDS_MAX": "40",
        "EICU_NEW_BEDS_PER_S": "0.5",
        "EICU_NEW_BEDS_BURST": "8",
        "EICU_SITE_MESSAGES_PER_S": "500",
        "EICU_SITE_BYTES_PER_S": "1000000",
        "EICU_MAX_MESSAGE_BYTES": "65536",
        "EICU_MEMORY_MAX_BYTES": str(8 * 2**20),
        "EICU_MQTT_QUEUE_MAX_BYTES": str(4 * 2**20),
    }
    ingest = Settings.from_env(env).ingest
    a = ingest.admission
    assert (a.beds_file, a.auto_register, a.site_beds_max, a.new_beds_per_s) == (
        beds,
        False,
        40,
        0.5,
    )
    assert (a.new_beds_burst, a.site_messages_per_s, a.site_bytes_per_s) == (8, 500, 1e6)
    assert (a.max_message_bytes, ingest.memory_max_bytes, ingest.mqtt_queue_max_bytes) == (
        65536,
        8 * 2**20,
        4 * 2**20,
    )
    with pytest.raises(ConfigError, match="EICU_MAX_MESSAGE_BYTES"):
        Settings.from_env({"EICU_MAX_MESSAGE_BYTES": "10"})
    with pytest.raises(ConfigError, match="EICU_AUTO_REGISTER_BEDS"):
        Settings.from_env({"EICU_AUTO_REGISTER_BEDS": "maybe"})
    # a beds file that is not there stops the engine at start, naming the setting
    with pytest.raises(ConfigError, match="EICU_BEDS_FILE"):
        Admission(a, IngestMetrics())


@pytest.mark.broker
async def test_broker_settings_of_the_deployment_guide_drop_oversized_messages() -> None:
    """The broker-wide lines `eicu broker-auth config` prints (and docs/deployment.md shows)
    load, and max_packet_size keeps a too-large message from ever reaching the engine."""
    guide = (Path(__file__).parents[1] / "docs" / "deployment.md").read_text()
    lines = [line for line in SESSION_LIMITS if not line.startswith("persistence ")]
    for line in SESSION_LIMITS:
        assert f"\n{line}\n" in guide, line  # the guide shows what the command prints
    broker = Mosquitto(auth=["allow_anonymous true", *lines]).start()
    try:
        topic = "eicu/v1/icu/bed-01/waveform"
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="engine") as engine:
            await engine.subscribe(topic, qos=1)
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw") as gw:
                    await gw.publish(topic, b"\x00" * 2**20, qos=1, timeout=2)
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw") as gw:
                await gw.publish(topic, b"\x01" * 500_000, qos=1)
            async with asyncio.timeout(30):
                async for message in engine.messages:
                    assert isinstance(message.payload, bytes)
                    assert len(message.payload) == 500_000  # the megabyte never came
                    break
    finally:
        broker.cleanup()
