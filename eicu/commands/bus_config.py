"""``eicu bus-config``: the configuration of one node of the hub's NATS cluster.

Prints the file for ``nats-server -c``: JetStream, the MQTT listener the gateways and workers
use (QoS 1 sessions kept in ``--replicas`` copies), the cluster routes to every node, and the
partition mappings that put each bed's messages in one of ``--partitions`` partitions
(docs/bus.md). Run it once per node with that node's ``--name``; every node gets the same
``--routes`` and ``--partitions``.

    eicu bus-config --name hub1 --routes hub1:6222,hub2:6222,hub3:6222 --partitions 64 \\
        --store-dir /var/lib/nats > /etc/nats/eicu.conf
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from eicu.errors import ConfigError

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


def run(args: argparse.Namespace) -> int:
    from eicu.config import MAX_PARTITIONS
    from eicu.devservices import nats_config

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
        )
    )
    return 0


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
