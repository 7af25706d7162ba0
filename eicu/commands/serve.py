"""``eicu serve``: the production engine, against a real broker and a real database."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from eicu import heap
from eicu.commands import stop_on_signals
from eicu.config import MqttSettings, Settings, read_env_file
from eicu.errors import ConfigError

if TYPE_CHECKING:
    from alerting.desk import ServiceDesk
    from eicu.exposition import MetricsServer
    from eicu.health import Health
    from eicu.store import Store
    from ingest.engine import Engine

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="an env-style file of EICU_* settings (the environment wins)"
    )


def load_env(config: Path | None) -> dict[str, str]:
    """The ``EICU_*`` settings: the ``--config`` file's, then the environment's (which win)."""
    env: dict[str, str] = {}
    if config is not None:
        if not config.is_file():
            raise ConfigError("--config", f"no such file: {config}")
        env.update(read_env_file(config))
    env.update({k: v for k, v in os.environ.items() if k.startswith("EICU_")})
    return env


def load_settings(config: Path | None) -> Settings:
    return Settings.from_env(load_env(config))


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if settings.database_url is None:
        raise ConfigError("EICU_DATABASE_URL", "required by eicu serve (postgresql://...)")
    mqtt = settings.mqtt or MqttSettings(client_id=f"eicu-ingest-{socket.gethostname()}")
    from eicu.bus import tls_context

    tls_context(mqtt)  # a TLS file that cannot be used stops the start here, naming its key
    heap.settle()
    asyncio.run(serve(settings, mqtt))
    return 0


async def open_or_later(store: Store) -> bool:
    """Opens the store (migrations included); False when the database is down. Ingest, alarms
    and escalation do not need it: data waits in memory and the spool, alarms in the outbox, and
    the writer opens the store (schema brought up to date) when the database is back."""
    from eicu.errors import StorageUnavailable

    try:
        await store.open()
    except StorageUnavailable as exc:
        log.warning("starting without the database (%s); it is opened when it is back", exc)
        return False
    log.info("store ready (%s); schema up to date", store.backend)
    return True


def health_and_metrics(settings: Settings, engine: Engine) -> tuple[Health, MetricsServer | None]:
    """The process's health (``/healthz``, ``/readyz``) with the engine's readiness checks, and
    the ``EICU_METRICS_PORT`` server giving it beside ``/metrics`` when that port is set."""
    from eicu.exposition import MetricsServer
    from eicu.health import Health

    health = Health()
    health.bind(asyncio.get_running_loop())
    engine.add_health_checks(health)
    if settings.metrics_port is None:
        return health, None
    server = MetricsServer(
        settings.metrics_port,
        "127.0.0.1",
        engine.metrics.registry,
        token=settings.http.metrics_token,
        bed_labels=settings.http.metrics_bed_labels,
        health=health,
    )
    return health, server


async def serve(settings: Settings, mqtt: MqttSettings, stop: asyncio.Event | None = None) -> None:
    """Run every role in this process until SIGTERM or SIGINT (or ``stop`` is set)."""
    from dashboards.app import create_app
    from dashboards.server import DashboardServer
    from dashboards.users import Users
    from eicu.commands.hl7 import listener_from_env, start_listener
    from eicu.metrics import IngestMetrics, StoreMetrics
    from eicu.store import open_store
    from ingest.engine import Engine

    assert settings.database_url is not None
    metrics = IngestMetrics()
    store = open_store(settings.database_url, settings.store, StoreMetrics(metrics.registry))
    store_open = await open_or_later(store)
    engine = Engine(
        mqtt,
        settings.ingest,
        store,
        alerting=settings.alerting,
        # The alarm audit trail and receipts are copied from the outbox to the same store.
        alarm_store=store,
        metrics=metrics,
        store_open=store_open,
        # for more dashboards in processes of their own (EICU_STATE_PERIOD_S; never by default)
        state_period_s=settings.ingest.state_period_s,
    )
    if settings.alerting.policy is not None:
        policy = settings.alerting.policy
        log.info(
            "alarm policy %s v%d from %s",
            policy.name,
            policy.version,
            settings.alerting.policy_file,
        )
    if settings.alerting.rota_path is not None:
        log.info("alarm escalation by the rota in %s", settings.alerting.rota_path)
    else:
        log.warning(
            "no on-call rota (EICU_ROTA_FILE): alarm changes go to the beds' alarms topics, "
            "nobody is paged"
        )
    # /healthz and /readyz on the dashboard and the metrics server (docs/deployment.md)
    health, metrics_server = health_and_metrics(settings, engine)
    if metrics_server is not None:
        log.info(
            "metrics on http://127.0.0.1:%d/metrics (and /healthz, /readyz)", metrics_server.port
        )
    users = Users(settings.http.users_file)
    if not users.list():
        log.warning(
            "no dashboard users in %s: add one with 'eicu users add NAME --role admin'",
            settings.http.users_file,
        )
    if not settings.http.cookie_secure:
        log.warning("EICU_COOKIE_SECURE is off: session cookies may travel over plain http")
    try:
        dashboard = DashboardServer(
            create_app(
                engine_source(engine), settings.http, users, settings.video.ice_servers, health
            ),
            settings.http.host,
            settings.http.port,
        )
    except OSError as exc:
        await store.close()
        if metrics_server is not None:
            metrics_server.close()
        where = f"{settings.http.host}:{settings.http.port}"
        raise ConfigError("EICU_HTTP_PORT", f"cannot listen on {where}: {exc}") from exc
    if stop is None:
        stop = stop_on_signals()
    await dashboard.start()
    log.info("dashboard on %s/ (users: %s)", dashboard.url, settings.http.users_file)
    log.info("engine running: %s -> %s", mqtt.url, store.backend)
    # HL7 v2 in (IHE PCD-01) beside the engine when EICU_HL7_SITE is set
    # ADT on the engine's store; rejected messages among the engine's dead letters
    hl7 = listener_from_env(
        dict(os.environ), patients=store, dead_letters=engine.writer.add_dead_letter
    )
    try:
        if hl7 is not None:
            await start_listener(hl7)
        await engine.run_until(stop)
    finally:
        if hl7 is not None:
            await hl7.stop()
        await dashboard.stop()
        if metrics_server is not None:
            metrics_server.close()
        await store.close()
        log.info("engine stopped; %d frames stored this run", engine.writer.stored_frames)


class EngineSource:
    """The dashboard's source in the engine's own process: the engine's beds and alarm service
    read in memory (the alarm service as the engine has it at each use), its store, its
    metrics registry."""

    def __init__(self, engine: Engine) -> None:
        from ingest.live import EngineBeds

        self._engine = engine
        self.beds = EngineBeds(engine)
        self.store = engine.store
        self.registry = engine.metrics.registry

    @property
    def desk(self) -> ServiceDesk | None:
        from alerting.desk import ServiceDesk

        alarms = self._engine.alarms
        return ServiceDesk(alarms) if alarms is not None else None


def engine_source(engine: Engine) -> EngineSource:
    return EngineSource(engine)
