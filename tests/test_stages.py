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
