"""``eicu site``: the node of a remote ICU (docs/remote-sites.md).

Beside the site's NATS server (a leaf node of the hub with JetStream domain ``site-<id>``, whose
MQTT listener the gateways publish to), it keeps the site's capture stream (everything the
gateways and this engine publish, for the hub to source across the leaf link) and runs the
engine of ``eicu serve`` on the site's beds: signals, scores, alarms paged to the site's own rota
(``EICU_ROTA_FILE``), the site's own store (``EICU_DATABASE_URL``) and dashboard, whatever the
link to the hub does.

    export EICU_SITE_ID=karamay
    export EICU_SITE_HUB_URL=nats-leaf://hub.example:7422
    eicu site --print-nats-config --store-dir /var/lib/eicu/nats > /etc/nats/site.conf
    nats-server -c /etc/nats/site.conf &        # the site's leaf node (a service of its own)
    export EICU_MQTT_URL=mqtt://127.0.0.1:1883 EICU_NATS_URL=nats://127.0.0.1:4222
    export EICU_DATABASE_URL=sqlite:////var/lib/eicu/site.sqlite EICU_ROTA_FILE=/etc/eicu/rota.json
    eicu site
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from pathlib import Path

from eicu import heap
from eicu.config import MqttSettings, Settings, SiteSettings
from eicu.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="an env-style file of EICU_* settings (the environment wins)"
    )
    parser.add_argument(
        "--print-nats-config",
        action="store_true",
        help="print the configuration of the site's NATS server (a leaf node of the hub) and stop",
    )
    parser.add_argument(
        "--store-dir", type=Path, default=Path("/var/lib/eicu/nats"), help="its JetStream folder"
    )
    parser.add_argument("--host", default="0.0.0.0", help="the address its listeners bind")
    parser.add_argument("--mqtt-port", type=int, default=1883, help="for the gateways")
    parser.add_argument("--client-port", type=int, default=4222, help="NATS, for eicu site")
    parser.add_argument("--http-port", type=int, default=8222, help="monitoring (/healthz)")


def run(args: argparse.Namespace) -> int:
    from eicu.commands.serve import load_env

    env = load_env(args.config)
    site = SiteSettings.from_env(env)
    if args.print_nats_config:
        print(nats_config_of(site, args), end="")
        return 0
    settings = Settings.from_env(env)
    mqtt = check(settings, site)
    from eicu.bus import tls_context

    tls_context(mqtt)  # a TLS file that cannot be used stops the start here, naming its key
    heap.settle()
    asyncio.run(run_site(settings, site, mqtt))
    return 0


def nats_config_of(site: SiteSettings, args: argparse.Namespace) -> str:
    """The site's NATS server: JetStream domain ``site-<id>`` fsyncing every write, the MQTT
    listener for the gateways, a leaf node of the hub that exports no gateway subject as plain
    messages (the hub sources them from the capture stream)."""
    from eicu.devservices import LeafTls, leaf_url_with_user, nats_config
    from eicu.sites import LEAF_DENY_EXPORTS, site_domain, site_leaf_user

    if not site.hub_leaf_urls:
        raise ConfigError("EICU_SITE_HUB_URL", "required to print the site's NATS configuration")
    urls = list(site.hub_leaf_urls)
    if site.hub_password is not None:
        user = site_leaf_user(site.site_id)
        urls = [leaf_url_with_user(url, user, site.hub_password) for url in urls]
    tls = LeafTls(*site.hub_tls) if site.hub_tls is not None else None
    return nats_config(
        server_name=site_domain(site.site_id),
        client_port=args.client_port,
        mqtt_port=args.mqtt_port,
        http_port=args.http_port,
        store_dir=args.store_dir,
        host=args.host,
        jetstream_domain=site_domain(site.site_id),
        sync_always=True,
        leaf_remotes=urls,
        leaf_deny_exports=(LEAF_DENY_EXPORTS,),
        leaf_tls=tls,
    )


def check(settings: Settings, site: SiteSettings) -> MqttSettings:
    """What a site node cannot start without, each named by its setting; its MQTT input."""
    if settings.database_url is None:
        raise ConfigError(
            "EICU_DATABASE_URL", "required by eicu site: the site's own store (sqlite:///...)"
        )
    if settings.alerting.delivery != "local":
        raise ConfigError("EICU_ALARM_DELIVERY", "a site pages its own team: local delivery only")
    mqtt = settings.mqtt or MqttSettings(
        client_id=f"eicu-site-{site.site_id}-{socket.gethostname()}"
    )
    if mqtt.partitions is not None:
        raise ConfigError(
            "EICU_MQTT_PARTITIONS", "a site's engine reads every bed of its site: leave it unset"
        )
    return mqtt


async def run_site(
    settings: Settings, site: SiteSettings, mqtt: MqttSettings, stop: asyncio.Event | None = None
) -> None:
    """Keeps the capture stream, then runs the engine until SIGTERM or SIGINT (or ``stop``)."""
    from eicu.bus.sites import connect, ensure_site_stream
    from eicu.commands.serve import serve

    nc = await connect(site.nats_urls, name=f"eicu-site-{site.site_id}")
    try:
        await ensure_site_stream(nc, max_age_s=site.max_age_s, max_bytes=site.max_bytes)
    finally:
        await nc.close()
    log.info(
        "site %s: captured for the hub for %.0f h%s; engine input %s",
        site.site_id,
        site.max_age_s / 3600,
        f" or {site.max_bytes} bytes" if site.max_bytes else "",
        mqtt.url,
    )
    await serve(settings, mqtt, stop)
