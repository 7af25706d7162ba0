"""Streaming beat classification: ventricular (V), normal or supraventricular (N), paced (P),
noise (Q).

Each ECG lead keeps up to ``K_TEMPLATES`` QRS templates, a running clustering of the patient's
own beats: a beat joins the template it correlates best with (at least ``MATCH_CORR``, best
over shifts of up to ``shift_n`` samples) and moves it by ``1 / ADAPT_BEATS`` of the
difference, so a template follows slow changes (rate, axis, electrode drift) but not single
beats; a beat that
matches no template starts one, in place of the least used. Every template carries a use count
that forgets with a time constant of ``FORGET_BEATS`` beats.

The dominant (reference) template is the most used one among those not marked ventricular; a
template marked ventricular becomes the reference only once it has been used ``TAKEOVER`` times
as much as the reference and its beats come slower than a ventricular tachycardia (the running
mean of the intervals before the beats that joined it at least ``TAKEOVER_RR``, 60/100 s): a
new dominant beat such as a bundle-branch block or pacing is adopted after minutes, a run of
wide beats at 100/min or faster never, however long it lasts.

A beat is compared with the reference of every lead that has one: the correlation, the ratio of
QRS widths, of steepness (largest slope over peak-to-peak amplitude) and of amplitude, and its
prematurity (the interval before it over the running mean interval of the dominant beats). It
is ventricular when, on the lead where it differs most, it is unlike the reference and wider or
less steep, after the features of ventricular ectopic beats used by de Chazal et al. (IEEE Trans
Biomed Eng 51(7):1196-1206, 2004: QRS duration, RR intervals, morphology) and the template
matching of patient-adaptive classifiers (Hu et al., IEEE Trans Biomed Eng 44(9):891-900, 1997).
A beat whose window holds a missing sample on every lead, or whose amplitude is far outside the
reference's (``Q_AMP``), is unclassifiable.

A beat is paced when the template it joined on some lead carries pacer spikes on more than
``PACED_FRAC`` of its beats (their mean over the template's first ``ADAPT_BEATS`` beats, then a
running mean moved by ``1 / ADAPT_BEATS`` a beat). A pacer spike (IEC 60601-2-27: pulses of
0.1-2 ms) is a deflection far narrower than any QRS complex and steeper than the complex it
starts: in the raw samples of the beat's window, a rise followed within ``spike_n`` samples
(10 ms) by a fall, or a fall by a rise, both steeper than ``SPIKE_RATIO`` times the steepest
slope of the same samples averaged over ``2 spike_n + 1`` samples and than every slope of the
window away from it (:func:`_spike_score`). Averaging leaves the slope of a QRS complex (tens of
milliseconds) almost whole and divides that of a spike by the averaging length. Without raw
samples (or when the recording's band limit has smeared the spikes) no beat is paced, and a
paced rhythm is classified by its morphology like any other: the dominant template, so ``N``.

The kernel is :func:`_classify_beats`; :class:`eicu.signal.vclass.BeatClassifier` owns its state
and is the public wrapper.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from eicu.kernels._fastmath import FASTMATH
from eicu.kernels.beats import S_G, _detector_step
from eicu.kernels.filters import _sos_filter_step
from eicu.kernels.morphology import _qrs_width_n, _steepness

K_TEMPLATES = 8

# classes
C_UNKNOWN = -1  # still learning the templates
C_N = 0
C_V = 1
C_Q = 2
C_P = 3  # paced

# float parameters
F_MATCH_CORR = 0
F_ADAPT = 1  # 1 / ADAPT_BEATS
F_FORGET = 2  # per-beat factor of the use counts
F_TAKEOVER = 3
F_V_CORR = 4  # below this correlation with the reference a beat is unlike it
F_V_WIDTH = 5  # width ratio above which an unlike beat is wider
F_V_STEEP = 6  # steepness ratio below which an unlike beat is slower
F_V_CORR_MILD = 7  # above this an unlike beat is only mildly unlike the reference
F_PREMATURE = 8  # rr_prev / rr_mean below this: premature (else on time)
F_Q_AMP = 9  # amplitude ratio outside [1/Q_AMP, Q_AMP]: unclassifiable
F_SLOPE_FRAC = 10
F_NARROW_N = 11  # width (samples) below which a first template is taken as supraventricular
F_SPIKE_RATIO = 12  # a deflection this much steeper than the smoothed beat and the rest: a spike
F_PACED_FRAC = 13  # share of a template's beats with a spike from which its beats are paced
F_TAKEOVER_RR = 14  # a ventricular template whose beats come faster (samples) is never dominant
N_FPARAMS = 15

# integer parameters
I_PRE_N = 0
I_POST_N = 1
I_SHIFT_N = 2
I_LEARN = 3  # beats seen before classes are given
I_SPIKE_N = 4  # the longest pacer spike (samples)
N_IPARAMS = 5

# integer state per lead
S_NT = 0  # templates in use
S_REF = 1  # reference template, -1 when none
S_SEEN = 2  # beats seen
N_ISTATE = 3

# float state per lead (beyond the template arrays)
R_RR_MEAN = 0  # running mean interval of reference beats (samples), 0 when unknown
R_PREV_DOM = 1  # 1 when the beat before was a dominant one (N or P), else 0
N_FSTATE = 2

# features per beat and lead
N_FEATS = 10


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _best_shift(y, lo, span, shift_n, template):
    """The best Pearson correlation of ``template`` with ``y[lo + sh : lo + sh + span]`` over
    shifts ``sh`` of up to ``shift_n`` either way (the first of equal maxima), and its start.

    The template's mean and spread are computed once and the window's sums slide with the
    shift, so each shift costs one dot product."""
    n = span
    tm = 0.0
    for i in range(n):
        tm += template[i]
    tm /= n
    stt = 0.0
    for i in range(n):
        d = template[i] - tm
        stt += d * d
    first = y[lo - shift_n : lo - shift_n + n]
    sa = 0.0
    saa = 0.0
    for i in range(n):
        sa += first[i]
        saa += first[i] * first[i]
    best_c = -2.0
    best_lo = lo
    for sh in range(-shift_n, shift_n + 1):
        a0 = lo + sh
        if sh > -shift_n:
            out_v = y[a0 - 1]
            in_v = y[a0 + n - 1]
            sa += in_v - out_v
            saa += in_v * in_v - out_v * out_v
        dot = 0.0
        ya = y[a0 : a0 + n]  # a slice: the loop then needs no index checks and vectorises
        for i in range(n):
            dot += ya[i] * template[i]
        sab = dot - tm * sa
        var_a = saa - sa * sa / n
        c = np.nan if var_a <= 0.0 or stt <= 0.0 else sab / math.sqrt(var_a * stt)
        if c > best_c:
            best_c = c
            best_lo = a0
    return best_c, best_lo


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _p2p(seg):
    lo = seg[0]
    hi = seg[0]
    for i in range(seg.shape[0]):
        lo = min(lo, seg[i])
        hi = max(hi, seg[i])
    return hi - lo


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _spike_score(r, lo, span, spike_n):
    """How much the sharpest narrow deflection of ``r[lo : lo + span]`` stands out: a rise
    followed within ``spike_n`` samples by a fall (or a fall by a rise), its smaller slope
    (the first of equal ones) over the larger of (a) the steepest slope of the same samples
    averaged over ``2 spike_n + 1`` (a deflection wider than ``spike_n`` keeps its slope when
    averaged, a narrower one loses it) and (b) the steepest slope of the window more than
    ``spike_n`` samples away from the deflection (a pacer spike is steeper than the QRS complex
    it starts; a narrow R wave is not steeper than its own Q and S waves by much). NaN when a
    sample is missing or the window is flat or too short."""
    m = 2 * spike_n + 1
    if lo < 0 or lo + span > r.shape[0] or span <= m:
        return np.nan
    w = r[lo : lo + span]  # a slice: loops from 0 need no index checks
    pair = 0.0
    at_i = -1
    at_j = -1
    for i in range(span - 1):
        a = w[i + 1] - w[i]
        if math.isnan(a):
            return np.nan
        if a == 0.0 or abs(a) <= pair:
            continue
        for j in range(i + 1, min(i + 1 + spike_n, span - 1)):
            b = w[j + 1] - w[j]
            if a * b < 0.0:
                s = min(abs(a), abs(b))
                if s > pair:
                    pair = s
                    at_i = i
                    at_j = j
    smooth = 0.0
    for i in range(span - m):
        d = abs(w[i + m] - w[i])
        if d > smooth:
            smooth = d
    smooth /= m
    if not smooth > 0.0:
        return np.nan
    rest = 0.0
    for i in range(span - 1):
        if at_i - spike_n <= i <= at_j + spike_n:
            continue
        d = abs(w[i + 1] - w[i])
        if d > rest:
            rest = d
    return pair / max(smooth, rest)


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _pick_reference(si, tcount, tvent, trr, takeover, takeover_rr):
    """The most used template not marked ventricular; a ventricular one only when it has been
    used ``takeover`` times as much and its beats' mean interval ``trr`` is at least
    ``takeover_rr`` (and is then taken as the dominant beat from then on)."""
    nt = si[S_NT]
    best = -1
    best_v = -1
    for k in range(nt):
        if tvent[k] == 0:
            if best < 0 or tcount[k] > tcount[best]:
                best = k
        elif best_v < 0 or tcount[k] > tcount[best_v]:
            best_v = k
    if best_v >= 0 and (
        best < 0 or (tcount[best_v] > takeover * tcount[best] and trr[best_v] >= takeover_rr)
    ):
        tvent[best_v] = 0
        best = best_v
    si[S_REF] = best


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _lead_step(
    y,
    r,
    lo,
    rr,
    ip,
    fp,
    si,
    sf,
    templates,
    tcount,
    twidth,
    tsteep,
    tamp,
    tvent,
    tspike,
    trr,
    feats,
):
    """One beat on one lead: cluster it, then fill ``feats`` with (corr, width_ratio,
    steep_ratio, amp_ratio, width_n, matched template, -, the template's use count, the spike
    score, the template's share of beats with a spike); NaN where unknown. ``r``: the raw
    samples at the indices of ``y`` (length 0 when not at hand); ``rr``: the interval before
    the beat (<= 0 when unknown). Returns True when the lead's window was usable."""
    pre_n = ip[I_PRE_N]
    span = pre_n + ip[I_POST_N]
    shift_n = ip[I_SHIFT_N]
    for j in range(feats.shape[0]):
        feats[j] = np.nan
    if lo - shift_n < 0 or lo + span + shift_n > y.shape[0]:
        return False
    for i in range(lo - shift_n, lo + span + shift_n):
        if math.isnan(y[i]):
            return False
    seg = y[lo : lo + span]
    w = _qrs_width_n(seg, fp[F_SLOPE_FRAC])
    amp = _p2p(seg)
    if not amp > 0.0:
        return False
    steep = _steepness(seg)
    feats[4] = w
    spike = 0.0
    if r.shape[0] > 0:
        feats[8] = _spike_score(r, lo, span, ip[I_SPIKE_N])
        if feats[8] >= fp[F_SPIKE_RATIO]:
            spike = 1.0
    nt = si[S_NT]
    ref = si[S_REF]
    # features against the reference, before the beat moves any template
    best_k = -1
    best_c = -2.0
    best_lo = lo
    if ref >= 0:
        c, blo = _best_shift(y, lo, span, shift_n, templates[ref])
        feats[0] = c
        if twidth[ref] > 0.0:
            feats[1] = w / twidth[ref]
        if tsteep[ref] > 0.0:
            feats[2] = steep / tsteep[ref]
        if tamp[ref] > 0.0:
            feats[3] = amp / tamp[ref]
        best_k = ref
        best_c = c
        best_lo = blo
    # clustering: the template the beat correlates best with (the reference's score is known)
    for k in range(nt):
        if k == ref:
            continue
        c, blo = _best_shift(y, lo, span, shift_n, templates[k])
        if c > best_c or (c == best_c and k < best_k):
            best_c = c
            best_k = k
            best_lo = blo
    for k in range(nt):
        tcount[k] *= fp[F_FORGET]
    if best_k >= 0 and best_c >= fp[F_MATCH_CORR]:
        a = fp[F_ADAPT]
        t = templates[best_k]
        for i in range(span):
            t[i] = (1.0 - a) * t[i] + a * y[best_lo + i]
        twidth[best_k] = (1.0 - a) * twidth[best_k] + a * w
        tsteep[best_k] = (1.0 - a) * tsteep[best_k] + a * steep
        tamp[best_k] = (1.0 - a) * tamp[best_k] + a * amp
        tcount[best_k] += 1.0
        # the share of spiked beats: their mean over the first beats, then a running mean
        sa = max(a, 1.0 / tcount[best_k])
        tspike[best_k] = (1.0 - sa) * tspike[best_k] + sa * spike
        if rr > 0:  # the mean interval before its beats, likewise
            trr[best_k] = rr if trr[best_k] <= 0.0 else (1.0 - sa) * trr[best_k] + sa * rr
        feats[5] = best_k
        feats[7] = tcount[best_k]
        feats[9] = tspike[best_k]
    else:
        if nt < templates.shape[0]:
            k = nt
            si[S_NT] = nt + 1
        else:  # replace the least used template that is not the reference
            k = -1
            for j in range(nt):
                if j != ref and (k < 0 or tcount[j] < tcount[k]):
                    k = j
        templates[k, :] = seg
        twidth[k] = w
        tsteep[k] = steep
        tamp[k] = amp
        tspike[k] = spike
        trr[k] = max(rr, 0)
        feats[9] = spike
        tcount[k] = 1.0
        # a new shape unlike a narrower reference is marked ventricular
        tvent[k] = 0
        feats[7] = 1.0
        if ref >= 0 and ref != k:
            if feats[0] < fp[F_V_CORR] and (feats[1] > fp[F_V_WIDTH] or feats[2] < fp[F_V_STEEP]):
                tvent[k] = 1
        elif ref < 0 and w > fp[F_NARROW_N]:
            tvent[k] = 1
        feats[5] = k
    _pick_reference(si, tcount, tvent, trr, fp[F_TAKEOVER], fp[F_TAKEOVER_RR])
    si[S_SEEN] += 1
    return True


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _note_interval(sf, rr):
    """The running mean interval of the dominant (non-ventricular) beats takes ``rr`` in when
    the beat before was dominant too: the interval after a ventricular beat (its compensatory
    pause, or the next beat of a run) or after noise is not the dominant rhythm's. While the
    mean is unknown (a bigeminal rhythm from the start) any dominant beat's interval starts it."""
    prev_dom = sf[0, R_PREV_DOM] > 0.0
    sf[0, R_PREV_DOM] = 1.0
    m = sf[0, R_RR_MEAN]
    if rr > 0 and (prev_dom or m <= 0.0):
        sf[0, R_RR_MEAN] = float(rr) if m <= 0.0 else 0.875 * m + 0.125 * rr


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _classify_beats(
    ys,
    rs,
    y0s,
    fids,
    rr_prev,
    ip,
    fp,
    si,
    sf,
    templates,
    tcount,
    twidth,
    tsteep,
    tamp,
    tvent,
    tspike,
    trr,
    out_class,
    out_feats,
):
    """Classify beats at ``fids`` (global sample indices) over ``L`` leads.

    ``ys[l]`` holds lead l's filtered samples from global index ``y0s[l]`` (padded with NaN),
    ``rs[l]`` the raw samples at the same indices (``rs`` of shape (L, 0): none at hand);
    ``rr_prev[b]`` is the interval before beat b in samples (<= 0 when unknown). State arrays
    carry a leading lead axis. ``out_feats[b, l]`` gets the lead's features (see
    :func:`_lead_step`) and ``out_feats[b, 0, 6]`` the prematurity."""
    n_leads = ys.shape[0]
    for b in range(fids.shape[0]):
        usable = 0
        paced = False
        best_l = -1
        worst = 2.0
        for lead in range(n_leads):
            lo = fids[b] - y0s[lead] - ip[I_PRE_N]
            ok = _lead_step(
                ys[lead],
                rs[lead],
                lo,
                rr_prev[b],
                ip,
                fp,
                si[lead],
                sf[lead],
                templates[lead],
                tcount[lead],
                twidth[lead],
                tsteep[lead],
                tamp[lead],
                tvent[lead],
                tspike[lead],
                trr[lead],
                out_feats[b, lead],
            )
            if ok:
                usable += 1
                if out_feats[b, lead, 9] > fp[F_PACED_FRAC]:
                    paced = True
                c = out_feats[b, lead, 0]
                if not math.isnan(c) and c < worst:
                    worst = c
                    best_l = lead
        prem = np.nan
        if rr_prev[b] > 0 and sf[0, R_RR_MEAN] > 0.0:
            prem = rr_prev[b] / sf[0, R_RR_MEAN]
        out_feats[b, 0, 6] = prem
        if usable == 0:
            out_class[b] = C_Q
            sf[0, R_PREV_DOM] = 0.0
            continue
        if si[0, S_SEEN] <= ip[I_LEARN] or best_l < 0:
            out_class[b] = C_UNKNOWN
            sf[0, R_PREV_DOM] = 1.0
            continue
        if paced:  # joined a template whose beats carry pacer spikes
            out_class[b] = C_P
            _note_interval(sf, rr_prev[b])
            continue
        f = out_feats[b, best_l]
        c = f[0]
        wr = f[1]
        sr = f[2]
        ar = f[3]
        if not (1.0 / fp[F_Q_AMP] <= ar <= fp[F_Q_AMP]):
            out_class[b] = C_Q
            sf[0, R_PREV_DOM] = 0.0
            continue
        # unlike the dominant beat and wider or slower; a beat only mildly unlike it that
        # comes on time is not ventricular ectopy
        v = c < fp[F_V_CORR] and (wr > fp[F_V_WIDTH] or sr < fp[F_V_STEEP])
        # a premature beat that joined a template of ventricular beats and is clearly unlike
        # the dominant one shares their morphology: ventricular, whatever its measured width
        kj = f[5]
        if (
            not v
            and c < fp[F_V_CORR_MILD]
            and prem < fp[F_PREMATURE]
            and not math.isnan(kj)
            and tvent[best_l, int(kj)] == 1
        ):
            v = True
        if v and c > fp[F_V_CORR_MILD] and not (prem < fp[F_PREMATURE]):
            v = False
        out_class[b] = C_V if v else C_N
        if v:
            sf[0, R_PREV_DOM] = 0.0
        else:
            _note_interval(sf, rr_prev[b])


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _detect_classify_step(
    x,
    det_sos,
    det_ip,
    det_fp,
    det_si,
    det_sf,
    det_zi,
    ring_bp,
    ring_f,
    rr,
    cand_idx,
    cand_val,
    cand_slope,
    cand_fid,
    out_idx,
    out_amp,
    out_at,
    f_sos,
    f_zi,
    f_ref,
    ybuf,
    rbuf,
    pend,
    st,
    ip,
    fp,
    si,
    sf,
    templates,
    tcount,
    twidth,
    tsteep,
    tamp,
    tvent,
    tspike,
    trr,
    seg,
    segr,
    out_beat,
    out_class,
):
    """The QRS detector of :mod:`eicu.kernels.beats` and this classifier in one call per chunk,
    on one lead: the chunk is filtered into the ring ``ybuf`` (length a power of two; the raw
    samples go to ``rbuf`` of the same length, for the pacer-spike test), the
    detector's new beats wait in ``pend`` until their window has arrived, then are classified.
    ``st``: [pending count, previous beat sample (-1 none)]. Returns the number of classified
    beats written to ``out_beat``/``out_class``, or -1 when ``x`` holds an infinite value."""
    nb = _detector_step(
        x,
        det_sos,
        det_ip,
        det_fp,
        det_si,
        det_sf,
        det_zi,
        ring_bp,
        ring_f,
        rr,
        cand_idx,
        cand_val,
        cand_slope,
        cand_fid,
        out_idx,
        out_amp,
        out_at,
    )
    if nb < 0:
        return -1
    g_end = det_si[S_G]  # global index of the next sample
    g0 = g_end - x.shape[0]
    y = _sos_filter_step(x, f_sos, f_zi, f_ref)
    mask = ybuf.shape[0] - 1
    for k in range(x.shape[0]):
        ybuf[(g0 + k) & mask] = y[k]
        rbuf[(g0 + k) & mask] = x[k]
    n_pend = st[0]
    for j in range(nb):
        if n_pend < pend.shape[0]:
            pend[n_pend] = out_idx[j]
            n_pend += 1
    pre_n = ip[I_PRE_N]
    shift_n = ip[I_SHIFT_N]
    reach = ip[I_POST_N] + shift_n
    lo_off = pre_n + shift_n
    n_seg = seg.shape[1]
    n_out = 0
    done = 0
    st[0] = n_pend
    if n_pend == 0 or pend[0] + reach > g_end:
        return 0  # no beat's window complete yet (most chunks): nothing to allocate
    y0 = np.empty(1, dtype=np.int64)
    fid1 = np.empty(1, dtype=np.int64)
    rr1 = np.empty(1, dtype=np.int64)
    cls1 = np.empty(1, dtype=np.int64)
    feats1 = np.empty((1, 1, N_FEATS), dtype=np.float64)
    for j in range(n_pend):
        fid = pend[j]
        if fid + reach > g_end:
            break
        start = fid - lo_off
        for i in range(n_seg):
            gi = start + i
            if gi < 0 or gi < g_end - ybuf.shape[0]:
                seg[0, i] = np.nan  # before the record or overwritten
                segr[0, i] = np.nan
            else:
                seg[0, i] = ybuf[gi & mask]
                segr[0, i] = rbuf[gi & mask]
        y0[0] = start
        fid1[0] = fid
        rr1[0] = fid - st[1] if st[1] >= 0 else -1
        st[1] = fid
        _classify_beats(
            seg,
            segr,
            y0,
            fid1,
            rr1,
            ip,
            fp,
            si,
            sf,
            templates,
            tcount,
            twidth,
            tsteep,
            tamp,
            tvent,
            tspike,
            trr,
            cls1,
            feats1,
        )
        out_beat[n_out] = fid
        out_class[n_out] = cls1[0]
        n_out += 1
        done += 1
    for j in range(done, n_pend):
        pend[j - done] = pend[j]
    st[0] = n_pend - done
    return n_out


# The state of :func:`_detect_classify_step`, packed: float64 arrays in one buffer and int64
# arrays in another, so that a chunk costs one call with few arguments (the call overhead of
# some 40 array arguments was larger than the work on a 0.25 s chunk). ``lay[i]`` gives slot
# i's (offset, d0, d1, d2); slots in the order of the step's arguments.
F_SLOTS = (
    "det_sos",
    "det_fp",
    "det_sf",
    "det_zi",
    "ring_bp",
    "ring_f",
    "rr",
    "cand_val",
    "cand_slope",
    "out_amp",
    "f_sos",
    "f_zi",
    "f_ref",
    "ybuf",
    "rbuf",
    "fp",
    "sf",
    "templates",
    "tcount",
    "twidth",
    "tsteep",
    "tamp",
    "tspike",
    "trr",
    "seg",
    "segr",
)
I_SLOTS = (
    "det_ip",
    "det_si",
    "cand_idx",
    "cand_fid",
    "out_idx",
    "out_at",
    "pend",
    "st",
    "ip",
    "si",
    "tvent",
    "out_beat",
    "out_class",
)


@numba.njit(cache=True, nogil=True, inline="always")
def _v1(buf, lay, i):
    o = lay[i, 0]
    return buf[o : o + lay[i, 1]]


@numba.njit(cache=True, nogil=True, inline="always")
def _v2(buf, lay, i):
    o = lay[i, 0]
    d0 = lay[i, 1]
    d1 = lay[i, 2]
    return buf[o : o + d0 * d1].reshape((d0, d1))


@numba.njit(cache=True, nogil=True, inline="always")
def _v3(buf, lay, i):
    o = lay[i, 0]
    d0 = lay[i, 1]
    d1 = lay[i, 2]
    d2 = lay[i, 3]
    return buf[o : o + d0 * d1 * d2].reshape((d0, d1, d2))


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _detect_classify_packed(x, fbuf, flay, ibuf, ilay):
    """:func:`_detect_classify_step` on packed state (see ``F_SLOTS``, ``I_SLOTS``)."""
    return _detect_classify_step(
        x,
        _v2(fbuf, flay, 0),
        _v1(ibuf, ilay, 0),
        _v1(fbuf, flay, 1),
        _v1(ibuf, ilay, 1),
        _v1(fbuf, flay, 2),
        _v2(fbuf, flay, 3),
        _v1(fbuf, flay, 4),
        _v1(fbuf, flay, 5),
        _v1(fbuf, flay, 6),
        _v1(ibuf, ilay, 2),
        _v1(fbuf, flay, 7),
        _v1(fbuf, flay, 8),
        _v1(ibuf, ilay, 3),
        _v1(ibuf, ilay, 4),
        _v1(fbuf, flay, 9),
        _v1(ibuf, ilay, 5),
        _v2(fbuf, flay, 10),
        _v2(fbuf, flay, 11),
        _v1(fbuf, flay, 12),
        _v1(fbuf, flay, 13),
        _v1(fbuf, flay, 14),
        _v1(ibuf, ilay, 6),
        _v1(ibuf, ilay, 7),
        _v1(ibuf, ilay, 8),
        _v1(fbuf, flay, 15),
        _v2(ibuf, ilay, 9),
        _v2(fbuf, flay, 16),
        _v3(fbuf, flay, 17),
        _v2(fbuf, flay, 18),
        _v2(fbuf, flay, 19),
        _v2(fbuf, flay, 20),
        _v2(fbuf, flay, 21),
        _v2(ibuf, ilay, 10),
        _v2(fbuf, flay, 22),
        _v2(fbuf, flay, 23),
        _v2(fbuf, flay, 24),
        _v2(fbuf, flay, 25),
        _v1(ibuf, ilay, 11),
        _v1(ibuf, ilay, 12),
    )


@numba.njit(cache=True, nogil=True)  # no fast-math: NaN features must compare False
def _cross_lead(classes, corr0, steep0, corr1, steep1, cross_corr, v_steep):
    """:func:`eicu.signal.classify.cross_lead_ventricular`'s rule: a beat classed N turns V when
    it correlates below ``cross_corr`` with the dominant beat on one lead and is less steep than
    ``v_steep`` of it on the other, or when it correlates below ``-cross_corr`` (is inverted
    against the dominant beat) on both leads (a NaN feature never makes it so)."""
    out = classes.copy()
    for i in range(classes.shape[0]):
        if classes[i] != C_N:
            continue
        if (
            (corr1[i] < cross_corr and steep0[i] < v_steep)
            or (corr0[i] < cross_corr and steep1[i] < v_steep)
            or (corr0[i] < -cross_corr and corr1[i] < -cross_corr)
        ):
            out[i] = C_V
    return out
