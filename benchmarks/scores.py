"""Early-warning scores: speed of the array API, and NEWS2/MEWS/qSOFA on real ICU stays.

    EICU_DATA_DIR=/work/shared/data nice python benchmarks/scores.py [--stays N] [--beds N]

1. Speed: NEWS2 over ``--beds`` random beds through ``eicu.scores.news2`` (keyword arrays,
   validated), ``evaluate_array`` (a ready inputs x beds array, validated) and the bare kernel,
   on one core (the kernel is single-threaded); best of 5 runs.

2. PhysioNet/CinC Challenge 2012 set-a (Silva et al., Computing in Cardiology 2012;39:245-248;
   Goldberger et al., Circulation 2000;101:e215-e220): 3,996 ICU stays, first 48 h. For each
   stay the scores are assembled in time (eicu.scores.assemble_arrays) at every time any
   parameter was charted, and the highest score over the first 24 h and 48 h is compared with
   in-hospital death by AUROC, beside SAPS-I from Outcomes-a.txt (-1 = missing, excluded).

   Mapping of the set's parameters to eicu's parameter keys:
     HR -> HR; RespRate -> RR; SaO2 (arterial, from blood gases) -> SPO2, as the only
     saturation in the set; Temp -> TEMP; SysABP -> ABP_SYS and NISysABP -> NIBP_SYS (the
     arterial line preferred when fresh, as in the engine); FiO2 (a fraction) x 100 -> FIO2
     (above 21 % = supplemental oxygen); MechVent (recorded as 1 while ventilated) -> O2 = 1.
     GCS -> ACVPU: 15 -> A, 11-14 -> V, 6-10 -> P, 3-5 -> U, the cut points halfway between
     the median GCS of each AVPU level reported by Kelly et al. (Ann Emerg Med 2004;44:108-113:
     A 15, V 13, P 8, U 3); NEWS2 and qSOFA only use A versus not A. Sedated patients have low
     GCS, so they score for consciousness.
     Values <= 0 are recording artefacts of this set (HR, RR, pressures, temperature of 0 or
     below) and are dropped; other impossible values (a temperature of 1.9 degC) reach the
     assembly, which refuses to score them.
   Charted ICU data are hourly, not continuous, so the assembly uses a charting policy: HR,
   RR, SpO2 and pressures up to 90 min old, temperature 4 h, GCS 12 h, FiO2 and MechVent 12 h.
   Missing parameters are never scored as normal: "complete" is the highest complete score
   (stays with none are left out and counted); "partial" is the highest sum of the
   sub-scores that could be computed, a lower bound of the true score, over all stays. Air is
   never assumed: a stay without FiO2 or MechVent has no complete NEWS2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eicu.datasets import challenge2012_outcomes, challenge2012_stays, missing_reason
from eicu.kernels.scores import score_tables
from eicu.scores import (
    MEWS,
    NEWS2,
    QSOFA,
    AssemblyPolicy,
    DeteriorationTracker,
    ScoreDefinition,
    assemble_arrays,
    evaluate_array,
    news2,
)

US_PER_MIN = 60_000_000


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic, ties counted as one half."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label).astype(bool)
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(s.size)
    # average rank of each run of ties
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # 1-based ranks
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[label].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ---------------------------------------------------------------------------------- speed


def random_beds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    beds = {
        "rr": rng.integers(4, 40, n).astype(float),
        "spo2": rng.integers(75, 101, n).astype(float),
        "on_oxygen": rng.integers(0, 2, n).astype(float),
        "sbp": rng.integers(60, 240, n).astype(float),
        "hr": rng.integers(30, 180, n).astype(float),
        "acvpu": rng.integers(0, 5, n).astype(float),
        "temp_c": np.round(rng.uniform(33.0, 41.0, n), 1),
        "spo2_scale": rng.integers(1, 3, n).astype(float),
    }
    for v in beds.values():  # 2 % missing
        if v is not beds["spo2_scale"]:
            v[rng.random(n) < 0.02] = np.nan
    return beds


def best_rate(fn, n: int, repeats: int = 5) -> float:
    fn()  # compile / warm caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_speed(n: int) -> None:
    beds = random_beds(n)
    x = np.vstack([beds[spec.name] for spec in NEWS2.inputs])
    packed = NEWS2.packed
    r_kw = best_rate(lambda: news2(**beds), n)
    r_arr = best_rate(lambda: evaluate_array(NEWS2, x), n)
    r_kernel = best_rate(lambda: score_tables(x, packed), n)
    print(f"NEWS2 speed over {n:,} beds, one core, best of 5:")
    print(f"  news2(**arrays)         {r_kw / 1e6:8.2f} M bed-scores/s  (validated)")
    print(f"  evaluate_array(NEWS2,x) {r_arr / 1e6:8.2f} M bed-scores/s  (validated)")
    print(f"  score_tables kernel     {r_kernel / 1e6:8.2f} M bed-scores/s")


# ---------------------------------------------------------------------------------- real data

CHARTED_POLICY = AssemblyPolicy(
    max_age_s={
        "HR": 5400.0,
        "RR": 5400.0,
        "SPO2": 5400.0,
        "ABP_SYS": 5400.0,
        "NIBP_SYS": 5400.0,
        "TEMP": 4 * 3600.0,
        "ACVPU": 12 * 3600.0,
        "O2": 12 * 3600.0,
        "FIO2": 12 * 3600.0,
    },
    sources={
        "rr": ("RR",),
        "spo2": ("SPO2",),
        "on_oxygen": ("O2", "FIO2"),
        "sbp": ("ABP_SYS", "NIBP_SYS"),
        "hr": ("HR",),
        "acvpu": ("ACVPU",),
        "temp_c": ("TEMP",),
    },
)

SET_TO_KEY = {
    "HR": "HR",
    "RespRate": "RR",
    "SaO2": "SPO2",
    "Temp": "TEMP",
    "SysABP": "ABP_SYS",
    "NISysABP": "NIBP_SYS",
    "FiO2": "FIO2",
    "MechVent": "O2",
    "GCS": "ACVPU",
}


def gcs_to_acvpu(gcs: np.ndarray) -> np.ndarray:
    """15 -> A (0), 11-14 -> V (2), 6-10 -> P (3), 3-5 -> U (4); see the module docstring."""
    return np.select([gcs >= 15, gcs >= 11, gcs >= 6], [0.0, 2.0, 3.0], default=4.0)


def stay_series(raw: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, key in SET_TO_KEY.items():
        if name not in raw:
            continue
        t, v = raw[name]
        keep = v > 0
        t, v = t[keep], v[keep]
        if name == "FiO2":
            v = v * 100.0
        elif name == "GCS":
            v = gcs_to_acvpu(v)
        if t.size:
            out[key] = (t, v)
    return out


def as_of(series, eval_min: np.ndarray):
    """Latest value of each parameter at each evaluation time (NaN before the first)."""
    values, times = {}, {}
    for key, (t, v) in series.items():
        idx = np.searchsorted(t, eval_min, side="right") - 1
        have = idx >= 0
        safe = np.where(have, idx, 0)
        values[key] = np.where(have, v[safe], np.nan)
        times[key] = np.where(have, t[safe], 0.0).astype(np.int64) * US_PER_MIN
    return values, times


def max_scores(series, definition: ScoreDefinition, horizon_min: float, coverage=None):
    """(highest complete score or NaN, highest partial score, invalid count) within horizon.

    ``coverage`` (a dict), when given, counts evaluations and, per component, those in which
    the component could be scored."""
    all_t = np.unique(np.concatenate([t for t, _ in series.values()]))
    eval_min = all_t[all_t <= horizon_min]
    if eval_min.size == 0:
        return np.nan, np.nan, 0
    values, times = as_of(series, eval_min)
    batch = assemble_arrays(
        definition, values, times, eval_min.astype(np.int64) * US_PER_MIN, CHARTED_POLICY
    )
    sc = batch.scores
    if coverage is not None:
        coverage["evaluations"] = coverage.get("evaluations", 0) + eval_min.size
        coverage["complete"] = coverage.get("complete", 0) + int(sc.complete.sum())
        for name, pts in sc.components.items():
            coverage[name] = coverage.get(name, 0) + int((pts >= 0).sum())
    complete = sc.total[sc.complete]
    n_invalid = int(sum(v.sum() for v in batch.invalid.values()))
    best_complete = float(complete.max()) if complete.size else np.nan
    return best_complete, float(sc.partial_total.max()), n_invalid


def bench_challenge2012(limit: int | None) -> None:
    reason = missing_reason("challenge2012/set-a.tar.gz", "challenge2012/Outcomes-a.txt")
    if reason:
        print(f"challenge2012: skipped: {reason}")
        return
    from eicu.datasets import data_dir

    root = data_dir() / "challenge2012"
    outcomes = challenge2012_outcomes(root / "Outcomes-a.txt")
    defs = {"NEWS2": NEWS2, "MEWS": MEWS, "qSOFA": QSOFA}
    horizons = {"24h": 24 * 60.0, "48h": 48 * 60.0}
    rows: dict[tuple[str, str, str], list[float]] = {}
    death, saps, n_stays, n_invalid = [], [], 0, 0
    coverage: dict[str, int] = {}
    t0 = time.perf_counter()
    for rid, raw in challenge2012_stays(root / "set-a.tar.gz", limit=limit):
        series = stay_series(raw)
        if not series:
            continue
        out = outcomes[rid]
        death.append(out["In-hospital_death"])
        saps.append(out["SAPS-I"])
        n_stays += 1
        for dname, d in defs.items():
            for hname, h in horizons.items():
                cov = coverage if (dname, hname) == ("NEWS2", "48h") else None
                c, p, inv = max_scores(series, d, h, cov)
                rows.setdefault((dname, hname, "complete"), []).append(c)
                rows.setdefault((dname, hname, "partial"), []).append(p)
                n_invalid += inv
    elapsed = time.perf_counter() - t0
    y = np.array(death)
    saps_arr = np.array(saps, dtype=float)
    print(
        f"\nChallenge 2012 set-a: {n_stays} stays, {int(y.sum())} in-hospital deaths "
        f"({100 * y.mean():.1f} %), {elapsed:.1f} s; {n_invalid} evaluations met an "
        "impossible value (not scored)"
    )
    print(f"{'score':<6} {'window':<6} {'kind':<9} {'stays':>6} {'deaths':>6} {'AUROC':>6}   "
          f"SAPS-I AUROC on the same stays")  # fmt: skip
    for (dname, hname, kind), vals in rows.items():
        v = np.array(vals)
        sel = ~np.isnan(v) & (saps_arr >= 0)
        a = auroc(v[sel], y[sel])
        a_saps = auroc(saps_arr[sel], y[sel])
        print(
            f"{dname:<6} {hname:<6} {kind:<9} {int(sel.sum()):>6} {int(y[sel].sum()):>6} "
            f"{a:6.3f}   {a_saps:6.3f}"
        )
    n_eval = coverage.get("evaluations", 0)
    if n_eval:
        parts = ", ".join(
            f"{k} {100 * v / n_eval:.1f} %" for k, v in coverage.items() if k != "evaluations"
        )
        print(f"NEWS2 over 48 h, share of {n_eval} evaluations with each part scorable: {parts}")
    have_saps = saps_arr >= 0
    print(
        f"SAPS-I over all {int(have_saps.sum())} stays with a SAPS-I: "
        f"AUROC {auroc(saps_arr[have_saps], y[have_saps]):.3f}"
    )
    try:
        from sklearn.metrics import roc_auc_score  # optional: a cross-check of auroc()
    except ImportError:
        pass
    else:
        ref = roc_auc_score(y[have_saps], saps_arr[have_saps])
        print(f"  (scikit-learn roc_auc_score on SAPS-I: {ref:.6f}; ours differs by "
              f"{abs(ref - auroc(saps_arr[have_saps], y[have_saps])):.1e})")  # fmt: skip
    bench_trends(root, limit, outcomes)


def bench_trends(root: Path, limit: int | None, outcomes) -> None:
    """The HR/RR deterioration trend (DeteriorationTracker, default configuration) on the
    same stays: fed each charted HR and RR in time order over 48 h; a stay is "signalled"
    when the trend signal was active at any time. Deaths versus survivors, and the AUROC of
    the peak CUSUM (of HR and RR, whichever is higher) for in-hospital death. The baseline is
    the first hours after ICU admission, often still under anaesthesia or sedation, so a
    rise afterwards is common in survivors too; this measures that, it is not tuned away."""
    signalled, peak, death = [], [], []
    with_baseline = 0
    t0 = time.perf_counter()
    for rid, raw in challenge2012_stays(root / "set-a.tar.gz", limit=limit):
        series = {k: raw[n] for n, k in (("HR", "HR"), ("RespRate", "RR")) if n in raw}
        if not series:
            continue
        times = np.unique(np.concatenate([t for t, _ in series.values()]))
        cols = {}
        for key, (t, v) in series.items():
            col = np.full(times.size, np.nan)
            col[np.searchsorted(times, t)] = np.where(v > 0, v, np.nan)  # the last if repeated
            cols[key] = col
        tracker = DeteriorationTracker()
        hit, top = False, 0.0
        t_us = times.astype(np.int64) * US_PER_MIN
        for i in range(times.size):
            sig = tracker.feed(t_us[i : i + 1], {k: c[i : i + 1] for k, c in cols.items()})
            hit |= sig.active
            top = max([top, *(st.cusum for st in sig.trends.values())])
        with_baseline += any(st.baseline is not None for st in sig.trends.values())
        signalled.append(hit)
        peak.append(top)
        death.append(outcomes[rid]["In-hospital_death"])
    y = np.array(death, dtype=bool)
    hit_arr = np.array(signalled)
    print(
        f"\nHR/RR trend signal over 48 h ({time.perf_counter() - t0:.1f} s; {len(y)} stays with "
        f"HR or RR, {with_baseline} reached a baseline): signalled in "
        f"{100 * hit_arr[y].mean():.1f} % of deaths ({int(y.sum())}) and "
        f"{100 * hit_arr[~y].mean():.1f} % of survivors ({int((~y).sum())}); "
        f"AUROC of the peak CUSUM {auroc(np.array(peak), y):.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=1_000_000, help="beds for the speed test")
    parser.add_argument("--stays", type=int, default=None, help="only the first N stays")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-data", action="store_true")
    args = parser.parse_args()
    if not args.skip_speed:
        bench_speed(args.beds)
    if not args.skip_data:
        bench_challenge2012(args.stays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
