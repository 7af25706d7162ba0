"""The per-bed signal pipeline: chunks of samples in, beats, rates, rhythm flags and quality out.

::

    pipeline = BedSignalPipeline({"ECG_II": 250.0, "ECG_V": 250.0, "PLETH": 125.0, "ABP": 125.0})
    events = pipeline.push("ECG_II", samples_mv, first_sample_index)

Each signal has its own sample rate and its own sample count, starting at 0. A chunk may be of
any length; a chunk that starts after the expected index leaves a gap (missing samples, as if NaN
had been pushed); one that overlaps what came before is refused. Rhythm flags come from one ECG
lead (``primary_ecg``: ECG_II when present, else the first ECG lead given); every ECG lead and
pulse signal gets beats, rates and quality verdicts. Pure computation: no I/O, no clock.

Sample 0 of every signal is the same moment. On a bed with a second ECG lead at the primary
lead's rate, the primary lead's beats are classified with that lead's view of them as well
(:func:`~eicu.signal.classify.cross_lead_ventricular`): the primary lead's beats and ticks wait
for the second lead's samples, up to ``CROSS_LEAD_WAIT_S`` behind, so the results do not depend
on which lead's chunk comes first or how the chunks are cut, as long as the leads arrive within
``HISTORY_S`` of each other. A second lead that stops arriving holds the primary lead's events
back by ``CROSS_LEAD_WAIT_S`` or one chunk of the primary lead, whichever is longer.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from eicu.codes import SIGNAL_BY_KEY
from eicu.kernels.filters import _sos_filter_step
from eicu.kernels.morphology import _beat_features
from eicu.kernels.samples import NONFINITE_INF, NONFINITE_NAN, nonfinite
from eicu.kernels.spectrum import _detrended, _match_and_follow
from eicu.kernels.sqi import (
    SQI_CLIP_FRAC,
    SQI_HF,
    SQI_NAN_FRAC,
    SQI_RANGE,
    _window_agreement,
    _window_median,
    window_sqi,
)
from eicu.kernels.vclass import _cross_lead
from eicu.signal.beats import ECG_ALT_CONFIG, BeatDetector, DetectedBeats
from eicu.signal.classify import (
    CLASS_OF_CODE,
    DEFAULT_CLASSIFIER,
    BeatClass,
    BeatClassifier,
    full_pause,
    pause_candidate,
)
from eicu.signal.events import Beat, Event, HeartRate, Quality, Verdict
from eicu.signal.filters import SosFilter, bandpass_sos
from eicu.signal.rhythm import VF_S, RhythmTracker, fibrillation_features
from eicu.signal.stats import median

if TYPE_CHECKING:
    from eicu.signal.alarms import AlarmDecision, LeadEvidence, PulseEvidence

# The signals the pipeline analyses (beats, rhythm, pulse, quality); others are only stored.
ANALYSED: Final = ("ECG_II", "ECG_V", "ECG_I", "ECG_III", "ECG_MCL1", "PLETH", "ABP")
HISTORY_S: Final = 12.0
RECENT_S: Final = 30.0
# detector agreement (F1 within 150 ms) over AGREEMENT_WINDOW_S, ending AGREEMENT_LAG_S before
# the tick so that both detectors have decided on every beat in it
AGREEMENT_WINDOW_S: Final = 8.0
AGREEMENT_LAG_S: Final = 1.0
DETECTOR_AGREEMENT_MIN: Final = 0.8
QUALITY_WINDOW_S: Final = 2.0
QRS_PRE_S: Final = 0.12
QRS_POST_S: Final = 0.16
QRS_SLOPE_FRAC: Final = 0.15
QRS_SHIFT_S: Final = 0.03  # alignment search for the template correlation
PULSE_PRE_S: Final = 0.10
PULSE_POST_S: Final = 0.40
PULSE_SHIFT_S: Final = 0.05
# pulse morphology index: median template correlation of the pulses of the last 8 s
PULSE_MORPHOLOGY_MIN: Final = 0.8
TEMPLATE_INIT_BEATS: Final = 8
TEMPLATE_RELEARN_BEATS: Final = 32
# Atrial activity: the P-wave window before each QRS, 300 to 80 ms before the R peak (a P wave
# lasts up to about 110 ms and ends 120-200 ms before the QRS onset), compared from one
# non-ventricular beat to the next (see ``_SignalState.atrial_corr``).
P_WINDOW_S: Final = (0.30, 0.08)
P_TEMPLATE_BEATS: Final = 16
MAX_GAP_BLOCK_S: Final = 60.0
BLOCK_S: Final = 2.0
CROSS_LEAD_WAIT_S: Final = 1.0
# A premature beat judged by its pause (``ClassifierConfig.pause_full``) waits for the next beat
# at most this long after the latest time that beat could come and still make the pause full:
# the detector decides a beat within some 0.3 s and its classification window (QRS_POST_S +
# QRS_SHIFT_S) follows it; a beat decided later (a search-back) does not count.
PAUSE_WAIT_S: Final = 0.5

# (flat range, HF index above which the signal is noise) per kind of signal
_QUALITY_LIMITS: Final[dict[str, tuple[float, float]]] = {
    "ecg": (0.01, 1.0),
    "ABP": (1.0, 0.5),
    "PLETH": (0.0, 0.5),
    "other": (0.0, 2.0),
}


def verdict_of(
    sqi: NDArray[np.float64],
    kind: str,
    agreement: float = float("nan"),
    morphology: float = float("nan"),
) -> Verdict:
    """The quality verdict of one window's indexes (see :mod:`eicu.kernels.sqi`), for ECG the
    agreement of two different QRS detectors, for pulses the median correlation of the pulses
    with their template (NaN when not judged)."""
    flat_range, hf_limit = _QUALITY_LIMITS.get(kind, _QUALITY_LIMITS["other"])
    if sqi[SQI_NAN_FRAC] > 0.5:
        return "missing"
    if sqi[SQI_RANGE] <= flat_range:
        return "flat"
    if sqi[SQI_CLIP_FRAC] > 0.2:
        return "saturated"
    if (
        sqi[SQI_HF] > hf_limit
        or agreement < DETECTOR_AGREEMENT_MIN
        or morphology < PULSE_MORPHOLOGY_MIN
    ):
        return "noisy"
    return "good"


class _History:
    """The last ``size`` samples of a signal (raw and, for ECG, filtered), as plain arrays.

    ``raw`` and ``filt`` are views of buffers twice that size that new samples are written
    into; when a buffer is full, the samples kept move to its front (one copy per ``size``
    samples instead of one per chunk). A view is valid until the next ``append``."""

    __slots__ = ("_filt", "_filtered", "_hi", "_lo", "_raw", "size", "start")

    def __init__(self, size: int) -> None:
        self.size = size
        self.start = 0  # global index of raw[0]
        self._raw: NDArray[np.float64] = np.empty(2 * size)
        self._filt: NDArray[np.float64] = np.empty(0)  # allocated with the first filtered chunk
        self._lo = 0  # raw == self._raw[self._lo : self._hi]
        self._hi = 0
        self._filtered = False

    @property
    def raw(self) -> NDArray[np.float64]:
        return self._raw[self._lo : self._hi]

    @property
    def filt(self) -> NDArray[np.float64]:
        return self._filt[self._lo : self._hi] if self._filtered else self._filt[:0]

    def append(self, x: NDArray[np.float64], y: NDArray[np.float64] | None) -> None:
        n = x.shape[0]
        if y is not None and not self._filtered:
            self._filt = np.empty(self._raw.shape[0])
            self._filtered = True
        if self._hi + n > self._raw.shape[0]:
            kept = self._hi - self._lo
            cap = max(self._raw.shape[0], kept + n)
            raw = np.empty(cap) if cap > self._raw.shape[0] else self._raw
            raw[:kept] = self._raw[self._lo : self._hi]
            self._raw = raw
            if self._filtered:
                filt = np.empty(cap) if cap > self._filt.shape[0] else self._filt
                filt[:kept] = self._filt[self._lo : self._hi]
                self._filt = filt
            self._lo, self._hi = 0, kept
        self._raw[self._hi : self._hi + n] = x
        if y is not None:
            self._filt[self._hi : self._hi + n] = y
        self._hi += n
        drop = self._hi - self._lo - self.size
        if drop > 0:
            self._lo += drop
            self.start += drop

    @property
    def end(self) -> int:
        return self.start + self._hi - self._lo

    def window(self, lo: int, hi: int, filtered: bool = False) -> NDArray[np.float64] | None:
        if lo < self.start or hi > self.end or hi <= lo:
            return None
        a = self.filt if filtered else self.raw
        return a[lo - self.start : hi - self.start]


@dataclass(frozen=True, slots=True)
class _BeatItem:
    sample: int
    width_ms: float | None = None
    beat_class: BeatClass | None = None
    corr: float | None = None
    width_ratio: float | None = None
    steep_ratio: float | None = None
    prematurity: float | None = None
    other_corr: float | None = None
    other_steep_ratio: float | None = None


def _opt(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


class _Decided:
    """Beats in time order as (sample, known at, value), in arrays. Since both times only grow,
    the beats of a window known by some time are one span of them, found by binary search
    (``eicu.kernels.sqi``); beats older than any window asks for are dropped when the arrays
    fill up."""

    __slots__ = ("at", "hi", "lo", "s", "v")

    def __init__(self, cap: int = 64) -> None:
        self.s = np.empty(cap, dtype=np.int64)
        self.at = np.empty(cap, dtype=np.int64)
        self.v = np.empty(cap, dtype=np.float64)
        self.lo = 0
        self.hi = 0

    def extend(
        self,
        s: NDArray[np.int64],
        at: NDArray[np.int64],
        v: NDArray[np.float64] | None,
        keep_from: int,
    ) -> None:
        """Add beats; those before sample ``keep_from`` may be dropped."""
        n = s.shape[0]
        if self.hi + n > self.s.shape[0]:
            self.lo += int(np.searchsorted(self.s[self.lo : self.hi], keep_from))
            kept = self.hi - self.lo
            cap = max(self.s.shape[0], 2 * (kept + n))
            for name in ("s", "at", "v"):
                old = getattr(self, name)
                new = np.empty(cap, dtype=old.dtype) if cap > old.shape[0] else old
                new[:kept] = old[self.lo : self.hi]
                setattr(self, name, new)
            self.lo, self.hi = 0, kept
        self.s[self.hi : self.hi + n] = s
        self.at[self.hi : self.hi + n] = at
        if v is not None:
            self.v[self.hi : self.hi + n] = v
        self.hi += n


class _SignalState:
    def __init__(self, key: str, fs_hz: float) -> None:
        self.key = key
        self.fs_hz = fs_hz
        self.kind = "ecg" if key.startswith("ECG_") else key if key in ("ABP", "PLETH") else "other"
        self.next_index = 0
        self.chunk_n = 0  # samples in the latest chunk pushed
        # the sample up to which beats and ticks have been processed (the primary ECG lead can
        # wait for a second lead, see BedSignalPipeline._horizon)
        self.processed_to = 0
        self.hist = _History(size=round(HISTORY_S * fs_hz))
        self.detector: BeatDetector | None = None
        self.filter: SosFilter | None = None
        self.alt_detector: BeatDetector | None = None
        # (sample, decided at) of each detector's beats, for the agreement index
        self.known_main = _Decided()
        self.known_alt = _Decided()
        self.classifier: BeatClassifier | None = None
        self.prev_fid = -1  # the last beat given to the classifier
        self.prev_cluster = -1.0  # the template that beat joined
        if self.kind == "ecg":
            self.classifier = BeatClassifier(fs_hz)
            self.detector = BeatDetector.ecg(fs_hz)
            self.alt_detector = BeatDetector(fs_hz, ECG_ALT_CONFIG)
            self.filter = SosFilter(bandpass_sos(2, 0.5, min(40.0, 0.45 * fs_hz), fs_hz))
        elif self.kind in ("ABP", "PLETH"):
            self.detector = BeatDetector.pulse(fs_hz)
            self.filter = SosFilter(bandpass_sos(2, 0.3, min(10.0, 0.45 * fs_hz), fs_hz))
        self.quality_n = round(QUALITY_WINDOW_S * fs_hz)
        self.tick_n = max(1, round(fs_hz))
        self.next_tick = self.quality_n
        self.verdict: Verdict | None = None
        self.last_beat: int | None = None
        self.rr: list[float] = []
        # beat morphology (QRS complex or pulse wave)
        ecg = self.kind == "ecg"
        self.pre_n = round((QRS_PRE_S if ecg else PULSE_PRE_S) * fs_hz)
        self.post_n = round((QRS_POST_S if ecg else PULSE_POST_S) * fs_hz)
        self.shift_n = round((QRS_SHIFT_S if ecg else PULSE_SHIFT_S) * fs_hz)
        # (sample, known at, template correlation) of recent pulses, for the morphology index
        self.known_corr = _Decided()
        self.template = np.zeros(self.pre_n + self.post_n)
        self.tstate = np.zeros(2, dtype=np.int64)
        self.pending: list[tuple[int, int]] = []  # (sample, ready_at)
        # premature beats called N awaiting the interval after them (compensatory pause): sample
        # -> (interval before it, dominant interval), in samples; the one held back (the last
        # classified beat; nothing after it is processed until it is decided)
        self.pause_cand: dict[int, tuple[int, float]] = {}
        self.held: tuple[int, int, _BeatItem] | None = None
        self.pause_wait_n = round(PAUSE_WAIT_S * fs_hz)
        # what alarm verification looks back at: the last RECENT_S seconds
        self.recent_beats: deque[Beat] = deque()
        self.recent_quality: deque[tuple[int, Verdict]] = deque()  # (tick sample, verdict)
        self.recent_fib: deque[tuple[int, bool]] = deque()  # (window end sample, fibrillatory)
        self.vf_n = round(VF_S * fs_hz)
        self.p_lo_n = round(P_WINDOW_S[0] * fs_hz)
        self.p_hi_n = round(P_WINDOW_S[1] * fs_hz)
        # windows of the per-second quality, in samples
        self.agree_lag_n = round(AGREEMENT_LAG_S * fs_hz)
        self.agree_window_n = round(AGREEMENT_WINDOW_S * fs_hz)
        self.agree_tol_n = round(0.15 * fs_hz)
        self.known_n = round(2 * HISTORY_S * fs_hz)  # how far back decided beats are kept
        self.recent_n = round(RECENT_S * fs_hz)
        self.p_last: NDArray[np.float64] | None = None  # the last beat's P-wave window
        self.p_template: NDArray[np.float64] | None = None  # their running mean
        # runs of missing samples as [start, end), end None while still missing; oldest first
        self.nan_runs: list[tuple[int, int | None]] = []

    def atrial_corr(self, sample: int, ventricular: bool | None) -> float | None:
        """The better correlation of the P-wave window before the beat at ``sample`` with that
        of the last non-ventricular beat and with the running mean of those windows (None for a
        ventricular or unclassified beat, the first one, or a window not at hand). P waves that
        precede every QRS alike keep it high; fibrillatory waves make it wander around zero."""
        if ventricular is not False:
            return None
        w = self.hist.window(sample - self.p_lo_n, sample - self.p_hi_n, filtered=True)
        seg = np.empty(0 if w is None else w.shape[0])
        if w is None or not _detrended(w, seg):
            self.p_last = None
            return None
        last, self.p_last = self.p_last, seg
        if last is None or self.p_template is None:
            self.p_template = seg.copy()
            return None
        c = _match_and_follow(seg, last, self.p_template, 1.0 / P_TEMPLATE_BEATS)
        return None if np.isnan(c) else float(c)

    def forget_before(self, sample: int) -> None:
        while self.recent_beats and self.recent_beats[0].sample < sample:
            self.recent_beats.popleft()
        while self.recent_quality and self.recent_quality[0][0] < sample:
            self.recent_quality.popleft()
        while self.recent_fib and self.recent_fib[0][0] < sample:
            self.recent_fib.popleft()

    def note_missing(self, x: NDArray[np.float64], g0: int, flags: int | None = None) -> None:
        if not (nonfinite(x) if flags is None else flags) & NONFINITE_NAN:
            if self.nan_runs and self.nan_runs[-1][1] is None:
                self.nan_runs[-1] = (self.nan_runs[-1][0], g0)
            return
        isnan = np.isnan(x)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], isnan.astype(np.int8), [0]])))
        for a, b in zip((edges[0::2] + g0).tolist(), (edges[1::2] + g0).tolist(), strict=True):
            end: int | None = None if b == g0 + x.shape[0] else b
            if self.nan_runs and self.nan_runs[-1][1] is None:
                if a == g0:  # the open run goes on
                    self.nan_runs[-1] = (self.nan_runs[-1][0], end)
                    continue
                self.nan_runs[-1] = (self.nan_runs[-1][0], g0)
            self.nan_runs.append((a, end))
        if self.nan_runs and self.nan_runs[-1][1] is None and not isnan[-1]:
            self.nan_runs[-1] = (self.nan_runs[-1][0], g0)
        if len(self.nan_runs) > 64:
            del self.nan_runs[:-64]

    def missing_after(self, sample: int, now: int) -> tuple[int, int | None] | None:
        for a, b in self.nan_runs:
            if a > sample:
                if a >= now:
                    return None
                return (a, b if b is not None and b <= now else None)
        return None

    def quality_at(self, sample: int) -> Verdict:
        w = self.hist.window(max(sample - self.quality_n, self.hist.start), sample)
        if w is None or w.shape[0] == 0:
            return "missing"
        return verdict_of(
            window_sqi(w), self.kind, self.agreement_at(sample), self.morphology_at(sample)
        )

    def agreement_at(self, t: int) -> float:
        """F1 agreement of the two QRS detectors on the beats they had decided by sample t."""
        if self.alt_detector is None:
            return float("nan")
        hi = t - self.agree_lag_n
        lo = hi - self.agree_window_n
        a, b = self.known_main, self.known_alt
        return float(
            _window_agreement(
                a.s, a.at, a.lo, a.hi, b.s, b.at, b.lo, b.hi, lo, hi, t,
                self.agree_tol_n, 4,
            )
        )  # fmt: skip

    def morphology_at(self, t: int) -> float:
        """Median template correlation of the pulses known by sample t (NaN for ECG or when
        fewer than 3 pulses)."""
        if self.kind not in ("ABP", "PLETH"):
            return float("nan")
        hi = t - self.agree_lag_n
        lo = hi - self.agree_window_n
        k = self.known_corr
        return float(_window_median(k.s, k.at, k.v, k.lo, k.hi, lo, hi, t, 3))

    def note_decided(self, found: DetectedBeats, alt: DetectedBeats | None) -> None:
        keep_from = self.next_index - self.known_n
        for known, new in ((self.known_main, found), (self.known_alt, alt)):
            if new is not None and new.sample.shape[0]:
                known.extend(new.sample, new.decided_at, None, keep_from)


class BedSignalPipeline:
    """Streaming signal processing for one bed."""

    def __init__(self, signals: Mapping[str, float], *, primary_ecg: str | None = None) -> None:
        if not signals:
            raise ValueError("signals must name at least one signal key with its fs_hz")
        self._sig: dict[str, _SignalState] = {}
        for key, fs in signals.items():
            spec = SIGNAL_BY_KEY.get(key)
            if spec is None:
                raise ValueError(f"unknown signal key {key!r}; known: {sorted(SIGNAL_BY_KEY)}")
            fs_hz = float(fs)
            if not (spec.fs_min_hz <= fs_hz <= spec.fs_max_hz):
                raise ValueError(
                    f"{key}: fs_hz={fs_hz} outside {spec.fs_min_hz}-{spec.fs_max_hz} Hz"
                )
            self._sig[key] = _SignalState(key, fs_hz)
        ecgs = [k for k in self._sig if self._sig[k].kind == "ecg"]
        if primary_ecg is None:
            primary_ecg = "ECG_II" if "ECG_II" in ecgs else (ecgs[0] if ecgs else None)
        elif primary_ecg not in ecgs:
            raise ValueError(f"primary_ecg {primary_ecg!r} is not one of the ECG leads {ecgs}")
        self.primary_ecg = primary_ecg
        self._tracker: RhythmTracker | None = None
        # the alarm evidence last gathered, by each signal's processed_to (verify_alarm)
        self._evidence: (
            tuple[tuple[int, ...], tuple[list[LeadEvidence], list[PulseEvidence]]] | None
        ) = None
        # the second ECG lead the primary lead's beats are also judged on, with a classifier of
        # its own fed the primary lead's beats (its templates are of those beats)
        self.other_ecg: str | None = None
        self._cross: BeatClassifier | None = None
        self._wait_n = 0
        if primary_ecg is not None:
            st = self._sig[primary_ecg]
            self._tracker = RhythmTracker(primary_ecg, st.fs_hz, st.quality_at, st.missing_after)
            others = [k for k in ecgs if k != primary_ecg and self._sig[k].fs_hz == st.fs_hz]
            if others:
                self.other_ecg = others[0]
                self._cross = BeatClassifier(st.fs_hz)
                self._wait_n = round(CROSS_LEAD_WAIT_S * st.fs_hz)

    @property
    def signals(self) -> dict[str, float]:
        return {k: s.fs_hz for k, s in self._sig.items()}

    def next_index(self, signal_key: str) -> int:
        return self._state(signal_key).next_index

    def verify_alarm(self, label: str) -> AlarmDecision | None:
        """Judge an alarm of type ``label`` raised now (see :mod:`eicu.signal.alarms`); None for
        a rhythm the verification does not judge (AF, a pause): its alarm stands unverified."""
        from eicu.signal.alarms import ALARM_WINDOW_S, VERIFIED_LABELS, decide, gather

        if label not in VERIFIED_LABELS:
            return None
        # The evidence (every signal's last 8 s) depends only on how far each signal has been
        # processed: gathered once for every label judged before any of them moves on (a bed
        # in VT has VTACH and TACHY up, judged at each evaluation).
        key = tuple(st.processed_to for st in self._sig.values())
        if self._evidence is None or self._evidence[0] != key:
            self._evidence = (key, gather(self, ALARM_WINDOW_S))
        leads, pulses = self._evidence[1]
        return decide(label, leads, pulses)

    def active_rhythms(self) -> dict[str, int]:
        """Rhythm labels active now on the primary lead, with their start samples."""
        return self._tracker.active() if self._tracker else {}

    def pvc_per_min(self) -> float:
        """Ventricular beats of the primary lead in the last minute (NaN without an ECG lead)."""
        return self._tracker.pvc_per_min() if self._tracker else float("nan")

    def _state(self, key: str) -> _SignalState:
        st = self._sig.get(key)
        if st is None:
            raise ValueError(f"signal {key!r} was not configured; configured: {list(self._sig)}")
        return st

    def push(self, signal_key: str, samples: ArrayLike, first_sample_index: int) -> list[Event]:
        """Feed one chunk of a signal (physical units, NaN = missing); return the new events."""
        st = self._state(signal_key)
        x = np.ascontiguousarray(samples, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"{signal_key}: samples must be 1-D, got shape {x.shape}")
        flags = nonfinite(x)
        if flags & NONFINITE_INF:
            raise ValueError(f"{signal_key}: samples contain +-inf; mark missing samples with NaN")
        first = int(first_sample_index)
        if first < st.next_index:
            raise ValueError(
                f"{signal_key}: chunk starts at sample {first} but sample {st.next_index} is "
                "expected next (overlapping or out-of-order chunk)"
            )
        events: list[Event] = []
        while first > st.next_index:  # a hole in the stream: missing samples
            n = min(first - st.next_index, round(MAX_GAP_BLOCK_S * st.fs_hz))
            events.extend(self.push(signal_key, np.full(n, np.nan), st.next_index))
        st.chunk_n = x.shape[0]
        # Long chunks are worked through in blocks of at most BLOCK_S, so that the history kept
        # per signal always covers what the beats and windows of the block need.
        block = round(BLOCK_S * st.fs_hz)
        if x.shape[0] <= block:
            events.extend(self._feed(st, x, flags))
            return events
        for i in range(0, x.shape[0], block):
            events.extend(self._feed(st, x[i : i + block], None))
        return events

    # -- internals -------------------------------------------------------------------------------
    def _feed(self, st: _SignalState, x: NDArray[np.float64], flags: int | None) -> list[Event]:
        """``x``: contiguous float64 samples, no infinity; ``flags``: its ``nonfinite`` flags
        when known."""
        g0 = st.next_index
        f = st.filter
        y = None if f is None else _sos_filter_step(x, f.sos, f.zi, f.ref)
        st.hist.append(x, y)
        st.next_index = g0 + x.shape[0]
        st.note_missing(x, g0, flags)
        found = st.detector.push(x) if st.detector is not None else None
        if found is not None:
            if st.alt_detector is not None:
                st.note_decided(found, st.alt_detector.push(x))
            for s, at in zip(found.sample.tolist(), found.decided_at.tolist(), strict=True):
                st.pending.append((s, max(at, s + st.post_n + st.shift_n)))
        events = self._process(st)
        if st.key == self.other_ecg and self.primary_ecg is not None:
            # the primary lead may have waited for these samples
            events.extend(self._process(self._sig[self.primary_ecg]))
        return events

    def _horizon(self, st: _SignalState) -> int:
        """The sample up to which a signal's beats and ticks are processed: all it has, but the
        primary lead only as far as the second lead has come, or not more than
        CROSS_LEAD_WAIT_S (or its latest chunk, when longer) behind its own end."""
        if st.key != self.primary_ecg or self.other_ecg is None:
            return st.next_index
        other = self._sig[self.other_ecg].next_index
        return min(st.next_index, max(other, st.next_index - max(self._wait_n, st.chunk_n)))

    def _process(self, st: _SignalState) -> list[Event]:
        """Beats whose window has arrived and one-second ticks up to the horizon, as events."""
        events: list[Event] = []
        horizon = self._horizon(st)
        primary = self._tracker is not None and st.key == self.primary_ecg
        # (time the item became known, order, payload): beats and one-second ticks, merged in
        # time order so that the rhythm tracker sees the same sequence however chunks are cut
        items = self._ready_beats(st, horizon) if st.pending else []
        if st.held is not None or st.pause_cand:
            # a beat awaiting its pause holds back what came after it
            items, horizon = self._paused(st, items, horizon)
        st.processed_to = horizon
        while st.next_tick <= horizon:
            items.append((st.next_tick, 1, _BeatItem(st.next_tick)))
            st.next_tick += st.tick_n
        items.sort(key=lambda it: (it[0], it[1]))
        for at, what, item in items:
            if primary and self._tracker is not None:
                events.extend(self._tracker.advance(at))
            if what == 0:
                events.extend(self._beat_events(st, item))
            else:
                events.extend(self._tick(st, item.sample, primary))
        if primary and self._tracker is not None:
            events.extend(self._tracker.advance(horizon))
        return events

    def _paused(
        self, st: _SignalState, items: list[tuple[int, int, _BeatItem]], horizon: int
    ) -> tuple[list[tuple[int, int, _BeatItem]], int]:
        """The beats ``items`` (classified, in order) after the one held back, with each
        premature beat called N (``pause_cand``) judged by the interval after it: ventricular
        when the intervals before and after it make a full compensatory pause
        (``ClassifierConfig.pause_full``). A beat whose next beat is not known yet, and may
        still come in time, is held back with everything after it. Returns the beats to
        process and the sample up to which ticks may be processed.

        The next beat counts only when it was ready by a deadline (the latest sample at which
        it makes the pause full, plus ``PAUSE_WAIT_S``), and the beat is decided without it
        only once the horizon has passed that deadline, so that how the stream is cut into
        chunks changes nothing."""
        cfg = DEFAULT_CLASSIFIER
        hi = cfg.pause_full + cfg.pause_tol
        queue = items if st.held is None else [st.held, *items]
        st.held = None
        out: list[tuple[int, int, _BeatItem]] = []
        for i, it in enumerate(queue):
            at, what, item = it
            info = st.pause_cand.pop(item.sample, None)
            if info is None:
                out.append(it)
                continue
            rr_prev, dom = info
            deadline = item.sample + round(hi * dom) - rr_prev + st.pause_wait_n
            nxt = queue[i + 1] if i + 1 < len(queue) else None
            if nxt is not None and nxt[0] <= deadline:
                after = nxt[2]
                if after.beat_class == "N" and full_pause(
                    rr_prev, after.sample - item.sample, dom, after.corr, cfg
                ):
                    it = (at, what, dataclasses.replace(item, beat_class="V"))
                out.append(it)
            elif horizon >= deadline:
                out.append(it)  # no beat came in time: not a full compensatory pause
            else:  # the last beat classified (a next one would be in queue): wait for it
                st.pause_cand[item.sample] = info
                st.held = it
                return out, min(horizon, at - 1)
        return out, horizon

    def _ready_beats(self, st: _SignalState, horizon: int) -> list[tuple[int, int, _BeatItem]]:
        """Morphology of the beats whose window has arrived, as items to process in order."""
        ready = [p for p in st.pending if p[1] <= horizon]
        if not ready:
            return []
        st.pending = [p for p in st.pending if p[1] > horizon]
        fids = np.array([p[0] for p in ready], dtype=np.int64)
        if st.classifier is not None:
            return self._classified(st, st.classifier, ready, fids)
        width_n = np.empty(fids.shape[0])
        corr = np.empty(fids.shape[0])
        width_ratio = np.empty(fids.shape[0])
        steep_ratio = np.empty(fids.shape[0])
        _beat_features(
            st.hist.filt,
            st.hist.start,
            fids,
            st.pre_n,
            st.post_n,
            st.shift_n,
            QRS_SLOPE_FRAC,
            st.template,
            st.tstate,
            TEMPLATE_INIT_BEATS,
            float(st.pre_n + st.post_n + 1),  # the pulse template follows any pulse
            TEMPLATE_RELEARN_BEATS,
            width_n,
            corr,
            width_ratio,
            steep_ratio,
        )
        known = ~np.isnan(corr)
        st.known_corr.extend(
            fids[known],
            np.array([p[1] for p in ready], dtype=np.int64)[known],
            corr[known],
            st.next_index - st.known_n,
        )
        return [
            (at, 0, _BeatItem(s, corr=_opt(c)))
            for (s, at), c in zip(ready, corr.tolist(), strict=True)
        ]

    def _classified(
        self,
        st: _SignalState,
        classifier: BeatClassifier,
        ready: list[tuple[int, int]],
        fids: NDArray[np.int64],
    ) -> list[tuple[int, int, _BeatItem]]:
        """QRS beats classified (:mod:`eicu.signal.classify`) as items to process in order."""
        # the interval before each beat (-1 for the first since the stream began); a chunk
        # brings a beat or two, so in plain Python
        samples: list[int] = fids.tolist()
        prev = [st.prev_fid, *samples[:-1]]
        rr_list = [s - p if p >= 0 else -1 for s, p in zip(samples, prev, strict=True)]
        rr_prev = np.array(rr_list, dtype=np.int64)
        st.prev_fid = samples[-1]
        # the history holds no infinity (refused on arrival): no second check
        classes, feats = classifier._classify_checked(
            st.hist.filt[None, :],
            np.array([st.hist.start], dtype=np.int64),
            fids,
            rr_prev,
            st.hist.raw[None, :],
        )
        other_feats: NDArray[np.float64] | None = None
        other_codes: list[int] | None = None
        if self._cross is not None and st.key == self.primary_ecg and self.other_ecg is not None:
            o = self._sig[self.other_ecg].hist
            oc, of = self._cross._classify_checked(
                o.filt[None, :], np.array([o.start], dtype=np.int64), fids, rr_prev, o.raw[None, :]
            )
            other_feats = of[:, 0]
            other_codes = oc.tolist()
            classes = _cross_lead(
                classes, feats[:, 0, 0], feats[:, 0, 2], other_feats[:, 0], other_feats[:, 2],
                DEFAULT_CLASSIFIER.cross_corr, DEFAULT_CLASSIFIER.v_steep,
            )  # fmt: skip
        out: list[tuple[int, int, _BeatItem]] = []
        # as Python floats: a beat's dozen look-ups cost less than on NumPy scalars
        lead0: list[list[float]] = feats[:, 0].tolist()
        other: list[list[float]] | None = None if other_feats is None else other_feats.tolist()
        codes: list[int] = classes.tolist()
        for j, (s, at) in enumerate(ready):
            f = lead0[j]
            o_corr = o_steep = None
            if other is not None:
                o_corr, o_steep = _opt(other[j][0]), _opt(other[j][2])
            w_n = f[4]
            cls = CLASS_OF_CODE[codes[j]]
            same_shape = f[5] == st.prev_cluster  # joined the template of the beat before it
            st.prev_cluster = f[5]
            o_cls = None if other_codes is None else CLASS_OF_CODE[other_codes[j]]
            disagree = cls in ("N", "V") and o_cls in ("N", "V") and o_cls != cls
            # the primary lead's quality, judged only where a rule below needs it (once)
            noisy = (disagree or (cls == "V" and not same_shape)) and st.quality_at(at) != "good"
            if (
                disagree and noisy and self._sig[self.other_ecg].quality_at(at) == "good"  # type: ignore[index]
            ):
                # the leads disagree and the primary one is noisy: the good lead's call stands
                # (where they agree, the rule below judges the noisy lead's shape as before)
                cls = o_cls
            elif cls == "V" and not same_shape and noisy:
                # a lead judged noisy: a lone odd shape may be artefact; two alike in a row
                # (an organised ventricular rhythm) are kept
                cls = "Q"
            prem = f[6]
            if cls == "N" and rr_list[j] > 0 and pause_candidate(prem, f[0]):
                # early and unlike the dominant beat: the interval after it decides (_paused)
                st.pause_cand[s] = (rr_list[j], rr_list[j] / prem)
            out.append(
                (
                    at,
                    0,
                    _BeatItem(
                        s,
                        None if math.isnan(w_n) else w_n * 1000.0 / st.fs_hz,
                        cls,
                        _opt(f[0]),
                        _opt(f[1]),
                        _opt(f[2]),
                        _opt(f[6]),
                        o_corr,
                        o_steep,
                    ),
                )
            )
        return out

    def _beat_events(self, st: _SignalState, item: _BeatItem) -> list[Event]:
        kind: Literal["qrs", "pulse"] = "qrs" if st.kind == "ecg" else "pulse"
        s = item.sample
        cls = item.beat_class
        ventricular = None if cls is None or cls == "Q" else cls == "V"
        beat = Beat(
            st.key,
            s,
            s / st.fs_hz,
            kind,
            item.width_ms,
            ventricular,
            item.corr,
            item.width_ratio,
            item.steep_ratio,
            cls,
            item.prematurity,
            item.other_corr,
            item.other_steep_ratio,
        )
        st.recent_beats.append(beat)
        events: list[Event] = [beat]
        if self._tracker is not None and st.key == self.primary_ecg:
            events.extend(
                self._tracker.beat(s, ventricular, st.atrial_corr(s, ventricular), beat_class=cls)
            )
            return events
        prev = st.last_beat
        st.last_beat = s
        if prev is not None:
            gap = st.hist.window(prev, s)
            if gap is not None and not nonfinite(gap) & NONFINITE_NAN:
                rr_s = (s - prev) / st.fs_hz
                st.rr = [*st.rr[-7:], rr_s]
                events.append(
                    HeartRate(
                        st.key,
                        s,
                        s / st.fs_hz,
                        rr_s * 1000.0,
                        60.0 / rr_s,
                        60.0 / median(st.rr),
                    )
                )
        return events

    def _tick(self, st: _SignalState, t: int, primary: bool) -> list[Event]:
        events: list[Event] = []
        w = st.hist.window(t - st.quality_n, t)
        st.forget_before(t - st.recent_n)
        if w is not None:
            sqi = window_sqi(w)
            agreement = st.agreement_at(t)
            morphology = st.morphology_at(t)
            v = verdict_of(sqi, st.kind, agreement, morphology)
            st.recent_quality.append((t, v))
            if v != st.verdict:
                st.verdict = v
                events.append(
                    Quality(
                        st.key,
                        t,
                        t / st.fs_hz,
                        v,
                        float(sqi[SQI_NAN_FRAC]),
                        float(sqi[SQI_RANGE]),
                        float(sqi[SQI_CLIP_FRAC]),
                        float(sqi[SQI_HF]),
                        agreement,
                        morphology,
                    )
                )
        if st.kind == "ecg" and t >= st.vf_n:
            seg = st.hist.window(t - st.vf_n, t, filtered=True)
            if seg is not None:
                feats = fibrillation_features(seg, st.fs_hz)
                fib = feats is not None and feats.fibrillatory
                st.recent_fib.append((t, fib))
                if primary and self._tracker is not None:
                    events.extend(self._tracker.fibrillation(t - st.vf_n, t, fib))
        return events
