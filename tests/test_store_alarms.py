"""The alarm tables in the store: the audit trail and the delivery receipts, on the store's own
pool and migrations, on PostgreSQL and SQLite; several processes copying the same events store
each once; a database of the former alarm-table migration runner upgrades in place."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path
from typing import Any

import psycopg
import pytest

from alerting.outbox import event_id
from eicu.alarm_model import (
    AlarmEvent,
    AlarmState,
    Category,
    DeliveryRecord,
    Priority,
    StoredEvent,
)
from eicu.errors import StorageUnavailable
from eicu.models import BedKey
from eicu.store import Store, open_store, schema
from eicu.store.pg import PgStore

T0_US = 1_780_000_000_000_000
BED = BedKey("karamay", "bed-07")


def stored(
    alarm_id: str, state: AlarmState, dt_us: int = 0, actor: str = "engine", reason: str = ""
) -> StoredEvent:
    event = AlarmEvent(
        alarm_id=alarm_id,
        bed=BED,
        kind="SPO2_LOW",
        priority=Priority.HIGH,
        category=Category.PHYSIOLOGICAL,
        state=state,
        time_us=T0_US + dt_us,
        actor=actor,
        reason=reason,
        audio_paused_until_us=None if state is not AlarmState.ACTIVE else T0_US + dt_us + 7,
    )
    return StoredEvent(event_id(event), event, T0_US + dt_us + 3)


def receipt(key: str, alarm_id: str = "a1", **changes: Any) -> DeliveryRecord:
    base = DeliveryRecord(
        key=key,
        alarm_id=alarm_id,
        recipient="nurse-li",
        channel="webhook",
        address="http://127.0.0.1:9/hook",
        enqueued_us=T0_US + 1,
        sent_us=None,
        delivered_us=None,
        acknowledged_us=None,
        acknowledged_by=None,
        attempts=0,
        last_error="",
        failed_us=None,
        cancelled_us=None,
    )
    return dataclasses.replace(base, **changes)


async def test_events_are_stored_once_and_read_back_exactly(store_of_each_kind: Store) -> None:
    store = store_of_each_kind
    trail = [
        stored("a1", AlarmState.ACTIVE),
        stored("a2", AlarmState.ACTIVE, 1),
        stored("a1", AlarmState.ACKNOWLEDGED, 2, actor="dr.chen", reason="acknowledged"),
    ]
    await store.write_alarms(trail, [])
    await store.write_alarms(list(reversed(trail)), [])  # another copy, in another order
    await store.write_alarms([], [])
    assert await store.alarm_events(T0_US, T0_US + 3) == trail
    assert await store.alarm_events(T0_US + 1, T0_US + 2) == trail[1:2]
    # Two changes of one alarm at the same time, in the same state, are two events.
    paused = stored("a2", AlarmState.ACTIVE, 1, actor="nurse-li", reason="audio paused for 60 s")
    await store.write_alarms([paused], [])
    assert [s.event_id for s in await store.alarm_events(T0_US + 1, T0_US + 2)] == sorted(
        [trail[1].event_id, paused.event_id]
    )


async def test_events_of_chosen_beds(store_of_each_kind: Store) -> None:
    """A worker that takes beds over reads their trail alone."""
    store = store_of_each_kind
    here = stored("a1", AlarmState.ACTIVE)
    there = dataclasses.replace(here.event, alarm_id="b1", bed=BedKey("karamay", "bed-08"))
    elsewhere = dataclasses.replace(here.event, alarm_id="c1", bed=BedKey("hotan", "bed-07"))
    others = [StoredEvent(event_id(e), e, T0_US + 3) for e in (there, elsewhere)]
    await store.write_alarms([here, *others], [])
    assert await store.alarm_events(T0_US, T0_US + 1, beds={BED}) == [here]
    two = await store.alarm_events(T0_US, T0_US + 1, beds=[BED, elsewhere.bed])
    assert sorted(s.event.alarm_id for s in two) == ["a1", "c1"]
    assert await store.alarm_events(T0_US, T0_US + 1, beds=[]) == []
    assert len(await store.alarm_events(T0_US, T0_US + 1)) == 3


async def test_receipts_copied_again_merge_whatever_the_order(store_of_each_kind: Store) -> None:
    store = store_of_each_kind
    early = receipt("k1", sent_us=T0_US + 10, attempts=1, last_error="HTTP 503")
    late = receipt(
        "k1",
        sent_us=T0_US + 10,
        delivered_us=T0_US + 20,
        acknowledged_us=T0_US + 30,
        acknowledged_by="nurse-li",
        attempts=2,
        last_error="",
    )
    other = receipt("k2", cancelled_us=T0_US + 40)
    await store.write_alarms([], [late, other])
    # An older copy of the same receipt (another process's, or one that was in flight) takes
    # nothing away: the times stay set, the attempts and their last error stay the latest.
    await store.write_alarms([], [early])
    assert await store.alarm_deliveries("a1") == [late, other]
    failed = dataclasses.replace(late, attempts=3, last_error="HTTP 410", failed_us=T0_US + 50)
    await store.write_alarms([], [failed])
    assert await store.alarm_deliveries("a1") == [failed, other]
    assert await store.alarm_deliveries("nothing") == []


async def test_a_store_not_yet_open_refuses_alarm_rows(db_url: str, tmp_path: Path) -> None:
    for s in (PgStore(db_url), open_store(f"sqlite:///{tmp_path / 'x.sqlite'}")):
        with pytest.raises(StorageUnavailable):
            await s.write_alarms([stored("a1", AlarmState.ACTIVE)], [])
        await s.close()


async def test_several_processes_copying_the_same_events_store_each_once(db_url: str) -> None:
    """Each store has its own pool, as each worker process does; every one copies the same
    events and receipts at once, each in its own order."""
    trail = [stored(f"a{i % 40}", AlarmState.ACTIVE, i) for i in range(400)]
    receipts = [receipt(f"k{i}", f"a{i % 40}", attempts=i % 3) for i in range(200)]
    stores = [PgStore(db_url, pool_max=2) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        for round_ in range(3):
            copies = []
            for n, s in enumerate(stores):
                events, notes = list(trail), list(receipts)
                random.Random(round_ * 10 + n).shuffle(events)
                random.Random(round_ * 10 + n).shuffle(notes)
                copies.append(s.write_alarms(events, notes))
            await asyncio.gather(*copies)  # a deadlock would raise here
        with psycopg.connect(db_url) as conn:
            counts = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM alarm_events"
            ).fetchone()
            n_deliveries = conn.execute("SELECT count(*) FROM alarm_deliveries").fetchone()
        assert counts == (400, 400)
        assert n_deliveries == (200,)
        got = await stores[0].alarm_events(T0_US, T0_US + 400)
        assert sorted(got, key=lambda s: s.event_id) == sorted(trail, key=lambda s: s.event_id)
    finally:
        for s in stores:
            await s.close()


# The alarm tables as the former runner of their own created them (its migration 1, recorded in
# alarm_schema_migrations): the layout a database of an earlier eicu has.
FORMER_ALARM_RUNNER = (
    """CREATE TABLE alarm_schema_migrations (
        version integer PRIMARY KEY, name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE alarm_events (
        event_id text PRIMARY KEY, alarm_id text NOT NULL, site text NOT NULL,
        bed text NOT NULL, kind text NOT NULL, priority text NOT NULL, category text NOT NULL,
        state text NOT NULL, time timestamptz NOT NULL, actor text NOT NULL,
        reason text NOT NULL, audio_paused_until timestamptz, recorded timestamptz NOT NULL)""",
    "CREATE INDEX alarm_events_alarm ON alarm_events (alarm_id, time)",
    """CREATE TABLE alarm_deliveries (
        key text PRIMARY KEY, alarm_id text NOT NULL, recipient text NOT NULL,
        channel text NOT NULL, address text NOT NULL, enqueued timestamptz NOT NULL,
        sent timestamptz, delivered timestamptz, acknowledged timestamptz,
        acknowledged_by text, attempts integer NOT NULL, last_error text NOT NULL,
        failed timestamptz, cancelled timestamptz)""",
    "CREATE INDEX alarm_deliveries_alarm ON alarm_deliveries (alarm_id)",
    "INSERT INTO alarm_schema_migrations (version, name) VALUES (1, 'alarm events and deliveries')",
)


def _former_database(url: str, store_version: int, old: StoredEvent, note: DeliveryRecord) -> None:
    """A database with the store's schema up to ``store_version`` (0: none) and the alarm
    tables of the former runner holding one event and one receipt."""
    ts = "TIMESTAMPTZ 'epoch' + %s::bigint * INTERVAL '1 microsecond'"
    with psycopg.connect(url) as conn:
        if store_version:
            conn.execute(
                """CREATE TABLE schema_migrations (version integer PRIMARY KEY,
                   name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        for m in schema.MIGRATIONS[:store_version]:
            for stmt in m.statements:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (m.version, m.name),
            )
        for stmt in FORMER_ALARM_RUNNER:
            conn.execute(stmt)
        e = old.event
        conn.execute(
            f"""INSERT INTO alarm_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, {ts}, %s, %s,
                {ts}, {ts})""",
            (old.event_id, e.alarm_id, e.bed.site, e.bed.bed, e.kind, e.priority.value,
             e.category.value, e.state.value, e.time_us, e.actor, e.reason,
             e.audio_paused_until_us, old.recorded_us),
        )  # fmt: skip
        conn.execute(
            f"""INSERT INTO alarm_deliveries VALUES (%s, %s, %s, %s, %s, {ts}, {ts}, {ts}, {ts},
                %s, %s, %s, {ts}, {ts})""",
            (note.key, note.alarm_id, note.recipient, note.channel, note.address,
             note.enqueued_us, note.sent_us, note.delivered_us, note.acknowledged_us,
             note.acknowledged_by, note.attempts, note.last_error, note.failed_us,
             note.cancelled_us),
        )  # fmt: skip


@pytest.mark.parametrize("store_version", [3, 0], ids=["with-store-schema", "alarm-tables-only"])
async def test_a_database_of_the_former_alarm_runner_upgrades_in_place(
    db_url: str, store_version: int
) -> None:
    old = stored("a1", AlarmState.ACTIVE)
    note = receipt("k1", sent_us=T0_US + 10, attempts=1, last_error="HTTP 503")
    _former_database(db_url, store_version, old, note)

    store = PgStore(db_url)
    await store.open()
    try:
        with psycopg.connect(db_url) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
            runner = conn.execute("SELECT to_regclass('alarm_schema_migrations')").fetchone()
            indexes = {
                r[0]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'alarm_events'"
                )
            }
        assert sorted(versions) == [m.version for m in schema.MIGRATIONS]
        assert runner == (None,)  # one migration runner: the former one's record is gone
        assert {"alarm_events_alarm", "alarm_events_time"} <= indexes
        # The rows from before are there, exactly, and a copy of them again adds nothing.
        assert await store.alarm_events(T0_US, T0_US + 10) == [old]
        assert await store.alarm_deliveries("a1") == [note]
        later = stored("a1", AlarmState.CLEARED, 5, reason="condition ended")
        delivered = dataclasses.replace(note, delivered_us=T0_US + 20, attempts=2, last_error="")
        await store.write_alarms([old, later], [delivered])
        assert await store.alarm_events(T0_US, T0_US + 10) == [old, later]
        assert await store.alarm_deliveries("a1") == [delivered]
    finally:
        await store.close()
    # The next start finds nothing to do.
    again = PgStore(db_url)
    await again.open()
    try:
        assert await again.migrate() == []
    finally:
        await again.close()
