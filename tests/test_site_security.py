"""The leaf link between remote sites and the hub, secured (docs/remote-sites.md): TLS with the
certificates of both sides verified, and each site a user of an account of its own at the hub.
A site's data reaches its own stream only; a site cannot speak for another site; a leaf with a
wrong password or a certificate the hub does not trust is refused. Real NATS servers, started
on free ports."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from eicu import wire
from eicu.bus import Client
from eicu.bus.partitioned import PartitionConnectionLost
from eicu.bus.sites import (
    SiteMessage,
    SiteStreamConsumer,
    ensure_hub_stream,
    ensure_site_stream,
)
from eicu.commands.site_feed import close_all, connect_sites
from eicu.config import MqttSettings, Secret, SiteFeedSettings
from eicu.devservices import (
    LeafTls,
    NatsServer,
    ServiceError,
    SiteAccount,
    hub_nats,
    nats_config,
    site_nats,
)
from eicu.models import BedKey, NumericsFrame
from eicu.sites import hub_stream, site_domain, site_feed_user
from tests.pki import TestCa
from tests.site_servers import check_nats_config, until

pytestmark = [pytest.mark.nats]

ACCOUNTS = {
    "karamay": SiteAccount(leaf_password="leaf-k:s@cret/1", feed_password="feed-k-secret"),
    "hotan": SiteAccount(leaf_password="leaf-h-secret", feed_password="feed-h-secret"),
}


class Servers:
    def __init__(self, folder: Path) -> None:
        self.ca = TestCa(folder / "pki")
        hub_cert = self.ca.server("127.0.0.1", "localhost", file_stem="hub")
        self.hub = hub_nats(
            partitions=None,
            sites=ACCOUNTS,
            tls=LeafTls(self.ca.cert, hub_cert.cert, hub_cert.key),
        )
        self.sites: list[NatsServer] = []

    def site(self, site_id: str, password: str, tls: LeafTls | None) -> NatsServer:
        url = f"nats-leaf://127.0.0.1:{self.hub.leaf_port}"
        server = site_nats(site_id, [url], password=password, tls=tls, reconnect_s=0.25)
        self.sites.append(server)
        return server.start()

    def site_tls(self, site_id: str, ca: TestCa | None = None) -> LeafTls:
        issued = (ca or self.ca).client(site_id)
        return LeafTls(self.ca.cert, issued.cert, issued.key)

    def hub_log(self) -> str:
        return self.hub.log.read_text(errors="replace")

    def cleanup(self) -> None:
        for site in self.sites:
            site.cleanup()
        self.hub.cleanup()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        s.hub.start()
    except ServiceError as exc:
        s.cleanup()
        pytest.fail(f"cannot start the hub's NATS server: {exc}")
    try:
        yield s
    finally:
        s.cleanup()


def test_the_hub_configuration_with_site_accounts_and_tls_is_valid(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki")
    hub_cert = ca.server("hub.example", file_stem="hub")
    conf = tmp_path / "hub.conf"
    conf.write_text(
        nats_config(
            server_name="hub",
            client_port=4222,
            mqtt_port=1883,
            http_port=8222,
            store_dir=tmp_path / "store",
            jetstream_domain="hub",
            leafnode_port=7422,
            leaf_tls=LeafTls(ca.cert, hub_cert.cert, hub_cert.key),
            site_accounts=ACCOUNTS,
        )
    )
    text = conf.read_text()
    assert "verify: true" in text and '"SITE_karamay" {' in text
    assert "leaf-k:s@cret/1" in text and "s@cret" not in repr(ACCOUNTS["karamay"])
    check_nats_config(text, tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        nats_config(
            server_name="hub",
            client_port=4222,
            mqtt_port=1883,
            http_port=8222,
            store_dir=tmp_path / "store",
            leafnode_port=7422,
            leaf_tls=LeafTls(tmp_path / "missing.crt", hub_cert.cert, hub_cert.key),
        )


async def test_each_site_feeds_its_own_account_and_speaks_for_its_own_beds_only(
    servers: Servers,
) -> None:
    karamay = servers.site(
        "karamay", ACCOUNTS["karamay"].leaf_password, servers.site_tls("karamay")
    )
    await until(
        lambda: site_domain("karamay") in servers.hub.leaf_nodes(), "karamay's leaf link over TLS"
    )
    site_nc = await nats.connect(karamay.nats_url)
    feeds = {
        site_id: await nats.connect(
            servers.hub.nats_url, user=site_feed_user(site_id), password=account.feed_password
        )
        for site_id, account in ACCOUNTS.items()
    }
    try:
        await ensure_site_stream(site_nc)
        for site_id, nc in feeds.items():
            await ensure_hub_stream(nc, site_id)
        gateway = MqttSettings(host="127.0.0.1", port=karamay.mqtt_port, client_id="gw-k")
        async with Client(gateway, timeout=10) as client:
            for seq in range(5):
                for site in ("karamay", "hotan"):  # the second claims another site's bed
                    frame = NumericsFrame(BedKey(site, "bed-1"), seq, 1_700_000_000_000_000, {})
                    topic = f"eicu/v1/{site}/bed-1/numerics"
                    await client.publish(topic, wire.encode_numerics(frame), qos=1)

        consumer = await SiteStreamConsumer(feeds["karamay"], "karamay").connect()
        taken: list[SiteMessage] = []

        async def read() -> None:
            async for message in consumer:
                taken.append(message)
                consumer.ack(message)

        reader = asyncio.create_task(read())
        try:
            await until(lambda: consumer.wrong_site == 5 and len(taken) == 5, "karamay's stream")
        finally:
            reader.cancel()
            await consumer.close()
        assert {m.topic for m in taken} == {"eicu/v1/karamay/bed-1/numerics"}
        assert [m.site_seq for m in taken] == [1, 3, 5, 7, 9]  # hotan's claims in between
        # hotan's stream, in hotan's account, got nothing from karamay's leaf.
        info = await feeds["hotan"].jetstream().stream_info(hub_stream("hotan"))
        assert info.state.messages == 0
        # A feed user sees its own site's account only.
        with pytest.raises(nats.js.errors.NotFoundError):
            await feeds["karamay"].jetstream().stream_info(hub_stream("hotan"))
    finally:
        await site_nc.close()
        for nc in feeds.values():
            await nc.close()


async def test_a_wrong_password_or_an_untrusted_certificate_is_refused(
    servers: Servers, tmp_path: Path
) -> None:
    # hotan's certificate with karamay's password: the user's password is wrong.
    servers.site("hotan", ACCOUNTS["karamay"].leaf_password, servers.site_tls("hotan"))
    await until(
        lambda: 'authentication error - User "leaf-hotan"' in servers.hub_log(),
        "the hub refusing a wrong password",
    )
    rogue_ca = TestCa(tmp_path / "rogue", name="rogue CA")
    refusals = servers.hub_log().count("TLS leafnode handshake error")
    # karamay's right password with a certificate no CA the hub trusts signed.
    servers.site(
        "karamay", ACCOUNTS["karamay"].leaf_password, servers.site_tls("karamay", rogue_ca)
    )
    await until(
        lambda: servers.hub_log().count("TLS leafnode handshake error") > refusals,
        "the hub refusing a certificate it does not trust",
    )
    assert servers.hub.leaf_nodes() == []
    # A site that does not trust the CA of the hub's certificate refuses the hub (the site
    # verifies the hub as the hub verifies the site).
    servers.sites.pop().cleanup()
    own = servers.ca.client("karamay")
    distrustful = servers.site(
        "karamay", ACCOUNTS["karamay"].leaf_password, LeafTls(rogue_ca.cert, own.cert, own.key)
    )
    await until(
        lambda: "certificate signed by unknown authority" in distrustful.log.read_text(),
        "the site refusing the hub's certificate",
    )
    assert servers.hub.leaf_nodes() == []
    # The same site with its own certificate is let in: what was refused was the certificate.
    servers.sites.pop().cleanup()
    servers.site("karamay", ACCOUNTS["karamay"].leaf_password, servers.site_tls("karamay"))
    await until(lambda: servers.hub.leaf_nodes() == [site_domain("karamay")], "karamay let in")


async def test_the_feed_reads_each_site_as_its_own_feed_user(servers: Servers) -> None:
    feed_settings = SiteFeedSettings(
        sites=tuple(ACCOUNTS),
        nats_urls=(servers.hub.nats_url,),
        passwords={site: Secret(a.feed_password) for site, a in ACCOUNTS.items()},
    )
    connections = await connect_sites(feed_settings)
    try:
        assert len({id(nc) for nc in connections.values()}) == len(ACCOUNTS)
        for site_id, nc in connections.items():
            info = await nc.jetstream().stream_info(hub_stream(site_id))  # made in its account
            assert info.config.sources is not None
            assert info.config.sources[0].external is not None
            assert info.config.sources[0].external.api == f"$JS.{site_domain(site_id)}.API"
    finally:
        await close_all(connections)
    wrong = SiteFeedSettings(
        sites=("karamay",),
        nats_urls=(servers.hub.nats_url,),
        passwords={"karamay": Secret("not-the-password")},
    )
    with pytest.raises(PartitionConnectionLost, match="refused feed-karamay"):
        await connect_sites(wrong)


def test_the_printed_site_configuration_carries_its_user_and_tls(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki")
    own = ca.client("karamay")
    env = {
        "EICU_SITE_ID": "karamay",
        "EICU_SITE_HUB_URL": "nats-leaf://hub.example:7422",
        "EICU_SITE_HUB_PASSWORD": "p@ss:word",
        "EICU_SITE_HUB_CA_FILE": str(ca.cert),
        "EICU_SITE_HUB_CERT_FILE": str(own.cert),
        "EICU_SITE_HUB_KEY_FILE": str(own.key),
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("EICU_")}
    out = subprocess.run(
        [sys.executable, "-m", "eicu.cli", "site", "--print-nats-config"],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "nats-leaf://leaf-karamay:p%40ss%3Aword@hub.example:7422" in out
    assert f'ca_file: "{ca.cert}"' in out
    check_nats_config(out, tmp_path)
