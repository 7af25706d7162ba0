"""A long-distance link between a remote site and the hub, emulated on this machine with Linux
network namespaces (iproute2's ``ip netns``), for the tests and the benchmark of remote sites.

Two namespaces, the site's and the hub's, joined by a veth pair (the WAN): the site's end has
10.77.0.2, the hub's 10.77.0.1. Processes started in a namespace (``ip netns exec``: the site's
nats-server in the site's, the hub's in the hub's) reach each other only across that pair:

- ``cut()`` and ``restore()`` set the site's end down and up (``ip link set ... down``): a link
  that fails, not a connection that is closed; the TCP connections across it live on, and find
  out as TCP does.
- ``cap(rate_mbit)`` puts a token bucket (``tc qdisc ... tbf``) on both ends: the WAN's
  bandwidth, each way.
- ``WanLink(delay_ms=..., jitter_ms=..., loss_pct=...)`` puts a third namespace in the middle
  whose two interfaces a bridge process (tests/wan_bridge.py) joins: each Ethernet frame is
  delayed, or dropped, on its own (this kernel has no ``netem``).
- ``wan_bytes()``: what crossed the site's end of the link each way (the interface's counters:
  Ethernet, IP and TCP headers and retransmissions included).

A server in a namespace listens on the ports its configuration names; ``forward(ns, port)``
makes the same port on this host's loopback lead to it, so the tests, gateways and ``eicu``
processes on this host reach it as ``127.0.0.1:<port>`` (``NatsServer.url`` and the rest work
unchanged). Those connections are the site's or the hub's own local traffic and never cross
the WAN.

Namespace names carry the creating process's id; a link whose process has gone (a killed test
run) is removed, with everything running in it, when the next link is made. ``cleanup()`` ends
every process in the namespaces and deletes them, whatever happened before.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.tcp_proxy import TcpProxy

PREFIX = "eicu-wan-"
HUB_IP = "10.77.0.1"
SITE_IP = "10.77.0.2"
WAN_NET = "10.77.0.0/24"
WAN_IFACE = "wan0"  # the WAN's end in the site's and in the hub's namespace
CLONE_NEWNET = 0x40000000
_counter = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command of the harness failed; the message has its output."""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (root, iproute2's
    ``ip`` and ``tc``, a namespace that can be made, holding a veth pair, and deleted)."""
    if os.geteuid() != 0:
        return "network namespaces need root (the emulated WAN uses ip netns, veth and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"iproute2's {tool} is not installed"
    probe = f"{PREFIX}probe-{os.getpid()}-{next(_counter)}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    except NetnsError as exc:
        return f"network namespaces do not work here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def _delete(ns: str) -> None:
    """Ends every process in ``ns`` (SIGTERM, then SIGKILL after 5 s) and deletes it."""
    pids = _pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = _pids(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned() -> None:
    """Deletes the namespaces of links whose process is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name[len(PREFIX) :].split("-")
        if name.startswith(PREFIX) and parts[0].isdigit() and not _alive(int(parts[0])):
            _delete(name)


_libc = ctypes.CDLL(None, use_errno=True)


def connect_in(ns: str, address: tuple[str, int], timeout_s: float = 5.0) -> socket.socket:
    """A TCP connection to ``address`` made from inside namespace ``ns`` (by a thread that
    enters it; the socket stays in that namespace's network)."""
    out: list[socket.socket | BaseException] = []

    def enter_and_connect() -> None:
        try:
            with open(f"/var/run/netns/{ns}") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns}")
            out.append(socket.create_connection(address, timeout=timeout_s))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=enter_and_connect, daemon=True)
    thread.start()
    thread.join()
    result = out[0]
    if isinstance(result, BaseException):
        raise result
    result.settimeout(None)
    return result


class NsForward(TcpProxy):
    """This host's ``127.0.0.1:port`` leading to ``127.0.0.1:port`` in namespace ``ns``."""

    def __init__(self, ns: str, port: int) -> None:
        super().__init__(port, port=port)
        self.ns = ns

    def connect_upstream(self) -> socket.socket:
        return connect_in(self.ns, self.target)


class WanLink:
    """A site's and the hub's namespaces joined by an emulated WAN (see the module's doc)."""

    def __init__(
        self,
        *,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss_pct: float = 0.0,
        congestion: str | None = None,
    ) -> None:
        """``congestion``: the TCP congestion control across the WAN, both ways (``cubic``,
        ``bbr``; default: this host's), which decides how fast one TCP connection goes on a
        lossy, long link."""
        remove_abandoned()
        base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.site_ns, self.hub_ns = f"{base}-site", f"{base}-hub"
        self.bridged = bool(delay_ms or jitter_ms or loss_pct)
        self.wan_ns = f"{base}-wan" if self.bridged else None
        self._made: list[str] = []
        self._forwards: list[NsForward] = []
        self.bridge: subprocess.Popen[str] | None = None
        self.bridge_counts: dict[str, dict[str, int]] = {}
        self.capped_mbit: float | None = None
        self._congestion: str | None = None
        try:
            for ns in (self.site_ns, self.hub_ns, self.wan_ns):
                if ns is not None:
                    _run("ip", "netns", "add", ns)
                    self._made.append(ns)
                    _run("ip", "-n", ns, "link", "set", "lo", "up")
            if self.wan_ns is None:
                self._veth(self.site_ns, WAN_IFACE, self.hub_ns, WAN_IFACE)
            else:
                self._veth(self.site_ns, WAN_IFACE, self.wan_ns, "s0")
                self._veth(self.hub_ns, WAN_IFACE, self.wan_ns, "h0")
            for ns, ip in ((self.site_ns, SITE_IP), (self.hub_ns, HUB_IP)):
                _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", WAN_IFACE)
                # single segments: a dropped frame is one lost segment, as on a real path
                _run("ip", "-n", ns, "link", "set", WAN_IFACE, "gso_max_segs", "1")
                _run("ip", "-n", ns, "link", "set", WAN_IFACE, "up")
            self._congestion = congestion
            self._route_congestion()
            if self.wan_ns is not None:
                for iface in ("s0", "h0"):
                    _run("ip", "-n", self.wan_ns, "link", "set", iface, "promisc", "on", "up")
                self._start_bridge(delay_ms, jitter_ms, loss_pct)
        except BaseException:
            self.cleanup()
            raise

    @staticmethod
    def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        _run(
            "ip", "link", "add", name_a, "netns", ns_a, "type", "veth",
            "peer", "name", name_b, "netns", ns_b,
        )  # fmt: skip

    def _start_bridge(self, delay_ms: float, jitter_ms: float, loss_pct: float) -> None:
        assert self.wan_ns is not None
        script = Path(__file__).with_name("wan_bridge.py")
        self.bridge = subprocess.Popen(
            [
                *self.prefix(self.wan_ns), sys.executable, str(script), "s0", "h0",
                "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms),
                "--loss-pct", str(loss_pct),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.bridge.stdout is not None
        line = self.bridge.stdout.readline()
        if line.strip() != "ready":
            self.bridge.kill()
            _, err = self.bridge.communicate()
            raise NetnsError(f"the WAN bridge did not start: {err.strip()}")

    @staticmethod
    def prefix(ns: str) -> list[str]:
        """The command prefix that runs a program in namespace ``ns``."""
        return ["ip", "netns", "exec", ns]

    def forward(self, ns: str, *ports: int) -> None:
        """This host's loopback ``ports`` lead to the same ports in namespace ``ns``."""
        for port in ports:
            self._forwards.append(NsForward(ns, port).start())

    # --- the link's state ---------------------------------------------------------------------

    def cut(self) -> None:
        """The WAN fails: the site's end goes down."""
        _run("ip", "-n", self.site_ns, "link", "set", WAN_IFACE, "down")

    def restore(self) -> None:
        _run("ip", "-n", self.site_ns, "link", "set", WAN_IFACE, "up")
        self._route_congestion()

    def cut_mid_path(self) -> None:
        """The WAN fails in the middle of the path (needs the bridge: a delay or loss): the
        bridge drops every frame, both ends' interfaces staying up, so neither end's kernel or
        server sees the cut; until :meth:`restore_mid_path`."""
        self._signal_bridge(signal.SIGUSR1)

    def restore_mid_path(self) -> None:
        self._signal_bridge(signal.SIGUSR2)

    def _signal_bridge(self, sig: signal.Signals) -> None:
        if self.bridge is None or self.bridge.poll() is not None:
            raise NetnsError("a cut in the middle of the path needs the bridge running")
        self.bridge.send_signal(sig)

    def cap(self, rate_mbit: float, burst_kbyte: int = 32, latency_ms: int = 200) -> None:
        """Both ends send at most ``rate_mbit`` (a token bucket of ``burst_kbyte``, a queue of
        ``latency_ms`` at that rate)."""
        if rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be > 0, got {rate_mbit}")
        for ns in (self.site_ns, self.hub_ns):
            _run(
                "tc", "-n", ns, "qdisc", "replace", "dev", WAN_IFACE, "root", "tbf",
                "rate", f"{rate_mbit}mbit", "burst", f"{burst_kbyte}kb",
                "latency", f"{latency_ms}ms",
            )  # fmt: skip
        self.capped_mbit = rate_mbit

    def _route_congestion(self) -> None:
        """The WAN's route in both namespaces with the chosen congestion control (a route's
        ``congctl``: a namespace may not choose another default than the host allows). The
        route is made again when the link comes back up, so this is done again then."""
        if self._congestion is None:
            return
        for ns, ip in ((self.site_ns, SITE_IP), (self.hub_ns, HUB_IP)):
            _run(
                "ip", "-n", ns, "route", "replace", WAN_NET, "dev", WAN_IFACE, "proto", "kernel",
                "scope", "link", "src", ip, "congctl", self._congestion,
            )  # fmt: skip

    def congestion(self) -> str:
        """The TCP congestion control the site sends with across the WAN."""
        if self._congestion is not None:
            return self._congestion
        return _run(*self.prefix(self.site_ns), "sysctl", "-n",
                    "net.ipv4.tcp_congestion_control").strip()  # fmt: skip

    def wan_bytes(self) -> dict[str, int]:
        """Bytes that crossed the site's end of the WAN so far: ``up`` (site to hub) and
        ``down``."""
        doc = json.loads(_run("ip", "-n", self.site_ns, "-s", "-j", "link", "show", WAN_IFACE))
        stats = doc[0]["stats64"]
        return {"up": int(stats["tx"]["bytes"]), "down": int(stats["rx"]["bytes"])}

    def stop_bridge(self) -> dict[str, dict[str, int]]:
        """Stops the bridge and returns its counts (frames, bytes, dropped) each direction."""
        if self.bridge is not None and self.bridge.poll() is None:
            self.bridge.terminate()
            try:
                out, _ = self.bridge.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.bridge.kill()
                out, _ = self.bridge.communicate()
            with contextlib.suppress(ValueError, IndexError):
                self.bridge_counts = json.loads(out.strip().splitlines()[-1])
        return self.bridge_counts

    def cleanup(self) -> None:
        """Every forward stopped, every process in the namespaces ended, the namespaces
        deleted (their interfaces with them)."""
        for forward in self._forwards:
            forward.stop()
        self._forwards = []
        with contextlib.suppress(OSError):
            self.stop_bridge()
        for ns in self._made:
            _delete(ns)
        self._made = []
