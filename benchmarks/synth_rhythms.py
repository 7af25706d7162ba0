"""What the signal pipeline makes of each simulated rhythm: rhythm flags and ventricular beats.

Each scenario's event starts at ``--event-at`` seconds; every bed is rendered in 0.5 s chunks
and pushed through :class:`eicu.signal.pipeline.BedSignalPipeline`, as the engine does. Per
scenario it prints, summed over the seeds, the seconds each rhythm label was flagged inside the
scenario's event and outside it, and the share of detected QRS complexes called ventricular in
each (beside the true share of ventricular beats in the event).

    PYTHONPATH=. python benchmarks/synth_rhythms.py --seeds 6 --seconds 60
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from eicu.signal.events import Beat, RhythmFlag
from eicu.signal.pipeline import BedSignalPipeline
from simulators.synth import BEAT_KINDS, SCENARIOS, BedSynth

RHYTHMIC = ("stable", "af", "vt", "vf", "asystole", "pvc", "bigeminy", "paced")
CHUNK_S = 0.5


def run(scenario: str, seed: int, seconds: float, event_at_s: float) -> dict[str, list[float]]:
    """{label: [seconds in the event, seconds outside]} and the ventricular shares."""
    synth = BedSynth(scenario, seed, events_at_s=event_at_s)
    pipe = BedSignalPipeline(synth.fs_hz)
    episodes = [e for e in synth.plan.episodes]

    def inside(t_s: float) -> bool:
        return any(e.start_s <= t_s < e.end_s for e in episodes)

    open_at: dict[str, float] = {}
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    vent = [[0, 0, 0], [0, 0, 0]]  # [inside, outside] x [ventricular, all, paced]
    n = dict.fromkeys(synth.fs_hz, 0)
    t = 0.0
    while t < seconds:
        for key, samples in synth.waveforms(CHUNK_S).items():
            for ev in pipe.push(key, samples, n[key]):
                if isinstance(ev, RhythmFlag):
                    if ev.state == "start":
                        open_at[ev.label] = ev.time_s
                    elif ev.label in open_at:
                        _credit(out[ev.label], open_at.pop(ev.label), ev.time_s, inside)
                elif isinstance(ev, Beat) and ev.kind == "qrs" and ev.signal == "ECG_II":
                    # (by the beat's own lead: the primary lead's beats come out when the second
                    # lead's samples arrive, as the pipeline waits for both)
                    row = vent[0 if inside(ev.time_s) else 1]
                    row[0] += int(bool(ev.ventricular))
                    row[1] += 1
                    row[2] += int(ev.beat_class == "P")
            n[key] += samples.shape[0]
        t += CHUNK_S
    for label, start in open_at.items():
        _credit(out[label], start, t, inside)
    truth = synth.truth_beats()
    t_in = np.array([inside(float(t)) for t in truth.t_s], dtype=bool)
    v_kind = BEAT_KINDS.index("V")
    out["_truth_in"] = [float(np.count_nonzero(truth.kind[t_in] == v_kind)), float(t_in.sum())]
    out["_ventricular_in"] = [float(vent[0][0]), float(vent[0][1])]
    out["_ventricular_out"] = [float(vent[1][0]), float(vent[1][1])]
    out["_paced_in"] = [float(vent[0][2]), float(vent[1][2])]
    return out


def _credit(acc: list[float], start: float, end: float, inside: object) -> None:
    step = 0.1
    t = start
    while t < end:
        acc[0 if inside(t) else 1] += step  # type: ignore[operator]
        t += step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--event-at", type=float, default=15.0)
    parser.add_argument("--scenarios", default=",".join(s for s in RHYTHMIC if s in SCENARIOS))
    args = parser.parse_args()
    print(
        f"{'scenario':<10} {'label':<8} {'s in event':>10} {'s outside':>10}   (seeds {args.seeds})"
    )
    for scenario in args.scenarios.split(","):
        total: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for seed in range(args.seeds):
            for label, (a, b) in run(scenario, seed, args.seconds, args.event_at).items():
                total[label][0] += a
                total[label][1] += b
        vi, vo = total.pop("_ventricular_in"), total.pop("_ventricular_out")
        ti = total.pop("_truth_in")
        pi = total.pop("_paced_in")
        for label, (a, b) in sorted(total.items()):
            print(f"{scenario:<10} {label:<8} {a:>10.1f} {b:>10.1f}")
        share_in = vi[0] / vi[1] if vi[1] else float("nan")
        share_out = vo[0] / vo[1] if vo[1] else float("nan")
        print(
            f"{scenario:<10} {'V beats':<8} {share_in:>10.2f} {share_out:>10.2f}"
            f"   (of {vi[1]:.0f} / {vo[1]:.0f} QRS on ECG_II; true share in the event "
            f"{ti[0] / ti[1] if ti[1] else float('nan'):.2f})"
        )
        p_in = pi[0] / vi[1] if vi[1] else float("nan")
        p_out = pi[1] / vo[1] if vo[1] else float("nan")
        print(f"{scenario:<10} {'P beats':<8} {p_in:>10.2f} {p_out:>10.2f}")


if __name__ == "__main__":
    main()
