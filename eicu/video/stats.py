"""Call quality: a plain summary of one call, from the peer connection's WebRTC statistics and
the frame meters, and Prometheus metrics of it.

The summary (sent to the engine as the ``stats`` message every couple of seconds)::

    {
      "inbound":  {"video": {"frames", "fps", "width", "height",
                             "packets_received", "packets_lost", "jitter_s"},
                   "audio": {"frames", "fps", "samples",
                             "packets_received", "packets_lost", "jitter_s"}},
      "outbound": {"video": {"frames", "fps", "width", "height", "packets_sent", "bytes_sent",
                             "packets_lost", "fraction_lost", "round_trip_time_s"},
                   "audio": {... the same without width and height ...}},
      "round_trip_time_s": 0.012      # the largest of the outbound streams; null until known
    }

``inbound`` is what the cart receives from the command center, ``outbound`` what it sends (the
loss and round-trip time of outbound streams come from the far end's RTCP receiver reports).
A field is absent until there is something to report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiortc import RTCPeerConnection
from prometheus_client import CollectorRegistry, Counter, Gauge

from eicu.video.media import FrameMeter

# RTP clock rates, to turn jitter from timestamp units into seconds.
_CLOCK_RATE = {"video": 90_000, "audio": 48_000}

Summary = dict[str, Any]


async def summarize(
    pc: RTCPeerConnection,
    sent: Mapping[str, FrameMeter],
    received: Mapping[str, FrameMeter],
) -> Summary:
    """The summary of a call: ``sent`` and ``received`` are frame meters by kind."""
    report = await pc.getStats()
    inbound: dict[str, dict[str, Any]] = {k: m.summary() for k, m in received.items()}
    outbound: dict[str, dict[str, Any]] = {k: m.summary() for k, m in sent.items()}
    rtts: list[float] = []
    for stat in report.values():
        kind = getattr(stat, "kind", None)
        if kind not in _CLOCK_RATE:
            continue
        if stat.type == "inbound-rtp":
            d = inbound.setdefault(kind, {})
            d["packets_received"] = d.get("packets_received", 0) + stat.packetsReceived
            d["packets_lost"] = d.get("packets_lost", 0) + max(stat.packetsLost, 0)
            d["jitter_s"] = round(stat.jitter / _CLOCK_RATE[kind], 6)
        elif stat.type == "outbound-rtp":
            d = outbound.setdefault(kind, {})
            d["packets_sent"] = d.get("packets_sent", 0) + stat.packetsSent
            d["bytes_sent"] = d.get("bytes_sent", 0) + stat.bytesSent
        elif stat.type == "remote-inbound-rtp":
            d = outbound.setdefault(kind, {})
            d["packets_lost"] = d.get("packets_lost", 0) + max(stat.packetsLost, 0)
            if stat.fractionLost is not None:
                d["fraction_lost"] = round(float(stat.fractionLost), 4)
            if stat.roundTripTime is not None:  # known once an RTCP report answers ours
                d["round_trip_time_s"] = round(float(stat.roundTripTime), 6)
                rtts.append(float(stat.roundTripTime))
    return {
        "inbound": inbound,
        "outbound": outbound,
        "round_trip_time_s": round(max(rtts), 6) if rtts else None,
    }


class CartMetrics:
    """Prometheus metrics of one cart process, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        media = ["site", "bed", "direction", "kind"]
        self.frame_width = Gauge(
            "eicu_video_frame_width", "Width of the video frames", media, registry=r
        )
        self.frame_height = Gauge(
            "eicu_video_frame_height", "Height of the video frames", media, registry=r
        )
        self.fps = Gauge(
            "eicu_video_frames_per_second", "Frames per second, last seconds", media, registry=r
        )
        self.frames = Gauge("eicu_video_frames", "Frames in the current call", media, registry=r)
        self.packets_lost = Gauge(
            "eicu_video_packets_lost", "RTP packets lost in the current call", media, registry=r
        )
        self.jitter = Gauge(
            "eicu_video_jitter_seconds", "Interarrival jitter of received RTP", media, registry=r
        )
        self.rtt = Gauge(
            "eicu_video_round_trip_seconds",
            "Round-trip time to the far end (RTCP)",
            ["site", "bed"],
            registry=r,
        )
        self.registered = Gauge(
            "eicu_cart_registered",
            "1 while registered with the engine",
            ["site", "bed"],
            registry=r,
        )
        self.in_call = Gauge("eicu_cart_in_call", "1 during a call", ["site", "bed"], registry=r)
        self.calls = Counter(
            "eicu_cart_calls", "Offers, by outcome", ["site", "bed", "outcome"], registry=r
        )
        self.messages = Counter(
            "eicu_cart_messages",
            "Signaling messages received, by type (unknown: not understood)",
            ["site", "bed", "type"],
            registry=r,
        )
        self.connects = Counter(
            "eicu_cart_connect_attempts",
            "Attempts to reach the engine, by outcome",
            ["site", "bed", "outcome"],
            registry=r,
        )

    def export(self, site: str, bed: str, summary: Summary) -> None:
        """Set the media gauges of ``site``/``bed`` from a call summary."""
        for direction in ("inbound", "outbound"):
            for kind, d in summary.get(direction, {}).items():
                labels = (site, bed, direction, kind)
                if "width" in d:
                    self.frame_width.labels(*labels).set(d["width"])
                    self.frame_height.labels(*labels).set(d["height"])
                self.fps.labels(*labels).set(d.get("fps", 0.0))
                self.frames.labels(*labels).set(d.get("frames", 0))
                self.packets_lost.labels(*labels).set(d.get("packets_lost", 0))
                if "jitter_s" in d:
                    self.jitter.labels(*labels).set(d["jitter_s"])
        rtt = summary.get("round_trip_time_s")
        if rtt is not None:
            self.rtt.labels(site, bed).set(rtt)

    def clear_call(self, site: str, bed: str) -> None:
        """Zero the media gauges of ``site``/``bed`` when a call ends."""
        for direction in ("inbound", "outbound"):
            for kind in ("video", "audio"):
                labels = (site, bed, direction, kind)
                for gauge in (self.fps, self.frames, self.packets_lost, self.jitter):
                    gauge.labels(*labels).set(0)
                if kind == "video":
                    self.frame_width.labels(*labels).set(0)
                    self.frame_height.labels(*labels).set(0)
        self.rtt.labels(site, bed).set(0)
