"""Device time against the engine's clock, a bed's clock steps, and standby lifetimes, in the
router: no servers needed (the end-to-end tests are in test_device_time_e2e.py)."""

from __future__ import annotations

import numpy as np
import pytest

from eicu.config import IngestSettings, Settings
from eicu.errors import ConfigError
from eicu.metrics import IngestMetrics
from eicu.models import BedKey, Frame, NumericsFrame, SignalBlock, StatusFrame, WaveformFrame
from ingest.state import CLOCK_FAULT_HOLD_S, BedRouter, BedState

BED = BedKey("karamay", "bed07")
T0_S = 1_780_000_000.0
YEAR_2099_US = 4_070_908_800_000_000


def _num(seq: int, device_us: int, received_s: float, hr: float) -> NumericsFrame:
    return NumericsFrame(BED, seq, device_us, {"HR": hr}, received_us=int(received_s * 1e6))


def _router(**settings: float) -> tuple[BedRouter, list[Frame], IngestMetrics]:
    metrics = IngestMetrics()
    router = BedRouter(metrics, IngestSettings(**settings))  # type: ignore[arg-type]
    seen: list[Frame] = []
    router.subscribe(lambda frame, state: seen.append(frame))
    return router, seen, metrics


def _faults(metrics: IngestMetrics, kind: str, direction: str) -> float:
    value = metrics.registry.get_sample_value(
        "eicu_ingest_device_time_faults_total", {"kind": kind, "direction": direction}
    )
    return value or 0.0


def test_one_future_message_never_moves_latest_into_the_future() -> None:
    router, seen, metrics = _router()
    for i in range(5):
        router.route(_num(i, int((T0_S + i) * 1e6), T0_S + i + 0.1, 80.0))
    far = _num(5, YEAR_2099_US, T0_S + 5.1, 70.0)
    assert router.route(far)
    state = router.beds[BED]
    now_us = int((T0_S + 5.1) * 1e6)
    assert state.latest["HR"] == (70.0, now_us + int(state.clock_offset_us))
    assert state.clock_offset_us == pytest.approx(-100_000, abs=2_000)  # the bed's clock is kept
    # Consumers (scores, alarms) see it at its receive time; the caller stores it as it came.
    assert isinstance(seen[-1], NumericsFrame) and seen[-1].ts_us == state.latest["HR"][1]
    assert far.ts_us == YEAR_2099_US
    assert _faults(metrics, "numerics", "ahead") == 1
    assert "ahead of the engine's clock" in (state.clock_fault_at(now_us) or "")
    # The next real value takes its place at once.
    router.route(_num(6, int((T0_S + 6) * 1e6), T0_S + 6.1, 180.0))
    assert state.latest["HR"] == (180.0, int((T0_S + 6) * 1e6))
    # The fault is reported for a while after the last such message, then no more.
    later_us = now_us + int((CLOCK_FAULT_HOLD_S + 1) * 1e6)
    assert state.clock_fault_at(later_us) is None


def test_one_message_a_little_ahead_is_held_but_a_confirmed_step_is_followed() -> None:
    router, _, metrics = _router()
    for i in range(3):
        router.route(_num(i, int((T0_S + i) * 1e6), T0_S + i + 0.1, 80.0))
    state = router.beds[BED]
    # 300 s ahead: inside the window, but a jump of the bed's own clock: held.
    router.route(_num(3, int((T0_S + 303) * 1e6), T0_S + 3.1, 70.0))
    assert state.latest["HR"][1] < int((T0_S + 4) * 1e6)
    assert _faults(metrics, "numerics", "ahead") == 0
    router.route(_num(4, int((T0_S + 4) * 1e6), T0_S + 4.1, 180.0))
    assert state.latest["HR"] == (180.0, int((T0_S + 4) * 1e6))
    # The clock really stepped: three messages over two seconds on the new clock.
    for i, t in enumerate((5.0, 6.0, 7.5)):
        router.route(_num(5 + i, int((T0_S + t + 300) * 1e6), T0_S + t + 0.1, 90.0))
    assert state.clock_offset_us == pytest.approx(300e6 - 0.1e6)
    assert state.latest["HR"] == (90.0, int((T0_S + 307.5) * 1e6))


def test_a_device_clock_hours_wrong_is_flagged_and_still_monitored() -> None:
    """A monitor set to local time (UTC+8) as if it were UTC: every message is 8 h ahead."""
    router, _, metrics = _router()
    ahead_us = 8 * 3600 * 1_000_000
    for i in range(6):
        router.route(_num(i, int((T0_S + i) * 1e6) + ahead_us, T0_S + i + 0.1, 100.0 + i))
    state = router.beds[BED]
    assert state.latest["HR"] == (105.0, int((T0_S + 5) * 1e6) + ahead_us)
    now_us = int((T0_S + 5.2) * 1e6)
    assert state.device_now_us(now_us) - state.latest["HR"][1] == pytest.approx(0.1e6, abs=1e3)
    assert _faults(metrics, "numerics", "ahead") == 6
    assert state.clock_fault_at(now_us) is not None
    # Set right again: back inside the window, followed once confirmed; values taken on the
    # wrong clock do not stand in the right one's future.
    for i, t in enumerate((6.0, 7.0, 8.5)):
        router.route(_num(6 + i, int((T0_S + t) * 1e6), T0_S + t + 0.1, 120.0))
    assert state.clock_offset_us == pytest.approx(-0.1e6)
    assert state.latest["HR"] == (120.0, int((T0_S + 8.5) * 1e6))


def test_a_future_waveform_frame_is_handed_on_at_its_receive_time() -> None:
    router, seen, metrics = _router()
    block = SignalBlock("ECG_II", 250.0, 200.0, 0, np.zeros(125, dtype=np.int16))
    for i in range(4):
        t0_us = int((T0_S + i * 0.5) * 1e6)
        router.route(WaveformFrame(BED, i, t0_us, (block,), received_us=t0_us + 600_000))
    far = WaveformFrame(BED, 4, YEAR_2099_US, (block,), received_us=int((T0_S + 2.6) * 1e6))
    router.route(far)
    handed = seen[-1]
    assert isinstance(handed, WaveformFrame)
    assert handed.t0_us == pytest.approx((T0_S + 2.0) * 1e6, abs=1e3)
    assert far.t0_us == YEAR_2099_US
    assert router.beds[BED].signals["ECG_II"].last_t_us < int((T0_S + 3) * 1e6)
    assert _faults(metrics, "waveform", "ahead") == 1


def test_a_standby_lasts_its_lifetime_and_an_older_one_is_ignored() -> None:
    router, _, metrics = _router(standby_max_s=600.0)
    now_us = int(T0_S * 1e6)
    fresh = StatusFrame(BED.site, "standby", now_us - 100 * 10**6, bed=BED.bed, received_us=now_us)
    router.route(fresh)
    state = router.beds[BED]
    assert state.status_at(now_us) == "standby"
    assert state.status_at(now_us + 499 * 10**6) == "standby"
    assert state.status_at(now_us + 500 * 10**6) == "online"
    # Retained and older than its lifetime: ignored, counted.
    other = BedKey(BED.site, "bed08")
    stale = StatusFrame(
        BED.site, "standby", now_us - 601 * 10**6, bed=other.bed, received_us=now_us
    )
    router.route(stale)
    assert router.bed(other).status == "unknown"
    assert metrics.registry.get_sample_value("eicu_ingest_standby_expired_total") == 1
    # Without a time: its lifetime counts from its arrival; a time in the future counts as now.
    timeless = StatusFrame(BED.site, "standby", None, gateway="gw1", beds=("b1", "b2"))
    router.route(StatusFrame(**{**_fields(timeless), "received_us": now_us}))
    assert router.bed(BedKey(BED.site, "b2")).standby_until_us == now_us + 600 * 10**6
    ahead = StatusFrame(BED.site, "standby", now_us + 10**12, bed="b3", received_us=now_us)
    router.route(ahead)
    assert router.bed(BedKey(BED.site, "b3")).standby_until_us == now_us + 600 * 10**6


def _fields(frame: StatusFrame) -> dict[str, object]:
    return {name: getattr(frame, name) for name in StatusFrame.__slots__}  # type: ignore[attr-defined]


def test_bed_state_defaults_have_no_fault_and_no_standby() -> None:
    state = BedState(BED)
    assert state.clock_fault_at(int(T0_S * 1e6)) is None
    assert state.status_at(int(T0_S * 1e6)) == "unknown"


def test_clock_and_standby_settings_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "EICU_DEVICE_CLOCK_MAX_AHEAD_S": "30",
            "EICU_DEVICE_CLOCK_MAX_BEHIND_S": "3600",
            "EICU_STANDBY_MAX_S": "900",
        }
    ).ingest
    assert (s.device_clock_max_ahead_s, s.device_clock_max_behind_s, s.standby_max_s) == (
        30.0,
        3600.0,
        900.0,
    )
    defaults = Settings.from_env({}).ingest
    assert (defaults.device_clock_max_ahead_s, defaults.standby_max_s) == (600.0, 3600.0)
    with pytest.raises(ConfigError, match="EICU_STANDBY_MAX_S"):
        Settings.from_env({"EICU_STANDBY_MAX_S": "0"})


def test_data_far_behind_keeps_its_device_time_and_never_looks_fresh() -> None:
    """A backlog (or a clock far behind) is flagged, but its values keep their old time: taking
    them at their receive time would show old values as current."""
    router, _, metrics = _router()
    year_us = 365 * 86_400 * 1_000_000
    old = _num(0, int(T0_S * 1e6) - year_us, T0_S, 80.0)
    router.route(old)
    state = router.beds[BED]
    assert state.latest["HR"] == (80.0, old.ts_us)
    assert _faults(metrics, "numerics", "behind") == 1
    # Live data then follows at once: it is ahead of a clock that is itself out of the window,
    # so confirmed after three messages over 2 s, held at its receive time until then.
    for i, t in enumerate((1.0, 2.0, 3.5)):
        router.route(_num(1 + i, int((T0_S + t) * 1e6), T0_S + t + 0.1, 90.0))
    assert state.latest["HR"] == (90.0, int((T0_S + 3.5) * 1e6))
    assert state.clock_offset_us == pytest.approx(-0.1e6)
