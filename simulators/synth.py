"""Synthetic bedside monitor: ECG, PLETH, ABP and RESP waveforms, numerics, and ground truth.

A bed is driven by a :class:`~simulators.scenarios.Plan`. Beats come from an RR process with
respiratory sinus arrhythmia, a ~0.1 Hz component and jitter (or the irregular intervals of AF,
or the fast regular rate of VT). Each beat places precomputed ECG templates (P-QRS and a T wave
whose offset follows the QT-RR relation of Fridericia) on two leads, and, when it ejects blood, a
pressure pulse on ABP and a finger pulse on PLETH after a pulse-transit delay. Pulses are
rendered cycle by cycle: a systolic shape stretched over the ejection time, then an exponential
(Windkessel) diastolic decay; the decay constant of each beat is chosen so that at the nominal
rate the pressure falls exactly to the diastolic setpoint, while irregular rhythms and pauses give
the diastolic and systolic values that follow from their intervals. Breaths are cycles too; they
drive RESP, the RSA, the ECG baseline and the PLETH baseline.

Everything a sample depends on is a function of its global index, so any chunking of the output
gives identical samples. :class:`BedSynthBank` renders many beds with one kernel call per signal
and chunk; :class:`BedSynth` is a bank of one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

from eicu.codes import SIGNAL_BY_KEY
from simulators import _synth_kernels as K
from simulators.scenarios import (
    AFIB,
    AFIB_LABEL,
    ARTEFACT,
    ASYSTOLE,
    BIGEMINY_LABEL,
    COUPLET_CHANCE,
    COUPLET_INTERVAL,
    GATEWAY_OFFLINE,
    LEAD_OFF,
    PACED,
    PACED_BEAT,
    PVC_CHANCE,
    PVC_COUPLING,
    SCENARIOS,
    SINUS,
    SPO2_PROBE_OFF,
    VFIB,
    VFIB_LABEL,
    VTACH,
    Episode,
    Plan,
    make_plan,
)

__all__ = [
    "BEAT_KINDS",
    "DEFAULT_FS_HZ",
    "SCENARIOS",
    "Beats",
    "BedSynth",
    "BedSynthBank",
    "Episode",
]

DEFAULT_FS_HZ: Final[Mapping[str, float]] = {
    "ECG_II": 250.0,
    "ECG_V": 250.0,
    "PLETH": 125.0,
    "ABP": 125.0,
    "RESP": 62.5,
}
BEAT_KINDS: Final[tuple[str, ...]] = ("N", "N_AF", "V", "PACED")  # index = beat kind code

TABLE_FS_HZ: Final = 4000.0  # resolution of the precomputed templates
_SAMPLE_EPS: Final = 1e-9  # absorbs float error in t * fs when counting samples
_LOOKAHEAD_S: Final = 1.0  # beats are scheduled at least this far past the end of a chunk
_RETAIN_S: Final = 40.0  # beats, pulses and breaths kept for the numerics
_ECG_RETAIN_S: Final = 1.0  # template events kept behind the current chunk
_BEAT_BATCH: Final = 16
_BREATH_BATCH: Final = 8
_ABP_FLOOR_MMHG: Final = 18.0  # pressure the arteries empty towards with no beat
_PPG_LOW: Final = 0.3  # PLETH level at the foot of a pulse
_AF_RR_SIGMA: Final = 0.22  # log-normal spread of RR in AF (coefficient of variation ~0.22)
_AF_MIN_RR_S: Final = 0.28  # AV-node refractory limit
_PULSE_DEFICIT_FILL: Final = 0.3  # a beat with less filling than this ejects no palpable pulse


# ---------------------------------------------------------------------------------------------
# Templates and tables


def _wave(t: NDArray[np.float64], mu: float, s_left: float, s_right: float, amp: float) -> Any:
    s = np.where(t < mu, s_left, s_right)
    return amp * np.exp(-0.5 * ((t - mu) / s) ** 2)


# Beat templates as sums of (asymmetric) Gaussian waves, after the dynamical model of McSharry et
# al. (IEEE TBME 2003), placed in time rather than in phase. Durations are typical adult values
# (P wave ~100 ms, PR ~160 ms, QRS ~90 ms; a monomorphic VT complex ~200 ms wide with a
# discordant T wave). Each row: (t0_s, waves of lead II, waves of lead V), with a wave as
# (centre_s, sigma_left_s, sigma_right_s, mV). Rows: kind * 2 + 0 is the complex at the R peak,
# kind * 2 + 1 the T wave placed at its own time.
_P_II = (-0.165, 0.022, 0.022, 0.15)
_QRS_II = ((-0.027, 0.008, 0.008, -0.10), (0.0, 0.0095, 0.0105, 1.10), (0.027, 0.009, 0.011, -0.25))
_P_V = ((-0.175, 0.018, 0.018, 0.08), (-0.135, 0.018, 0.018, -0.05))
_QRS_V = ((-0.005, 0.009, 0.009, 0.40), (0.025, 0.012, 0.014, -0.95))
_ECG_ROWS = (
    (-0.30, (_P_II, *_QRS_II), (*_P_V, *_QRS_V)),  # sinus complex
    (-0.25, ((0.0, 0.055, 0.040, 0.30),), ((0.0, 0.060, 0.045, 0.35),)),  # sinus T
    (-0.30, _QRS_II, _QRS_V),  # AF complex: no P wave
    (-0.25, ((0.0, 0.055, 0.040, 0.30),), ((0.0, 0.060, 0.045, 0.35),)),  # AF T
    (
        -0.20,
        (
            (-0.035, 0.013, 0.013, 0.20),
            (0.0, 0.016, 0.024, 1.25),
            (0.058, 0.018, 0.020, -0.50),
            (0.105, 0.016, 0.018, 0.22),
        ),
        (
            (-0.030, 0.013, 0.013, -0.20),
            (0.004, 0.016, 0.026, -1.35),
            (0.060, 0.018, 0.020, 0.55),
            (0.105, 0.016, 0.018, -0.20),
        ),
    ),  # VT complex
    (-0.25, ((0.0, 0.05, 0.045, -0.35),), ((0.0, 0.05, 0.045, 0.40),)),  # VT T (discordant)
    (
        -0.30,
        ((-0.045, 0.016, 0.016, -0.25), (0.0, 0.022, 0.030, 0.95), (0.070, 0.020, 0.022, -0.30)),
        ((-0.040, 0.016, 0.016, 0.20), (0.005, 0.022, 0.030, -1.20), (0.070, 0.020, 0.020, 0.25)),
    ),  # paced complex (right-ventricular pacing: wide, LBBB-like); the spike is added below
    (-0.25, ((0.0, 0.060, 0.050, -0.30),), ((0.0, 0.060, 0.050, 0.35),)),  # paced T (discordant)
    (
        -0.25,
        ((0.0, 0.022, 0.022, 0.15),),
        ((-0.01, 0.018, 0.018, 0.08), (0.03, 0.018, 0.018, -0.05)),
    ),
    (-0.25, (), ()),  # keeps two rows per kind; a P wave alone has no T wave
)
# The beat kind of each rhythm code (asystole and VF have no beats; listed for completeness).
_BEAT_KIND: Final[tuple[int, ...]] = (0, 1, 2, 0, 0, PACED_BEAT)
_P_ALONE_ROW: Final = 8  # a sinus P wave without a ventricular response (AV dissociation in VT)
_PACED_ROW: Final = 2 * PACED_BEAT
# The pacemaker's stimulus: a spike 4 ms wide (so that at 250 Hz exactly one sample falls on it,
# as a monitor that marks pacer pulses in its ECG stream shows them), 80 ms before the paced R.
_PACER_SPIKE_S: Final = -0.080
_PACER_SPIKE_WIDTH_S: Final = 0.004
_PACER_SPIKE_MV: Final = (0.8, 0.6)  # leads II and V
_TABLE_SPAN_S: Final = 0.5
_QRS_ONSET_S: Final = -0.045  # from the R peak
_T_PEAK_TO_END_S: Final = 0.10
_VT_T_OFFSET_S: Final = 0.20


def _ecg_tables() -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    m = round(_TABLE_SPAN_S * TABLE_FS_HZ) + 1
    lead_ii = np.zeros((len(_ECG_ROWS), m))
    lead_v = np.zeros((len(_ECG_ROWS), m))
    t0 = np.zeros(len(_ECG_ROWS))
    for r, (start_s, waves_ii, waves_v) in enumerate(_ECG_ROWS):
        t0[r] = start_s
        t = start_s + np.arange(m) / TABLE_FS_HZ
        for w in waves_ii:
            lead_ii[r] += _wave(t, *w)
        for w in waves_v:
            lead_v[r] += _wave(t, *w)
        if r in (0, 2, 4, _PACED_ROW):  # a complex: its lead II peak is the R-peak time
            t0[r] -= t[np.argmax(lead_ii[r])]
        if r == _PACED_ROW:
            spike = np.abs(t - _PACER_SPIKE_S) < _PACER_SPIKE_WIDTH_S / 2
            lead_ii[r, spike] += _PACER_SPIKE_MV[0]
            lead_v[r, spike] += _PACER_SPIKE_MV[1]
    # fade the far tails (< 1e-4 mV) to exactly zero so that a placed template has no step
    edge_s = np.minimum(np.arange(m), np.arange(m)[::-1]) / TABLE_FS_HZ
    taper = _smooth_rise(edge_s / 0.02)
    return lead_ii * taper, lead_v * taper, t0


def _smooth_rise(x: NDArray[np.float64]) -> Any:
    return 0.5 * (1.0 - np.cos(np.pi * np.clip(x, 0.0, 1.0)))


def _pulse_table(
    peak_x: float, end_level: float, dips: Sequence[tuple[float, float, float]]
) -> NDArray[np.float64]:
    """A systolic shape on [0, 1]: 0 at the foot, peak 1, then towards ``end_level``."""
    x = np.linspace(0.0, 1.0, 1025)
    fall = end_level + (1.0 - end_level) * (1.0 - _smooth_rise((x - peak_x) / (1.0 - peak_x)))
    y = np.where(x < peak_x, _smooth_rise(x / peak_x), fall)
    for centre, width, amp in dips:  # notch and reflected waves, faded in after the peak
        y += amp * np.exp(-0.5 * ((x - centre) / width) ** 2) * _smooth_rise((x - peak_x) / 0.1)
    y[0] = 0.0
    out: NDArray[np.float64] = y / y.max()
    return out


# Radial artery: upstroke ~80 ms, dicrotic notch at the end of ejection, then a dicrotic wave.
ABP_TABLE: Final = _pulse_table(0.22, 0.52, ((0.70, 0.035, -0.07), (0.82, 0.05, 0.07)))
# Finger pulse: slower upstroke and a smooth diastolic (reflected) wave, no sharp notch.
PPG_TABLE: Final = _pulse_table(0.30, 0.55, ((0.72, 0.08, 0.06),))


def _breath_table() -> NDArray[np.float64]:
    """One breath on [0, 1]: inspiration over the first 40 %, a slower smooth expiration."""
    x = np.linspace(0.0, 1.0, 1025)
    insp = _smooth_rise(x / 0.4)
    y = np.clip((x - 0.4) / 0.6, 0.0, 1.0) ** 0.7
    exp_ = 0.5 * (1.0 + np.cos(np.pi * y))
    out: NDArray[np.float64] = np.where(x < 0.4, insp, exp_)
    out[-1] = 0.0
    return out


BREATH_TABLE: Final = _breath_table()
ECG_TABLE_II, ECG_TABLE_V, ECG_TABLE_T0_S = _ecg_tables()


def _noise_tables() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A white and a motion-like (0.3-12 Hz at 250 Hz) unit noise table, both cyclic."""
    n = 1 << 16
    rng = np.random.default_rng(2003)
    white = rng.standard_normal(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f_hz = np.fft.rfftfreq(n, d=1.0 / 250.0)
    spec[(f_hz < 0.3) | (f_hz > 12.0)] = 0.0
    spec *= 1.0 / np.sqrt(np.maximum(f_hz, 0.3))  # pinker: more power at low frequencies
    motion = np.fft.irfft(spec, n)
    motion /= motion.std()
    return white, motion


WHITE_NOISE, MOTION_NOISE = _noise_tables()
_ABP_MEAN_FRAC: Final = float(ABP_TABLE.mean())


def _abp_systole_s(rr_s: float) -> float:
    """Ejection plus dicrotic wave, shortening with the heart period."""
    return min(0.45, max(0.2, 0.36 * (rr_s / 0.8) ** 0.4))


def _ppg_systole_s(rr_s: float) -> float:
    return min(0.55, max(0.25, 0.45 * (rr_s / 0.8) ** 0.4))


# ---------------------------------------------------------------------------------------------
# Event rows shared by all beds of a bank


class _Rows:
    """Per-bed event rows of a bank: named arrays of shape (beds, capacity) and a count per bed."""

    def __init__(self, n_beds: int, capacity: int, floats: Sequence[str], ints: Sequence[str] = ()):
        self.f = {name: np.zeros((n_beds, capacity)) for name in floats}
        self.i = {name: np.zeros((n_beds, capacity), dtype=np.int64) for name in ints}
        self.count = np.zeros(n_beds, dtype=np.int64)
        self.capacity = capacity

    def append(self, row: int, cols: Mapping[str, Sequence[float] | Sequence[int]]) -> None:
        k = len(next(iter(cols.values())))
        if k == 0:
            return
        c = int(self.count[row])
        if c + k > self.capacity:
            self._grow(c + k)
        for name, values in cols.items():
            arr = self.f[name] if name in self.f else self.i[name]
            arr[row, c : c + k] = values
        self.count[row] = c + k

    def drop(self, row: int, keep: NDArray[np.bool_]) -> None:
        """Keep only the events of ``row`` where ``keep`` (over the first count) is true."""
        c = int(self.count[row])
        n = int(keep.sum())
        if n == c:
            return
        for arr in (*self.f.values(), *self.i.values()):
            arr[row, :n] = arr[row, :c][keep]
        self.count[row] = n

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self.capacity)
        for name, arr in self.f.items():
            self.f[name] = np.zeros((arr.shape[0], cap))
            self.f[name][:, : self.capacity] = arr
        for name, iarr in self.i.items():
            self.i[name] = np.zeros((iarr.shape[0], cap), dtype=np.int64)
            self.i[name][:, : self.capacity] = iarr
        self.capacity = cap


class _Cycle(NamedTuple):
    foot_s: float
    sys_s: float
    lo: float
    pp: float
    tau_s: float


def _cycle_value(c: _Cycle, t_s: float, table: NDArray[np.float64], floor: float) -> float:
    """The value of a pulse cycle at ``t_s`` (the formula of the ``add_cycles`` kernel)."""
    u = t_s - c.foot_s
    if u < 0.0:
        return c.lo
    if u < c.sys_s:
        j = int(u / c.sys_s * (table.shape[0] - 1) + 0.5)
        return c.lo + c.pp * float(table[j])
    top = c.lo + c.pp * float(table[-1])
    return floor + (top - floor) * math.exp(-(u - c.sys_s) / c.tau_s)


def _new_cycle(
    prev: _Cycle | None,
    foot_s: float,
    sys_s: float,
    rr_nom_s: float,
    systole_nom_s: float,
    hi_set: float,
    lo_set: float,
    floor: float,
    table: NDArray[np.float64],
    pp_scale: float,
) -> _Cycle:
    """The next pulse cycle: it starts where the previous one has decayed to by its foot.

    The decay constant makes a cycle of the nominal period end exactly at ``lo_set`` when it
    started there with the nominal pulse ``hi_set - lo_set``.
    """
    lo = lo_set if prev is None else _cycle_value(prev, foot_s, table, floor)
    top_nom = lo_set + float(table[-1]) * (hi_set - lo_set)
    ratio = (top_nom - floor) / (lo_set - floor)
    tau_s = max(rr_nom_s - systole_nom_s, 0.02) / math.log(max(ratio, 1.0001))
    return _Cycle(foot_s, sys_s, lo, (hi_set - lo_set) * pp_scale, tau_s)


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _hash_normal(seed: int, stream: int, k: int) -> float:
    """An approximately standard normal number that depends only on (seed, stream, k)."""
    x = _splitmix((seed * 1_000_003 + stream) * 0x100000001B3 + k)
    total = 0.0
    for _ in range(4):
        x = _splitmix(x)
        total += (x >> 11) * (1.0 / 9007199254740992.0)
    return (total - 2.0) * math.sqrt(3.0)


class Beats(NamedTuple):
    """Ground-truth beats: R-peak times, kind codes (BEAT_KINDS), and whether a pulse followed."""

    t_s: NDArray[np.float64]
    kind: NDArray[np.int64]
    pulse: NDArray[np.bool_]


# ---------------------------------------------------------------------------------------------
# One bed: schedules beats and breaths into the bank's rows, and reads its numerics


class _Bed:
    def __init__(
        self,
        bank: BedSynthBank,
        row: int,
        plan: Plan,
        seed: int,
        nibp_interval_s: float,
        nibp_first_s: float,
        history_s: float,
    ) -> None:
        self.bank = bank
        self.row = row
        self.plan = plan
        self.seed = seed
        p = plan.patient
        self._beat_rng = np.random.default_rng([seed, 2])
        self._breath_rng = np.random.default_rng([seed, 3])
        self._lf_phase = float(np.random.default_rng([seed, 4]).random() * 2.0 * math.pi)
        self._t_next = -3.0  # the next beat to schedule
        self._next_kind: int | None = None  # its kind, when not the rhythm's (an ectopic beat)
        self._queue: list[tuple[float, int | None]] = []  # the beats after it, when known
        self._ectopy_rng = np.random.default_rng([seed, 6])
        self._rr_prev = 60.0 / p.hr_bpm
        self._breath_next = -15.0
        self._abp: _Cycle | None = None
        self._ppg: _Cycle | None = None
        self._log: list[Beats] = []
        self._history_s = history_s
        self._nibp_interval_s = nibp_interval_s
        self._nibp_first_s = nibp_first_s
        self._nibp_next = 0  # index of the next cuff reading to report
        self._lead_off = tuple(e for e in plan.episodes if e.label == LEAD_OFF)
        self._probe_off = tuple(e for e in plan.episodes if e.label == SPO2_PROBE_OFF)
        self._offline = tuple(e for e in plan.episodes if e.label == GATEWAY_OFFLINE)

    # -- scheduling ------------------------------------------------------------------------

    def prepare(self, t_now_s: float, horizon_s: float) -> None:
        """Schedule beats (and the breaths they need) past ``horizon_s``; forget old events."""
        if self._t_next > horizon_s and self._breath_next > horizon_s:
            return
        self._compact(t_now_s)
        while self._t_next <= horizon_s:
            self._beat_batch()
        self._breaths_until(horizon_s)

    def _compact(self, t_now_s: float) -> None:
        bank, r = self.bank, self.row
        ecg = bank.ecg
        c = int(ecg.count[r])
        if c:
            ecg.drop(r, ecg.f["t"][r, :c] >= t_now_s - _ECG_RETAIN_S)
        cutoff = t_now_s - _RETAIN_S
        for rows, key in (
            (bank.beats, "t"),
            (bank.abp, "foot"),
            (bank.ppg, "foot"),
            (bank.breaths, "foot"),
        ):
            c = int(rows.count[r])
            if c < 2:
                continue
            # keep the last event at or before the cutoff: its cycle may still be running
            first = max(int(np.searchsorted(rows.f[key][r, :c], cutoff, side="right")) - 1, 0)
            if first > 0:
                keep = np.zeros(c, dtype=bool)
                keep[first:] = True
                rows.drop(r, keep)
        old = t_now_s - self._history_s
        while self._log and self._log[0].t_s.shape[0] and self._log[0].t_s[-1] < old:
            self._log.pop(0)

    def _breaths_until(self, t_s: float) -> None:
        while self._breath_next <= t_s:
            self._breath_batch()

    def _breath_batch(self) -> None:
        plan, p = self.plan, self.plan.patient
        z = self._breath_rng.standard_normal((_BREATH_BATCH, 2))
        feet: list[float] = []
        dur: list[float] = []
        amp: list[float] = []
        t = self._breath_next
        for j in range(_BREATH_BATCH):
            period_s = 60.0 / plan.vitals(t).rr_bpm
            d = period_s * min(1.4, max(0.7, 1.0 + 0.07 * z[j, 0]))
            feet.append(t)
            dur.append(d)
            amp.append(p.resp_amp * max(0.5, 1.0 + 0.08 * z[j, 1]))
            t += d
        self._breath_next = t
        k = len(feet)
        self.bank.breaths.append(
            self.row, {"foot": feet, "sys": dur, "lo": [0.0] * k, "pp": amp, "tau": [1.0] * k}
        )

    def _breath_phase(self, t_s: float) -> float:
        self._breaths_until(t_s)
        rows, r = self.bank.breaths, self.row
        c = int(rows.count[r])
        feet = rows.f["foot"][r, :c]
        k = max(int(np.searchsorted(feet, t_s, side="right")) - 1, 0)
        return (t_s - feet[k]) / rows.f["sys"][r, k]

    def _beat_batch(self) -> None:
        plan, p = self.plan, self.plan.patient
        z = self._beat_rng.standard_normal((_BEAT_BATCH, 3))
        two_pi = 2.0 * math.pi
        ev_t: list[float] = []
        ev_kind: list[int] = []
        ev_amp: list[float] = []
        beat_t: list[float] = []
        beat_kind: list[int] = []
        beat_pulse: list[bool] = []
        abp: list[_Cycle] = []
        ppg: list[_Cycle] = []
        t = self._t_next
        for j in range(_BEAT_BATCH):
            if t == math.inf:
                break
            rhythm = plan.rhythm(t)
            kind = self._next_kind if self._next_kind is not None else _BEAT_KIND[rhythm]
            v = plan.vitals(t)
            phase = self._breath_phase(t)
            rr_nom = 60.0 / v.hr_bpm
            if rhythm == AFIB:
                rr = rr_nom * math.exp(_AF_RR_SIGMA * z[j, 0] - 0.5 * _AF_RR_SIGMA**2)
                rr = max(rr, _AF_MIN_RR_S)
            elif rhythm == VTACH:
                rr = rr_nom * (1.0 + 0.015 * z[j, 0])
            elif rhythm == PACED:
                rr = rr_nom  # the pacemaker's fixed interval
            else:
                rr = rr_nom * (
                    1.0
                    - p.rsa_frac * math.sin(two_pi * phase)
                    + p.lf_frac * math.sin(two_pi * 0.1 * t + self._lf_phase)
                    + p.jitter_frac * z[j, 0]
                )
            t_next, next_kind = self._next_beat(t, rr, kind, rhythm)
            if plan.rhythm(t_next) in (ASYSTOLE, VFIB):
                t_next = plan.pause_end(t_next)
            self._next_kind = next_kind
            rr_prev = self._rr_prev
            # ECG: the complex at the R peak, the T wave where the QT of the last period puts it
            if kind == VTACH:
                t_off = _VT_T_OFFSET_S
            else:
                qt_s = p.qtc_s * min(max(rr_prev, 0.3), 2.0) ** (1.0 / 3.0)  # Fridericia
                t_off = qt_s + _QRS_ONSET_S - _T_PEAK_TO_END_S
            amp = 1.0 + 0.05 * math.cos(two_pi * phase) + 0.01 * z[j, 1]
            ev_t += (t, t + t_off)
            ev_kind += (2 * kind, 2 * kind + 1)
            ev_amp += (amp, amp)
            if rhythm == VTACH:  # the sinus node goes on: P waves march through the run
                for t_p in plan.dissociated_p_s(t, t_next):
                    ev_t.append(t_p)
                    ev_kind.append(_P_ALONE_ROW)
                    ev_amp.append(1.0)
            # Pulses: in AF the filling time before the beat sets its stroke (pulse deficit).
            # So does it for an ectopic beat and for the beat after its pause (which ejects
            # more: post-extrasystolic potentiation).
            fill = 1.0
            if rhythm == AFIB or plan.ectopy(t) is not None:
                fill = min(1.4, max(0.0, (rr_prev - 0.3) / max(rr_nom - 0.3, 0.05)))
            pulse = fill >= _PULSE_DEFICIT_FILL
            if pulse:
                rr_cycle = min(t_next - t, 10.0)
                resp = math.cos(two_pi * phase)
                s_nom = _abp_systole_s(rr_nom)
                self._abp = _new_cycle(
                    self._abp,
                    t + p.ptt_abp_s,
                    min(s_nom, 0.8 * rr_cycle),
                    rr_nom,
                    s_nom,
                    v.sys_mmhg,
                    v.dia_mmhg,
                    _ABP_FLOOR_MMHG,
                    ABP_TABLE,
                    math.sqrt(fill) * (1.0 + 0.04 * resp),
                )
                abp.append(self._abp)
                s_nom = _ppg_systole_s(rr_nom)
                self._ppg = _new_cycle(
                    self._ppg,
                    t + p.ptt_ppg_s,
                    min(s_nom, 0.8 * rr_cycle),
                    rr_nom,
                    s_nom,
                    _PPG_LOW + p.ppg_amp * v.perfusion,
                    _PPG_LOW,
                    0.0,
                    PPG_TABLE,
                    math.sqrt(fill) * (1.0 + 0.08 * resp),
                )
                ppg.append(self._ppg)
            beat_t.append(t)
            beat_kind.append(kind)
            beat_pulse.append(pulse)
            self._rr_prev = t_next - t
            t = t_next
        self._t_next = t
        bank, r = self.bank, self.row
        bank.ecg.append(r, {"t": ev_t, "amp": ev_amp, "kind": ev_kind})
        bank.beats.append(r, {"t": beat_t})
        for rows, cycles in ((bank.abp, abp), (bank.ppg, ppg)):
            if cycles:
                cols = list(zip(*cycles, strict=True))
                rows.append(
                    r,
                    {"foot": cols[0], "sys": cols[1], "lo": cols[2], "pp": cols[3], "tau": cols[4]},
                )
        self._log.append(
            Beats(
                np.array(beat_t, dtype=np.float64),
                np.array(beat_kind, dtype=np.int64),
                np.array(beat_pulse, dtype=bool),
            )
        )

    def _next_beat(self, t: float, rr: float, kind: int, rhythm: int) -> tuple[float, int | None]:
        """The time and kind (None: the rhythm's) of the beat after the one at ``t``, whose
        own rhythm would put the next beat ``rr`` later.

        During ectopy a sinus beat may be followed by a PVC at the coupling interval (bigeminy:
        always; the "pvc" scenario: by chance, sometimes a couplet); the sinus node is not
        reset, so the next sinus beat comes two sinus intervals after the last one (a full
        compensatory pause)."""
        if self._queue:
            return self._queue.pop(0)
        ectopy = self.plan.ectopy(t) if kind == _BEAT_KIND[SINUS] and rhythm == SINUS else None
        if ectopy is None:
            return t + rr, None
        u = self._ectopy_rng.random(2)
        if ectopy != BIGEMINY_LABEL and u[0] >= PVC_CHANCE:
            return t + rr, None
        coupling_s = PVC_COUPLING * rr
        if ectopy != BIGEMINY_LABEL and u[1] < COUPLET_CHANCE:
            self._queue.append((t + coupling_s * (1.0 + COUPLET_INTERVAL), _BEAT_KIND[VTACH]))
        self._queue.append((t + 2.0 * rr, None))
        return t + coupling_s, _BEAT_KIND[VTACH]

    # -- ground truth --------------------------------------------------------------------

    def truth(self, t_s: float) -> list[Episode]:
        return [e for e in self.plan.episodes if e.start_s <= t_s]

    def truth_beats(self, start_s: float, end_s: float) -> Beats:
        if not self._log:
            return Beats(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
        t = np.concatenate([b.t_s for b in self._log])
        sel = (t >= start_s) & (t < end_s)
        return Beats(
            t[sel],
            np.concatenate([b.kind for b in self._log])[sel],
            np.concatenate([b.pulse for b in self._log])[sel],
        )

    def connected(self, t_s: float) -> bool:
        return not any(e.contains(t_s) for e in self._offline)

    # -- numerics ------------------------------------------------------------------------

    def numerics(
        self, t_s: float, hr: float, pr: float, rr: float, abp: NDArray[np.float64]
    ) -> dict[str, float | None]:
        """The numerics at ``t_s`` from rates and pressures the bank computed (NaN: none)."""
        v = self.plan.vitals(t_s)
        second = math.floor(t_s)
        lead_off = any(e.contains(t_s) for e in self._lead_off)
        probe_off = any(e.contains(t_s) for e in self._probe_off)
        no_pulse = math.isnan(pr) or pr == 0.0
        out: dict[str, float | None] = {}
        out["HR"] = None if lead_off else _value(hr)
        out["PR"] = None if probe_off else _value(pr)
        if probe_off or no_pulse:
            out["SPO2"] = None  # no pulse, no saturation
        else:
            spo2 = v.spo2_pct + 0.4 * _hash_normal(self.seed, 1, second)
            out["SPO2"] = float(min(100.0, round(spo2)))
        out["RR"] = _value(rr)
        out["TEMP"] = float(round(v.temp_c + 0.03 * _hash_normal(self.seed, 2, second // 10), 1))
        if math.isnan(abp[0]):  # before the first pulse: the setpoints
            abp = np.array([v.sys_mmhg, v.dia_mmhg, (v.sys_mmhg + 2.0 * v.dia_mmhg) / 3.0])
        out["ABP_SYS"], out["ABP_DIA"], out["ABP_MEAN"] = (float(round(x)) for x in abp)
        # cuff reading k completes at nibp_first_s + k * nibp_interval_s; report the latest
        k = math.floor((t_s - self._nibp_first_s) / self._nibp_interval_s)
        if k >= self._nibp_next:
            self._nibp_next = k + 1
            # the cuff reads the arterial pressure with a small error; no pulse, no reading
            if no_pulse:
                out["NIBP_SYS"] = out["NIBP_DIA"] = out["NIBP_MEAN"] = None
            else:
                err = [3.0 * _hash_normal(self.seed, 3 + i, k) for i in range(3)]
                out["NIBP_SYS"] = float(round(abp[0] + err[0]))
                out["NIBP_DIA"] = float(round(abp[1] + err[1]))
                out["NIBP_MEAN"] = float(round(abp[2] + err[2]))
        out["ACVPU"] = float(v.acvpu)
        out["O2"] = float(v.o2)
        return out


def _value(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


# ---------------------------------------------------------------------------------------------
# The bank


def _check_fs(fs_hz: Mapping[str, float] | None) -> dict[str, float]:
    rates = dict(DEFAULT_FS_HZ)
    for key, value in (fs_hz or {}).items():
        if key not in DEFAULT_FS_HZ:
            raise ValueError(f"fs_hz: unknown signal {key!r}; expected {', '.join(DEFAULT_FS_HZ)}")
        sig = SIGNAL_BY_KEY[key]
        if not (sig.fs_min_hz <= value <= sig.fs_max_hz):
            raise ValueError(
                f"fs_hz[{key!r}] = {value} outside {sig.fs_min_hz}..{sig.fs_max_hz} Hz"
            )
        rates[key] = float(value)
    return rates


class _Episodes:
    """Episodes of one label across beds: (beds, n) start and end arrays and counts."""

    def __init__(self, plans: Sequence[Plan], label: str) -> None:
        eps = [[e for e in plan.episodes if e.label == label] for plan in plans]
        n = max(1, max(len(x) for x in eps))
        self.start_s = np.zeros((len(plans), n))
        self.end_s = np.zeros((len(plans), n))
        self.count = np.array([len(x) for x in eps], dtype=np.int64)
        for b, x in enumerate(eps):
            for k, e in enumerate(x):
                self.start_s[b, k] = e.start_s
                self.end_s[b, k] = e.end_s


class BedSynthBank:
    """Many synthetic beds advanced together: each signal comes out as a (beds, samples) array.

    Bed ``b`` of a bank gives exactly the samples of ``BedSynth(scenarios[b], seeds[b])`` with the
    same options.
    """

    def __init__(
        self,
        scenarios: Sequence[str],
        seeds: Sequence[int],
        *,
        time_scale: float = 1.0,
        fs_hz: Mapping[str, float] | None = None,
        onset_s: float | None = None,
        duration_s: float | None = None,
        nibp_interval_s: float = 300.0,
        nibp_first_s: float = 20.0,
        history_s: float = 600.0,
        events_at_s: float | None = None,
    ) -> None:
        """``events_at_s``: every scenario's main event (or the start of the sepsis course)
        happens this many simulated seconds after the start, whatever the scenario's own
        timing; it excludes ``onset_s``, which is in each scenario's own clock."""
        if events_at_s is not None and (onset_s is not None or not events_at_s >= 0.0):
            raise ValueError(
                f"events_at_s must be >= 0 and excludes onset_s, got {events_at_s}, {onset_s}"
            )
        if len(scenarios) != len(seeds) or len(seeds) == 0:
            raise ValueError(
                f"need one scenario per seed and >= 1 bed, got {len(scenarios)}, {len(seeds)}"
            )
        if not nibp_interval_s > 0.0 or not nibp_first_s >= 0.0 or not history_s >= 0.0:
            raise ValueError(
                "need nibp_interval_s > 0, nibp_first_s >= 0 and history_s >= 0, got "
                f"{nibp_interval_s}, {nibp_first_s}, {history_s}"
            )
        self.fs_hz: dict[str, float] = _check_fs(fs_hz)

        def onset_of(scenario: str) -> float | None:
            if events_at_s is None:
                return onset_s
            return events_at_s * time_scale if scenario == "sepsis" else events_at_s

        self.plans = tuple(
            make_plan(
                s, int(seed), time_scale=time_scale, onset_s=onset_of(s), duration_s=duration_s
            )
            for s, seed in zip(scenarios, seeds, strict=True)
        )
        n = len(self.plans)
        self.ecg = _Rows(n, 64, ("t", "amp"), ("kind",))
        self.beats = _Rows(n, 256, ("t",))
        cycle_fields = ("foot", "sys", "lo", "pp", "tau")
        self.abp = _Rows(n, 256, cycle_fields)
        self.ppg = _Rows(n, 256, cycle_fields)
        self.breaths = _Rows(n, 64, cycle_fields)
        self._beds = [
            _Bed(self, b, plan, int(seed), nibp_interval_s, nibp_first_s, history_s)
            for b, (plan, seed) in enumerate(zip(self.plans, seeds, strict=True))
        ]
        self._t_s = 0.0
        self._n = dict.fromkeys(self.fs_hz, 0)
        # per-bed constants of the renderers
        pats = [plan.patient for plan in self.plans]
        u = np.array([np.random.default_rng([int(s), 5]).random(4) for s in seeds])
        base = (u[:, 0] * (1 << 30)).astype(np.int64)
        self._noise_offset = {  # a different stretch of the noise table per bed and signal
            key: (base + 7919 * col) % WHITE_NOISE.shape[0] for col, key in enumerate(self.fs_hz)
        }
        self._ecg_gain = np.array([p.ecg_gain for p in pats])
        resp_amp = np.array([p.resp_amp for p in pats])
        self._ecg_wander = 0.08 / resp_amp  # mV of baseline per unit breath
        self._ppg_wander = 0.03 / resp_amp
        self._drift_amp = 0.03 + 0.03 * u[:, 1]
        self._drift_hz = 0.02 + 0.05 * u[:, 2]
        self._drift_phase = u[:, 3] * 2.0 * np.pi
        self._fwave_hz = np.array([p.fwave_hz for p in pats])
        self._vf_hz = np.array([p.vf_hz for p in pats])
        self._ones = np.ones(n)
        self._zeros = np.zeros(n)
        self._floor_abp = np.full(n, _ABP_FLOOR_MMHG)
        self._scale = {
            "ECG_II": np.full(n, 0.012),
            "ECG_V": np.full(n, 0.012),
            "PLETH": np.full(n, 0.003),
            "ABP": np.full(n, 0.3),
            "RESP": 0.01 * resp_amp,
        }
        self._fwave_amp = (np.full(n, 0.05), np.full(n, 0.09))
        self._vf_amp = (np.full(n, 0.6), np.full(n, 0.8))  # coarse VF, mV (before lead gain)
        self._motion_amp = np.full(n, 0.6)
        self._af = _Episodes(self.plans, AFIB_LABEL)
        self._vf = _Episodes(self.plans, VFIB_LABEL)
        self._artefact = _Episodes(self.plans, ARTEFACT)
        self._lead_off = _Episodes(self.plans, LEAD_OFF)
        self._probe_off = _Episodes(self.plans, SPO2_PROBE_OFF)

    def __len__(self) -> int:
        return len(self._beds)

    @property
    def t_s(self) -> float:
        """Simulated seconds since the start: the time just after the last sample generated."""
        return self._t_s

    def waveforms(self, n_seconds: float) -> dict[str, NDArray[np.float64]]:
        """The next ``n_seconds`` of every signal: {key: array of shape (beds, samples)}."""
        if not (n_seconds >= 0.0 and math.isfinite(n_seconds)):
            raise ValueError(f"n_seconds must be a finite number >= 0, got {n_seconds}")
        t0_s = self._t_s
        t1_s = t0_s + float(n_seconds)
        horizon_s = t1_s + _LOOKAHEAD_S
        for bed in self._beds:
            bed.prepare(t0_s, horizon_s)
        out: dict[str, NDArray[np.float64]] = {}
        n_beds = len(self._beds)
        for key, fs in self.fs_hz.items():
            n0 = self._n[key]
            n1 = math.floor(t1_s * fs + _SAMPLE_EPS)
            x = np.zeros((n_beds, max(n1 - n0, 0)))
            self._render(key, x, n0, fs)
            self._n[key] = max(n1, n0)
            out[key] = x
        self._t_s = t1_s
        return out

    def skip(self, n_seconds: float) -> None:
        """Move on ``n_seconds`` without rendering the waveforms: the numerics, episodes and
        later waveforms are those after :meth:`waveforms` of the same length (for a consumer of
        the numerics alone)."""
        if not (n_seconds >= 0.0 and math.isfinite(n_seconds)):
            raise ValueError(f"n_seconds must be a finite number >= 0, got {n_seconds}")
        t1_s = self._t_s + float(n_seconds)
        for key, fs in self.fs_hz.items():
            self._n[key] = max(math.floor(t1_s * fs + _SAMPLE_EPS), self._n[key])
        self._t_s = t1_s

    def _render(self, key: str, x: NDArray[np.float64], n0: int, fs: float) -> None:
        noise_off = self._noise_offset[key]
        br = self.breaths.f
        if key in ("ECG_II", "ECG_V"):
            lead = 0 if key == "ECG_II" else 1
            e = self.ecg
            table = ECG_TABLE_II if lead == 0 else ECG_TABLE_V
            K.add_templates(
                x,
                n0,
                fs,
                e.f["t"],
                e.i["kind"],
                e.f["amp"],
                e.count,
                table,
                ECG_TABLE_T0_S,
                TABLE_FS_HZ,
            )
            f = self._vf
            K.add_vf(x, n0, fs, f.start_s, f.end_s, f.count, self._vf_hz, self._vf_amp[lead])
            x *= self._ecg_gain[:, lead : lead + 1]
            K.add_cycles(
                x, n0, fs, br["foot"], br["sys"], br["lo"], br["pp"], br["tau"],
                self._zeros, self.breaths.count, BREATH_TABLE, self._ecg_wander,
            )  # fmt: skip
            K.add_drift(x, n0, fs, self._drift_amp, self._drift_hz, self._drift_phase)
            K.add_noise(x, n0, self._scale[key], WHITE_NOISE, noise_off)
            a = self._af
            K.add_fwaves(
                x, n0, fs, a.start_s, a.end_s, a.count, self._fwave_hz, self._fwave_amp[lead]
            )
            m = self._artefact
            K.add_bursts(
                x, n0, fs, m.start_s, m.end_s, m.count, self._motion_amp, MOTION_NOISE, noise_off
            )
            o = self._lead_off
            K.blank(x, n0, fs, o.start_s, o.end_s, o.count)
        elif key == "ABP":
            c = self.abp.f
            K.add_cycles(
                x, n0, fs, c["foot"], c["sys"], c["lo"], c["pp"], c["tau"],
                self._floor_abp, self.abp.count, ABP_TABLE, self._ones,
            )  # fmt: skip
            K.add_noise(x, n0, self._scale[key], WHITE_NOISE, noise_off)
        elif key == "PLETH":
            c = self.ppg.f
            K.add_cycles(
                x, n0, fs, c["foot"], c["sys"], c["lo"], c["pp"], c["tau"],
                self._zeros, self.ppg.count, PPG_TABLE, self._ones,
            )  # fmt: skip
            K.add_cycles(
                x, n0, fs, br["foot"], br["sys"], br["lo"], br["pp"], br["tau"],
                self._zeros, self.breaths.count, BREATH_TABLE, self._ppg_wander,
            )  # fmt: skip
            K.add_noise(x, n0, self._scale[key], WHITE_NOISE, noise_off)
            p = self._probe_off
            K.blank(x, n0, fs, p.start_s, p.end_s, p.count)
        else:  # RESP
            K.add_cycles(
                x, n0, fs, br["foot"], br["sys"], br["lo"], br["pp"], br["tau"],
                self._zeros, self.breaths.count, BREATH_TABLE, self._ones,
            )  # fmt: skip
            K.add_noise(x, n0, self._scale[key], WHITE_NOISE, noise_off)

    def numerics(self) -> list[dict[str, float | None]]:
        """Each bed's numerics now (NIBP keys only when a cuff reading completes)."""
        t_s = self._t_s
        for bed in self._beds:  # the beats and breaths up to now, also before any waveform
            bed.prepare(t_s, t_s + _LOOKAHEAD_S)
        hr = K.rates_bpm(self.beats.f["t"], self.beats.count, t_s, 8, 0.2, 3.0)
        pr = K.rates_bpm(self.ppg.f["foot"], self.ppg.count, t_s, 8, 0.2, 3.0)
        rr = K.rates_bpm(self.breaths.f["foot"], self.breaths.count, t_s, 4, 1.0, 20.0)
        a = self.abp
        abp = K.pressure_summary(
            a.f["foot"], a.f["sys"], a.f["lo"], a.f["pp"], a.f["tau"], a.count,
            self._floor_abp, t_s, ABP_TABLE, _ABP_MEAN_FRAC, 4,
        )  # fmt: skip
        return [
            bed.numerics(t_s, float(hr[b]), float(pr[b]), float(rr[b]), abp[b])
            for b, bed in enumerate(self._beds)
        ]

    def truth(self, bed: int) -> list[Episode]:
        """The ground-truth episodes of ``bed`` that have started by now."""
        return self._beds[bed].truth(self._t_s)

    def truth_beats(self, bed: int, start_s: float = -math.inf, end_s: float = math.inf) -> Beats:
        """The beats of ``bed`` with R peaks in ``[start_s, end_s)`` up to now (within history)."""
        return self._beds[bed].truth_beats(start_s, min(end_s, self._t_s))

    def connected(self, t_s: float) -> NDArray[np.bool_]:
        """Per bed: whether its gateway is online at ``t_s``."""
        return np.array([bed.connected(t_s) for bed in self._beds], dtype=bool)


class BedSynth:
    """One synthetic bed. See :mod:`simulators.synth` and docs/simulators.md."""

    def __init__(
        self,
        scenario: str = "stable",
        seed: int = 0,
        *,
        time_scale: float = 1.0,
        fs_hz: Mapping[str, float] | None = None,
        onset_s: float | None = None,
        duration_s: float | None = None,
        nibp_interval_s: float = 300.0,
        nibp_first_s: float = 20.0,
        history_s: float = 600.0,
        events_at_s: float | None = None,
    ) -> None:
        self._bank = BedSynthBank(
            [scenario],
            [seed],
            time_scale=time_scale,
            fs_hz=fs_hz,
            onset_s=onset_s,
            duration_s=duration_s,
            nibp_interval_s=nibp_interval_s,
            nibp_first_s=nibp_first_s,
            history_s=history_s,
            events_at_s=events_at_s,
        )
        self.scenario = scenario
        self.seed = seed
        self.plan: Plan = self._bank.plans[0]
        self.fs_hz: dict[str, float] = self._bank.fs_hz

    @property
    def t_s(self) -> float:
        """Simulated seconds since the start."""
        return self._bank.t_s

    def waveforms(self, n_seconds: float) -> dict[str, NDArray[np.float64]]:
        """The next consecutive samples of each signal over ``n_seconds``; NaN where absent."""
        return {k: v[0] for k, v in self._bank.waveforms(n_seconds).items()}

    def numerics(self) -> dict[str, float | None]:
        """The numerics at the current simulated time."""
        return self._bank.numerics()[0]

    @property
    def truth(self) -> list[Episode]:
        """Ground-truth episodes that have started by now (an end may lie ahead, or be inf)."""
        return self._bank.truth(0)

    def truth_beats(self, start_s: float = -math.inf, end_s: float = math.inf) -> Beats:
        """Ground-truth beats with R peaks in ``[start_s, end_s)`` up to now."""
        return self._bank.truth_beats(0, start_s, end_s)

    def connected(self, t_s: float) -> bool:
        """False while the gateway of the disconnect scenario is offline."""
        return bool(self._bank.connected(t_s)[0])
