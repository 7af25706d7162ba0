"""Auto-registered beds heard only briefly raise no wall of technical alarms; a bed that streamed
and then went silent still does. Admission rules alone on an injected clock, then a real
Mosquitto, a real PostgreSQL and the engine with its alarm stage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from eicu import wire
from eicu.alarms.policy import load_policy
from eicu.alarms.rules import RuleOutput, evaluate_bed
from eicu.config import AdmissionSettings, AlertingSettings, IngestSettings, MqttSettings
from eicu.devservices import Mosquitto
from eicu.metrics import IngestMetrics
from eicu.models import BedKey, NumericsFrame, StatusFrame
from eicu.store import open_store
from ingest.admission import AT_ONCE_HOLD_S, MONITORED_AT_ONCE, Admission
from ingest.engine import Engine

SITE = "icu"
YEAR_2099_US = 4_070_908_800_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_beds_beyond_a_few_at_once_are_new_until_they_have_streamed(tmp_path: Path) -> None:
    clock = FakeClock()
    beds_file = tmp_path / "beds.txt"
    beds_file.write_text("icu/registered\n")
    settings = AdmissionSettings(beds_file=beds_file, new_beds_burst=50)
    admitted = tmp_path / "admitted-beds.txt"
    admission = Admission(settings, IngestMetrics(), admitted_path=admitted, clock=clock)
    for i in range(10):
        assert admission.check(f"eicu/v1/icu/b{i}/numerics", 100) is None
    assert admission.check("eicu/v1/icu/registered/numerics", 100) is None
    new = [admission.is_new(BedKey(SITE, f"b{i}")) for i in range(10)]
    assert new == [False] * MONITORED_AT_ONCE + [True] * (10 - MONITORED_AT_ONCE)
    assert not admission.is_new(BedKey(SITE, "registered"))
    # heard once and again later, but not a stream: still new
    bed = BedKey(SITE, "b5")
    admission.observe(bed, 2, 0, 60_000_000)
    assert admission.is_new(bed)
    # a stream: confirmed, and remembered across a restart
    admission.observe(bed, admission.confirm_messages, 0, int(admission.confirm_s * 1e6))
    assert not admission.is_new(bed)
    again = Admission(settings, IngestMetrics(), admitted_path=admitted, clock=clock)
    assert not again.is_new(bed)
    assert again.is_new(BedKey(SITE, "b6"))
    assert again.is_new(BedKey(SITE, "b0"))  # watched at once, never confirmed: new again
    # a slot watched at once is freed after a while even when its bed never streams
    clock.now_s += AT_ONCE_HOLD_S
    assert again.check("eicu/v1/icu/late/numerics", 100) is None
    assert not again.is_new(BedKey(SITE, "late"))


def test_a_silent_new_bed_raises_nothing_but_a_new_bed_with_hr_180_alarms() -> None:
    policy = load_policy()
    bed = BedKey(SITE, "x1")
    now_us = 1_780_000_000_000_000

    def present(out: RuleOutput) -> set[str]:
        return {c.kind for c in out.conditions if c.present}

    heard_us = now_us - 60_000_000  # a minute ago, once
    for status in ("online", "offline", "standby"):
        for new_bed in (True, False):
            out = evaluate_bed(
                bed,
                policy,
                now_us,
                latest={"HR": (70.0, heard_us)},
                status=status,
                last_seen_us=heard_us,
                new_bed=new_bed,
            )
            if new_bed:
                assert present(out) == set()
            else:
                assert present(out) & {"DATA_STALE", "BED_OFFLINE", "BED_STANDBY"}
    fault = "device time 2000000000 s ahead of the engine's clock"
    live = evaluate_bed(
        bed,
        policy,
        now_us,
        latest={"HR": (180.0, now_us - 20 * 1_000_000)},
        status="online",
        last_seen_us=now_us - 1_000_000,
        clock_fault=fault,
        new_bed=True,
    )
    assert "DEVICE_CLOCK" not in present(live)
    assert "HR_HIGH" in present(live)  # physiological conditions count at once


async def _until(check: Callable[[], object], timeout_s: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


@pytest.mark.broker
@pytest.mark.db
async def test_a_flood_of_new_bed_ids_raises_no_wall_of_technical_alarms(
    broker: Mosquitto, db_url: str, tmp_path: Path
) -> None:
    engine = Engine(
        MqttSettings(port=broker.port, client_id="eicu-test-new-beds"),
        IngestSettings(
            spool_dir=tmp_path / "spool",
            flush_interval_s=0.1,
            analyse_signals=False,
            admission=AdmissionSettings(new_beds_burst=100, new_beds_per_s=0.0),
        ),
        open_store(db_url),
        alerting=AlertingSettings(outbox_path=tmp_path / "alarms.db"),
    )
    assert engine.alarms is not None
    alarms = engine.alarms
    engine.admission.confirm_s = 2.0  # the rule as deployed, on a shorter stream
    await engine.store.open()
    await engine.start()
    await engine.wait_connected()
    phantoms = [BedKey(SITE, f"x{i:03d}") for i in range(30)]
    listed = [f"y{i}" for i in range(10)]
    real = BedKey(SITE, "real01")

    def raised(kind: str, beds: list[BedKey]) -> list[BedKey]:
        return [a.bed for a in alarms.machine.alarms() if a.kind == kind and a.bed in beds]

    try:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="gw-flood") as gw:
            now_us = time.time_ns() // 1000
            for i, bed in enumerate(phantoms):
                # one message each; every other one dated 2099
                frame = NumericsFrame(bed, 1, YEAR_2099_US if i % 2 else now_us, {"HR": 70.0})
                await gw.publish(wire.numerics_topic(bed), wire.encode_numerics(frame), qos=1)
            status = StatusFrame(SITE, "offline", now_us, gateway="gw1", beds=tuple(listed))
            await gw.publish(
                wire.gateway_status_topic(SITE, "gw1"), wire.encode_status(status), qos=1
            )
            await _until(lambda: all(b in engine.router.beds for b in phantoms), what="flood")
            # a real monitor: new at its first message, confirmed by its stream
            seen_new: list[bool] = []
            seq = 0
            async with asyncio.timeout(30.0):
                while not seen_new or seen_new[-1]:
                    seq += 1
                    frame = NumericsFrame(real, seq, time.time_ns() // 1000, {"HR": 80.0})
                    await gw.publish(wire.numerics_topic(real), wire.encode_numerics(frame), qos=1)
                    # judged once the engine has handled this message (the broker's PUBACK
                    # comes before that)
                    await _until(
                        lambda n=seq: (
                            real in engine.router.beds and engine.router.beds[real].messages >= n
                        ),
                        what="real bed",
                    )
                    seen_new.append(engine.router.beds[real].new)
                    await asyncio.sleep(0.2)
            assert seen_new[0] and not seen_new[-1]
            # its stream ends: the silent bed raises DATA_STALE; the phantoms were silent longer
            await _until(lambda: raised("DATA_STALE", [real]), what="DATA_STALE of the real bed")
        listed_beds = [BedKey(SITE, b) for b in listed]
        assert all(engine.router.beds[b].status == "offline" for b in listed_beds)
        at_once = phantoms[:MONITORED_AT_ONCE]
        assert set(raised("DATA_STALE", phantoms)) <= set(at_once)
        assert raised("BED_OFFLINE", listed_beds) == []
        assert set(raised("DEVICE_CLOCK", phantoms)) <= set(at_once)
        assert all(engine.router.beds[b].new for b in phantoms[MONITORED_AT_ONCE:])
    finally:
        await engine.stop()
        await engine.store.close()
    again = Admission(
        AdmissionSettings(), IngestMetrics(), admitted_path=tmp_path / "spool/admitted-beds.txt"
    )
    assert not again.is_new(real)
    assert all(again.is_new(b) for b in phantoms)
