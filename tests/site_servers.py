"""A hub and a remote site's NATS servers on free ports, the site a leaf node of the hub whose
link runs through a TCP proxy that a test stops (the link is cut) and starts again, or across
an emulated WAN (tests/netns.py); ``eicu site`` and ``eicu site-feed`` as processes on them, what
the hub and the site stored, and a wait on a condition, for the tests of remote sites."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

from eicu import wire
from eicu.bus import Client
from eicu.codes import BY_KEY
from eicu.config import MqttSettings
from eicu.devservices import (
    EicuProcess,
    NatsServer,
    ServiceError,
    free_port,
    hub_nats,
    nats_binary,
    site_nats,
)
from eicu.models import BedKey, NumericsFrame
from eicu.sites import site_domain
from tests.alarm_servers import HookServer
from tests.netns import HUB_IP, NetnsError, WanLink, unavailable_reason
from tests.tcp_proxy import TcpProxy

WAIT_S = 30.0


class SiteServers(Protocol):
    """A hub's and a site's NATS servers, the site a leaf node of the hub."""

    site_id: str
    hub: NatsServer
    site: NatsServer

    def leaf_up(self) -> bool: ...


class SiteLink:
    """The hub (domain ``hub``, a leafnode listener), the proxy, the site ``site_id``."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        self.hub: NatsServer = hub_nats(partitions=None)
        self.proxy = TcpProxy(self.hub.leaf_port or 0)
        # The site reconnects its leaf link quickly, as the cut's end is what is tested.
        self.site: NatsServer = site_nats(
            site_id, [f"nats-leaf://127.0.0.1:{self.proxy.port}"], reconnect_s=0.25
        )
        try:
            self.hub.start()
            self.proxy.start()
            self.site.start()
        except BaseException:
            self.cleanup()
            raise

    def leaf_up(self) -> bool:
        return site_domain(self.site_id) in self.hub.leaf_nodes()

    def cleanup(self) -> None:
        self.site.cleanup()
        self.proxy.stop()
        self.hub.cleanup()


class WanSiteLink:
    """The hub's and the site's NATS servers (as :class:`SiteLink`'s) in the two namespaces of a
    :class:`tests.netns.WanLink`, the leaf link across its WAN; each server's client, MQTT and
    HTTP ports reachable on this host's loopback. ``link_options``: the WAN's delay, jitter, loss
    and TCP congestion control (see ``WanLink``)."""

    def __init__(self, site_id: str, **link_options: Any) -> None:
        self.site_id = site_id
        self.wan = WanLink(**link_options)
        try:
            self.hub: NatsServer = hub_nats(
                partitions=None, host="0.0.0.0", command_prefix=self.wan.prefix(self.wan.hub_ns)
            )
            self.site: NatsServer = site_nats(
                site_id,
                [f"nats-leaf://{HUB_IP}:{self.hub.leaf_port}"],
                reconnect_s=0.25,
                host="0.0.0.0",
                command_prefix=self.wan.prefix(self.wan.site_ns),
            )
            for ns, server in ((self.wan.hub_ns, self.hub), (self.wan.site_ns, self.site)):
                self.wan.forward(ns, server.port, server.mqtt_port, server.http_port)
                server.start()
        except BaseException:
            self.cleanup()
            raise

    def leaf_up(self) -> bool:
        return site_domain(self.site_id) in self.hub.leaf_nodes()

    def cleanup(self) -> None:
        for server in (getattr(self, "site", None), getattr(self, "hub", None)):
            if server is not None:
                server.cleanup()
        self.wan.cleanup()


def wan_site_link(site_id: str, **link_options: Any) -> Iterator[WanSiteLink]:
    """A test fixture's servers across an emulated WAN: skips the test when network namespaces
    cannot be used here (naming why), fails it when the servers cannot start; always cleaned
    up."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        servers = WanSiteLink(site_id, **link_options)
    except (ServiceError, NetnsError) as exc:
        pytest.fail(f"cannot start the hub and the site across the emulated WAN: {exc}")
    try:
        yield servers
    finally:
        servers.cleanup()


def site_link(site_id: str) -> Iterator[SiteLink]:
    """A test fixture's servers: started, yielded, cleaned up; a start that fails fails the test
    with the reason."""
    try:
        servers = SiteLink(site_id)
    except ServiceError as exc:
        pytest.fail(f"cannot start the hub and the site's NATS servers: {exc}")
    try:
        yield servers
    finally:
        servers.cleanup()


def rota(hook: HookServer, site_id: str) -> dict[str, object]:
    """A site's rota: one nurse, paged at ``hook``."""
    return {
        "version": 1,
        "delivery_timeout_s": 5,
        "sites": {
            site_id: {
                "levels": [
                    {
                        "role": "bedside_nurse",
                        "ack_timeout_s": {"high": 60, "medium": 120, "low": 600},
                        "contacts": [
                            {"name": "nurse-aygul", "channel": "webhook", "address": hook.url("/n")}
                        ],
                    }
                ]
            }
        },
    }


def hub_samples(db_url: str, site_id: str) -> dict[tuple[str, int], list[int]]:
    """The hub's stored heart rates: (bed, seq) -> the device times stored for it."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT b.bed, n.seq, (extract(epoch FROM n.time) * 1000000)::bigint "
            "FROM numerics n JOIN beds b USING (bed_id) WHERE b.site = %s AND n.code = %s",
            (site_id, BY_KEY["HR"].code),
        ).fetchall()
    out: dict[tuple[str, int], list[int]] = {}
    for bed, seq, ts_us in rows:
        out.setdefault((bed, int(seq)), []).append(int(ts_us))
    return out


COMMON = {"EICU_FLUSH_INTERVAL_S": "0.2", "EICU_ANALYSE_SIGNALS": "false"}


def site_process(link: SiteServers, tmp_path: Path, hook: HookServer) -> EicuProcess:
    """``eicu site`` on the site's NATS, its store in SQLite, its rota paging ``hook``."""
    rota_file = tmp_path / "rota.json"
    rota_file.write_text(json.dumps(rota(hook, link.site_id)))
    port = free_port()
    return EicuProcess(
        ["site"],
        {
            **COMMON,
            "EICU_SITE_ID": link.site_id,
            "EICU_MQTT_URL": link.site.url,
            "EICU_NATS_URL": link.site.nats_url,
            "EICU_DATABASE_URL": f"sqlite:///{tmp_path / 'site.sqlite'}",
            "EICU_ROTA_FILE": str(rota_file),
            "EICU_SPOOL_DIR": str(tmp_path / "site-spool"),
            "EICU_OUTBOX_PATH": str(tmp_path / "site-alarms.db"),
            "EICU_HTTP_PORT": str(free_port()),
            "EICU_USERS_FILE": str(tmp_path / "users.json"),
            "EICU_METRICS_PORT": str(port),
        },
        tmp_path / "site.log",
        port,
    )


def feed_process(
    link: SiteServers,
    db_url: str,
    tmp_path: Path,
    ack_wait_s: float | None = 10.0,
    *,
    flush_s: float | None = None,
    state_period_s: float | None = None,
) -> EicuProcess:
    """``eicu site-feed`` on the hub's NATS, storing into ``db_url``. ``ack_wait_s`` None: the
    feed's own; ``flush_s``: the writer's flush interval (else ``COMMON``'s); with
    ``state_period_s`` it also publishes the site's beds (that often), link and live waveforms
    on the hub's MQTT listener, for dashboards."""
    port = free_port()
    settings = {
        **COMMON,
        "EICU_SITES": link.site_id,
        "EICU_NATS_URL": link.hub.nats_url,
        "EICU_DATABASE_URL": db_url,
        "EICU_SPOOL_DIR": str(tmp_path / "feed-spool"),
        "EICU_METRICS_PORT": str(port),
    }
    if ack_wait_s is not None:
        settings["EICU_SITE_ACK_WAIT_S"] = str(ack_wait_s)
    if flush_s is not None:
        settings["EICU_FLUSH_INTERVAL_S"] = str(flush_s)
    if state_period_s is not None:
        settings["EICU_MQTT_URL"] = link.hub.url
        settings["EICU_STATE_PERIOD_S"] = str(state_period_s)
    return EicuProcess(["site-feed"], settings, tmp_path / "feed.log", port)


def site_alarm_events(path: Path, alarm_id: str) -> dict[str, tuple[str, str]]:
    """The site store's events of one alarm: event id -> (state, actor)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT event_id, state, actor FROM alarm_events WHERE alarm_id = ?", (alarm_id,)
        ).fetchall()
    return {str(e): (str(state), str(actor)) for e, state, actor in rows}


def hub_alarm_events(db_url: str, alarm_id: str) -> dict[str, tuple[str, str]]:
    """The hub store's events of one alarm: event id -> (state, actor)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT event_id, state, actor FROM alarm_events WHERE alarm_id = %s", (alarm_id,)
        ).fetchall()
    return {str(e): (str(state), str(actor)) for e, state, actor in rows}


def dropped_repeats(metrics_port: int) -> float:
    """What a feed dropped as repeats, from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eicu_ingest_duplicates_total")
    )


def check_nats_config(text: str, folder: Path) -> None:
    """Fails the test unless nats-server accepts ``text`` as its configuration (``-t``)."""
    conf = folder / "site.conf"
    conf.write_text(text)
    binary = nats_binary()
    assert binary is not None
    checked = subprocess.run([binary, "-t", "-c", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr + checked.stdout


async def until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str, timeout_s: float = WAIT_S
) -> float:
    """Polls ``check`` until it holds; returns the seconds it took, fails naming ``what``."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def publish_heart_rates(
    link: SiteServers,
    beds: Sequence[str],
    sick_bed: str,
    sick: asyncio.Event,
    published: list[tuple[str, int, int]],
    done: asyncio.Event,
) -> None:
    """A site's gateway until ``done``: each bed's heart rate twice a second, as a monitor sends
    it (QoS 1, to the site's MQTT listener), 80 and ``sick_bed``'s 150 once ``sick`` is set;
    ``published`` gets (bed, seq, device time) of each message the site PUBACKed."""
    gateway = MqttSettings(host="127.0.0.1", port=link.site.mqtt_port, client_id="gw-1")
    seq = 0
    async with Client(gateway, timeout=10) as client:
        while not done.is_set():
            ts_us = time.time_ns() // 1_000_000 * 1000  # the wire carries ms
            for bed in beds:
                hr = 150.0 if bed == sick_bed and sick.is_set() else 80.0
                frame = NumericsFrame(BedKey(link.site_id, bed), seq, ts_us, {"HR": hr})
                topic = f"eicu/v1/{link.site_id}/{bed}/numerics"
                await client.publish(topic, wire.encode_numerics(frame), qos=1)
                published.append((bed, seq, ts_us))  # PUBACKed by the site
            seq += 1
            await asyncio.sleep(0.5)  # the monitor's pace: real time
