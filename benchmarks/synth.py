"""Cost of the synthetic monitor per bed-second of simulated signals.

    python benchmarks/synth.py [--beds 1000] [--seconds 30] [--chunk 0.25] [--single 50]

Renders every signal of ``--beds`` beds (the scenarios in turn) in chunks of ``--chunk`` s with
one BedSynthBank, and reads the numerics once a simulated second. It prints the CPU time per
bed-second and the share of one core that real time would take. ``--single`` beds are also run
as separate BedSynth objects, for comparison. Compilation and the first second are excluded.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from simulators.synth import SCENARIOS, BedSynth, BedSynthBank


def _bank(beds: int, seconds: float, chunk_s: float) -> tuple[float, float]:
    scen = [SCENARIOS[i % len(SCENARIOS)] for i in range(beds)]
    bank = BedSynthBank(scen, list(range(beds)), time_scale=60.0)
    bank.waveforms(1.0)
    bank.numerics()
    wave_s = num_s = 0.0
    steps = round(seconds / chunk_s)
    per_second = max(1, round(1.0 / chunk_s))
    for i in range(steps):
        t0 = time.process_time()
        bank.waveforms(chunk_s)
        t1 = time.process_time()
        wave_s += t1 - t0
        if (i + 1) % per_second == 0:
            bank.numerics()
            num_s += time.process_time() - t1
    return wave_s, num_s


def _single(beds: int, seconds: float, chunk_s: float) -> tuple[float, float]:
    sims = [BedSynth(SCENARIOS[i % len(SCENARIOS)], i, time_scale=60.0) for i in range(beds)]
    for sim in sims:
        sim.waveforms(1.0)
        sim.numerics()
    wave_s = num_s = 0.0
    per_second = max(1, round(1.0 / chunk_s))
    for i in range(round(seconds / chunk_s)):
        t0 = time.process_time()
        for sim in sims:
            sim.waveforms(chunk_s)
        t1 = time.process_time()
        wave_s += t1 - t0
        if (i + 1) % per_second == 0:
            for sim in sims:
                sim.numerics()
            num_s += time.process_time() - t1
    return wave_s, num_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beds", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--chunk", type=float, default=0.25)
    ap.add_argument("--single", type=int, default=50, help="beds run as BedSynth (0: skip)")
    args = ap.parse_args()
    if args.beds < 1 or args.seconds <= 0 or not 0 < args.chunk <= args.seconds:
        raise SystemExit("need --beds >= 1 and 0 < --chunk <= --seconds")
    wave_s, num_s = _bank(args.beds, args.seconds, args.chunk)
    bed_s = args.beds * args.seconds
    print(
        f"BedSynthBank {args.beds} beds x {args.seconds:g} s in {args.chunk:g} s chunks: "
        f"waveforms {wave_s / bed_s * 1e6:.1f} us/bed-s, "
        f"numerics {num_s / bed_s * 1e6:.1f} us/bed-s"
    )
    total = (wave_s + num_s) / args.seconds
    print(
        f"  real time for {args.beds} beds: {100 * total:.1f} % of one core "
        f"({100 * total * 1000 / args.beds:.1f} % per 1,000 beds)"
    )
    if args.single:
        wave_1, num_1 = _single(args.single, args.seconds, args.chunk)
        bed_s = args.single * args.seconds
        print(
            f"BedSynth x {args.single} (one object per bed): waveforms "
            f"{wave_1 / bed_s * 1e6:.1f} us/bed-s, numerics {num_1 / bed_s * 1e6:.1f} us/bed-s"
            f" ({100 * (wave_1 + num_1) / bed_s * 1000:.1f} % of one core per 1,000 beds)"
        )
    if not math.isfinite(total):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
