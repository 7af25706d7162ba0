"""What the per-bed signal pipeline reports: plain, immutable data.

Sample indices count samples of the named signal from the first sample the pipeline saw of it
(index 0); ``time_s`` is ``sample / fs_hz`` of that signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

RhythmLabel = Literal[
    "ASYSTOLE",
    "BRADY",
    "TACHY",
    "VTACH",
    "VFIB",
    "AFIB",
    "PAUSE",
    "VT_SUSTAINED",
    "BIGEMINY",
    "TRIGEMINY",
]
RHYTHM_LABELS: Final[tuple[str, ...]] = (
    "ASYSTOLE",
    "BRADY",
    "TACHY",
    "VTACH",
    "VFIB",
    "AFIB",
    "PAUSE",
    "VT_SUSTAINED",
    "BIGEMINY",
    "TRIGEMINY",
)

Verdict = Literal["good", "missing", "flat", "saturated", "noisy"]


@dataclass(frozen=True, slots=True)
class Beat:
    """A QRS complex (ECG) or a pressure/pleth pulse."""

    signal: str
    sample: int
    time_s: float
    kind: Literal["qrs", "pulse"]
    qrs_width_ms: float | None = None  # ECG only, None when it could not be measured
    ventricular: bool | None = None  # ECG only
    template_corr: float | None = None  # correlation with the dominant-beat (or pulse) template
    width_ratio: float | None = None  # ECG only: QRS width over the template's
    steep_ratio: float | None = None  # ECG only: steepness (max slope / amplitude) over template's
    # ECG only: "N" (dominant or supraventricular), "V" (ventricular), "P" (paced: its shape
    # carries pacer spikes), "Q" (unclassifiable, e.g. noise); None while the templates are
    # learnt. ``ventricular`` is ``beat_class == "V"``.
    beat_class: Literal["N", "V", "Q", "P"] | None = None
    prematurity: float | None = None  # ECG only: interval before the beat / dominant mean
    # primary ECG lead of a bed with a second one at its rate: the beat's template correlation
    # and steepness ratio on that lead (None when its samples were not at hand)
    other_corr: float | None = None
    other_steep_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class HeartRate:
    """Heart (or pulse) rate at a beat: beat-to-beat and the median of the last 8 intervals."""

    signal: str
    sample: int
    time_s: float
    rr_ms: float
    hr_bpm: float  # 60000 / rr_ms
    hr_median_bpm: float


@dataclass(frozen=True, slots=True)
class RhythmFlag:
    """Start or end of a rhythm condition, with the quality of the lead it was found on."""

    label: RhythmLabel
    state: Literal["start", "end"]
    signal: str
    sample: int
    time_s: float
    quality: Verdict


@dataclass(frozen=True, slots=True)
class Quality:
    """A change of signal-quality verdict, judged over the window ending at ``sample``."""

    signal: str
    sample: int
    time_s: float
    verdict: Verdict
    nan_frac: float
    range: float
    clip_frac: float
    hf_index: float
    detector_agreement: float = float("nan")  # ECG: F1 of two different QRS detectors
    pulse_morphology: float = float("nan")  # ABP, PLETH: median correlation with the template


@dataclass(frozen=True, slots=True)
class VentricularRun:
    """Consecutive ventricular beats, reported once the run has ended: a couplet (2 beats) or a
    run (3 or more; ANSI/AAMI EC57 calls 3-5 a short run, 6 or more a long run)."""

    signal: str
    sample: int  # the first beat of the run
    time_s: float
    end_sample: int  # the last beat of the run
    n_beats: int
    # 60 / the mean of the intervals ending at the run's beats (the first beat's coupling
    # interval included when the beat before it is known)
    rate_bpm: float
    label: Literal["COUPLET", "RUN"]
    # a ventricular-tachycardia episode as the MIT-BIH Arrhythmia Database annotates ``(VT``
    # and ANSI/AAMI EC57 counts runs: 3 or more ventricular beats at 100/min or faster
    vt: bool = False


Event = Beat | HeartRate | RhythmFlag | Quality | VentricularRun
