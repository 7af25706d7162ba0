"""``eicu verify-alarm RECORD``: is the alarm of a PhysioNet/CinC 2015 challenge record true?

The record's header comments name the alarm (e.g. ``Ventricular_Tachycardia``) and, for training
records, its label (``True alarm``/``False alarm``). The alarm fires at 300 s; every signal is
pushed through the pipeline in real-time chunks up to that instant and no sample after it is
read.
"""

from __future__ import annotations

import argparse
import json
from typing import Final

from eicu.errors import RecordError
from eicu.signal.alarms import AlarmDecision, verify_alarm
from eicu.signal.events import Event
from eicu.signal.pipeline import BedSignalPipeline
from eicu.signal.records import Record, read_record, signal_key_for_name

ALARM_AT_S: Final = 300.0

# header comment -> alarm label
CHALLENGE_ALARMS: Final[dict[str, str]] = {
    "Asystole": "ASYSTOLE",
    "Bradycardia": "BRADY",
    "Tachycardia": "TACHY",
    "Ventricular_Tachycardia": "VTACH",
    "Ventricular_Flutter_Fib": "VFIB",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("record", help="WFDB record path without extension (e.g. .../v131l)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--chunk-s", type=float, default=1.0, help="chunk length fed to the pipeline (s)"
    )


def challenge_alarm(record: Record) -> tuple[str, bool | None]:
    """(alarm label, reference truth or None) from the header comments."""
    label: str | None = None
    truth: bool | None = None
    for c in record.comments:
        text = c.strip()
        if text in CHALLENGE_ALARMS:
            label = CHALLENGE_ALARMS[text]
        elif text.lower() == "true alarm":
            truth = True
        elif text.lower() == "false alarm":
            truth = False
    if label is None:
        raise RecordError(
            f"record {record.name}: no alarm type in the header comments "
            f"(expected one of {sorted(CHALLENGE_ALARMS)})"
        )
    return label, truth


def verify_record(record: Record, label: str, chunk_s: float = 1.0) -> AlarmDecision:
    """Push every known signal of ``record`` (already cut at the alarm) and judge the alarm."""
    return verify_alarm(replay_record(record, chunk_s), label)


def replay_record(
    record: Record, chunk_s: float = 1.0, events: list[Event] | None = None
) -> BedSignalPipeline:
    """A pipeline fed every known signal of ``record`` in chunks of ``chunk_s`` seconds; the
    events it makes are added to ``events`` when given."""
    if chunk_s <= 0:
        raise ValueError(f"--chunk-s must be > 0, got {chunk_s}")
    columns: dict[str, int] = {}
    for j, name in enumerate(record.sig_names):
        key = signal_key_for_name(name)
        if key is not None and key not in columns:
            columns[key] = j
    if not columns:
        raise RecordError(f"record {record.name}: no known signal among {record.sig_names}")
    try:
        pipeline = BedSignalPipeline({k: record.channel_fs[j] for k, j in columns.items()})
    except ValueError as exc:
        raise RecordError(f"record {record.name}: {exc}") from exc
    # one chunk per signal per step, each covering the same chunk_s of time
    step_n = {j: max(1, round(chunk_s * record.channel_fs[j])) for j in columns.values()}
    n_steps = max(-(-record.channels[j].shape[0] // n) for j, n in step_n.items())
    for step in range(n_steps):
        for key, j in columns.items():
            n = step_n[j]
            chunk = record.channels[j][step * n : (step + 1) * n]
            if chunk.shape[0]:
                made = pipeline.push(key, chunk, step * n)
                if events is not None:
                    events.extend(made)
    return pipeline


def run(args: argparse.Namespace) -> int:
    # read_record with sampto: nothing after the alarm is even read from disk
    head = read_record(args.record, sampto=1)
    sampto = round(ALARM_AT_S * head.fs_hz)
    record = read_record(args.record, sampto=sampto)
    if record.channels[0].shape[0] < sampto * record.channel_fs[0] / record.fs_hz:
        raise RecordError(f"record {record.name} is shorter than {ALARM_AT_S:.0f} s")
    label, truth = challenge_alarm(record)
    decision = verify_record(record, label, args.chunk_s)
    result = {"record": record.name, "alarm": label, "true_alarm": decision.true_alarm}
    if args.json:
        result["reason"] = decision.reason
        if truth is not None:
            result["reference"] = truth
        print(json.dumps(result))
        return 0
    verdict = "TRUE" if decision.true_alarm else "FALSE"
    print(f"{record.name}: {label} alarm judged {verdict} ({decision.reason})")
    if truth is not None:
        print(f"reference: {'true' if truth else 'false'} alarm")
    return 0
