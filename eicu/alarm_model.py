"""The alarm model shared by the rules, the state machine, escalation and delivery.

In the spirit of IEC 60601-1-8: an *alarm condition* is what the rules detect (a value beyond a
limit, an arrhythmia, a lead off); an *alarm* is the condition with a priority, a life cycle and
deliveries. Physiological alarms concern the patient; technical alarms concern the equipment or
the data path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from eicu.models import BedKey


class Priority(StrEnum):
    HIGH = "high"  # immediate response required
    MEDIUM = "medium"  # prompt response required
    LOW = "low"  # awareness required


class Category(StrEnum):
    PHYSIOLOGICAL = "physiological"
    TECHNICAL = "technical"


class AlarmState(StrEnum):
    ACTIVE = "active"  # the condition is present
    LATCHED = "latched"  # the condition has ended, the alarm waits for acknowledgement
    ACKNOWLEDGED = "acknowledged"  # acknowledged while the condition is still present
    CLEARED = "cleared"  # over: the condition ended and, if latching, it was acknowledged


@dataclass(frozen=True, slots=True)
class AlarmCondition:
    """What a rule found at ``time_us`` (device time of the data that showed it).

    ``kind`` names the condition (e.g. ``SPO2_LOW``, ``HR_HIGH``, ``VTACH``, ``NEWS2_HIGH``,
    ``LEAD_OFF``, ``BED_OFFLINE``, ``DATA_STALE``); ``value`` is the value that crossed the
    limit, when there is one; ``present`` is False when the rule sees the condition end.
    ``verified`` is the verdict of multi-signal verification on an arrhythmia condition: True
    when confirmed, None when it was not asked or could not judge.
    """

    bed: BedKey
    kind: str
    category: Category
    priority: Priority
    time_us: int
    present: bool = True
    value: float | None = None
    limit: float | None = None
    detail: str = ""
    verified: bool | None = None


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """A change in an alarm's life, written to the audit trail and the outbox."""

    alarm_id: str
    bed: BedKey
    kind: str
    priority: Priority
    category: Category
    state: AlarmState
    time_us: int
    actor: str = "engine"  # who caused the change: the engine, or a clinician's user name
    reason: str = ""
    audio_paused_until_us: int | None = None


Channel = Literal["mqtt", "webhook", "email", "mllp"]


@dataclass(frozen=True, slots=True)
class Notification:
    """One message to one person over one channel; ``key`` makes delivery idempotent."""

    key: str
    alarm_id: str
    recipient: str
    channel: Channel
    address: str
    body: dict[str, object] = field(default_factory=dict)
    created_us: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """The receipts of one notification, as the outbox and the store hold them (times in us
    since the epoch)."""

    key: str
    alarm_id: str
    recipient: str
    channel: Channel
    address: str
    enqueued_us: int
    sent_us: int | None
    delivered_us: int | None
    acknowledged_us: int | None
    acknowledged_by: str | None
    attempts: int
    last_error: str
    failed_us: int | None
    cancelled_us: int | None

    @property
    def open(self) -> bool:
        """Still to be delivered: not delivered, not given up, not cancelled."""
        return self.delivered_us is None and self.failed_us is None and self.cancelled_us is None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An audit-trail row: the event with its stable id (a digest of the alarm id, the change
    and its time: the same change recorded twice, by any process, has the same id) and when
    the outbox recorded it."""

    event_id: str
    event: AlarmEvent
    recorded_us: int


def event_id(event: AlarmEvent) -> str:
    """A stable id of an event: the same change recorded twice, by any process (a worker, a
    remote site, the hub's copy of a site's alarm), gets the same id."""
    parts = (
        event.alarm_id,
        event.state.value,
        str(event.time_us),
        event.actor,
        event.reason,
        str(event.audio_paused_until_us),
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
