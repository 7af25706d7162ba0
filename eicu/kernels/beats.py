"""Streaming beat detection: QRS complexes in ECG, pulses in arterial pressure and pleth.

One causal state machine serves both, after the classical QRS detectors of Pan and Tompkins
(IEEE Trans Biomed Eng 32(3):230-236, 1985) and Hamilton and Tompkins (IEEE Trans Biomed Eng
33(12):1157-1165, 1986), and the slope-sum pulse detector of Zong et al. (Computers in
Cardiology 30:259-262, 2003):

1. a band-pass filter (cascaded biquads, transposed direct form II);
2. a feature: the squared first difference for ECG, the positive first difference for pulses;
3. a moving-window integral (sum of the feature over ``mwi_n`` samples);
4. peak picking on the integral: the highest local maximum, confirmed once the integral falls
   below half of it or ``confirm_n`` samples have passed;
5. classification with adaptive signal and noise levels (threshold
   ``npk + thr_coef * (spk - npk)``), a refractory period, rejection by slope of a T wave (ECG)
   or dicrotic wave (pulses) within ``twave_n`` of a beat, and a
   search-back for a missed beat once no beat came for ``sb_factor`` times the mean RR; when
   the search-back finds nothing, the signal level is halved (down to ``decay_floor`` times the
   noise level and ``decay_min`` times the level at the last beat) and the search repeated
   every half mean RR, so that beats of a new, weaker or wider shape are found within seconds.

Every decision depends only on past samples, and all of the detector's memory lives in the
state arrays, so feeding a record in chunks of any length gives exactly the beats of feeding it
whole. A NaN sample is a gap: the filters restart after it and the levels are learnt again;
no beat is ever placed inside a gap or in the settling time after it.

The kernel is :func:`_detector_step`; :class:`eicu.signal.beats.BeatDetector` owns its state
arrays and is the public wrapper that validates input and sizes the outputs.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numpy.typing import NDArray

from eicu.kernels._fastmath import FASTMATH

# integer parameters
P_MODE = 0  # feature: 0 squared slope (ECG), 1 positive slope (pulses), 2 absolute slope
P_MWI_N = 1
P_REFR_N = 2
P_TWAVE_N = 3
P_CONFIRM_N = 4
P_SETTLE_N = 5
P_LEARN_N = 6
P_GD_N = 7
P_MASK = 8
P_FID_BACK_N = 9
N_IPARAMS = 10

# float parameters
Q_THR_COEF = 0
Q_SB_FACTOR = 1
Q_SB_THR = 2
Q_RR0_N = 3
Q_DECAY_FLOOR = 4
Q_DECAY_MIN = 5
Q_TWAVE_RATIO = 6  # a later wave is a T wave (or dicrotic wave) below this share of slope
N_FPARAMS = 7

# integer state
S_G = 0  # global index of the next sample
S_GAP = 1  # 1 while in a gap (or before the first sample)
S_BLANK_UNTIL = 2
S_LEARN_LEFT = 3
S_LAST_QRS = 4  # integral-peak index of the last beat, -1 when none since the last gap
S_CAND_I = 5
S_NCAND = 6
S_RR_N = 7
S_RR_POS = 8
S_RISING = 9
S_SB_DONE = 10
S_LAST_FID = 11
S_SB_NEXT = 12  # earliest sample for another search-back after a fruitless one
N_ISTATE = 13

# float state
T_XREF = 0
T_PREV_BP = 1
T_MWI = 2
T_SPK = 3
T_NPK = 4
T_THR = 5
T_CAND_V = 6
T_PREV_M = 7
T_LAST_SLOPE = 8
T_LEARN_MAX = 9
T_LEARN_SUM = 10
T_RR_MEAN = 11
T_SPK_BEAT = 12  # signal level just after the last beat
N_FSTATE = 13

N_CAND = 32
N_RR = 8


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _window_argmax(ring: NDArray[np.float64], mask: int, lo: int, hi: int, absolute: bool) -> int:
    best = lo
    best_v = -1.0
    for j in range(lo, hi + 1):
        v = ring[j & mask]
        if absolute:
            v = abs(v)
        if v > best_v:
            best_v = v
            best = j
    return best


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _window_max(ring: NDArray[np.float64], mask: int, lo: int, hi: int) -> float:
    best = 0.0
    for j in range(lo, hi + 1):
        v = ring[j & mask]
        if v > best:
            best = v
    return best


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _update_thr(sf: NDArray[np.float64], fp: NDArray[np.float64]) -> None:
    sf[T_THR] = sf[T_NPK] + fp[Q_THR_COEF] * (sf[T_SPK] - sf[T_NPK])


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _drop_cands_upto(si, cand_idx, cand_val, cand_slope, cand_fid, c):
    n = si[S_NCAND]
    k = 0
    for j in range(n):
        if cand_idx[j] > c:
            cand_idx[k] = cand_idx[j]
            cand_val[k] = cand_val[j]
            cand_slope[k] = cand_slope[j]
            cand_fid[k] = cand_fid[j]
            k += 1
    si[S_NCAND] = k


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _add_cand(si, cand_idx, cand_val, cand_slope, cand_fid, c, v, slope, fid):
    n = si[S_NCAND]
    if n < cand_idx.shape[0]:
        cand_idx[n] = c
        cand_val[n] = v
        cand_slope[n] = slope
        cand_fid[n] = fid
        si[S_NCAND] = n + 1
        return
    # full: drop the oldest, keep chronological order
    for j in range(n - 1):
        cand_idx[j] = cand_idx[j + 1]
        cand_val[j] = cand_val[j + 1]
        cand_slope[j] = cand_slope[j + 1]
        cand_fid[j] = cand_fid[j + 1]
    cand_idx[n - 1] = c
    cand_val[n - 1] = v
    cand_slope[n - 1] = slope
    cand_fid[n - 1] = fid


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _accept(si, sf, fp, rr, c, v, slope, fid, w, out_idx, out_amp, out_at, nb, amp):
    last = si[S_LAST_QRS]
    if last >= 0:
        n_rr = rr.shape[0]
        rr[si[S_RR_POS]] = float(c - last)
        si[S_RR_POS] = (si[S_RR_POS] + 1) % n_rr
        if si[S_RR_N] < n_rr:
            si[S_RR_N] += 1
        s = 0.0
        for j in range(si[S_RR_N]):
            s += rr[j]
        sf[T_RR_MEAN] = s / si[S_RR_N]
    sf[T_SPK] = w * v + (1.0 - w) * sf[T_SPK]
    sf[T_SPK_BEAT] = sf[T_SPK]
    _update_thr(sf, fp)
    si[S_LAST_QRS] = c
    sf[T_LAST_SLOPE] = slope
    si[S_SB_DONE] = 0
    if fid <= si[S_LAST_FID]:
        fid = si[S_LAST_FID] + 1
    si[S_LAST_FID] = fid
    out_idx[nb] = fid
    out_amp[nb] = amp
    out_at[nb] = si[S_G]
    return nb + 1


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _search_back(
    si, sf, ip, fp, rr, cand_idx, cand_val, cand_slope, cand_fid, out_idx, out_amp, out_at, nb
):
    """Accept the largest noise peak above the lower threshold since the last beat, if any."""
    lim = fp[Q_SB_THR] * sf[T_THR]
    best = -1
    best_v = lim
    for j in range(si[S_NCAND]):
        if cand_val[j] > best_v:
            best_v = cand_val[j]
            best = j
    if best < 0:
        return nb
    c = cand_idx[best]
    nb = _accept(
        si,
        sf,
        fp,
        rr,
        c,
        cand_val[best],
        cand_slope[best],
        cand_fid[best],
        0.25,
        out_idx,
        out_amp,
        out_at,
        nb,
        cand_val[best],
    )
    _drop_cands_upto(si, cand_idx, cand_val, cand_slope, cand_fid, c)
    return nb


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _classify(
    si,
    sf,
    ip,
    fp,
    rr,
    cand_idx,
    cand_val,
    cand_slope,
    cand_fid,
    out_idx,
    out_amp,
    out_at,
    nb,
    c,
    v,
    slope,
    fid,
    learning,
):
    if learning:
        _add_cand(si, cand_idx, cand_val, cand_slope, cand_fid, c, v, slope, fid)
        return nb
    last = si[S_LAST_QRS]
    if last >= 0 and c - last < ip[P_REFR_N]:
        return nb
    if v > sf[T_THR]:
        if last >= 0 and c - last < ip[P_TWAVE_N] and slope < fp[Q_TWAVE_RATIO] * sf[T_LAST_SLOPE]:
            sf[T_NPK] = 0.125 * v + 0.875 * sf[T_NPK]
            _update_thr(sf, fp)
            return nb
        nb = _accept(si, sf, fp, rr, c, v, slope, fid, 0.125, out_idx, out_amp, out_at, nb, v)
        _drop_cands_upto(si, cand_idx, cand_val, cand_slope, cand_fid, c)
        return nb
    sf[T_NPK] = 0.125 * v + 0.875 * sf[T_NPK]
    _update_thr(sf, fp)
    if last >= 0:
        twave = c - last < ip[P_TWAVE_N] and slope < fp[Q_TWAVE_RATIO] * sf[T_LAST_SLOPE]
        if not twave:
            _add_cand(si, cand_idx, cand_val, cand_slope, cand_fid, c, v, slope, fid)
    return nb


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _detector_step(
    x: NDArray[np.float64],
    sos: NDArray[np.float64],
    ip: NDArray[np.int64],
    fp: NDArray[np.float64],
    si: NDArray[np.int64],
    sf: NDArray[np.float64],
    zi: NDArray[np.float64],
    ring_bp: NDArray[np.float64],
    ring_f: NDArray[np.float64],
    rr: NDArray[np.float64],
    cand_idx: NDArray[np.int64],
    cand_val: NDArray[np.float64],
    cand_slope: NDArray[np.float64],
    cand_fid: NDArray[np.int64],
    out_idx: NDArray[np.int64],
    out_amp: NDArray[np.float64],
    out_at: NDArray[np.int64],
) -> int:
    """Returns the number of beats written to the outputs, or -1 (state untouched) when ``x``
    holds an infinite value."""
    for k in range(x.shape[0]):
        if math.isinf(x[k]):
            return -1
    mode = ip[P_MODE]
    mwi_n = ip[P_MWI_N]
    mask = ip[P_MASK]
    n_sec = sos.shape[0]
    nb = 0
    for k in range(x.shape[0]):
        g = si[S_G]
        xv = x[k]
        if math.isnan(xv):
            if si[S_GAP] == 0:
                si[S_GAP] = 1
                for s in range(n_sec):
                    zi[s, 0] = 0.0
                    zi[s, 1] = 0.0
                ring_f[:] = 0.0
                ring_bp[:] = 0.0
                sf[T_MWI] = 0.0
                sf[T_PREV_M] = 0.0
                sf[T_PREV_BP] = 0.0
                si[S_CAND_I] = -1
                si[S_NCAND] = 0
                si[S_LAST_QRS] = -1
                si[S_RR_N] = 0
                si[S_RR_POS] = 0
                si[S_RISING] = 0
            si[S_G] = g + 1
            continue
        if si[S_GAP] == 1:
            si[S_GAP] = 0
            sf[T_XREF] = xv
            si[S_BLANK_UNTIL] = g + ip[P_SETTLE_N]
            si[S_LEARN_LEFT] = ip[P_LEARN_N]
            sf[T_LEARN_MAX] = 0.0
            sf[T_LEARN_SUM] = 0.0
            sf[T_RR_MEAN] = fp[Q_RR0_N]
        u = xv - sf[T_XREF]
        for s in range(n_sec):
            y = sos[s, 0] * u + zi[s, 0]
            zi[s, 0] = sos[s, 1] * u - sos[s, 4] * y + zi[s, 1]
            zi[s, 1] = sos[s, 2] * u - sos[s, 5] * y
            u = y
        d = u - sf[T_PREV_BP]
        sf[T_PREV_BP] = u
        if mode == 0:
            f = d * d
        elif mode == 1:
            f = max(d, 0.0)
        else:
            f = abs(d)
        pos = g & mask
        old = ring_f[(g - mwi_n) & mask]
        ring_f[pos] = f
        ring_bp[pos] = u
        if pos == 0:
            # exact re-summation once per ring turn keeps the running sum from drifting
            acc = 0.0
            for j in range(g - mwi_n + 1, g + 1):
                acc += ring_f[j & mask]
            sf[T_MWI] = acc
        else:
            sf[T_MWI] = sf[T_MWI] + f - old
        m = sf[T_MWI]
        if m < 0.0:
            m = 0.0
        si[S_G] = g + 1
        if g < si[S_BLANK_UNTIL]:
            sf[T_PREV_M] = m
            si[S_RISING] = 0
            continue
        learning = si[S_LEARN_LEFT] > 0
        if learning:
            if m > sf[T_LEARN_MAX]:
                sf[T_LEARN_MAX] = m
            sf[T_LEARN_SUM] += m
        prev_m = sf[T_PREV_M]
        if m < prev_m and si[S_RISING] == 1 and (si[S_CAND_I] < 0 or prev_m > sf[T_CAND_V]):
            si[S_CAND_I] = g - 1
            sf[T_CAND_V] = prev_m
        if m > prev_m:
            si[S_RISING] = 1
        elif m < prev_m:
            si[S_RISING] = 0
        sf[T_PREV_M] = m
        ci = si[S_CAND_I]
        if ci >= 0 and (m < 0.5 * sf[T_CAND_V] or g - ci >= ip[P_CONFIRM_N]):
            cv = sf[T_CAND_V]
            si[S_CAND_I] = -1
            lo = ci - mwi_n + 1
            slope = _window_max(ring_f, mask, lo, ci)
            if mode != 1:  # ECG: the largest band-passed deflection
                j = _window_argmax(ring_bp, mask, ci - ip[P_FID_BACK_N], ci, True)
            else:
                j = _window_argmax(ring_f, mask, lo, ci, False)
            fid = j - ip[P_GD_N]
            nb = _classify(
                si,
                sf,
                ip,
                fp,
                rr,
                cand_idx,
                cand_val,
                cand_slope,
                cand_fid,
                out_idx,
                out_amp,
                out_at,
                nb,
                ci,
                cv,
                slope,
                fid,
                learning,
            )
            if (
                not learning
                and si[S_LAST_QRS] >= 0
                and si[S_LAST_QRS] != ci
                and g - si[S_LAST_QRS] > fp[Q_SB_FACTOR] * sf[T_RR_MEAN]
            ):
                nb = _search_back(
                    si,
                    sf,
                    ip,
                    fp,
                    rr,
                    cand_idx,
                    cand_val,
                    cand_slope,
                    cand_fid,
                    out_idx,
                    out_amp,
                    out_at,
                    nb,
                )
        if learning:
            si[S_LEARN_LEFT] -= 1
            if si[S_LEARN_LEFT] == 0:
                sf[T_SPK] = 0.5 * sf[T_LEARN_MAX]
                sf[T_NPK] = 0.5 * sf[T_LEARN_SUM] / ip[P_LEARN_N]
                _update_thr(sf, fp)
                # classify the peaks seen while learning, in order
                n_pending = si[S_NCAND]
                p_idx = cand_idx[:n_pending].copy()
                p_val = cand_val[:n_pending].copy()
                p_slope = cand_slope[:n_pending].copy()
                p_fid = cand_fid[:n_pending].copy()
                si[S_NCAND] = 0
                for j in range(n_pending):
                    nb = _classify(
                        si,
                        sf,
                        ip,
                        fp,
                        rr,
                        cand_idx,
                        cand_val,
                        cand_slope,
                        cand_fid,
                        out_idx,
                        out_amp,
                        out_at,
                        nb,
                        p_idx[j],
                        p_val[j],
                        p_slope[j],
                        p_fid[j],
                        False,
                    )
        elif (
            si[S_LAST_QRS] >= 0
            and (si[S_SB_DONE] == 0 or g >= si[S_SB_NEXT])
            and g - si[S_LAST_QRS] > fp[Q_SB_FACTOR] * sf[T_RR_MEAN]
        ):
            si[S_SB_DONE] = 1
            nb_before = nb
            nb = _search_back(
                si,
                sf,
                ip,
                fp,
                rr,
                cand_idx,
                cand_val,
                cand_slope,
                cand_fid,
                out_idx,
                out_amp,
                out_at,
                nb,
            )
            if nb == nb_before:
                # nothing above the lower threshold: beats may have changed shape (a wide
                # ventricular rhythm) or shrunk; lower the signal level, look again later
                floor = max(fp[Q_DECAY_FLOOR] * sf[T_NPK], fp[Q_DECAY_MIN] * sf[T_SPK_BEAT])
                sf[T_SPK] = max(0.5 * sf[T_SPK], floor)
                _update_thr(sf, fp)
                si[S_SB_NEXT] = g + max(1, int(0.5 * sf[T_RR_MEAN]))
    return nb
