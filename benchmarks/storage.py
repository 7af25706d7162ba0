"""Bytes per stored waveform sample, on real records, through the real store.

Replays records at the wire framing (0.25 s frames), joins them into storage segments as the
ingest does (2 s by default), writes them to a PostgreSQL of its own, and prints for each record:
the encoded container bytes per sample, and the table's bytes on disk per sample (heap, TOAST and
indexes). Raw int16 is 2 bytes per sample.

    python benchmarks/storage.py [--seconds 600] [--segment 2.0]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECORDS = [
    ("MIT-BIH 101 (MLII+V1, 360 Hz)", "mitdb/101"),
    ("MIT-BIH 208 (MLII+V1, 360 Hz)", "mitdb/208"),
    ("2015 challenge v131l (ECG, PLETH, ABP, RESP, 250 Hz)", "challenge2015/v131l"),
    ("MIMIC 03700181 (MCL1, ABP, RESP, 125 Hz)", "mimic/03700181"),
]


async def measure(
    record: Path, seconds: float, segment_s: float, db_url: str
) -> tuple[float, float, int]:
    from eicu.models import Batch, BedKey
    from eicu.store.pg import PgStore
    from eicu.store.segments import segments
    from simulators.beds import ReplayBed

    bed = BedKey("bench", record.name)
    source = ReplayBed(bed, record, 1_764_302_400_000_000)
    n_frames = int(min(seconds, source.duration_s) / 0.25)
    frames = []
    for _ in range(n_frames):
        ((_, frame, _, _),) = source.tick(0.25)
        if frame is not None:
            frames.append(frame)
    per = max(1, round(segment_s / 0.25))
    payload = sum(
        len(s.data) for i in range(0, len(frames), per) for s in segments(frames[i : i + per])
    )
    samples = sum(f.n_samples for f in frames)
    store = PgStore(db_url, timescale_mode="off")
    await store.open()
    for i in range(0, len(frames), per):  # one segment's worth per write, as the ingest releases
        await store.write(Batch(waveforms=frames[i : i + per]))
    rows = await store._fetch("SELECT pg_total_relation_size('waveforms')")
    await store.close()
    return payload / samples, int(rows[0][0]) / samples, samples


def main() -> None:
    from eicu.datasets import data_dir
    from eicu.devservices import Postgres

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--segment", type=float, default=2.0)
    args = parser.parse_args()
    root = data_dir()
    pg = Postgres().start()
    try:
        print(f"{'record':<55} {'samples':>10} {'container B/sample':>19} {'on disk B/sample':>17}")
        for i, (label, rel) in enumerate(RECORDS):
            path = root / rel
            if not path.with_suffix(".hea").exists():
                print(f"{label:<55} skipped: {path}.hea not found (set EICU_DATA_DIR)")
                continue
            url = pg.create_database(f"s{i}")
            payload, disk, n = asyncio.run(measure(path, args.seconds, args.segment, url))
            print(f"{label:<55} {n:>10} {payload:>19.3f} {disk:>17.3f}", flush=True)
    finally:
        pg.cleanup()


if __name__ == "__main__":
    main()
