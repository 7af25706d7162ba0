"""A remote site across an emulated long-distance WAN (tests/netns.py: network namespaces, a
veth pair, a bridge in the middle that delays and drops frames), end to end with ``eicu site``
and ``eicu site-feed`` (tests/site_wan.py): a link of 100 ms +- 20 ms each way that loses 1 % of
its frames (cut for 20 s meanwhile, so that a backlog crosses it), and a link that goes down
for 5 s every 30 s. The 2-minute cut is in
tests/test_site_wan_cut.py. Needs root (skipped otherwise, saying why)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alarm_servers import HookServer
from tests.site_servers import WanSiteLink, until, wan_site_link
from tests.site_wan import Run, hub_waveform_frames, publish_waveforms, run_site_over_wan

pytestmark = [pytest.mark.nats, pytest.mark.db]

SITE = "karamay"
DELAY_MS, JITTER_MS, LOSS_PCT = 100.0, 20.0, 1.0
LOSSY_BEDS = 20
WAVE_BACKLOG_S = 40.0  # seconds of waveforms of every bed published during the cut
LOSSY_CUT_S = 20.0  # a cut within the lossy run: its backlog crosses the lossy link
FLAP_UP_S, FLAP_DOWN_S, FLAPS = 25.0, 5.0, 2


@pytest.fixture
def lossy_link() -> Iterator[WanSiteLink]:
    yield from wan_site_link(SITE, delay_ms=DELAY_MS, jitter_ms=JITTER_MS, loss_pct=LOSS_PCT)


@pytest.fixture
def link() -> Iterator[WanSiteLink]:
    # a bridge in the middle (1 ms each way), so that the path can also fail where neither end
    # sees it
    yield from wan_site_link(SITE, delay_ms=1.0)


def leaf_rtt_s(link: WanSiteLink) -> float:
    """The leaf link's round trip as the hub measured it (its ``/leafz``)."""
    url = f"http://127.0.0.1:{link.hub.http_port}/leafz"
    with urllib.request.urlopen(url, timeout=2.0) as response:
        rtt = json.load(response)["leafs"][0]["rtt"]  # a Go duration: "201.5ms", "1.2s"
    unit = next(u for u in ("ms", "µs", "us", "ns", "s") if rtt.endswith(u))
    return (
        float(rtt.removesuffix(unit))
        * {"s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}[unit]
    )


async def test_a_delaying_lossy_link_delivers_everything_once(
    lossy_link: WanSiteLink, hook: HookServer, db_url: str, tmp_path: Path
) -> None:
    link = lossy_link
    report: dict[str, float] = {}

    async def lossy_with_a_cut(run: Run) -> None:
        link.wan.cut()
        cut_at = time.monotonic()
        published_at_cut = len(run.published)
        run.make_sick()
        # a gateway's buffered waveforms reach the site during the cut: a backlog of about a
        # MB coded, enough frames on the link for its losses to matter
        report["waves"], report["wave_bytes"] = await publish_waveforms(
            link, LOSSY_BEDS, WAVE_BACKLOG_S, coded=True
        )
        await run.wait_paged()
        assert time.monotonic() - cut_at < LOSSY_CUT_S  # paged by the site, the link down
        await asyncio.sleep(LOSSY_CUT_S - (time.monotonic() - cut_at))  # the outage
        assert len(run.stored()) <= published_at_cut  # nothing crossed while down
        report["backlog"] = len(run.published) - published_at_cut
        link.wan.restore()
        await run.drain()
        report["rtt_s"] = leaf_rtt_s(link)

    run = await run_site_over_wan(link, hook, db_url, tmp_path, lossy_with_a_cut, beds=LOSSY_BEDS)
    # Every waveform frame of the backlog (coded, as a site's gateways send them) is stored at
    # the hub once.
    await until(
        lambda: hub_waveform_frames(db_url, SITE) >= report["waves"],
        "the backlog's waveforms in the hub's store",
    )
    assert hub_waveform_frames(db_url, SITE) == report["waves"]
    counts = link.wan.stop_bridge()
    frames = sum(c["frames"] + c["dropped"] for c in counts.values())
    dropped = sum(c["dropped"] for c in counts.values())
    # The link was what it claims: two delays a round trip, and frames lost on the way.
    assert report["rtt_s"] >= 2 * (DELAY_MS - JITTER_MS) / 1000, report
    assert dropped > 0, counts
    print(
        f"{len(run.published)} published, leaf RTT {report['rtt_s'] * 1000:.0f} ms, "
        f"{dropped} of {frames} frames dropped; paged {run.paged_after_s:.1f} s into a "
        f"{LOSSY_CUT_S:.0f} s cut; its backlog of {report['backlog']:.0f} heart rates and "
        f"{report['waves']:.0f} coded waveform messages ({report['wave_bytes'] / 1e6:.1f} MB, "
        f"each stored once) at the "
        f"hub {run.drains_s[0]:.1f} s after the link was back"
    )


async def test_a_flapping_link_delivers_everything_once(
    link: WanSiteLink, hook: HookServer, db_url: str, tmp_path: Path
) -> None:
    async def flap(run: Run) -> None:
        for flap_no in range(FLAPS):
            # the first outage at the site's end (its kernel knows), the next in the middle of
            # the path (both ends' interfaces up: neither end learns of it but by silence)
            mid_path = flap_no % 2 == 1
            if mid_path:
                link.wan.cut_mid_path()
            else:
                link.wan.cut()
            down_at = time.monotonic()
            published_at_cut = len(run.published)
            if flap_no == 0:
                run.make_sick()
            await asyncio.sleep(FLAP_DOWN_S - (time.monotonic() - down_at))  # the outage
            assert len(run.stored()) <= published_at_cut  # nothing crossed while down
            if mid_path:
                link.wan.restore_mid_path()
            else:
                link.wan.restore()
            up_at = time.monotonic()
            await run.drain()
            if flap_no == 0:
                await run.wait_paged()
            if flap_no < FLAPS - 1:
                await asyncio.sleep(max(0.0, FLAP_UP_S - (time.monotonic() - up_at)))

    run = await run_site_over_wan(link, hook, db_url, tmp_path, flap)
    drains = ", ".join(f"{d:.1f}" for d in run.drains_s)
    print(
        f"{FLAPS} times down {FLAP_DOWN_S:.0f} s: {len(run.published)} published; each backlog "
        f"stored at the hub {drains} s after the link was back; paged "
        f"{run.paged_after_s:.1f} s after the bed went sick"
    )
