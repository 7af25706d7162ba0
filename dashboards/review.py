"""What the full-disclosure review draws on a stored waveform: beats, rhythm changes and alarms.

Beats and rhythm flags are not stored: the engine keeps them only while they are recent. For a
stored window they are found again by running the engine's own per-bed signal pipeline
(:class:`eicu.signal.pipeline.BedSignalPipeline`, the same detectors and rhythm rules as live)
over the stored samples, starting :data:`LEAD_IN_S` before the window so that the detectors have
learnt the beat and the rhythm rules have their history when the window begins. This costs a
few tens of milliseconds per review and nothing per stored second, and a review always shows
what the current detectors find. A rhythm that needs more history than the lead-in may show up
later in the window than it did live.

Alarms come from the audit trail (the alarm outbox): each alarm of the bed that overlaps the
window, from its first event to the event that ended its condition (latched or cleared).
Pure computation: the caller reads the store and the outbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import numpy as np

from eicu.alarm_model import AlarmEvent, AlarmState
from eicu.models import BedKey
from eicu.signal.events import Beat, RhythmFlag
from eicu.signal.pipeline import ANALYSED, BedSignalPipeline
from eicu.store.base import WaveformWindow

LEAD_IN_S: Final = 15.0
ENDED = (AlarmState.LATCHED, AlarmState.CLEARED)


def window_marks(window: WaveformWindow, start_us: int, end_us: int) -> list[dict[str, Any]]:
    """Beats and rhythm changes in ``[start_us, end_us)`` found in ``window`` (which should
    begin :data:`LEAD_IN_S` earlier). A rhythm that started before ``start_us`` and is still
    present there is given as a mark at ``start_us`` with state ``ongoing``."""
    signal = window.signal
    if signal not in ANALYSED or window.values.shape[0] == 0:
        return []
    fs_hz = window.fs_hz
    origin_us = int(window.t_us[0])
    index = np.rint((window.t_us - origin_us) * fs_hz / 1e6).astype(np.int64)
    pipeline = BedSignalPipeline({signal: fs_hz})
    marks: list[dict[str, Any]] = []
    ongoing: dict[str, int] = {}
    for run in np.split(np.arange(index.shape[0]), np.flatnonzero(np.diff(index) != 1) + 1):
        skip = pipeline.next_index(signal) - int(index[run[0]])
        if skip > 0:  # samples stored twice (an overlap): the first copy was analysed
            run = run[skip:]
        if run.shape[0] == 0:
            continue
        for ev in pipeline.push(signal, window.values[run], int(index[run[0]])):
            if not isinstance(ev, Beat | RhythmFlag):
                continue
            t_us = origin_us + round(ev.sample * 1e6 / fs_hz)
            if isinstance(ev, RhythmFlag) and t_us < start_us:
                if ev.state == "start":
                    ongoing[ev.label] = t_us
                else:
                    ongoing.pop(ev.label, None)
            if not start_us <= t_us < end_us:
                continue
            if isinstance(ev, Beat):
                label = "P" if ev.kind == "pulse" else "V" if ev.ventricular else "N"
                marks.append(
                    {"signal": signal, "t_us": t_us, "kind": "beat", "label": label, "state": None}
                )
            else:
                marks.append(
                    {"signal": signal, "t_us": t_us, "kind": "rhythm", "label": ev.label,
                     "state": ev.state}
                )  # fmt: skip
    carried = [
        {"signal": signal, "t_us": start_us, "kind": "rhythm", "label": label, "state": "ongoing",
         "since_us": since_us}
        for label, since_us in sorted(ongoing.items())
    ]  # fmt: skip
    return carried + marks


def joined(signal: str, parts: list[WaveformWindow]) -> WaveformWindow:
    """Windows of one signal from consecutive beds (a patient's transfer), as one, in time
    order; a part at another rate than the first that has samples is left out."""
    full = [p for p in parts if p.t_us.shape[0]]
    if not full:
        return (
            parts[0]
            if parts
            else WaveformWindow(signal, 0.0, np.empty(0, np.int64), np.empty(0, np.float64))
        )
    same = [p for p in full if p.fs_hz == full[0].fs_hz]
    if len(same) == 1:
        return same[0]
    return WaveformWindow(
        signal,
        same[0].fs_hz,
        np.concatenate([p.t_us for p in same]),
        np.concatenate([p.values for p in same]),
    )


def alarm_spans(
    events: Iterable[AlarmEvent], bed: BedKey, start_us: int, end_us: int
) -> list[dict[str, Any]]:
    """The bed's alarms that overlap ``[start_us, end_us)``, each from its first event to the
    end of its condition (``end_us`` None: not ended by the last event seen), oldest first."""
    spans: dict[str, dict[str, Any]] = {}
    for e in sorted((e for e in events if e.bed == bed), key=lambda e: e.time_us):
        span = spans.get(e.alarm_id)
        if span is None:
            span = spans[e.alarm_id] = {
                "alarm_id": e.alarm_id, "kind": e.kind, "priority": e.priority.value,
                "start_us": e.time_us, "end_us": None, "acknowledged_by": None,
                "acknowledged_us": None,
            }  # fmt: skip
        if e.state in ENDED and span["end_us"] is None:
            span["end_us"] = e.time_us
        if e.reason.startswith("acknowledged") and span["acknowledged_us"] is None:
            span["acknowledged_by"], span["acknowledged_us"] = e.actor, e.time_us
    return [
        s for s in spans.values()
        if s["start_us"] < end_us and (s["end_us"] is None or s["end_us"] >= start_us)
    ]  # fmt: skip
