"""``eicu dashboard``: the central station's web application in a process of its own.

It reads what the workers publish on the bus (every bed's state, the waveforms of the beds its
pages show) and what the store holds (trends, full disclosure, alarm history), never another
process's memory, and sends acknowledgements and audio pauses to each bed's owner as commands on
the bus (dashboards.bus). Several can run side by side behind a load balancer that keeps a
user's requests on one of them (sessions live in the process that made them).

Settings (docs/deployment.md): ``EICU_MQTT_URL`` (a broker the workers publish their state to:
the hub's NATS MQTT listener, or the Mosquitto of ``eicu serve`` with ``EICU_STATE_PERIOD_S``
set), ``EICU_DATABASE_URL``, the ``EICU_HTTP_*`` and ``EICU_USERS_FILE`` of ``eicu serve``,
``EICU_ALARM_POLICY_FILE`` (the ranking of alarms; the workers' own), ``EICU_METRICS_PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from pathlib import Path

from eicu import heap
from eicu.commands import stop_on_signals
from eicu.config import Settings
from eicu.errors import ConfigError

log = logging.getLogger(__name__)

STORE_RETRY_S = 5.0  # how often a store that was down at the start is tried again


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="an env-style file of EICU_* settings (the environment wins)"
    )


def check(settings: Settings) -> None:
    if settings.database_url is None:
        raise ConfigError("EICU_DATABASE_URL", "required by eicu dashboard (postgresql://...)")
    if settings.mqtt is None:
        raise ConfigError("EICU_MQTT_URL", "required by eicu dashboard (the workers' broker)")


def run(args: argparse.Namespace) -> int:
    from eicu.bus import tls_context
    from eicu.commands.serve import load_settings

    settings = load_settings(args.config)
    check(settings)
    assert settings.mqtt is not None
    tls_context(settings.mqtt)
    heap.settle()
    asyncio.run(dashboard(settings))
    return 0


def own_client_id(settings: Settings) -> Settings:
    """A dashboard's connection has a client id of its own: the one configured (its broker
    account's name, where the broker binds ids to accounts), else one per host and process."""
    assert settings.mqtt is not None
    if os.environ.get("EICU_MQTT_CLIENT_ID") or settings.mqtt.username:
        return settings
    client_id = f"eicu-dashboard-{socket.gethostname()}-{os.getpid()}"
    return dataclasses.replace(
        settings, mqtt=dataclasses.replace(settings.mqtt, client_id=client_id)
    )


async def dashboard(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve the dashboard until SIGTERM or SIGINT (or ``stop`` is set)."""
    from prometheus_client import CollectorRegistry

    from dashboards.app import FixedSource, create_app
    from dashboards.bus import BusBeds, BusDesk
    from dashboards.consult_bus import ConsultRelay
    from dashboards.server import DashboardServer
    from dashboards.users import Users
    from eicu.alarms.policy import load_policy
    from eicu.errors import StorageUnavailable
    from eicu.exposition import MetricsServer
    from eicu.health import Health
    from eicu.metrics import StoreMetrics
    from eicu.store import open_store

    check(settings)
    settings = own_client_id(settings)
    assert settings.mqtt is not None and settings.database_url is not None
    registry = CollectorRegistry()
    store = open_store(settings.database_url, settings.store, StoreMetrics(registry))
    store_open = asyncio.Event()

    async def open_store_when_up() -> None:
        while True:
            try:
                await store.open()
            except StorageUnavailable as exc:
                log.warning("store not reachable (%s); tried again in %.0f s", exc, STORE_RETRY_S)
                await asyncio.sleep(STORE_RETRY_S)
                continue
            store_open.set()
            log.info("store ready (%s)", store.backend)
            return

    beds = BusBeds(settings.mqtt, registry)
    policy = settings.alerting.policy or load_policy()
    source = FixedSource(beds, BusDesk(beds, store, policy), store, registry)
    health = Health()
    health.bind(asyncio.get_running_loop())
    url = settings.mqtt.url

    def bus_check() -> tuple[bool, str]:
        if beds.connected.is_set():
            return True, f"reading {url}"
        return False, f"not connected to {url}"

    def store_check() -> tuple[bool, str]:
        return store_open.is_set(), "open" if store_open.is_set() else "not reachable"

    health.add_check("bus", bus_check)
    health.add_check("store", store_check)
    users = Users(settings.http.users_file)
    if not users.list():
        log.warning(
            "no dashboard users in %s: add one with 'eicu users add NAME --role admin'",
            settings.http.users_file,
        )
    try:
        app = create_app(source, settings.http, users, settings.video.ice_servers, health)
        server = DashboardServer(app, settings.http.host, settings.http.port)
    except OSError as exc:
        where = f"{settings.http.host}:{settings.http.port}"
        raise ConfigError("EICU_HTTP_PORT", f"cannot listen on {where}: {exc}") from exc
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server = MetricsServer(
            settings.metrics_port,
            "127.0.0.1",
            registry,
            token=settings.http.metrics_token,
            bed_labels=settings.http.metrics_bed_labels,
            health=health,
        )
    if stop is None:
        stop = stop_on_signals()
    # Video consults with carts registered with the other dashboard processes, over the bus.
    relay = ConsultRelay(
        app.state.consult, settings.mqtt.client_id, lambda t, p, r: beds.publish(t, p, retain=r)
    )
    beds.add_reader(relay.topic_filter, relay.prefix, relay.handle)
    tasks = [
        asyncio.create_task(open_store_when_up(), name="store"),
        asyncio.create_task(beds.run(), name="bus"),
        asyncio.create_task(relay.run(), name="consult-relay"),
    ]
    await server.start()
    log.info("dashboard on %s/ reading %s and %s", server.url, url, store.backend)
    try:
        await stop.wait()
    finally:
        await server.stop()
        for task in reversed(tasks):  # the relay says it is gone while the bus is still there
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if metrics_server is not None:
            metrics_server.close()
        await store.close()
        log.info("dashboard stopped")
