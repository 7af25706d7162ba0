"""Verification of an arrhythmia alarm against every signal of the bed, with no look-ahead.

``verify_alarm(pipeline, label)`` judges an alarm raised now (the last sample pushed) from the
last ``ALARM_WINDOW_S`` seconds that the pipeline keeps for each signal: beats and their
morphology on every ECG lead, fibrillation windows, quality verdicts, and the pulses of arterial
pressure and plethysmogram. An ECG lead counts only where its quality is good; a pulse signal
that beats regularly with good quality is evidence of a perfusing rhythm.

The VTACH rule calls the alarm false when a pulse signal of good quality beats regularly
(interval coefficient of variation below ``PULSE_REGULAR_CV``, no gap of 2 s) through the
window, or when an ECG lead of good quality shows an organised rhythm (at least 3 beats,
interval coefficient of variation below ``ECG_REGULAR_CV``, fewer than ``VT_MAX_V_3S``
ventricular beats in any 3 s, no fibrillatory window). Otherwise the alarm stands. The
constants were chosen on the PhysioNet/CinC 2015 training alarms; ``benchmarks/accuracy.py``
reports the score with them and with constants chosen by 5-fold cross-validation.

The AFIB rule calls the alarm false when a pulse signal of good quality beats regularly
(coefficient of variation below ``AF_PULSE_REGULAR_CV``) through the window: in AF the pulse is
as irregular as the ventricular rhythm. Pauses are not judged here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

import numpy as np

from eicu.kernels.sqi import beat_agreement
from eicu.signal.rhythm import ASYSTOLE_S, BRADY_BPM, TACHY_BPM, VT_BEATS, VT_BPM

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
ECG_REGULAR_CV: Final = 0.2
VT_MAX_V_3S: Final = 4  # fewer ventricular beats than this in any 3 s: no ventricular run


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
        worst = np.lib.stride_tricks.sliding_window_view(rr_s, k).max(axis=1)
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
        rate_bpm=float(60.0 / np.median(rr_s)) if rr_s.size else 0.0,
    )


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
        rate_bpm=float(60.0 / np.median(rr_s)) if rr_s.size else 0.0,
        rr_cv=float(rr_s.std() / rr_s.mean()) if rr_s.size > 1 else float("inf"),
        morphology=st.morphology_at(now),
    )


def gather(
    pipeline: BedSignalPipeline, window_s: float = ALARM_WINDOW_S
) -> tuple[list[LeadEvidence], list[PulseEvidence]]:
    leads: list[LeadEvidence] = []
    pulses: list[PulseEvidence] = []
    ecg = [st for st in pipeline._sig.values() if st.kind == "ecg"]
    for st in ecg:
        now = st.next_index
        ev = lead_evidence(st, now, window_s)
        # agreement with the best other lead (beats in seconds, 150 ms tolerance)
        others = [o for o in ecg if o is not st]
        if others:
            mine = _beat_times_ms(st, now, window_s)
            ev = replace(
                ev,
                agreement=max(
                    beat_agreement(mine, _beat_times_ms(o, o.next_index, window_s), 150)
                    for o in others
                ),
            )
        leads.append(ev)
    for st in pipeline._sig.values():
        if st.kind in ("ABP", "PLETH"):
            pulses.append(pulse_evidence(st, st.next_index, window_s))
    return leads, pulses


def _beat_times_ms(st: _SignalState, now: int, window_s: float) -> np.ndarray:
    """Beat times in ms, relative to the signal's end, within the window."""
    lo = now - round(window_s * st.fs_hz)
    s = np.array([b.sample for b in st.recent_beats if b.sample >= lo], dtype=np.float64)
    return np.round((s - now) * 1000.0 / st.fs_hz).astype(np.int64)


@dataclass(frozen=True, slots=True)
class VtRule:
    """The constants of the VTACH rule (see the module docstring)."""

    pulse_regular_cv: float = PULSE_REGULAR_CV
    ecg_regular_cv: float = ECG_REGULAR_CV
    max_v_3s: int = VT_MAX_V_3S
    min_beats: int = 3


def _perfusing(p: PulseEvidence, rule: VtRule) -> bool:
    """A good pulse signal beating regularly throughout the window."""
    return (
        p.good_frac >= PULSE_MIN_GOOD_FRAC
        and p.n_beats >= 3
        and p.max_gap_s < 2.0
        and p.rr_cv < rule.pulse_regular_cv
    )


def _organised(ld: LeadEvidence, rule: VtRule) -> bool:
    """A lead showing a regular rhythm, almost no ventricular beats and no fibrillation."""
    return (
        ld.n_beats >= rule.min_beats
        and ld.max_v_3s < rule.max_v_3s
        and ld.rr_cv < rule.ecg_regular_cv
        and ld.fib_windows == 0
    )


def decide(
    label: str,
    leads: list[LeadEvidence],
    pulses: list[PulseEvidence],
    rule: VtRule | None = None,
) -> AlarmDecision:
    """The verdict on an alarm from the evidence of every lead and pulse signal."""
    rule = VtRule() if rule is None else rule
    good = [ld for ld in leads if ld.good_frac >= ECG_MIN_GOOD_FRAC]
    perfusing = [p for p in pulses if _perfusing(p, rule)]

    def made(true_alarm: bool, reason: str) -> AlarmDecision:
        return AlarmDecision(label, true_alarm, reason, tuple(leads), tuple(pulses))

    if label == "VTACH":
        # A pulse signal of good quality beating regularly through the window means an
        # organised, perfusing rhythm; so does an ECG lead showing a regular rhythm with
        # hardly a ventricular beat. Either way the alarm is called false.
        if perfusing:
            return made(False, f"regular pulses on {perfusing[0].signal}")
        organised = [ld for ld in good if _organised(ld, rule)]
        if organised:
            return made(
                False, f"organised rhythm without a ventricular run on {organised[0].signal}"
            )
        return made(True, "no organised rhythm on any lead or pulse of good quality")
    if label in ("VFIB", "VFLUTTER"):
        fib = [ld for ld in good if ld.fib_windows > 0]
        if perfusing:
            return made(False, f"regular pulses on {perfusing[0].signal}")
        if fib or not good:
            return made(True, "fibrillatory ECG" if fib else "no lead of good quality")
        return made(False, "no fibrillatory window on any ECG lead of good quality")
    if label == "ASYSTOLE":
        if perfusing or any(p.max_gap_s < ASYSTOLE_S and p.good_frac >= 0.5 for p in pulses):
            return made(False, "pulses continue")
        beating = [ld for ld in good if ld.max_rr_s < ASYSTOLE_S]
        if beating:
            return made(False, f"QRS complexes continue on {beating[0].signal}")
        return made(True, "no QRS and no pulse for more than 4 s")
    if label == "BRADY":
        if any(p.rate_bpm >= BRADY_BPM and p.good_frac >= 0.5 for p in perfusing):
            return made(False, "pulse rate is not extremely low")
        slow = [ld for ld in good if ld.max_rr_s > 60.0 / BRADY_BPM]
        if good and not slow:
            return made(False, "no interval longer than 1.5 s on a lead of good quality")
        return made(True, "slow rhythm")
    if label == "AFIB":
        # AF is an irregularly irregular ventricular rhythm and the pulse follows it: a pulse of
        # good quality beating regularly through the window means the irregular intervals on
        # the ECG are not AF (motion artefact, noise taken for beats).
        af_rule = replace(rule, pulse_regular_cv=AF_PULSE_REGULAR_CV)
        regular = [p for p in pulses if _perfusing(p, af_rule)]
        if regular:
            return made(False, f"regular pulses on {regular[0].signal}")
        return made(True, "no regular pulse of good quality")
    if label == "TACHY":
        fast = [ld for ld in good if ld.n_beats > 0 and ld.min_rr_s < 60.0 / TACHY_BPM]
        if good and not fast:
            return made(False, "no interval shorter than 0.43 s on a lead of good quality")
        return made(True, "fast rhythm")
    raise ValueError(f"unknown alarm {label!r}; known: {', '.join(sorted(VERIFIED_LABELS))}")


def verify_alarm(
    pipeline: BedSignalPipeline, label: str, window_s: float = ALARM_WINDOW_S
) -> AlarmDecision:
    """Judge an alarm of type ``label`` raised at the last sample pushed into ``pipeline``."""
    leads, pulses = gather(pipeline, window_s)
    return decide(label, leads, pulses)
