"""Escalation through the rota against a real HTTP receiver, on a clock the test moves: the order
of the levels, moving on when nothing is delivered, stopping at acknowledgement or clearing,
retries after a failure, and a crash with deliveries pending."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from alerting.channels import DeliveryChannel, WebhookChannel
from alerting.escalation import Dispatcher, Rota
from alerting.outbox import Outbox
from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.clock import ManualClock
from eicu.devservices import free_port
from eicu.errors import ConfigError
from eicu.models import BedKey
from tests.alarm_servers import HookServer

T0_S = 1_780_000_000.0
BED = BedKey("karamay", "bed-07")


class Clock(ManualClock):
    """A test clock set to ``dt_s`` after T0_S."""

    def __init__(self) -> None:
        super().__init__(round(T0_S * 1e6))

    def at(self, dt_s: float) -> None:
        self.set_us(round((T0_S + dt_s) * 1e6))


def rota_doc(hook: HookServer, *, nurse_url: str | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "delivery_timeout_s": 5,
        "retry_min_s": 2,
        "retry_max_s": 8,
        "sites": {
            "karamay": {
                "levels": [
                    {
                        "role": "bedside_nurse",
                        "ack_timeout_s": {"high": 30, "medium": 120, "low": 600},
                        "contacts": [
                            {
                                "name": "nurse-li",
                                "channel": "webhook",
                                "address": nurse_url or hook.url("/nurse"),
                            }
                        ],
                    },
                    {
                        "role": "on_call_physician",
                        "ack_timeout_s": {"high": 60, "medium": 300, "low": 900},
                        "contacts": [
                            {"name": "dr-chen", "channel": "webhook", "address": hook.url("/phys")}
                        ],
                    },
                    {
                        "role": "command_center_intensivist",
                        "ack_timeout_s": {"high": 90, "medium": 600, "low": 1800},
                        "contacts": [
                            {"name": "dr-wang", "channel": "webhook", "address": hook.url("/icu")}
                        ],
                    },
                ]
            }
        },
    }


def alarm(state: AlarmState, alarm_id: str = "a1", actor: str = "engine") -> AlarmEvent:
    return AlarmEvent(
        alarm_id=alarm_id,
        bed=BED,
        kind="VTACH",
        priority=Priority.HIGH,
        category=Category.PHYSIOLOGICAL,
        state=state,
        time_us=int(T0_S * 1e6),
        actor=actor,
    )


@pytest.fixture
async def webhook() -> AsyncIterator[DeliveryChannel]:
    channel = WebhookChannel(timeout_s=2, max_attempts=1)
    yield channel
    await channel.close()


def _metric(d: Dispatcher, name: str, **labels: str) -> float:
    value = d.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _at(dispatcher: Dispatcher, clock: Clock, dt_s: float) -> None:
    clock.at(dt_s)
    await dispatcher.tick()
    await dispatcher.drain()


async def test_escalation_order_and_stop_at_acknowledgement(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    clock = Clock()
    with Outbox(tmp_path / "outbox.db") as box:
        d = Dispatcher(Rota.from_dict(rota_doc(hook)), box, {"webhook": webhook}, clock=clock)
        await d.handle(alarm(AlarmState.ACTIVE))
        await d.drain()
        assert hook.accepted_paths() == ["/nurse"]
        assert d.next_due_s() == T0_S + 5  # the delivery check
        await _at(d, clock, 29.9)  # delivered, not yet acknowledged: wait
        assert hook.accepted_paths() == ["/nurse"]
        assert d.next_due_s() == T0_S + 30  # the acknowledgement timeout
        await _at(d, clock, 30)
        assert hook.accepted_paths() == ["/nurse", "/phys"]
        await _at(d, clock, 89)
        assert hook.accepted_paths() == ["/nurse", "/phys"]
        await _at(d, clock, 90)
        await _at(d, clock, 179)
        assert hook.accepted_paths() == ["/nurse", "/phys", "/icu"]
        await _at(d, clock, 180)  # past the last level: the intensivist again
        assert hook.accepted_paths() == ["/nurse", "/phys", "/icu", "/icu"]
        assert d.escalating == {"a1": 3}
        assert _metric(d, "eicu_alarm_escalations_total", why="no_ack") == 3

        last_key = hook.requests[-1].key
        assert await d.acknowledge(last_key, "dr-wang") == "a1"
        for t in (300, 1000, 5000):
            await _at(d, clock, t)
        assert len(hook.requests) == 4
        assert d.escalating == {}
        assert set(hook.accepted.values()) == {1}  # four pages, four keys, each once

        r = box.receipt(last_key)
        assert r is not None
        assert (r.acknowledged_by, r.acknowledged_us) == ("dr-wang", int((T0_S + 180) * 1e6))
        assert r.delivered_us == int((T0_S + 180) * 1e6)
        assert [(x.recipient, x.attempts) for x in box.receipts("a1")] == [
            ("nurse-li", 1),
            ("dr-chen", 1),
            ("dr-wang", 1),
            ("dr-wang", 1),
        ]
        # The state machine's acknowledgement arrives afterwards: recorded, nothing sent.
        await d.handle(alarm(AlarmState.ACKNOWLEDGED, actor="dr-wang"))
        assert [s.event.state for s in box.events("a1")] == [
            AlarmState.ACTIVE,
            AlarmState.ACKNOWLEDGED,
        ]
    assert len(hook.requests) == 4


async def test_moves_on_sooner_when_nothing_is_delivered(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    clock = Clock()
    dead = f"http://127.0.0.1:{free_port()}/nurse"  # the nurse's pager gateway is down
    with Outbox(tmp_path / "outbox.db") as box:
        rota = Rota.from_dict(rota_doc(hook, nurse_url=dead))
        d = Dispatcher(rota, box, {"webhook": webhook}, clock=clock)
        await d.handle(alarm(AlarmState.ACTIVE))
        await d.drain()
        await _at(d, clock, 4.9)
        assert hook.accepted_paths() == []
        await _at(d, clock, 5)  # delivery timeout, long before the 30 s acknowledgement timeout
        assert hook.accepted_paths() == ["/phys"]
        # The physician's page was delivered: now the acknowledgement timeout applies.
        await _at(d, clock, 64.9)
        assert hook.accepted_paths() == ["/phys"]
        await _at(d, clock, 65)
        assert hook.accepted_paths() == ["/phys", "/icu"]
        assert _metric(d, "eicu_alarm_escalations_total", why="not_delivered") == 1
        assert _metric(d, "eicu_alarm_escalations_total", why="no_ack") == 1
        nurse = box.receipts("a1")[0]
        assert nurse.recipient == "nurse-li" and nurse.open and nurse.attempts >= 2


async def test_a_refused_page_moves_on_at_once(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    clock = Clock()
    hook.plan = [404]
    with Outbox(tmp_path / "outbox.db") as box:
        d = Dispatcher(Rota.from_dict(rota_doc(hook)), box, {"webhook": webhook}, clock=clock)
        await d.handle(alarm(AlarmState.ACTIVE))
        await d.drain()
        await _at(d, clock, 0.1)
        assert [(r.path, r.status) for r in hook.requests] == [("/nurse", 404), ("/phys", 200)]


async def test_clearing_stops_escalation_and_cancels_pages(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    clock = Clock()
    hook.plan = [503]
    with Outbox(tmp_path / "outbox.db") as box:
        d = Dispatcher(Rota.from_dict(rota_doc(hook)), box, {"webhook": webhook}, clock=clock)
        await d.handle(alarm(AlarmState.ACTIVE))
        await d.drain()
        await d.handle(alarm(AlarmState.CLEARED))
        for t in (3, 10, 100, 1000):
            await _at(d, clock, t)
        assert [r.status for r in hook.requests] == [503]
        [nurse] = box.receipts("a1")
        assert nurse.cancelled_us is not None and nurse.delivered_us is None
        # A late event of the cleared alarm does not start it again.
        await d.handle(alarm(AlarmState.LATCHED))
        await _at(d, clock, 2000)
        assert len(hook.requests) == 1


async def test_acknowledging_a_page_still_in_flight_counts_as_its_delivery(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    """The pager gateway has the page (the nurse acknowledged it) but has not answered the POST
    yet: the acknowledgement proves delivery, and stopping the escalation must not cancel it."""
    clock = Clock()
    hook.hold = asyncio.Event()
    with Outbox(tmp_path / "outbox.db") as box:
        d = Dispatcher(Rota.from_dict(rota_doc(hook)), box, {"webhook": webhook}, clock=clock)
        await d.handle(alarm(AlarmState.ACTIVE))
        for _ in range(200):
            if hook.requests:
                break
            await asyncio.sleep(0.01)
        [page] = hook.requests
        assert box.receipts("a1")[0].delivered_us is None  # the POST has not been answered
        clock.at(3)
        assert await d.acknowledge(page.key, "nurse-li") == "a1"
        hook.hold.set()
        await d.drain()
        [r] = box.receipts("a1")
        assert (r.acknowledged_by, r.cancelled_us) == ("nurse-li", None)
        assert r.delivered_us == int((T0_S + 3) * 1e6)
        assert not r.open
        for t in (30, 100):
            await _at(d, clock, t)
        assert len(hook.requests) == 1


async def test_a_failing_channel_recovers_and_nobody_is_paged_twice(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    clock = Clock()
    hook.plan = [500, 502]
    doc = rota_doc(hook)
    doc["delivery_timeout_s"] = 20  # retries only: no moving on to the next level here
    with Outbox(tmp_path / "outbox.db") as box:
        d = Dispatcher(Rota.from_dict(doc), box, {"webhook": webhook}, clock=clock)
        await d.handle(alarm(AlarmState.ACTIVE))
        await d.drain()
        await _at(d, clock, 0.5)  # the retry is not due yet (backoff of 1..2 s)
        assert len(hook.requests) == 1
        await _at(d, clock, 2)
        assert [r.status for r in hook.requests] == [500, 502]
        await _at(d, clock, 6)  # the second retry is due 2..4 s after the first
        assert [r.status for r in hook.requests] == [500, 502, 200]
        for t in (6.1, 10, 20):
            await _at(d, clock, t)
        assert len(hook.requests) == 3
        assert hook.accepted == {hook.requests[0].key: 1}
        r = box.receipts("a1")[0]
        assert (r.attempts, r.last_error) == (3, "")
        retries = _metric(d, "eicu_alarm_notifications_total", channel="webhook", outcome="retry")
        delivered = _metric(
            d, "eicu_alarm_notifications_total", channel="webhook", outcome="delivered"
        )
        assert (retries, delivered) == (2, 1)
        assert _metric(d, "eicu_alarm_delivery_latency_seconds_count") == 1
        assert _metric(d, "eicu_alarm_delivery_latency_seconds_sum") == pytest.approx(6.0)


async def test_crash_with_deliveries_pending_then_resume(tmp_path: Path, hook: HookServer) -> None:
    clock = Clock()
    path = tmp_path / "outbox.db"
    rota = Rota.from_dict(rota_doc(hook))
    channel = WebhookChannel(timeout_s=2, max_attempts=1)
    box = Outbox(path)
    d = Dispatcher(rota, box, {"webhook": channel}, clock=clock)
    await d.handle(alarm(AlarmState.ACTIVE, "a1"))  # delivered before the crash
    await d.drain()
    hook.plan = [503]
    await d.handle(alarm(AlarmState.ACTIVE, "a2"))  # failed, waiting for its retry
    await d.drain()
    await d.handle(alarm(AlarmState.ACTIVE, "a3"))  # enqueued; the crash comes before sending
    await d.close()
    await channel.close()
    box.close()
    assert [r.status for r in hook.requests] == [200, 503]

    channel = WebhookChannel(timeout_s=2, max_attempts=1)
    with Outbox(path) as box:
        d = Dispatcher(rota, box, {"webhook": channel}, clock=clock)
        await d.resume()
        await d.drain()
        assert d.escalating == {"a1": 0, "a2": 0, "a3": 0}
        await d.handle(alarm(AlarmState.ACTIVE, "a3"))  # the same event replayed: nothing new
        await d.drain()
        assert sorted(hook.accepted) == [
            "a1:0:bedside_nurse:nurse-li:webhook",
            "a2:0:bedside_nurse:nurse-li:webhook",
            "a3:0:bedside_nurse:nurse-li:webhook",
        ]
        assert set(hook.accepted.values()) == {1}
        assert box.pending() == []
        # Escalation resumed where it stood: 30 s after the first page, the physician.
        await _at(d, clock, 30)
        assert sorted(r.body["alarm_id"] for r in hook.requests if r.path == "/phys") == [
            "a1",
            "a2",
            "a3",
        ]
        await channel.close()
    # before the crash a1 and a2 (failed); after it a2 and a3 (a1 not again); then 3 physicians
    assert len(hook.requests) == 2 + 2 + 3


async def test_crash_between_recording_and_paging(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    clock = Clock()
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        box.record(alarm(AlarmState.ACTIVE, "a1"))  # the engine stops right after this
        box.record(alarm(AlarmState.ACTIVE, "a2"))
        box.record(alarm(AlarmState.CLEARED, "a2"))  # over before anyone was paged
    with Outbox(path) as box:
        d = Dispatcher(Rota.from_dict(rota_doc(hook)), box, {"webhook": webhook}, clock=clock)
        await d.resume()
        await d.drain()
        assert [(r.path, r.body["alarm_id"]) for r in hook.requests] == [("/nurse", "a1")]
        assert d.escalating == {"a1": 0}
        assert len(box.events("a1")) == 1
        assert box.unescalated_alarms() == []
    with Outbox(path) as box:  # and once more: nothing new
        d = Dispatcher(Rota.from_dict(rota_doc(hook)), box, {"webhook": webhook}, clock=clock)
        await d.resume()
        await d.drain()
        assert d.escalating == {"a1": 0}
    assert len(hook.requests) == 1


def test_rota_errors_name_the_entry() -> None:
    hook = HookServer(port=1)
    good = rota_doc(hook)
    assert [lvl.role for lvl in Rota.from_dict(good).sites["karamay"].levels] == [
        "bedside_nurse",
        "on_call_physician",
        "command_center_intensivist",
    ]
    cases = [
        (["sites", "karamay", "levels", 0, "role"], "janitor", "levels[0].role"),
        (["sites", "karamay", "levels", 1, "ack_timeout_s", "high"], 0, "ack_timeout_s.high"),
        (["sites", "karamay", "levels", 2, "contacts", 0, "channel"], "fax", "contacts[0].channel"),
        (["sites", "karamay", "levels", 2, "contacts", 0, "address"], "", "contacts[0].address"),
        (["delivery_timeout_s"], "soon", "delivery_timeout_s"),
    ]
    for where, value, named in cases:
        doc = copy.deepcopy(good)
        node: Any = doc
        for step in where[:-1]:
            node = node[step]
        node[where[-1]] = value
        with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
            Rota.from_dict(doc)
    doc = copy.deepcopy(good)
    levels = doc["sites"]["karamay"]["levels"]
    levels[0], levels[1] = levels[1], levels[0]
    with pytest.raises(ConfigError, match="order"):
        Rota.from_dict(doc)
    with pytest.raises(ConfigError, match="not JSON"):
        Rota.from_json("{")


async def test_an_escalation_moves_with_its_bed_to_another_worker(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    """The bed's partition moves: the old worker stops escalating without ending the alarm;
    the new one goes on at the step reached, timed from when that step began, and does not
    page again whom that step already reached."""
    clock = Clock()
    rota = Rota.from_dict(rota_doc(hook))
    with Outbox(tmp_path / "w1.db") as old_box, Outbox(tmp_path / "w2.db") as new_box:
        old = Dispatcher(rota, old_box, {"webhook": webhook}, clock=clock)
        raised = alarm(AlarmState.ACTIVE)
        await old.handle(raised)
        await _at(old, clock, 30)  # the nurse did not acknowledge: the physician is paged
        assert hook.accepted_paths() == ["/nurse", "/phys"]
        await _at(old, clock, 40)
        assert old.hand_over(BED) == ["a1"] and old.escalating == {}
        await _at(old, clock, 200)  # nothing more from the old worker, even past every timeout
        assert hook.accepted_paths() == ["/nurse", "/phys"]
        assert old_box.open_escalations() == []  # nor after a restart of it

        new = Dispatcher(rota, new_box, {"webhook": webhook}, clock=clock)
        clock.at(41)
        assert await new.take_over(raised, old_box.receipts("a1")) == 1
        await new.drain()
        assert hook.accepted_paths() == ["/nurse", "/phys"]  # the physician has it already
        await _at(new, clock, 89.9)  # step 1 began at 30 s: its 60 s run until 90 s
        assert hook.accepted_paths() == ["/nurse", "/phys"]
        await _at(new, clock, 90)
        assert hook.accepted_paths() == ["/nurse", "/phys", "/icu"]
        assert set(hook.accepted.values()) == {1}  # every page once, across both workers
        # Ended on the new worker: its escalation stops there.
        await new.handle(alarm(AlarmState.ACKNOWLEDGED, actor="dr-wang"))
        assert new.escalating == {}


async def test_an_alarm_taken_over_before_any_page_starts_at_the_first_step(
    tmp_path: Path, hook: HookServer, webhook: DeliveryChannel
) -> None:
    clock = Clock()
    with Outbox(tmp_path / "w2.db") as box:
        d = Dispatcher(Rota.from_dict(rota_doc(hook)), box, {"webhook": webhook}, clock=clock)
        assert await d.take_over(alarm(AlarmState.ACTIVE), []) == 0
        await d.drain()
        assert hook.accepted_paths() == ["/nurse"]
        # One acknowledged before the move is not escalated at all.
        assert await d.take_over(alarm(AlarmState.ACKNOWLEDGED, "a2", "dr-li"), []) == -1
        await d.drain()
        assert hook.accepted_paths() == ["/nurse"] and set(d.escalating) == {"a1"}
