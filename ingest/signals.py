"""The signal stage: feeds each bed's waveform frames into its streaming signal pipeline and keeps
what it derives (beats, heart rate, rhythm flags, signal quality) in the bed's state.

Each bed's pipeline counts samples per signal from the first sample it saw; a frame's place in
that count comes from its device time, so a gap in the frames is a gap in the signal (never
joined up), and a frame that arrives late (out of order) is stored but not analysed.

With ``chunk_s`` > 0 a bed's frames are held until they cover that much time and then go into
the pipeline together, each signal's contiguous samples as one chunk: frames of 0.25 s two at a
time for 0.5 s. The pipeline's work per call (filters, detectors, bookkeeping) then comes half
as often, and its beats and flags come up to ``chunk_s`` minus one frame later. The results are
the same either way (the pipeline's output does not depend on how chunks are cut).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from numpy.typing import NDArray

from eicu.live import Mark
from eicu.models import Frame, WaveformFrame
from eicu.signal.events import Beat, HeartRate, Quality, RhythmFlag
from eicu.signal.pipeline import ANALYSED, BedSignalPipeline
from ingest.state import BedState

log = logging.getLogger(__name__)

MARKS_KEPT = 128  # about 25 s of beats on two ECG leads and two pulse signals


@dataclass
class Derived:
    """What the signal stage knows about one bed now."""

    hr_bpm: dict[str, float] = field(default_factory=dict)  # per signal: median rate, latest beat
    hr_time_us: dict[str, int] = field(default_factory=dict)
    rhythms: dict[str, RhythmFlag] = field(default_factory=dict)  # active flags by label
    rhythm_us: dict[str, int] = field(default_factory=dict)  # device time each flag started
    quality: dict[str, str] = field(default_factory=dict)  # per signal verdict
    quality_us: dict[str, int] = field(default_factory=dict)  # device time each verdict started
    beats: int = 0
    ventricular_beats: int = 0
    events: list[object] = field(default_factory=list)  # recent events, newest last (bounded)
    marks: deque[Mark] = field(default_factory=lambda: deque(maxlen=MARKS_KEPT))
    marks_total: int = 0


@dataclass
class _BedPipe:
    pipeline: BedSignalPipeline
    origin_us: dict[str, int]  # device time of sample 0, per signal
    fs_hz: dict[str, float]
    # blocks held for the next chunk: (signal, index of the first sample, samples)
    held: list[tuple[str, int, NDArray[np.float64]]] = field(default_factory=list)
    held_next: dict[str, int] = field(default_factory=dict)  # per signal: the index after it
    held_from_us: int = 0  # the earliest device time held
    held_to_us: int = 0  # the latest end held


class SignalStage:
    """A router consumer (see ingest.state.BedRouter.subscribe)."""

    def __init__(self, max_events: int = 512, chunk_s: float = 0.0) -> None:
        if not (chunk_s >= 0.0 and np.isfinite(chunk_s)):
            raise ValueError(f"chunk_s must be 0 or more seconds, got {chunk_s!r}")
        self._pipes: dict[object, _BedPipe] = {}
        self.derived: dict[object, Derived] = {}
        self._max_events = max_events
        # 1 ms short of the chunk: device times are rounded to the microsecond
        self._chunk_us = max(0, round(chunk_s * 1e6) - 1000)
        self.skipped_frames = 0

    def __call__(self, frame: Frame, state: BedState | None) -> None:
        if not isinstance(frame, WaveformFrame) or state is None:
            return
        blocks = [b for b in frame.blocks if b.signal in ANALYSED]
        if not blocks:
            return
        pipe = self._pipes.get(frame.bed)
        derived = self.derived.get(frame.bed)
        if derived is None:  # (setdefault would build a Derived for every frame)
            derived = self.derived[frame.bed] = Derived()
        if pipe is None or any(
            b.signal in pipe.fs_hz and pipe.fs_hz[b.signal] != b.fs_hz for b in blocks
        ):
            if pipe is not None:
                self._flush(frame.bed, pipe, derived)  # what the old rates' pipeline holds
            fs = {b.signal: b.fs_hz for b in blocks}
            pipe = _BedPipe(BedSignalPipeline(fs), {}, fs)
            self._pipes[frame.bed] = pipe
        for b in blocks:
            if b.signal not in pipe.fs_hz:
                continue  # a signal the bed did not have when its pipeline started
            t_first = frame.t0_us + b.t_offset_us
            if not self._chunk_us:
                self._push(frame.bed, pipe, derived, b.signal, b.fs_hz, t_first, b.physical())
                continue
            # placed now, against what is held: a late block is left out on its own
            expected = pipe.held_next.get(b.signal)
            if expected is None:
                expected = pipe.pipeline.next_index(b.signal)
            index = self._place(pipe, b.signal, b.fs_hz, t_first, expected)
            if index is None:
                continue
            samples = b.physical()
            end_us = t_first + round(samples.shape[0] * 1e6 / b.fs_hz)
            if not pipe.held:
                pipe.held_from_us, pipe.held_to_us = t_first, end_us
            else:
                pipe.held_from_us = min(pipe.held_from_us, t_first)
                pipe.held_to_us = max(pipe.held_to_us, end_us)
            pipe.held.append((b.signal, index, samples))
            pipe.held_next[b.signal] = index + samples.shape[0]
        if pipe.held and pipe.held_to_us - pipe.held_from_us >= self._chunk_us:
            self._flush(frame.bed, pipe, derived)

    def flush(self) -> None:
        """Push every bed's held blocks now (the last frames of beds that went quiet)."""
        for bed, pipe in self._pipes.items():
            if pipe.held:
                self._flush(bed, pipe, self.derived[bed])

    def _flush(self, bed: object, pipe: _BedPipe, derived: Derived) -> None:
        """Push the blocks a bed holds, each signal's run of consecutive blocks as one chunk."""
        runs: dict[str, list[tuple[int, list[NDArray[np.float64]]]]] = {}
        for signal, index, samples in pipe.held:
            mine = runs.setdefault(signal, [])
            if mine and mine[-1][0] + sum(p.shape[0] for p in mine[-1][1]) == index:
                mine[-1][1].append(samples)  # starts where the run ends
            else:
                mine.append((index, [samples]))
        pipe.held = []
        pipe.held_next.clear()
        for signal, mine in runs.items():
            for index, parts in mine:
                chunk = parts[0] if len(parts) == 1 else np.concatenate(parts)
                self._analyse(bed, pipe, derived, signal, index, chunk)

    def _place(
        self, pipe: _BedPipe, signal: str, fs_hz: float, t_first: int, expected: int
    ) -> int | None:
        """The index of a block's first sample in the bed's count of the signal: the expected
        one when it comes within a sample of it, None (counted) when it is late or overlaps."""
        origin = pipe.origin_us.setdefault(signal, t_first)
        index = round((t_first - origin) * fs_hz / 1e6)
        if abs(index - expected) <= 1:
            return expected  # contiguous, up to the rounding of device times
        if index < expected:
            self.skipped_frames += 1  # late or overlapping: stored, not analysed
            return None
        return index

    def _push(
        self,
        bed: object,
        pipe: _BedPipe,
        derived: Derived,
        signal: str,
        fs_hz: float,
        t_first: int,
        samples: NDArray[np.float64],
    ) -> None:
        index = self._place(pipe, signal, fs_hz, t_first, pipe.pipeline.next_index(signal))
        if index is not None:
            self._analyse(bed, pipe, derived, signal, index, samples)

    def _analyse(
        self, bed: object, pipe: _BedPipe, derived: Derived, signal: str, index: int,
        samples: NDArray[np.float64],
    ) -> None:  # fmt: skip
        """Push one signal's samples from ``index`` on and note what the pipeline derives."""
        origin, fs_hz = pipe.origin_us[signal], pipe.fs_hz[signal]
        try:
            events = pipe.pipeline.push(signal, samples, index)
        except ValueError as exc:
            self.skipped_frames += 1
            log.debug("frame of %s not analysed: %s", bed, exc)
            return
        for ev in events:
            own = ev.signal  # an event may be about another signal of the bed
            if own != signal and own in pipe.origin_us:
                self._note(derived, ev, pipe.origin_us[own], pipe.fs_hz[own])
            else:
                self._note(derived, ev, origin, fs_hz)

    def replay(
        self, bed: object, windows: dict[str, tuple[float, NDArray[np.int64], NDArray[np.float64]]]
    ) -> int:
        """Rebuild a bed's pipeline from its recent stored samples before its live frames come
        (a bed taken over from another worker): ``windows`` maps an analysed signal to (rate,
        each sample's device time, samples in physical units). The signals go in together, a
        second at a time, so the bed's multi-signal analysis sees them as it would live; where
        times jump (frames missing) the pipeline sees the gap. Returns the samples pushed."""
        chosen = {k: w for k, w in windows.items() if k in ANALYSED and w[1].shape[0] > 0}
        if not chosen:
            return 0
        fs = {k: w[0] for k, w in chosen.items()}
        pipe = _BedPipe(BedSignalPipeline(fs), {}, fs)
        self._pipes[bed] = pipe
        derived = self.derived[bed] = Derived()
        # each signal cut into runs of at most a second, at its time jumps
        pieces: list[tuple[int, str, NDArray[np.float64]]] = []  # (first time, signal, samples)
        for signal, (fs_hz, t_us, values) in chosen.items():
            jumps = np.flatnonzero(np.diff(t_us) > 1.5e6 / fs_hz) + 1
            n = max(1, int(fs_hz))
            for run_t, run_v in zip(np.split(t_us, jumps), np.split(values, jumps), strict=True):
                for i in range(0, run_t.shape[0], n):
                    pieces.append((int(run_t[i]), signal, run_v[i : i + n]))
        pushed = 0
        for t_first, signal, samples in sorted(pieces, key=lambda p: (p[0], p[1])):
            self._push(bed, pipe, derived, signal, fs[signal], t_first, samples)
            pushed += samples.shape[0]
        return pushed

    def forget(self, bed: object) -> None:
        """Drop a bed's pipeline and results (another worker holds it now)."""
        self._pipes.pop(bed, None)
        self.derived.pop(bed, None)

    def verifier(self, bed: object) -> Callable[[str], object] | None:
        """The bed's multi-signal alarm verification (None before its pipeline exists)."""
        pipe = self._pipes.get(bed)
        return pipe.pipeline.verify_alarm if pipe is not None else None

    def _note(self, d: Derived, ev: object, origin_us: int, fs_hz: float) -> None:
        kind = type(ev)  # the event types are final: no subclasses
        if kind is Beat:
            beat = cast(Beat, ev)
            d.marks_total += 1
            t_us = origin_us + round(beat.sample * 1e6 / fs_hz)
            label = "P" if beat.kind == "pulse" else "V" if beat.ventricular else "N"
            d.marks.append(Mark(d.marks_total, beat.signal, t_us, "beat", label))
            d.beats += 1
            d.ventricular_beats += bool(beat.ventricular)
            return  # beats are many; keep only the counts
        if kind is RhythmFlag:
            flag = cast(RhythmFlag, ev)
            d.marks_total += 1
            t_us = origin_us + round(flag.sample * 1e6 / fs_hz)
            d.marks.append(Mark(d.marks_total, flag.signal, t_us, "rhythm", flag.label, flag.state))
            if flag.state == "start":
                d.rhythms[flag.label] = flag
                d.rhythm_us[flag.label] = t_us
            else:
                d.rhythms.pop(flag.label, None)
                d.rhythm_us.pop(flag.label, None)
        elif kind is HeartRate:
            hr = cast(HeartRate, ev)
            if math.isfinite(hr.hr_median_bpm):
                d.hr_bpm[hr.signal] = hr.hr_median_bpm
                d.hr_time_us[hr.signal] = origin_us + round(hr.sample * 1e6 / fs_hz)
        elif kind is Quality:
            q = cast(Quality, ev)
            if d.quality.get(q.signal) != q.verdict:
                d.quality_us[q.signal] = origin_us + round(q.sample * 1e6 / fs_hz)
            d.quality[q.signal] = q.verdict
        d.events.append(ev)
        if len(d.events) > self._max_events:
            del d.events[: len(d.events) - self._max_events]
