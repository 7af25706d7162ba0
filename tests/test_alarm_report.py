"""Alarm burden from a generated outbox with known answers: per bed, day, kind and priority;
share acknowledged; time to acknowledge; the CLI and the engine's gauges."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from alerting.outbox import Outbox
from alerting.service import AlarmService
from eicu import cli
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.alarms.report import burden
from eicu.config import IngestSettings, MqttSettings
from eicu.models import BedKey
from eicu.store.sqlite import SqliteStore
from ingest.engine import Engine

DAY1 = int(datetime(2026, 11, 26, 10, 0, tzinfo=UTC).timestamp() * 1e6)
DAY2 = int(datetime(2026, 11, 27, 9, 0, tzinfo=UTC).timestamp() * 1e6)
S = 1_000_000
M, H = Priority.MEDIUM, Priority.HIGH
ACTIVE, LATCHED, ACKED, CLEARED = (
    AlarmState.ACTIVE,
    AlarmState.LATCHED,
    AlarmState.ACKNOWLEDGED,
    AlarmState.CLEARED,
)


def _ev(bed: str, kind: str, start_us: int, prio: Priority, state: AlarmState, dt_s: float,
        actor: str = "engine") -> AlarmEvent:  # fmt: skip
    return AlarmEvent(
        alarm_id=f"s/{bed}/{kind}/{start_us}",
        bed=BedKey("s", bed),
        kind=kind,
        priority=prio,
        category=Category.PHYSIOLOGICAL,
        state=state,
        time_us=start_us + int(dt_s * S),
        actor=actor,
    )


def _events() -> list[AlarmEvent]:
    a1, a2, a3, a4, a5 = (DAY1 + i * 600 * S for i in range(5))
    return [
        # acknowledged after 30 s, then cleared
        _ev("b1", "SPO2_LOW", a1, M, ACTIVE, 0),
        _ev("b1", "SPO2_LOW", a1, M, ACKED, 30, "nurse-li"),
        _ev("b1", "SPO2_LOW", a1, M, CLEARED, 100),
        # escalated to high, acknowledged after 60 s: counted as high
        _ev("b1", "SPO2_LOW", a2, M, ACTIVE, 0),
        _ev("b1", "SPO2_LOW", a2, H, ACTIVE, 20),
        _ev("b1", "SPO2_LOW", a2, H, ACKED, 60, "nurse-li"),
        # latched, then cleared by acknowledgement after 90 s
        _ev("b1", "VTACH", a3, H, ACTIVE, 0),
        _ev("b1", "VTACH", a3, H, LATCHED, 40),
        _ev("b1", "VTACH", a3, H, CLEARED, 90, "dr-chen"),
        # never acknowledged
        _ev("b1", "DATA_STALE", a4, M, ACTIVE, 0),
        _ev("b1", "DATA_STALE", a4, M, CLEARED, 15),
        # an audio pause is not an acknowledgement
        _ev("b1", "HR_HIGH", a5, M, ACTIVE, 0),
        _ev("b1", "HR_HIGH", a5, M, ACTIVE, 5, "nurse-li"),
        _ev("b1", "HR_HIGH", a5, M, CLEARED, 50),
        # the next day, another bed: acknowledged after 120 s
        _ev("b2", "VTACH", DAY2, H, ACTIVE, 0),
        _ev("b2", "VTACH", DAY2, H, ACKED, 120, "dr-wang"),
    ]


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    path = tmp_path / "alarms.db"
    with Outbox(path) as outbox:
        for event in _events():
            assert outbox.record(event)
    return path


def test_burden_counts_alarms_per_bed_day_kind_priority_and_acknowledgement() -> None:
    report = burden(_events())
    rows = [(r.day, r.bed, r.kind, r.priority, r.alarms, r.acknowledged) for r in report.rows]
    assert rows == [
        ("2026-11-26", "b1", "DATA_STALE", M, 1, 0),
        ("2026-11-26", "b1", "HR_HIGH", M, 1, 0),
        ("2026-11-26", "b1", "SPO2_LOW", H, 1, 1),
        ("2026-11-26", "b1", "SPO2_LOW", M, 1, 1),
        ("2026-11-26", "b1", "VTACH", H, 1, 1),
        ("2026-11-27", "b2", "VTACH", H, 1, 1),
    ]
    o = report.overall
    assert (o.alarms, o.acknowledged) == (6, 4)
    assert o.acknowledged_share == pytest.approx(4 / 6)
    assert o.median_s == pytest.approx(75.0)  # of 30, 60, 90, 120
    assert o.p90_s == pytest.approx(111.0)  # 90 + 0.7 * 30
    high = report.by_priority[H]
    assert (high.alarms, high.acknowledged, high.median_s) == (3, 3, pytest.approx(90.0))
    assert high.p90_s == pytest.approx(114.0)  # 90 + 0.8 * 30
    medium = report.by_priority[M]
    assert (medium.alarms, medium.acknowledged, medium.median_s) == (3, 1, pytest.approx(30.0))
    assert (report.beds, report.days) == (2, 2)


def test_burden_of_an_empty_trail_has_no_figures() -> None:
    report = burden([])
    assert report.rows == [] and report.overall.acknowledged_share is None
    assert report.overall.median_s is None


def test_cli_report_prints_the_burden_as_json_and_text(
    outbox_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["alarms", "report", "--outbox", str(outbox_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["overall"]["alarms"] == 6 and doc["overall"]["acknowledged"] == 4
    assert doc["overall"]["time_to_ack_s"] == {"median": 75.0, "p90": pytest.approx(111.0)}
    assert doc["by_priority"]["high"]["acknowledged_share"] == 1.0
    assert len(doc["rows"]) == 6
    assert cli.main(["alarms", "report", "--outbox", str(outbox_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("6 alarms on 2 beds over 2 days; acknowledged 4 (66.7 %)")
    assert "median 75.0 s, p90 111.0 s" in text


def test_cli_report_names_a_missing_outbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["alarms", "report", "--outbox", str(tmp_path / "none.db")]) == 2
    assert "--outbox" in capsys.readouterr().err


def test_engine_gauges_follow_the_last_24_hours(tmp_path: Path, outbox_path: Path) -> None:
    engine = Engine(
        MqttSettings(client_id="unused"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        SqliteStore(tmp_path / "x.sqlite"),
    )
    registry = engine.metrics.registry
    service = AlarmService(engine, Outbox(outbox_path))

    def alarms(bed: str, kind: str, priority: str) -> float | None:
        labels = {"site": "s", "bed": bed, "kind": kind, "priority": priority}
        return registry.get_sample_value("eicu_alarm_burden_alarms", labels)

    service.update_burden(DAY2 + 1800 * S)  # the window reaches back past every alarm
    assert alarms("b1", "SPO2_LOW", "high") == 1 and alarms("b1", "SPO2_LOW", "medium") == 1
    assert alarms("b2", "VTACH", "high") == 1
    share = registry.get_sample_value("eicu_alarm_burden_acknowledged_ratio")
    assert share == pytest.approx(4 / 6)
    median = registry.get_sample_value("eicu_alarm_burden_time_to_ack_seconds", {"quantile": "0.5"})
    assert median == pytest.approx(75.0)

    service.update_burden(DAY2 + 3 * 3600 * S)  # day 1's alarms have left the window
    assert alarms("b1", "SPO2_LOW", "high") is None
    assert alarms("b2", "VTACH", "high") == 1
    assert registry.get_sample_value("eicu_alarm_burden_acknowledged_ratio") == 1.0
    p90 = registry.get_sample_value("eicu_alarm_burden_time_to_ack_seconds", {"quantile": "0.9"})
    assert p90 == pytest.approx(120.0)
    service.outbox.close()
