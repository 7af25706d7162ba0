"""The alarm service as the dashboard reads and uses it (eicu.live.AlarmDesk), in the process that
runs it (``eicu serve``, ``eicu demo``)."""

from __future__ import annotations

from alerting.service import AlarmService
from eicu.alarm_model import AlarmEvent
from eicu.alarms.policy import AlarmPolicy
from eicu.alarms.state import Alarm
from eicu.models import BedKey


class ServiceDesk:
    """:class:`eicu.live.AlarmDesk` over an :class:`AlarmService` of the same process: changes
    are made on the service's state machine at once (the server's clock going back raises
    ValueError, as the machine does)."""

    def __init__(self, service: AlarmService) -> None:
        self._service = service

    @property
    def policy(self) -> AlarmPolicy:
        return self._service.policy

    def policy_for(self, bed: BedKey) -> AlarmPolicy:
        return self._service.machine.policy_for(bed)

    def alarms(self) -> list[Alarm]:
        return self._service.machine.alarms()

    def alarm(self, alarm_id: str) -> Alarm:
        return self._service.machine.alarm(alarm_id)

    async def recent(self, limit: int) -> list[AlarmEvent]:
        return self._service.recent[-limit:]

    async def events_since(self, start_us: int) -> list[AlarmEvent]:
        return [s.event for s in self._service.outbox.events(started_since_us=start_us)]

    async def acknowledge(self, alarm_id: str, user: str, now_us: int) -> list[AlarmEvent]:
        return self._service.acknowledge(alarm_id, user, now_us)

    async def pause(
        self, target: BedKey | str, user: str, now_us: int, duration_s: float
    ) -> list[AlarmEvent]:
        return self._service.pause_audio(target, user, now_us, duration_s)
