"""Streaming ventricular-beat classification over one or more ECG leads.

:class:`BeatClassifier` owns the state of :mod:`eicu.kernels.vclass` (templates per lead, the
dominant-beat interval) and validates what it is given; the constants below are the published
features' thresholds, each with where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from eicu.kernels import vclass as k

BeatClass = Literal["N", "V", "Q"]
CLASS_OF_CODE: Final[dict[int, BeatClass | None]] = {
    k.C_UNKNOWN: None,
    k.C_N: "N",
    k.C_V: "V",
    k.C_Q: "Q",
}
N_FEATS: Final = 8
QRS_PRE_S: Final = 0.12
QRS_POST_S: Final = 0.16
QRS_SHIFT_S: Final = 0.03


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

    @property
    def reach_n(self) -> int:
        """Samples a lead's window must hold after a beat's sample before it can be classified."""
        return self.post_n + self.shift_n

    def classify(
        self, ys: ArrayLike, y0s: ArrayLike, fids: ArrayLike, rr_prev: ArrayLike
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Classes (codes of :mod:`eicu.kernels.vclass`) and features of beats at ``fids``.

        ``ys``: (n_leads, n) filtered ECG, ``ys[l][0]`` at global sample ``y0s[l]`` (NaN where
        missing); ``rr_prev``: samples since the beat before each (<= 0 when unknown).
        Features per beat and lead: correlation, width ratio, steepness ratio, amplitude ratio
        against the reference template, QRS width in samples, the template it joined, (6) the
        beat's prematurity on lead 0, (7) the use count of the template it joined.
        """
        y = np.ascontiguousarray(ys, dtype=np.float64)
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
        if np.isinf(y).any():
            raise ValueError("ys contain +-inf; mark a missing sample with NaN")
        out_class = np.empty(f.shape[0], dtype=np.int64)
        out_feats = np.empty((f.shape[0], self.n_leads, N_FEATS), dtype=np.float64)
        k._classify_beats(
            y,
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
            out_class,
            out_feats,
        )
        return out_class, out_feats
