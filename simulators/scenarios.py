"""Scenario plans for the synthetic bedside monitor.

A plan says, for one simulated patient, what the heart rhythm is at every moment, where the
vital-sign setpoints are heading, and which ground-truth episodes happen when. It is pure and
deterministic: the same scenario, seed and timing give the same plan. :mod:`simulators.synth`
turns a plan into waveforms and numerics.

Two clocks are involved. ``t_s`` is simulated time, the clock of the waveforms. Slow trends (the
sepsis course, the drift of a stable patient) run on scenario time ``t_s * time_scale``, so a
course of hours can be shown in minutes while every beat keeps its true duration. Acute events
(an arrhythmia, a lead off, an outage) are placed in simulated seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

SCENARIOS: Final[tuple[str, ...]] = (
    "stable",
    "sepsis",
    "af",
    "vt",
    "asystole",
    "artefact",
    "spo2_off",
    "disconnect",
    "vf",
    "pvc",
    "bigeminy",
    "paced",
)

# Rhythm codes. The first three are also the beat kinds (which template a beat uses).
SINUS: Final = 0
AFIB: Final = 1
VTACH: Final = 2
ASYSTOLE: Final = 3
VFIB: Final = 4  # no beats: a fibrillatory waveform instead
PACED: Final = 5  # ventricular pacing (its beats are of kind PACED_BEAT)
PACED_BEAT: Final = 3  # the beat kind of a paced beat
PACED_BPM: Final = 70.0  # the pacemaker's rate (VVI, lower rate 70/min)
# Ventricular ectopy (PVCs): the coupling interval of a PVC as a fraction of the sinus interval,
# the interval between the two PVCs of a couplet as a fraction of the coupling interval, and in
# the "pvc" scenario the chance that a sinus beat is followed by a PVC and that a PVC is the
# first of a couplet.
PVC_COUPLING: Final = 0.58
COUPLET_INTERVAL: Final = 0.80
PVC_CHANCE: Final = 0.12
COUPLET_CHANCE: Final = 0.3

# Ground-truth episode labels.
AFIB_LABEL: Final = "AFIB"
VTACH_LABEL: Final = "VTACH"
ASYSTOLE_LABEL: Final = "ASYSTOLE"
VFIB_LABEL: Final = "VFIB"
PVC_LABEL: Final = "PVC"  # isolated PVCs and couplets
BIGEMINY_LABEL: Final = "BIGEMINY"
PACED_LABEL: Final = "PACED"
LEAD_OFF: Final = "LEAD_OFF"
ARTEFACT: Final = "ARTEFACT"
SPO2_PROBE_OFF: Final = "SPO2_PROBE_OFF"
GATEWAY_OFFLINE: Final = "GATEWAY_OFFLINE"
SEPSIS_LABEL: Final = "SEPSIS"


_RHYTHM_OF: Final[dict[str, int]] = {
    AFIB_LABEL: AFIB,
    VTACH_LABEL: VTACH,
    ASYSTOLE_LABEL: ASYSTOLE,
    VFIB_LABEL: VFIB,
    PACED_LABEL: PACED,
}


class Episode(NamedTuple):
    """A ground-truth episode: ``start_s <= t < end_s`` in simulated seconds (end may be inf)."""

    label: str
    start_s: float
    end_s: float

    def contains(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


class Vitals(NamedTuple):
    """Setpoints at one moment: what the body is doing, before any monitor measures it."""

    hr_bpm: float
    rr_bpm: float
    spo2_pct: float
    sys_mmhg: float
    dia_mmhg: float
    temp_c: float
    perfusion: float  # scales the pulse amplitude on PLETH (1 = the patient's baseline)
    acvpu: int  # 0..4 = A, C, V, P, U
    o2: int  # 1 when on supplemental oxygen


# The end state of the sepsis course (reached when scenario time passes onset + duration).
# NEWS2 (Royal College of Physicians 2017) of this state: HR 125 -> 2, RR 27 -> 3, SpO2 92 on
# scale 1 -> 2, supplemental oxygen -> 2, systolic 88 -> 3, temperature 39.2 -> 2, new confusion
# -> 3; total 17, far above the trigger of 7 for an emergency response.
SEPSIS_END: Final = Vitals(
    hr_bpm=125.0,
    rr_bpm=27.0,
    spo2_pct=92.0,
    sys_mmhg=88.0,
    dia_mmhg=48.0,
    temp_c=39.2,
    perfusion=0.45,
    acvpu=1,
    o2=1,
)
SEPSIS_O2_FROM: Final = 0.6  # fraction of the course after which oxygen is given
SEPSIS_CONFUSED_FROM: Final = 0.85  # fraction of the course after which the patient is confused


@dataclass(frozen=True, slots=True)
class Timing:
    """When a scenario's main event starts and how long it lasts.

    For ``sepsis`` both are in scenario time (``t_s * time_scale``); for every other scenario in
    simulated seconds. ``duration_s`` may be ``math.inf`` (the event does not end).
    """

    onset_s: float
    duration_s: float


DEFAULT_TIMING: Final[dict[str, Timing]] = {
    "stable": Timing(math.inf, 0.0),
    "sepsis": Timing(600.0, 6 * 3600.0),  # 10 min stable, then a 6 h course
    "af": Timing(60.0, math.inf),
    "vt": Timing(60.0, 30.0),
    "asystole": Timing(60.0, 8.0),
    "artefact": Timing(40.0, 15.0),  # lead off at onset, motion artefact 40 s later
    "spo2_off": Timing(45.0, 30.0),
    "disconnect": Timing(60.0, 45.0),
    "vf": Timing(60.0, 20.0),  # then sinus rhythm again (as after defibrillation)
    "pvc": Timing(30.0, math.inf),
    "bigeminy": Timing(30.0, 60.0),
    "paced": Timing(30.0, math.inf),
}
ARTEFACT_GAP_S: Final = 40.0  # from the lead-off onset to the motion-artefact onset


@dataclass(frozen=True, slots=True)
class Patient:
    """Per-seed physiology: healthy adult ICU values around which a scenario moves."""

    hr_bpm: float
    rr_bpm: float
    spo2_pct: float
    sys_mmhg: float
    dia_mmhg: float
    temp_c: float
    qtc_s: float  # corrected QT (Fridericia)
    ptt_abp_s: float  # R peak to the foot of the arterial pulse
    ptt_ppg_s: float  # R peak to the foot of the finger pulse (longer path)
    rsa_frac: float  # respiratory sinus arrhythmia, peak RR change as a fraction of RR
    lf_frac: float  # ~0.1 Hz (Mayer wave) RR modulation
    jitter_frac: float  # beat-to-beat random RR change
    ecg_gain: tuple[float, float]  # amplitude factor of leads II and V
    ppg_amp: float  # baseline pulse amplitude on PLETH
    resp_amp: float  # breath amplitude on RESP (impedance, ohm)
    fwave_hz: float  # fibrillatory wave rate in AF
    af_hr_bpm: float  # ventricular rate in AF
    vt_hr_bpm: float  # rate of the ventricular tachycardia
    vf_hz: float  # dominant frequency of ventricular fibrillation
    drift_phase: tuple[float, float, float, float, float]


def draw_patient(seed: int) -> Patient:
    """The patient of a seed: the same seed gives the same patient in every scenario."""
    rng = np.random.default_rng([seed, 0])
    u = rng.random(20)
    sys_mmhg = 105.0 + 30.0 * u[3]
    return Patient(
        hr_bpm=62.0 + 26.0 * u[0],
        rr_bpm=12.0 + 6.0 * u[1],
        spo2_pct=95.5 + 3.0 * u[2],
        sys_mmhg=sys_mmhg,
        dia_mmhg=sys_mmhg * (0.55 + 0.1 * u[4]),
        temp_c=36.5 + 0.8 * u[5],
        qtc_s=0.39 + 0.05 * u[6],
        ptt_abp_s=0.15 + 0.04 * u[7],
        ptt_ppg_s=0.20 + 0.05 * u[8],
        rsa_frac=0.025 + 0.03 * u[9],
        lf_frac=0.01 + 0.015 * u[10],
        jitter_frac=0.006 + 0.008 * u[11],
        ecg_gain=(0.8 + 0.4 * u[12], 0.8 + 0.4 * u[13]),
        ppg_amp=0.4 + 0.3 * u[14],
        resp_amp=0.6 + 0.6 * u[15],
        fwave_hz=6.5 + 2.3 * u[16],
        af_hr_bpm=105.0 + 35.0 * u[17],
        vt_hr_bpm=155.0 + 40.0 * u[18],
        vf_hz=4.5 + 2.5 * u[19],
        drift_phase=tuple(float(x) for x in rng.random(5) * 2.0 * math.pi),  # type: ignore[arg-type]
    )


def _smoothstep(x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True, slots=True)
class Plan:
    """One bed's scenario: rhythm and setpoints as functions of simulated time, and the truth."""

    scenario: str
    patient: Patient
    time_scale: float
    timing: Timing
    episodes: tuple[Episode, ...]

    def _episode(self, label: str) -> Episode | None:
        for ep in self.episodes:
            if ep.label == label:
                return ep
        return None

    def rhythm(self, t_s: float) -> int:
        """The rhythm at ``t_s``: SINUS, AFIB, VTACH, ASYSTOLE, VFIB or PACED."""
        for ep in self.episodes:
            if ep.start_s <= t_s < ep.end_s:
                code = _RHYTHM_OF.get(ep.label)
                if code is not None:
                    return code
        return SINUS

    def ectopy(self, t_s: float) -> str | None:
        """The ventricular ectopy at ``t_s``: PVC_LABEL, BIGEMINY_LABEL or None."""
        for ep in self.episodes:
            if ep.label in (PVC_LABEL, BIGEMINY_LABEL) and ep.start_s <= t_s < ep.end_s:
                return ep.label
        return None

    def pause_end(self, t_s: float) -> float:
        """The first moment at or after ``t_s`` when the heart beats again (inf if never):
        nothing beats during asystole or ventricular fibrillation."""
        for ep in self.episodes:
            if ep.label in (ASYSTOLE_LABEL, VFIB_LABEL) and ep.start_s <= t_s < ep.end_s:
                return ep.end_s
        return t_s

    def dissociated_p_s(self, start_s: float, end_s: float) -> list[float]:
        """Times of the P waves in ``[start_s, end_s)`` that the sinus node fires during VT.

        The atria keep the patient's sinus rate, independent of the ventricles (AV
        dissociation), from the start of each VT episode.
        """
        period_s = 60.0 / self.patient.hr_bpm
        out: list[float] = []
        for ep in self.episodes:
            if ep.label != VTACH_LABEL:
                continue
            lo, hi = max(start_s, ep.start_s), min(end_s, ep.end_s)
            k = max(math.ceil((lo - ep.start_s) / period_s), 0)
            while ep.start_s + k * period_s < hi:
                out.append(ep.start_s + k * period_s)
                k += 1
        return out

    def vitals(self, t_s: float) -> Vitals:
        """The setpoints at simulated time ``t_s``."""
        p = self.patient
        tau_s = t_s * self.time_scale
        ph = p.drift_phase
        two_pi = 2.0 * math.pi
        hr = p.hr_bpm + 3.0 * math.sin(two_pi * tau_s / 1130.0 + ph[0])
        rr = p.rr_bpm + 1.0 * math.sin(two_pi * tau_s / 1570.0 + ph[1])
        spo2 = p.spo2_pct + 0.6 * math.sin(two_pi * tau_s / 970.0 + ph[2])
        sbp = p.sys_mmhg + 4.0 * math.sin(two_pi * tau_s / 1730.0 + ph[3])
        dbp = p.dia_mmhg + 2.5 * math.sin(two_pi * tau_s / 1730.0 + ph[3])
        temp = p.temp_c + 0.1 * math.sin(two_pi * tau_s / 3600.0 + ph[4])
        perfusion = 1.0
        acvpu = 0
        o2 = 0
        name = self.scenario
        if name == "sepsis":
            x = (tau_s - self.timing.onset_s) / self.timing.duration_s
            k = _smoothstep(x)
            end = SEPSIS_END
            hr += k * (end.hr_bpm - hr)
            rr += k * (end.rr_bpm - rr)
            spo2 += k * (end.spo2_pct - spo2)
            sbp += k * (end.sys_mmhg - sbp)
            dbp += k * (end.dia_mmhg - dbp)
            temp += k * (end.temp_c - temp)
            perfusion += k * (end.perfusion - perfusion)
            o2 = int(x >= SEPSIS_O2_FROM)
            acvpu = end.acvpu if x >= SEPSIS_CONFUSED_FROM else 0
        elif name == "af":
            ep = self._episode(AFIB_LABEL)
            if ep is not None and ep.contains(t_s):
                hr = p.af_hr_bpm
        elif name == "paced":
            ep = self._episode(PACED_LABEL)
            if ep is not None and ep.contains(t_s):
                hr = PACED_BPM
        elif name == "vt":
            ep = self._episode(VTACH_LABEL)
            if ep is not None and t_s >= ep.start_s:
                # Pressure falls towards a low-output state within seconds and recovers after.
                low_sys, low_dia = 0.6 * sbp, 0.72 * dbp
                if t_s < ep.end_s:
                    k = 1.0 - math.exp(-(t_s - ep.start_s) / 3.0)
                    hr = p.vt_hr_bpm
                    perfusion = 0.35
                else:
                    k0 = 1.0 - math.exp(-(ep.end_s - ep.start_s) / 3.0)
                    k = k0 * math.exp(-(t_s - ep.end_s) / 8.0)
                    perfusion = 1.0 - 0.65 * k
                sbp += k * (low_sys - sbp)
                dbp += k * (low_dia - dbp)
        return Vitals(hr, rr, spo2, sbp, dbp, temp, perfusion, acvpu, o2)


def make_plan(
    scenario: str,
    seed: int,
    *,
    time_scale: float = 1.0,
    onset_s: float | None = None,
    duration_s: float | None = None,
) -> Plan:
    """The plan of ``scenario`` for the patient of ``seed``; timing overrides the defaults."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not (time_scale > 0.0 and math.isfinite(time_scale)):
        raise ValueError(f"time_scale must be a positive finite number, got {time_scale}")
    base = DEFAULT_TIMING[scenario]
    timing = Timing(
        base.onset_s if onset_s is None else float(onset_s),
        base.duration_s if duration_s is None else float(duration_s),
    )
    if timing.onset_s < 0.0 or not timing.duration_s >= 0.0:
        raise ValueError(f"onset_s and duration_s must be >= 0, got {timing}")
    if scenario == "sepsis" and not (0.0 < timing.duration_s < math.inf):
        raise ValueError(f"the sepsis course needs a finite duration_s > 0, got {timing}")
    start, end = timing.onset_s, timing.onset_s + timing.duration_s
    episodes: list[Episode] = []
    if scenario == "sepsis":
        episodes.append(Episode(SEPSIS_LABEL, start / time_scale, end / time_scale))
    elif scenario == "af":
        episodes.append(Episode(AFIB_LABEL, start, end))
    elif scenario == "vt":
        episodes.append(Episode(VTACH_LABEL, start, end))
    elif scenario == "asystole":
        episodes.append(Episode(ASYSTOLE_LABEL, start, end))
    elif scenario == "vf":
        episodes.append(Episode(VFIB_LABEL, start, end))
    elif scenario == "pvc":
        episodes.append(Episode(PVC_LABEL, start, end))
    elif scenario == "bigeminy":
        episodes.append(Episode(BIGEMINY_LABEL, start, end))
    elif scenario == "paced":
        episodes.append(Episode(PACED_LABEL, start, end))
    elif scenario == "artefact":
        episodes.append(Episode(LEAD_OFF, start, end))
        motion_start = start + ARTEFACT_GAP_S
        episodes.append(Episode(ARTEFACT, motion_start, motion_start + max(timing.duration_s, 5.0)))
    elif scenario == "spo2_off":
        episodes.append(Episode(SPO2_PROBE_OFF, start, end))
    elif scenario == "disconnect":
        episodes.append(Episode(GATEWAY_OFFLINE, start, end))
    return Plan(scenario, draw_patient(seed), float(time_scale), timing, tuple(episodes))
