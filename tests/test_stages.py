"""The stages that observe the flow: scores per bed (and, with the signal pipeline, rhythms)."""

from __future__ import annotations

from eicu.metrics import IngestMetrics
from eicu.models import BedKey, NumericsFrame
from ingest.scores import ScoreStage
from ingest.state import BedRouter

BED = BedKey("s", "b1")
T0 = 1_764_302_400_000_000


def _router() -> tuple[BedRouter, ScoreStage]:
    router = BedRouter(IngestMetrics())
    stage = ScoreStage()
    router.subscribe(stage)
    return router, stage


def test_live_news2_from_the_latest_values_and_honest_when_incomplete() -> None:
    router, stage = _router()
    # RCP NEWS2 chart 1: RR 22 -> 2, SpO2 95 on scale 1 -> 1, air -> 0, SBP 105 -> 1,
    # pulse 112 -> 2, alert -> 0, 38.4 C -> 1: total 7, high.
    values = {"RR": 22.0, "SPO2": 95.0, "O2": 0.0, "NIBP_SYS": 105.0, "HR": 112.0}
    router.route(NumericsFrame(BED, 0, T0, {**values, "ACVPU": 0.0, "TEMP": 38.4}))
    news2 = stage.beds[BED].news2
    assert news2 is not None and news2.complete
    assert news2.total == 7 and news2.band == "high"
    # A later message without SpO2 keeps the earlier value while it is fresh ...
    router.route(NumericsFrame(BED, 1, T0 + 1_000_000, {"HR": 80.0}))
    news2 = stage.beds[BED].news2
    assert news2 is not None and news2.complete and news2.total == 5
    # ... but a monitor saying "no valid SpO2" makes the score incomplete, never normal.
    router.route(NumericsFrame(BED, 2, T0 + 2_000_000, {"SPO2": None}))
    news2 = stage.beds[BED].news2
    assert news2 is not None and not news2.complete and news2.total is None
    assert "spo2" in " ".join(news2.missing).lower()


def test_deterioration_signal_on_a_news2_rise() -> None:
    router, stage = _router()
    base = {
        "RR": 16.0,
        "SPO2": 97.0,
        "O2": 0.0,
        "NIBP_SYS": 125.0,
        "HR": 75.0,
        "ACVPU": 0.0,
        "TEMP": 37.0,
    }
    router.route(NumericsFrame(BED, 0, T0, base))
    signal = stage.beds[BED].deterioration
    assert signal is not None and not signal.active
    worse = {**base, "RR": 22.0, "HR": 112.0}  # +2 and +2
    router.route(NumericsFrame(BED, 1, T0 + 600_000_000, worse))
    signal = stage.beds[BED].deterioration
    assert signal is not None and signal.active and "news2_rise" in signal.reasons


def test_signal_stage_derives_rate_and_rhythm_from_synthetic_beds() -> None:
    """A VT run on the synthetic monitor is flagged by the engine's own pipeline, and the heart
    rate it derives from the ECG agrees with the monitor's."""
    from ingest.signals import SignalStage
    from simulators.beds import SynthGroup

    router = BedRouter(IngestMetrics())
    stage = SignalStage()
    router.subscribe(stage)
    beds = [BedKey("s", "stable"), BedKey("s", "vt")]
    group = SynthGroup(beds, ["stable", "vt"], [1, 2], T0)
    labels_seen: set[str] = set()
    for _ in range(int(150 / 0.25)):
        for _bed, frame, numerics, _on in group.tick(0.25):
            for f in (numerics, frame):
                if f is not None:
                    router.route(f)
        labels_seen |= set(stage.derived[beds[1]].rhythms)
    stable = stage.derived[beds[0]]
    assert stable.beats > 100 and not stable.rhythms
    monitor_hr = router.beds[beds[0]].latest["HR"][0]
    assert monitor_hr is not None and abs(stable.hr_bpm["ECG_II"] - monitor_hr) < 5
    truth = {e.label for e in group.bank.truth(1)}
    assert "VTACH" in truth
    assert "VTACH" in labels_seen


def _frames(seconds: float, frame_s: float = 0.25) -> list[object]:
    """The waveform and numerics frames of a VT bed and a stable bed, in arrival order."""
    from simulators.beds import SynthGroup

    beds = [BedKey("s", "stable"), BedKey("s", "vt")]
    group = SynthGroup(beds, ["stable", "vt"], [1, 2], T0)
    out: list[object] = []
    for _ in range(int(seconds / frame_s)):
        for _bed, frame, numerics, _on in group.tick(frame_s):
            out.extend(f for f in (numerics, frame) if f is not None)
    return out


def _derive(frames: list[object], chunk_s: float) -> tuple[dict[object, object], int]:
    """What the signal stage derives per bed: counts, rhythms, events and marks (as multisets:
    the order in which a bed's signals report can differ)."""
    from ingest.signals import SignalStage

    router = BedRouter(IngestMetrics())
    stage = SignalStage(max_events=10**6, chunk_s=chunk_s)
    router.subscribe(stage)
    for f in frames:
        router.route(f)  # type: ignore[arg-type]
    stage.flush()
    out: dict[object, object] = {}
    for bed, d in stage.derived.items():
        # the marks kept are the newest 128 in arrival order: compare their last 10 s
        newest = max(m.t_us for m in d.marks)
        marks = sorted((m.signal, m.t_us, m.kind, m.label, str(m.state)) for m in d.marks
                       if m.t_us >= newest - 10_000_000)  # fmt: skip
        events = sorted(repr(e) for e in d.events)
        out[bed] = (d.beats, d.ventricular_beats, d.marks_total, sorted(d.rhythms), events, marks)
    return out, stage.skipped_frames


def test_frames_taken_two_at_a_time_give_what_frames_taken_one_at_a_time_give() -> None:
    from eicu.models import WaveformFrame

    frames = _frames(120.0)
    one, skipped_one = _derive(frames, 0.0)
    two, skipped_two = _derive(frames, 0.5)
    assert two == one and skipped_one == skipped_two == 0
    assert any("VTACH" in e for e in one[BedKey("s", "vt")][4])  # type: ignore[index]
    # a lost frame (a gap in the signal) and a frame arriving late (out of order, not analysed)
    waves = [i for i, f in enumerate(frames) if isinstance(f, WaveformFrame)]
    lost, late = waves[101], waves[150]
    moved = [f for i, f in enumerate(frames) if i not in (lost, late)]
    moved.insert(waves[170] - 2, frames[late])
    one, skipped_one = _derive(moved, 0.0)
    two, skipped_two = _derive(moved, 0.5)
    assert two == one and skipped_one == skipped_two == 4  # the late frame's 4 analysed blocks
    # chunks of 1 s hold four frames and give the same again
    assert _derive(frames, 1.0)[0] == _derive(frames, 0.0)[0]


def test_a_chunk_length_that_is_no_length_is_refused() -> None:
    import pytest

    from ingest.signals import SignalStage

    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="chunk_s"):
            SignalStage(chunk_s=bad)
