"""CPU of the engine's per-bed stages, in one process, without broker or store.

    python benchmarks/stages.py [--beds 40] [--seconds 60] [--frame 0.5] [--scenario stable]
        [--chunk 0.5] [--breakdown] [--worker]

Simulated beds (the standard signal set of ``simulators``: ECG II and V at 250 Hz, PLETH and ABP
at 125 Hz, RESP at 62.5 Hz, numerics every second) are rendered into frames beforehand; then
the frames of the last five sixths of the run are routed, in time order, through the bed
router alone, the router with the signal stage, and the router with the signal and score
stages (each on fresh state, the first sixth routed first to warm it up). Printed: CPU time
(``time.process_time``) per bed-second of each, and the signal and score stages' shares by
difference; best of ``--repeat`` runs. This is the part of ``benchmarks/ingest.py``'s engine
CPU that grows with the beds' data, measured without the broker, the network and the machine's
other processes. The signal stage takes a bed's frames ``--chunk`` seconds at a time, as the
engine does (``EICU_ANALYSIS_CHUNK_S``), and is measured taking every frame at once beside it.
On a shared 2-core virtual machine the figures still move by 10-20 % between runs (process
CPU time depends on the caches and clock the machine gives): compare changes with
``--repeat 5`` and several runs. A bed's AF analysis starts after 64 beats, about a minute
into each routing: ``--seconds 150`` measures settled beds, 30 s beds in their first minute.
``--scenario mix`` cycles through every scenario (VT, AF, pacing, artefact ...).
The collector is set as the commands set it (``eicu.heap.settle``).

``--breakdown`` then routes the frames once more through the router and the signal stage with
a timer around each part of the per-bed signal pipeline (``time.perf_counter_ns`` in a
wrapper, some 0.1 us a call) and prints, per part, ms per bed-second, us per call and calls per
bed-second. Parts nest (``pipeline.push`` holds the others but ``block.physical`` and
``stage._note``), so the column does not add up. Timers in the code give these figures where a
sampling profiler's line attribution, on a virtual machine, put a quarter of the time on a
copy that takes 2 us.

``--worker`` also times the two stages an engine that judges alarms and feeds dashboards adds
(``eicu serve``, ``eicu worker``): the alarm rules, one pass a second of data over the beds due
(each bed with new numerics, and every bed not judged for a second), and the beds' state
snapshots for dashboards, every bed each second, encoded as the state publisher encodes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

# the project before this folder: benchmarks/ingest.py would shadow the ingest package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eicu import heap
from eicu.config import IngestSettings
from eicu.metrics import IngestMetrics
from eicu.models import BedKey
from ingest.scores import ScoreStage
from ingest.signals import SignalStage
from ingest.state import BedRouter
from simulators.beds import SynthGroup
from simulators.scenarios import SCENARIOS


def frames_of(
    beds: int, seconds: float, frame_s: float, scenario: str, events_at_s: float | None = None
) -> list[object]:
    keys = [BedKey("bench", f"bed{i:04d}") for i in range(beds)]
    kinds = [SCENARIOS[i % len(SCENARIOS)] if scenario == "mix" else scenario for i in range(beds)]
    start_us = time.time_ns() // 1000 - int((seconds + 60) * 1e6)
    group = SynthGroup(keys, kinds, list(range(beds)), start_us, events_at_s=events_at_s)
    out: list[object] = []
    for _ in range(round(seconds / frame_s)):
        for _bed, wave, numerics, on in group.tick(frame_s):
            if not on:
                continue
            for f in (numerics, wave):
                if f is not None:
                    rx = getattr(f, "t0_us", None) or getattr(f, "ts_us", 0)
                    out.append(dataclasses.replace(f, received_us=rx))
    return out


def run(frames: list[object], stages: str, chunk_s: float) -> float:
    """CPU seconds of routing the frames after the first sixth through ``stages``, the signal
    stage taking a bed's frames in chunks of ``chunk_s``."""
    router = BedRouter(IngestMetrics())
    if "signals" in stages:
        router.subscribe(SignalStage(chunk_s=chunk_s))
    if "scores" in stages:
        router.subscribe(ScoreStage())
    warm = len(frames) // 6
    for f in frames[:warm]:
        router.route(f)  # type: ignore[arg-type]
    t0 = time.process_time()
    for f in frames[warm:]:
        router.route(f)  # type: ignore[arg-type]
    return time.process_time() - t0


def breakdown(
    frames: list[object], bed_s: float, chunk_s: float
) -> list[tuple[str, float, float, float]]:
    """(part, ms per bed-second, us per call, calls per bed-second) of the signal stage's parts,
    from timers wrapped around them for one run (see the module)."""
    from eicu import models
    from eicu.signal import beats, pipeline, rhythm

    parts = [
        (pipeline.BedSignalPipeline, "push", "pipeline.push"),
        (pipeline.BedSignalPipeline, "_tick", "per-second tick"),
        (pipeline, "fibrillation_features", "  fibrillation features"),
        (pipeline._SignalState, "agreement_at", "  detector agreement"),
        (pipeline._SignalState, "morphology_at", "  pulse morphology"),
        (pipeline, "window_sqi", "  signal quality"),
        (beats.BeatDetector, "push", "beat detectors"),
        (pipeline.BedSignalPipeline, "_ready_beats", "beat morphology"),
        (pipeline.BedSignalPipeline, "_classified", "  beat classifier"),
        (pipeline.BedSignalPipeline, "_beat_events", "beat events"),
        (pipeline._SignalState, "atrial_corr", "  P-wave correlation"),
        (rhythm.RhythmTracker, "advance", "rhythm timers"),
        (pipeline._History, "append", "sample history"),
        (pipeline._SignalState, "note_decided", "detector bookkeeping"),
        (pipeline._SignalState, "note_missing", "missing-sample runs"),
        (models.SignalBlock, "physical", "block.physical"),
        (SignalStage, "_note", "stage._note"),
    ]
    spent: dict[str, int] = {}
    calls: dict[str, int] = {}
    saved = []
    clock = time.perf_counter_ns

    def timed(fn, label):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0) + clock() - t
                calls[label] = calls.get(label, 0) + 1

        return call

    for owner, name, label in parts:
        saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, timed(getattr(owner, name), label))
    try:
        router = BedRouter(IngestMetrics())
        router.subscribe(SignalStage(chunk_s=chunk_s))
        warm = len(frames) // 6
        for f in frames[:warm]:
            router.route(f)  # type: ignore[arg-type]
        spent.clear()
        calls.clear()
        t0 = clock()
        for f in frames[warm:]:
            router.route(f)  # type: ignore[arg-type]
        spent["router + signal stage"] = clock() - t0
        calls["router + signal stage"] = len(frames) - warm
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    labels = ["router + signal stage", *[label for _, _, label in parts]]
    return [
        (
            label,
            spent.get(label, 0) / 1e6 / bed_s,
            spent.get(label, 0) / 1e3 / max(calls.get(label, 0), 1),
            calls.get(label, 0) / bed_s,
        )
        for label in labels
    ]


def worker_stages(frames: list[object], bed_s: float, chunk_s: float) -> dict[str, float]:
    """CPU ms per bed-second of the two stages an engine that judges alarms and feeds dashboards
    adds to the router, the signal and the score stages, as ``eicu serve`` and ``eicu worker``
    run them: the alarm rules (``AlarmService``: each bed with new numerics or status at once,
    every bed not judged for a second at the next sweep; here one pass per second of data) and
    the beds' state for dashboards (``StatePublisher``: every bed's snapshot each second,
    encoded). An engine is built as the commands build it, without broker or database (its
    store and outbox in a temporary folder, never opened or written); the frames are routed
    as in :func:`run` and each stage is timed apart."""
    import tempfile

    from eicu.config import MqttSettings
    from eicu.store import open_store
    from ingest.engine import Engine
    from ingest.live import batches

    with tempfile.TemporaryDirectory() as tmp:
        settings = IngestSettings(analysis_chunk_s=chunk_s, spool_dir=Path(tmp) / "spool")
        engine = Engine(
            MqttSettings(),
            settings,
            open_store(f"sqlite:///{tmp}/store.db"),
            alarms_outbox=Path(tmp) / "outbox.db",
            store_open=False,
            state_period_s=1.0,
        )
        alarms, state = engine.alarms, engine.state
        assert alarms is not None and state is not None
        spent = {"alarm rules": 0.0, "state snapshots": 0.0}
        warm = len(frames) // 6
        next_us: int | None = None
        for i, f in enumerate(frames):
            engine.router.route(f)  # type: ignore[arg-type]
            now_us = int(getattr(f, "t0_us", 0) or getattr(f, "ts_us", 0))
            if next_us is None:
                next_us = now_us + 1_000_000
            if now_us < next_us:
                continue
            next_us += 1_000_000
            t0 = time.process_time()
            alarms.evaluate(now_us, alarms._take_due(now_us, 1_000_000))
            t1 = time.process_time()
            for _topic, batch in batches(state.take(None, now_us)):
                state.encode(batch)
            t2 = time.process_time()
            if i >= warm:
                spent["alarm rules"] += t1 - t0
                spent["state snapshots"] += t2 - t1
    return {k: v * 1000 / bed_s for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beds", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--frame", type=float, default=0.5, help="seconds per waveform frame")
    parser.add_argument("--scenario", default="stable", choices=[*SCENARIOS, "mix"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--events-at",
        type=float,
        default=None,
        help="seconds into the run at which every bed's scenario event (AF, VT ...) begins "
        "(default: each scenario's own time, often after a short run has ended)",
    )
    parser.add_argument(
        "--chunk",
        type=float,
        default=IngestSettings().analysis_chunk_s,
        help="seconds of a bed's frames the signal stage takes at once (default: the "
        "engine's EICU_ANALYSIS_CHUNK_S default); with more than 0, every frame at once is "
        "measured beside it",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time each part of the signal pipeline"
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="also time the alarm rules and the dashboards' state snapshots an engine adds",
    )
    args = parser.parse_args()
    frames = frames_of(args.beds, args.seconds, args.frame, args.scenario, args.events_at)
    heap.settle()  # as the commands do
    bed_s = args.beds * args.seconds * 5 / 6
    best = {}
    runs = [("router", args.chunk), ("router+signals", args.chunk)]
    runs.append(("router+signals+scores", args.chunk))
    if args.chunk > 0:
        runs.append(("router+signals", 0.0))
    for stages, chunk in runs:
        cpu = min(run(frames, stages, chunk) for _ in range(args.repeat))
        best[stages if chunk == args.chunk else f"{stages}, every frame"] = cpu * 1000 / bed_s
    events = "" if args.events_at is None else f", events at {args.events_at:g} s"
    print(
        f"{args.beds} beds ({args.scenario}{events}), {args.seconds:g} s in {args.frame:g} s "
        "frames, "
        f"{len(frames)} frames, the signal stage taking {args.chunk:g} s at once; CPU ms per "
        f"bed-second, best of {args.repeat}:"
    )
    for stages, ms in best.items():
        print(f"  {stages:28s} {ms:6.3f}")
    print(
        f"  signal stage {best['router+signals'] - best['router']:.3f}, "
        f"score stage {best['router+signals+scores'] - best['router+signals']:.3f}"
    )
    if args.chunk > 0:
        print(
            "  signal stage taking every frame at once "
            f"{best['router+signals, every frame'] - best['router']:.3f}"
        )
    if args.worker:
        print("\nthe stages an engine adds (one run, each timed apart; CPU ms per bed-second):")
        for label, ms in worker_stages(frames, bed_s, args.chunk).items():
            print(f"  {label:28s} {ms:6.3f}")
    if args.breakdown:
        print("\nthe signal stage's parts (one run with a timer around each; parts nest):")
        print(f"  {'part':28s} {'ms/bed-s':>9s} {'us/call':>9s} {'calls/bed-s':>12s}")
        for label, ms, us, per in breakdown(frames, bed_s, args.chunk):
            print(f"  {label:28s} {ms:9.3f} {us:9.2f} {per:12.1f}")


if __name__ == "__main__":
    main()
