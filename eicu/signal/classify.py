"""Streaming ventricular-beat classification over one or more ECG leads.

:class:`BeatClassifier` owns the state of :mod:`eicu.kernels.vclass` (templates per lead, the
dominant-beat interval) and validates what it is given; the constants below are the published
features' thresholds, each with where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import signal as sps

from eicu.kernels import beats as k_beats
from eicu.kernels import vclass as k
from eicu.signal.beats import BeatDetector

BeatClass = Literal["N", "V", "Q", "P"]
CLASS_OF_CODE: Final[dict[int, BeatClass | None]] = {
    k.C_UNKNOWN: None,
    k.C_N: "N",
    k.C_V: "V",
    k.C_Q: "Q",
    k.C_P: "P",
}
N_FEATS: Final = k.N_FEATS
QRS_PRE_S: Final = 0.12
QRS_POST_S: Final = 0.16
QRS_SHIFT_S: Final = 0.015
SPIKE_S: Final = 0.010  # the longest pacer spike a recording may show (band-limited)


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """The classifier's constants (see :mod:`eicu.kernels.vclass` for their roles).

    ``v_corr``, ``v_width`` and ``v_steep``: a beat correlating below 0.9 with the dominant
    template and more than 1.2 times as wide or less than 0.8 times as steep is ventricular
    (the QRS of a ventricular beat lasts 120 ms or more against 80-100 ms for a conducted beat,
    and rises more slowly), unless it correlates above ``v_corr_mild`` (0.8) and comes on
    time (its interval at least ``premature``, 0.95, of the dominant beats' mean): ectopic
    beats come early (de Chazal et al. 2004 use the RR intervals for this). Chosen on MIT-BIH
    channel 0; ``benchmarks/accuracy.py`` prints a leave-one-record-out choice among 27
    settings beside them.

    ``spike_ratio``: a deflection whose rise and fall (within 10 ms) are both more than 2 times
    as steep as the steepest slope of the beat's samples averaged over 21 ms is a pacer spike
    (a pulse of 0.1-2 ms, IEC 60601-2-27, against a QRS complex of 80 ms or more);
    ``paced_frac``: a template whose beats carry such a spike more than half of the time is
    paced, and so is every beat that joins it.
    """

    match_corr: float = 0.9
    adapt_beats: float = 16.0
    forget_beats: float = 512.0
    takeover: float = 4.0
    v_corr: float = 0.9
    v_width: float = 1.2
    v_steep: float = 0.8
    v_corr_mild: float = 0.8
    premature: float = 0.95
    q_amp: float = 5.0
    slope_frac: float = 0.15
    narrow_s: float = 0.12
    learn_beats: int = 8
    spike_ratio: float = 2.0
    paced_frac: float = 0.5


DEFAULT_CLASSIFIER: Final = ClassifierConfig()


class BeatClassifier:
    """Classifies beats of one bed as they become known, from ``n_leads`` ECG leads."""

    def __init__(
        self, fs_hz: float, n_leads: int = 1, config: ClassifierConfig = DEFAULT_CLASSIFIER
    ) -> None:
        if not (np.isfinite(fs_hz) and fs_hz > 0):
            raise ValueError(f"fs_hz must be a positive number, got {fs_hz!r}")
        if n_leads < 1:
            raise ValueError(f"n_leads must be at least 1, got {n_leads}")
        self.fs_hz = float(fs_hz)
        self.n_leads = n_leads
        self.pre_n = round(QRS_PRE_S * fs_hz)
        self.post_n = round(QRS_POST_S * fs_hz)
        self.shift_n = round(QRS_SHIFT_S * fs_hz)
        span = self.pre_n + self.post_n
        ip = np.zeros(k.N_IPARAMS, dtype=np.int64)
        ip[k.I_PRE_N] = self.pre_n
        ip[k.I_POST_N] = self.post_n
        ip[k.I_SHIFT_N] = self.shift_n
        ip[k.I_LEARN] = config.learn_beats
        ip[k.I_SPIKE_N] = max(1, round(SPIKE_S * fs_hz))
        fp = np.zeros(k.N_FPARAMS, dtype=np.float64)
        fp[k.F_MATCH_CORR] = config.match_corr
        fp[k.F_ADAPT] = 1.0 / config.adapt_beats
        fp[k.F_FORGET] = 1.0 - 1.0 / config.forget_beats
        fp[k.F_TAKEOVER] = config.takeover
        fp[k.F_V_CORR] = config.v_corr
        fp[k.F_V_WIDTH] = config.v_width
        fp[k.F_V_STEEP] = config.v_steep
        fp[k.F_V_CORR_MILD] = config.v_corr_mild
        fp[k.F_PREMATURE] = config.premature
        fp[k.F_Q_AMP] = config.q_amp
        fp[k.F_SLOPE_FRAC] = config.slope_frac
        fp[k.F_NARROW_N] = config.narrow_s * fs_hz
        fp[k.F_SPIKE_RATIO] = config.spike_ratio
        fp[k.F_PACED_FRAC] = config.paced_frac
        self._ip = ip
        self._fp = fp
        nl, nt = n_leads, k.K_TEMPLATES
        self._si = np.zeros((nl, k.N_ISTATE), dtype=np.int64)
        self._si[:, k.S_REF] = -1
        self._sf = np.zeros((nl, k.N_FSTATE), dtype=np.float64)
        self._templates = np.zeros((nl, nt, span), dtype=np.float64)
        self._tcount = np.zeros((nl, nt), dtype=np.float64)
        self._twidth = np.zeros((nl, nt), dtype=np.float64)
        self._tsteep = np.zeros((nl, nt), dtype=np.float64)
        self._tamp = np.zeros((nl, nt), dtype=np.float64)
        self._tvent = np.zeros((nl, nt), dtype=np.int64)
        self._tspike = np.zeros((nl, nt), dtype=np.float64)

    @property
    def reach_n(self) -> int:
        """Samples a lead's window must hold after a beat's sample before it can be classified."""
        return self.post_n + self.shift_n

    def classify(
        self,
        ys: ArrayLike,
        y0s: ArrayLike,
        fids: ArrayLike,
        rr_prev: ArrayLike,
        raws: ArrayLike | None = None,
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Classes (codes of :mod:`eicu.kernels.vclass`) and features of beats at ``fids``.

        ``ys``: (n_leads, n) filtered ECG, ``ys[l][0]`` at global sample ``y0s[l]`` (NaN where
        missing); ``raws``: the unfiltered samples at the same indices, for the pacer-spike
        test (None: no beat is taken as paced); ``rr_prev``: samples since the beat before
        each (<= 0 when unknown). Features per beat and lead: correlation, width ratio,
        steepness ratio, amplitude ratio against the reference template, QRS width in samples,
        the template it joined, (6) the beat's prematurity on lead 0, (7) the use count of the
        template it joined, (8) the pacer-spike score, (9) the joined template's share of beats
        with a pacer spike.
        """
        y = np.ascontiguousarray(ys, dtype=np.float64)
        r = (
            np.empty((y.shape[0], 0))
            if raws is None
            else np.ascontiguousarray(raws, dtype=np.float64)
        )
        y0 = np.ascontiguousarray(y0s, dtype=np.int64)
        f = np.ascontiguousarray(fids, dtype=np.int64)
        rr = np.ascontiguousarray(rr_prev, dtype=np.int64)
        if y.ndim != 2 or y.shape[0] != self.n_leads or y0.shape != (self.n_leads,):
            raise ValueError(
                f"need ys of shape ({self.n_leads}, n) and y0s of shape ({self.n_leads},), "
                f"got {y.shape} and {y0.shape}"
            )
        if f.ndim != 1 or rr.shape != f.shape:
            raise ValueError(
                f"fids and rr_prev must be 1-D of one length, got {f.shape}, {rr.shape}"
            )
        if raws is not None and r.shape != y.shape:
            raise ValueError(f"raws must have the shape of ys {y.shape}, got {r.shape}")
        if np.isinf(y).any() or np.isinf(r).any():
            raise ValueError("ys or raws contain +-inf; mark a missing sample with NaN")
        out_class = np.empty(f.shape[0], dtype=np.int64)
        out_feats = np.empty((f.shape[0], self.n_leads, N_FEATS), dtype=np.float64)
        k._classify_beats(
            y,
            r,
            y0,
            f,
            rr,
            self._ip,
            self._fp,
            self._si,
            self._sf,
            self._templates,
            self._tcount,
            self._twidth,
            self._tsteep,
            self._tamp,
            self._tvent,
            self._tspike,
            out_class,
            out_feats,
        )
        return out_class, out_feats


class ClassifiedBeats(NamedTuple):
    sample: NDArray[np.int64]
    beat_class: NDArray[np.int64]  # codes of eicu.kernels.vclass (C_N, C_V, C_Q, C_P, C_UNKNOWN)


class StreamingClassifier:
    """QRS detection and beat classification of one ECG lead in one kernel call per chunk.

    The same detector (:class:`~eicu.signal.beats.BeatDetector`) and classifier as the
    pipeline, fed from the same 0.5-40 Hz filter, without the pipeline's other work (second
    detector, quality, rhythm); for throughput and for callers that need only classes."""

    RING_S: Final = 8.0  # filtered history kept for beats the detector decides late

    def __init__(self, fs_hz: float, config: ClassifierConfig = DEFAULT_CLASSIFIER) -> None:
        self.detector = BeatDetector.ecg(fs_hz)
        self.classifier = BeatClassifier(fs_hz, 1, config)
        self._f_sos = np.ascontiguousarray(
            sps.butter(2, [0.5, min(40.0, 0.45 * fs_hz)], "bandpass", fs=fs_hz, output="sos")
        )
        self._f_zi = np.zeros((self._f_sos.shape[0], 2))
        self._f_ref = np.array([0.0, 1.0])
        ring = 1 << int(np.ceil(np.log2(self.RING_S * fs_hz)))
        self._ybuf = np.full(ring, np.nan)
        self._rbuf = np.full(ring, np.nan)
        self._pend = np.zeros(k_beats.N_CAND * 4, dtype=np.int64)
        self._st = np.array([0, -1], dtype=np.int64)
        c = self.classifier
        self._seg = np.empty((1, c.pre_n + c.post_n + 2 * c.shift_n))
        self._segr = np.empty_like(self._seg)
        self._out_beat = np.empty(0, dtype=np.int64)
        self._out_class = np.empty(0, dtype=np.int64)

    def push(self, samples: ArrayLike) -> ClassifiedBeats:
        """Feed consecutive samples (NaN = missing); return the beats classified with them."""
        x = np.ascontiguousarray(samples, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {x.shape}")
        block = self._ybuf.shape[0] // 4  # a long chunk in blocks, so the ring keeps each window
        if x.shape[0] <= block:
            return self._push(x)
        parts = [self._push(x[i : i + block]) for i in range(0, x.shape[0], block)]
        return ClassifiedBeats(
            np.concatenate([p.sample for p in parts]),
            np.concatenate([p.beat_class for p in parts]),
        )

    def _push(self, x: NDArray[np.float64]) -> ClassifiedBeats:
        d = self.detector
        cap = x.shape[0] // d._refr_n + 2 * k_beats.N_CAND + 8
        if cap > d._out_idx.shape[0]:
            d._out_idx = np.empty(cap, dtype=np.int64)
            d._out_amp = np.empty(cap, dtype=np.float64)
            d._out_at = np.empty(cap, dtype=np.int64)
        if cap + self._pend.shape[0] > self._out_beat.shape[0]:
            self._out_beat = np.empty(cap + self._pend.shape[0], dtype=np.int64)
            self._out_class = np.empty(cap + self._pend.shape[0], dtype=np.int64)
        c = self.classifier
        n = k._detect_classify_step(
            x,
            d._sos,
            d._ip,
            d._fp,
            d._si,
            d._sf,
            d._zi,
            d._ring_bp,
            d._ring_f,
            d._rr,
            d._cand_idx,
            d._cand_val,
            d._cand_slope,
            d._cand_fid,
            d._out_idx,
            d._out_amp,
            d._out_at,
            self._f_sos,
            self._f_zi,
            self._f_ref,
            self._ybuf,
            self._rbuf,
            self._pend,
            self._st,
            c._ip,
            c._fp,
            c._si,
            c._sf,
            c._templates,
            c._tcount,
            c._twidth,
            c._tsteep,
            c._tamp,
            c._tvent,
            c._tspike,
            self._seg,
            self._segr,
            self._out_beat,
            self._out_class,
        )
        if n < 0:
            raise ValueError("samples contain +-inf; mark a missing sample with NaN")
        return ClassifiedBeats(self._out_beat[:n].copy(), self._out_class[:n].copy())
