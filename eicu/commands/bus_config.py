"""``eicu bus-config``: the configuration of one node of the hub's NATS cluster.

Prints the file for ``nats-server -c``: JetStream, the MQTT listener the gateways and workers
use (QoS 1 sessions kept in ``--replicas`` copies), the cluster routes to every node, and the
partition mappings that put each bed's messages in one of ``--partitions`` partitions
(docs/bus.md). Run it once per node with that node's ``--name``; every node gets the same
``--routes`` and ``--partitions``.

    eicu bus-config --name hub1 --routes hub1:6222,hub2:6222,hub3:6222 --partitions 64 \\
        --store-dir /var/lib/nats > /etc/nats/eicu.conf

A hub that takes remote sites in (docs/remote-sites.md) adds its leafnode listener, which gives
the node the JetStream domain ``hub``, and, with ``--sites-file``, an account for each site (its
leaf node's user and the hub feed's user); ``--leaf-tls-*`` make the listener speak TLS only and
verify every site's certificate:

    eicu bus-config --name hub1 --routes ... --leafnode-port 7422 --sites-file sites.json \\
        --leaf-tls-ca ca.crt --leaf-tls-cert hub.crt --leaf-tls-key hub.key
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eicu.errors import ConfigError

if TYPE_CHECKING:
    from eicu.devservices import LeafTls, SiteAccount

_NODE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="this node's server name (unique)")
    parser.add_argument(
        "--routes",
        required=True,
        help="host:cluster-port of every node of the cluster, this one included, comma-separated",
    )
    parser.add_argument("--partitions", type=int, default=64, help="N (EICU_PARTITION_COUNT)")
    parser.add_argument("--store-dir", type=Path, default=Path("/var/lib/nats"))
    parser.add_argument("--host", default="0.0.0.0", help="address the listeners bind")
    parser.add_argument("--client-port", type=int, default=4222)
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--http-port", type=int, default=8222, help="monitoring (/healthz)")
    parser.add_argument("--cluster-port", type=int, default=6222)
    parser.add_argument("--replicas", type=int, default=3, help="copies of each MQTT session")
    parser.add_argument(
        "--users-file",
        type=Path,
        help="lines NAME:PASSWORD of the accounts that may connect (gateways, workers); "
        "without it anyone who reaches the node may",
    )
    parser.add_argument(
        "--ack-wait-s",
        type=float,
        default=5.0,
        help="seconds before an unacknowledged message goes again to its partition's reader",
    )
    parser.add_argument(
        "--leafnode-port",
        type=int,
        help="the listener remote sites' leaf nodes connect to (JetStream domain 'hub')",
    )
    parser.add_argument(
        "--sites-file",
        type=Path,
        help='a JSON object: site id -> {"leaf_password": ..., "feed_password": ...}; an '
        "account for each site (needs --leafnode-port)",
    )
    parser.add_argument("--leaf-tls-ca", type=Path, help="CA that signs the sites' certificates")
    parser.add_argument("--leaf-tls-cert", type=Path, help="the hub's leafnode certificate")
    parser.add_argument("--leaf-tls-key", type=Path, help="its private key")


def run(args: argparse.Namespace) -> int:
    from eicu.config import MAX_PARTITIONS
    from eicu.devservices import nats_config
    from eicu.sites import HUB_DOMAIN

    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    bad = [r for r in routes if not _NODE.match(r)]
    if not routes or bad:
        raise ConfigError("--routes", f"expected host:port,... got {bad or args.routes!r}")
    if not 1 <= args.partitions <= MAX_PARTITIONS:
        raise ConfigError("--partitions", f"1..{MAX_PARTITIONS}, got {args.partitions}")
    if not 1 <= args.replicas <= min(len(routes), 5):
        raise ConfigError(
            "--replicas", f"1..{min(len(routes), 5)} (the nodes), got {args.replicas}"
        )
    if args.ack_wait_s <= 0:
        raise ConfigError("--ack-wait-s", f"must be > 0, got {args.ack_wait_s}")
    users = read_users(args.users_file) if args.users_file is not None else None
    sites = read_sites(args.sites_file) if args.sites_file is not None else None
    leaf_tls = _leaf_tls(args)
    if args.leafnode_port is None and (sites is not None or leaf_tls is not None):
        raise ConfigError("--leafnode-port", "--sites-file and --leaf-tls-* need a leafnode port")
    if sites is not None and users is None:
        # Once any account has users, a connection without one is refused: the hub's own
        # gateways, workers and dashboards need theirs.
        raise ConfigError("--users-file", "the hub's own accounts are required with --sites-file")
    if args.leafnode_port is not None and not 1 <= args.leafnode_port <= 65535:
        raise ConfigError("--leafnode-port", f"1..65535, got {args.leafnode_port}")
    sys.stdout.write(
        nats_config(
            server_name=args.name,
            client_port=args.client_port,
            mqtt_port=args.mqtt_port,
            http_port=args.http_port,
            store_dir=args.store_dir,
            cluster_port=args.cluster_port,
            routes=routes,
            stream_replicas=args.replicas,
            partitions=args.partitions,
            mqtt_ack_wait_s=args.ack_wait_s,
            host=args.host,
            users=users,
            jetstream_domain=HUB_DOMAIN if args.leafnode_port is not None else None,
            leafnode_port=args.leafnode_port,
            leaf_tls=leaf_tls,
            site_accounts=sites,
        )
    )
    return 0


def _leaf_tls(args: argparse.Namespace) -> LeafTls | None:
    from eicu.devservices import LeafTls

    files = {
        "--leaf-tls-ca": args.leaf_tls_ca,
        "--leaf-tls-cert": args.leaf_tls_cert,
        "--leaf-tls-key": args.leaf_tls_key,
    }
    given = [k for k, v in files.items() if v is not None]
    if not given:
        return None
    if len(given) < len(files):
        missing = ", ".join(k for k in files if k not in given)
        raise ConfigError(missing, f"TLS on the leafnode listener needs all three of {list(files)}")
    for key, path in files.items():
        if not path.is_file():
            raise ConfigError(key, f"no such file: {path}")
    return LeafTls(args.leaf_tls_ca, args.leaf_tls_cert, args.leaf_tls_key)


def read_sites(path: Path) -> dict[str, SiteAccount]:
    """The sites' accounts: a JSON object, site id -> its leaf and feed passwords."""
    from eicu.devservices import SiteAccount
    from eicu.sites import check_site_id

    key = "--sites-file"
    if not path.is_file():
        raise ConfigError(key, f"no such file: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(key, f"{path} is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(key, "expected a non-empty JSON object: site id -> passwords")
    sites: dict[str, SiteAccount] = {}
    for site_id, entry in raw.items():
        check_site_id(site_id, key)
        fields = ("leaf_password", "feed_password")
        if not isinstance(entry, dict) or set(entry) != set(fields):
            raise ConfigError(key, f"site {site_id}: expected exactly the keys {list(fields)}")
        bad = [f for f in fields if not isinstance(entry[f], str) or not entry[f]]
        if bad:
            raise ConfigError(key, f"site {site_id}: {', '.join(bad)} must be a non-empty string")
        sites[site_id] = SiteAccount(entry["leaf_password"], entry["feed_password"])
    return sites


def read_users(path: Path) -> dict[str, str]:
    """``NAME:PASSWORD`` lines (blank lines and ``#`` comments skipped)."""
    if not path.is_file():
        raise ConfigError("--users-file", f"no such file: {path}")
    users: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name or not password:
            raise ConfigError("--users-file", f"line {n}: expected NAME:PASSWORD")
        users[name] = password
    if not users:
        raise ConfigError("--users-file", f"no accounts in {path}")
    return users
