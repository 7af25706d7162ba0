"""Verification of an arrhythmia alarm against every signal of the bed, with no look-ahead.

``verify_alarm(pipeline, label)`` judges an alarm raised now (the last sample pushed) from the
last ``ALARM_WINDOW_S`` seconds that the pipeline keeps for each signal: beats and their
morphology on every ECG lead, fibrillation windows, quality verdicts, the baseline power of
each lead, and the pulses of arterial pressure and plethysmogram.

The ECG is judged first. A lead is *usable* when its quality verdict (missing, flat,
saturated, high-frequency noise, agreement of two QRS detectors) was good for at least half of
the window and its baseline SQI (1 - power below 1 Hz / power below 40 Hz, the basSQI of
Behar et al. 2013) is at least ``BASELINE_SQI_MIN``; for AF also the kurtosis (kSQI) of each
2 s of the window is at least ``AF_KURTOSIS_MIN``. The ECG is *reliable* when some lead is
usable and, where two or more leads are of good quality, at least one pair of them finds the
same beats (F1 agreement within 150 ms of ``LEAD_AGREEMENT_MIN`` or more; leads that each claim
good quality and disagree cannot both be right).

- Reliable ECG: the ECG alone decides. Pulses, whatever they show, change nothing: VT with a
  pulse is still VT. A VTACH alarm is false only when every usable lead shows an organised
  narrow-complex rhythm without a ventricular beat (``_organised``) or a rhythm slower than VT
  (no run of ``VT_BEATS`` beats at ``VT_BPM``) without a ventricular beat
  (``_slower_than_vt``); a VFIB alarm only when no usable lead shows a fibrillatory window;
  ASYSTOLE only when a usable lead shows QRS complexes less than 4 s apart; BRADY and TACHY
  when no usable lead shows an interval beyond the limit; AFIB when every usable lead beats
  regularly through the window (interval coefficient of variation below ``ECG_REGULAR_CV``:
  AF is irregularly irregular).
- Unreliable ECG (noise or artefact on every lead, or leads that disagree): other signals may
  reject the alarm. A pulse signal of good quality that beats throughout the window makes
  ASYSTOLE false; one that beats regularly (interval coefficient of variation below
  ``PULSE_REGULAR_CV``, ``AF_PULSE_REGULAR_CV`` for AF) makes VTACH, VFIB and AFIB false, and
  one that beats at 40/min or more makes BRADY false. Without such a pulse the alarm stands:
  nothing ever silences an alarm for want of evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import numpy as np

from eicu.kernels.sqi import beat_agreement
from eicu.signal.rhythm import ASYSTOLE_S, BRADY_BPM, TACHY_BPM, VT_BEATS, VT_BPM
from eicu.signal.stats import median

if TYPE_CHECKING:
    from eicu.signal.pipeline import BedSignalPipeline, _SignalState

# The alarms judged here: the PhysioNet/CinC 2015 challenge's five (VFLUTTER is its name for VF),
# and atrial fibrillation.
VERIFIED_LABELS: Final = frozenset(
    {"ASYSTOLE", "BRADY", "TACHY", "VTACH", "VFIB", "VFLUTTER", "AFIB"}
)

ALARM_WINDOW_S: Final = 8.0
PULSE_REGULAR_CV: Final = 0.05
# A pulse this regular is no AF: sinus rhythm's pulse intervals vary by a few percent (respiratory
# sinus arrhythmia; a coefficient of variation of 0.035-0.051 on a simulated sinus-rhythm bed),
# AF's by about a fifth (0.20-0.29 on a simulated AF bed). Chosen between the two, not fitted.
AF_PULSE_REGULAR_CV: Final = 0.1
PULSE_MIN_GOOD_FRAC: Final = 0.5
ECG_MIN_GOOD_FRAC: Final = 0.5
# Organised rhythm: intervals varying by less than a tenth (sinus rhythm varies by a few percent;
# a window holding both sinus beats and a fast run varies by 0.2-0.5).
ECG_REGULAR_CV: Final = 0.1
VT_MAX_V_3S: Final = 1  # fewer ventricular beats than this in any 3 s: no ventricular run
# A wide QRS complex lasts 120 ms or more: the definition of a wide-complex tachycardia
# (ACC/AHA/ESC 2006 guidelines for ventricular arrhythmias, Zipes et al.).
WIDE_QRS_MS: Final = 120.0
# Baseline SQI (basSQI, Behar et al. 2013): a lead with more than a tenth of its 0-40 Hz power
# below 1 Hz is dominated by baseline movement (motion, electrode artefact), not by its beats.
BASELINE_SQI_MIN: Final = 0.9
# An ECG lead whose kurtosis is below 5 is not judged for AF (Li, Mark and Clifford 2008: kSQI
# above 5 for ECG); not used for VT, VF or asystole, whose ECG has low kurtosis too (Behar et
# al. 2013).
AF_KURTOSIS_MIN: Final = 5.0
# Two usable leads agree when their beats match with an F1 of 0.8 within 150 ms: the bSQI of
# Li, Mark and Clifford (2008) compares two detectors with the same 150 ms window.
LEAD_AGREEMENT_MIN: Final = 0.8
# A signal whose known samples end this long before the bed's newest has stopped arriving (the
# primary ECG lead can wait 1 s for a second lead, a frame is at most a second or two).
STALE_AFTER_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class LeadEvidence:
    signal: str
    n_beats: int
    good_frac: float  # fraction of quality ticks judged good in the window
    max_vt_run: int  # longest run of ventricular beats at > 100 bpm
    fib_windows: int  # fibrillatory windows ending in the window
    max_rr_s: float  # longest interval between beats, or the window when fewer than 2 beats
    min_rr_s: float
    fast_run_bpm: float  # rate of the fastest run of VT_BEATS beats (its slowest interval)
    fast_run_abnormal: int  # beats of that run called ventricular
    fast_run_corr: float  # lowest template correlation in that run
    n_ventricular: int  # beats called ventricular
    max_v_3s: int  # most ventricular beats within any 3 s
    rr_cv: float  # coefficient of variation of the intervals (inf with fewer than 2)
    rate_bpm: float  # 60 / median interval (0 with fewer than 2 beats)
    agreement: float = float("nan")  # best beat agreement (F1) with another ECG lead
    baseline_sqi: float = float("nan")  # 1 - power below 1 Hz / power below 40 Hz (NaN: unknown)
    qrs_width_ms: float = float("nan")  # median QRS width of the beats that have one
    # lowest kurtosis of the 0.5-40 Hz filtered window's 2 s segments (3 for Gaussian noise)
    kurtosis: float = float("nan")


@dataclass(frozen=True, slots=True)
class PulseEvidence:
    signal: str
    n_beats: int
    good_frac: float
    max_gap_s: float
    rate_bpm: float
    rr_cv: float  # coefficient of variation of the pulse intervals
    morphology: float = float("nan")  # median correlation of the pulses with their template


@dataclass(frozen=True, slots=True)
class AlarmDecision:
    label: str
    true_alarm: bool
    reason: str
    leads: tuple[LeadEvidence, ...] = field(default=())
    pulses: tuple[PulseEvidence, ...] = field(default=())


def _good_frac(st: _SignalState, lo: int) -> float:
    q = [v for t, v in st.recent_quality if t > lo]
    return sum(v == "good" for v in q) / len(q) if q else 0.0


def lead_evidence(st: _SignalState, now: int, window_s: float) -> LeadEvidence:
    lo = now - round(window_s * st.fs_hz)
    beats = [b for b in st.recent_beats if b.sample >= lo]
    samples = np.array([b.sample for b in beats], dtype=np.int64)
    rr_s = np.diff(samples) / st.fs_hz
    run = best = 0
    for i in range(1, len(beats)):
        if beats[i].ventricular and 60.0 / rr_s[i - 1] > VT_BPM:
            run += 1
            best = max(best, run)
        else:
            run = 0
    fib = sum(1 for t, f in st.recent_fib if t > lo and f)
    fast_bpm = 0.0
    fast_abn = 0
    fast_corr = 1.0
    k = VT_BEATS - 1
    if rr_s.size >= k:
        # the longest interval of each run of k (its slowest): k - 1 shifted maxima
        worst = rr_s[: rr_s.size - k + 1].copy()
        for j in range(1, k):
            np.maximum(worst, rr_s[j : rr_s.size - k + 1 + j], out=worst)
        i = int(np.argmin(worst))
        fast_bpm = float(60.0 / worst[i])
        fast_beats = beats[i : i + k + 1]
        fast_abn = sum(1 for b in fast_beats if b.ventricular)
        corrs = [b.template_corr for b in fast_beats if b.template_corr is not None]
        fast_corr = float(min(corrs)) if corrs else float("nan")
    v_samples = np.array([b.sample for b in beats if b.ventricular], dtype=np.int64)
    span3 = round(3.0 * st.fs_hz)
    max_v_3s = 0
    if v_samples.size:
        ends = np.searchsorted(v_samples, v_samples + span3, side="left")
        max_v_3s = int((ends - np.arange(v_samples.size)).max())
    bounds = np.concatenate([[lo], samples, [now]]) / st.fs_hz
    widths = [b.qrs_width_ms for b in beats if b.qrs_width_ms is not None]
    return LeadEvidence(
        signal=st.key,
        n_beats=len(beats),
        good_frac=_good_frac(st, lo),
        max_vt_run=best,
        fib_windows=fib,
        max_rr_s=float(np.diff(bounds).max()),
        min_rr_s=float(rr_s.min()) if rr_s.size else window_s,
        fast_run_bpm=fast_bpm,
        fast_run_abnormal=fast_abn,
        fast_run_corr=fast_corr,
        n_ventricular=int(v_samples.size),
        max_v_3s=max_v_3s,
        rr_cv=float(rr_s.std() / rr_s.mean()) if rr_s.size > 1 else float("inf"),
        rate_bpm=60.0 / median(rr_s.tolist()) if rr_s.size else 0.0,
        baseline_sqi=baseline_sqi(st.hist.window(max(lo, st.hist.start), now), st.fs_hz),
        qrs_width_ms=median(widths) if widths else float("nan"),
        kurtosis=_lowest_kurtosis(
            st.hist.window(max(lo, st.hist.start), now, filtered=True), st.fs_hz
        ),
    )


def _lowest_kurtosis(y: np.ndarray | None, fs_hz: float) -> float:
    """The lowest kurtosis (:func:`kurtosis_sqi`) of the whole 2 s segments of a window counted
    back from its end (NaN: none, or one with a missing sample or flat), all segments at once."""
    if y is None:
        return float("nan")
    n = round(2.0 * fs_hz)
    k = y.shape[0] // n
    if k == 0 or n < 8:
        return float("nan")
    return float(_kurtosis_rows(y[y.shape[0] - k * n :].reshape(k, n)).min())


def kurtosis_sqi(y: np.ndarray | None) -> float:
    """The kurtosis of a filtered ECG window (the kSQI of Li, Mark and Clifford 2008): above 5
    for an ECG whose power sits in sharp QRS complexes, about 3 for Gaussian noise. NaN for
    fewer than 8 samples, a missing sample, or a flat window."""
    if y is None or y.shape[0] < 8:
        return float("nan")
    return float(_kurtosis_rows(y.reshape(1, -1))[0])


def _kurtosis_rows(seg: np.ndarray) -> np.ndarray:
    """The kurtosis of each row, E[(y - mean)^4] / E[(y - mean)^2]^2; every row NaN when a row
    holds a missing sample or is flat (its kurtosis is unknown, so their least is too)."""
    d = seg - seg.mean(axis=1, keepdims=True)
    d2 = d * d
    var = d2.mean(axis=1)
    if np.isnan(var).any() or not (var > 0.0).all():
        return np.full(seg.shape[0], np.nan)
    return (d2 * d2).mean(axis=1) / (var * var)


def baseline_sqi(x: np.ndarray | None, fs_hz: float) -> float:
    """1 - (power below 1 Hz) / (power below 40 Hz) of a raw ECG window (Welch, 2 s segments).

    The basSQI of Behar et al. (IEEE Trans Biomed Eng 60(6):1660-1666, 2013): near 1 for an
    ECG whose power is in its beats, low where baseline movement (motion, respiration,
    electrode artefact) dominates. NaN for a window shorter than 4 s, with a missing sample, or
    without power.
    """
    if x is None or x.shape[0] < round(4.0 * fs_hz) or np.isnan(x).any():
        return float("nan")
    n = round(2.0 * fs_hz)
    window, f = _welch_grid(n, fs_hz)
    # Welch's estimate: Hann segments of n samples, half overlapping, each less its mean, the
    # mean of their periodograms, one-sided (every bin but 0 and n/2 doubled); the ratio does
    # not depend on the scaling. The same as scipy.signal.welch (tests/test_alarm_verification).
    segs = np.lib.stride_tricks.sliding_window_view(x, n)[:: n - n // 2]
    segs = (segs - segs.mean(axis=1, keepdims=True)) * window
    spec = np.fft.rfft(segs, axis=1)
    p = (spec.real * spec.real + spec.imag * spec.imag).mean(axis=0)
    p[1 : (n + 1) // 2] *= 2.0
    total = float(p[f < 40.0].sum())
    if total <= 0.0:
        return float("nan")
    return 1.0 - float(p[f < 1.0].sum()) / total


@lru_cache(maxsize=16)
def _welch_grid(n: int, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """For segments of ``n`` samples at ``fs_hz``: the periodic Hann window (scipy's ``hann``
    for spectral estimation) and the frequencies of the one-sided spectrum. Read-only."""
    grid = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n), np.fft.rfftfreq(n, 1.0 / fs_hz))
    for a in grid:
        a.flags.writeable = False
    return grid


def pulse_evidence(st: _SignalState, now: int, window_s: float) -> PulseEvidence:
    lo = now - round(window_s * st.fs_hz)
    samples = np.array([b.sample for b in st.recent_beats if b.sample >= lo], dtype=np.int64)
    rr_s = np.diff(samples) / st.fs_hz
    bounds = np.concatenate([[lo], samples, [now]]) / st.fs_hz
    return PulseEvidence(
        signal=st.key,
        n_beats=int(samples.shape[0]),
        good_frac=_good_frac(st, lo),
        max_gap_s=float(np.diff(bounds).max()),
        rate_bpm=60.0 / median(rr_s.tolist()) if rr_s.size else 0.0,
        rr_cv=float(rr_s.std() / rr_s.mean()) if rr_s.size > 1 else float("inf"),
        morphology=st.morphology_at(now),
    )


def gather(
    pipeline: BedSignalPipeline, window_s: float = ALARM_WINDOW_S
) -> tuple[list[LeadEvidence], list[PulseEvidence]]:
    leads: list[LeadEvidence] = []
    pulses: list[PulseEvidence] = []
    bed_end_s = max(st.processed_to / st.fs_hz for st in pipeline._sig.values())
    ends = {st.key: _window_end(st, bed_end_s) for st in pipeline._sig.values()}
    ecg = [st for st in pipeline._sig.values() if st.kind == "ecg"]
    for st in ecg:
        now = ends[st.key]
        ev = lead_evidence(st, now, window_s)
        # agreement with the best other lead (150 ms tolerance), over the window both leads
        # have judged: one may have come further than the other (its chunks arrived first, or
        # a beat is held back for its pause on the other), and beats only one of them has
        # judged yet are no disagreement
        others = [o for o in ecg if o is not st]
        if others:
            ev = replace(
                ev,
                agreement=max(_agreement(st, now, o, ends[o.key], window_s) for o in others),
            )
        leads.append(ev)
    for st in pipeline._sig.values():
        if st.kind in ("ABP", "PLETH"):
            pulses.append(pulse_evidence(st, ends[st.key], window_s))
    return leads, pulses


def _window_end(st: _SignalState, bed_end_s: float) -> int:
    """Where a signal's window ends: where its beats and quality are known, or the bed's newest
    moment when that is more than ``STALE_AFTER_S`` later (a signal that stopped arriving is
    judged on the bed's window, in which it has nothing, never on its own old samples)."""
    bed_end = round(bed_end_s * st.fs_hz)
    stale_n = round(STALE_AFTER_S * st.fs_hz)
    return st.processed_to if bed_end - st.processed_to <= stale_n else bed_end


def _agreement(a: _SignalState, a_end: int, b: _SignalState, b_end: int, window_s: float) -> float:
    """The beat agreement of two leads over the window ending where both have been judged,
    their beat times on one time base (ms before that end)."""
    end_s = min(a_end / a.fs_hz, b_end / b.fs_hz)
    return beat_agreement(
        _beat_times_ms(a, round(end_s * a.fs_hz), window_s),
        _beat_times_ms(b, round(end_s * b.fs_hz), window_s),
        150,
    )


def _beat_times_ms(st: _SignalState, now: int, window_s: float) -> np.ndarray:
    """Beat times in ms, relative to ``now``, within the window that ends there."""
    lo = now - round(window_s * st.fs_hz)
    s = np.array([b.sample for b in st.recent_beats if lo <= b.sample <= now], dtype=np.float64)
    return np.round((s - now) * 1000.0 / st.fs_hz).astype(np.int64)


@dataclass(frozen=True, slots=True)
class VtRule:
    """The constants of the verification (see the module docstring)."""

    pulse_regular_cv: float = PULSE_REGULAR_CV
    ecg_regular_cv: float = ECG_REGULAR_CV
    max_v_3s: int = VT_MAX_V_3S
    min_beats: int = 3
    baseline_sqi_min: float = BASELINE_SQI_MIN
    wide_qrs_ms: float = WIDE_QRS_MS
    lead_agreement_min: float = LEAD_AGREEMENT_MIN


def _perfusing(p: PulseEvidence, rule: VtRule) -> bool:
    """A good pulse signal beating regularly throughout the window."""
    return (
        p.good_frac >= PULSE_MIN_GOOD_FRAC
        and p.n_beats >= 3
        and p.max_gap_s < 2.0
        and p.rr_cv < rule.pulse_regular_cv
    )


def _organised(ld: LeadEvidence, rule: VtRule) -> bool:
    """A lead showing a regular narrow-complex rhythm without ventricular beats or fibrillation.

    Not organised when any of these is unknown (too few beats, QRS width not measured).
    """
    return (
        ld.n_beats >= rule.min_beats
        and ld.max_v_3s < rule.max_v_3s
        and ld.rr_cv < rule.ecg_regular_cv
        and ld.fib_windows == 0
        and ld.qrs_width_ms < rule.wide_qrs_ms
    )


def _slower_than_vt(ld: LeadEvidence, rule: VtRule) -> bool:
    """A lead on which no run of VT_BEATS beats reaches VT's rate (VT_BPM) and no beat is called
    ventricular, with no fibrillatory window: no VT, whatever the rhythm's regularity or QRS
    width. Not so when the run cannot be measured (fewer than VT_BEATS beats)."""
    return (
        ld.n_beats >= VT_BEATS
        and ld.fast_run_bpm < VT_BPM
        and ld.max_v_3s < rule.max_v_3s
        and ld.fib_windows == 0
    )


def usable_leads(leads: list[LeadEvidence], rule: VtRule | None = None) -> list[LeadEvidence]:
    """The leads the ECG can be judged on; empty when the ECG is unreliable.

    A lead is usable when its quality was good for at least half of the window and its baseline
    SQI is not below ``baseline_sqi_min`` (an unknown baseline SQI does not exclude it). Two or
    more leads of good quality of which no two agree on the beats make the ECG unreliable.
    """
    rule = VtRule() if rule is None else rule
    good = [ld for ld in leads if ld.good_frac >= ECG_MIN_GOOD_FRAC]
    if len(good) >= 2 and not any(ld.agreement >= rule.lead_agreement_min for ld in good):
        return []
    return [ld for ld in good if not ld.baseline_sqi < rule.baseline_sqi_min]


def decide(
    label: str,
    leads: list[LeadEvidence],
    pulses: list[PulseEvidence],
    rule: VtRule | None = None,
) -> AlarmDecision:
    """The verdict on an alarm from the evidence of every lead and pulse signal."""
    if label not in VERIFIED_LABELS:
        raise ValueError(f"unknown alarm {label!r}; known: {', '.join(sorted(VERIFIED_LABELS))}")
    rule = VtRule() if rule is None else rule
    usable = usable_leads(leads, rule)
    if label == "AFIB":  # noise that passes for beats is not AF: the lead must look like ECG
        usable = [ld for ld in usable if not ld.kurtosis < AF_KURTOSIS_MIN]

    def made(true_alarm: bool, reason: str) -> AlarmDecision:
        return AlarmDecision(label, true_alarm, reason, tuple(leads), tuple(pulses))

    if usable:
        names = ", ".join(ld.signal for ld in usable)
        if label == "VTACH":
            if all(_organised(ld, rule) or _slower_than_vt(ld, rule) for ld in usable):
                return made(
                    False,
                    "organised narrow-complex rhythm, or slower than VT without a ventricular "
                    f"beat, on every usable lead ({names})",
                )
            return made(True, f"a usable lead ({names}) does not rule out a ventricular run")
        if label in ("VFIB", "VFLUTTER"):
            fib = [ld for ld in usable if ld.fib_windows > 0]
            if fib:
                return made(True, f"fibrillatory ECG on {fib[0].signal}")
            return made(False, f"no fibrillatory window on any usable lead ({names})")
        if label == "ASYSTOLE":
            beating = [ld for ld in usable if ld.max_rr_s < ASYSTOLE_S]
            if beating:
                return made(False, f"QRS complexes continue on {beating[0].signal}")
            return made(True, "no QRS for more than 4 s on a usable lead")
        if label == "BRADY":
            if not any(ld.max_rr_s > 60.0 / BRADY_BPM for ld in usable):
                return made(False, f"no interval longer than 1.5 s on {names}")
            return made(True, "slow rhythm on a usable lead")
        if label == "TACHY":
            if not any(ld.n_beats > 0 and ld.min_rr_s < 60.0 / TACHY_BPM for ld in usable):
                return made(False, f"no interval shorter than 0.43 s on {names}")
            return made(True, "fast rhythm on a usable lead")
        # AFIB: an irregularly irregular rhythm. A window in which every usable lead beats
        # regularly is no AF (the flag judges the last 64 intervals and ends late).
        regular_ecg = [ld for ld in usable if ld.n_beats >= rule.min_beats]
        if regular_ecg and all(ld.rr_cv < rule.ecg_regular_cv for ld in regular_ecg):
            return made(False, f"regular rhythm on every usable lead ({names})")
        return made(True, f"irregular rhythm on a usable lead ({names})")
    # The ECG is unreliable: other signals may reject the alarm.
    if label == "ASYSTOLE":
        beating_p = [p for p in pulses if p.max_gap_s < ASYSTOLE_S and p.good_frac >= 0.5]
        if beating_p:
            return made(False, f"unreliable ECG; pulses continue on {beating_p[0].signal}")
        return made(True, "unreliable ECG and no pulse for more than 4 s")
    if label == "BRADY":
        fast = [
            p
            for p in pulses
            if _perfusing(p, replace(rule, pulse_regular_cv=np.inf)) and p.rate_bpm >= BRADY_BPM
        ]
        if fast:
            return made(
                False, f"unreliable ECG; pulse rate is not extremely low on {fast[0].signal}"
            )
        return made(True, "unreliable ECG and no pulse contradicts it")
    if label == "TACHY":
        return made(True, "unreliable ECG; the alarm stands")
    # AF is an irregularly irregular ventricular rhythm and the pulse follows it; VT and VF do
    # not leave a pulse beating regularly. Judged only because the ECG cannot be trusted.
    limit = AF_PULSE_REGULAR_CV if label == "AFIB" else rule.pulse_regular_cv
    regular = [p for p in pulses if _perfusing(p, replace(rule, pulse_regular_cv=limit))]
    if regular:
        return made(False, f"unreliable ECG; regular pulses on {regular[0].signal}")
    return made(True, "unreliable ECG and no regular pulse of good quality")


def verify_alarm(
    pipeline: BedSignalPipeline, label: str, window_s: float = ALARM_WINDOW_S
) -> AlarmDecision:
    """Judge an alarm of type ``label`` raised at the last sample pushed into ``pipeline``."""
    leads, pulses = gather(pipeline, window_s)
    return decide(label, leads, pulses)
