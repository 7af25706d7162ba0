"""Bed snapshots on the bus (eicu.live), the dashboard's reading of them (dashboards.bus) and the
alarm commands it sends (eicu.wire): round trips, bad input counted and refused, staleness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from dashboards import views
from dashboards.bus import BusBeds
from eicu import wire
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.alarms.state import Alarm
from eicu.config import MqttSettings
from eicu.errors import PayloadError
from eicu.live import BedSnapshot, Mark, batches, decode_batch, encode_batch, state_topic
from eicu.models import AlarmCommand, BedKey

BED = BedKey("icu1", "bed7")
T = 1_760_000_000_000_000


def snapshot(taken_us: int = T, **changes: object) -> BedSnapshot:
    alarm = Alarm(
        alarm_id=f"{BED}/SPO2_LOW/{T - 5_000_000}", bed=BED, kind="SPO2_LOW",
        category=Category.PHYSIOLOGICAL, priority=Priority.HIGH, state=AlarmState.ACTIVE,
        started_us=T - 5_000_000, condition_present=True, value=84.0, detail="SpO2 84 < 85",
        acknowledged_by=None, acknowledged_us=None, audio_paused_until_us=None,
    )  # fmt: skip
    base = BedSnapshot(
        bed=BED, taken_us=taken_us, status="online", last_seen_us=taken_us - 200_000,
        clock_offset_us=-1_500_000.0,
        latest={"SPO2": (84.0, taken_us - 1_700_000), "HR": (float("nan"), taken_us - 1_700_000),
                "RR": (None, taken_us - 1_700_000)},
        signals={"ECG_II": (250.0, taken_us - 1_600_000)},
        news2={"total": 7, "band": "high", "complete": True, "partial_total": 7,
               "min_band": "high", "sources": {"spo2": "SPO2"}},
        news2_us=taken_us - 1_700_000, rising_reasons=("SPO2 falling",), hr_bpm=112.4,
        rhythms=("VTACH",), quality={"ECG_II": "good"},
        marks=(Mark(41, "ECG_II", taken_us - 1_900_000, "beat", "V"),
               Mark(42, "ECG_II", taken_us - 1_600_000, "rhythm", "VTACH", "start")),
        marks_total=42, alarms=(alarm,), input_delay_us=120_000,
    )  # fmt: skip
    return BedSnapshot(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_a_snapshot_survives_the_wire_and_nan_is_no_number() -> None:
    snap = snapshot()
    (back,) = decode_batch(encode_batch([snap]))
    assert back.alarms == snap.alarms and back.marks == snap.marks
    assert back.latest["SPO2"] == snap.latest["SPO2"]
    # an invalid reading (NaN, or None from the monitor) arrives as None, never as a number
    assert back.latest["HR"] == (None, snap.latest["HR"][1]) and back.latest["RR"][0] is None
    assert back.news2 == snap.news2 and back.rising_reasons == ("SPO2 falling",)
    assert (back.hr_bpm, back.rhythms, back.input_delay_us) == (112.4, ("VTACH",), 120_000)
    assert back.signals == snap.signals and back.clock_offset_us == snap.clock_offset_us
    no_alarms = decode_batch(encode_batch([snapshot(alarms=None)]))[0]
    assert no_alarms.alarms is None  # an owner that judges no alarms says so


def test_snapshots_go_in_batches_per_site() -> None:
    snaps = [snapshot(bed=BedKey("icu1", f"b{i}")) for i in range(70)]
    snaps.append(snapshot(bed=BedKey("icu2", "b1")))
    out = batches(snaps)
    assert [(topic, len(batch)) for topic, batch in out] == [
        (state_topic("icu1"), 32), (state_topic("icu1"), 32), (state_topic("icu1"), 6),
        (state_topic("icu2"), 1),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed"),
        (json.dumps({"v": 9, "beds": []}).encode(), "unsupported_version"),
        (json.dumps({"v": 1, "beds": {}}).encode(), "malformed"),
        (json.dumps({"v": 1, "beds": [{"bed": "no slash", "t": 1}]}).encode(), "malformed"),
        (json.dumps({"v": 1, "beds": [{"bed": "a/b", "t": "soon"}]}).encode(), "malformed"),
        # a time or delay that is not an integer never reaches a comparison in the views
        (
            json.dumps({"v": 1, "beds": [{"bed": "a/b", "t": 1, "delay": "5"}]}).encode(),
            "malformed",
        ),
        (
            json.dumps({"v": 1, "beds": [{"bed": "a/b", "t": 1, "news2_us": 1.5}]}).encode(),
            "malformed",
        ),
    ],
)
def test_a_bad_state_message_is_refused_naming_why(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_batch(payload)
    assert caught.value.reason == reason


def beds() -> BusBeds:
    return BusBeds(MqttSettings(client_id="dash-1"), CollectorRegistry())


def test_the_dashboard_keeps_the_newest_snapshot_and_counts_what_it_cannot_read() -> None:
    b = beds()
    b.handle(state_topic("icu1"), encode_batch([snapshot(T)]), T)
    b.handle(state_topic("icu1"), encode_batch([snapshot(T - 1_000_000, status="offline")]), T)
    assert b.snapshot(BED, T).status == "online"  # type: ignore[union-attr]
    b.handle(state_topic("icu1"), b"\xff garbage", T)
    b.handle("eicu/elsewhere", b"{}", T)
    rejected = b.metrics.rejected
    assert rejected.labels(reason="malformed")._value.get() == 1
    assert rejected.labels(reason="wrong_topic")._value.get() == 1
    assert [s.bed for s in b.snapshots(T)] == [BED]
    # marks are kept across snapshots, each once, for a page to ask after the last it saw
    later = snapshot(T + 1_000_000, marks=(Mark(43, "ECG_II", T, "beat", "N"),), marks_total=43)
    b.handle(state_topic("icu1"), encode_batch([later]), T)
    marks, seq = b.marks(BED, 41)
    assert [m.seq for m in marks] == [42, 43] and seq == 43
    assert b.marks(BED, 43) == ([], 43)


def test_a_snapshot_nobody_refreshes_turns_stale_and_ages_its_values() -> None:
    snap = snapshot(T)
    fresh = views.bed_summary(snap, T + 500_000)
    assert not fresh["stale"] and not fresh["values"]["SPO2"]["stale"]
    # on the bed's own clock (1.5 s behind the owner's) the value is 0.7 s old
    assert fresh["values"]["SPO2"]["age_s"] == pytest.approx(0.7, abs=0.05)
    # its owner died: the last snapshot stays, and shows its age
    late = T + 12_000_000
    old = views.bed_summary(snap, late)
    assert old["stale"] and old["values"]["SPO2"]["stale"]
    assert old["news2"]["current"] is False


def test_an_alarm_command_names_its_bed_user_and_answer_topic() -> None:
    alarm_id = f"{BED}/SPO2_LOW/{T}"
    cmd = AlarmCommand(BED, "ack", alarm_id, "ada", "c1", wire.reply_topic("dash-1"))
    topic = wire.alarm_command_topic(BED)
    assert wire.decode_alarm_command(topic, wire.encode_alarm_command(cmd), 5) == AlarmCommand(
        BED, "ack", alarm_id, "ada", "c1", "eicu/reply/dash-1", 0.0, 5
    )
    pause = AlarmCommand(BED, "pause", None, "ada", "c2", "eicu/reply/dash-1", 120.0)
    back = wire.decode_alarm_command(topic, wire.encode_alarm_command(pause))
    assert (back.alarm_id, back.duration_s) == (None, 120.0)

    def refused(**doc: object) -> str:
        base = {"v": 1, "action": "ack", "alarm_id": alarm_id, "user": "ada", "id": "c3",
                "reply_to": "eicu/reply/dash-1"}  # fmt: skip
        with pytest.raises(PayloadError) as caught:
            wire.decode_alarm_command(topic, json.dumps({**base, **doc}).encode())
        return caught.value.detail

    assert "alarm of icu1/bed7" in refused(alarm_id="icu1/bed8/SPO2_LOW/1")  # another bed's
    assert "names its 'alarm_id'" in refused(alarm_id=None)
    assert "under eicu/reply/" in refused(reply_to="eicu/v1/icu1/bed7/alarms")
    assert "under eicu/reply/" in refused(reply_to="eicu/reply/#")
    assert "'action'" in refused(action="silence")
    assert "duration_s" in refused(action="pause", duration_s=1e9)
    assert "not a number" in refused(action="pause", duration_s=math.inf)
    assert "duration_s" in refused(action="pause", duration_s=0)
    assert "'user'" in refused(user="")


def test_an_answer_carries_the_events_or_the_reason() -> None:
    event = AlarmEvent(
        f"{BED}/SPO2_LOW/{T}", BED, "SPO2_LOW", Priority.HIGH, Category.PHYSIOLOGICAL,
        AlarmState.ACKNOWLEDGED, T, actor="ada",
    )  # fmt: skip
    assert wire.decode_command_answer(wire.encode_command_answer("c1", [event])) == (
        "c1", [event], None, ""
    )  # fmt: skip
    answer = wire.encode_command_answer("c2", [], "refused", "time went back")
    assert wire.decode_command_answer(answer) == ("c2", [], "refused", "time went back")
    with pytest.raises(PayloadError):
        wire.decode_command_answer(b'{"v":1,"id":"c3","events":[{"alarm_id":1}]}')


def test_an_empty_census_says_why_while_the_bus_has_told_nothing() -> None:
    b = beds()
    assert "not connected" in (b.starting() or "")
    b.connected.set()
    assert b.starting() == "waiting for the engines' first bed state"
    b.handle(state_topic("icu1"), encode_batch([snapshot(T)]), T)
    assert b.starting() is None


async def test_a_bed_whose_state_cannot_be_published_costs_the_others_nothing(
    tmp_path: Path,
) -> None:
    from eicu.config import IngestSettings
    from eicu.models import NumericsFrame
    from eicu.store import open_store
    from ingest.engine import Engine
    from ingest.live import StatePublisher

    store = open_store(f"sqlite:///{tmp_path / 's.sqlite'}")
    await store.open()
    try:
        engine = Engine(MqttSettings(), IngestSettings(spool_dir=tmp_path / "spool"), store)
        for i in range(3):
            key = BedKey("icu1", f"bed{i}")
            engine.router.route(NumericsFrame(key, 1, T, {"HR": 70.0 + i}, received_us=T))
        # a bed whose latest values hold what no monitor sends (a fault in the engine)
        engine.router.beds[BedKey("icu1", "bed1")].latest["HR"] = ("seventy", T)  # type: ignore[assignment]
        publisher = StatePublisher(engine, MqttSettings(client_id="x"), 1.0)
        snaps = publisher.take(None, T)
        payload = publisher.encode(snaps)
        assert payload is not None
        assert [str(s.bed) for s in decode_batch(payload)] == ["icu1/bed0", "icu1/bed2"]
        assert publisher.failures == 1
    finally:
        await store.close()


def test_a_published_snapshot_carries_the_marks_after_the_last_sent_at_most_the_newest_64() -> None:
    """The state publisher sends each bed's marks numbered after the last it sent; a bed keeps
    its newest 128, and a snapshot carries the newest 64 of the new ones, oldest first."""
    from ingest.live import MARKS_IN_SNAPSHOT
    from ingest.live import snapshot as take
    from ingest.signals import MARKS_KEPT, Derived
    from ingest.state import BedState

    derived = Derived()
    for seq in range(1, 201):  # 200 marks made, the newest 128 kept (73..200)
        derived.marks_total = seq
        derived.marks.append(Mark(seq, "ECG_II", T + seq, "beat", "N"))
    assert len(derived.marks) == MARKS_KEPT and MARKS_IN_SNAPSHOT == 64
    state = BedState(BED)

    def seqs(after: int | None) -> list[int]:
        snap = take(BED, state, None, derived, None, T, marks_after=after)
        assert snap.marks_total == 200
        return [m.seq for m in snap.marks]

    assert seqs(190) == list(range(191, 201))
    assert seqs(10) == list(range(137, 201))  # more new than a snapshot carries: the newest
    assert seqs(136) == list(range(137, 201))
    assert seqs(200) == [] and seqs(None) == []
