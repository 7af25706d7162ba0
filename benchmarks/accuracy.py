"""Accuracy and speed of eicu's signal pipeline on the PhysioNet records, beside peer detectors.

    EICU_DATA_DIR=/path/to/data python benchmarks/accuracy.py [--records 101 203] [--no-peers]
        [--skip qrs,rhythm,v,vt,pulse,speed]

Sections (each prints one table):

- QRS: gross sensitivity (Se) and positive predictivity (+P) over the MIT-BIH Arrhythmia
  records present (Moody & Mark 2001), channel 0, every beat annotation, 150 ms window, scored
  with ``wfdb.processing.compare_annotations``; eicu's streaming detector fed in 1 s chunks,
  beside wfdb's xqrs and gqrs and neurokit2's default and Pan-Tompkins methods. Speed is samples
  per second of detection on one core (wall time of the detector call, record already in memory).
- RHYTHM: episodes of the pipeline's AFIB, VTACH and VFIB flags against the ``(AFIB``,
  ``(VT`` and ``(VFL`` rhythm annotations.
- V: the pipeline's ventricular-beat call against the V beat annotations.
- VT: the 2015 challenge VT alarms (Clifford et al. 2015): TPR, TNR and score
  (TP+TN)/(TP+TN+FP+5*FN) beside the peer that calls every alarm true, plus a 5-fold
  cross-validated score of the rule's constants.
- PULSE: ABP and PLETH pulses against the wabp onsets that come with the 2015 records.
- SPEED: samples per second of the streaming detector alone and of the whole pipeline.

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eicu.datasets import data_dir, mitdb_records
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
from eicu.signal.cli_analyze import analyze_record
from eicu.signal.cli_verify import ALARM_AT_S, replay_record
from eicu.signal.events import Beat
from eicu.signal.pipeline import BedSignalPipeline
from eicu.signal.records import (
    quiet_wfdb,
    read_beat_annotations,
    read_record,
    read_rhythm_episodes,
    wfdb_module,
)

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


def ventricular_section(root: Path, records: list[str]) -> None:
    """How well the pipeline's ventricular-beat call finds the V beats of the annotations."""
    tp = fp = fn = 0
    for r in records:
        path = root / "mitdb" / r
        rec = read_record(path)
        x = rec.signals[:, 0]
        pipeline = BedSignalPipeline({"ECG_II": rec.fs_hz})
        n = round(rec.fs_hz)
        called: list[tuple[int, bool]] = []
        for i in range(0, x.shape[0], n):
            for ev in pipeline.push("ECG_II", x[i : i + n], i):
                if isinstance(ev, Beat) and ev.ventricular is not None:
                    called.append((ev.sample, ev.ventricular))
        with quiet_wfdb():
            ann = wfdb_module().rdann(str(path), "atr")
        ref = np.asarray(ann.sample)
        sym = np.asarray(ann.symbol)
        tol = round(0.15 * rec.fs_hz)
        for s, vent in called:
            j = int(np.searchsorted(ref, s))
            near = [k for k in (j - 1, j) if 0 <= k < ref.shape[0] and abs(ref[k] - s) <= tol]
            if not near:
                continue
            k = min(near, key=lambda k: abs(ref[k] - s))
            is_v = sym[k] == "V"
            tp += vent and is_v
            fp += vent and not is_v
            fn += (not vent) and is_v
    print("\nVentricular beats (pipeline's call vs V annotations, matched beats, channel 0)")
    se = 100.0 * tp / max(tp + fn, 1)
    pp = 100.0 * tp / max(tp + fp, 1)
    print(f"V beats found {tp}, missed {fn}, false {fp}: Se {se:.1f}%, +P {pp:.1f}%")


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    total = 0
    for s0, e0 in a:
        for s1, e1 in b:
            total += max(0, min(e0, e1) - max(s0, s1))
    return total


def rhythm_section(root: Path, records: list[str]) -> None:
    """Episodes of the pipeline's rhythm flags against the MIT-BIH rhythm annotations."""
    analyses = {r: analyze_record(read_record(root / "mitdb" / r), 0) for r in records}
    pairs = (
        ("AFIB", "AFIB", "atrial fibrillation"),
        ("VTACH", "VT", "ventricular tachycardia (the annotation starts at 3 beats, VTACH at 5)"),
        ("VFIB", "VFL", "ventricular flutter"),
    )
    for label, ref_label, what in pairs:
        print(f"\n{what}: pipeline {label} flag vs ({ref_label} annotations, channel 0")
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


def vt_section(root: Path) -> None:
    folder = root / "challenge2015"
    rows = list(csv.DictReader((folder / "ALARMS.csv").open()))
    rows = [row for row in rows if row["alarm"] == "VTACH"]
    truth = np.array([row["true_alarm"] == "1" for row in rows])
    rules = _vt_rules()
    preds = np.zeros((len(rules), len(rows)), dtype=bool)
    shipped = np.zeros(len(rows), dtype=bool)
    evidence: list[tuple[list[LeadEvidence], list[PulseEvidence]]] = []
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        rec = read_record(folder / row["record"], sampto=round(ALARM_AT_S * 250))
        pipeline = replay_record(rec)
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
    p = BedSignalPipeline({"ECG_II": fs})
    n = round(fs)
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], n):
        p.push("ECG_II", x[i : i + n], i)
    dt = time.perf_counter() - t0
    print(f"{'pipeline (rhythm, quality), 1 s':34s} {x.shape[0] / dt / 1e6:8.1f} M samples/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", nargs="+", help="MIT-BIH records (default: all present)")
    ap.add_argument("--no-peers", action="store_true", help="leave out wfdb and neurokit2")
    ap.add_argument(
        "--skip", default="", help="comma-separated sections: qrs,rhythm,v,vt,pulse,speed"
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
    if "vt" not in skip and (root / "challenge2015" / "ALARMS.csv").exists():
        vt_section(root)
    if "pulse" not in skip and (root / "challenge2015").exists():
        pulse_section(root)
    if "speed" not in skip:
        speed_section(root, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
