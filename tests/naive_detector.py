"""A slow, obvious twin of the streaming beat detector (eicu.kernels.beats), for tests.

It keeps every intermediate value of the whole record in plain lists instead of ring buffers,
and spells out the decision rules one by one. The moving-window integral follows the kernel's
definition (a running sum, summed afresh whenever the sample index is a multiple of the ring
length) so that both see the same numbers; everything after it is written independently.
"""

from __future__ import annotations

import math

import numpy as np

from eicu.signal.beats import BeatDetector


def naive_detect(x: np.ndarray, det: BeatDetector) -> tuple[list[int], list[int]]:
    """(beat samples, samples consumed when each beat was decided) of the whole record."""
    sos = det._sos
    (mode, mwi_n, refr_n, twave_n, confirm_n, settle_n, learn_n, gd_n, mask, fid_back_n) = (
        int(v) for v in det._ip
    )
    thr_coef, sb_factor, sb_thr, rr0, decay_floor, decay_min, twave_ratio = (
        float(v) for v in det._fp
    )
    ring = mask + 1
    n = len(x)
    bp = [0.0] * n  # band-passed value per sample (0 in and before a gap)
    feat = [0.0] * n  # feature per sample
    seg_start = 0  # first sample of the current run of present samples

    def bp_at(j: int) -> float:
        return bp[j] if j >= seg_start and j >= 0 else 0.0

    def feat_at(j: int) -> float:
        return feat[j] if j >= seg_start and j >= 0 else 0.0

    beats: list[int] = []
    decided: list[int] = []
    in_gap = True
    z = [[0.0, 0.0] for _ in range(len(sos))]
    xref = prev_bp = mwi = prev_m = 0.0
    rising = False
    blank_until = 0
    learn_left = 0
    learn_max = learn_sum = 0.0
    spk = npk = thr = spk_beat = 0.0
    last_qrs = -1
    last_slope = 0.0
    last_fid = -(1 << 62)
    rr_hist: list[float] = []
    rr_mean = rr0
    cand: tuple[int, float] | None = None  # (index, value) of the pending integral peak
    noise_peaks: list[tuple[int, float, float, int]] = []  # (index, value, slope, fid)
    sb_tried = False
    sb_next = 0

    def set_thr() -> None:
        nonlocal thr
        thr = npk + thr_coef * (spk - npk)

    def accept(c: int, v: float, slope: float, fid: int, w: float, now: int) -> None:
        nonlocal spk, spk_beat, last_qrs, last_slope, last_fid, rr_mean, sb_tried
        if last_qrs >= 0:
            rr_hist.append(float(c - last_qrs))
            del rr_hist[:-8]
            rr_mean = sum(rr_hist) / len(rr_hist)
        spk = w * v + (1.0 - w) * spk
        spk_beat = spk
        set_thr()
        last_qrs = c
        last_slope = slope
        sb_tried = False
        fid = max(fid, last_fid + 1)
        last_fid = fid
        beats.append(fid)
        decided.append(now)
        noise_peaks[:] = [p for p in noise_peaks if p[0] > c]

    def remember(c: int, v: float, slope: float, fid: int) -> None:
        noise_peaks.append((c, v, slope, fid))
        if len(noise_peaks) > 32:
            noise_peaks.pop(0)

    def is_twave(c: int, slope: float) -> bool:
        return last_qrs >= 0 and c - last_qrs < twave_n and slope < twave_ratio * last_slope

    def classify(c: int, v: float, slope: float, fid: int, now: int) -> None:
        nonlocal npk
        if last_qrs >= 0 and c - last_qrs < refr_n:
            return
        if v > thr and not is_twave(c, slope):
            accept(c, v, slope, fid, 0.125, now)
            return
        npk = 0.125 * v + 0.875 * npk
        set_thr()
        if v <= thr and last_qrs >= 0 and not is_twave(c, slope):
            remember(c, v, slope, fid)

    def search_back(now: int) -> bool:
        best = None
        for p in noise_peaks:
            if p[1] > sb_thr * thr and (best is None or p[1] > best[1]):
                best = p
        if best is None:
            return False
        accept(best[0], best[1], best[2], best[3], 0.25, now)
        return True

    for g in range(n):
        v_in = float(x[g])
        if math.isnan(v_in):
            if not in_gap:
                in_gap = True
                z = [[0.0, 0.0] for _ in range(len(sos))]
                mwi = prev_m = prev_bp = 0.0
                cand = None
                noise_peaks.clear()
                last_qrs = -1
                rr_hist.clear()
                rising = False
                seg_start = n  # nothing before the gap counts any more
            continue
        if in_gap:
            in_gap = False
            seg_start = g
            xref = v_in
            blank_until = g + settle_n
            learn_left = learn_n
            learn_max = learn_sum = 0.0
            rr_mean = rr0
        u = v_in - xref
        for s, (b0, b1, b2, _a0, a1, a2) in enumerate(sos):
            y = b0 * u + z[s][0]
            z[s][0] = b1 * u - a1 * y + z[s][1]
            z[s][1] = b2 * u - a2 * y
            u = y
        d = u - prev_bp
        prev_bp = u
        feat[g] = d * d if mode == 0 else max(d, 0.0) if mode == 1 else abs(d)
        bp[g] = u
        if g % ring == 0:
            mwi = 0.0
            for j in range(g - mwi_n + 1, g + 1):
                mwi += feat_at(j)
        else:
            mwi = mwi + feat[g] - feat_at(g - mwi_n)
        m = max(mwi, 0.0)
        if g < blank_until:
            prev_m = m
            rising = False
            continue
        learning = learn_left > 0
        if learning:
            learn_max = max(learn_max, m)
            learn_sum += m
        if m < prev_m and rising and (cand is None or prev_m > cand[1]):
            cand = (g - 1, prev_m)
        if m > prev_m:
            rising = True
        elif m < prev_m:
            rising = False
        prev_m = m
        if cand is not None and (m < 0.5 * cand[1] or g - cand[0] >= confirm_n):
            ci, cv = cand
            cand = None
            slope = max([0.0] + [feat_at(j) for j in range(ci - mwi_n + 1, ci + 1)])
            if mode != 1:
                window = range(ci - fid_back_n, ci + 1)
                best_j = max(window, key=lambda j: (abs(bp_at(j)), -j))
            else:
                window = range(ci - mwi_n + 1, ci + 1)
                best_j = max(window, key=lambda j: (feat_at(j), -j))
            fid = best_j - gd_n
            if learning:
                remember(ci, cv, slope, fid)
            else:
                classify(ci, cv, slope, fid, g + 1)
                if last_qrs >= 0 and last_qrs != ci and g - last_qrs > sb_factor * rr_mean:
                    search_back(g + 1)
        if learning:
            learn_left -= 1
            if learn_left == 0:
                spk = 0.5 * learn_max
                npk = 0.5 * learn_sum / learn_n
                set_thr()
                pending = list(noise_peaks)
                noise_peaks.clear()
                for c, v, slope, fid in pending:
                    classify(c, v, slope, fid, g + 1)
        elif (
            last_qrs >= 0 and (not sb_tried or g >= sb_next) and g - last_qrs > sb_factor * rr_mean
        ):
            sb_tried = True
            if not search_back(g + 1):
                spk = max(0.5 * spk, max(decay_floor * npk, decay_min * spk_beat))
                set_thr()
                sb_next = g + max(1, int(0.5 * rr_mean))
    return beats, decided


def naive_spike_score(r: np.ndarray, spike_n: int) -> float:
    """The sharpest rise-then-fall (or fall-then-rise) within ``spike_n`` samples (the smaller
    of its two slopes; the first of equal ones), over the larger of the steepest slope of the
    moving average of 2 spike_n + 1 samples and the steepest slope more than ``spike_n``
    samples away from the deflection."""
    m = 2 * spike_n + 1
    if r.shape[0] <= m or np.isnan(r).any():
        return math.nan
    d = np.diff(r)
    pair, at = 0.0, (-(10**9), -(10**9))
    for i in range(d.shape[0]):
        for j in range(i + 1, min(i + 1 + spike_n, d.shape[0])):
            if d[i] * d[j] < 0 and min(abs(d[i]), abs(d[j])) > pair:
                pair, at = min(abs(d[i]), abs(d[j])), (i, j)
    moving = np.convolve(r, np.ones(m) / m, "valid")
    smooth = float(np.abs(np.diff(moving)).max())
    away = [abs(d[i]) for i in range(d.shape[0]) if not at[0] - spike_n <= i <= at[1] + spike_n]
    rest = max(away, default=0.0)
    if not smooth > 0:
        return math.nan
    return pair / max(smooth, rest)
