"""Waveform frames on the wire, with int16 samples and coded (``wire.FLAG_CODED``): their bytes
and what coding and decoding them cost, on real PhysioNet records.

Run from the repository root (data folder from EICU_DATA_DIR)::

    PYTHONPATH=. nice python benchmarks/wire_coding.py [--records 40] [--seconds 300]

Each record is replayed as ``eicu simulate --replay`` sends it (``simulators.beds.ReplayBed``):
every signal eicu knows, at the record's rates, cut into frames of ``--frame`` seconds (0.25 by
default). For each source (the PhysioNet/CinC 2015 ICU records: ECG leads, PLETH, ABP, RESP at
250 Hz; MIT-BIH Arrhythmia: two ECG leads at 360 Hz; the MIMIC excerpts) it prints the frames'
bytes as int16 and coded, per bed-hour, and the ratio, then the CPU time per frame on one core
of ``wire.encode_waveform`` and ``wire.decode_waveform`` each way (best of ``--repeats``). The
bytes are the payloads; on a NATS leaf link each message carries about 195 bytes more
(docs/remote-sites.md).

Data: PhysioNet (Goldberger et al., Circulation 101(23):e215-e220, 2000); MIT-BIH Arrhythmia
Database (Moody & Mark 2001); PhysioNet/CinC Challenge 2015 (Clifford et al. 2015); MIMIC-II/III
waveform excerpts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from eicu import wire
from eicu.datasets import data_dir, mitdb_records
from eicu.models import BedKey, WaveformFrame
from simulators.beds import RecordError, ReplayBed

BED = BedKey("bench", "bed001")
START_US = 1_764_302_400_000_000


def records(root: Path, n: int) -> dict[str, list[Path]]:
    """Up to ``n`` records of each source, by the path without extension."""
    found = {
        "challenge2015": sorted(p.with_suffix("") for p in (root / "challenge2015").glob("*.hea")),
        "mitdb": [root / "mitdb" / name for name in mitdb_records()],
        "mimic": sorted(
            p.with_suffix("")
            for p in [*(root / "mimic").glob("*.hea"), *(root / "mimic").glob("*/*/*_[0-9]*.hea")]
            if p.with_suffix(".dat").exists()
        ),
    }
    return {source: paths[:n] for source, paths in found.items() if paths}


def frames_of(path: Path, seconds: float, frame_s: float) -> list[WaveformFrame]:
    bed = ReplayBed(BED, path, START_US)
    out: list[WaveformFrame] = []
    for _ in range(round(min(seconds, bed.duration_s) / frame_s)):
        ((_bed, frame, _numerics, _on),) = bed.tick(frame_s)
        if frame is not None:
            out.append(frame)
    return out


def _encode_all(frames: list[WaveformFrame]) -> None:
    for f in frames:
        wire.encode_waveform(f, coded=True)


def _decode_all(payloads: list[bytes]) -> None:
    for p in payloads:
        wire.decode_waveform(BED, p)


def _best_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40, help="records of each source")
    parser.add_argument("--seconds", type=float, default=300.0, help="of each record")
    parser.add_argument("--frame", type=float, default=0.25, help="seconds of samples a frame")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    root = data_dir()
    sources = records(root, args.records)
    if not sources:
        print(f"no records under {root} (EICU_DATA_DIR); nothing to measure", file=sys.stderr)
        return 1
    print(f"frames of {args.frame:g} s, up to {args.seconds:g} s of each record\n")
    print(
        f"{'source':<14} {'records':>7} {'frames':>8} {'int16 MB/bed-h':>15} "
        f"{'coded MB/bed-h':>15} {'ratio':>6} {'enc coded us':>13} {'dec int16 us':>13} "
        f"{'dec coded us':>13}"
    )
    for source, paths in sources.items():
        frames: list[WaveformFrame] = []
        seconds = 0.0
        used = 0
        for path in paths:
            try:
                got = frames_of(path, args.seconds, args.frame)
            except RecordError:
                continue  # no signal eicu knows
            frames.extend(got)
            seconds += len(got) * args.frame
            used += 1
        if not frames:
            continue
        raw = [wire.encode_waveform(f) for f in frames]
        coded = [wire.encode_waveform(f, coded=True) for f in frames]
        for a, b in zip(raw, coded, strict=True):  # lossless, frame by frame
            back = wire.decode_waveform(BED, b)
            if back.blocks != wire.decode_waveform(BED, a).blocks:
                raise AssertionError(f"{source}: a coded frame did not decode to its samples")
        hours = seconds / 3600
        raw_mb = sum(map(len, raw)) / hours / 1e6
        coded_mb = sum(map(len, coded)) / hours / 1e6
        n = len(frames)
        enc = _best_us(partial(_encode_all, frames), n, args.repeats)
        dec_raw = _best_us(partial(_decode_all, raw), n, args.repeats)
        dec_coded = _best_us(partial(_decode_all, coded), n, args.repeats)
        print(
            f"{source:<14} {used:>7} {n:>8} {raw_mb:>15.2f} {coded_mb:>15.2f} "
            f"{raw_mb / coded_mb:>6.2f} {enc:>13.1f} {dec_raw:>13.1f} {dec_coded:>13.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
