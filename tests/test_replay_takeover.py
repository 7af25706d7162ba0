"""A bed taken over from another worker is rebuilt from the store before its live data comes:
its newest values, and its recent signals through the signal pipeline, so a rhythm under way is
known (and alarmed) at once, at its data time."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from eicu.clock import Clock, ManualClock
from eicu.config import IngestSettings, MqttSettings
from eicu.models import Batch, BedKey, NumericsFrame
from eicu.store import open_store
from ingest.engine import Engine
from simulators.beds import SynthGroup
from tests.dashboard_beds import prompt_policy

BED = BedKey("icu", "vt1")
QUIET = BedKey("icu", "quiet")
SECONDS = 40.0
VT_AT_S = 32.0  # inside the replay window (the last 15 s)


def engine(tmp: Path, store: object, name: str, clock: Clock) -> Engine:
    return Engine(
        MqttSettings(),
        IngestSettings(spool_dir=tmp / f"spool-{name}"),
        store,  # type: ignore[arg-type]
        alarms_outbox=tmp / f"alarms-{name}.db",
        alarm_policy=prompt_policy(),
        clock=clock,
    )


async def test_a_bed_taken_over_is_rebuilt_from_the_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'eicu.sqlite'}")
    await store.open()
    try:
        now_us = time.time_ns() // 1000
        # the takeover happens at now_us however long the machine takes to get there
        clock = ManualClock(now_us)
        start_us = now_us - int(SECONDS * 1e6)
        first = engine(tmp_path, store, "first", clock)  # the owner that died: fed live
        group = SynthGroup([BED], ["vt"], [2], start_us, events_at_s=VT_AT_S)
        batch = Batch()
        t_s = 0.0
        while t_s < SECONDS:
            for _bed, wave, numerics, _on in group.tick(0.25):
                received = start_us + int((t_s + 0.25) * 1e6)
                for f in (numerics, wave):
                    if f is None:
                        continue
                    f = dataclasses.replace(f, received_us=received)
                    first.router.route(f)
                    if isinstance(f, NumericsFrame):
                        batch.numerics.append(f)
                    else:
                        batch.waveforms.append(f)
            t_s += 0.25
        # another bed's temperature, taken 20 minutes ago: a NEWS2 input measured seldom
        temp_us = now_us - 1_200_000_000
        temp = NumericsFrame(QUIET, 1, temp_us, {"TEMP": 38.4}, received_us=temp_us)
        batch.numerics.append(temp)
        await store.write(batch)
        lived = first.signals.derived[BED]
        assert "VTACH" in lived.rhythms, "the live pipeline did not see the VT"

        taken = engine(tmp_path, store, "taken", clock)
        pushed = await taken.replay_recent({BED, QUIET})
        # the last 15 s of ECG II, ECG V, ABP and PLETH
        assert pushed >= 15 * (250 + 250 + 125 + 125) * 0.9
        state = taken.router.beds[BED]
        assert state.latest == first.router.beds[BED].latest  # every newest value
        assert taken.router.beds[QUIET].latest == {"TEMP": (38.4, temp_us)}
        rebuilt = taken.signals.derived[BED]
        assert "VTACH" in rebuilt.rhythms
        vt_us = start_us + int(VT_AT_S * 1e6)
        assert vt_us - 2_000_000 <= rebuilt.rhythm_us["VTACH"] <= vt_us + 6_000_000
        assert abs(rebuilt.rhythm_us["VTACH"] - lived.rhythm_us["VTACH"]) <= 2_000_000
        assert rebuilt.hr_bpm.get("ECG_II") is not None
        # judged at the next pass: the VT alarm is named after its data's onset (within a beat
        # or two of the old owner's: an alarm the old owner raised is adopted by its kind)
        assert taken.alarms is not None and first.alarms is not None
        t = clock.now_us()
        taken.alarms.evaluate(t)
        first.alarms.evaluate(t)
        (vt,) = (a for a in taken.alarms.machine.alarms() if a.kind == "VTACH")
        (old,) = (a for a in first.alarms.machine.alarms() if a.kind == "VTACH")
        onset_us = int(vt.alarm_id.rsplit("/", 1)[1])
        assert vt_us - 2_000_000 <= onset_us <= vt_us + 6_000_000
        assert abs(onset_us - int(old.alarm_id.rsplit("/", 1)[1])) <= 2_000_000
        # nothing stored: nothing replayed, nothing invented
        empty = engine(tmp_path, store, "empty", clock)
        assert await empty.replay_recent({BedKey("icu", "nobody")}) == 0
        assert empty.router.beds[BedKey("icu", "nobody")].latest == {}
        for e in (first, taken, empty):
            assert e.alarms is not None
            e.alarms.outbox.close()
    finally:
        await store.close()


async def test_a_limit_condition_pending_at_the_takeover_keeps_its_onset(tmp_path: Path) -> None:
    """HR above the limit for 8 s of its 10 s condition delay when the old owner died: the new
    owner raises the alarm 10 s after the data's onset, under the id that onset gives, not 10 s
    after the takeover."""
    from eicu.alarms.policy import load_policy

    policy = load_policy()
    delay_s = policy.condition("HR_HIGH").delay_s
    limit = policy.condition("HR_HIGH").limit
    assert delay_s == 10.0 and limit is not None
    bed = BedKey("icu", "tachy")
    store = open_store(f"sqlite:///{tmp_path / 'eicu.sqlite'}")
    await store.open()
    try:
        now_us = (time.time_ns() // 1000 // 1000) * 1000
        onset_us = now_us - 8_000_000
        frames = [
            NumericsFrame(bed, i + 1, now_us - (30 - i) * 1_000_000,
                          {"HR": limit + 20 if now_us - (30 - i) * 1_000_000 >= onset_us
                           else 80.0})
            for i in range(30)
        ]  # fmt: skip
        await store.write(Batch(numerics=frames))
        new = Engine(
            MqttSettings(), IngestSettings(spool_dir=tmp_path / "spool"), store,
            alarms_outbox=tmp_path / "alarms.db", alarm_policy=policy,
            clock=ManualClock(now_us),
        )  # fmt: skip
        assert new.alarms is not None
        await new.replay_recent({bed})
        live = NumericsFrame(bed, 31, now_us, {"HR": limit + 20}, received_us=now_us)
        new.router.route(live)
        assert not [e for e in new.alarms.evaluate(now_us + 500_000, [bed]) if e.kind == "HR_HIGH"]
        due = [e for e in new.alarms.evaluate(onset_us + int(delay_s * 1e6), [bed])
               if e.kind == "HR_HIGH"]  # fmt: skip
        assert [e.alarm_id for e in due] == [f"{bed}/HR_HIGH/{onset_us}"]
    finally:
        await store.close()
