"""The live values of a remote site's beds at the hub (ingest.site_live): read from the hub's copy
of the site's stream, newest first, ahead of what the feed stores; a real NATS server with a
``SITE_<id>`` stream, started on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import numpy as np
import psycopg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from prometheus_client import CollectorRegistry

from dashboards.bus import BusBeds
from eicu.bus import Client
from eicu.bus.sites import FEED_CONSUMER, ensure_hub_stream, ensure_site_stream
from eicu.clock import ManualClock
from eicu.codes import BY_KEY
from eicu.config import MqttSettings
from eicu.devservices import EicuProcess, NatsServer, ServiceError, hub_nats
from eicu.live import decode_batch, live_waveform_topic, state_topic
from eicu.metrics import IngestMetrics
from eicu.models import BedKey, NumericsFrame, SignalBlock, WaveformFrame
from eicu.site_link import SiteLink as LinkReport
from eicu.site_link import decode_link, link_topic
from eicu.sites import hub_stream
from eicu.wire import decode_waveform, encode_numerics, encode_waveform
from ingest.site_live import LiveValues, LiveWaveforms, apply_newer
from ingest.state import BedRouter
from tests.site_servers import SiteLink, feed_process, site_link, until

pytestmark = [pytest.mark.nats]

SITE = "karamay"
NOW_US = 1_800_000_000_000_000


def numerics(bed: str, seq: int, ts_us: int, hr: float) -> NumericsFrame:
    return NumericsFrame(BedKey(SITE, bed), seq, ts_us, {"HR": hr, "SPO2": 97.0})


def subject(bed: str) -> str:
    return f"eicu.v1.{SITE}.{bed}.numerics"


def test_only_newer_values_are_taken() -> None:
    router = BedRouter(IngestMetrics())
    bed = BedKey(SITE, "bed1")
    assert apply_newer(router, numerics("bed1", 9, NOW_US, 120.0)) == 2
    # an older value (the backlog reaching the state later) changes nothing
    assert apply_newer(router, numerics("bed1", 3, NOW_US - 60_000_000, 80.0)) == 0
    state = router.beds[bed]
    assert state.latest["HR"] == (120.0, NOW_US)
    # the bed is seen at its value's device time, not at the time the hub read it
    assert state.last_seen_us == NOW_US and state.status == "online"
    # a value the monitor sent as missing is a value too: it is never filled in from before
    missing = NumericsFrame(bed, 10, NOW_US + 1_000_000, {"HR": None})
    assert apply_newer(router, missing) == 1
    assert state.latest["HR"] == (None, NOW_US + 1_000_000)


def test_bad_messages_are_counted_and_cost_nothing() -> None:
    router = BedRouter(IngestMetrics())
    clock = ManualClock(NOW_US)
    live = LiveValues(router, {}, CollectorRegistry(), max_ahead_s=600.0, clock=clock)
    good = encode_numerics(numerics("bed1", 1, NOW_US - 1_000_000, 100.0))
    cases = [
        (subject("bed1"), b"{not json", "malformed"),
        ("eicu.v1.hotan.bed1.numerics", good, "wrong_site"),
        (f"eicu.v1.{SITE}.bed1.waveform", good, "wrong_topic"),
        (subject("bed1"), encode_numerics(numerics("bed1", 2, NOW_US + 3_600_000_000, 1.0)),
         "clock_ahead"),
    ]  # fmt: skip
    for subj, payload, reason in cases:
        assert live.take(SITE, subj, payload) == 0, reason
        rejected = live.metrics.rejected.labels(site=SITE, reason=reason)._value.get()
        assert rejected >= 1, (reason, rejected)
    assert router.beds == {} or all(not s.latest for s in router.beds.values())
    assert live.take(SITE, subject("bed1"), good) == 2
    assert router.beds[BedKey(SITE, "bed1")].latest["HR"] == (100.0, NOW_US - 1_000_000)


@pytest.fixture
async def hub() -> AsyncIterator[NatsServer]:
    server = hub_nats(partitions=None)
    try:
        server.start()
    except ServiceError as exc:
        server.cleanup()
        pytest.fail(f"cannot start the hub's NATS server: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def servers() -> Iterator[SiteLink]:
    """The hub's and the site's NATS servers, the site's leaf link to the hub."""
    yield from site_link(SITE)


@pytest.fixture
async def hub_nc(servers: SiteLink) -> AsyncIterator[Any]:
    """A connection to the hub, once the site's stream and the hub's copy of it exist."""
    site_nc = await nats.connect(servers.site.nats_url)
    hub_nc = await nats.connect(servers.hub.nats_url)
    try:
        await ensure_site_stream(site_nc)
        await ensure_hub_stream(hub_nc, SITE)
        yield hub_nc
    finally:
        for nc in (site_nc, hub_nc):
            await nc.close()


async def test_the_newest_values_come_first_and_new_ones_follow(hub: NatsServer) -> None:
    """A hub copy holding a backlog: the reader starts at each bed's newest message, whatever
    came before it, and takes what is appended after (newer values only)."""
    nc = await nats.connect(hub.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=hub_stream(SITE), subjects=[f"eicu.v1.{SITE}.>"]))
        # ten minutes of backlog for two beds, a message a second, and a waveform in between
        for i in range(600):
            for bed, hr in (("bed1", 60.0 + i % 7), ("bed2", 90.0)):
                ts = NOW_US - (600 - i) * 1_000_000
                await js.publish(subject(bed), encode_numerics(numerics(bed, i + 1, ts, hr)))
        await js.publish(f"eicu.v1.{SITE}.bed1.waveform", b"not numerics")
        router = BedRouter(IngestMetrics())
        live = LiveValues(
            router, {SITE: nc}, CollectorRegistry(), max_ahead_s=600.0, clock=ManualClock(NOW_US)
        )
        await live.start()
        try:
            bed1, bed2 = BedKey(SITE, "bed1"), BedKey(SITE, "bed2")

            def newest_held() -> bool:
                beds = router.beds
                return (
                    bed1 in beds
                    and bed2 in beds
                    and beds[bed1].latest.get("HR", (None, 0))[1] == NOW_US - 1_000_000
                    and beds[bed2].latest.get("HR", (None, 0))[1] == NOW_US - 1_000_000
                )

            await until(newest_held, "each bed's newest value")
            # the last message of each bed only, not the ten minutes before it
            assert live.taken == 4, live.taken
            assert router.beds[bed1].latest["HR"] == (60.0 + 599 % 7, NOW_US - 1_000_000)
            # a live value appended after: taken; an old one appended late: not
            await js.publish(subject("bed1"), encode_numerics(numerics("bed1", 700, NOW_US, 150.0)))
            await js.publish(
                subject("bed2"), encode_numerics(numerics("bed2", 5, NOW_US - 500_000_000, 10.0))
            )
            await until(lambda: router.beds[bed1].latest["HR"] == (150.0, NOW_US), "the new value")
            await js.publish(subject("bed2"), encode_numerics(numerics("bed2", 701, NOW_US, 91.0)))
            await until(lambda: router.beds[bed2].latest["HR"] == (91.0, NOW_US), "bed2's new one")
            assert live.taken == 8
        finally:
            await live.stop()
    finally:
        await nc.close()


BACKLOG = 120
HR_CODE = BY_KEY["HR"].code


@pytest.mark.db
async def test_the_feed_shows_a_sites_newest_values_while_its_backlog_is_stored(
    servers: SiteLink, hub_nc: Any, db_url: str, tmp_path: Path
) -> None:
    """A site's backlog of two minutes at the hub; the feed's durable consumer holds ten
    messages at a time (set up so beforehand: a slow store; the feed then takes about ten a
    second). The feed's
    snapshots show the bed's newest heart rate at once, long before the backlog is stored;
    every message is then stored once."""
    feed: EicuProcess | None = None
    try:
        await hub_nc.jetstream().add_consumer(
            hub_stream(SITE),
            ConsumerConfig(
                durable_name=FEED_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=10,
            ),
        )
        await until(servers.leaf_up, "the site's leaf link is up")
        newest_us = time.time_ns() // 1000 // 1000 * 1000
        gateway = MqttSettings(host="127.0.0.1", port=servers.site.mqtt_port, client_id="gw-1")
        async with Client(gateway, timeout=10) as client:
            for i in range(BACKLOG):
                ts = newest_us - (BACKLOG - 1 - i) * 1_000_000
                hr = 150.0 if i == BACKLOG - 1 else 70.0 + i % 5
                payload = encode_numerics(numerics("bed1", i + 1, ts, hr))
                await client.publish(f"eicu/v1/{SITE}/bed1/numerics", payload, qos=1)
        hub_js = hub_nc.jetstream()

        async def all_at_hub() -> bool:
            return (await hub_js.stream_info(hub_stream(SITE))).state.messages >= BACKLOG

        await until(all_at_hub, "the backlog in the hub's copy of the site's stream")
        feed = feed_process(servers, db_url, tmp_path, None, flush_s=0.05, state_period_s=0.25)
        reader = MqttSettings(host="127.0.0.1", port=servers.hub.mqtt_port, client_id="reader")
        async with Client(reader, timeout=10, clean_session=True) as client:
            await client.subscribe(state_topic(SITE), qos=0)
            async with asyncio.timeout(60):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    beds = {s.bed: s for s in decode_batch(message.payload)}
                    shown = beds.get(BedKey(SITE, "bed1"))
                    if shown is not None and shown.latest.get("HR") == (150.0, newest_us):
                        break
        stored_then = stored(db_url)
        assert stored_then < BACKLOG, f"the backlog was stored ({stored_then}) before it was shown"
        # The link's report says the site is catching up, since the oldest heart rate not
        # stored yet; once the backlog is stored (within 30 s of the newest), it says no more.
        catching_up: list[tuple[LinkReport, int]] = []
        caught_up: list[LinkReport] = []
        async with Client(reader, timeout=10, clean_session=True) as client:
            await client.subscribe(link_topic(SITE), qos=0)
            async with asyncio.timeout(90):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    link = decode_link(str(message.topic), message.payload)
                    if link.unstored_since_us is not None and not caught_up:
                        catching_up.append((link, stored(db_url)))
                    elif catching_up and link.state == "up":
                        caught_up.append(link)
                        break
        link, stored_by_then = catching_up[0]
        assert link.state == "up" and link.unstored > 0
        oldest_us = newest_us - (BACKLOG - 1) * 1_000_000
        # the report's time is that of a message not yet stored when the report was read
        assert oldest_us + (stored_by_then - 2 * 10) * 1_000_000 <= link.unstored_since_us
        assert link.unstored_since_us <= newest_us - 30_000_000
        assert caught_up[0].unstored_since_us is None

        def all_stored() -> bool:
            return stored(db_url) == BACKLOG

        await until(all_stored, "every message of the backlog stored", timeout_s=90)
        assert distinct_stored(db_url) == BACKLOG
    finally:
        if feed is not None:
            feed.stop()


def stored(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM numerics WHERE code = %s", (HR_CODE,)).fetchone()
    return int(row[0]) if row else 0


def distinct_stored(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT time) FROM numerics WHERE code = %s", (HR_CODE,)
        ).fetchone()
    return int(row[0]) if row else 0


def waveform(bed: str, seq: int, t0_us: int) -> bytes:
    block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.arange(62, dtype=np.int16))
    return encode_waveform(WaveformFrame(BedKey(SITE, bed), seq, t0_us, (block,)), coded=True)


def test_only_live_waveforms_are_passed_on_and_bad_ones_are_counted() -> None:
    clock = ManualClock(NOW_US)
    sent: list[tuple[str, bytes]] = []
    registry = CollectorRegistry()
    live = LiveWaveforms({}, lambda t, p: sent.append((t, p)), registry, max_ahead_s=5.0,
                         clock=clock)  # fmt: skip
    subj = f"eicu.v1.{SITE}.bed1.waveform"
    fresh = waveform("bed1", 10, NOW_US - 300_000)
    assert live.take(SITE, subj, fresh)
    assert sent == [(live_waveform_topic(BedKey(SITE, "bed1")), fresh)]  # as the gateway sent it
    skipped = [
        (subj, waveform("bed1", 9, NOW_US - 550_000), "backlog"),  # older than the last passed on
        (subj, waveform("bed1", 3, NOW_US - 60_000_000), "backlog"),  # older than the live window
        (subj, waveform("bed1", 11, NOW_US + 60_000_000), "clock_ahead"),
        ("eicu.v1.hotan.bed1.waveform", fresh, "wrong_site"),
        (f"eicu.v1.{SITE}.bed1.numerics", fresh, "wrong_topic"),
        (subj, fresh[:-3], "truncated"),
    ]
    for subject, payload, reason in skipped:
        assert not live.take(SITE, subject, payload), reason
        assert live.skipped.labels(site=SITE, reason=reason)._value.get() >= 1, reason
    assert len(sent) == 1
    # the next frame of the bed, and another bed's, go on
    assert live.take(SITE, subj, waveform("bed1", 11, NOW_US - 50_000))
    assert live.take(SITE, f"eicu.v1.{SITE}.bed2.waveform", waveform("bed2", 1, NOW_US - 60_000))
    assert len(sent) == 3


def test_a_dashboard_draws_a_remote_beds_live_waveforms() -> None:
    beds = BusBeds(MqttSettings(client_id="dash-test"), CollectorRegistry())
    bed = BedKey(SITE, "bed1")
    beds.watch(bed)
    beds._traces[bed] = {}
    beds.handle(live_waveform_topic(bed), waveform("bed1", 1, NOW_US), NOW_US)
    trace = beds.traces(bed)["ECG_II"]
    assert trace.ring.total == 62 and trace.fs_hz == 250.0


@pytest.mark.db
async def test_the_feed_passes_a_sites_live_waveforms_to_the_dashboards_and_not_its_backlog(
    servers: SiteLink, hub_nc: Any, db_url: str, tmp_path: Path
) -> None:
    """A site's gateway sends a frame two minutes old (a backlog's), then live ones: the hub's
    feed passes the live ones on, as they were sent, on the topic dashboards read for the bed,
    and not the old one (which is stored)."""
    feed: EicuProcess | None = None
    try:
        await until(servers.leaf_up, "the site's leaf link is up")
        feed = feed_process(
            servers, db_url, tmp_path, None, flush_s=0.05, state_period_s=0.25
        ).wait_ready(90)
        gateway = MqttSettings(host="127.0.0.1", port=servers.site.mqtt_port, client_id="gw-1")
        reader = MqttSettings(host="127.0.0.1", port=servers.hub.mqtt_port, client_id="dash")
        got: list[bytes] = []
        async with Client(reader, timeout=10, clean_session=True) as dash:
            await dash.subscribe(live_waveform_topic(BedKey(SITE, "+")), qos=0)
            async with Client(gateway, timeout=10) as client:
                now = time.time_ns() // 1000
                old = waveform("bed1", 1, now - 120_000_000)
                await client.publish(f"eicu/v1/{SITE}/bed1/waveform", old, qos=1)

                async def monitor() -> None:  # live frames, one every 0.25 s
                    for seq in range(2, 200):
                        payload = waveform("bed1", seq, time.time_ns() // 1000)
                        await client.publish(f"eicu/v1/{SITE}/bed1/waveform", payload, qos=1)
                        await asyncio.sleep(0.25)

                sending = asyncio.create_task(monitor())
                try:
                    async with asyncio.timeout(30):
                        async for message in dash.messages:
                            assert isinstance(message.payload, bytes)
                            got.append(message.payload)
                            if len(got) >= 3:
                                break
                finally:
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sending
        decoded = [decode_waveform(BedKey(SITE, "bed1"), p) for p in got]
        assert all(f.seq >= 2 for f in decoded), [f.seq for f in decoded]  # never the old one
        assert [f.seq for f in decoded] == sorted(f.seq for f in decoded)

        # the old frame was stored all the same
        def old_stored() -> bool:
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT coalesce(sum(n_frames), 0) FROM waveforms").fetchone()
            return row is not None and int(row[0]) >= 1

        await until(old_stored, "the old frame in the hub's store")
    finally:
        if feed is not None:
            feed.stop()
