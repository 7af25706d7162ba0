"""Per-bed state: sequence tracking, latest numerics, recent waveforms, online status.

The router keeps one :class:`BedState` per bed. Frames that pass sequence tracking are handed to
the registered consumers (the signal pipeline, alarm rules) and to the store writer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from eicu.config import IngestSettings
from eicu.live import Ring, SignalTrace
from eicu.metrics import IngestMetrics
from eicu.models import BedKey, Frame, StatusFrame, WaveformFrame

log = logging.getLogger(__name__)

SeqVerdict = Literal["next", "first", "gap", "reordered", "duplicate", "reset"]
_WRAP = 1 << 32
# How far behind the last number stored before a restart a redelivered message may be: the
# messages of one stream held unacknowledged when the engine stopped (a few seconds' worth).
STORED_REDELIVERY_WINDOW = 256


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
        # The last number stored before a restart, until the stream goes past it.
        self._stored: int | None = None
        # The numbers near it known to be stored (None: all of them are taken to be).
        self._stored_set: frozenset[int] | None = None
        self._passed_ts: int | None = None  # device time of the first frame past it

    def resume(self, seq: int, stored: frozenset[int] | None = None) -> None:
        """Go on from ``seq``, the last number stored before a restart: the next one is
        ``next``, a jump a gap (messages lost while the engine was down or killed). Until the
        stream goes past ``seq``, a number at or shortly before it is a ``duplicate``: the
        broker sending again a message that was stored but not acknowledged. With ``stored``,
        the numbers the store holds near ``seq``: only those are duplicates (a message another
        process took after a newer one and never stored is new data)."""
        if self.last is None:
            self.last = seq
            self._stored = seq
            self._stored_set = stored

    def catch_up(self, seq: int, stored: frozenset[int] | None = None) -> None:
        """Like :meth:`resume`, also for a stream already tracked: when ``seq`` (the last
        number stored, e.g. by another engine while this one did not hold the bed) is ahead of
        what this tracker saw, go on from it."""
        if self.last is None:
            self.resume(seq, stored)
        elif 0 < (seq - self.last) % _WRAP < _WRAP // 2:
            self.last = self._stored = seq
            self._stored_set = stored
            self._passed_ts = None

    def observe(self, seq: int, ts_us: int) -> tuple[SeqVerdict, int]:
        """Returns the verdict and, for a gap, how many messages are missing."""
        seen_ts = self._seen.get(seq)
        if seen_ts == ts_us:
            return "duplicate", 0
        if self._stored is not None:
            if (self._stored - seq) % _WRAP < STORED_REDELIVERY_WINDOW:
                # Sent again, possibly after newer ones (a broker redelivers what was not
                # acknowledged when it chooses); newer device time than the first frame past
                # the mark: the sender started counting again.
                stored = self._stored_set is None or seq in self._stored_set
                if stored and (self._passed_ts is None or ts_us < self._passed_ts):
                    return "duplicate", 0
                if stored:
                    self._stored = self._stored_set = None
            elif self._passed_ts is None:
                self._passed_ts = ts_us
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


@dataclass
class BedState:
    bed: BedKey
    status: str = "unknown"  # online, offline, standby, unknown
    status_us: int = 0  # device time of the message that set the status
    gateway: str | None = None
    last_seen_us: int = 0  # receive time of the latest message
    first_seen_us: int = 0  # receive time of the first message
    latest: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    signals: dict[str, SignalTrace] = field(default_factory=dict)
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
    # The receive time of each value of ``latest``.
    latest_received_us: dict[str, int] = field(default_factory=dict)
    clock_known: bool = False  # the bed's clock offset rests on a message inside the window
    # A run of messages off the bed's clock by more than CLOCK_STEP_S: a step of the device
    # clock once it is confirmed (CLOCK_STEP_CONFIRM messages over CLOCK_STEP_CONFIRM_S).
    step_count: int = 0
    step_first_us: int = 0
    step_skew_us: int = 0
    clock_fault_us: int = 0  # receive time of the latest message outside the window
    clock_fault: str = ""  # what was wrong with it
    standby_until_us: int = 0  # engine time at which the bed's standby ends
    # An auto-registered bed not yet confirmed by a stream (ingest.admission): its bed-level
    # technical conditions (no data, offline, standby, device clock) raise no alarm.
    new: bool = False

    def last_data_us(self) -> int | None:
        """Device time of the bed's newest sample, numerics or waveform (None before any)."""
        times = [ts_us for _, ts_us in self.latest.values()]
        times.extend(sig.last_t_us for sig in self.signals.values() if sig.last_t_us)
        return max(times) if times else None

    def is_stale(self, now_us: int, max_silence_s: float = 10.0) -> bool:
        return now_us - self.last_seen_us > max_silence_s * 1e6

    def device_now_us(self, now_us: int) -> int:
        """The bed's device clock at engine time ``now_us``."""
        return now_us + int(self.clock_offset_us)

    def status_at(self, now_us: int) -> str:
        """The bed's status at engine time ``now_us``: a standby past its lifetime is over, and
        the bed is monitored (``online``) again."""
        if self.status == "standby" and now_us >= self.standby_until_us:
            return "online"
        return self.status

    def clock_fault_at(self, now_us: int) -> str | None:
        """What is wrong with the bed's device clock, while a message outside the window came
        in the last CLOCK_FAULT_HOLD_S; else None."""
        if self.clock_fault_us and now_us - self.clock_fault_us <= CLOCK_FAULT_HOLD_S * 1e6:
            return self.clock_fault
        return None


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
# A message whose device time is this far ahead of its bed's clock is a step of the device clock
# or one wrong message: it is taken at its receive time until the step is confirmed by
# CLOCK_STEP_CONFIRM messages spanning at least CLOCK_STEP_CONFIRM_S.
CLOCK_STEP_S = 2.0
CLOCK_STEP_CONFIRM = 3
CLOCK_STEP_CONFIRM_S = 2.0
CLOCK_FAULT_HOLD_S = 60.0  # a device-clock fault is reported this long after its last message


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

    def __init__(self, metrics: IngestMetrics, settings: IngestSettings | None = None) -> None:
        self.beds: dict[BedKey, BedState] = {}
        self._metrics = metrics
        settings = settings or IngestSettings()
        self._ahead_us = int(settings.device_clock_max_ahead_s * 1e6)
        self._behind_us = int(settings.device_clock_max_behind_s * 1e6)
        self._standby_us = int(settings.standby_max_s * 1e6)
        self._consumers: list[Consumer] = []
        # Sequence tracking of beds handed over (numerics, waveform), kept for their return.
        self._retired: dict[BedKey, tuple[SeqTracker, SeqTracker]] = {}
        self._delay_us = self._delay_at_us = 0
        # Labelled children looked up once (at first use, so a series appears with its first
        # message): a label lookup per message costs more than the count.
        self._messages: dict[str, Any] = {}
        metrics.input_delay.set_function(lambda: self.input_delay_us(time.time_ns() // 1000) / 1e6)

    def input_delay_us(self, now_us: int) -> int:
        """See :func:`input_delay_us`; worked out at most every INPUT_DELAY_EVERY_S."""
        if abs(now_us - self._delay_at_us) >= INPUT_DELAY_EVERY_S * 1e6:
            self._delay_us = input_delay_us(self.beds, now_us)
            self._delay_at_us = now_us
        return self._delay_us

    def resume_sequences(
        self,
        last: dict[tuple[BedKey, str], int],
        stored: dict[tuple[BedKey, str], frozenset[int]] | None = None,
    ) -> None:
        """Continue each bed's sequence tracking from what the store holds (see
        ``Store.last_sequences``; ``stored``: the numbers it holds near the last, see
        ``Store.stored_sequences``); beds the store does not know start afresh."""
        for (key, kind), seq in last.items():
            state = self.bed(key)
            tracker = state.numerics_seq if kind == "numerics" else state.waveform_seq
            # a stream with nothing stored recently: every number near the last is a repeat
            tracker.catch_up(seq, None if stored is None else stored.get((key, kind)))

    def forget(self, key: BedKey) -> None:
        """Drop a bed's state (another worker holds it now). Its sequence tracking is kept
        aside: if the bed comes back (its partition taken back), what the broker sends again
        of messages this engine already took is still recognised, whether or not they were
        stored yet."""
        state = self.beds.pop(key, None)
        if state is not None:
            self._retired[key] = (state.numerics_seq, state.waveform_seq)
        self._update_bed_gauge()

    def subscribe(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def bed(self, key: BedKey) -> BedState:
        state = self.beds.get(key)
        if state is None:
            state = self.beds[key] = BedState(key)
            retired = self._retired.pop(key, None)
            if retired is not None:
                state.numerics_seq, state.waveform_seq = retired
        return state

    def route(self, frame: Frame) -> bool:
        """Update state with a frame. False when the frame is a duplicate (drop it).

        A frame whose device time cannot be trusted (outside the window, or a jump of its bed's
        clock not yet confirmed) is taken at its receive time on the bed's clock: the consumers
        see it re-timed so, while the caller stores it as it came (device and receive time)."""
        live: Frame = frame
        if isinstance(frame, StatusFrame):
            self._status(frame)
        elif isinstance(frame, WaveformFrame):
            state = self.bed(frame.bed)
            if not self._sequence(state, state.waveform_seq, "waveform", frame.seq, frame.t0_us):
                return False
            # A frame leaves the device after its last sample: that is its device time here.
            last_us = frame.t0_us + max(
                b.t_offset_us + int((b.samples.shape[0] - 1) * 1e6 / b.fs_hz) for b in frame.blocks
            )
            shift_us = self._clock(state, frame.received_us, last_us, "waveform") - last_us
            if shift_us:
                live = dataclasses.replace(frame, t0_us=frame.t0_us + shift_us)
            for block in frame.blocks:
                sig = state.signals.get(block.signal)
                if sig is None or sig.fs_hz != block.fs_hz:
                    cap = int(RING_SECONDS * block.fs_hz)
                    sig = state.signals[block.signal] = SignalTrace(block.fs_hz, Ring(cap))
                sig.ring.extend(block.physical())
                n = block.samples.shape[0]
                sig.last_t_us = (
                    frame.t0_us + shift_us + block.t_offset_us + int((n - 1) * 1e6 / block.fs_hz)
                )
            self._seen(state, frame.received_us, last_us, frame.n_samples, "waveform")
        else:
            state = self.bed(frame.bed)
            if not self._sequence(state, state.numerics_seq, "numerics", frame.seq, frame.ts_us):
                return False
            ts_us = self._clock(state, frame.received_us, frame.ts_us, "numerics")
            if ts_us != frame.ts_us:
                live = dataclasses.replace(frame, ts_us=ts_us)
            for key, value in frame.values.items():
                previous = state.latest.get(key)
                if previous is None or ts_us >= previous[1]:
                    state.latest[key] = (value, ts_us)
                    state.latest_received_us[key] = frame.received_us
            self._seen(state, frame.received_us, frame.ts_us, frame.n_values, "numerics")
        for consumer in self._consumers:
            try:
                bed_state = None if isinstance(live, StatusFrame) else self.beds[live.bed]
                consumer(live, bed_state)
            except Exception:
                log.exception("consumer %r failed on a frame", consumer)
        return True

    def _clock(self, state: BedState, received_us: int, device_us: int, kind: str) -> int:
        """Check a message's device time and follow its bed's clock; returns the time the bed's
        live state takes it at: its device time, or its receive time on the bed's clock when the
        device time cannot be trusted."""
        skew = device_us - received_us
        # No receive time (0: a frame built in memory, not received): nothing to check against.
        outside = received_us > 0 and (skew > self._ahead_us or skew < -self._behind_us)
        if outside:
            direction = "ahead" if skew > 0 else "behind"
            self._metrics.device_time_faults.labels(kind=kind, direction=direction).inc()
            state.clock_fault_us = max(state.clock_fault_us, received_us)
            state.clock_fault = (
                f"device time {abs(skew) / 1e6:.0f} s {direction} of the engine's clock"
            )
        if state.clock_known:
            elapsed_us = max(0, received_us - state.last_seen_us)
            reference = state.clock_offset_us - OFFSET_DRIFT * elapsed_us
            ref_outside = reference > self._ahead_us or reference < -self._behind_us
            step_us = CLOCK_STEP_S * 1e6
            # Ahead of the bed's clock: a step or one wrong message. Behind it: a delay, unless
            # the bed's clock is the wrong one and this message is back inside the window.
            jump = skew > reference + step_us or (
                ref_outside and not outside and skew < reference - step_us
            )
        else:
            # The engine's clock, until a first message that is not ahead of the window. One far
            # behind may be a clock that is behind or a backlog: it never moves values forward.
            reference = 0.0
            jump = outside and skew > 0
        if not jump:
            state.step_count = 0
            if not state.clock_known:
                state.clock_offset_us = float(skew)
                state.clock_known = True
            else:
                state.clock_offset_us = max(float(skew), reference)
            state.delay_us = int(state.clock_offset_us - skew)
            return device_us
        # A run of jumped messages that agree with each other confirms a step of the clock.
        if state.step_count and abs(skew - state.step_skew_us) <= CLOCK_STEP_S * 1e6:
            state.step_count += 1
            state.step_skew_us = max(state.step_skew_us, skew)
        else:
            state.step_count, state.step_first_us, state.step_skew_us = 1, received_us, skew
        confirmed = (
            state.step_count >= CLOCK_STEP_CONFIRM
            and received_us - state.step_first_us >= CLOCK_STEP_CONFIRM_S * 1e6
        )
        if not confirmed:
            self._metrics.clock_steps.labels(outcome="held").inc()
            state.clock_offset_us = reference
            return received_us + int(reference)
        self._metrics.clock_steps.labels(outcome="adopted").inc()
        log.warning(
            "%s: device clock stepped by %+.1f s; following it", state.bed, (skew - reference) / 1e6
        )
        state.clock_offset_us = float(state.step_skew_us)
        state.clock_known = True
        state.step_count = 0
        state.delay_us = int(state.clock_offset_us - skew)
        # Values taken on the old clock must not stand in the new one's future.
        now_on_clock = received_us + int(state.clock_offset_us)
        for key, (value, ts_us) in list(state.latest.items()):
            if ts_us > now_on_clock:
                rx_us = state.latest_received_us.get(key, received_us)
                state.latest[key] = (value, rx_us + int(state.clock_offset_us))
        return device_us

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
            state.status_us = device_us
        skew = device_us - received_us
        if state.messages == 0:
            state.first_seen_us = received_us
        state.last_seen_us = max(state.last_seen_us, received_us)
        state.messages += 1
        state.samples += n
        self._count_message(kind)
        self._metrics.samples.inc(n)
        self._metrics.clock_skew.observe(abs(skew) / 1e6)

    def _count_message(self, kind: str) -> None:
        counter = self._messages.get(kind)
        if counter is None:
            counter = self._messages[kind] = self._metrics.messages.labels(kind=kind)
        counter.inc()

    def _status(self, frame: StatusFrame) -> None:
        self._count_message("status")
        standby_until_us = 0
        if frame.state == "standby":
            # A standby lasts its lifetime from its time (never later than its arrival, and its
            # arrival when it has none); a retained one older than that is ignored.
            since_us = frame.received_us
            if frame.ts_us is not None:
                since_us = min(frame.ts_us, frame.received_us)
            standby_until_us = since_us + self._standby_us
            if standby_until_us <= frame.received_us:
                self._metrics.standby_expired.inc()
                log.info(
                    "%s/%s: standby of %.0f s ago ignored (older than its lifetime)",
                    frame.site,
                    frame.bed or frame.gateway,
                    (frame.received_us - since_us) / 1e6,
                )
                return
        names = (frame.bed,) if frame.bed is not None else frame.beds
        for bed in names:
            state = self.bed(BedKey(frame.site, bed))
            if frame.gateway is not None:
                state.gateway = frame.gateway
            if state.status != frame.state:
                state.status_us = (
                    frame.ts_us
                    if frame.ts_us is not None
                    else state.device_now_us(frame.received_us)
                )
            state.status = frame.state
            state.standby_until_us = standby_until_us
        self._update_bed_gauge()

    def _update_bed_gauge(self) -> None:
        counts: dict[str, int] = {}
        for state in self.beds.values():
            counts[state.status] = counts.get(state.status, 0) + 1
        for status in ("online", "offline", "standby", "unknown"):
            self._metrics.beds.labels(state=status).set(counts.get(status, 0))
