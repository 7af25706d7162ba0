"""Streaming beat detectors that own the state of :mod:`eicu.kernels.beats`.

``BeatDetector.ecg(fs_hz)`` finds QRS complexes, ``BeatDetector.pulse(fs_hz)`` finds arterial
pressure and plethysmogram pulses. ``push(samples)`` takes consecutive samples (NaN = missing)
and returns the beats that became certain with them, as global sample indices; the beats of a
record pushed in chunks of any size are exactly those of the record pushed whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal as sps

from eicu.kernels import beats as k

Kind = Literal["ecg", "pulse", "ecg_abs"]
_MODE: dict[str, int] = {"ecg": 0, "pulse": 1, "ecg_abs": 2}


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Detector constants for one kind of signal; times in seconds, bands in Hz."""

    kind: Kind
    band_hz: tuple[float, float]
    filter_order: int
    mwi_s: float
    refractory_s: float
    twave_s: float
    twave_ratio: float  # of the feature's slope measure (ECG: squared slope)
    confirm_s: float
    settle_s: float
    learn_s: float
    thr_coef: float
    searchback_factor: float
    searchback_thr: float
    rr0_s: float
    decay_floor: float
    decay_min: float


ECG_CONFIG = DetectorConfig(
    kind="ecg",
    band_hz=(5.0, 15.0),
    filter_order=2,
    mwi_s=0.150,
    refractory_s=0.200,
    twave_s=0.360,
    twave_ratio=0.25,
    confirm_s=0.150,
    settle_s=0.5,
    learn_s=2.0,
    thr_coef=0.25,
    searchback_factor=1.66,
    searchback_thr=0.5,
    rr0_s=1.0,
    decay_floor=3.0,
    decay_min=0.125,
)

# A second, differently built QRS detector (other band, absolute slope, shorter integral): where
# it and the main detector disagree, the ECG is noisy (the bSQI idea of Li, Mark and Clifford).
ECG_ALT_CONFIG = DetectorConfig(
    kind="ecg_abs",
    band_hz=(8.0, 20.0),
    filter_order=2,
    mwi_s=0.100,
    refractory_s=0.200,
    twave_s=0.360,
    twave_ratio=0.5,
    confirm_s=0.150,
    settle_s=0.5,
    learn_s=2.0,
    thr_coef=0.3,
    searchback_factor=1.66,
    searchback_thr=0.5,
    rr0_s=1.0,
    decay_floor=3.0,
    decay_min=0.125,
)

PULSE_CONFIG = DetectorConfig(
    kind="pulse",
    band_hz=(0.5, 8.0),
    filter_order=2,
    mwi_s=0.128,
    refractory_s=0.250,
    twave_s=0.45,
    twave_ratio=0.3,
    confirm_s=0.200,
    settle_s=1.0,
    learn_s=3.0,
    thr_coef=0.35,
    searchback_factor=1.66,
    searchback_thr=0.5,
    rr0_s=1.0,
    decay_floor=3.0,
    decay_min=0.125,
)


def _design(config: DetectorConfig, fs_hz: float) -> tuple[NDArray[np.float64], int]:
    """The detector's band-pass sections (a fresh copy) and their group delay in samples at the
    band's centre; designed once per configuration and rate (every bed asks for the same few)."""
    sos, gd_n = _design_cached(config, fs_hz)
    return sos.copy(), gd_n


@lru_cache(maxsize=64)
def _design_cached(config: DetectorConfig, fs_hz: float) -> tuple[NDArray[np.float64], int]:
    lo, hi = config.band_hz
    nyq = fs_hz / 2.0
    if hi >= nyq:
        raise ValueError(f"fs_hz={fs_hz} is too low for a {config.kind} band of {lo}-{hi} Hz")
    sos = sps.butter(config.filter_order, [lo, hi], btype="bandpass", fs=fs_hz, output="sos")
    b, a = sps.sos2tf(sos)
    centre_hz = float(np.sqrt(lo * hi))
    _, gd = sps.group_delay((b, a), w=[centre_hz], fs=fs_hz)
    return np.ascontiguousarray(sos, dtype=np.float64), round(float(gd[0]))


class DetectedBeats(NamedTuple):
    """Beats found in one push, in time order."""

    sample: NDArray[np.int64]  # global sample index of each beat's fiducial point
    amplitude: NDArray[np.float64]  # the detector's integral at the beat (arbitrary units)
    decided_at: NDArray[np.int64]  # samples consumed when the beat became certain


def _read_only(a: NDArray[Any]) -> NDArray[Any]:
    a.flags.writeable = False
    return a


NO_BEATS: Final = DetectedBeats(
    _read_only(np.empty(0, dtype=np.int64)),
    _read_only(np.empty(0, dtype=np.float64)),
    _read_only(np.empty(0, dtype=np.int64)),
)


class BeatDetector:
    """Causal beat detector for one signal of one bed."""

    def __init__(self, fs_hz: float, config: DetectorConfig = ECG_CONFIG) -> None:
        if not (np.isfinite(fs_hz) and fs_hz > 0):
            raise ValueError(f"fs_hz must be a positive number, got {fs_hz!r}")
        self.fs_hz = float(fs_hz)
        self.config = config
        self._sos, gd_n = _design(config, self.fs_hz)

        def n(seconds: float) -> int:
            return max(1, round(seconds * self.fs_hz))

        mwi_n = n(config.mwi_s)
        fid_back_n = mwi_n + n(0.05)
        span = fid_back_n + n(config.confirm_s) + mwi_n + 4
        ring = 1 << int(np.ceil(np.log2(max(span, n(1.0)))))
        ip = np.zeros(k.N_IPARAMS, dtype=np.int64)
        ip[k.P_MODE] = _MODE[config.kind]
        ip[k.P_MWI_N] = mwi_n
        ip[k.P_REFR_N] = n(config.refractory_s)
        ip[k.P_TWAVE_N] = round(config.twave_s * self.fs_hz)
        ip[k.P_CONFIRM_N] = n(config.confirm_s)
        ip[k.P_SETTLE_N] = n(config.settle_s)
        ip[k.P_LEARN_N] = n(config.learn_s)
        ip[k.P_GD_N] = gd_n
        ip[k.P_MASK] = ring - 1
        ip[k.P_FID_BACK_N] = fid_back_n
        fp = np.zeros(k.N_FPARAMS, dtype=np.float64)
        fp[k.Q_THR_COEF] = config.thr_coef
        fp[k.Q_SB_FACTOR] = config.searchback_factor
        fp[k.Q_SB_THR] = config.searchback_thr
        fp[k.Q_RR0_N] = config.rr0_s * self.fs_hz
        fp[k.Q_DECAY_FLOOR] = config.decay_floor
        fp[k.Q_DECAY_MIN] = config.decay_min
        fp[k.Q_TWAVE_RATIO] = config.twave_ratio
        self._ip = ip
        self._fp = fp
        self._refr_n = int(ip[k.P_REFR_N])
        self._si = np.zeros(k.N_ISTATE, dtype=np.int64)
        self._si[k.S_GAP] = 1
        self._si[k.S_LAST_QRS] = -1
        self._si[k.S_CAND_I] = -1
        self._si[k.S_LAST_FID] = -(1 << 62)
        self._sf = np.zeros(k.N_FSTATE, dtype=np.float64)
        self._zi = np.zeros((self._sos.shape[0], 2), dtype=np.float64)
        self._ring_bp = np.zeros(ring, dtype=np.float64)
        self._ring_f = np.zeros(ring, dtype=np.float64)
        self._rr = np.zeros(k.N_RR, dtype=np.float64)
        self._cand_idx = np.zeros(k.N_CAND, dtype=np.int64)
        self._cand_val = np.zeros(k.N_CAND, dtype=np.float64)
        self._cand_slope = np.zeros(k.N_CAND, dtype=np.float64)
        self._cand_fid = np.zeros(k.N_CAND, dtype=np.int64)
        self._out_idx = np.empty(0, dtype=np.int64)
        self._out_amp = np.empty(0, dtype=np.float64)
        self._out_at = np.empty(0, dtype=np.int64)

    @classmethod
    def ecg(cls, fs_hz: float) -> BeatDetector:
        return cls(fs_hz, ECG_CONFIG)

    @classmethod
    def pulse(cls, fs_hz: float) -> BeatDetector:
        return cls(fs_hz, PULSE_CONFIG)

    @property
    def next_index(self) -> int:
        """Global index of the next sample ``push`` expects."""
        return int(self._si[k.S_G])

    def push(self, samples: ArrayLike) -> DetectedBeats:
        """Feed consecutive samples; return the beats that became certain with them."""
        x = np.ascontiguousarray(samples, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {x.shape}")
        cap = x.shape[0] // self._refr_n + 2 * k.N_CAND + 8
        if cap > self._out_idx.shape[0]:  # output buffers are kept between calls
            self._out_idx = np.empty(cap, dtype=np.int64)
            self._out_amp = np.empty(cap, dtype=np.float64)
            self._out_at = np.empty(cap, dtype=np.int64)
        out_idx, out_amp, out_at = self._out_idx, self._out_amp, self._out_at
        nb = k._detector_step(
            x,
            self._sos,
            self._ip,
            self._fp,
            self._si,
            self._sf,
            self._zi,
            self._ring_bp,
            self._ring_f,
            self._rr,
            self._cand_idx,
            self._cand_val,
            self._cand_slope,
            self._cand_fid,
            out_idx,
            out_amp,
            out_at,
        )
        if nb < 0:
            raise ValueError("samples contain +-inf; mark a missing sample with NaN")
        if nb == 0:  # most chunks: one shared, read-only empty result
            return NO_BEATS
        return DetectedBeats(out_idx[:nb].copy(), out_amp[:nb].copy(), out_at[:nb].copy())


def detect_beats(samples: ArrayLike, fs_hz: float, kind: Kind = "ecg") -> NDArray[np.int64]:
    """Beat sample indices of a whole record (the same as pushing it in chunks)."""
    det = BeatDetector(fs_hz, ECG_CONFIG if kind == "ecg" else PULSE_CONFIG)
    return det.push(samples).sample
