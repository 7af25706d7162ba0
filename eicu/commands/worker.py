"""``eicu worker``: one engine of the hub, sharing the bus's partitions with the other workers.

Each worker reads, holds and judges the beds of the partitions it owns at the moment
(docs/architecture.md, "Partitions and ownership"): ownership lives in the NATS key-value
buckets of ``EICU_NATS_URL``; the partitions' messages come over MQTT persistent sessions from
``EICU_MQTT_URL`` (the MQTT listener of a node of the same NATS cluster). A worker that dies
leaves its partitions to the others within ``EICU_OWNERSHIP_TTL_S``; whatever it had not stored
comes again to the next owner, which stores each sample once.

Settings are those of ``eicu serve`` (docs/deployment.md) plus ``EICU_NATS_URL``,
``EICU_PARTITION_COUNT`` (the N of the broker's mappings), ``EICU_WORKER_ID`` and
``EICU_OWNERSHIP_TTL_S``. No dashboard runs here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from eicu import heap
from eicu.commands import stop_on_signals
from eicu.config import AlertingSettings, IngestSettings, Settings
from eicu.errors import ConfigError

if TYPE_CHECKING:
    from eicu.metrics import IngestMetrics

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="an env-style file of EICU_* settings (the environment wins)"
    )


def run(args: argparse.Namespace) -> int:
    from eicu.commands.serve import load_settings

    settings = load_settings(args.config)
    check(settings)
    from eicu.bus import tls_context

    assert settings.mqtt is not None
    tls_context(settings.mqtt)
    heap.settle()
    asyncio.run(work(settings))
    return 0


def check(settings: Settings) -> None:
    """What a worker cannot start without, each named by its setting."""
    if settings.database_url is None:
        raise ConfigError("EICU_DATABASE_URL", "required by eicu worker (postgresql://...)")
    if settings.mqtt is None:
        raise ConfigError("EICU_MQTT_URL", "required by eicu worker (the cluster's MQTT listener)")
    if not settings.worker.nats_urls:
        raise ConfigError("EICU_NATS_URL", "required by eicu worker (nats://host:port,...)")
    if settings.mqtt.ack != "persist":
        raise ConfigError("EICU_MQTT_ACK", "a worker acknowledges after persist only")


def own_files(settings: Settings) -> Settings:
    """Each worker keeps its own spool and alarm outbox: where they are left at their defaults,
    they are named after the worker (set ``EICU_WORKER_ID`` for a worker that restarts to find
    them again). Its own connections (the gateways' status, the alarm channel) carry the worker
    id in their client ids, so two workers never take each other's sessions over; the
    partitions' sessions are the partitions' (``eicu-p-<k>``)."""
    w = settings.worker.worker_id
    ingest, alerting = settings.ingest, settings.alerting
    if settings.mqtt is not None:
        mqtt = dataclasses.replace(settings.mqtt, client_id=f"{settings.mqtt.client_id}-{w}")
        settings = dataclasses.replace(settings, mqtt=mqtt)
    if ingest.spool_dir == IngestSettings().spool_dir:
        ingest = dataclasses.replace(ingest, spool_dir=Path(f"eicu-spool-{w}"))
    if alerting.outbox_path == AlertingSettings().outbox_path:
        alerting = dataclasses.replace(alerting, outbox_path=Path(f"eicu-alarms-{w}.db"))
    return dataclasses.replace(settings, ingest=ingest, alerting=alerting)


async def work(
    settings: Settings, stop: asyncio.Event | None = None, metrics: IngestMetrics | None = None
) -> None:
    """Run one worker until SIGTERM or SIGINT (or ``stop`` is set): its partitions are handed
    over to the other workers at once, after what it holds is stored or spooled. ``metrics``:
    where the engine counts and times what it does (read it afterwards, e.g. its latencies)."""
    from eicu.bus.ownership import NatsOwnership, ThreadedOwnership
    from eicu.commands.serve import health_and_metrics, open_or_later
    from eicu.metrics import IngestMetrics, StoreMetrics
    from eicu.store import open_store
    from ingest.engine import Engine

    check(settings)
    settings = own_files(settings)
    assert settings.database_url is not None and settings.mqtt is not None
    w = settings.worker
    metrics = metrics or IngestMetrics()
    store = open_store(settings.database_url, settings.store, StoreMetrics(metrics.registry))
    store_open = await open_or_later(store)
    # Claims and renewals on a loop of their own: a busy engine never loses partitions to a
    # late renewal.
    ownership = ThreadedOwnership(
        NatsOwnership(list(w.nats_urls), w.worker_id, w.partition_count, ttl_s=w.ownership_ttl_s)
    )
    engine = Engine(
        settings.mqtt,
        settings.ingest,
        store,
        alerting=settings.alerting,
        alarm_store=store,
        metrics=metrics,
        store_open=store_open,
        ownership=ownership,
        # the beds' state for dashboards (eicu dashboard): every second unless set
        state_period_s=1.0
        if settings.ingest.state_period_s is None
        else settings.ingest.state_period_s,
    )
    # /healthz and /readyz beside /metrics: ready once the worker's first claims are done and
    # every partition it owns is subscribed (docs/deployment.md)
    _, metrics_server = health_and_metrics(settings, engine)
    if stop is None:
        stop = stop_on_signals()
    log.info(
        "worker %s: %d partitions shared over %s, input from %s",
        w.worker_id,
        w.partition_count,
        ",".join(w.nats_urls),
        settings.mqtt.url,
    )
    try:
        await engine.run_until(stop)
    finally:
        if metrics_server is not None:
            metrics_server.close()
        await store.close()
        log.info("worker %s stopped; %d frames stored", w.worker_id, engine.writer.stored_frames)
