"""The order of alarms, from its definition: within a priority, asystole, ventricular
fibrillation, ventricular tachycardia and the extreme rates come before every other physiological
condition, and those before the technical ones; the policy holds the order as data."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from alerting.channels import Receipt
from alerting.escalation import Dispatcher, Rota
from alerting.outbox import Outbox
from eicu.alarm_model import (
    AlarmCondition,
    AlarmEvent,
    AlarmState,
    Category,
    Notification,
    Priority,
)
from eicu.alarms.policy import DEFAULT_PATH, AlarmPolicy, load_policy, parse_policy
from eicu.alarms.ranking import events_most_urgent_first, headlines, most_urgent_first
from eicu.alarms.rules import RHYTHM_CHAINS
from eicu.alarms.state import Alarm, AlarmStateMachine
from eicu.clock import ManualClock
from eicu.errors import AlarmPolicyError
from eicu.models import BedKey

BED = BedKey("icu", "bed-1")
OTHER = BedKey("icu", "bed-2")
V1 = DEFAULT_PATH.with_name("default-v1.json")
LETHAL = ("ASYSTOLE", "VFIB", "VTACH")
EXTREME = {"BRADY", "TACHY"}


@pytest.fixture(scope="module")
def policy() -> AlarmPolicy:
    return load_policy()


def raw_policy() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    return data


def _holds_the_definition(p: AlarmPolicy) -> None:
    order = list(p.severity)
    assert sorted(order) == sorted(p.conditions)  # every condition, once
    assert order[:3] == list(LETHAL)
    assert set(order[3:5]) == EXTREME
    physiological = [k for k in order if p.conditions[k].category is Category.PHYSIOLOGICAL]
    assert order[: len(physiological)] == physiological  # then the technical ones
    for chain in RHYTHM_CHAINS:  # the rules' supersession chains agree with the ranking
        ranks = [p.severity_rank(k) for k in chain]
        assert ranks == sorted(ranks), chain


def test_default_policy_ranks_lethal_rhythms_first(policy: AlarmPolicy) -> None:
    _holds_the_definition(policy)
    assert policy.severity_rank("ASYSTOLE") == 0
    assert policy.severity_rank("NO_SUCH_KIND") == len(policy.conditions)


def test_a_policy_without_severity_gets_the_default_order() -> None:
    old = load_policy(V1)
    assert "severity" not in json.loads(V1.read_text(encoding="utf-8"))
    _holds_the_definition(old)
    raw = raw_policy()
    del raw["severity"]
    _holds_the_definition(parse_policy(raw))


def test_severity_round_trips_and_a_partial_list_is_completed(policy: AlarmPolicy) -> None:
    assert parse_policy(policy.to_dict()) == policy
    raw = raw_policy()
    # a technical kind listed first still ranks after every physiological one
    raw["severity"] = ["LEAD_OFF", "VTACH", "ASYSTOLE"]
    p = parse_policy(raw)
    assert p.severity[:2] == ("VTACH", "ASYSTOLE")
    assert p.severity[2] == "VFIB"  # the unlisted ones follow in the default order
    technical = [k for k in p.severity if p.conditions[k].category is Category.TECHNICAL]
    assert technical[0] == "LEAD_OFF"
    assert sorted(p.severity) == sorted(p.conditions)


@pytest.mark.parametrize(
    ("severity", "path", "text"),
    [
        ("VTACH", "severity", "must be a list"),
        (["VTACH", 3], "severity", "must be a list"),
        (["VTACH", "STEMI"], "severity[1]", "'STEMI' is not a condition"),
        (["VTACH", "VFIB", "VTACH"], "severity[2]", "listed twice"),
    ],
)
def test_a_bad_severity_list_is_refused_naming_the_entry(
    severity: object, path: str, text: str
) -> None:
    raw = raw_policy()
    raw["severity"] = severity
    with pytest.raises(AlarmPolicyError) as err:
        parse_policy(copy.deepcopy(raw))
    assert err.value.path == path and text in err.value.detail


def alarm(
    kind: str,
    priority: Priority = Priority.HIGH,
    state: AlarmState = AlarmState.LATCHED,
    started_us: int = 1_000,
    *,
    bed: BedKey = BED,
    category: Category = Category.PHYSIOLOGICAL,
) -> Alarm:
    return Alarm(
        alarm_id=f"{bed}/{kind}/{started_us}", bed=bed, kind=kind, category=category,
        priority=priority, state=state, started_us=started_us,
        condition_present=state is not AlarmState.LATCHED, value=None, detail="",
        acknowledged_by=None, acknowledged_us=None, audio_paused_until_us=None,
    )  # fmt: skip


def kinds(alarms: Iterable[Alarm], policy: AlarmPolicy) -> list[str]:
    return [a.kind for a in most_urgent_first(alarms, lambda _bed: policy)]


def test_the_lethal_rhythm_heads_a_bed_whatever_started_last(policy: AlarmPolicy) -> None:
    # an asystole bed: the escalated low heart rate is newer than the asystole
    asystole_bed = [
        alarm("ASYSTOLE", started_us=1_000),
        alarm("HR_LOW", started_us=9_000),
        alarm("SPO2_LOW", Priority.MEDIUM, AlarmState.ACTIVE, 9_500),
    ]
    assert kinds(asystole_bed, policy) == ["ASYSTOLE", "HR_LOW", "SPO2_LOW"]
    # a VT bed: HR_HIGH escalated to high while VTACH is latched underneath
    vt_bed = [
        alarm("TACHY", started_us=500),
        alarm("HR_HIGH", state=AlarmState.ACTIVE, started_us=12_000),
        alarm("VTACH", started_us=2_000),
        alarm("NEWS2_HIGH", state=AlarmState.ACTIVE, started_us=13_000),
    ]
    assert kinds(vt_bed, policy) == ["VTACH", "TACHY", "HR_HIGH", "NEWS2_HIGH"]
    vf = [
        alarm("VTACH", started_us=5),
        alarm("VFIB", started_us=1),
        alarm("ASYSTOLE", started_us=0),
    ]
    assert kinds(vf, policy) == ["ASYSTOLE", "VFIB", "VTACH"]


def test_priority_and_acknowledgement_come_before_severity(policy: AlarmPolicy) -> None:
    # a medium AF does not outrank a high NEWS2; an acknowledged VT does not outrank an
    # unacknowledged high SpO2 (someone is on the VT); technical after physiological
    alarms = [
        alarm("AFIB", Priority.MEDIUM, AlarmState.ACTIVE),
        alarm("VTACH", state=AlarmState.ACKNOWLEDGED),
        alarm("SPO2_LOW", state=AlarmState.ACTIVE),
        alarm("LEAD_OFF", Priority.MEDIUM, AlarmState.ACTIVE, 9_999, category=Category.TECHNICAL),
        alarm("DETERIORATION", Priority.LOW, AlarmState.ACTIVE),
    ]
    assert kinds(alarms, policy) == ["SPO2_LOW", "VTACH", "AFIB", "LEAD_OFF", "DETERIORATION"]


def test_across_beds_the_same_condition_ranks_present_then_newest(policy: AlarmPolicy) -> None:
    a = alarm("VTACH", state=AlarmState.LATCHED, started_us=9, bed=OTHER)
    b = alarm("VTACH", state=AlarmState.ACTIVE, started_us=1)
    c = alarm("VTACH", state=AlarmState.ACTIVE, started_us=5, bed=OTHER)
    assert most_urgent_first([a, b, c], lambda _bed: policy) == [c, b, a]


def test_headlines_take_each_bed_most_urgent_live_alarm(policy: AlarmPolicy) -> None:
    alarms = [
        alarm("HR_LOW", started_us=9_000),
        alarm("ASYSTOLE", state=AlarmState.CLEARED, started_us=1),  # over: never a headline
        alarm("PAUSE", Priority.MEDIUM, AlarmState.ACTIVE, bed=OTHER),
        alarm("VFIB", bed=OTHER, started_us=3),
    ]
    top = headlines(alarms, lambda _bed: policy)
    assert [(str(bed), a.kind) for bed, a in top.items()] == [
        (str(OTHER), "VFIB"),
        (str(BED), "HR_LOW"),
    ]


def test_a_bed_policy_with_its_own_order_is_followed(policy: AlarmPolicy) -> None:
    raw = raw_policy()
    raw["severity"] = ["VTACH", "ASYSTOLE"]
    own = parse_policy(raw)
    alarms = [alarm("ASYSTOLE"), alarm("VTACH"), alarm("ASYSTOLE", bed=OTHER)]
    ranked = most_urgent_first(alarms, lambda bed: own if bed == BED else policy)
    assert [(a.bed, a.kind) for a in ranked][:2] == [(BED, "VTACH"), (OTHER, "ASYSTOLE")]


def condition(kind: str, priority: Priority, t_us: int, *, present: bool = True) -> AlarmCondition:
    return AlarmCondition(BED, kind, Category.PHYSIOLOGICAL, priority, t_us, present=present)


class Recorder:
    """A delivery channel that keeps what it is given, in order."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> Receipt:
        self.sent.append(notification)
        return Receipt(notification.key, "webhook", 0)

    async def close(self) -> None:
        return None


async def test_the_first_page_is_the_most_severe_condition(
    tmp_path: Path, policy: AlarmPolicy
) -> None:
    """Asystole and the escalated low heart rate start in one pass: the nurse's first page is
    the asystole, whatever order the rules reported them in."""
    machine = AlarmStateMachine(policy)
    t0 = 1_000_000_000
    machine.observe([condition("HR_LOW", Priority.HIGH, t0)], t0)
    t1 = t0 + 10_000_000
    events = machine.observe(
        [condition("HR_LOW", Priority.HIGH, t1), condition("ASYSTOLE", Priority.HIGH, t1)], t1
    )
    assert [e.kind for e in events] == ["HR_LOW", "ASYSTOLE"]  # in the rules' order
    rota = Rota.from_dict(
        {
            "sites": {
                "icu": {
                    "levels": [
                        {
                            "role": "bedside_nurse",
                            "ack_timeout_s": {"high": 30, "medium": 120, "low": 600},
                            "contacts": [
                                {"name": "nurse", "channel": "webhook", "address": "http://x"}
                            ],
                        }
                    ]
                }
            }
        }
    )
    recorder = Recorder()
    outbox = Outbox(tmp_path / "alarms.db")
    dispatcher = Dispatcher(rota, outbox, {"webhook": recorder}, clock=ManualClock(t1))
    try:
        for event in events_most_urgent_first(events, machine.policy_for):
            await dispatcher.handle(event)
        await dispatcher.drain()
    finally:
        await dispatcher.close()
        outbox.close()
    assert [n.body["kind"] for n in recorder.sent] == ["ASYSTOLE", "HR_LOW"]


def _event(kind: str, priority: Priority, state: AlarmState) -> AlarmEvent:
    return AlarmEvent(f"{BED}/{kind}/1", BED, kind, priority, Category.PHYSIOLOGICAL, state, 1)


def test_an_alarm_escalated_in_the_pass_ranks_at_its_new_priority(policy: AlarmPolicy) -> None:
    events = [
        _event("AFIB", Priority.MEDIUM, AlarmState.ACTIVE),
        _event("SPO2_LOW", Priority.MEDIUM, AlarmState.ACTIVE),
        _event("SPO2_LOW", Priority.HIGH, AlarmState.ACTIVE),
        _event("VTACH", Priority.HIGH, AlarmState.CLEARED),
    ]
    ordered = events_most_urgent_first(events, lambda _bed: policy)
    assert [(e.kind, e.priority) for e in ordered] == [
        ("SPO2_LOW", Priority.MEDIUM),
        ("SPO2_LOW", Priority.HIGH),
        ("VTACH", Priority.HIGH),  # high, but over: after the live high one
        ("AFIB", Priority.MEDIUM),
    ]
