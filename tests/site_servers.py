"""A hub and a remote site's NATS servers on free ports, the site a leaf node of the hub whose
link runs through a TCP proxy that a test stops (the link is cut) and starts again; and a wait
on a condition for the tests of remote sites."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from eicu.devservices import NatsServer, ServiceError, hub_nats, nats_binary, site_nats
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
