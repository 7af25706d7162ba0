"""``eicu analyze RECORD``: beats and rhythms of one channel of a WFDB record.

The record is fed through :class:`~eicu.signal.pipeline.BedSignalPipeline` in chunks of real-time
size (``--chunk-s``, default 1 s), exactly as the engine feeds a bed. When the record has another
ECG channel at the same rate, the first such channel goes in as the bed's second lead, as a
monitor's second lead does, so that the channel's beats are classified with both leads'
views of them (``--one-lead``: the channel alone).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from eicu.errors import RecordError
from eicu.signal.events import Beat, RhythmFlag
from eicu.signal.pipeline import BedSignalPipeline
from eicu.signal.records import Record, quiet_wfdb, read_record, wfdb_module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("record", help="WFDB record path without extension (e.g. data/mitdb/101)")
    parser.add_argument("--channel", type=int, default=0, help="signal number (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--annotate",
        metavar="EXT",
        help="write a WFDB annotation file RECORD.EXT (beats, rhythm starts and ends)",
    )
    parser.add_argument(
        "--out-dir", type=Path, help="folder for --annotate (default: the record's folder)"
    )
    parser.add_argument(
        "--chunk-s", type=float, default=1.0, help="chunk length fed to the pipeline (s)"
    )
    parser.add_argument(
        "--one-lead",
        action="store_true",
        help="analyse the channel alone, without the record's other ECG channel",
    )


def signal_key_for(name: str) -> str:
    """The pipeline signal key for a WFDB channel name (any ECG lead is analysed as ECG_II)."""
    upper = name.upper()
    if "ABP" in upper or upper.startswith("ART"):
        return "ABP"
    if "PLETH" in upper or "PPG" in upper:
        return "PLETH"
    return "ECG_II"


def second_ecg_channel(record: Record, channel: int) -> int | None:
    """The first other ECG channel of the record at the rate of ``channel`` (None: none)."""
    fs_hz = record.channel_fs[channel]
    for j, name in enumerate(record.sig_names):
        if j != channel and signal_key_for(name) == "ECG_II" and record.channel_fs[j] == fs_hz:
            return j
    return None


def analyze_record(
    record: Record, channel: int, chunk_s: float = 1.0, *, one_lead: bool = False
) -> dict[str, Any]:
    """Beats and rhythm episodes of one channel, pushed through the pipeline chunk by chunk,
    with the record's second ECG channel as the bed's second lead unless ``one_lead``."""
    n_sig = len(record.channels)
    if not 0 <= channel < n_sig:
        raise RecordError(f"record {record.name} has channels 0-{n_sig - 1}, not {channel}")
    if chunk_s <= 0:
        raise ValueError(f"--chunk-s must be > 0, got {chunk_s}")
    key = signal_key_for(record.sig_names[channel])
    x = record.channels[channel]
    fs_hz = record.channel_fs[channel]
    feeds = {key: x}
    other = None if one_lead or key != "ECG_II" else second_ecg_channel(record, channel)
    if other is not None:
        feeds["ECG_V"] = record.channels[other]
    try:
        pipeline = BedSignalPipeline(
            {k: fs_hz for k in feeds}, primary_ecg=key if key == "ECG_II" else None
        )
    except ValueError as exc:
        raise RecordError(f"record {record.name} channel {channel}: {exc}") from exc
    n = max(1, round(chunk_s * fs_hz))
    beats: list[Beat] = []
    flags: list[RhythmFlag] = []
    for i in range(0, x.shape[0], n):
        for k, samples in feeds.items():
            for ev in pipeline.push(k, samples[i : i + n], i):
                if ev.signal != key:
                    continue  # the second lead's own beats and flags are not this channel's
                if isinstance(ev, Beat):
                    beats.append(ev)
                elif isinstance(ev, RhythmFlag):
                    flags.append(ev)
    rhythms: list[dict[str, Any]] = []
    open_at: dict[str, int] = {}
    for f in flags:  # in emission order, a label's start and end alternate
        if f.state == "start":
            open_at[f.label] = f.sample
        elif f.label in open_at:
            rhythms.append({"label": f.label, "start": open_at.pop(f.label), "end": f.sample})
    for label, start in open_at.items():
        rhythms.append({"label": label, "start": start, "end": int(x.shape[0])})
    rhythms.sort(key=lambda r: (r["start"], r["label"]))
    return {
        "record": record.name,
        "fs": fs_hz,
        "n_samples": int(x.shape[0]),
        "channel": channel,
        "signal": record.sig_names[channel],
        "second_lead": None if other is None else record.sig_names[other],
        "beats": [b.sample for b in beats],
        "ventricular": [b.sample for b in beats if b.ventricular],
        "paced": [b.sample for b in beats if b.beat_class == "P"],
        "rhythms": rhythms,
    }


def _writable_dir(folder: Path) -> bool:
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    # root passes os.access everywhere: honour the folder's permission bits as well
    return os.access(folder, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def write_annotations(result: dict[str, Any], folder: Path, extension: str) -> Path:
    if not extension.isalnum():
        raise RecordError(f"annotation extension must be letters and digits, got {extension!r}")
    if not folder.is_dir():
        raise RecordError(f"output folder {folder} does not exist")
    if not _writable_dir(folder):
        raise RecordError(
            f"folder {folder} is read-only; give --out-dir to write the annotations elsewhere"
        )
    ventricular = set(result["ventricular"])
    paced = set(result.get("paced", ()))
    items: list[tuple[int, str, str]] = [
        (s, "V" if s in ventricular else "/" if s in paced else "N", "") for s in result["beats"]
    ]
    for r in result["rhythms"]:
        items.append((r["start"], "+", "(" + r["label"]))
        items.append((r["end"], "+", r["label"] + ")"))
    items.sort(key=lambda it: it[0])
    wfdb = wfdb_module()
    try:
        with quiet_wfdb():
            wfdb.wrann(
                result["record"],
                extension,
                np.array([it[0] for it in items], dtype=np.int64),
                symbol=[it[1] for it in items],
                aux_note=[it[2] for it in items],
                fs=result["fs"],
                write_dir=str(folder),
            )
    except OSError as exc:
        raise RecordError(f"cannot write annotations in {folder}: {exc}") from exc
    return folder / f"{result['record']}.{extension}"


def run(args: argparse.Namespace) -> int:
    record = read_record(args.record)
    result = analyze_record(record, args.channel, args.chunk_s, one_lead=args.one_lead)
    if args.annotate:
        folder = args.out_dir if args.out_dir is not None else Path(args.record).parent
        path = write_annotations(result, folder, args.annotate)
        result["annotations"] = str(path)
    if args.json:
        print(json.dumps(result))
        return 0
    second = f", second lead {result['second_lead']}" if result["second_lead"] else ""
    print(
        f"{result['record']} channel {args.channel} ({result['signal']}{second}) "
        f"at {result['fs']} Hz"
    )
    print(f"beats: {len(result['beats'])} ({len(result['ventricular'])} ventricular)")
    for r in result["rhythms"]:
        fs = result["fs"]
        print(f"{r['label']:9s} {r['start'] / fs:9.2f} s - {r['end'] / fs:9.2f} s")
    if "annotations" in result:
        print(f"annotations written to {result['annotations']}")
    return 0
