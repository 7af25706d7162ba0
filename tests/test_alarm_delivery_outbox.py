"""The durable outbox: idempotent events and notifications, receipts, a reopen after a crash, and
copies to a real PostgreSQL that goes down while alarms fire and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.outbox import Outbox, run_copy
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Notification, Priority
from eicu.clock import ManualClock
from eicu.devservices import Postgres
from eicu.errors import StorageUnavailable
from eicu.models import BedKey
from eicu.store.pg import PgStore
from eicu.store.sqlite import SqliteStore

T0_US = 1_780_000_000_000_000
BED = BedKey("karamay", "bed-07")


def event(alarm_id: str, state: AlarmState, dt_s: float = 0.0, actor: str = "engine") -> AlarmEvent:
    return AlarmEvent(
        alarm_id=alarm_id,
        bed=BED,
        kind="SPO2_LOW",
        priority=Priority.HIGH,
        category=Category.PHYSIOLOGICAL,
        state=state,
        time_us=T0_US + int(dt_s * 1e6),
        actor=actor,
    )


def note(key: str, alarm_id: str = "a1") -> Notification:
    return Notification(
        key=key,
        alarm_id=alarm_id,
        recipient="nurse-3",
        channel="webhook",
        address="http://127.0.0.1:9/hook",
        body={"kind": "SPO2_LOW", "site": "karamay", "bed": "bed-07"},
        created_us=T0_US,
    )


def test_events_and_notifications_are_stored_once(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        assert box.record(event("a1", AlarmState.ACTIVE))
        assert not box.record(event("a1", AlarmState.ACTIVE))  # the same change again
        assert box.record(event("a1", AlarmState.ACKNOWLEDGED, 30, actor="dr.chen"))
        trail = box.events("a1")
        assert [(s.event.state, s.event.actor) for s in trail] == [
            (AlarmState.ACTIVE, "engine"),
            (AlarmState.ACKNOWLEDGED, "dr.chen"),
        ]
        assert trail[1].event == event("a1", AlarmState.ACKNOWLEDGED, 30, actor="dr.chen")

        # Many at once, in one transaction: those recorded before are not stored again.
        more = [event("a1", AlarmState.CLEARED, 40), event("a1", AlarmState.ACTIVE)]
        more.append(event("a2", AlarmState.ACTIVE, 41))
        assert box.record_many(more) == 2
        assert box.record_many([]) == 0
        assert [s.event for s in box.events()][2:] == [more[0], more[2]]
        assert [s.event for s in box.latest_events(2)] == [more[0], more[2]]

        assert box.enqueue(note("k1"))
        assert not box.enqueue(note("k1"))
        assert [n.key for n in box.pending()] == ["k1"]
        assert box.notification("k1") == note("k1")


def test_receipts_and_a_delivered_key_is_never_handed_out_again(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        box.enqueue(note("k1"))
        assert box.begin_attempt("k1", T0_US + 1)
        box.mark_failed("k1", "HTTP 503", at_us=T0_US + 2, retry_at_us=T0_US + 1_000_000)
        assert box.pending(now_us=T0_US + 10) == []  # not due yet
        assert [n.key for n in box.pending(now_us=T0_US + 1_000_000)] == ["k1"]
        assert box.begin_attempt("k1", T0_US + 1_000_001)
        assert box.mark_delivered("k1", T0_US + 1_000_002)
        assert not box.mark_delivered("k1", T0_US + 1_000_003)
        assert not box.begin_attempt("k1", T0_US + 2_000_000)
        assert box.pending() == []
        assert box.mark_acknowledged("k1", "nurse-3", T0_US + 5_000_000)
        assert not box.mark_acknowledged("k1", "someone-else", T0_US + 6_000_000)
        r = box.receipt("k1")
        assert r is not None
        assert (r.sent_us, r.delivered_us, r.acknowledged_us) == (
            T0_US + 1,
            T0_US + 1_000_002,
            T0_US + 5_000_000,
        )
        assert (r.attempts, r.acknowledged_by, r.last_error) == (2, "nurse-3", "")


def test_refused_and_cancelled_notifications_leave_the_queue(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as box:
        box.enqueue(note("k1", "a1"))
        box.enqueue(note("k2", "a2"))
        box.enqueue(note("k3", "a2"))
        box.begin_attempt("k1", T0_US)
        box.mark_failed("k1", "HTTP 404", at_us=T0_US, retry_at_us=None)
        assert box.mark_delivered("k2", T0_US)
        assert box.cancel("a2", T0_US + 1) == 1  # k3 only: k2 was delivered
        assert box.pending() == []
        states = {r.key: (r.failed_us, r.cancelled_us, r.open) for r in box.receipts()}
        assert states == {
            "k1": (T0_US, None, False),
            "k2": (None, None, False),
            "k3": (None, T0_US + 1, False),
        }


def test_pending_deliveries_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.record(event("a1", AlarmState.ACTIVE))
    for i in range(5):
        box.enqueue(note(f"k{i}"))
    box.begin_attempt("k0", T0_US)
    box.mark_delivered("k0", T0_US)
    box.save_escalation("a1", 1, T0_US)
    box.close()  # the engine stops here without delivering the rest

    with Outbox(path) as again:
        assert [n.key for n in again.pending()] == ["k1", "k2", "k3", "k4"]
        assert [s.event.state for s in again.events()] == [AlarmState.ACTIVE]
        assert [(e.alarm_id, e.step) for e in again.open_escalations()] == [("a1", 1)]
        again.stop_escalation("a1", T0_US + 1)
        again.save_escalation("a1", 2, T0_US + 2)  # a stopped escalation stays stopped
        assert again.open_escalations() == []
        assert again.escalation_stopped("a1")


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.db
async def test_everything_is_copied_when_the_database_is_back(
    tmp_path: Path, pg_server: Postgres, db_url: str
) -> None:
    store = PgStore(db_url, connect_timeout_s=2)
    await store.open()
    try:
        assert await store.migrate() == []  # the alarm tables came with the store's schema
        with Outbox(tmp_path / "outbox.db") as box:
            box.record(event("a1", AlarmState.ACTIVE))
            box.enqueue(note("k1", "a1"))
            assert await box.copy_to_store(store) == (1, 1)
            assert await box.copy_to_store(store) == (0, 0)

            pg_server.stop()
            try:
                # Alarms keep firing and being delivered while the central database is down.
                box.record(event("a2", AlarmState.ACTIVE, 1))
                box.enqueue(note("k2", "a2"))
                box.begin_attempt("k1", T0_US + 10)
                box.mark_delivered("k1", T0_US + 20)
                box.record(event("a1", AlarmState.ACKNOWLEDGED, 2, actor="dr.chen"))
                box.mark_acknowledged("k1", "dr.chen", T0_US + 2_000_000)
                with pytest.raises(StorageUnavailable):
                    await box.copy_to_store(store)
                events, deliveries = box.uncopied()
                assert len(events) == 2
                assert {d.key for d in deliveries} == {"k1", "k2"}
            finally:
                pg_server.start()

            assert await box.copy_to_store(store) == (2, 2)
            assert await box.copy_to_store(store) == (0, 0)
            # What the store reads back is what the outbox holds.
            assert await store.alarm_events(T0_US, T0_US + 10_000_000) == box.events()
            assert await store.alarm_deliveries("a1") == box.receipts("a1")
    finally:
        await store.close()

    events = _rows(db_url, "SELECT alarm_id, state, actor FROM alarm_events ORDER BY time")
    assert events == [
        ("a1", "active", "engine"),
        ("a2", "active", "engine"),
        ("a1", "acknowledged", "dr.chen"),
    ]
    deliveries = _rows(
        db_url,
        "SELECT key, attempts, delivered IS NOT NULL, acknowledged_by FROM alarm_deliveries "
        "ORDER BY key",
    )
    assert deliveries == [("k1", 1, True, "dr.chen"), ("k2", 0, False, None)]


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["enqueue", "attempt", "deliver", "fail", "refuse", "cancel", "reopen"]),
        st.integers(0, 4),  # which key (k0..k4); the alarm is a{key % 2}
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=_OPS)
def test_outbox_matches_a_simple_model_of_the_rules(ops: list[tuple[str, int]]) -> None:
    """Whatever happens in whatever order, across reopens: a key is stored once, an attempt is
    only granted while the key is open, and pending is exactly the open keys."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outbox.db"
        box = Outbox(path)
        stored: dict[str, str] = {}  # key -> open, delivered, failed, cancelled
        attempts: dict[str, int] = {}
        try:
            for op, i in ops:
                key, alarm_id = f"k{i}", f"a{i % 2}"
                if op == "enqueue":
                    assert box.enqueue(note(key, alarm_id)) == (key not in stored)
                    stored.setdefault(key, "open")
                elif op == "attempt":
                    granted = box.begin_attempt(key, T0_US)
                    assert granted == (stored.get(key) == "open")
                    attempts[key] = attempts.get(key, 0) + granted
                elif op == "deliver":
                    assert box.mark_delivered(key, T0_US) == (
                        stored.get(key) in ("open", "failed", "cancelled")
                    )
                    if key in stored:
                        stored[key] = "delivered"
                elif op in ("fail", "refuse"):
                    retry_at = T0_US if op == "fail" else None
                    box.mark_failed(key, "x", at_us=T0_US, retry_at_us=retry_at)
                    if op == "refuse" and stored.get(key) == "open":
                        stored[key] = "failed"
                elif op == "cancel":
                    n = sum(1 for k, s in stored.items() if s == "open" and int(k[1:]) % 2 == i % 2)
                    assert box.cancel(alarm_id, T0_US) == n
                    for k, s in stored.items():
                        if s == "open" and int(k[1:]) % 2 == i % 2:
                            stored[k] = "cancelled"
                else:
                    box.close()
                    box = Outbox(path)
            assert sorted(n.key for n in box.pending()) == sorted(
                k for k, s in stored.items() if s == "open"
            )
            for r in box.receipts():
                assert r.attempts == attempts.get(r.key, 0)
                assert (r.delivered_us is not None) == (stored[r.key] == "delivered")
        finally:
            box.close()


async def test_the_copier_waits_on_its_clock_backing_off_while_the_store_is_away(
    tmp_path: Path,
) -> None:
    clock = ManualClock(start_us=T0_US)
    store = SqliteStore(tmp_path / "store.sqlite")  # not open yet: it refuses every write
    with Outbox(tmp_path / "outbox.db", clock=clock) as box:
        box.record(event("a1", AlarmState.ACTIVE))
        box.enqueue(note("k1", "a1"))
        copier = asyncio.create_task(
            run_copy(box, store, interval_s=5.0, retry_min_s=1.0, retry_max_s=4.0, clock=clock)
        )
        try:
            for _ in range(4):
                await clock.until_waiting()
                clock.advance(clock.sleeps[-1])
            await clock.until_waiting()
            # Each refusal doubles the wait (jittered down by up to half) up to the limit.
            for delay_s, nominal_s in zip(clock.sleeps, (1.0, 2.0, 4.0, 4.0, 4.0), strict=True):
                assert nominal_s / 2 <= delay_s <= nominal_s
            assert box.uncopied() != ([], [])

            await store.open()
            clock.advance(clock.sleeps[-1])
            await clock.until_waiting()
            assert len(clock.sleeps) == 5  # copied: no more backoff (it waits the interval)
            assert box.uncopied() == ([], [])
            assert await store.alarm_events(T0_US, T0_US + 1) == box.events()
            assert await store.alarm_deliveries("a1") == box.receipts("a1")

            # A receipt that changes waits for the interval...
            box.mark_delivered("k1", T0_US + 2)
            clock.advance(4.9)
            await asyncio.sleep(0)
            assert len(box.uncopied()[1]) == 1
            clock.advance(0.1)
            await clock.until_waiting()
            assert box.uncopied() == ([], [])
            # ... an event recorded is copied at once, on no clock.
            box.record(event("a1", AlarmState.CLEARED, 1))
            async with asyncio.timeout(10):
                while box.uncopied() != ([], []):
                    await asyncio.sleep(0.01)
            assert await store.alarm_events(T0_US, T0_US + 10**9) == box.events()
        finally:
            copier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await copier
            await store.close()
