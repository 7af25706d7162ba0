"""A remote site's WAN link cut for 2 minutes mid-stream and restored, on an emulated WAN
(network namespaces joined by a veth pair, the site's end set down: tests/netns.py), with
``eicu site`` paging the site's nurse and ``eicu site-feed`` storing the hub's copy in
PostgreSQL (tests/site_wan.py). During the cut the site pages its nurse and nothing reaches the
hub; afterwards the hub stores every sample the site took, once, and has the site's alarm in its
history. Needs root (skipped otherwise, saying why)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eicu.bus.sites import source_state
from tests.alarm_servers import HookServer
from tests.site_servers import WanSiteLink, wan_site_link
from tests.site_wan import Run, run_site_over_wan

pytestmark = [pytest.mark.nats, pytest.mark.db]

SITE = "karamay"
CUT_S = 120.0


@pytest.fixture
def link() -> Iterator[WanSiteLink]:
    yield from wan_site_link(SITE)


async def test_a_two_minute_cut_loses_nothing_and_the_site_pages_during_it(
    link: WanSiteLink, hook: HookServer, db_url: str, tmp_path: Path
) -> None:
    import nats

    hub_nc = await nats.connect(link.hub.nats_url)
    report: dict[str, float] = {}

    async def cut_for_two_minutes(run: Run) -> None:
        link.wan.cut()
        cut_at = time.monotonic()
        published_at_cut = len(run.published)
        run.make_sick()
        report["paged_s"] = await run.wait_paged()
        # The page came from the site alone: the link is still down and the hub's copy has
        # not grown beyond what was published before the cut.
        assert time.monotonic() - cut_at < CUT_S
        assert len(run.stored()) <= published_at_cut
        # The link stays down for its two minutes; nothing crosses it.
        await asyncio.sleep(CUT_S - (time.monotonic() - cut_at))
        assert len(run.stored()) <= published_at_cut
        state = await source_state(hub_nc, SITE)
        assert state.silent_s is not None and state.silent_s >= CUT_S - 10, state
        report["backlog"] = len(run.published) - published_at_cut
        # Recorded, not required: whether the hub still lists the site's leaf connection (the
        # link failed, nothing closed the connection).
        report["leaf_listed"] = float(link.leaf_up())
        link.wan.restore()
        report["drain_s"] = await run.drain()

    try:
        run = await run_site_over_wan(link, hook, db_url, tmp_path, cut_for_two_minutes)
    finally:
        await hub_nc.close()
    wan = link.wan.wan_bytes()
    print(
        f"cut {CUT_S:.0f} s: the site paged its nurse {report['paged_s']:.1f} s into it; "
        f"the backlog of {report['backlog']:.0f} messages stored at the hub "
        f"{report['drain_s']:.1f} s after the link was back; {len(run.published)} published, "
        f"WAN bytes up {wan['up']}, down {wan['down']}; the hub listed the leaf at the end of "
        f"the cut: {bool(report['leaf_listed'])}"
    )
