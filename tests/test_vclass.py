"""The ventricular-beat classifier: its kernel against a slow twin, and beats of known kind."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as sps

from eicu.kernels import vclass as k
from eicu.signal.classify import BeatClassifier, ClassifierConfig
from eicu.signal.filters import SosFilter
from tests.naive_detector import naive_spike_score
from tests.synthetic import ecg_from_rr

FS = 250.0


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    saa, sbb = float((da * da).sum()), float((db * db).sum())
    if saa <= 0 or sbb <= 0:
        return math.nan
    return float((da * db).sum() / math.sqrt(saa * sbb))


def _width(seg: np.ndarray, frac: float) -> float:
    d = np.abs(np.diff(seg))
    if d.max() <= 0:
        return math.nan
    above = np.flatnonzero(d >= frac * d.max())
    return float(above[-1] + 1 - above[0])


def _steep(seg: np.ndarray) -> float:
    p2p = seg.max() - seg.min()
    return float(np.abs(np.diff(seg)).max() / p2p) if p2p > 0 else math.nan


class NaiveLead:
    """One lead's templates, kept as Python lists."""

    def __init__(self) -> None:
        self.t: list[dict[str, object]] = []  # template, count, width, steep, amp, vent
        self.ref = -1
        self.seen = 0


def naive_classify(
    ys: np.ndarray,
    y0s: list[int],
    fids: list[int],
    rr_prev: list[int],
    cfg: ClassifierConfig,
    pre: int,
    post: int,
    shift: int,
    leads: list[NaiveLead],
    rr_mean: list[float],
    raws: np.ndarray | None = None,
    spike_n: int = 2,
) -> tuple[list[int], list[list[list[float]]]]:
    span = pre + post
    classes: list[int] = []
    feats_all: list[list[list[float]]] = []

    def best(y: np.ndarray, lo: int, tpl: np.ndarray) -> tuple[float, int]:
        scores = [
            (_pearson(y[lo + s : lo + s + span], tpl), lo + s) for s in range(-shift, 1 + shift)
        ]
        top = (
            max(c for c, _ in scores if not math.isnan(c))
            if any(not math.isnan(c) for c, _ in scores)
            else -2.0
        )
        for c, at in scores:
            if c == top:
                return c, at
        return -2.0, lo

    def pick_reference(lead: NaiveLead) -> None:
        normal = [i for i, t in enumerate(lead.t) if not t["vent"]]
        vent = [i for i, t in enumerate(lead.t) if t["vent"]]
        b = max(normal, key=lambda i: (lead.t[i]["count"], -i)) if normal else -1
        bv = max(vent, key=lambda i: (lead.t[i]["count"], -i)) if vent else -1
        takeover_rr = 60.0 / cfg.takeover_max_bpm * FS
        if bv >= 0 and (
            b < 0
            or (
                lead.t[bv]["count"] > cfg.takeover * lead.t[b]["count"]
                and lead.t[bv]["rr"] >= takeover_rr
            )
        ):
            lead.t[bv]["vent"] = False
            b = bv
        lead.ref = b

    for bi, f in enumerate(fids):
        per_lead: list[list[float]] = []
        usable = 0
        paced = False
        worst, worst_l = 2.0, -1
        for li, lead in enumerate(leads):
            y = ys[li]
            lo = f - y0s[li] - pre
            feats = [math.nan] * k.N_FEATS
            per_lead.append(feats)
            if lo - shift < 0 or lo + span + shift > y.shape[0]:
                continue
            if np.isnan(y[lo - shift : lo + span + shift]).any():
                continue
            seg = y[lo : lo + span]
            w = _width(seg, cfg.slope_frac)
            amp = float(seg.max() - seg.min())
            if not amp > 0:
                continue
            steep = _steep(seg)
            feats[4] = w
            spike = 0.0
            if raws is not None:
                feats[8] = naive_spike_score(raws[li][lo : lo + span], spike_n)
                spike = 1.0 if feats[8] >= cfg.spike_ratio else 0.0
            ref = lead.ref
            if ref >= 0:
                r = lead.t[ref]
                feats[0] = best(y, lo, r["tpl"])[0]
                if r["width"] > 0:
                    feats[1] = w / r["width"]
                if r["steep"] > 0:
                    feats[2] = steep / r["steep"]
                if r["amp"] > 0:
                    feats[3] = amp / r["amp"]
            bk, bc, blo = -1, -2.0, lo
            if ref >= 0:
                bc, blo = best(y, lo, lead.t[ref]["tpl"])
                bk = ref
            for ti, t in enumerate(lead.t):  # the first of equal maxima
                c, at = best(y, lo, t["tpl"])
                if c > bc or (ti < bk and c == bc):
                    bk, bc, blo = ti, c, at
            for t in lead.t:
                t["count"] *= 1.0 - 1.0 / cfg.forget_beats
            if bk >= 0 and bc >= cfg.match_corr:
                a = 1.0 / cfg.adapt_beats
                t = lead.t[bk]
                t["tpl"] = (1 - a) * t["tpl"] + a * y[blo : blo + span]
                for key, val in (("width", w), ("steep", steep), ("amp", amp)):
                    t[key] = (1 - a) * t[key] + a * val
                t["count"] += 1.0
                sa = max(a, 1.0 / t["count"])
                t["spike"] = (1 - sa) * t["spike"] + sa * spike
                rr = rr_prev[bi]
                if rr > 0:
                    t["rr"] = float(rr) if t["rr"] <= 0 else (1 - sa) * t["rr"] + sa * rr
                feats[5] = bk
                feats[7] = t["count"]
                feats[9] = t["spike"]
            else:
                new = {
                    "tpl": seg.copy(),
                    "width": w,
                    "steep": steep,
                    "amp": amp,
                    "count": 1.0,
                    "vent": False,
                    "spike": spike,
                    "rr": float(max(rr_prev[bi], 0)),
                }
                if len(lead.t) < k.K_TEMPLATES:
                    ki = len(lead.t)
                    lead.t.append(new)
                else:
                    cands = [i for i in range(len(lead.t)) if i != ref]
                    ki = min(cands, key=lambda i: (lead.t[i]["count"], i))
                    lead.t[ki] = new
                if ref >= 0 and ref != ki:
                    new["vent"] = bool(feats[0] < cfg.v_corr) and (
                        feats[1] > cfg.v_width or feats[2] < cfg.v_steep
                    )
                elif ref < 0 and w > cfg.narrow_s * FS:
                    new["vent"] = True
                feats[5] = ki
                feats[7] = 1.0
                feats[9] = spike
            pick_reference(lead)
            lead.seen += 1
            usable += 1
            paced = paced or feats[9] > cfg.paced_frac
            if not math.isnan(feats[0]) and feats[0] < worst:
                worst, worst_l = feats[0], li
        prem = rr_prev[bi] / rr_mean[0] if rr_prev[bi] > 0 and rr_mean[0] > 0 else math.nan
        per_lead[0][6] = prem
        feats_all.append(per_lead)
        # rr_mean: [mean interval of dominant beats, 1 when the beat before was dominant]
        if usable == 0:
            classes.append(k.C_Q)
            rr_mean[1] = 0.0
            continue
        if leads[0].seen <= cfg.learn_beats or worst_l < 0:
            classes.append(k.C_UNKNOWN)
            rr_mean[1] = 1.0
            continue
        c, wr, sr, ar = per_lead[worst_l][:4]
        if paced:
            classes.append(k.C_P)
            v = False
        elif not (1.0 / cfg.q_amp <= ar <= cfg.q_amp):
            classes.append(k.C_Q)
            rr_mean[1] = 0.0
            continue
        else:
            v = c < cfg.v_corr and (wr > cfg.v_width or sr < cfg.v_steep)
            kj = per_lead[worst_l][5]
            if (
                not v
                and c < cfg.v_corr_mild
                and prem < cfg.premature
                and not math.isnan(kj)
                and leads[worst_l].t[int(kj)]["vent"]
            ):
                v = True
            if v and c > cfg.v_corr_mild and not (prem < cfg.premature):
                v = False
            classes.append(k.C_V if v else k.C_N)
        if v:
            rr_mean[1] = 0.0
            continue
        # an interval between two dominant beats, or any while the mean is unknown
        if rr_prev[bi] > 0 and (rr_mean[1] > 0 or rr_mean[0] <= 0):
            m = rr_mean[0]
            rr_mean[0] = float(rr_prev[bi]) if m <= 0 else 0.875 * m + 0.125 * rr_prev[bi]
        rr_mean[1] = 1.0
    return classes, feats_all


def _raw_two_kinds(seed: int, n: int, fs: float = FS) -> tuple[np.ndarray, np.ndarray]:
    """ECG of narrow beats with some wide, inverted, premature ones; (x, R peaks)."""
    rng = np.random.default_rng(seed)
    rr = rng.uniform(0.7, 0.9, size=n)
    vent = rng.random(n) < 0.25
    vent[:10] = False
    rr[vent] *= 0.65
    narrow, r_idx = ecg_from_rr(rr, fs, noise_mv=0.01, seed=seed)
    wide, _ = ecg_from_rr(rr, fs, qrs_width_s=0.14, p_wave=False, seed=seed + 1)
    x = narrow.copy()
    half = round(0.3 * fs)
    for i, r in enumerate(r_idx[1:], start=1):
        if vent[i - 1]:
            lo, hi = max(r - half, 0), min(r + half, x.shape[0])
            x[lo:hi] = -wide[lo:hi]
    return x, r_idx


def _beats_of_two_kinds(
    seed: int, n: int, fs: float = FS
) -> tuple[np.ndarray, list[int], list[int]]:
    """Filtered ECG of narrow beats with some wide, inverted, premature ones; (y, fids, rr)."""
    x, r_idx = _raw_two_kinds(seed, n, fs)
    sos = sps.butter(2, [0.5, 40.0], "bandpass", fs=fs, output="sos")
    y = SosFilter(sos).step(x)
    fids = r_idx.tolist()
    rr_prev = [-1, *np.diff(r_idx).tolist()]
    return y, fids, rr_prev


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(5, 60),
    gap=st.booleans(),
    two=st.booleans(),
    spikes=st.booleans(),
)
def test_classifier_matches_naive_twin(
    seed: int, n: int, gap: bool, two: bool, spikes: bool
) -> None:
    y, fids, rr_prev = _beats_of_two_kinds(seed, n)
    raw = None
    if spikes:  # raw samples with a one-sample pulse before some beats
        raw = y.copy()
        rng = np.random.default_rng(seed)
        for f in fids:
            if rng.random() < 0.7 and f >= 20:
                raw[f - 20] += 1.0
    if gap:
        lo = np.random.default_rng(seed).integers(0, y.shape[0] - 50)
        y[lo : lo + 40] = np.nan
        if raw is not None:
            raw[lo : lo + 40] = np.nan
    ys = np.stack([y, -0.5 * y + 0.01 * np.roll(y, 3)]) if two else y[None, :]
    rs = None if raw is None else np.stack([raw, -0.5 * raw])[: ys.shape[0]]
    cfg = ClassifierConfig(learn_beats=4)
    clf = BeatClassifier(FS, ys.shape[0], cfg)
    # in two pushes, to exercise the carried state
    cut = len(fids) // 2
    z = np.zeros(ys.shape[0], np.int64)
    c1, f1 = clf.classify(ys, z, fids[:cut], rr_prev[:cut], rs)
    c2, f2 = clf.classify(ys, z, fids[cut:], rr_prev[cut:], rs)
    leads = [NaiveLead() for _ in range(ys.shape[0])]
    want_c, want_f = naive_classify(
        ys,
        [0] * ys.shape[0],
        fids,
        rr_prev,
        cfg,
        clf.pre_n,
        clf.post_n,
        clf.shift_n,
        leads,
        [0.0, 0.0],
        rs,
        max(1, round(0.010 * FS)),
    )
    assert np.concatenate([c1, c2]).tolist() == want_c
    got_f = np.concatenate([f1, f2])
    np.testing.assert_allclose(got_f, np.array(want_f), rtol=1e-6, atol=1e-9, equal_nan=True)


def test_wide_premature_beats_are_ventricular_and_narrow_ones_not() -> None:
    y, fids, rr_prev = _beats_of_two_kinds(7, 120)
    rng = np.random.default_rng(7)
    rr = rng.uniform(0.7, 0.9, size=120)
    vent = rng.random(120) < 0.25
    vent[:10] = False
    clf = BeatClassifier(FS)
    classes, _ = clf.classify(y[None, :], np.array([0]), fids, rr_prev)
    truth = np.concatenate([[False], vent])[: len(fids)]
    judged = classes[12:]
    assert (judged[truth[12:]] == k.C_V).all()
    assert (judged[~truth[12:]] == k.C_N).all()
    del rr


def test_beats_in_a_gap_are_unclassifiable_and_bad_input_is_refused() -> None:
    y, fids, rr_prev = _beats_of_two_kinds(3, 30)
    y[:] = np.nan
    classes, _ = BeatClassifier(FS).classify(y[None, :], np.array([0]), fids, rr_prev)
    assert set(classes.tolist()) == {k.C_Q}
    clf = BeatClassifier(FS, 2)
    with pytest.raises(ValueError, match="shape"):
        clf.classify(y[None, :], np.array([0]), fids, rr_prev)
    with pytest.raises(ValueError, match="inf"):
        BeatClassifier(FS).classify(np.full((1, 10), np.inf), np.array([0]), [5], [1])
    with pytest.raises(ValueError, match="fs_hz"):
        BeatClassifier(0.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n_beats=st.integers(1, 60))
def test_classifier_matches_naive_twin_on_random_shapes(seed: int, n_beats: int) -> None:
    """Every beat a new shape: templates fill up and the least used are replaced."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=4000).cumsum()
    fids = sorted(rng.choice(np.arange(0, 4100), size=n_beats, replace=False).tolist())
    rr_prev = [-1, *np.diff(fids).tolist()]
    cfg = ClassifierConfig(learn_beats=2, match_corr=0.6)
    clf = BeatClassifier(FS, 1, cfg)
    got_c, got_f = clf.classify(y[None, :], np.array([0]), fids, rr_prev)
    want_c, want_f = naive_classify(
        y[None, :],
        [0],
        fids,
        rr_prev,
        cfg,
        clf.pre_n,
        clf.post_n,
        clf.shift_n,
        [NaiveLead()],
        [0.0, 0.0],
    )
    assert got_c.tolist() == want_c
    np.testing.assert_allclose(got_f, np.array(want_f), rtol=1e-6, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("chunk", [23, 62, 250, 10_000])
def test_streaming_classifier_chunked_equals_detector_then_classifier(chunk: int) -> None:
    from eicu.signal.beats import BeatDetector
    from eicu.signal.classify import StreamingClassifier

    x, r_idx = _raw_two_kinds(chunk, 150)
    for r in r_idx[60:]:  # pacer pulses from the 60th beat: its template becomes paced
        x[r - 20] += 1.0
    x[3000:3100] = np.nan
    sc = StreamingClassifier(FS)
    parts = [sc.push(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    got_s = np.concatenate([p.sample for p in parts])
    got_c = np.concatenate([p.beat_class for p in parts])
    # the same beats classified in one call over the whole filtered record
    fids = BeatDetector.ecg(FS).push(x).sample
    sos = sps.butter(2, [0.5, 40.0], "bandpass", fs=FS, output="sos")
    y = SosFilter(sos).step(x)
    rr_prev = np.diff(np.concatenate([[-1], fids]))
    rr_prev[0] = -1
    want_c, _ = BeatClassifier(FS).classify(y[None, :], np.array([0]), fids, rr_prev, x[None, :])
    np.testing.assert_array_equal(got_s, fids[: got_s.shape[0]])
    assert got_s.shape[0] >= fids.shape[0] - 1
    np.testing.assert_array_equal(got_c, want_c[: got_c.shape[0]])
    assert (got_c == k.C_N).sum() >= 30
    assert (got_c == k.C_P).sum() >= 30
