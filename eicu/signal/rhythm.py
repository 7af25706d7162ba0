"""Rhythm flags from a stream of classified beats, gaps and fibrillation windows.

Definitions (PhysioNet/CinC Challenge 2015, Clifford et al., Computing in Cardiology 42:273-276,
2015), with the thresholds kept here as versioned constants:

- ASYSTOLE: no QRS for more than 4 s;

(a beat's heart rate is 60 / the interval from the beat before it, so "5 consecutive beats"
means 5 consecutive intervals, and a flag starts at the first beat of the run)
- BRADY (extreme bradycardia): heart rate below 40 bpm for 5 consecutive beats;
- TACHY (extreme tachycardia): heart rate above 140 bpm for 17 consecutive beats;
- VTACH: 5 or more ventricular beats in a row at a rate of at least 100 bpm over those beats,
  lasting as long as the run (with couplets, runs, bigeminy, trigeminy and sustained VT: see
  :mod:`eicu.signal.ectopy`);
- VFIB: a fibrillatory or flutter waveform for at least 4 s, with no organised QRS complex in
  it (``VF_ORGANISED_BEATS``);

and two that the challenge does not define:

- PAUSE: no QRS for more than 3 s (a common bedside-monitor default);
- AFIB: an irregularly irregular rhythm over the last 64 intervals (those between conducted
  beats: an interval that a ventricular beat begins or ends is left out), judged by the normalised
  RMSSD, the Shannon entropy of the interval histogram and the turning-point ratio after
  Dash et al. (Ann Biomed Eng 37(9):1701-1709, 2009), without P waves (the P-wave windows of
  the non-ventricular beats resemble neither the one before nor their running mean: after
  Babaeizadeh et al. 2009), and not a paced rhythm (fewer than half of the window's beats
  paced: the pacemaker, not the atria, sets the intervals of paced beats). It ends at the last
  irregular interval once 16 windows in a row are not AF, and the end is reported once the
  window no longer reaches back to it: AF judged again before then continues the episode.

The tracker is pure: it reacts to beats, gaps and fibrillation windows given in the order of the
sample at which each became known, so the same record yields the same flags however it is cut
into chunks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np

from eicu.kernels import intervals as k_intervals
from eicu.kernels.spectrum import _band_shape, _hann_centred
from eicu.signal.ectopy import VentricularTracker
from eicu.signal.events import HeartRate, RhythmFlag, RhythmLabel, VentricularRun, Verdict
from eicu.signal.stats import median

ASYSTOLE_S: Final = 4.0
PAUSE_S: Final = 3.0
BRADY_BPM: Final = 40.0
BRADY_BEATS: Final = 5
TACHY_BPM: Final = 140.0
TACHY_BEATS: Final = 17
VT_BPM: Final = 100.0
VT_BEATS: Final = 5
VF_S: Final = 4.0
# Ventricular fibrillation and flutter leave no organised QRS complex: a window that holds this
# many conducted beats (class N or P: like the patient's dominant beat) does not start VFIB.
VF_ORGANISED_BEATS: Final = 2
AF_WINDOW: Final = 64
_NONE_LEFT_OUT: Final = np.zeros(0, dtype=np.bool_)
AF_NRMSSD: Final = 0.12
AF_SHANNON: Final = 0.70
AF_TPR: Final = (0.50, 0.85)
# Atrial activity (after the P-wave criterion of Babaeizadeh et al., J Electrocardiol 42(6):
# 522-526, 2009): P waves are present when the median, over the last AF_P_BEATS beats, of the
# better correlation of each P-wave window with the one before and with their running mean is
# at least AF_P_CORR (judged when half of them are non-ventricular beats with a P-wave window).
# Set halfway between MIT-BIH's AF (median correlation with the beat before 0.0-0.1 on 201,
# 203) and its sinus rhythm with ectopic beats (0.77-0.87 on 201, 208).
AF_P_CORR: Final = 0.4
AF_P_BEATS: Final = 16
# A window whose beats are paced at least this share of the time is a paced rhythm, not AF.
AF_PACED_SHARE: Final = 0.5
# A beat can become known this long after its sample (confirmation, search-back, morphology).
DECISION_LATENCY_S: Final = 0.5


class _Last:
    """The last ``n`` values given, oldest first, as one contiguous array without a copy: each
    value is written twice, ``n`` apart, so the newest ``n`` always lie side by side."""

    __slots__ = ("_buf", "_n", "count")

    def __init__(self, n: int, dtype: type) -> None:
        self._buf: np.ndarray = np.zeros(2 * n, dtype=dtype)
        self._n = n
        self.count = 0  # values given since the last clear

    def append(self, value: float | bool) -> None:
        i = self.count % self._n
        self._buf[i] = value
        self._buf[i + self._n] = value
        self.count += 1

    def full(self) -> bool:
        return self.count >= self._n

    def window(self) -> np.ndarray:
        """The last ``n`` values (only once full); a view, valid until the next append."""
        i = self.count % self._n
        return self._buf[i : i + self._n]

    def clear(self) -> None:
        self.count = 0


@dataclass(frozen=True, slots=True)
class AfFeatures:
    nrmssd: float
    shannon: float
    tpr: float

    @property
    def irregular(self) -> bool:
        return (
            self.nrmssd > AF_NRMSSD
            and self.shannon > AF_SHANNON
            and AF_TPR[0] <= self.tpr <= AF_TPR[1]
        )


def af_features(rr_s: np.ndarray, ventricular: np.ndarray | None = None) -> AfFeatures:
    """Irregularity of RR intervals: normalised RMSSD, 16-bin Shannon entropy, turning points.

    ``ventricular`` marks the intervals that a ventricular beat begins or ends: they are left
    out first (AF is the irregular response of the ventricles to the atria, so only the
    intervals between conducted beats tell of it). Premature-beat pairs are removed next
    (a short interval followed by a long, compensatory one: below 85 % and above 110 % of the
    median), and the 8 longest and 8 shortest of the rest are left out of the
    RMSSD and entropy, as Dash et al. do, so that ectopic beats do not make a regular rhythm
    look irregular. With fewer than 24 intervals left after either step, the rhythm is mostly
    ectopic: reported as regular (all features 0).
    """
    rr = np.asarray(rr_s, dtype=np.float64)
    if rr.ndim != 1 or rr.shape[0] < 24:
        raise ValueError(f"need at least 24 RR intervals, got shape {rr.shape}")
    if not np.isfinite(rr).all():  # the kernel's histogram bins need finite values
        raise ValueError(f"RR intervals must be finite, got {rr[~np.isfinite(rr)][:3]}")
    v = _NONE_LEFT_OUT
    if ventricular is not None:
        v = np.ascontiguousarray(ventricular)
        if v.shape != rr.shape or v.dtype != np.bool_:
            raise ValueError(
                f"ventricular must be booleans of the intervals' shape {rr.shape}, "
                f"got {v.dtype} of shape {v.shape}"
            )
    out = np.empty(k_intervals.N_AF)
    k_intervals._af_features(np.ascontiguousarray(rr), v, out)
    return _af_of(out)


def _af_of(out: np.ndarray) -> AfFeatures:
    """The features in the kernel's output (``eicu.kernels.intervals``)."""
    return AfFeatures(
        float(out[k_intervals.AF_NRMSSD]),
        float(out[k_intervals.AF_SHANNON]),
        float(out[k_intervals.AF_TPR]),
    )


def irregular_span(rr_s: np.ndarray) -> tuple[int, int]:
    """Where the irregular part of a run of intervals begins and ends (indices into rr_s).

    An interval is irregular when it differs from the one before by more than 10 % of the mean;
    the span starts at the first irregular interval after which at least 60 % are irregular,
    and ends at the last irregular interval before which at least 60 % are irregular.
    """
    rr = np.asarray(rr_s, dtype=np.float64)
    irr = np.abs(np.diff(rr)) > 0.1 * rr.mean()
    irr = np.concatenate([[False], irr])  # irr[i]: interval i differs from interval i - 1
    n = irr.shape[0]
    if not irr.any():
        return 0, n - 1
    tail = np.cumsum(irr[::-1])[::-1] / np.arange(n, 0, -1)  # share irregular in [i, n)
    head = np.cumsum(irr) / np.arange(1, n + 1)  # share irregular in [0, i]
    starts = np.flatnonzero(irr & (tail >= 0.6))
    ends = np.flatnonzero(irr & (head >= 0.6))
    first = int(starts[0]) if starts.size else int(np.argmax(irr))
    last = int(ends[-1]) if ends.size else int(n - 1 - np.argmax(irr[::-1]))
    return first, last


class RhythmTracker:
    """Rhythm state of one ECG lead; every method returns the events it caused."""

    def __init__(
        self,
        signal: str,
        fs_hz: float,
        quality_at: Callable[[int], Verdict],
        missing_after: Callable[[int, int], tuple[int, int | None] | None],
    ) -> None:
        """``missing_after(sample, now)``: the first run of missing samples that starts after
        ``sample`` and by ``now``, as (start, end) with end None while still missing at ``now``.
        """
        self.signal = signal
        self.fs_hz = fs_hz
        self._quality_at = quality_at
        self._missing_after = missing_after
        self._active: dict[str, int] = {}
        self._last_beat: int | None = None
        self._ref = 0  # timers run from the last beat or the end of the last gap
        self._in_gap = False
        self._now = 0  # the sample up to which the tracker has been told about the signal
        self._beats: deque[int] = deque(maxlen=AF_WINDOW + 2)
        self._rr: deque[float] = deque(maxlen=8)
        self._af_rr = _Last(AF_WINDOW, np.float64)
        self._af_beats: deque[int] = deque(maxlen=AF_WINDOW)  # the beat ending each interval
        self._af_atrial: deque[float | None] = deque(maxlen=AF_WINDOW)  # P-wave correlation
        self._af_paced: deque[bool] = deque(maxlen=AF_WINDOW)  # the beat ending it was paced
        self._af_n_paced = 0  # of them
        self._af_vent = _Last(AF_WINDOW, np.bool_)  # a ventricular beat bounds the interval
        self._af_out = np.empty(k_intervals.N_AF)
        self._prev_v = False
        self._brady_run = 0
        self._tachy_run = 0
        self._ventricular = VentricularTracker(
            signal, fs_hz, self._flag, self.active, vt_beats=VT_BEATS, vt_bpm=VT_BPM
        )
        self._vf_last_end: int | None = None
        # samples of the recent N and P beats (a 4 s window holds far fewer than 64)
        self._organised: deque[int] = deque(maxlen=64)
        self._af_off_count = 0
        self._af_last_end: int | None = None
        # an AF end decided but not yet confirmed (see _af_end_confirmed), its sample
        self._af_pending_end: int | None = None
        self._latency_n = round(DECISION_LATENCY_S * fs_hz)
        self._pause_n = round(PAUSE_S * fs_hz)
        self._asystole_n = round(ASYSTOLE_S * fs_hz)

    # -- helpers -----------------------------------------------------------------------------
    def _flag(
        self, label: RhythmLabel, state: str, sample: int, decided: int | None = None
    ) -> RhythmFlag:
        """``decided``: the sample at which the evidence was complete (default: now)."""
        if state == "start":
            self._active[label] = sample
        else:
            self._active.pop(label, None)
        return RhythmFlag(
            label=label,
            state="start" if state == "start" else "end",
            signal=self.signal,
            sample=int(sample),
            time_s=sample / self.fs_hz,
            quality=self._quality_at(self._now if decided is None else int(decided)),
        )

    def active(self) -> dict[str, int]:
        """Labels active now, with their start samples."""
        return dict(self._active)

    def pvc_per_min(self) -> float:
        """Ventricular beats in the last minute (to the sample the tracker has reached)."""
        return self._ventricular.pvc_per_min(self._now)

    # -- inputs --------------------------------------------------------------------------------
    def advance(self, now: int) -> list[RhythmFlag]:
        """Time has reached sample ``now``: handle gaps and fire the no-beat timers that are due."""
        out: list[RhythmFlag] = []
        self._in_gap = False
        self._now = now
        while True:
            run = self._missing_after(self._ref - 1 if self._last_beat is None else self._ref, now)
            if run is None:
                break
            start, end = run
            out.extend(self._gap(start))
            if end is None:
                self._in_gap = True
                return out
            if end <= self._ref:
                break
            self._ref = end
        latency = self._latency_n
        for label, limit_n in (("PAUSE", self._pause_n), ("ASYSTOLE", self._asystole_n)):
            due = self._ref + limit_n
            if label not in self._active and now >= due + latency:
                decided = due + latency
                out.append(self._flag(label, "start", due, decided))  # type: ignore[arg-type]
        return out

    def _gap(self, start: int) -> list[RhythmFlag]:
        """Samples from ``start`` are missing: every condition ends there (AF and VT at the end
        decided before, if one was)."""
        decided = {"AFIB": self._af_pending_end}
        decided["VTACH"] = decided["VT_SUSTAINED"] = self._ventricular.vt_pending_end
        self._af_pending_end = None
        out = []
        for lab in list(self._active):
            end = decided.get(lab)
            out.append(self._flag(lab, "end", start if end is None else end, start))  # type: ignore[arg-type]
        self._last_beat = None
        self._beats.clear()
        self._rr.clear()
        self._af_rr.clear()
        self._af_beats.clear()
        self._af_atrial.clear()
        self._af_paced.clear()
        self._af_n_paced = 0
        self._af_vent.clear()
        self._prev_v = False
        self._brady_run = 0
        self._tachy_run = 0
        self._ventricular.gap()
        self._vf_last_end = None
        self._organised.clear()
        return out

    def beat(
        self,
        sample: int,
        ventricular: bool | None,
        atrial: float | None = None,
        beat_class: str | None = None,
    ) -> list[HeartRate | RhythmFlag | VentricularRun]:
        """A beat, given after ``advance`` to the time it became known; ``atrial``: the
        correlation of its P-wave window with their template (None when not judged);
        ``beat_class`` ("N", "V", "P", "Q", None) defaults to what ``ventricular`` says."""
        out: list[HeartRate | RhythmFlag | VentricularRun] = []
        fs = self.fs_hz
        if (
            self._in_gap
            or sample < self._ref
            or (self._last_beat is not None and sample <= self._last_beat)
        ):
            return out  # a beat from before the last gap: nothing to add to the rhythm
        for label in ("ASYSTOLE", "PAUSE"):
            if label in self._active:
                out.append(self._flag(label, "end", sample))
        prev = self._last_beat
        self._last_beat = sample
        self._ref = sample
        self._beats.append(sample)
        if beat_class is None and ventricular is not None:
            beat_class = "V" if ventricular else "N"
        vent_out = self._ventricular.beat(sample, beat_class)
        is_v, prev_v = beat_class == "V", self._prev_v
        self._prev_v = is_v
        if beat_class in ("N", "P"):
            self._organised.append(sample)
        if prev is None:
            return out + vent_out
        rr_s = (sample - prev) / fs
        self._rr.append(rr_s)
        hr = 60.0 / rr_s
        out.append(
            HeartRate(
                signal=self.signal,
                sample=sample,
                time_s=sample / fs,
                rr_ms=rr_s * 1000.0,
                hr_bpm=hr,
                hr_median_bpm=60.0 / median(self._rr),
            )
        )
        beats = self._beats
        # extreme bradycardia / tachycardia: runs of intervals
        self._brady_run = self._brady_run + 1 if hr < BRADY_BPM else 0
        if self._brady_run >= BRADY_BEATS and "BRADY" not in self._active:
            out.append(self._flag("BRADY", "start", beats[-BRADY_BEATS]))
        elif self._brady_run == 0 and "BRADY" in self._active:
            out.append(self._flag("BRADY", "end", sample))
        self._tachy_run = self._tachy_run + 1 if hr > TACHY_BPM else 0
        if self._tachy_run >= TACHY_BEATS and "TACHY" not in self._active:
            out.append(self._flag("TACHY", "start", beats[-TACHY_BEATS]))
        elif self._tachy_run == 0 and "TACHY" in self._active:
            out.append(self._flag("TACHY", "end", sample))
        out.extend(vent_out)  # ventricular calls (eicu.signal.ectopy)
        # atrial fibrillation
        self._af_rr.append(rr_s)
        self._af_beats.append(sample)
        self._af_atrial.append(atrial)
        paced = beat_class == "P"
        if len(self._af_paced) == AF_WINDOW:
            self._af_n_paced -= self._af_paced[0]
        self._af_paced.append(paced)
        self._af_n_paced += paced
        self._af_vent.append(is_v or prev_v)
        if self._af_rr.full():
            rr_win = self._af_rr.window()
            irregular = (
                self._af_n_paced < AF_PACED_SHARE * AF_WINDOW
                and self._af_irregular(rr_win, self._af_vent.window())
                and not self._p_waves_present()
            )
            pending = self._af_pending_end
            if irregular:
                self._af_off_count = 0
                if pending is not None or "AFIB" not in self._active:
                    start = self._af_beats[irregular_span(rr_win)[0]]
                    floor = pending if pending is not None else self._af_last_end
                    if floor is not None:
                        start = max(start, floor)
                    if pending is None:
                        out.append(self._flag("AFIB", "start", start))
                    elif start > pending:  # AF again after the decided end: a new episode
                        self._af_pending_end = None
                        self._af_last_end = pending
                        out.append(self._flag("AFIB", "end", pending))
                        out.append(self._flag("AFIB", "start", start))
                    else:  # AF again from the decided end on: the episode goes on
                        self._af_pending_end = None
            elif "AFIB" in self._active and pending is None:
                self._af_off_count += 1
                if self._af_off_count >= AF_WINDOW // 4:
                    self._af_off_count = 0
                    last = irregular_span(rr_win)[1]
                    end = self._af_beats[min(last + 1, AF_WINDOW - 1)]
                    self._af_pending_end = max(end, self._active["AFIB"] + 1)
            out.extend(self._af_end_confirmed())
        return out

    def _af_end_confirmed(self) -> list[RhythmFlag]:
        """The decided end of an AF episode, once the window of intervals no longer reaches
        back to it. Until then AF judged again may start at that very end (its irregular span
        beginning before it) and then continues the episode instead of ending it and starting
        it again: no AF alarm that clears and sounds again."""
        end = self._af_pending_end
        if end is None or self._af_beats[0] <= end:
            return []
        self._af_pending_end = None
        self._af_last_end = end
        return [self._flag("AFIB", "end", end)]

    def _af_irregular(self, rr: np.ndarray, vent: np.ndarray) -> bool:
        """:func:`af_features` of the window ``.irregular``, without its checks: the intervals
        come from beat samples (finite, positive) and the marks are booleans of their shape."""
        k_intervals._af_features(rr, vent, self._af_out)
        return _af_of(self._af_out).irregular

    def _p_waves_present(self) -> bool:
        """P waves precede the recent non-ventricular beats: the median correlation of the last
        AF_P_BEATS judged P-wave windows is at least AF_P_CORR (judged on half of them)."""
        corr = [c for c in list(self._af_atrial)[-AF_P_BEATS:] if c is not None]
        return len(corr) >= AF_P_BEATS // 2 and median(corr) >= AF_P_CORR

    def fibrillation(self, start: int, end: int, fibrillatory: bool) -> list[RhythmFlag]:
        """The window [start, end) of ``VF_S`` seconds was judged fibrillatory or not."""
        out: list[RhythmFlag] = []
        self._now = max(self._now, end)
        org = self._organised
        while org and org[0] < start:
            org.popleft()
        if fibrillatory and "VFIB" not in self._active:
            fibrillatory = sum(1 for s in org if s < end) < VF_ORGANISED_BEATS
        if fibrillatory and "VFIB" not in self._active:
            if self._vf_last_end is not None:
                start = max(start, self._vf_last_end)  # windows overlap the last episode's
            out.append(self._flag("VFIB", "start", start))
        elif not fibrillatory and "VFIB" in self._active:
            last = self._vf_last_end if self._vf_last_end is not None else end
            out.append(self._flag("VFIB", "end", max(last, self._active["VFIB"] + 1)))
        if fibrillatory:
            self._vf_last_end = end
        return out


@dataclass(frozen=True, slots=True)
class FibrillationFeatures:
    dominant_hz: float
    concentration: float  # fraction of 0.5-30 Hz power within +-1 Hz of the dominant frequency

    @property
    def fibrillatory(self) -> bool:
        return VF_DOMINANT_HZ[0] <= self.dominant_hz <= VF_DOMINANT_HZ[1] and (
            self.concentration >= VF_CONCENTRATION
        )


# Chosen on the MIT-BIH Arrhythmia Database (record 207 holds its only flutter episode).
VF_DOMINANT_HZ: Final = (3.0, 9.0)
VF_CONCENTRATION: Final = 0.6
# the power judged (Hz), where the dominant frequency is sought, and how near it counts
FIB_BAND_HZ: Final = (0.5, 30.0)
FIB_SEARCH_HZ: Final = (1.0, 12.0)
FIB_NEAR_HZ: Final = 1.0


@lru_cache(maxsize=32)
def _spectrum_grid(n: int, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """For windows of n samples at fs_hz (the same few for every bed): the Hann window and the
    frequencies of the real FFT. Read-only: shared by every call."""
    grid = (np.hanning(n), np.fft.rfftfreq(n, 1.0 / fs_hz))
    for a in grid:
        a.flags.writeable = False
    return grid


def fibrillation_features(seg: np.ndarray, fs_hz: float) -> FibrillationFeatures | None:
    """Spectral shape of an ECG window; None when any sample is missing or it is flat.

    Ventricular fibrillation and flutter put most of their power in a narrow band between
    about 3 and 9 Hz, where an organised rhythm spreads its QRS power over many harmonics.
    """
    x = np.asarray(seg, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] < 8:
        raise ValueError(f"need a 1-D window of at least 8 samples, got shape {x.shape}")
    window, f = _spectrum_grid(x.shape[0], float(fs_hz))
    tapered = np.empty(x.shape[0])
    if not _hann_centred(x, window, tapered):
        return None
    fd, concentration = _band_shape(
        np.fft.rfft(tapered), f, *FIB_BAND_HZ, *FIB_SEARCH_HZ, FIB_NEAR_HZ
    )
    if np.isnan(fd):
        return None
    return FibrillationFeatures(fd, concentration)
