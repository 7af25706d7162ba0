"""The alarm stage inside the engine: simulated beds in, audited alarms out, restored on restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

from alerting.outbox import Outbox
from alerting.service import INPUT_DELAY_TOLERANCE_S, AlarmService
from eicu.alarm_model import AlarmEvent, AlarmState, Priority
from eicu.alarms.policy import load_policy, override
from eicu.clock import ManualClock
from eicu.config import IngestSettings, MqttSettings
from eicu.models import BedKey, NumericsFrame
from eicu.store.sqlite import SqliteStore
from ingest.engine import Engine
from simulators.beds import SynthGroup

T0 = 1_764_302_400_000_000


def _engine(tmp_path: Path) -> Engine:
    return Engine(
        MqttSettings(client_id="unused"),
        IngestSettings(spool_dir=tmp_path / "spool"),
        SqliteStore(tmp_path / "x.sqlite"),
    )


def _run(engine: Engine, service: AlarmService, group: SynthGroup, seconds: float) -> None:
    for _ in range(int(seconds / 0.25)):
        ticks = group.tick(0.25)
        now_us = 0
        for _bed, frame, numerics, on in ticks:
            if not on:
                continue
            for f in (numerics, frame):
                if f is not None:
                    rx = getattr(f, "t0_us", None) or getattr(f, "ts_us", 0)
                    now_us = max(now_us, rx)
                    engine.router.route(dataclasses.replace(f, received_us=rx))
        if now_us and (now_us - T0) % 1_000_000 < 250_000:
            service.evaluate(now_us)


def test_vt_and_probe_off_raise_audited_alarms_and_stable_raises_none(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    outbox = Outbox(tmp_path / "alarms.db")
    service = AlarmService(engine, outbox)
    beds = [BedKey("s", "stable"), BedKey("s", "vt"), BedKey("s", "probe")]
    group = SynthGroup(beds, ["stable", "vt", "spo2_off"], [1, 2, 3], T0)
    _run(engine, service, group, 150.0)
    alarms = service.machine.alarms()
    assert ("vt", "VTACH") in {(a.bed.bed, a.kind) for a in alarms}  # high priority: latched
    history = [stored.event for stored in outbox.events()]
    kinds = {(e.bed.bed, e.kind) for e in history}
    assert ("probe", "SPO2_PROBE_OFF") in kinds  # the probe came off at 45 s and back at 75 s
    probe = [e.state for e in history if e.kind == "SPO2_PROBE_OFF"]
    assert probe[0] == AlarmState.ACTIVE and probe[-1] == AlarmState.CLEARED
    assert not any(bed == "stable" for bed, _ in kinds)
    vt = next(a for a in alarms if a.kind == "VTACH")
    assert vt.priority == Priority.HIGH
    # Every change is in the durable audit trail before anyone is told.
    audited = outbox.events(vt.alarm_id)
    assert audited and audited[0].event.state == AlarmState.ACTIVE
    outbox.close()


def test_latched_alarm_survives_a_restart_and_is_acknowledged_after_it(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    outbox = Outbox(tmp_path / "alarms.db")
    service = AlarmService(engine, outbox)
    group = SynthGroup([BedKey("s", "vt")], ["vt"], [2], T0)
    _run(engine, service, group, 150.0)
    vt = next(a for a in service.machine.alarms() if a.kind == "VTACH")
    outbox.close()

    again = AlarmService(_engine(tmp_path), Outbox(tmp_path / "alarms.db"))
    restored = next(a for a in again.machine.alarms() if a.alarm_id == vt.alarm_id)
    assert restored.state in (AlarmState.ACTIVE, AlarmState.LATCHED)
    events = again.acknowledge(vt.alarm_id, "dr.li", T0 + 200_000_000)
    assert events and events[-1].actor == "dr.li"
    assert again.outbox.events(vt.alarm_id)[-1].event.actor == "dr.li"
    again.outbox.close()


def test_alarm_history_is_the_same_after_a_restart(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    service = AlarmService(engine, Outbox(tmp_path / "alarms.db"))
    beds = [BedKey("s", "vt"), BedKey("s", "probe")]
    _run(engine, service, SynthGroup(beds, ["vt", "spo2_off"], [2, 3], T0), 150.0)
    before = list(service.recent)
    assert len({e.alarm_id for e in before}) >= 2
    service.outbox.close()

    again = AlarmService(_engine(tmp_path), Outbox(tmp_path / "alarms.db"))
    assert again.recent == before  # what the dashboard's alarm list shows
    again.outbox.close()


async def test_a_bed_is_evaluated_as_its_numerics_arrive_and_when_its_delay_is_over(
    tmp_path: Path,
) -> None:
    """The alarm starts as soon as the condition has lasted its delay after the sample that
    crossed the limit arrived, not at the next second's evaluation or the next sample."""
    bed = BedKey("s", "fast")
    engine = _engine(tmp_path)
    assert engine.alarms is None
    policy, _ = override(load_policy(), bed, "HR_HIGH", "delay_s", 1.5, user="t", now_us=T0)
    clock = ManualClock(T0)
    service = AlarmService(engine, Outbox(tmp_path / "alarms.db"), policy, clock=clock)
    engine.router.subscribe(service)
    task = asyncio.create_task(service.run(interval_s=1.0))
    seq = 0

    async def send(hr: float) -> int:
        """A sample at the clock's time; returns once the service has taken it."""
        nonlocal seq
        now_us = clock.now_us()
        values: dict[str, float | None] = {"HR": hr, "SPO2": 97.0, "RR": 16.0}
        engine.router.route(NumericsFrame(bed, seq, now_us, values, received_us=now_us))
        seq += 1
        await clock.until_waiting()
        return now_us

    async def advance(delta_s: float) -> None:
        clock.advance(delta_s)
        await clock.until_waiting()

    def started() -> list[AlarmEvent]:
        return [e for e in service.recent if e.kind == "HR_HIGH"]

    try:
        await clock.until_waiting()  # the first sweep is over
        for _ in range(3):
            await send(80.0)
            assert service._evaluated_us[bed] == clock.now_us()  # evaluated on arrival
            await advance(0.35)
        crossed_us = await send(150.0)
        assert service._evaluated_us[bed] == crossed_us
        # A sweep of every bed comes in between and sees a condition short of its delay.
        await advance(1.499)
        assert service._evaluated_us[bed] == crossed_us + 1_499_000
        assert not started()
        # The delay is over: the service wakes for it (1 ms after), not at its next sweep 1 s
        # later or at the next sample.
        await advance(0.002)
        [event] = started()
        assert event.state == AlarmState.ACTIVE
        assert event.time_us - crossed_us - 1_500_000 in range(0, 1_001)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        service.outbox.close()


def _fall_behind(
    tmp_path: Path, behind_s: float, *, lagging: set[BedKey] | None = None
) -> set[tuple[str, str]]:
    """Eight beds at two sites send numerics every second; from 60 s the engine reads its
    input more and more slowly until it is ``behind_s`` behind (or, with ``lagging``, only those
    beds' link is). Returns the (bed, kind) of every alarm raised."""
    engine = _engine(tmp_path)
    service = AlarmService(engine, Outbox(tmp_path / "alarms.db"))
    beds = [BedKey(site, f"bed-{i}") for site in ("karamay", "hotan") for i in range(4)]
    routed = dict.fromkeys(beds, -1)
    values: dict[str, float | None] = {"HR": 80.0, "SPO2": 97.0, "RR": 16.0, "TEMP": 37.0}
    for wall_s in range(int(60 + 3 * behind_s + 60)):
        behind = min(behind_s, max(0.0, (wall_s - 60) / 3))  # reads 1 s in 1.5 s
        for bed in beds:
            read_to = wall_s - (behind if lagging is None or bed in lagging else 0.0)
            while routed[bed] + 1 <= read_to:
                routed[bed] += 1
                t_us = T0 + routed[bed] * 1_000_000
                rx_us = T0 + wall_s * 1_000_000 + 100_000
                engine.router.route(
                    NumericsFrame(bed, routed[bed], t_us, values, received_us=rx_us)
                )
        service.evaluate(T0 + wall_s * 1_000_000 + 200_000)
    raised = {(e.event.bed.bed, e.event.kind) for e in service.outbox.events()}
    service.outbox.close()
    return raised


def test_an_engine_behind_its_input_raises_no_missing_value_alarm_bed_by_bed(
    tmp_path: Path,
) -> None:
    """45 s behind, every HR and SpO2 is older than its 30 s max_age when it is read; the delay
    is the engine's (eicu_ingest_input_delay_seconds), the beds' values are all there."""
    assert _fall_behind(tmp_path / "a", 45.0) == set()
    # One bed's own link 45 s late: its values are missing at the command center.
    lagging = BedKey("karamay", "bed-2")
    raised = _fall_behind(tmp_path / "b", 45.0, lagging={lagging})
    assert raised == {("bed-2", "HR_UNAVAILABLE"), ("bed-2", "SPO2_PROBE_OFF")}
    # Beyond INPUT_DELAY_TOLERANCE_S the late values count as missing again, bed by bed.
    raised = _fall_behind(tmp_path / "c", INPUT_DELAY_TOLERANCE_S + 35)
    assert {kind for _, kind in raised} == {"HR_UNAVAILABLE", "SPO2_PROBE_OFF"}
    assert len({bed for bed, _ in raised}) == 4  # bed names repeat across the two sites


def test_atrial_fibrillation_and_pauses_alarm_beside_everything_else(tmp_path: Path) -> None:
    """AF and pauses are not among the rhythms multi-signal verification judges: their alarms
    sound unverified, and the other beds evaluated with them are evaluated all the same."""
    engine = _engine(tmp_path)
    service = AlarmService(engine, Outbox(tmp_path / "alarms.db"))
    names = ["af", "vt", "spo2_off", "asystole", "artefact"]
    group = SynthGroup([BedKey("s", n) for n in names], names, [1, 2, 3, 4, 5], T0)
    _run(engine, service, group, 150.0)
    history = [stored.event for stored in service.outbox.events()]
    kinds = {(e.bed.bed, e.kind) for e in history}
    expected = {("af", "AFIB"), ("vt", "VTACH"), ("spo2_off", "SPO2_PROBE_OFF")}
    assert expected | {("asystole", "ASYSTOLE")} <= kinds
    # motion artefact on the ECG makes its beats irregular; the pulse stays regular: no AF
    assert ("artefact", "AFIB") not in kinds
    # the lesser alarms of the VT and asystole chains stay quiet under the unacknowledged greater
    assert ("vt", "TACHY") not in kinds
    pause = [e.state for e in history if e.bed.bed == "asystole" and e.kind == "PAUSE"]
    assert pause in ([], [AlarmState.ACTIVE, AlarmState.CLEARED])  # a pause, then asystole
    assert engine.signals.verifier(BedKey("s", "af"))("PAUSE") is None  # type: ignore[misc]
    service.outbox.close()


def test_a_bed_that_cannot_be_evaluated_costs_the_others_nothing(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    service = AlarmService(engine, Outbox(tmp_path / "alarms.db"))
    broken, fast = BedKey("s", "broken"), BedKey("s", "fast")
    values: dict[str, float | None] = {"HR": 150.0, "SPO2": 97.0, "RR": 16.0}
    for seq in range(30):
        t_us = T0 + seq * 1_000_000
        for bed in (broken, fast):
            engine.router.route(NumericsFrame(bed, seq, t_us, values, received_us=t_us))
        # the broken bed's state trips a fault in the rules (a value of the wrong type)
        engine.router.beds[broken].latest["HR"] = ("150", t_us)  # type: ignore[assignment]
        service.evaluate(t_us)
    raised = {(s.event.bed.bed, s.event.kind) for s in service.outbox.events()}
    assert ("fast", "HR_HIGH") in raised
    assert not any(bed == "broken" for bed, _ in raised)
    errors = engine.metrics.registry.get_sample_value("eicu_alarm_evaluation_errors_total")
    assert errors == 30
    service.outbox.close()


def _run_late(
    engine: Engine, service: AlarmService, group: SynthGroup, seconds: float, lag_us: int
) -> None:
    """As :func:`_run`, but every message arrives ``lag_us`` after its device time and the beds
    are judged half a second later in each second, twice."""
    for _ in range(int(seconds / 0.25)):
        now_us = 0
        for _bed, frame, numerics, on in group.tick(0.25):
            if not on:
                continue
            for f in (numerics, frame):
                if f is not None:
                    rx = (getattr(f, "t0_us", None) or getattr(f, "ts_us", 0)) + lag_us
                    now_us = max(now_us, rx)
                    engine.router.route(dataclasses.replace(f, received_us=rx))
        if now_us and (now_us - T0 - lag_us) % 1_000_000 >= 500_000:
            service.evaluate(now_us)


def test_two_engines_fed_the_same_data_raise_the_same_alarm_ids(tmp_path: Path) -> None:
    """One engine judges as the data comes; the other receives it 3.3 s later and judges at
    other moments: the alarms they raise have the same ids, named after the data."""
    beds = [BedKey("s", "vt"), BedKey("s", "probe"), BedKey("s", "sepsis")]
    ids: list[set[str]] = []
    for name, lag_us in (("prompt", 0), ("late", 3_300_000)):
        engine = _engine(tmp_path / name)
        outbox = Outbox(tmp_path / name / "alarms.db")
        service = AlarmService(engine, outbox)
        group = SynthGroup(beds, ["vt", "spo2_off", "sepsis"], [2, 3, 4], T0)
        if lag_us:
            _run_late(engine, service, group, 150.0, lag_us)
        else:
            _run(engine, service, group, 150.0)
        ids.append({e.event.alarm_id for e in outbox.events()})
        outbox.close()
    prompt, late = ids
    assert any("/VTACH/" in i for i in prompt) and any("/SPO2_PROBE_OFF/" in i for i in prompt)
    assert prompt == late
    # Each id is site/bed/kind/onset with the onset on the bed's clock (the simulation's).
    for i in prompt:
        site, _bed, kind, onset = i.split("/")
        assert (site, kind.isupper()) == ("s", True) and T0 <= int(onset) <= T0 + 150_000_000


def test_a_bed_s_own_limit_decides_when_its_condition_is_present(tmp_path: Path) -> None:
    """A per-bed limit (eicu.alarms.policy.override, e.g. an intensivist lowering HR_HIGH to 110
    for one patient) is the limit the rules judge that bed by; other beds keep the site's."""
    engine = _engine(tmp_path)
    service = AlarmService(engine, Outbox(tmp_path / "alarms.db"))
    own, other = BedKey("s", "own-limit"), BedKey("s", "site-limit")
    policy, _ = override(load_policy(), own, "HR_HIGH", "limit", 110, user="dr.li", now_us=T0)
    service.machine.set_policy(own, policy)
    delay_us = int(policy.condition("HR_HIGH").delay_s * 1e6)
    events: list[AlarmEvent] = []
    for step in range(0, delay_us + 3_000_000, 1_000_000):
        now_us = T0 + step
        for seq_bed in (own, other):
            values: dict[str, float | None] = {"HR": 120.0, "SPO2": 97.0, "RR": 16.0}
            frame = NumericsFrame(seq_bed, step // 1_000_000, now_us, values, received_us=now_us)
            engine.router.route(frame)
        events += service.evaluate(now_us)
    raised = {e.bed for e in events if e.kind == "HR_HIGH" and e.state == AlarmState.ACTIVE}
    assert raised == {own}
    service.outbox.close()
