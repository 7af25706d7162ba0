"""A hub and a remote site's NATS servers on free ports, the site a leaf node of the hub whose
link runs through a TCP proxy that a test stops (the link is cut) and starts again; and a wait
on a condition for the tests of remote sites."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from eicu.devservices import NatsServer, hub_nats, site_nats
from eicu.sites import site_domain
from tests.tcp_proxy import TcpProxy

WAIT_S = 30.0


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
