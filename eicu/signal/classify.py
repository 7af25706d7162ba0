"""Streaming ventricular-beat classification over one or more ECG leads.

:class:`BeatClassifier` owns the state of :mod:`eicu.kernels.vclass` (templates per lead, the
dominant-beat interval) and validates what it is given; the constants below are the published
features' thresholds, each with where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from eicu.kernels import beats as k_beats
from eicu.kernels import vclass as k
from eicu.kernels.samples import NONFINITE_INF, nonfinite
from eicu.signal.beats import BeatDetector
from eicu.signal.filters import bandpass_sos

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

    ``takeover``: a template of beats called ventricular becomes the dominant one once used
    this many times as much as the dominant template, i.e. once it makes up two thirds of the
    recent beats (a lasting change of the patient's own rhythm; ventricular bigeminy, half of
    the beats, never); ``takeover_max_bpm``: a template of ventricular beats whose beats come at
    this rate or faster (100/min: ventricular tachycardia) is never adopted as the dominant beat.

    ``cross_corr``: on a bed with a second ECG lead, a beat that correlates below 0.3 with the
    dominant template on one lead and is less steep than ``v_steep`` of it on the other is
    ventricular (:func:`cross_lead_ventricular`): activation in another direction shows on one
    lead, slow myocardial conduction on another, where each alone can look like a conducted
    beat. So is a beat that correlates below ``-cross_corr`` on both leads: inverted against the
    dominant beat in two projections, its activation runs the other way, as wide as the
    dominant beat or not (a patient whose own QRS is already wide, bundle-branch block or
    paced, shows no wider ventricular beat). ``benchmarks/accuracy.py`` (LEADS) prints the rule
    on MIT-BIH with 0.2-0.4 beside it.

    ``pause_full`` and ``pause_tol``: a beat called ``N`` that comes early (its prematurity
    below ``premature``) and is clearly unlike the dominant beat (correlation below
    ``v_corr_mild``) is ventricular when the intervals before and after it add up to
    ``pause_full`` (2) dominant intervals, give or take ``pause_tol`` (0.1, 5 %): a full
    compensatory pause. A ventricular ectopic beat leaves the sinus node undisturbed, so the
    next sinus beat comes on its own schedule; an atrial premature beat resets it, and the next
    beat follows about one sinus interval later (the intervals before and after a beat are
    features of ventricular ectopy in de Chazal et al. 2004). A false detection between two
    sinus beats (a T wave, an artefact) leaves them one interval apart (sum 1), and a beat
    interpolated between two sinus beats is not judged by this rule.
    """

    match_corr: float = 0.9
    adapt_beats: float = 16.0
    forget_beats: float = 512.0
    takeover: float = 2.0
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
    takeover_max_bpm: float = 100.0
    cross_corr: float = 0.3
    pause_full: float = 2.0
    pause_tol: float = 0.1


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
        fp[k.F_TAKEOVER_RR] = 60.0 / config.takeover_max_bpm * fs_hz
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
        self._trr = np.zeros((nl, nt), dtype=np.float64)

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
        if (nonfinite(y.reshape(-1)) | nonfinite(r.reshape(-1))) & NONFINITE_INF:
            raise ValueError("ys or raws contain +-inf; mark a missing sample with NaN")
        return self._classify_checked(y, y0, f, rr, r)

    def _classify_checked(
        self,
        y: NDArray[np.float64],
        y0: NDArray[np.int64],
        f: NDArray[np.int64],
        rr: NDArray[np.int64],
        r: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """:meth:`classify` of inputs already in its kernel's form and checked (C-contiguous,
        of the right dtypes and shapes, no infinity; ``r`` of shape (n_leads, 0) when there
        are no raw samples): the signal pipeline's own history, which it checks on arrival."""
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
            self._trr,
            out_class,
            out_feats,
        )
        return out_class, out_feats


def pause_candidate(
    prematurity: float, corr: float, config: ClassifierConfig = DEFAULT_CLASSIFIER
) -> bool:
    """A beat called ``N`` that the interval after it may still make ventricular
    (``ClassifierConfig.pause_full``): early and clearly unlike the dominant beat. False when
    either feature is unknown (NaN)."""
    return prematurity < config.premature and corr < config.v_corr_mild


def full_pause(
    before: float,
    after: float,
    dominant: float,
    next_corr: float | None,
    config: ClassifierConfig = DEFAULT_CLASSIFIER,
) -> bool:
    """The intervals ``before`` and ``after`` a beat make a full compensatory pause: they add up
    to ``pause_full`` dominant intervals within ``pause_tol``, and the beat after it is a
    dominant one (``next_corr``, its correlation with the dominant template, at least
    ``v_corr``), on the sinus node's own schedule."""
    return (
        next_corr is not None
        and next_corr >= config.v_corr
        and abs((before + after) / dominant - config.pause_full) <= config.pause_tol
    )


def cross_lead_ventricular(
    classes: ArrayLike,
    corr0: ArrayLike,
    steep0: ArrayLike,
    corr1: ArrayLike,
    steep1: ArrayLike,
    config: ClassifierConfig = DEFAULT_CLASSIFIER,
) -> NDArray[np.int64]:
    """Classes of beats (codes of :mod:`eicu.kernels.vclass`) as judged on lead 0, with the
    beats the two leads together show ventricular turned from N to V: strongly unlike the
    dominant beat on one lead (template correlation below ``config.cross_corr``) and slurred on
    the other (steepness ratio below ``config.v_steep``), or inverted against it on both
    (correlation below ``-config.cross_corr`` on each). ``corr0``/``steep0`` are the beats'
    features on lead 0, ``corr1``/``steep1`` on lead 1, each against that lead's own dominant
    template; NaN (not at hand) never makes a beat ventricular. Paced, unclassifiable and
    not yet classified beats keep their class."""
    c = np.asarray(classes, dtype=np.int64)
    feats = [np.asarray(a, dtype=np.float64) for a in (corr0, steep0, corr1, steep1)]
    if c.ndim != 1 or any(f.shape != c.shape for f in feats):
        raise ValueError(
            "classes, corr0, steep0, corr1 and steep1 must be 1-D of one length, got "
            f"{[c.shape, *(f.shape for f in feats)]}"
        )
    a0, s0, a1, s1 = feats
    return k._cross_lead(c, a0, s0, a1, s1, config.cross_corr, config.v_steep)


class ClassifiedBeats(NamedTuple):
    sample: NDArray[np.int64]
    beat_class: NDArray[np.int64]  # codes of eicu.kernels.vclass (C_N, C_V, C_Q, C_P, C_UNKNOWN)


class StreamingClassifier:
    """QRS detection and beat classification of one ECG lead in one kernel call per chunk.

    The same detector (:class:`~eicu.signal.beats.BeatDetector`) and classifier as the
    pipeline, fed from the same 0.5-40 Hz filter, without the pipeline's other work (second
    detector, quality, rhythm); for throughput and for callers that need only classes. The
    state of both lives in two packed buffers (see :data:`eicu.kernels.vclass.F_SLOTS`), so a
    chunk costs one call of five arguments."""

    RING_S: Final = 8.0  # filtered history kept for beats the detector decides late

    def __init__(self, fs_hz: float, config: ClassifierConfig = DEFAULT_CLASSIFIER) -> None:
        self.detector = d = BeatDetector.ecg(fs_hz)
        self.classifier = c = BeatClassifier(fs_hz, 1, config)
        f_sos = bandpass_sos(2, 0.5, min(40.0, 0.45 * fs_hz), fs_hz)
        ring = 1 << int(np.ceil(np.log2(self.RING_S * fs_hz)))
        self._block = ring // 4  # a long chunk goes in blocks, so the ring keeps each window
        cap = self._block // d._refr_n + 2 * k_beats.N_CAND + 8
        n_pend = k_beats.N_CAND * 4
        n_seg = c.pre_n + c.post_n + 2 * c.shift_n
        floats: dict[str, NDArray[np.float64]] = {
            "det_sos": d._sos,
            "det_fp": d._fp,
            "det_sf": d._sf,
            "det_zi": d._zi,
            "ring_bp": d._ring_bp,
            "ring_f": d._ring_f,
            "rr": d._rr,
            "cand_val": d._cand_val,
            "cand_slope": d._cand_slope,
            "out_amp": np.zeros(cap),
            "f_sos": f_sos,
            "f_zi": np.zeros((f_sos.shape[0], 2)),
            "f_ref": np.array([0.0, 1.0]),
            "ybuf": np.full(ring, np.nan),
            "rbuf": np.full(ring, np.nan),
            "fp": c._fp,
            "sf": c._sf,
            "templates": c._templates,
            "tcount": c._tcount,
            "twidth": c._twidth,
            "tsteep": c._tsteep,
            "tamp": c._tamp,
            "tspike": c._tspike,
            "trr": c._trr,
            "seg": np.zeros((1, n_seg)),
            "segr": np.zeros((1, n_seg)),
        }
        ints: dict[str, NDArray[np.int64]] = {
            "det_ip": d._ip,
            "det_si": d._si,
            "cand_idx": d._cand_idx,
            "cand_fid": d._cand_fid,
            "out_idx": np.zeros(cap, dtype=np.int64),
            "out_at": np.zeros(cap, dtype=np.int64),
            "pend": np.zeros(n_pend, dtype=np.int64),
            "st": np.array([0, -1], dtype=np.int64),
            "ip": c._ip,
            "si": c._si,
            "tvent": c._tvent,
            "out_beat": np.zeros(cap + n_pend, dtype=np.int64),
            "out_class": np.zeros(cap + n_pend, dtype=np.int64),
        }
        self._fbuf, self._flay, fviews = _pack(floats, k.F_SLOTS, np.float64)
        self._ibuf, self._ilay, iviews = _pack(ints, k.I_SLOTS, np.int64)
        # the detector's and classifier's state become views of the packed buffers
        for obj, attr, slot, views in (
            (d, "_sos", "det_sos", fviews),
            (d, "_fp", "det_fp", fviews),
            (d, "_sf", "det_sf", fviews),
            (d, "_zi", "det_zi", fviews),
            (d, "_ip", "det_ip", iviews),
            (d, "_si", "det_si", iviews),
            *((d, "_" + n, n, fviews) for n in ("ring_bp", "ring_f", "rr", "cand_val")),
            *((d, "_" + n, n, fviews) for n in ("cand_slope",)),
            *((d, "_" + n, n, iviews) for n in ("cand_idx", "cand_fid")),
            *((c, "_" + n, n, fviews) for n in ("fp", "sf", "templates", "tcount", "twidth")),
            *((c, "_" + n, n, fviews) for n in ("tsteep", "tamp", "tspike", "trr")),
            *((c, "_" + n, n, iviews) for n in ("ip", "si", "tvent")),
        ):
            setattr(obj, attr, views[slot])
        self._out_beat = iviews["out_beat"]
        self._out_class = iviews["out_class"]

    def push(self, samples: ArrayLike) -> ClassifiedBeats:
        """Feed consecutive samples (NaN = missing); return the beats classified with them."""
        x = np.ascontiguousarray(samples, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"samples must be 1-D, got shape {x.shape}")
        block = self._block
        if x.shape[0] <= block:
            return self._push(x)
        parts = [self._push(x[i : i + block]) for i in range(0, x.shape[0], block)]
        return ClassifiedBeats(
            np.concatenate([p.sample for p in parts]),
            np.concatenate([p.beat_class for p in parts]),
        )

    def _push(self, x: NDArray[np.float64]) -> ClassifiedBeats:
        n = k._detect_classify_packed(x, self._fbuf, self._flay, self._ibuf, self._ilay)
        if n <= 0:
            if n < 0:
                raise ValueError("samples contain +-inf; mark a missing sample with NaN")
            return _NO_BEATS
        return ClassifiedBeats(self._out_beat[:n].copy(), self._out_class[:n].copy())


_NO_BEATS: Final = ClassifiedBeats(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
_NO_BEATS.sample.flags.writeable = False
_NO_BEATS.beat_class.flags.writeable = False


def _pack(
    arrays: dict[str, NDArray[Any]], order: tuple[str, ...], dtype: type
) -> tuple[NDArray[Any], NDArray[np.int64], dict[str, NDArray[Any]]]:
    """One buffer holding ``arrays`` in ``order``, its layout (offset, d0, d1, d2 per slot)
    and views of it in place of the arrays."""
    lay = np.ones((len(order), 4), dtype=np.int64)
    off = 0
    for i, name in enumerate(order):
        a = arrays[name]
        if a.dtype != dtype or a.ndim > 3:
            raise ValueError(f"slot {name}: need {dtype} of at most 3 dimensions, got {a.dtype}")
        lay[i, 0] = off
        lay[i, 1 : 1 + a.ndim] = a.shape
        off += a.size
    buf: NDArray[Any] = np.zeros(off, dtype=dtype)
    views: dict[str, NDArray[Any]] = {}
    for i, name in enumerate(order):
        a = arrays[name]
        v = buf[lay[i, 0] : lay[i, 0] + a.size].reshape(a.shape)
        v[...] = a
        views[name] = v
    return buf, lay, views
