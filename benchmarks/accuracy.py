"""Accuracy and speed of eicu's signal pipeline on the PhysioNet records, beside peer detectors.

    EICU_DATA_DIR=/path/to/data python benchmarks/accuracy.py [--records 101 203] [--no-peers]
        [--skip qrs,rhythm,v,leads,vt,pulse,speed]

Sections (each prints one table):

- QRS: gross sensitivity (Se) and positive predictivity (+P) over the MIT-BIH Arrhythmia
  records present (Moody & Mark 2001), channel 0, every beat annotation, 150 ms window, scored
  with ``wfdb.processing.compare_annotations``; eicu's streaming detector fed in 1 s chunks,
  beside wfdb's xqrs and gqrs and neurokit2's default and Pan-Tompkins methods. Speed is samples
  per second of detection on one core (wall time of the detector call, record already in memory).
- RHYTHM, V, LEADS take a record's ECG leads as a bed's monitor does (:func:`bed_channels`):
  lead II (MLII) is the primary lead where the record has it, else channel 0.
- RHYTHM: episodes of the pipeline's AFIB, VTACH and VFIB flags against the ``(AFIB``,
  ``(VT`` and ``(VFL`` rhythm annotations.
- V: ventricular ectopic beats the ANSI/AAMI EC57 way (per record and gross, with and without
  the paced records and the 5 min learning period), EC57 run statistics (couplets, short and
  long runs), and VT episodes and durations against the ``(VT`` annotations.
- LEADS: EC57 VEB of the classifier on the primary lead alone beside both channels (the classifier
  kernel's multi-lead rule), on the same beats.
- VT: the 2015 challenge VT alarms (Clifford et al. 2015): TPR, TNR and score
  (TP+TN)/(TP+TN+FP+5*FN) beside the peer that calls every alarm true, plus a 5-fold
  cross-validated score of the rule's constants.
- PULSE: ABP and PLETH pulses against the wabp onsets that come with the 2015 records.
- SPEED: samples per second of the streaming detector alone, of the detector with the beat
  classifier on (one kernel call per chunk) and of the whole pipeline.

Records: Goldberger et al., PhysioBank, PhysioToolkit, and PhysioNet, Circulation 101(23), 2000.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eicu.datasets import data_dir, mitdb_records
from eicu.kernels import vclass as kv
from eicu.signal import ec57
from eicu.signal.alarms import (
    ALARM_WINDOW_S,
    LeadEvidence,
    PulseEvidence,
    VtRule,
    decide,
    gather,
    usable_leads,
    verify_alarm,
)
from eicu.signal.beats import BeatDetector
from eicu.signal.classify import (
    DEFAULT_CLASSIFIER,
    ClassifierConfig,
    StreamingClassifier,
    cross_lead_ventricular,
    full_pause,
    pause_candidate,
)
from eicu.signal.cli_analyze import analyze_record
from eicu.signal.cli_verify import ALARM_AT_S, replay_record
from eicu.signal.events import Beat, Event, RhythmFlag, VentricularRun
from eicu.signal.pipeline import BedSignalPipeline
from eicu.signal.records import (
    Record,
    quiet_wfdb,
    read_beat_annotations,
    read_record,
    read_rhythm_episodes,
    signal_key_for_name,
    wfdb_module,
)
from eicu.signal.rhythm import VT_BEATS

Detector = Callable[[np.ndarray, float], np.ndarray]


def eicu_streaming(x: np.ndarray, fs: float) -> np.ndarray:
    det = BeatDetector.ecg(fs)
    n = round(fs)
    return np.concatenate([det.push(x[i : i + n]).sample for i in range(0, x.shape[0], n)])


def _peers() -> dict[str, Detector]:
    wfdb = wfdb_module()
    peers: dict[str, Detector] = {}

    def xqrs(x: np.ndarray, fs: float) -> np.ndarray:
        with quiet_wfdb():
            return np.asarray(wfdb.processing.xqrs_detect(x, fs, verbose=False), dtype=np.int64)

    def gqrs(x: np.ndarray, fs: float) -> np.ndarray:
        with quiet_wfdb():
            return np.asarray(wfdb.processing.gqrs_detect(x, fs), dtype=np.int64)

    peers["wfdb xqrs"] = xqrs
    peers["wfdb gqrs"] = gqrs
    try:
        import neurokit2 as nk
    except ImportError:
        print("neurokit2 not installed: its detectors are left out", file=sys.stderr)
        return peers

    def nk_method(method: str) -> Detector:
        def run(x: np.ndarray, fs: float) -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, info = nk.ecg_peaks(x, sampling_rate=int(fs), method=method)
            return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)

        return run

    peers["neurokit2 default"] = nk_method("neurokit")
    peers["neurokit2 pantompkins1985"] = nk_method("pantompkins1985")
    return peers


def qrs_section(root: Path, records: list[str], with_peers: bool) -> None:
    wfdb = wfdb_module()
    detectors: dict[str, Detector] = {"eicu (streaming, 1 s chunks)": eicu_streaming}
    if with_peers:
        detectors.update(_peers())
    totals = {name: [0, 0, 0, 0.0, 0] for name in detectors}  # tp fn fp seconds samples
    no_vf = {name: [0, 0, 0] for name in detectors}  # outside annotated flutter/fibrillation
    eicu_streaming(np.zeros(2000), 360.0)  # load the compiled kernels outside the timing
    print("\nQRS detection, MIT-BIH channel 0, 150 ms window (per record: Se% / +P%)")
    print(f"{'record':8s}" + "".join(f"{name[:26]:>28s}" for name in detectors))
    for r in records:
        path = root / "mitdb" / r
        rec = read_record(path)
        x = np.ascontiguousarray(rec.signals[:, 0])
        ref = read_beat_annotations(path)
        tol = round(0.15 * rec.fs_hz)
        vf = read_rhythm_episodes(path, "VFL", x.shape[0]) + read_rhythm_episodes(
            path, "VF", x.shape[0]
        )

        def outside_vf(idx: np.ndarray, vf: list[tuple[int, int]] = vf) -> np.ndarray:
            keep = np.ones(idx.shape[0], dtype=bool)
            for a, b in vf:
                keep &= (idx < a) | (idx >= b)
            return idx[keep]

        cells = []
        for name, fn in detectors.items():
            t0 = time.perf_counter()
            found = fn(x, rec.fs_hz)
            dt = time.perf_counter() - t0
            with quiet_wfdb():
                c = wfdb.processing.compare_annotations(ref, np.sort(found), tol)
            with quiet_wfdb():
                c2 = wfdb.processing.compare_annotations(
                    outside_vf(ref), outside_vf(np.sort(found)), tol
                )
            nv = no_vf[name]
            nv[0] += c2.tp
            nv[1] += c2.fn
            nv[2] += c2.fp
            t = totals[name]
            t[0] += c.tp
            t[1] += c.fn
            t[2] += c.fp
            t[3] += dt
            t[4] += x.shape[0]
            se = 100.0 * c.tp / max(c.tp + c.fn, 1)
            pp = 100.0 * c.tp / max(c.tp + c.fp, 1)
            cells.append(f"{se:6.2f} / {pp:6.2f} ({c.fn:3d}/{c.fp:3d})")
        print(f"{r:8s}" + "".join(f"{cell:>28s}" for cell in cells), flush=True)
    print(
        f"\n{'detector':32s} {'TP':>7s} {'FN':>6s} {'FP':>6s} {'Se %':>7s} {'+P %':>7s} "
        f"{'Msamples/s':>11s}"
    )
    for name, (tp, fn, fp, secs, n) in totals.items():
        se = 100.0 * tp / max(tp + fn, 1)
        pp = 100.0 * tp / max(tp + fp, 1)
        print(f"{name:32s} {tp:7d} {fn:6d} {fp:6d} {se:7.3f} {pp:7.3f} {n / secs / 1e6:11.2f}")
    print(f"({len(records)} records; cells: Se / +P (FN/FP))")
    print("\nthe same, leaving out annotated ventricular flutter/fibrillation (as ANSI/AAMI EC57)")
    for name, (tp, fn, fp) in no_vf.items():
        se = 100.0 * tp / max(tp + fn, 1)
        pp = 100.0 * tp / max(tp + fp, 1)
        print(f"{name:32s} {tp:7d} {fn:6d} {fp:6d} {se:7.3f} {pp:7.3f}")


def bed_channels(rec: Record) -> list[int]:
    """The record's channels in the order a bed's monitor takes its ECG leads: lead II first
    when the record has it (the pipeline's primary lead on a bed is ECG_II), then the others
    in their order; a record without lead II keeps its own order. On MIT-BIH this moves only
    record 114, whose channel 0 is V5 and channel 1 MLII."""
    lead_ii = [j for j, name in enumerate(rec.sig_names) if signal_key_for_name(name) == "ECG_II"]
    first = lead_ii[0] if lead_ii else 0
    return [first] + [j for j in range(len(rec.sig_names)) if j != first]


def _ventricular_pass(path: Path, one_lead: bool = False) -> dict[str, Any]:
    """Beats, their classes and the ventricular calls of the bed's primary ECG lead (lead II
    where the record has it, else channel 0: :func:`bed_channels`) through the pipeline (1 s),
    with the next channel as the bed's second ECG lead unless ``one_lead``."""
    rec = read_record(path)
    order = bed_channels(rec)
    x = rec.signals[:, order[0]]
    feeds = {"ECG_II": x}
    if not one_lead and len(order) > 1:
        feeds["ECG_V"] = rec.signals[:, order[1]]
    pipeline = BedSignalPipeline({k: rec.fs_hz for k in feeds})
    n = round(rec.fs_hz)
    beats: list[Beat] = []
    flags: list[RhythmFlag] = []
    runs: list[VentricularRun] = []
    for i in range(0, x.shape[0], n):
        events = [ev for k, v in feeds.items() for ev in pipeline.push(k, v[i : i + n], i)]
        for ev in events:
            if ev.signal != "ECG_II":
                continue
            if isinstance(ev, Beat):
                beats.append(ev)
            elif isinstance(ev, RhythmFlag):
                flags.append(ev)
            elif isinstance(ev, VentricularRun):
                runs.append(ev)
    episodes = _flag_episodes(flags, x.shape[0])
    return {"fs": rec.fs_hz, "n": x.shape[0], "beats": beats, "eps": episodes, "runs": runs}


def _flag_episodes(flags: list[RhythmFlag], n: int) -> dict[str, list[tuple[int, int]]]:
    """Each label's episodes (start sample, end sample) from its flags in order; one still up
    at the end of the ``n`` samples ends there."""
    episodes: dict[str, list[tuple[int, int]]] = {}
    open_at: dict[str, int] = {}
    for f in flags:
        if f.state == "start":
            open_at[f.label] = f.sample
        elif f.label in open_at:
            episodes.setdefault(f.label, []).append((open_at.pop(f.label), f.sample))
    for label, s0 in open_at.items():
        episodes.setdefault(label, []).append((s0, n))
    return episodes


def _outside(idx: np.ndarray, eps: list[tuple[int, int]]) -> np.ndarray:
    keep = np.ones(idx.shape[0], dtype=bool)
    for a, b in eps:
        keep &= (idx < a) | (idx >= b)
    return keep


def _called_v(beats: list[Beat], rule: tuple[float, float, float] | None = None) -> np.ndarray:
    """The pipeline's V calls, or those of another threshold setting (corr, width, steepness)
    re-applied to the same beats' features (with the cross-lead rule at that steepness and the
    compensatory-pause rule)."""
    if rule is None:
        return np.array([b.beat_class == "V" for b in beats], dtype=bool)
    c_max, w_min, s_max = rule
    mild, on_time = DEFAULT_CLASSIFIER.v_corr_mild, DEFAULT_CLASSIFIER.premature
    out = np.zeros(len(beats), dtype=bool)
    judged = np.zeros(len(beats), dtype=bool)
    for i, b in enumerate(beats):
        if b.beat_class not in ("N", "V") or b.template_corr is None:
            continue
        judged[i] = True
        c, wr, sr = b.template_corr, b.width_ratio, b.steep_ratio
        v = c < c_max and ((wr is not None and wr > w_min) or (sr is not None and sr < s_max))
        prem = b.prematurity
        if v and c > mild and not (prem is not None and prem < on_time):
            v = False
        out[i] = v

    def feature(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    crossed = cross_lead_ventricular(
        np.where(out, kv.C_V, kv.C_N),
        feature([b.template_corr for b in beats]),
        feature([b.steep_ratio for b in beats]),
        feature([b.other_corr for b in beats]),
        feature([b.other_steep_ratio for b in beats]),
        ClassifierConfig(v_steep=s_max),
    )
    v = judged & (crossed == kv.C_V)
    # the pipeline's compensatory-pause rule (ClassifierConfig.pause_full), on the same calls
    for i in range(1, len(beats) - 1):
        b, after = beats[i], beats[i + 1]
        prem, corr = b.prematurity, b.template_corr
        if not judged[i] or v[i] or prem is None or corr is None or not pause_candidate(prem, corr):
            continue
        if not judged[i + 1] or v[i + 1]:
            continue
        before = b.sample - beats[i - 1].sample
        if full_pause(before, after.sample - b.sample, before / prem, after.template_corr):
            v[i] = True
    return v


def _false_v_features(
    ref: np.ndarray,
    cls: np.ndarray,
    det: np.ndarray,
    v: np.ndarray,
    beats: list[Beat],
    tol: int,
    learn: int,
) -> list[tuple[float, float, bool]]:
    """Of each V call on a reference N beat after ``learn`` (the Nv of EC57): its template
    correlation, prematurity (NaN when not at hand) and whether it lies in a run of 3 or more
    consecutive V calls."""
    out: list[tuple[float, float, bool]] = []
    if ref.shape[0] == 0:
        return out
    for i in np.flatnonzero(v & (det >= learn)).tolist():
        j = int(np.searchsorted(ref, det[i]))
        near = [k for k in (j - 1, j) if 0 <= k < ref.shape[0]]
        k = min(near, key=lambda k: abs(int(ref[k]) - int(det[i])))
        if abs(int(ref[k]) - int(det[i])) > tol or cls[k] != "N":
            continue
        lo, hi = i, i
        while lo > 0 and v[lo - 1]:
            lo -= 1
        while hi + 1 < v.shape[0] and v[hi + 1]:
            hi += 1
        b = beats[i]
        out.append(
            (
                np.nan if b.template_corr is None else b.template_corr,
                np.nan if b.prematurity is None else b.prematurity,
                hi - lo + 1 >= 3,
            )
        )
    return out


def ventricular_section(root: Path, records: list[str]) -> None:
    """EC57 VEB statistics, EC57 run statistics and VT episodes, per record and gross."""
    wfdb = wfdb_module()
    data: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray]] = {}
    t0 = time.perf_counter()
    for r in records:
        path = root / "mitdb" / r
        res = _ventricular_pass(path)
        with quiet_wfdb():
            ann = wfdb.rdann(str(path), "atr")
        is_beat, cls = ec57.reference_classes(ann.symbol)
        data[r] = (res, np.asarray(ann.sample)[is_beat], cls[is_beat])
    secs = time.perf_counter() - t0
    print(
        "\nVentricular ectopic beats, ANSI/AAMI EC57: beat-by-beat, 150 ms, reference V = V and "
        "E labels, annotated VF/flutter left out;\nV calls on reference F (fusion) and Q "
        "(paced, unclassifiable) beats not "
        "counted against +P; Ov = V calls with no reference beat (counted only in '+P incl. Ov')"
    )
    print(
        f"{'record':7s} {'ref V':>6s} {'Vv':>5s} {'Vx':>5s} {'Nv':>5s} {'Sv':>4s} {'Fv':>4s} "
        f"{'Qv':>4s} {'Ov':>4s} {'Se %':>6s} {'+P %':>6s}   (after the first 5 min)"
    )
    ec57_way = ec57.VebCounts()
    every = ec57.VebCounts()
    runs_ec57 = ec57.RunCounts()
    runs_all = ec57.RunCounts()
    grid = [(c, w, s) for c in (0.8, 0.85, 0.9) for w in (1.15, 1.2, 1.3) for s in (0.7, 0.8, 0.9)]
    per_rule: dict[str, list[ec57.VebCounts]] = {}
    false_v: dict[str, list[tuple[float, float, bool]]] = {}
    for r, (res, ref, cls) in data.items():
        fs = res["fs"]
        tol = round(0.15 * fs)
        learn = round(ec57.LEARNING_S * fs)
        beats = res["beats"]
        det = np.array([b.sample for b in beats], dtype=np.int64)
        order = np.argsort(det, kind="stable")
        beats = [beats[i] for i in order]
        det = det[order]
        # EC57 leaves annotated ventricular flutter/fibrillation out of beat-by-beat scoring
        vf = read_rhythm_episodes(root / "mitdb" / r, "VFL", res["n"]) + read_rhythm_episodes(
            root / "mitdb" / r, "VF", res["n"]
        )
        keep_ref = _outside(ref, vf)
        keep_det = _outside(det, vf)
        ref, cls = ref[keep_ref], cls[keep_ref]
        beats = [b for b, k in zip(beats, keep_det.tolist(), strict=True) if k]
        det = det[keep_det]
        v = _called_v(beats)
        after = ec57.veb_counts(ref, cls, det, v, tol, learn)
        whole = ec57.veb_counts(ref, cls, det, v, tol, 0)
        every.add(whole)
        ref_runs = ec57.v_runs(ref, cls == "V")
        det_runs = ec57.v_runs(
            [b.sample for b in beats if b.beat_class in ("N", "V", "P")],
            [b.beat_class == "V" for b in beats if b.beat_class in ("N", "V", "P")],
        )
        runs_all.add(ec57.run_counts(ref_runs, det_runs, tol, 0))
        paced = r in ec57.PACED_MITDB
        if not paced:
            ec57_way.add(after)
            runs_ec57.add(ec57.run_counts(ref_runs, det_runs, tol, learn))
            per_rule[r] = [
                ec57.veb_counts(ref, cls, det, _called_v(beats, g), tol, learn) for g in grid
            ]
        if not paced:
            false_v[r] = _false_v_features(ref, cls, det, v, beats, tol, learn)
        c = after
        print(
            f"{r:7s} {c.vv + c.vx:6d} {c.vv:5d} {c.vx:5d} {c.nv:5d} {c.sv:4d} {c.fv:4d} "
            f"{c.qv:4d} {c.ov:4d} {c.se:6.1f} {c.ppv:6.1f}" + ("   paced" if paced else "")
        )
    for name, c in (
        (f"EC57 way: paced records ({' '.join(ec57.PACED_MITDB)}) and first 5 min out", ec57_way),
        ("every record, every beat", every),
    ):
        print(
            f"gross, {name}: Vv {c.vv} Vx {c.vx} Nv {c.nv} Sv {c.sv} Fv {c.fv} Ov {c.ov}: "
            f"Se {c.se:.1f}%  +P {c.ppv:.1f}%  (+P incl. Ov {c.ppv_with_extra:.1f}%)"
        )
    print("false V calls on reference N beats (Nv), EC57 way, the records with most:")
    for r in sorted(false_v, key=lambda r: -len(false_v[r]))[:4]:
        f = np.array([(a, b, float(c)) for a, b, c in false_v[r]]).reshape(-1, 3)
        if f.shape[0] == 0:
            continue
        print(
            f"  {r}: {f.shape[0]}; template correlation median {np.nanmedian(f[:, 0]):.2f}, "
            f"below 0 in {100 * np.mean(f[:, 0] < 0):.0f}%; prematurity median "
            f"{np.nanmedian(f[:, 1]):.2f}; in runs of 3 or more V calls {100 * f[:, 2].mean():.0f}%"
        )
    # leave one record out: the setting best on the other records (min of Se and +P), scored on
    # the record left out; the features are those of the shipped run, re-thresholded
    held = ec57.VebCounts()
    names = list(per_rule)
    for r in names:
        train = [ec57.VebCounts() for _ in grid]
        for other in names:
            if other != r:
                for j in range(len(grid)):
                    train[j].add(per_rule[other][j])
        best = max(range(len(grid)), key=lambda j: min(train[j].se, train[j].ppv))
        held.add(per_rule[r][best])
    print(
        f"leave-one-record-out choice among {len(grid)} (corr, width, steepness) settings, EC57 "
        f"way: Se {held.se:.1f}%  +P {held.ppv:.1f}%"
    )
    print(
        "published, inter-patient (trained on other records, MIT-BIH DS2, EC57): de Chazal et "
        "al., IEEE TBME 51(7):1196-1206, 2004: VEB Se 77.7%, +P 81.9%"
    )
    print(f"({len(records)} records, {secs:.0f} s through the pipeline in 1 s chunks)")
    for name, rc in (("EC57 way", runs_ec57), ("every record", runs_all)):
        cells = []
        for k in ec57.RUN_KINDS:
            se = 100.0 * rc.ref_found[k] / max(rc.ref_all[k], 1)
            pp = 100.0 * rc.det_true[k] / max(rc.det_all[k], 1)
            cells.append(
                f"{k} Se {se:.1f}% ({rc.ref_found[k]}/{rc.ref_all[k]}) "
                f"+P {pp:.1f}% ({rc.det_true[k]}/{rc.det_all[k]})"
            )
        print(f"runs, {name}: " + "; ".join(cells))
    _paced_table(data)
    _vt_episodes(root, data)


def _paced_table(data: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray]]) -> None:
    """What the paced records' beats are called (reference Q = paced, fusion of paced and
    normal, unclassifiable), their AF and VT time, and beats called paced on the other records."""
    print(
        "\nPaced records (whole record): reference Q beats (/ f Q) called P, N, V; "
        "AFIB and VTACH flagged; runs of >= 3 V"
    )
    print(
        f"{'record':7s} {'ref Q':>6s} {'P':>5s} {'N':>5s} {'V':>5s} {'AFIB s':>7s} "
        f"{'VTACH s':>8s} {'runs>=3':>8s}"
    )
    other_p = 0
    other_n = 0
    for r, (res, ref, cls) in data.items():
        fs = res["fs"]
        beats = sorted(res["beats"], key=lambda b: b.sample)
        if r not in ec57.PACED_MITDB:
            other_p += sum(b.beat_class == "P" for b in beats)
            other_n += sum(b.beat_class is not None for b in beats)
            continue
        det = np.array([b.sample for b in beats], dtype=np.int64)
        tol = round(0.15 * fs)
        called = {"P": 0, "N": 0, "V": 0}
        for s in ref[cls == "Q"].tolist():
            j = int(np.searchsorted(det, s))
            near = [i for i in (j - 1, j) if 0 <= i < det.shape[0] and abs(det[i] - s) <= tol]
            if near:
                c = beats[min(near, key=lambda i: abs(det[i] - s))].beat_class
                if c in called:
                    called[c] += 1
        eps = res["eps"]
        af_s = sum(b - a for a, b in eps.get("AFIB", [])) / fs
        vt_s = sum(b - a for a, b in eps.get("VTACH", [])) / fs
        runs3 = sum(1 for run in res["runs"] if run.n_beats >= 3)
        print(
            f"{r:7s} {int((cls == 'Q').sum()):6d} {called['P']:5d} {called['N']:5d} "
            f"{called['V']:5d} {af_s:7.0f} {vt_s:8.0f} {runs3:8d}"
        )
    print(f"beats called P on the other records: {other_p} of {other_n}")


def _vt_episodes(
    root: Path, data: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray]]
) -> None:
    """VT (and VT or VF) episodes of the ventricular pass against the rhythm annotations."""
    print("\nVT episodes against the (VT rhythm annotations (MIT-BIH: runs of 3 or more V beats)")
    print(
        f"{'record':7s} {'ref':>4s} {'VTACH':>6s} {'run>=3':>7s} {'VT eps':>7s} {'ref s':>6s} "
        f"{'VTACH s':>8s} "
        f"{'overlap s':>9s}"
    )
    kinds = (
        "VTACH (5 beats >= 100/min)",
        "ventricular runs >= 3 beats",
        "VT episodes (>= 3 V beats at >= 100/min; in VF/flutter left out)",
        "VTACH or VFIB vs VT/VFL",
        f"VTACH or VFIB vs VT of {VT_BEATS} or more beats and VFL (Se; +P against any VT/VFL)",
    )
    # ref eps, found, det eps, true, ref t, det t, ref t found, det t true
    tot = {k: [0, 0, 0, 0, 0, 0, 0, 0] for k in kinds}
    for r, (res, ref_beats, _) in data.items():
        path = root / "mitdb" / r
        n = res["n"]
        fs = res["fs"]
        vt_ref = read_rhythm_episodes(path, "VT", n)
        vf_ref = read_rhythm_episodes(path, "VFL", n) + read_rhythm_episodes(path, "VF", n)
        vtach = res["eps"].get("VTACH", [])
        vfib = res["eps"].get("VFIB", [])
        runs = [(v.sample, v.end_sample + 1) for v in res["runs"] if v.n_beats >= 3]
        # VT episodes the way the reference marks them (MIT-BIH "(VT": runs of 3 or more V beats)
        # and EC57 counts runs; runs within annotated VF/flutter are left out, as EC57 leaves
        # those episodes out of beat and run comparisons
        vt_eps = [
            (v.sample, v.end_sample + 1)
            for v in res["runs"]
            if v.vt and _overlap([(v.sample, v.end_sample + 1)], vf_ref) == 0
        ]
        # the annotated VT long enough for the VTACH definition (its beats counted), with VF
        long_vt = [
            (s, e) for s, e in vt_ref if int(((ref_beats >= s) & (ref_beats < e)).sum()) >= VT_BEATS
        ]
        lethal = _merged(vt_ref + vf_ref)
        for k, ref, det, judged_on in (
            (kinds[0], vt_ref, vtach, vt_ref),
            (kinds[1], vt_ref, runs, vt_ref),
            (kinds[2], vt_ref, vt_eps, vt_ref),
            (kinds[3], lethal, _merged(vtach + vfib), lethal),
            (kinds[4], _merged(long_vt + vf_ref), _merged(vtach + vfib), lethal),
        ):
            t = tot[k]
            t[0] += len(ref)
            t[1] += sum(1 for e in ref if _overlap([e], det) > 0)
            t[2] += len(det)
            t[3] += sum(1 for e in det if _overlap([e], judged_on) > 0)
            t[4] += sum(e - s for s, e in ref)
            t[5] += sum(e - s for s, e in det)
            t[6] += _overlap(ref, det)
            t[7] += _overlap(judged_on, det)
        if vt_ref or vtach or runs:
            print(
                f"{r:7s} {len(vt_ref):4d} {len(vtach):6d} {len(runs):7d} {len(vt_eps):7d} "
                f"{sum(e - s for s, e in vt_ref) / fs:6.0f} "
                f"{sum(e - s for s, e in vtach) / fs:8.0f} {_overlap(vt_ref, vtach) / fs:9.0f}"
            )
    for k, (re_, rf, de, dt, rt, dtm, both, true_t) in tot.items():
        print(
            f"{k}: episode Se {100.0 * rf / max(re_, 1):.1f}% ({rf}/{re_}), +P "
            f"{100.0 * dt / max(de, 1):.1f}% ({dt}/{de}); duration Se "
            f"{100.0 * both / max(rt, 1):.1f}%, +P {100.0 * true_t / max(dtm, 1):.1f}%"
        )


def _merged(eps: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Episodes as disjoint intervals (overlapping ones joined)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(eps):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    total = 0
    for s0, e0 in a:
        for s1, e1 in b:
            total += max(0, min(e0, e1) - max(s0, s1))
    return total


def rhythm_section(root: Path, records: list[str]) -> None:
    """Episodes of the pipeline's rhythm flags against the MIT-BIH rhythm annotations."""
    recs = {r: read_record(root / "mitdb" / r) for r in records}
    analyses = {r: analyze_record(rec, bed_channels(rec)[0]) for r, rec in recs.items()}
    pairs = (
        ("AFIB", "AFIB", "atrial fibrillation"),
        ("VTACH", "VT", "ventricular tachycardia (the annotation starts at 3 beats, VTACH at 5)"),
        ("VFIB", "VFL", "ventricular flutter"),
    )
    for label, ref_label, what in pairs:
        print(f"\n{what}: pipeline {label} flag vs ({ref_label} annotations, primary ECG lead")
        print(
            f"{'record':8s} {'ref eps':>8s} {'det eps':>8s} {'ref s':>8s} {'det s':>8s} "
            f"{'overlap s':>10s}"
        )
        ref_eps = det_eps = ref_hit = det_hit = 0
        ref_time = det_time = both_time = total_time = 0
        for r in records:
            res = analyses[r]
            path = root / "mitdb" / r
            fs = float(res["fs"])
            n = int(res["n_samples"])
            ref = read_rhythm_episodes(path, ref_label, n)
            det = [(e["start"], e["end"]) for e in res["rhythms"] if e["label"] == label]
            ref_eps += len(ref)
            det_eps += len(det)
            ref_hit += sum(1 for e in ref if _overlap([e], det) > 0)
            det_hit += sum(1 for e in det if _overlap([e], ref) > 0)
            rt = sum(e - s for s, e in ref)
            dt = sum(e - s for s, e in det)
            ov = _overlap(ref, det)
            ref_time += rt
            det_time += dt
            both_time += ov
            total_time += n
            if ref or det:
                print(
                    f"{r:8s} {len(ref):8d} {len(det):8d} {rt / fs:8.0f} {dt / fs:8.0f} "
                    f"{ov / fs:10.0f}"
                )
        rest = total_time - ref_time
        print(
            f"episode Se {100.0 * ref_hit / max(ref_eps, 1):.1f}% ({ref_hit}/{ref_eps}), "
            f"episode +P {100.0 * det_hit / max(det_eps, 1):.1f}% ({det_hit}/{det_eps}); "
            f"time detected {100.0 * both_time / max(ref_time, 1):.1f}%, "
            f"duration +P {100.0 * both_time / max(det_time, 1):.1f}%, "
            f"specificity over the rest "
            f"{100.0 * (rest - (det_time - both_time)) / max(rest, 1):.2f}%"
        )


def _score(tp: int, tn: int, fp: int, fn: int) -> float:
    return 100.0 * (tp + tn) / max(tp + tn + fp + 5 * fn, 1)


def _vt_rules() -> list[VtRule]:
    return [
        VtRule(pulse_regular_cv=pcv, ecg_regular_cv=ecv, max_v_3s=mv, baseline_sqi_min=bas)
        for pcv in (0.05, 0.1)
        for ecv in (0.1, 0.15, 0.2)
        for mv in (1, 2, 3)
        for bas in (0.0, 0.8, 0.9, 0.95)
    ]


OWN_CALL_WINDOWS_S = (8.0, 16.0)
CHALLENGE_FS = 250  # every signal of the 2015 challenge records is sampled at 250 Hz


def vt_section(root: Path) -> None:
    folder = root / "challenge2015"
    rows = list(csv.DictReader((folder / "ALARMS.csv").open()))
    rows = [row for row in rows if row["alarm"] == "VTACH"]
    truth = np.array([row["true_alarm"] == "1" for row in rows])
    rules = _vt_rules()
    preds = np.zeros((len(rules), len(rows)), dtype=bool)
    shipped = np.zeros(len(rows), dtype=bool)
    evidence: list[tuple[list[LeadEvidence], list[PulseEvidence]]] = []
    # eicu's own VTACH or VFIB call (no look-ahead) up to the alarm, within 8 and 16 s of it
    own = np.zeros((len(OWN_CALL_WINDOWS_S), len(rows)), dtype=bool)
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        rec = read_record(folder / row["record"], sampto=round(ALARM_AT_S * CHALLENGE_FS))
        events: list[Event] = []
        pipeline = replay_record(rec, events=events)
        flags = [e for e in events if isinstance(e, RhythmFlag)]
        eps = _flag_episodes(flags, round(ALARM_AT_S * CHALLENGE_FS))
        ends = [e for label in ("VTACH", "VFIB") for _, e in eps.get(label, [])]
        for w, window_s in enumerate(OWN_CALL_WINDOWS_S):
            # up at some time in the window: ended in it, or still up at the alarm
            own[w, i] = any(e >= round((ALARM_AT_S - window_s) * CHALLENGE_FS) for e in ends)
        shipped[i] = verify_alarm(pipeline, "VTACH").true_alarm
        leads, pulses = gather(pipeline, ALARM_WINDOW_S)
        evidence.append((leads, pulses))
        for j, rule in enumerate(rules):
            preds[j, i] = decide("VTACH", leads, pulses, rule).true_alarm

    def counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
        return (
            int((pred & ref).sum()),
            int((~pred & ~ref).sum()),
            int((pred & ~ref).sum()),
            int((~pred & ref).sum()),
        )

    print(f"\n2015 challenge VT alarms ({len(rows)} records, {time.perf_counter() - t0:.0f} s)")
    peer = np.ones(len(rows), dtype=bool)
    for name, pred in (("eicu, shipped constants", shipped), ("peer: every alarm true", peer)):
        tp, tn, fp, fn = counts(pred, truth)
        print(
            f"{name:26s} TP {tp:3d}  TN {tn:3d}  FP {fp:3d}  FN {fn:3d}  "
            f"TPR {100.0 * tp / max(tp + fn, 1):5.1f}%  TNR {100.0 * tn / max(tn + fp, 1):5.1f}%  "
            f"score {_score(tp, tn, fp, fn):.1f}"
        )
    for w, window_s in enumerate(OWN_CALL_WINDOWS_S):
        tp, tn, fp, fn = counts(own[w], truth)
        print(
            f"eicu's own VTACH or VFIB call within {window_s:.0f} s of the alarm (primary ECG "
            f"lead, no look-ahead): true alarms {tp}/{tp + fn} ({100.0 * tp / max(tp + fn, 1):.1f}"
            f" %), false alarms {fp}/{fp + tn} ({100.0 * fp / max(fp + tn, 1):.1f} %)"
        )
    unreliable = sum(1 for lp in evidence if not usable_leads(lp[0]))
    print(f"alarms whose ECG is judged unreliable (pulses may reject them): {unreliable}")
    misses = [row["record"] for row, p, t in zip(rows, shipped, truth, strict=True) if t and not p]
    print(f"true alarms judged false: {' '.join(misses) or 'none'}")
    # constants chosen on 4/5 of the records, scored on the other 1/5; 10 shuffles
    rng = np.random.default_rng(0)
    cv = []
    for _ in range(10):
        folds = rng.permutation(len(rows)) % 5
        pred = np.zeros(len(rows), dtype=bool)
        for f in range(5):
            train = folds != f
            best = max(
                range(len(rules)), key=lambda j: _score(*counts(preds[j][train], truth[train]))
            )
            pred[~train] = preds[best][~train]
        tp, tn, fp, fn = counts(pred, truth)
        cv.append((_score(tp, tn, fp, fn), tp / max(tp + fn, 1), tn / max(tn + fp, 1)))
    m = np.mean(np.array(cv), axis=0)
    print(
        f"5-fold cross-validated choice among {len(rules)} rule settings (10 shuffles): "
        f"score {m[0]:.1f}  TPR {100 * m[1]:.1f}%  TNR {100 * m[2]:.1f}%"
    )


def pulse_section(root: Path) -> None:
    """Pulse detection on ABP and PLETH against the wabp onsets shipped with the 2015 records.

    The reference is itself automatic (wabp, Zong et al. 2003), not reviewed by a person, and
    marks the pulse onset while eicu marks the steepest upstroke: detections are shifted by the
    record's median offset before matching within 150 ms.
    """
    folder = root / "challenge2015"
    wfdb = wfdb_module()
    totals: dict[str, list[int]] = {}
    for ann_path in sorted(folder.glob("*.wabp*")):
        name = ann_path.stem
        ext = ann_path.suffix[1:]
        with quiet_wfdb():
            ann = wfdb.rdann(str(folder / name), ext)
        rec = read_record(folder / name)
        chan = int(ann.chan[0]) if ann.chan is not None and len(ann.chan) else -1
        if not 0 <= chan < len(rec.sig_names):
            continue
        kind = rec.sig_names[chan].upper()
        if kind not in ("ABP", "PLETH"):
            continue
        x = rec.signals[:, chan]
        det = BeatDetector.pulse(rec.fs_hz)
        n = round(rec.fs_hz)
        found = np.concatenate([det.push(x[i : i + n]).sample for i in range(0, x.shape[0], n)])
        ref = np.asarray(ann.sample, dtype=np.int64)
        if found.size == 0 or ref.size == 0:
            t = totals.setdefault(kind, [0, 0, 0, 0])
            t[1] += ref.size
            t[2] += found.size
            t[3] += 1
            continue
        j = np.clip(np.searchsorted(ref, found), 1, ref.size - 1)
        nearest = np.where(np.abs(ref[j] - found) < np.abs(ref[j - 1] - found), ref[j], ref[j - 1])
        offset = int(np.median(found - nearest))
        with quiet_wfdb():
            c = wfdb.processing.compare_annotations(ref, found - offset, round(0.15 * rec.fs_hz))
        t = totals.setdefault(kind, [0, 0, 0, 0])
        t[0] += c.tp
        t[1] += c.fn
        t[2] += c.fp
        t[3] += 1
    print("\nPulse detection vs wabp onsets (2015 records, whole records, 150 ms after offset)")
    for kind, (tp, fn, fp, n_rec) in sorted(totals.items()):
        se = 100.0 * tp / max(tp + fn, 1)
        pp = 100.0 * tp / max(tp + fp, 1)
        print(
            f"{kind:6s} {n_rec:4d} signals  TP {tp:6d}  FN {fn:5d}  FP {fp:5d}  "
            f"Se {se:6.2f}%  +P {pp:6.2f}%"
        )


def _detect_and_classify(x: np.ndarray, fs: float, chunk_s: float) -> int:
    """The streaming QRS detector with the beat classifier on (one kernel call per chunk);
    returns the V beats found."""
    sc = StreamingClassifier(fs)
    n = round(chunk_s * fs)
    classes = [sc.push(x[i : i + n]).beat_class for i in range(0, len(x), n)]
    return int((np.concatenate(classes) == 1).sum())  # counted once, outside the stream


def speed_section(root: Path, records: list[str]) -> None:
    print("\nSpeed on one core (samples per second, record in memory)")
    xs = []
    fs = 360.0
    for r in records[:4]:
        rec = read_record(root / "mitdb" / r)
        xs.append(np.ascontiguousarray(rec.signals[:, 0]))
        fs = rec.fs_hz
    x = np.concatenate(xs)
    BeatDetector.ecg(fs).push(x[:1000])  # compile / load the cache outside the timing
    for label, chunk_s in (("detector, whole", None), ("detector, 0.25 s chunks", 0.25)):
        det = BeatDetector.ecg(fs)
        t0 = time.perf_counter()
        if chunk_s is None:
            det.push(x)
        else:
            n = round(chunk_s * fs)
            for i in range(0, x.shape[0], n):
                det.push(x[i : i + n])
        dt = time.perf_counter() - t0
        print(f"{label:34s} {x.shape[0] / dt / 1e6:8.1f} M samples/s")
    _detect_and_classify(x[: round(10 * fs)], fs, 0.25)  # compile / load the cache
    for chunk_s in (0.25, 1.0):
        det = BeatDetector.ecg(fs)
        n = round(chunk_s * fs)
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], n):
            det.push(x[i : i + n])
        dt_det = time.perf_counter() - t0
        t0 = time.perf_counter()
        _detect_and_classify(x, fs, chunk_s)
        dt = time.perf_counter() - t0
        print(
            f"{f'detector + classifier, {chunk_s:g} s':34s} {x.shape[0] / dt / 1e6:8.1f} "
            f"M samples/s (detector alone in the same run: {x.shape[0] / dt_det / 1e6:.1f})"
        )
    p = BedSignalPipeline({"ECG_II": fs})
    n = round(fs)
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], n):
        p.push("ECG_II", x[i : i + n], i)
    dt = time.perf_counter() - t0
    print(f"{'pipeline (rhythm, quality), 1 s':34s} {x.shape[0] / dt / 1e6:8.1f} M samples/s")


CROSS_CORRS = (0.2, 0.3, 0.4)  # the cross-lead rule's correlation limit, shipped and beside it


def leads_section(root: Path, records: list[str]) -> None:
    """EC57 VEB of the classifier on the primary lead (:func:`bed_channels`; "channel 0" below)
    alone, on both ECG channels of the record (the
    kernel's multi-lead rule: each beat judged on the lead where it differs most from that
    lead's dominant beat), and on channel 0 with the cross-lead rule the pipeline applies
    (:func:`~eicu.signal.classify.cross_lead_ventricular`: channel 0's call, plus a beat strongly
    unlike the dominant beat on one channel and slurred on the other, each channel with its own
    classifier at channel 0's beats), with its correlation limit at ``CROSS_CORRS`` in the
    gross; beats from the streaming detector on channel 0, whole record, classifiers alone
    (without the pipeline's noisy-lead rule)."""
    from scipy import signal as sps

    from eicu.signal.classify import BeatClassifier
    from eicu.signal.filters import SosFilter

    wfdb = wfdb_module()
    print(
        "\nVEB, EC57 way (first 5 min out, paced records out of the gross), classifier on "
        "the primary lead alone and on both channels"
    )
    print(
        f"{'record':7s} {'Se 1 lead':>10s} {'+P 1 lead':>10s} {'Se 2 leads':>11s} "
        f"{'+P 2 leads':>11s} {'Se cross':>10s} {'+P cross':>10s}"
    )
    gross: dict[int | str | float, ec57.VebCounts] = {
        1: ec57.VebCounts(),
        2: ec57.VebCounts(),
        "cross": ec57.VebCounts(),
        **{limit: ec57.VebCounts() for limit in CROSS_CORRS},
    }
    for r in records:
        path = root / "mitdb" / r
        rec = read_record(path)
        fs, x = rec.fs_hz, rec.signals[:, bed_channels(rec)]
        if x.shape[1] < 2:
            continue
        fids = BeatDetector.ecg(fs).push(x[:, 0]).sample
        rr = np.diff(np.concatenate([[-1], fids]))
        rr[0] = -1
        sos = sps.butter(2, [0.5, min(40.0, 0.45 * fs)], "bandpass", fs=fs, output="sos")
        ys = np.stack([SosFilter(sos).step(x[:, c]) for c in range(2)])
        raws = np.ascontiguousarray(x[:, :2].T)
        with quiet_wfdb():
            ann = wfdb.rdann(str(path), "atr")
        is_beat, cls = ec57.reference_classes(ann.symbol)
        ref = np.asarray(ann.sample)[is_beat]
        cls = cls[is_beat]
        vf = read_rhythm_episodes(path, "VFL", x.shape[0]) + read_rhythm_episodes(
            path, "VF", x.shape[0]
        )
        keep_ref, keep_det = _outside(ref, vf), _outside(fids, vf)
        cells = []
        calls: dict[int | str | float, np.ndarray] = {}
        for nl in (1, 2):
            classes, _ = BeatClassifier(fs, nl).classify(
                ys[:nl], np.zeros(nl, dtype=np.int64), fids, rr, raws[:nl]
            )
            calls[nl] = classes == kv.C_V
        # channel 0 decides; channel 1's own classifier, at channel 0's beats, adds a beat that
        # is strongly unlike the dominant beat on one lead and slurred on the other
        c0, f0 = BeatClassifier(fs, 1).classify(
            ys[:1], np.zeros(1, dtype=np.int64), fids, rr, raws[:1]
        )
        _, f1 = BeatClassifier(fs, 1).classify(
            ys[1:2], np.zeros(1, dtype=np.int64), fids, rr, raws[1:2]
        )
        for key in ("cross", *CROSS_CORRS):
            cfg = ClassifierConfig(
                cross_corr=DEFAULT_CLASSIFIER.cross_corr if key == "cross" else float(key)
            )
            calls[key] = (
                cross_lead_ventricular(c0, f0[:, 0, 0], f0[:, 0, 2], f1[:, 0, 0], f1[:, 0, 2], cfg)
                == kv.C_V
            )
        for key in (1, 2, "cross", *CROSS_CORRS):
            c = ec57.veb_counts(
                ref[keep_ref],
                cls[keep_ref],
                fids[keep_det],
                calls[key][keep_det],
                round(0.15 * fs),
                round(ec57.LEARNING_S * fs),
            )
            if r not in ec57.PACED_MITDB:
                gross[key].add(c)
            cells.append(f"{c.se:10.1f} {c.ppv:10.1f}")
        print(f"{r:7s} {cells[0]} {cells[1]} {cells[2]}")
    names: dict[int | str | float, str] = {
        1: "primary lead",
        2: "both, worst lead",
        "cross": f"primary lead + cross-lead (correlation below {DEFAULT_CLASSIFIER.cross_corr:g})",
        **{limit: f"cross-lead with correlation below {limit:g}" for limit in CROSS_CORRS},
    }
    for key, c in gross.items():
        print(
            f"gross, {names[key]}: Vv {c.vv} Vx {c.vx} Nv {c.nv} Sv {c.sv}: "
            f"Se {c.se:.1f}%  +P {c.ppv:.1f}%"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", nargs="+", help="MIT-BIH records (default: all present)")
    ap.add_argument("--no-peers", action="store_true", help="leave out wfdb and neurokit2")
    ap.add_argument(
        "--skip",
        default="",
        help="comma-separated sections: qrs,rhythm,v,leads,vt,pulse,speed",
    )
    args = ap.parse_args(argv)
    root = data_dir()
    records = args.records or mitdb_records()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if not records:
        print(f"no MIT-BIH records under {root / 'mitdb'} (set EICU_DATA_DIR)", file=sys.stderr)
        return 1
    if "qrs" not in skip:
        qrs_section(root, records, not args.no_peers)
    if "rhythm" not in skip:
        rhythm_section(root, records)
    if "v" not in skip:
        ventricular_section(root, records)
    if "leads" not in skip:
        leads_section(root, records)
    if "vt" not in skip and (root / "challenge2015" / "ALARMS.csv").exists():
        vt_section(root)
    if "pulse" not in skip and (root / "challenge2015").exists():
        pulse_section(root)
    if "speed" not in skip:
        speed_section(root, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
