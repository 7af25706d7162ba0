"""What the full-disclosure review draws: beats and rhythms found again in a stored window, and
the alarms of the bed from the audit trail."""

from __future__ import annotations

import numpy as np
import pytest

from dashboards import review
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.models import BedKey
from eicu.store.base import WaveformWindow
from simulators.synth import BedSynth

T0_US = 1_700_000_000_000_000
VT_START_S, VT_S = 20.0, 15.0


def vt_window(seconds: float = 45.0) -> tuple[WaveformWindow, BedSynth]:
    bed = BedSynth("vt", 4, onset_s=VT_START_S, duration_s=VT_S)
    ecg = bed.waveforms(seconds)["ECG_II"]
    t_us = T0_US + np.arange(ecg.shape[0], dtype=np.int64) * 4000
    return WaveformWindow("ECG_II", 250.0, t_us, ecg), bed


def at_s(mark: dict[str, object]) -> float:
    return (int(mark["t_us"]) - T0_US) / 1e6  # type: ignore[call-overload]


def test_beats_and_the_vt_episode_are_found_in_a_stored_window() -> None:
    window, bed = vt_window()
    start_us, end_us = T0_US + 15_000_000, T0_US + 45_000_000
    marks = review.window_marks(window, start_us, end_us)
    assert marks and all(start_us <= int(m["t_us"]) < end_us for m in marks)
    rhythms = [(m["label"], m["state"], at_s(m)) for m in marks if m["kind"] == "rhythm"]
    vt = [(state, t) for label, state, t in rhythms if label == "VTACH"]
    assert [state for state, _ in vt] == ["start", "end"]
    assert VT_START_S <= vt[0][1] <= VT_START_S + 4.0
    assert VT_START_S + VT_S - 4.0 <= vt[1][1] <= VT_START_S + VT_S + 4.0
    # the beats are where the simulator put them, ventricular during the VT
    truth = bed.truth_beats(15.0, 45.0)
    found = np.array([at_s(m) for m in marks if m["kind"] == "beat"])
    true_s = truth.t_s
    matched = sum(bool(np.any(np.abs(found - t) < 0.15)) for t in true_s)
    assert matched >= 0.9 * true_s.shape[0] and found.shape[0] <= 1.1 * true_s.shape[0]
    in_vt = [m["label"] for m in marks if m["kind"] == "beat" and 23.0 < at_s(m) < 34.0]
    before = [m["label"] for m in marks if m["kind"] == "beat" and at_s(m) < VT_START_S]
    assert in_vt.count("V") >= 0.7 * len(in_vt) and before.count("N") >= 0.9 * len(before)


def test_a_rhythm_present_when_the_window_starts_is_shown_as_ongoing() -> None:
    window, _ = vt_window()
    start_us = T0_US + 27_000_000
    marks = review.window_marks(window, start_us, T0_US + 30_000_000)
    ongoing = [m for m in marks if m["state"] == "ongoing"]
    assert [m["label"] for m in ongoing if m["label"] == "VTACH"] == ["VTACH"]
    assert all(m["t_us"] == start_us and int(m["since_us"]) < start_us for m in ongoing)  # type: ignore[call-overload]


def test_signals_the_engine_does_not_analyse_have_no_marks() -> None:
    window, _ = vt_window(5.0)
    resp = WaveformWindow("RESP", 250.0, window.t_us, window.values)
    assert review.window_marks(resp, T0_US, T0_US + 5_000_000) == []
    empty = WaveformWindow("ECG_II", 250.0, np.zeros(0, np.int64), np.zeros(0))
    assert review.window_marks(empty, T0_US, T0_US + 5_000_000) == []


def event(
    alarm: str, state: AlarmState, t_s: float, actor: str = "engine", reason: str = ""
) -> AlarmEvent:
    bed = BedKey("icu1", "bed1") if alarm != "other" else BedKey("icu1", "bed2")
    return AlarmEvent(
        f"icu1/bed1/{alarm}", bed, alarm.upper(), Priority.HIGH, Category.PHYSIOLOGICAL, state,
        T0_US + int(t_s * 1e6), actor, reason,
    )  # fmt: skip


@pytest.mark.parametrize("shuffle", [False, True])
def test_alarm_spans_overlapping_the_window(shuffle: bool) -> None:
    events = [
        event("vtach", AlarmState.ACTIVE, 10.0, reason="started: VT"),
        event("vtach", AlarmState.ACTIVE, 11.0, "ida", "audio paused for 120 s"),
        event("vtach", AlarmState.ACKNOWLEDGED, 14.0, "ida", "acknowledged"),
        event("vtach", AlarmState.CLEARED, 25.0, reason="condition ended"),
        event("brady", AlarmState.ACTIVE, 1.0),
        event("brady", AlarmState.LATCHED, 3.0, reason="condition ended; latched"),
        event("apnea", AlarmState.ACTIVE, 18.0),
        event("late", AlarmState.ACTIVE, 31.0),
        event("other", AlarmState.ACTIVE, 12.0),
    ]
    if shuffle:
        events.reverse()
    spans = review.alarm_spans(
        events, BedKey("icu1", "bed1"), T0_US + 5_000_000, T0_US + 30_000_000
    )
    got = {s["kind"]: s for s in spans}
    assert set(got) == {"VTACH", "APNEA"}
    vt = got["VTACH"]
    assert (vt["start_us"], vt["end_us"]) == (T0_US + 10_000_000, T0_US + 25_000_000)
    assert (vt["acknowledged_by"], vt["acknowledged_us"]) == ("ida", T0_US + 14_000_000)
    assert got["APNEA"]["end_us"] is None and got["APNEA"]["acknowledged_by"] is None
