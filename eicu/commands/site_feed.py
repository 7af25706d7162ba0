"""``eicu site-feed``: the hub's side of remote sites (docs/remote-sites.md).

For each site of ``EICU_SITES`` it keeps the hub's stream ``SITE_<id>``, which sources the
site's capture stream across the leaf link, and stores what arrives in it into the hub's store:
the engine's ingest (decoder, per-bed sequence tracking, writer) reading the stream through a
durable JetStream consumer, each message acknowledged once its data is durable. It judges no
alarm and pages nobody: a site's alarms are judged and paged at the site, and the changes of
those alarms it forwards are written to the hub's alarm history, marked as raised at the site.

With ``EICU_MQTT_URL`` (the broker the hub's dashboards read: the hub's NATS MQTT listener) it
also publishes, for the dashboards, the sites' beds as it stores them (``eicu/state/<site>``,
every ``EICU_STATE_PERIOD_S``, 1 s by default) and each site's link as the hub's source of the
site's stream says (``eicu/state/<site>/link``, retained): ingest.site_link. The beds' numeric
values in those snapshots are the newest the hub's copy of each site's stream holds
(ingest.site_live), not only the newest stored: after a cut they are current within seconds of
the link's return, while the backlog is still being stored.

    export EICU_SITES=karamay,hotan EICU_NATS_URL=nats://hub1:4222
    export EICU_DATABASE_URL=postgresql://eicu@db.example/eicu
    export EICU_MQTT_URL=mqtt://hub1:1883
    eicu site-feed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eicu import heap
from eicu.commands import stop_on_signals
from eicu.config import MqttSettings, Settings, SiteFeedSettings
from eicu.errors import ConfigError

if TYPE_CHECKING:
    from eicu.metrics import IngestMetrics

log = logging.getLogger(__name__)

# A site's admission and rate limits are applied at the site; its backlog after a cut comes
# faster than real time, and a whole site's beds at once, and must not be refused at the hub as
# a flood (a refused message is dead-lettered and acknowledged: lost to the hub).
_DRAIN_MESSAGES_PER_S = 1e7
_DRAIN_BYTES_PER_S = 1e11
_SITE_BEDS_MAX = 10**6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="an env-style file of EICU_* settings (the environment wins)"
    )


def run(args: argparse.Namespace) -> int:
    from eicu.commands.serve import load_env

    env = load_env(args.config)
    feed_settings = SiteFeedSettings.from_env(env)
    settings = own_client_id(Settings.from_env(env), env)
    if settings.database_url is None:
        raise ConfigError("EICU_DATABASE_URL", "required by eicu site-feed (postgresql://...)")
    heap.settle()
    asyncio.run(feed(settings, feed_settings))
    return 0


def own_client_id(settings: Settings, env: Mapping[str, str]) -> Settings:
    """The feed's MQTT connection has a client id of its own unless one is configured (or the
    broker account's name is used), so it never takes over a worker's session on one host."""
    if settings.mqtt is None or env.get("EICU_MQTT_CLIENT_ID") or settings.mqtt.username:
        return settings
    mqtt = dataclasses.replace(settings.mqtt, client_id=f"eicu-site-feed-{socket.gethostname()}")
    return dataclasses.replace(settings, mqtt=mqtt)


def hub_settings(settings: Settings) -> Settings:
    """The ingest of the feed: no per-site rate limit (a backlog drains faster than real time)
    and no limit on new beds (every bed a site sends was admitted there)."""
    admission = dataclasses.replace(
        settings.ingest.admission,
        site_messages_per_s=_DRAIN_MESSAGES_PER_S,
        site_bytes_per_s=_DRAIN_BYTES_PER_S,
        site_beds_max=_SITE_BEDS_MAX,
        new_beds_burst=_SITE_BEDS_MAX,
        new_beds_per_s=float(_SITE_BEDS_MAX),
    )
    ingest = dataclasses.replace(settings.ingest, admission=admission)
    return dataclasses.replace(settings, ingest=ingest)


def consumers(
    connections: dict[str, Any], feed_settings: SiteFeedSettings
) -> dict[str, Callable[[], Any]]:
    """One consumer factory per site, by reader name ``site-<id>`` (``connections``: each
    site's NATS connection of :func:`eicu.bus.sites.connect`, whose type only the bus adapter
    imports)."""
    from eicu.bus.sites import SiteStreamConsumer

    def factory(site_id: str) -> Callable[[], Any]:
        nc = connections[site_id]
        return lambda: SiteStreamConsumer(nc, site_id, ack_wait_s=feed_settings.ack_wait_s)

    return {f"site-{site_id}": factory(site_id) for site_id in feed_settings.sites}


async def connect_sites(feed_settings: SiteFeedSettings) -> dict[str, Any]:
    """The hub's NATS connection of each site: one for all, or, at a hub where each site has an
    account of its own, one per site as its feed user. Each site's stream is made sure of."""
    from eicu.bus.sites import connect, ensure_hub_stream
    from eicu.sites import site_feed_user

    connections: dict[str, Any] = {}
    try:
        shared = None
        for site_id in feed_settings.sites:
            password = feed_settings.passwords.get(site_id)
            if password is None:
                if shared is None:
                    shared = await connect(feed_settings.nats_urls, name="eicu-site-feed")
                nc = shared
            else:
                nc = await connect(
                    feed_settings.nats_urls,
                    name=f"eicu-site-feed-{site_id}",
                    user=site_feed_user(site_id),
                    password=password,
                )
            connections[site_id] = nc
            await ensure_hub_stream(nc, site_id, max_age_s=feed_settings.max_age_s)
    except BaseException:
        await close_all(connections)
        raise
    return connections


async def close_all(connections: dict[str, Any]) -> None:
    for nc in {id(nc): nc for nc in connections.values()}.values():
        await nc.close()


async def feed(
    settings: Settings,
    feed_settings: SiteFeedSettings,
    stop: asyncio.Event | None = None,
    metrics: IngestMetrics | None = None,
) -> None:
    """Runs until SIGTERM or SIGINT (or ``stop``): what it took is stored or spooled and
    acknowledged before it ends; the rest comes again at the next start."""
    from eicu.bus.sites import SourceState, keep_sources_current, read_source_state
    from eicu.commands.serve import health_and_metrics, open_or_later
    from eicu.metrics import IngestMetrics, StoreMetrics
    from eicu.store import open_store
    from ingest.engine import Engine
    from ingest.live import StatePublisher
    from ingest.site_alarms import SiteAlarmCopy
    from ingest.site_link import SiteLinkWatch, seed_beds
    from ingest.site_live import LiveValues, LiveWaveforms

    settings = hub_settings(settings)
    if settings.database_url is None:
        raise ConfigError("EICU_DATABASE_URL", "required by eicu site-feed (postgresql://...)")
    metrics = metrics or IngestMetrics()
    connections = await connect_sites(feed_settings)
    try:
        store = open_store(settings.database_url, settings.store, StoreMetrics(metrics.registry))
        store_open = await open_or_later(store)
        engine = Engine(
            # not connected: the input is the sites' streams
            MqttSettings(client_id="eicu-site-feed"),
            settings.ingest,
            store,
            metrics=metrics,
            store_open=store_open,
            sources=consumers(connections, feed_settings),
        )
        # The sites' alarm changes into the hub's alarm history, marked as raised there.
        alarms = SiteAlarmCopy(store, engine.writer)
        engine.ingest.on_alarm_state = alarms
        _, metrics_server = health_and_metrics(settings, engine)
        if stop is None:
            stop = stop_on_signals()
        log.info(
            "site feed: %s from %s into %s",
            ",".join(feed_settings.sites),
            ",".join(feed_settings.nats_urls),
            store.backend,
        )
        background = [asyncio.create_task(alarms.run(), name="site-alarms")]
        # A site's backlog follows its link back at once, not after NATS's retry back-off.
        background += [
            asyncio.create_task(keep_sources_current(nc, site_id), name=f"source[{site_id}]")
            for site_id, nc in connections.items()
        ]
        period_s = settings.ingest.state_period_s
        period_s = 1.0 if period_s is None else period_s
        live: LiveValues | None = None
        live_waves: LiveWaveforms | None = None
        if settings.mqtt is None or period_s == 0:
            log.warning(
                "no EICU_MQTT_URL, or EICU_STATE_PERIOD_S 0: the sites' beds and links are not "
                "published for dashboards"
            )
        else:
            # The sites' beds as stored and each site's link, for the dashboards.
            publisher = StatePublisher(
                engine, settings.mqtt.for_state(), period_s, input_delay=False
            )

            async def read(site_id: str) -> SourceState:
                return await read_source_state(connections[site_id], site_id)

            watch = SiteLinkWatch(feed_settings.sites, read, publisher.announce, metrics.registry)

            async def seed_then_watch() -> None:
                try:
                    newest = await seed_beds(
                        engine.router, store, feed_settings.sites,
                        max_age_s=feed_settings.max_age_s,
                    )  # fmt: skip
                except Exception:  # best effort: the beds are shown once they send
                    log.exception("the sites' beds not read from the store")
                    newest = {}
                for site_id, contact_us in newest.items():
                    watch.known_contact(site_id, contact_us)
                await watch.run()

            background += [
                asyncio.create_task(publisher.run(), name="state"),
                asyncio.create_task(seed_then_watch(), name="site-links"),
            ]
            # The beds' newest values as soon as the hub's copy of the stream holds them, ahead
            # of a backlog still being stored.
            live = LiveValues(
                engine.router,
                connections,
                metrics.registry,
                max_ahead_s=settings.ingest.device_clock_max_ahead_s,
            )
            await live.start()
            # The beds' live waveforms for the dashboards' bed views, as the gateways sent them.
            live_waves = LiveWaveforms(
                connections,
                publisher.forward,
                metrics.registry,
                max_ahead_s=settings.ingest.device_clock_max_ahead_s,
            )
            await live_waves.start()
        try:
            await engine.run_until(stop)
        finally:
            if live is not None:
                await live.stop()
            if live_waves is not None:
                await live_waves.stop()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if metrics_server is not None:
                metrics_server.close()
            await store.close()
            log.info("site feed stopped; %d frames stored", engine.writer.stored_frames)
    finally:
        await close_all(connections)
