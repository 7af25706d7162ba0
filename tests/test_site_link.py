"""A remote site's link to the hub on real NATS servers (docs/remote-sites.md): the site's server
is a leaf node of the hub with a JetStream domain of its own, its stream captures what gateways
publish over MQTT, and the hub's stream sources it. The leaf link runs through a TCP proxy that
the test stops (the link is cut) and starts again."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator

import nats
import pytest
from nats.js.api import DeliverPolicy

from eicu import wire
from eicu.bus import Client
from eicu.bus.sites import (
    ensure_hub_stream,
    ensure_site_stream,
    source_state,
    subject_to_topic,
)
from eicu.config import MqttSettings
from eicu.errors import ConfigError
from eicu.models import BedKey, NumericsFrame
from eicu.sites import SITE_STREAM, check_site_id, hub_stream, site_domain
from tests.site_servers import SiteLink, site_link, until

pytestmark = [pytest.mark.nats]

SITE = "karamay"
BEDS = ("bed-1", "bed-2", "bed-3")
CUT_S = 12.0  # how long the link stays cut
RATE_HZ = 40.0  # messages a second from the gateway, all beds together


@pytest.fixture
def link() -> Iterator[SiteLink]:
    yield from site_link(SITE)


def numerics(bed: str, seq: int, ts_us: int) -> bytes:
    return wire.encode_numerics(
        NumericsFrame(BedKey(SITE, bed), seq, ts_us, {"HR": 60.0 + seq % 40, "SPO2": 97.0})
    )


def test_site_ids_are_checked_and_name_their_setting() -> None:
    assert site_domain("karamay-2") == "site-karamay-2"
    assert hub_stream("karamay-2") == "SITE_karamay-2"
    for bad in ("", "Karamay", "kara.may", "-x", "x-", "a" * 33, "a b", "a>"):
        with pytest.raises(ConfigError, match="EICU_SITE_ID"):
            check_site_id(bad)


async def test_a_cut_link_loses_nothing_and_the_hub_gets_each_message_once_in_order(
    link: SiteLink,
) -> None:
    await until(link.leaf_up, "the site's leaf link is up")
    site_nc = await nats.connect(link.site.nats_url)
    hub_nc = await nats.connect(link.hub.nats_url)
    try:
        await ensure_site_stream(site_nc)
        await ensure_hub_stream(hub_nc, SITE)
        # Both again: creating is idempotent.
        await ensure_site_stream(site_nc)
        await ensure_hub_stream(hub_nc, SITE)

        async def hub_count() -> int:
            return (await source_state(hub_nc, SITE)).messages

        published: list[tuple[str, int, int]] = []  # (bed, seq, device time), PUBACKed
        cut_at = asyncio.Event()
        restored = asyncio.Event()
        during_cut = 0
        sent = 0  # publishes begun: a message can reach the hub before its PUBACK is read
        total = int(RATE_HZ * (CUT_S + 8.0))
        gateway = MqttSettings(host="127.0.0.1", port=link.site.mqtt_port, client_id="gw-1")

        async def publish() -> None:
            nonlocal during_cut, sent
            t0_us = 1_700_000_000_000_000
            async with Client(gateway, timeout=10) as client:
                for i in range(total):
                    bed, seq = BEDS[i % len(BEDS)], i // len(BEDS)
                    ts_us = t0_us + seq * 1_000_000
                    sent += 1
                    await client.publish(
                        f"eicu/v1/{SITE}/{bed}/numerics", numerics(bed, seq, ts_us), qos=1
                    )
                    published.append((bed, seq, ts_us))  # PUBACKed: durable at the site
                    if cut_at.is_set() and not restored.is_set():
                        during_cut += 1
                    await asyncio.sleep(1.0 / RATE_HZ)

        publisher = asyncio.create_task(publish())
        # Mid-stream: the hub has some of the site's messages, then the link is cut.
        await until(lambda: len(published) >= total // 5, "a fifth published")

        async def some_at_hub() -> bool:
            return await hub_count() >= 10

        await until(some_at_hub, "the hub sources the site's stream")
        link.proxy.stop()
        cut_at.set()
        await until(lambda: not link.leaf_up(), "the hub sees the leaf gone")
        # At most the messages whose publish had begun: one may be at the hub (and at the
        # site) while its PUBACK waits to be read.
        sent_at_cut = sent
        at_cut = await hub_count()
        assert at_cut <= sent_at_cut
        # The cut lasts CUT_S on the gateway's own pace: it goes on publishing to the site.
        cut_start = time.monotonic()
        await until(
            lambda: time.monotonic() - cut_start >= CUT_S and not publisher.done(),
            "the cut's length",
            timeout_s=CUT_S + 5,
        )
        state = await source_state(hub_nc, SITE)
        # Nothing crosses a cut link; the source says how long the site has been silent.
        assert state.messages <= sent_at_cut
        assert state.silent_s is not None and state.silent_s > CUT_S / 2, state
        site_held = (await site_nc.jetstream().stream_info(SITE_STREAM)).state.messages
        assert site_held >= len(published) - 1  # the site kept what it PUBACKed
        link.proxy.start()
        restored.set()
        backlog = len(published)

        async def backlog_at_hub() -> bool:
            return await hub_count() >= backlog

        # The backlog: everything published before the link came back.
        drain_s = await until(backlog_at_hub, "the backlog at the hub")
        await publisher
        assert during_cut >= RATE_HZ * CUT_S * 0.5, during_cut

        async def all_at_hub() -> bool:
            return await hub_count() >= len(published)

        await until(all_at_hub, "every published message at the hub")

        # Every message once, each bed's in order, with its device time, from the hub's copy.
        hub_js = hub_nc.jetstream()
        sub = await hub_js.subscribe(
            "eicu.v1.>",
            stream=hub_stream(SITE),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        count = await hub_count()
        assert count == len(published)
        per_bed: dict[str, list[tuple[int, int]]] = defaultdict(list)
        site_seqs = []
        for _ in range(count):
            msg = await sub.next_msg(timeout=5)
            topic = subject_to_topic(msg.subject)
            frame = wire.decode(topic, msg.data, 0)
            assert isinstance(frame, NumericsFrame)
            per_bed[frame.bed.bed].append((frame.seq, frame.ts_us))
            assert msg.headers is not None
            site_seqs.append(int(msg.headers["Nats-Stream-Source"].split()[1]))
        await sub.unsubscribe()
        expected: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for bed, seq, ts_us in published:
            expected[bed].append((seq, ts_us))
        assert per_bed == expected
        assert site_seqs == list(range(1, count + 1))  # the site's order, no gap, no repeat
        print(
            f"cut {CUT_S:.0f} s, {during_cut} messages published during the cut, "
            f"the backlog of {backlog - at_cut} at the hub {drain_s:.2f} s after the link was back"
        )
    finally:
        await site_nc.close()
        await hub_nc.close()


async def test_a_feed_whose_fetcher_ends_on_a_full_queue_passes_on_what_it_holds_then_ends() -> (
    None
):
    """The fetcher's end marker does not fit a full queue: the reader still gets every message
    fetched, then learns that the stream was lost, instead of waiting for ever."""
    from eicu.bus.partitioned import PartitionConnectionLost
    from eicu.bus.sites import SiteMessage, SiteStreamConsumer

    consumer = SiteStreamConsumer(None, SITE, batch=1)  # type: ignore[arg-type]
    held = [SiteMessage(f"eicu/v1/{SITE}/b/numerics", b"", i, False, None) for i in (1, 2)]  # type: ignore[arg-type]
    for message in held:
        consumer._queue.put_nowait(message)
    assert consumer._queue.full()
    consumer._lost = OSError("the hub's NATS went away")
    consumer._ended = True  # as the fetcher's end leaves it, its marker not queued

    async def read() -> list[int | None]:
        seqs: list[int | None] = []
        with pytest.raises(PartitionConnectionLost, match="went away"):
            async for message in consumer:
                seqs.append(message.site_seq)
        return seqs

    assert await asyncio.wait_for(read(), timeout=10) == [1, 2]
