"""Per-bed state: sequence tracking, latest numerics, recent waveforms, online status.

The router keeps one :class:`BedState` per bed. Frames that pass sequence tracking are handed to
the registered consumers (the signal pipeline, alarm rules) and to the store writer.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from eicu.metrics import IngestMetrics
from eicu.models import BedKey, Frame, StatusFrame, WaveformFrame

log = logging.getLogger(__name__)

SeqVerdict = Literal["next", "first", "gap", "reordered", "duplicate", "reset"]
_WRAP = 1 << 32


class SeqTracker:
    """Classifies each (seq, device time) of one stream.

    A duplicate is a sequence number seen recently *with the same device time* (a QoS 1
    redelivery). A gateway that restarts and counts from 0 again sends new times, so its
    messages are a ``reset``, never dropped as duplicates.
    """

    def __init__(self, window: int = 4096) -> None:
        self._seen: OrderedDict[int, int] = OrderedDict()
        self._window = window
        self.last: int | None = None

    def observe(self, seq: int, ts_us: int) -> tuple[SeqVerdict, int]:
        """Returns the verdict and, for a gap, how many messages are missing."""
        seen_ts = self._seen.get(seq)
        if seen_ts == ts_us:
            return "duplicate", 0
        self._seen[seq] = ts_us
        self._seen.move_to_end(seq)
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        last = self.last
        if last is None:
            self.last = seq
            return "first", 0
        ahead = (seq - last) % _WRAP
        if ahead == 1:
            self.last = seq
            return "next", 0
        if seen_ts is not None:
            self.last = seq  # same number, new time: the sender started counting again
            return "reset", 0
        if 0 < ahead < _WRAP // 2:
            self.last = seq
            return ("gap", ahead - 1) if ahead <= 1_000_000 else ("reset", 0)
        if _WRAP - ahead <= self._window:
            return "reordered", 0
        self.last = seq
        return "reset", 0


class Ring:
    """The last ``capacity`` samples of one signal (physical units), kept circularly: writing a
    chunk costs the chunk, not the whole buffer."""

    def __init__(self, capacity: int) -> None:
        self.buf = np.full(capacity, np.nan)
        self.total = 0  # samples ever written; the next one goes to buf[total % capacity]

    @property
    def capacity(self) -> int:
        return int(self.buf.shape[0])

    def extend(self, values: NDArray[np.float64]) -> None:
        n = values.shape[0]
        cap = self.buf.shape[0]
        if n >= cap:
            values = values[-cap:]
            start = (self.total + n - cap) % cap
            k = cap
        else:
            start = self.total % cap
            k = n
        first = min(k, cap - start)
        self.buf[start : start + first] = values[:first]
        self.buf[: k - first] = values[first:]
        self.total += n

    def last(self, n: int) -> NDArray[np.float64]:
        """The newest ``n`` samples in time order (fewer when fewer were written)."""
        cap = self.buf.shape[0]
        n = min(n, self.total, cap)
        end = self.total % cap
        idx = (np.arange(end - n, end)) % cap
        return self.buf[idx]


@dataclass
class SignalState:
    fs_hz: float
    ring: Ring
    last_t_us: int = 0  # time of the newest sample


@dataclass
class BedState:
    bed: BedKey
    status: str = "unknown"  # online, offline, standby, unknown
    gateway: str | None = None
    last_seen_us: int = 0  # receive time of the latest message
    first_seen_us: int = 0  # receive time of the first message
    latest: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    signals: dict[str, SignalState] = field(default_factory=dict)
    numerics_seq: SeqTracker = field(default_factory=SeqTracker)
    waveform_seq: SeqTracker = field(default_factory=SeqTracker)
    # The device clock minus the engine's: the largest (device time - receive time) seen, i.e.
    # the message that came through fastest, let down by OFFSET_DRIFT per second so that a
    # device clock stepped back is followed.
    clock_offset_us: float = 0.0
    delay_us: int = 0  # how much later than the fastest one the latest message came through
    messages: int = 0
    samples: int = 0
    gaps: int = 0
    duplicates: int = 0

    def is_stale(self, now_us: int, max_silence_s: float = 10.0) -> bool:
        return now_us - self.last_seen_us > max_silence_s * 1e6

    def device_now_us(self, now_us: int) -> int:
        """The bed's device clock at engine time ``now_us``."""
        return now_us + int(self.clock_offset_us)


Consumer = Callable[[Frame, "BedState | None"], None]

RING_SECONDS = 60.0
# How fast a bed's clock offset may fall: 1 ms a second, 3.6 s an hour. Far more than a device
# crystal drifts (tens of ppm); slow enough that a delay lasting minutes is still seen as a delay.
OFFSET_DRIFT = 1e-3
INPUT_DELAY_SILENT_S = 10.0  # beds silent this long do not count towards the input delay
INPUT_DELAY_EVERY_S = 0.5
INPUT_DELAY_MIN_BEDS = 3  # a site counts towards the input delay with at least this many beds
# A bed counts once it has been heard over this long: a bed heard once has no fastest message to
# be late against, and a flood of such beds would hide a delay every real bed shows.
INPUT_DELAY_HISTORY_S = 10.0


def input_delay_us(beds: dict[BedKey, BedState], now_us: int) -> int:
    """How far behind its input the engine is: for each site, the median of its live beds'
    :attr:`BedState.delay_us`; the smallest of those medians. A delay every site shares is the
    engine's (or the command center's own network); one site's link lagging is that site's, and
    a few beds of their own are theirs. 0 while no site has enough live beds."""
    by_site: dict[str, list[int]] = {}
    since_us = now_us - int(INPUT_DELAY_SILENT_S * 1e6)
    # A copy first: the metrics endpoint may call this from its own thread while beds are added.
    for key, state in list(beds.items()):
        if (
            state.last_seen_us >= since_us
            and state.status == "online"
            and state.last_seen_us - state.first_seen_us >= INPUT_DELAY_HISTORY_S * 1e6
        ):
            by_site.setdefault(key.site, []).append(state.delay_us)
    medians = [int(np.median(d)) for d in by_site.values() if len(d) >= INPUT_DELAY_MIN_BEDS]
    return min(medians, default=0)


class BedRouter:
    """Routes decoded frames into per-bed state; drops duplicates; tells consumers."""

    def __init__(self, metrics: IngestMetrics) -> None:
        self.beds: dict[BedKey, BedState] = {}
        self._metrics = metrics
        self._consumers: list[Consumer] = []
        self._delay_us = self._delay_at_us = 0
        metrics.input_delay.set_function(lambda: self.input_delay_us(time.time_ns() // 1000) / 1e6)

    def input_delay_us(self, now_us: int) -> int:
        """See :func:`input_delay_us`; worked out at most every INPUT_DELAY_EVERY_S."""
        if abs(now_us - self._delay_at_us) >= INPUT_DELAY_EVERY_S * 1e6:
            self._delay_us = input_delay_us(self.beds, now_us)
            self._delay_at_us = now_us
        return self._delay_us

    def subscribe(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def bed(self, key: BedKey) -> BedState:
        state = self.beds.get(key)
        if state is None:
            state = self.beds[key] = BedState(key)
        return state

    def route(self, frame: Frame) -> bool:
        """Update state with a frame. False when the frame is a duplicate (drop it)."""
        if isinstance(frame, StatusFrame):
            self._status(frame)
        elif isinstance(frame, WaveformFrame):
            state = self.bed(frame.bed)
            if not self._sequence(state, state.waveform_seq, "waveform", frame.seq, frame.t0_us):
                return False
            last_us = frame.t0_us
            for block in frame.blocks:
                sig = state.signals.get(block.signal)
                if sig is None or sig.fs_hz != block.fs_hz:
                    cap = int(RING_SECONDS * block.fs_hz)
                    sig = state.signals[block.signal] = SignalState(block.fs_hz, Ring(cap))
                sig.ring.extend(block.physical())
                n = block.samples.shape[0]
                sig.last_t_us = frame.t0_us + block.t_offset_us + int((n - 1) * 1e6 / block.fs_hz)
                last_us = max(last_us, sig.last_t_us)
            # A frame leaves the device after its last sample: that is its device time here.
            self._seen(state, frame.received_us, last_us, frame.n_samples, "waveform")
        else:
            state = self.bed(frame.bed)
            if not self._sequence(state, state.numerics_seq, "numerics", frame.seq, frame.ts_us):
                return False
            for key, value in frame.values.items():
                previous = state.latest.get(key)
                if previous is None or frame.ts_us >= previous[1]:
                    state.latest[key] = (value, frame.ts_us)
            self._seen(state, frame.received_us, frame.ts_us, frame.n_values, "numerics")
        for consumer in self._consumers:
            try:
                bed_state = None if isinstance(frame, StatusFrame) else self.beds[frame.bed]
                consumer(frame, bed_state)
            except Exception:
                log.exception("consumer %r failed on a frame", consumer)
        return True

    def _sequence(
        self, state: BedState, tracker: SeqTracker, kind: str, seq: int, ts_us: int
    ) -> bool:
        verdict, missing = tracker.observe(seq, ts_us)
        if verdict == "duplicate":
            state.duplicates += 1
            self._metrics.duplicates.labels(kind=kind).inc()
            return False
        if verdict == "gap":
            state.gaps += missing
            self._metrics.gaps.labels(kind=kind).inc(missing)
        elif verdict == "reordered":
            self._metrics.reordered.labels(kind=kind).inc()
        elif verdict == "reset":
            self._metrics.seq_resets.inc()
        return True

    def _seen(self, state: BedState, received_us: int, device_us: int, n: int, kind: str) -> None:
        if state.status in ("unknown", "offline"):
            state.status = "online"
        skew = device_us - received_us
        if state.messages == 0:
            state.clock_offset_us = skew
            state.first_seen_us = received_us
        else:
            elapsed_us = max(0, received_us - state.last_seen_us)
            state.clock_offset_us = max(
                float(skew), state.clock_offset_us - OFFSET_DRIFT * elapsed_us
            )
        state.delay_us = int(state.clock_offset_us - skew)
        state.last_seen_us = max(state.last_seen_us, received_us)
        state.messages += 1
        state.samples += n
        self._metrics.messages.labels(kind=kind).inc()
        self._metrics.samples.inc(n)
        self._metrics.clock_skew.observe(abs(skew) / 1e6)

    def _status(self, frame: StatusFrame) -> None:
        self._metrics.messages.labels(kind="status").inc()
        if frame.bed is not None:
            state = self.bed(BedKey(frame.site, frame.bed))
            state.status = frame.state
        else:
            for bed in frame.beds:
                state = self.bed(BedKey(frame.site, bed))
                state.gateway = frame.gateway
                state.status = frame.state
        self._update_bed_gauge()

    def _update_bed_gauge(self) -> None:
        counts: dict[str, int] = {}
        for state in self.beds.values():
            counts[state.status] = counts.get(state.status, 0) + 1
        for status in ("online", "offline", "standby", "unknown"):
            self._metrics.beds.labels(state=status).set(counts.get(status, 0))
