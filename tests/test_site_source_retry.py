"""After a cut of a remote site's link, NATS retries the hub's source of the site's stream on a
back-off that grows by 10 s a failure (up to 2 minutes), so the backlog could wait long after
the link is back. ``keep_sources_current`` (run by eicu site-feed) sets the source up again as
soon as the site answers through its domain and holds messages the hub lacks; the hub's copy
stays exactly the site's stream, in order. Real NATS servers, the link through a TCP proxy."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import nats
import pytest

from eicu import wire
from eicu.bus import Client
from eicu.bus.sites import (
    ensure_hub_stream,
    ensure_site_stream,
    keep_sources_current,
    resume_source_if_waiting,
    source_state,
)
from eicu.config import MqttSettings
from eicu.models import BedKey, NumericsFrame
from eicu.sites import hub_stream
from tests.site_servers import SiteLink, site_link, until

pytestmark = [pytest.mark.nats]

SITE = "hotan"
# Long enough for the source to fail twice (a health check every 10 s, then a 10 s back-off):
# NATS's next try comes about 15 s after the link is back.
CUT_S = 24.0
RESUMED_WITHIN_S = 6.0


@pytest.fixture
def link() -> Iterator[SiteLink]:
    yield from site_link(SITE)


async def publish(link: SiteLink, seqs: range) -> None:
    gateway = MqttSettings(host="127.0.0.1", port=link.site.mqtt_port, client_id="gw-h")
    async with Client(gateway, timeout=10) as client:
        for seq in seqs:
            frame = NumericsFrame(
                BedKey(SITE, "bed-1"), seq, 1_700_000_000_000_000 + seq, {"HR": 70.0}
            )
            await client.publish(
                f"eicu/v1/{SITE}/bed-1/numerics", wire.encode_numerics(frame), qos=1
            )


async def test_the_backlog_follows_the_link_back_without_waiting_for_natss_back_off(
    link: SiteLink,
) -> None:
    await until(link.leaf_up, "the site's leaf link is up")
    site_nc = await nats.connect(link.site.nats_url)
    hub_nc = await nats.connect(link.hub.nats_url)
    watch = None
    try:
        await ensure_site_stream(site_nc)
        await ensure_hub_stream(hub_nc, SITE)
        await publish(link, range(0, 10))

        async def count() -> int:
            return (await source_state(hub_nc, SITE)).messages

        async def live_at_hub() -> bool:
            return await count() >= 10

        await until(live_at_hub, "the live data at the hub")
        # A quiet site whose source is current is left alone.
        assert not await resume_source_if_waiting(hub_nc, SITE, silent_after_s=0.0)

        link.proxy.stop()
        cut_at = time.monotonic()
        await publish(link, range(10, 500))
        # While the link is down there is nothing to resume from.
        assert not await resume_source_if_waiting(hub_nc, SITE, silent_after_s=0.0)
        await until(lambda: time.monotonic() - cut_at >= CUT_S, "the cut", timeout_s=CUT_S + 5)
        watch = asyncio.create_task(
            keep_sources_current(hub_nc, SITE, period_s=0.5, silent_after_s=3.0)
        )
        link.proxy.start()

        async def backlog_at_hub() -> bool:
            return await count() >= 500

        took_s = await until(backlog_at_hub, "the backlog at the hub", timeout_s=30)
        assert took_s < RESUMED_WITHIN_S, f"the backlog came {took_s:.1f} s after the link"
        sub = await hub_nc.jetstream().subscribe(
            "eicu.v1.>", stream=hub_stream(SITE), ordered_consumer=True
        )
        seqs = []
        for _ in range(await count()):
            msg = await sub.next_msg(timeout=5)
            frame = wire.decode(f"eicu/v1/{SITE}/bed-1/numerics", msg.data, 0)
            assert isinstance(frame, NumericsFrame)
            seqs.append(frame.seq)
        await sub.unsubscribe()
        assert seqs == list(range(500))  # the site's order, each message once
        print(f"the backlog at the hub {took_s:.2f} s after the link was back")
        # a stream caught without its source (between the two updates of a reset) is read as
        # such, and set up again from where its copy ends
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
        watch = None
        info = await hub_nc.jetstream().stream_info(hub_stream(SITE))
        await hub_nc.jetstream().update_stream(dataclasses.replace(info.config, sources=[]))
        assert (await source_state(hub_nc, SITE)).error == "no source"
        await publish(link, range(500, 510))
        assert await resume_source_if_waiting(hub_nc, SITE, silent_after_s=0.0)

        async def all_at_hub() -> bool:
            return await count() >= 510

        await until(all_at_hub, "the messages after the reset at the hub")
        assert await count() == 510
    finally:
        if watch is not None:
            watch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watch
        await site_nc.close()
        await hub_nc.close()
