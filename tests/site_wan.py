"""A remote site across an emulated WAN (tests/netns.py), end to end: ``eicu site`` paging the
site's nurse, ``eicu site-feed`` storing the hub's copy in PostgreSQL, a gateway publishing a
few beds at the monitors' pace over MQTT QoS 1, and something happening to the link meanwhile (a
``Disturbance``: a cut, a flapping link, nothing but delay and loss). One bed's heart rate goes
to 150 when the disturbance calls ``make_sick``. Afterwards the hub must hold every heart rate
the site PUBACKed exactly once at its device time, the feed must have acknowledged everything,
the site must have paged its nurse once for the alarm, and the hub's alarm history must have
the site's events of that alarm."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import numpy as np
import psycopg
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamInfo

from eicu import wire
from eicu.bus import Client
from eicu.bus.sites import FEED_CONSUMER, source_state
from eicu.config import MqttSettings
from eicu.models import BedKey, SignalBlock, WaveformFrame
from eicu.sites import SITE_STREAM, hub_stream
from tests.alarm_servers import HookServer
from tests.site_servers import (
    WanSiteLink,
    feed_process,
    hub_alarm_events,
    hub_samples,
    publish_heart_rates,
    site_alarm_events,
    site_process,
    until,
)

SICK = "bed-2"  # its heart rate rises to 150 once the disturbance calls ``make_sick``
PAGED_WITHIN_S = 40.0  # HR_HIGH: above 130 for 10 s, then the page
DRAIN_WITHIN_S = 120.0


@dataclass
class Run:
    """What a disturbance sees and records while the gateway publishes."""

    link: WanSiteLink
    db_url: str
    hook: HookServer
    published: list[tuple[str, int, int]] = field(default_factory=list)  # PUBACKed
    sick: asyncio.Event = field(default_factory=asyncio.Event)
    paged_after_s: float | None = None  # from ``sick`` to the page
    drains_s: list[float] = field(default_factory=list)  # each restore to its backlog stored
    _sick_at: float = 0.0

    site_nc: NatsClient | None = None
    hub_nc: NatsClient | None = None

    async def stream_counts(self) -> tuple[int, int]:
        """Messages in the site's stream and in the hub's copy of it."""
        assert self.site_nc is not None and self.hub_nc is not None
        site = await self.site_nc.jetstream().stream_info(SITE_STREAM)
        hub = await self.hub_nc.jetstream().stream_info(hub_stream(self.link.site_id))
        return site.state.messages, hub.state.messages

    def stored(self) -> dict[tuple[str, int], list[int]]:
        return hub_samples(self.db_url, self.link.site_id)

    def paged(self) -> bool:
        return any(
            r.status == 200 and r.body.get("kind") == "HR_HIGH" and SICK in r.body["alarm_id"]
            for r in self.hook.requests
        )

    def make_sick(self) -> None:
        self.sick.set()
        self._sick_at = time.monotonic()

    async def wait_paged(self) -> float:
        """Waits for the nurse's page; the seconds from the bed's going sick to the page."""
        if not self.sick.is_set():
            raise RuntimeError("the bed is not sick yet: nothing to page")
        await until(self.paged, "the site's nurse paged for HR_HIGH", timeout_s=PAGED_WITHIN_S)
        self.paged_after_s = time.monotonic() - self._sick_at
        return self.paged_after_s

    async def drain(self) -> float:
        """Waits until the hub's copy holds everything the site's stream held, and the hub's
        store every heart rate published, before now (after a restore); the seconds it
        took."""
        upto = len(self.published)
        site_held, _ = await self.stream_counts()

        async def stored_all() -> bool:
            if (await self.stream_counts())[1] < site_held:
                return False
            stored = self.stored()
            return all((bed, seq) in stored for bed, seq, _ in self.published[:upto])

        took_s = await until(stored_all, "the backlog in the hub's store", DRAIN_WITHIN_S)
        self.drains_s.append(took_s)
        return took_s


Disturbance = Callable[[Run], Awaitable[None]]

# A bedside monitor's waveform frame every 0.25 s: two ECG leads at 250 Hz, PLETH and ABP at 125.
WAVE_SIGNALS = (("ECG_II", 250.0, 200.0), ("ECG_V", 250.0, 200.0), ("PLETH", 125.0, 100.0),
                ("ABP", 125.0, 10.0))  # fmt: skip
WAVE_FRAME_S = 0.25


async def publish_waveforms(
    link: WanSiteLink, beds: int, seconds: float, *, coded: bool = False
) -> tuple[int, int]:
    """The last ``seconds`` of waveform frames of beds 1..``beds`` published to the site over
    MQTT QoS 1 as fast as it takes them (a gateway's buffer emptied), their samples coded by the
    project's codec with ``coded``; returns the messages and their bytes."""
    rng = np.random.default_rng(7)
    frames = int(seconds / WAVE_FRAME_S)
    start_us = time.time_ns() // 1_000 - int(seconds * 1e6)
    gateway = MqttSettings(host="127.0.0.1", port=link.site.mqtt_port, client_id="gw-waves")
    sent = sent_bytes = 0
    async with Client(gateway, timeout=30, max_inflight_messages=100) as client:
        sends = []
        for seq in range(frames):
            t0_us = start_us + int(seq * WAVE_FRAME_S * 1e6)
            for bed_no in range(1, beds + 1):
                blocks = tuple(
                    SignalBlock(
                        name, fs_hz, gain, 0,
                        rng.integers(-300, 300, int(fs_hz * WAVE_FRAME_S)).astype(np.int16),
                    )
                    for name, fs_hz, gain in WAVE_SIGNALS
                )  # fmt: skip
                bed = BedKey(link.site_id, f"bed-{bed_no}")
                frame = WaveformFrame(bed, seq, t0_us, blocks)
                payload = wire.encode_waveform(frame, coded=coded)
                topic = f"eicu/v1/{link.site_id}/{bed.bed}/waveform"
                sends.append(client.publish(topic, payload, qos=1))
                sent, sent_bytes = sent + 1, sent_bytes + len(payload)
        await asyncio.gather(*sends)
    return sent, sent_bytes


def hub_waveform_frames(db_url: str, site_id: str) -> int:
    """The waveform frames of the site's beds the hub has stored."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(w.n_frames), 0) FROM waveforms w JOIN beds b USING (bed_id)"
            " WHERE b.site = %s",
            (site_id,),
        ).fetchone()
    return int(row[0]) if row else 0


async def run_site_over_wan(
    link: WanSiteLink,
    hook: HookServer,
    db_url: str,
    tmp_path: Path,
    disturb: Disturbance,
    beds: int = 2,
) -> Run:
    """Starts the site's engine and the hub's feed, publishes ``beds`` beds' heart rates twice
    a second each, runs ``disturb`` (which calls ``run.make_sick()`` at some point), then checks
    the outcome (see the module's doc)."""
    if beds < 2:
        raise ValueError(f"need at least 2 beds (one of them {SICK}), got {beds}")
    bed_names = [f"bed-{i}" for i in range(1, beds + 1)]
    site = site_process(link, tmp_path, hook)
    feed = feed_process(link, db_url, tmp_path)
    hub_nc = await nats.connect(link.hub.nats_url)
    site_nc = await nats.connect(link.site.nats_url)
    run = Run(link, db_url, hook, site_nc=site_nc, hub_nc=hub_nc)
    try:
        site.wait_ready(90)
        feed.wait_ready(90)
        await until(link.leaf_up, "the site's leaf link is up")
        done = asyncio.Event()
        publisher = asyncio.create_task(
            publish_heart_rates(link, bed_names, SICK, run.sick, run.published, done)
        )
        try:
            await until(lambda: len(run.stored()) >= 4, "the hub stores the site's data", 60)
            await disturb(run)
            if not run.sick.is_set():
                raise RuntimeError("the disturbance never made the bed sick")
            if run.paged_after_s is None:
                await run.wait_paged()
            await run.drain()
        finally:
            done.set()
            await publisher

        await until(lambda: len(run.stored()) >= len(run.published), "every sample stored")
        expected = {(bed, seq): [ts_us] for bed, seq, ts_us in run.published}
        assert run.stored() == expected  # each sample once, at its device time

        js = hub_nc.jetstream()

        async def all_acknowledged() -> bool:
            info = await js.consumer_info(hub_stream(link.site_id), FEED_CONSUMER)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await until(all_acknowledged, "the feed's acknowledgements")
        stream: StreamInfo = await js.stream_info(hub_stream(link.site_id))
        info = await js.consumer_info(hub_stream(link.site_id), FEED_CONSUMER)
        assert info.delivered.stream_seq == stream.state.last_seq

        # The site paged its nurse once; the hub's history has the site's events of the alarm.
        page = next(r for r in hook.requests if r.body.get("kind") == "HR_HIGH")
        alarm_id = page.body["alarm_id"]
        assert alarm_id.startswith(f"{link.site_id}/{SICK}/HR_HIGH/")
        assert len({r.key for r in hook.requests if alarm_id in r.body["alarm_id"]}) == 1
        site_db = tmp_path / "site.sqlite"

        def same_history() -> bool:
            site_rows = site_alarm_events(site_db, alarm_id)
            return bool(site_rows) and set(site_rows) == set(hub_alarm_events(db_url, alarm_id))

        await until(same_history, "the site's alarm history at the hub")
        site_rows = site_alarm_events(site_db, alarm_id)
        hub_rows = hub_alarm_events(db_url, alarm_id)
        assert "active" in {state for state, _ in site_rows.values()}
        for key, (state, actor) in site_rows.items():
            assert hub_rows[key] == (state, f"site:{link.site_id}/{actor}")
        # The hub's copy is the site's stream: every message, once.
        site_held, hub_held = await run.stream_counts()
        assert hub_held == site_held == stream.state.last_seq
        state = await source_state(hub_nc, link.site_id)
        assert state.messages == hub_held
        return run
    finally:
        await hub_nc.close()
        await site_nc.close()
        for process in (site, feed):
            process.stop()
