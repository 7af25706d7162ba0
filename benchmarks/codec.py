"""Size and speed of the int16 waveform codec on real PhysioNet records, beside zlib and lzma.

Run from the repository root (data folder from EICU_DATA_DIR)::

    PYTHONPATH=. nice python benchmarks/codec.py

For every source and signal kind it prints bytes per sample when the signal is cut into
independent blocks of 16, 63, 250 and 2500 samples (a block shorter than the size at the end
of a signal is left out), for this codec and, on the very same blocks, for zlib level 6 and
LZMA2 (raw format, preset 6, so no container header) on the raw int16 bytes and zlib level 6
on the first differences. Then it prints encode and decode speed in million samples per second
on one core, for whole signals and for 250- and 16-sample blocks, one call a block and
batched, for this codec and zlib.

Data: PhysioNet (Goldberger et al., Circulation 101(23):e215-e220, 2000); MIT-BIH Arrhythmia
Database (Moody & Mark 2001); PhysioNet/CinC Challenge 2015 (Clifford et al. 2015); MIMIC-II/III
waveform excerpts.
"""

from __future__ import annotations

import argparse
import lzma
import os
import platform
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from numpy.typing import NDArray

from eicu.datasets import data_dir, mitdb_records
from eicu.kernels.codec import decode_int16, decode_many, encode_int16, encode_many

with warnings.catch_warnings():
    # importing wfdb builds a table with a pandas keyword that newer pandas deprecates
    warnings.filterwarnings("ignore", "The inplace keyword", DeprecationWarning)
    import wfdb

CHUNKS = (16, 63, 250, 2500)
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
_ECG_NAMES = {"I", "II", "III", "V", "V1", "V2", "V5", "MLII", "MCL", "MCL1", "AVR", "AVL", "AVF"}


@dataclass
class Signal:
    source: str
    kind: str
    fs_hz: float
    samples: NDArray[np.int16]


def _kind(name: str) -> str:
    upper = name.strip().upper()
    if upper in _ECG_NAMES:
        return "ECG"
    for kind in ("PLETH", "ABP", "RESP"):
        if upper.startswith(kind):
            return kind
    return upper


def _as_int16(values: NDArray[np.int64], where: str) -> NDArray[np.int16]:
    if values.size and (values.min() < -32768 or values.max() > 32767):
        raise ValueError(f"{where}: samples outside int16")
    return values.astype(np.int16)


def _mitdb(root: Path, records: int) -> Iterator[Signal]:
    for name in mitdb_records()[:records]:
        rec = wfdb.rdrecord(str(root / "mitdb" / name), physical=False)
        for ch in range(rec.n_sig):
            kind = f"ECG ch{ch}"
            yield Signal("mitdb", kind, rec.fs, _as_int16(rec.d_signal[:, ch], name))


def _challenge2015(root: Path, records: int) -> Iterator[Signal]:
    heads = sorted((root / "challenge2015").glob("*.hea"))[:records]
    for head in heads:
        rec = wfdb.rdrecord(str(head.with_suffix("")), physical=False)
        for ch, sig_name in enumerate(rec.sig_name):
            x = _as_int16(rec.d_signal[:, ch], head.stem)
            yield Signal("challenge2015", _kind(sig_name), rec.fs, x)


def _mimic(root: Path) -> Iterator[Signal]:
    base = root / "mimic"
    if (base / "03700181.hea").exists():
        rec = wfdb.rdrecord(str(base / "03700181"), physical=False)
        for ch, sig_name in enumerate(rec.sig_name):
            x = _as_int16(rec.d_signal[:, ch], "03700181")
            yield Signal("mimic", _kind(sig_name), rec.fs, x)
    if (base / "mixedsignals.hea").exists():
        rec = wfdb.rdrecord(str(base / "mixedsignals"), physical=False, smooth_frames=False)
        for ch, sig_name in enumerate(rec.sig_name):
            fs = rec.fs * rec.samps_per_frame[ch]
            x = _as_int16(rec.e_d_signal[ch], "mixedsignals")
            yield Signal("mimic", _kind(sig_name), fs, x)
    for head in sorted(base.glob("multi-segment/*/*_[0-9][0-9][0-9][0-9].hea")):
        if not head.with_suffix(".dat").exists():
            continue
        rec = wfdb.rdrecord(str(head.with_suffix("")), physical=False)
        for ch, sig_name in enumerate(rec.sig_name):
            x = _as_int16(rec.d_signal[:, ch], head.stem)
            yield Signal("mimic", _kind(sig_name), rec.fs, x)


def collect(root: Path, *, mitdb: int, challenge: int, cap: int) -> list[Signal]:
    """Signals grouped by (source, kind), each group cut at ``cap`` samples in total."""
    taken: dict[tuple[str, str], int] = {}
    out: list[Signal] = []
    sources = [_mitdb(root, mitdb), _challenge2015(root, challenge), _mimic(root)]
    for source in sources:
        for sig in source:
            key = (sig.source, sig.kind)
            room = cap - taken.get(key, 0)
            if room <= 0 or sig.samples.size == 0:
                continue
            sig.samples = sig.samples[:room]
            taken[key] = taken.get(key, 0) + sig.samples.size
            out.append(sig)
    return out


def _blocks(signals: list[Signal], size: int) -> list[NDArray[np.int16]]:
    blocks: list[NDArray[np.int16]] = []
    for sig in signals:
        whole = sig.samples.size // size * size
        blocks.extend(sig.samples[:whole].reshape(-1, size))
    return blocks


def _diff16(block: NDArray[np.int16]) -> bytes:
    # first sample, then differences modulo 2**16 (invertible by a wrapping cumulative sum)
    return np.diff(block, prepend=np.int16(0)).tobytes()


PEERS: dict[str, Callable[[NDArray[np.int16]], int]] = {
    "zlib6": lambda b: len(zlib.compress(b.tobytes(), 6)),
    "lzma": lambda b: len(
        lzma.compress(b.tobytes(), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    ),
    "zlib6(diff)": lambda b: len(zlib.compress(_diff16(b), 6)),
}


def size_table(signals: list[Signal], with_lzma: bool) -> None:
    groups: dict[tuple[str, str], list[Signal]] = {}
    for sig in signals:
        groups.setdefault((sig.source, sig.kind), []).append(sig)
    peers = {k: f for k, f in PEERS.items() if with_lzma or k != "lzma"}
    header = f"{'source':<14}{'kind':<9}{'fs_hz':>13}{'chunk':>7}{'samples':>10}{'eicu':>8}"
    print(header + "".join(f"{name:>13}" for name in peers))
    totals: dict[int, list[float]] = {size: [0.0] * (2 + len(peers)) for size in CHUNKS}
    for (source, kind), sigs in sorted(groups.items()):
        rates = sorted({s.fs_hz for s in sigs})
        fs_text = "/".join(f"{r:.5g}" for r in rates)
        for size in CHUNKS:
            blocks = _blocks(sigs, size)
            n = size * len(blocks)
            if n == 0:
                continue
            ours = sum(len(b) for b in encode_many(blocks))
            theirs = [sum(f(b) for b in blocks) for f in peers.values()]
            row = f"{source:<14}{kind:<9}{fs_text:>13}{size:>7}{n:>10}{ours / n:>8.3f}"
            print(row + "".join(f"{t / n:>13.3f}" for t in theirs))
            acc = totals[size]
            acc[0] += n
            acc[1] += ours
            for j, t in enumerate(theirs):
                acc[2 + j] += t
    for size, acc in totals.items():
        if acc[0]:
            n = acc[0]
            row = f"{'all':<14}{'':<9}{'':>13}{size:>7}{int(n):>10}{acc[1] / n:>8.3f}"
            print(row + "".join(f"{t / n:>13.3f}" for t in acc[2:]))


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def speed_table(signals: list[Signal], repeats: int) -> None:
    """Encode and decode speed for whole signals and for 250- and 16-sample blocks."""
    print(f"{'path':<52}{'samples':>11}{'M samples/s':>13}")
    _speed_rows("whole signals", [s.samples for s in signals], repeats)
    _speed_rows("250-sample blocks", _blocks(signals, 250), repeats)
    _speed_rows("16-sample blocks", _blocks(signals, 16), repeats)


def _speed_rows(label: str, arrays: list[NDArray[np.int16]], repeats: int) -> None:
    count = sum(a.size for a in arrays)
    ours = encode_many(arrays)
    theirs = [zlib.compress(a.tobytes(), 6) for a in arrays]
    for x, got in zip(arrays, decode_many(ours), strict=True):  # the timed paths are lossless
        if not np.array_equal(got, x):
            raise AssertionError(f"round trip failed on {label}")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("eicu encode_int16 (a call each)", lambda: [encode_int16(a) for a in arrays]),
        ("eicu encode_many", lambda: encode_many(arrays)),
        ("eicu decode_int16 (a call each)", lambda: [decode_int16(d) for d in ours]),
        ("eicu decode_many", lambda: decode_many(ours)),
        ("zlib6 compress", lambda: [zlib.compress(a.tobytes(), 6) for a in arrays]),
        ("zlib6 decompress", lambda: [zlib.decompress(d) for d in theirs]),
    ]
    for name, fn in cases:
        seconds = _best_seconds(fn, repeats)
        print(f"{name + ', ' + label:<52}{count:>11}{count / seconds / 1e6:>13.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mitdb", type=int, default=6, help="MIT-BIH records to use")
    parser.add_argument("--challenge", type=int, default=20, help="Challenge 2015 records")
    parser.add_argument("--cap", type=int, default=400_000, help="samples per source and kind")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats (best is kept)")
    parser.add_argument("--no-lzma", action="store_true", help="leave out the slow lzma peer")
    args = parser.parse_args(argv)
    root = data_dir()
    if not (root / "mitdb").exists():
        print(f"PhysioNet data not found under {root} (set EICU_DATA_DIR)", file=sys.stderr)
        return 2
    print("command:", " ".join(["python", *sys.argv]))
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__},"
        f" {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, data {root}"
    )
    signals = collect(root, mitdb=args.mitdb, challenge=args.challenge, cap=args.cap)
    print(f"{len(signals)} signals, {sum(s.samples.size for s in signals)} samples\n")
    print("bytes per sample (raw int16 = 2.000), each block encoded on its own")
    size_table(signals, with_lzma=not args.no_lzma)
    print("\nspeed on one core, best of", args.repeats)
    speed_table(signals, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
