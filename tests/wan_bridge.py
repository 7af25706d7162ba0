"""A long-distance link between two network interfaces: every Ethernet frame that arrives on one
leaves on the other after a delay (``--delay-ms`` +- ``--jitter-ms``, uniform, each direction in
its order, as a WAN path does not reorder), or is dropped (``--loss-pct``, each frame on its own).

It runs in the network namespace that holds both interfaces (tests/netns.py starts it there with
``ip netns exec``) and reads and writes the frames through packet sockets with the virtio-net
header, so a frame's checksum left to the hardware is finished by the kernel on the other side
exactly as for a virtual machine's network card. The namespaces' own interfaces send single
segments (``gso_max_segs 1``), so a dropped frame is one TCP segment lost, and TCP recovers it
the way it does on a real path: by its retransmission, after the delay of the link.

SIGUSR1 cuts the link in the middle of the path: every frame is dropped, both ends' interfaces
staying up, so neither end's kernel sees the cut; SIGUSR2 restores it. On SIGTERM it prints what
it carried and dropped, each direction, as one line of JSON.

    python tests/wan_bridge.py IFACE_A IFACE_B --delay-ms 100 --jitter-ms 20 --loss-pct 1
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import signal
import socket
import sys
import threading
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4  # a frame this host sent, seen again by a packet socket on its interface
FRAME_MAX = 65536 + 10  # the largest frame, and the virtio-net header in front of it


class Direction:
    """One direction of the link: frames read from ``src``, delayed, written to ``dst``; none
    while ``cut`` is set."""

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        args: argparse.Namespace,
        seed: int,
        cut: threading.Event,
    ) -> None:
        self.src, self.dst = src, dst
        self.cut = cut
        self.delay_s = args.delay_ms / 1000.0
        self.jitter_s = args.jitter_ms / 1000.0
        self.loss = args.loss_pct / 100.0
        self.rng = random.Random(seed)
        self.pending: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        self.frames = self.bytes = self.dropped = self.failed = self.cut_off = 0
        self._last_release = 0.0

    def read(self) -> None:
        while True:
            frame, address = self.src.recvfrom(FRAME_MAX)
            if address[2] == PACKET_OUTGOING:
                continue
            if self.cut.is_set():
                self.cut_off += 1
                continue
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            delay_s = self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s)
            release = max(self._last_release, time.monotonic() + delay_s)
            self._last_release = release
            self.pending.put((release, frame))

    def write(self) -> None:
        while True:
            release, frame = self.pending.get()
            wait_s = release - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            try:
                self.dst.send(frame)
            except OSError:  # the other side's interface is down: the frame is lost
                self.failed += 1
                continue
            self.frames += 1
            self.bytes += len(frame) - 10

    def counts(self) -> dict[str, int]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "not_sent": self.failed,
            "cut_off": self.cut_off,
        }


def packet_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((interface, 0))
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("iface_a")
    parser.add_argument("iface_b")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.delay_ms < 0 or not 0 <= args.jitter_ms <= args.delay_ms:
        parser.error("need --delay-ms >= 0 and 0 <= --jitter-ms <= --delay-ms")
    if not 0 <= args.loss_pct < 100:
        parser.error("need 0 <= --loss-pct < 100")
    a, b = packet_socket(args.iface_a), packet_socket(args.iface_b)
    cut = threading.Event()
    directions = {
        f"{args.iface_a}->{args.iface_b}": Direction(a, b, args, args.seed, cut),
        f"{args.iface_b}->{args.iface_a}": Direction(b, a, args, args.seed + 1, cut),
    }
    for direction in directions.values():
        for work in (direction.read, direction.write):
            threading.Thread(target=work, daemon=True).start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGUSR1, lambda *_: cut.set())
    signal.signal(signal.SIGUSR2, lambda *_: cut.clear())
    print("ready", flush=True)
    stopped.wait()
    counts = {name: d.counts() for name, d in directions.items()}
    print(json.dumps(counts), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
