"""The hub's copy of a site's stream in two sources, the waveforms in one and everything else in
the other (eicu.bus.sites): every eicu subject in exactly one of them, the stream set up again
as it is, and a stream made with one source split without copying a message twice or leaving
one out. Real NATS servers, the site a leaf node of the hub."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import nats
import pytest
from nats.js.api import ExternalStream, StorageType, StreamConfig, StreamSource

from eicu.bus.sites import (
    BULK_SUBJECTS,
    PRIORITY_SUBJECTS,
    ensure_hub_stream,
    ensure_site_stream,
    resume_source_if_waiting,
    source_state,
)
from eicu.sites import SITE_STREAM, hub_stream, site_stream_api
from eicu.wire import parse_topic
from tests.site_servers import SiteLink, site_link, until

pytestmark = [pytest.mark.nats]

SITE = "karamay"


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def test_every_eicu_subject_is_in_exactly_one_source() -> None:
    topics = [
        "eicu/v1/karamay/bed-1/numerics",
        "eicu/v1/karamay/bed-1/waveform",
        "eicu/v1/karamay/bed-1/status",
        "eicu/v1/karamay/bed-1/alarms",
        "eicu/v1/karamay/bed-1/alarms/ack",
        "eicu/v1/karamay/bed-1/alarms/cmd",
        "eicu/v1/karamay/gateway/gw-1/status",
    ]
    for topic in topics:
        subject = topic.replace("/", ".")
        owners = [p for p in (*PRIORITY_SUBJECTS, *BULK_SUBJECTS) if matches(p, subject)]
        assert len(owners) == 1, (subject, owners)
        bulk = any(matches(p, subject) for p in BULK_SUBJECTS)
        assert bulk == topic.endswith("/waveform"), subject
    # every kind a bed topic may have (eicu.wire.parse_topic) is one of them
    for kind in ("numerics", "waveform", "status", "alarms"):
        assert parse_topic(f"eicu/v1/karamay/bed-1/{kind}")[0] == kind


@pytest.fixture
def link() -> Iterator[SiteLink]:
    yield from site_link(SITE)


async def hub_subjects_and_seqs(hub_nc: nats.NATS) -> list[tuple[str, int, int]]:
    """Every message of the hub's copy: (subject, its number, its site sequence)."""
    js = hub_nc.jetstream()
    info = await js.stream_info(hub_stream(SITE))
    out = []
    for seq in range(1, int(info.state.last_seq) + 1):
        msg = await js.get_msg(hub_stream(SITE), seq)
        site_seq = int(msg.headers["Nats-Stream-Source"].split()[1])
        out.append((str(msg.subject), json.loads(msg.data)["i"], site_seq))
    return out


async def test_a_stream_of_one_source_is_split_without_a_message_twice_or_lost(
    link: SiteLink,
) -> None:
    site_nc = await nats.connect(link.site.nats_url)
    hub_nc = await nats.connect(link.hub.nats_url)
    try:
        await ensure_site_stream(site_nc)
        site_js, hub_js = site_nc.jetstream(), hub_nc.jetstream()
        # the hub's copy as it was made with one source of every subject
        await hub_js.add_stream(
            StreamConfig(
                name=hub_stream(SITE),
                storage=StorageType.FILE,
                sources=[
                    StreamSource(
                        name=SITE_STREAM, external=ExternalStream(api=site_stream_api(SITE))
                    )
                ],
            )
        )
        i = 0

        async def publish(n: int) -> None:
            nonlocal i
            for _ in range(n):
                kind = "waveform" if i % 3 else "numerics"
                await site_js.publish(f"eicu.v1.{SITE}.bed-1.{kind}", json.dumps({"i": i}).encode())
                i += 1

        async def copied(n: int) -> bool:
            return int((await hub_js.stream_info(hub_stream(SITE))).state.messages) >= n

        await publish(90)
        await until(lambda: copied(90), "the first 90 at the hub")
        await ensure_hub_stream(hub_nc, SITE)  # split: each source from site message 91
        info = await hub_js.stream_info(hub_stream(SITE))
        assert len(info.config.sources or []) == 2
        await publish(90)
        await until(lambda: copied(180), "the next 90 at the hub")
        await ensure_hub_stream(hub_nc, SITE)  # as it is now: left alone
        assert len((await hub_js.stream_info(hub_stream(SITE))).config.sources or []) == 2
        await publish(30)
        await until(lambda: copied(210), "30 more at the hub")
        held = await hub_subjects_and_seqs(hub_nc)
        assert sorted(x[1] for x in held) == list(range(210))  # each once, none left out
        assert sorted(x[2] for x in held) == list(range(1, 211))
        for kind in ("numerics", "waveform"):  # each source in the site's order
            mine = [x[2] for x in held if x[0].endswith(kind)]
            assert mine == sorted(mine), kind
        state = await source_state(hub_nc, SITE)
        assert state.silent_s is not None and state.most_silent_s is not None
        assert state.silent_s <= state.most_silent_s < 5.0
    finally:
        await site_nc.close()
        await hub_nc.close()


async def test_sources_set_up_again_after_a_split_copy_nothing_twice(link: SiteLink) -> None:
    """A stream split from one source, then only numerics copied, then its sources gone (as
    between the two updates that set them up again) while the site takes more of both: set up
    again, each source starts after the newest of its own subjects at the hub, the waveforms'
    too although it has copied nothing since the split."""
    site_nc = await nats.connect(link.site.nats_url)
    hub_nc = await nats.connect(link.hub.nats_url)
    try:
        await ensure_site_stream(site_nc)
        site_js, hub_js = site_nc.jetstream(), hub_nc.jetstream()
        external = ExternalStream(api=site_stream_api(SITE))
        one = StreamConfig(
            name=hub_stream(SITE),
            storage=StorageType.FILE,
            sources=[StreamSource(name=SITE_STREAM, external=external)],
        )
        await hub_js.add_stream(one)
        i = 0

        async def publish(n: int, kinds: tuple[str, ...]) -> None:
            nonlocal i
            for _ in range(n):
                kind = kinds[i % len(kinds)]
                await site_js.publish(f"eicu.v1.{SITE}.bed-1.{kind}", json.dumps({"i": i}).encode())
                i += 1

        async def copied(n: int) -> bool:
            return int((await hub_js.stream_info(hub_stream(SITE))).state.messages) >= n

        await publish(60, ("numerics", "waveform", "waveform"))
        await until(lambda: copied(60), "the first 60 at the hub")
        await ensure_hub_stream(hub_nc, SITE)  # split
        await publish(20, ("numerics",))  # the waveforms' source copies nothing
        await until(lambda: copied(80), "the numerics at the hub")
        config = (await hub_js.stream_info(hub_stream(SITE))).config
        await hub_js.update_stream(dataclasses.replace(config, sources=[]))
        await publish(30, ("numerics", "waveform"))
        assert await resume_source_if_waiting(hub_nc, SITE, silent_after_s=-1.0)
        await until(lambda: copied(110), "the 30 taken while the sources were gone")
        await publish(10, ("waveform",))
        await until(lambda: copied(120), "10 more")
        held = await hub_subjects_and_seqs(hub_nc)
        assert sorted(x[1] for x in held) == list(range(120))  # each once, none left out
    finally:
        await site_nc.close()
        await hub_nc.close()
