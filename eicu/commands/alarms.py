"""``eicu alarms``: the alarm burden and replays (alerting.cli), and ``eicu alarms deliver``,
alarm delivery as a process of its own.

``eicu alarms deliver [--config FILE]`` pages the on-call rota for the alarm events that
engines started with ``EICU_ALARM_DELIVERY=bus`` publish on the bus (alerting.feed): escalation,
the channels (MQTT back to the bed, webhook, e-mail), retries and receipts through its own
durable outbox, copied to the store's alarm tables. Settings are those of ``eicu serve``
(docs/deployment.md): ``EICU_MQTT_URL`` (required), ``EICU_DATABASE_URL`` (the receipts, and
the live alarms a process taking partitions over goes on with), ``EICU_ROTA_FILE``,
``EICU_SMTP_URL``, ``EICU_OUTBOX_PATH`` (default ``eicu-delivery.db``, or
``eicu-delivery-<EICU_WORKER_ID>.db`` when several share the partitions),
``EICU_ALARM_PARTITIONS``, ``EICU_METRICS_PORT``; with ``EICU_NATS_URL`` several delivery
processes share the delivery partitions (NATS key-value buckets ``eicu-delivery-owners`` and
``eicu-delivery-processes``, ``EICU_OWNERSHIP_TTL_S``), without it this process holds them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from alerting import cli as alarms_cli
from eicu import heap
from eicu.commands import stop_on_signals
from eicu.config import AlertingSettings, Settings, mllp_client_context
from eicu.errors import ConfigError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from alerting.channels import DeliveryChannel
    from alerting.feed import Delivery
    from alerting.outbox import Outbox
    from eicu.clock import Clock
    from eicu.exposition import MetricsServer
    from eicu.store.base import Store

log = logging.getLogger(__name__)

DEFAULT_OUTBOX = Path("eicu-delivery.db")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = alarms_cli.add_arguments(parser)
    deliver = sub.add_parser(
        "deliver",
        help="page the rota for the alarm events engines publish on the bus (its own process)",
    )
    deliver.add_argument(
        "--config", type=Path, help="an env-style file of EICU_* settings (the environment wins)"
    )


def run(args: argparse.Namespace) -> int:
    if args.action != "deliver":
        return alarms_cli.run(args)
    from eicu.commands.serve import load_settings

    settings = load_settings(args.config)
    check(settings)
    heap.settle()
    asyncio.run(deliver(settings))
    return 0


def check(settings: Settings) -> None:
    if settings.mqtt is None:
        raise ConfigError("EICU_MQTT_URL", "required by eicu alarms deliver (the engines' broker)")
    if settings.alerting.rota_path is None:
        log.warning("no EICU_ROTA_FILE: alarm changes reach the beds, nobody is paged")


def outbox_path(settings: Settings) -> Path:
    """The delivery's outbox: ``EICU_OUTBOX_PATH`` where set; else one per process id when
    several processes share the partitions (set ``EICU_WORKER_ID`` so a restart finds it)."""
    path = settings.alerting.outbox_path
    if path != AlertingSettings().outbox_path:
        return path
    if settings.worker.nats_urls:
        return Path(f"eicu-delivery-{settings.worker.worker_id}.db")
    return DEFAULT_OUTBOX


def channels(
    settings: Settings, clock: Clock, store: Store | None = None
) -> dict[str, DeliveryChannel]:
    from alerting.channels import (
        EmailChannel,
        MllpChannel,
        MqttChannel,
        WebhookChannel,
        patients_from,
    )

    assert settings.mqtt is not None
    out: dict[str, DeliveryChannel] = {
        # The alarms back to the beds, on a connection of its own (the engine's alarm account).
        "mqtt": MqttChannel(settings.mqtt.for_alarms(), clock=clock),
        "webhook": WebhookChannel(clock=clock),
    }
    if settings.alerting.smtp is not None:
        out["email"] = EmailChannel(settings.alerting.smtp, clock=clock)
    if settings.alerting.pcd04:
        patient_of = patients_from(store) if store is not None else None
        tls = mllp_client_context(settings.alerting.mllp_tls)
        out["mllp"] = MllpChannel(patient_of=patient_of, clock=clock, tls=tls)
    return out


async def deliver(
    settings: Settings, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run one delivery process until SIGTERM or SIGINT (or ``stop``); ``ready`` is set once
    every partition it owns is read."""
    from alerting.escalation import DeliveryMetrics, Dispatcher, Rota
    from alerting.feed import Delivery, DeliveryFeedMetrics
    from alerting.outbox import Outbox
    from eicu.bus.ownership import (
        LocalOwnership,
        NatsOwnership,
        PartitionOwnership,
        ThreadedOwnership,
    )
    from eicu.clock import SYSTEM_CLOCK
    from eicu.metrics import IngestMetrics, StoreMetrics
    from eicu.store import open_store

    check(settings)
    assert settings.mqtt is not None
    alerting, w = settings.alerting, settings.worker
    clock = SYSTEM_CLOCK
    registry = IngestMetrics().registry
    rota = Rota.from_file(alerting.rota_path) if alerting.rota_path else Rota(sites={})
    n = alerting.partitions
    ownership: PartitionOwnership
    if w.nats_urls:
        ownership = ThreadedOwnership(
            NatsOwnership(
                list(w.nats_urls),
                w.worker_id,
                n,
                ttl_s=w.ownership_ttl_s,
                bucket="eicu-delivery-owners",
                workers_bucket="eicu-delivery-processes",
            )
        )
    else:
        ownership = LocalOwnership(range(n), total=n)
    # The mqtt settings' client id names the partitions' sessions; its own connections (the
    # channel) carry the process's id beside it when several share the partitions.
    mqtt = settings.mqtt
    channel_settings = settings
    if w.nats_urls:
        channel_settings = dataclasses.replace(
            settings, mqtt=dataclasses.replace(mqtt, client_id=f"{mqtt.client_id}-{w.worker_id}")
        )
    outbox = Outbox(outbox_path(settings), clock=clock)
    from eicu.commands.serve import open_or_later

    store: Store | None = None
    store_open = False
    if settings.database_url is not None:
        store = open_store(settings.database_url, settings.store, StoreMetrics(registry))
        store_open = await open_or_later(store)
    chans = channels(channel_settings, clock, store)
    dispatcher = Dispatcher(
        rota, outbox, chans, clock=clock, metrics=DeliveryMetrics(registry),
        pcd04=alerting.pcd04,
    )  # fmt: skip
    delivery = Delivery(
        mqtt, dispatcher, ownership, store=store, clock=clock,
        metrics=DeliveryFeedMetrics(registry),
    )  # fmt: skip
    metrics_server = _health_and_metrics(settings, delivery, registry)
    if stop is None:
        stop = stop_on_signals()
    log.info(
        "alarm delivery: %d partitions%s, events from %s, outbox %s",
        n,
        f" shared over {','.join(w.nats_urls)}" if w.nats_urls else "",
        mqtt.url,
        outbox.path,
    )
    tasks = [asyncio.create_task(delivery.run(), name="delivery")]
    if store is not None:
        tasks.append(
            asyncio.create_task(_copy(outbox, store, store_open, clock), name="delivery-copy")
        )
    if ready is not None:
        tasks.append(asyncio.create_task(_signal_ready(delivery, ready), name="delivery-ready"))
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        waiter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if store is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(outbox.copy_to_store(store), 5.0)
            await store.close()
        for channel in chans.values():
            with contextlib.suppress(Exception):
                await channel.close()
        outbox.close()
        if metrics_server is not None:
            metrics_server.close()
        log.info("alarm delivery stopped")


async def _copy(outbox: Outbox, store: Store, store_open: bool, clock: Clock) -> None:
    """Receipts and the audit trail into the store, once it can be opened."""
    from alerting.outbox import run_copy
    from eicu.backoff import Backoff
    from eicu.errors import StorageUnavailable

    backoff = Backoff(0.5, 30.0)
    while not store_open:
        await clock.sleep(backoff.next_s())
        try:
            await store.open()
            store_open = True
        except StorageUnavailable as exc:
            log.debug("alarm tables not reachable yet (%s); receipts wait in the outbox", exc)
    await run_copy(outbox, store, clock=clock)


async def _signal_ready(delivery: Delivery, ready: asyncio.Event) -> None:
    while not delivery.ready:
        await asyncio.sleep(0.05)
    ready.set()


def _health_and_metrics(
    settings: Settings, delivery: Delivery, registry: CollectorRegistry
) -> MetricsServer | None:
    """``/healthz``, ``/readyz`` (every owned partition read) and ``/metrics`` on
    ``EICU_METRICS_PORT`` when set."""
    from eicu.exposition import MetricsServer
    from eicu.health import Health

    if settings.metrics_port is None:
        return None
    health = Health()
    health.bind(asyncio.get_running_loop())

    def partitions() -> tuple[bool, str]:
        owned = delivery.ownership.owned
        if not delivery.ready:
            return False, f"reading {len(owned)} partitions"
        return True, f"{len(owned)} of {delivery.partitions} partitions read"

    health.add_check("partitions", partitions)
    return MetricsServer(
        settings.metrics_port,
        "127.0.0.1",
        registry,
        token=settings.http.metrics_token,
        bed_labels=settings.http.metrics_bed_labels,
        health=health,
    )
