"""Escalation: who is paged for an alarm, in which order, and when the next person is.

The on-call rota comes from configuration (JSON or a dict, see docs/alarm-delivery.md): per
site, levels in the order ``bedside_nurse`` -> ``on_call_physician`` ->
``command_center_intensivist``, each with contacts (a channel and an address) and an
acknowledgement timeout per priority.

The :class:`Dispatcher` takes an alarm's events. The first event of an alarm notifies the first
level. When nobody acknowledges within that level's timeout the next level is notified; after
the last level, the last level is notified again each time its timeout passes. When no
notification of a level is delivered within the rota's short ``delivery_timeout_s`` (or all of
them were refused), escalation moves on at once instead of waiting for the acknowledgement
timeout. An acknowledged or cleared alarm stops escalating, and its undelivered notifications
are cancelled.

Everything goes through the :class:`~alerting.outbox.Outbox` first: the event is recorded and
each notification enqueued before it is sent, the escalation step is saved, and a restarted
dispatcher resumes both. Notification keys are derived from the alarm, the step and the
contact, so a step repeated after a restart enqueues nothing new and nobody is paged twice.

Time comes from an injected :class:`~eicu.clock.Clock` (the real one by default), so tests move
it and drive :meth:`Dispatcher.tick` deterministically.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from alerting.channels import DeliveryChannel
from alerting.outbox import Outbox, event_id
from eicu.alarm_model import (
    AlarmEvent,
    AlarmState,
    Channel,
    DeliveryRecord,
    Notification,
    Priority,
)
from eicu.backoff import Backoff
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.errors import ConfigError, DeliveryError
from eicu.models import BedKey

log = logging.getLogger(__name__)

ROLES: Final = ("bedside_nurse", "on_call_physician", "command_center_intensivist")
CHANNELS: Final = get_args(Channel)
_STOPPING: Final = (AlarmState.ACKNOWLEDGED, AlarmState.CLEARED)


# --- the rota ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contact:
    """One person (or station) reached over one channel. For ``mqtt`` an empty address means
    the alarm's own bed (``site/bed``: the remote ICU's alarms topic)."""

    name: str
    channel: Channel
    address: str = ""


@dataclass(frozen=True, slots=True)
class Level:
    role: str
    contacts: tuple[Contact, ...]
    ack_timeout_s: Mapping[Priority, float]


@dataclass(frozen=True, slots=True)
class SiteRota:
    site: str
    levels: tuple[Level, ...]

    def level(self, step: int) -> Level:
        """The level notified at ``step``: the levels in order, then the last one again."""
        return self.levels[min(step, len(self.levels) - 1)]


@dataclass(frozen=True, slots=True)
class Rota:
    sites: Mapping[str, SiteRota]
    delivery_timeout_s: float = 15.0
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0

    def for_site(self, site: str) -> SiteRota | None:
        return self.sites.get(site)

    @classmethod
    def from_file(cls, path: Path) -> Rota:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the rota: {exc.strerror}") from exc
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, text: str, *, source: str = "rota") -> Rota:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(source, f"not JSON: {exc}") from exc
        return cls.from_dict(doc, source=source)

    @classmethod
    def from_dict(cls, doc: object, *, source: str = "rota") -> Rota:
        """Read and check a rota; a :class:`ConfigError` names the bad entry."""
        top = _obj(doc, source)
        version = top.get("version", 1)
        if version != 1:
            raise ConfigError(f"{source}.version", f"expected 1, got {version!r}")
        delivery_timeout_s = _seconds(top, "delivery_timeout_s", source, 15.0)
        retry_min_s = _seconds(top, "retry_min_s", source, 1.0)
        retry_max_s = _seconds(top, "retry_max_s", source, 30.0)
        raw_sites = _obj(top.get("sites"), f"{source}.sites")
        if not raw_sites:
            raise ConfigError(f"{source}.sites", "no site")
        sites = {}
        for site, raw_site in raw_sites.items():
            path = f"{source}.sites.{site}"
            raw_levels = _obj(raw_site, path).get("levels")
            if not isinstance(raw_levels, list) or not raw_levels:
                raise ConfigError(f"{path}.levels", "expected a non-empty list of levels")
            levels = tuple(_level(raw, f"{path}.levels[{i}]") for i, raw in enumerate(raw_levels))
            order = [ROLES.index(level.role) for level in levels]
            if order != sorted(set(order)):
                raise ConfigError(
                    f"{path}.levels", f"roles must follow the order {' -> '.join(ROLES)}"
                )
            sites[site] = SiteRota(site, levels)
        return cls(sites, delivery_timeout_s, retry_min_s, retry_max_s)


def _obj(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected an object, got {type(value).__name__}")
    return value


def _seconds(doc: Mapping[str, Any], name: str, path: str, default: float | None) -> float:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{path}.{name}", f"expected a number of seconds > 0, got {value!r}")
    return float(value)


def _level(raw: object, path: str) -> Level:
    doc = _obj(raw, path)
    role = doc.get("role")
    if role not in ROLES:
        raise ConfigError(f"{path}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
    raw_timeouts = _obj(doc.get("ack_timeout_s"), f"{path}.ack_timeout_s")
    timeouts = {p: _seconds(raw_timeouts, p.value, f"{path}.ack_timeout_s", None) for p in Priority}
    unknown = set(raw_timeouts) - {p.value for p in Priority}
    if unknown:
        raise ConfigError(f"{path}.ack_timeout_s", f"unknown priorities {sorted(unknown)}")
    raw_contacts = doc.get("contacts")
    if not isinstance(raw_contacts, list) or not raw_contacts:
        raise ConfigError(f"{path}.contacts", "expected a non-empty list of contacts")
    contacts = []
    for i, raw_contact in enumerate(raw_contacts):
        cpath = f"{path}.contacts[{i}]"
        c = _obj(raw_contact, cpath)
        name, channel, address = c.get("name"), c.get("channel"), c.get("address", "")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{cpath}.name", "expected a non-empty name")
        if channel not in CHANNELS:
            raise ConfigError(f"{cpath}.channel", f"expected one of {CHANNELS}, got {channel!r}")
        if not isinstance(address, str) or (channel != "mqtt" and not address):
            raise ConfigError(f"{cpath}.address", f"a {channel} contact needs an address")
        contacts.append(Contact(name, cast(Channel, channel), address))
    return Level(str(role), tuple(contacts), timeouts)


# --- the dispatcher ---------------------------------------------------------------------------


class DeliveryMetrics:
    """Counters of the dispatcher, in the given registry (or one of its own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "eicu_alarm_notifications",
            "Notification attempts, by channel and outcome (delivered, retry, refused)",
            ["channel", "outcome"],
            registry=r,
        )
        self.escalations = Counter(
            "eicu_alarm_escalations",
            "Escalations to the next step, by why (no_ack, not_delivered, refused)",
            ["why"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "eicu_alarm_delivery_latency_seconds",
            "From enqueued in the outbox to delivered",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.escalating = Gauge("eicu_alarm_escalating", "Alarms being escalated now", registry=r)


@dataclass
class _Escalation:
    event: AlarmEvent
    rota: SiteRota
    step: int
    step_started_s: float
    keys: list[str] = field(default_factory=list)
    delivery_checked: bool = False


def notification_key(alarm_id: str, step: int, role: str, contact: Contact) -> str:
    return f"{alarm_id}:{step}:{role}:{contact.name}:{contact.channel}"


STATE_RECIPIENT: Final = "bed"  # the recipient of the state messages to a bed's alarms topic


def state_key(event: AlarmEvent, to: str = "") -> str:
    """The key of the message that publishes one change of an alarm to its bed (``to`` empty)
    or to another receiver of every change (``pcd04@host:port``). A page's key has the step (a
    number) after the alarm id, so the two never meet."""
    return f"{event.alarm_id}:state:{to + ':' if to else ''}{event_id(event)}"


def is_state_key(key: str, alarm_id: str) -> bool:
    return key.startswith(f"{alarm_id}:state:")


def _page_step(key: str, alarm_id: str) -> int | None:
    """The escalation step of a page of ``alarm_id`` named ``key`` (see
    :func:`notification_key`); None for any other key (a state message's, another alarm's)."""
    prefix = f"{alarm_id}:"
    step = key[len(prefix) :].split(":", 1)[0] if key.startswith(prefix) else ""
    return int(step) if step.isdigit() else None


class Dispatcher:
    """Takes alarm events, pages the rota through the outbox, escalates on its clock."""

    def __init__(
        self,
        rota: Rota,
        outbox: Outbox,
        channels: Mapping[str, DeliveryChannel],
        *,
        clock: Clock = SYSTEM_CLOCK,
        poll_s: float = 0.5,
        metrics: DeliveryMetrics | None = None,
        on_acknowledged: Callable[[str, str], object] | None = None,
        pcd04: Sequence[str] = (),
    ) -> None:
        self.metrics = metrics or DeliveryMetrics()
        # Told (alarm id, who) when a recipient acknowledges a page: the engine acknowledges the
        # alarm in its state machine.
        self.on_acknowledged = on_acknowledged
        self._rota = rota
        # IHE PCD-04 destinations (host:port): every change of every alarm, over MLLP
        self._pcd04 = tuple(pcd04)
        # Delivery retries: the attempt count is the outbox's (a notification's receipt).
        self._retry = Backoff(rota.retry_min_s, rota.retry_max_s)
        self._outbox = outbox
        self._channels = dict(channels)
        self._clock = clock
        self._poll_s = poll_s
        self._alarms: dict[str, _Escalation] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._inflight_alarm: dict[str, str] = {}  # key -> alarm id

    def _now_us(self) -> int:
        return self._clock.now_us()

    def _now_s(self) -> float:
        return self._clock.now_us() / 1e6

    @property
    def escalating(self) -> dict[str, int]:
        """The alarms being escalated and the step each has reached."""
        return {alarm_id: esc.step for alarm_id, esc in self._alarms.items()}

    def seen(self, event_id: str) -> bool:
        """Whether this dispatcher's outbox holds the event (it was handled here)."""
        return self._outbox.has_event(event_id)

    def last_event(self, alarm_id: str) -> AlarmEvent | None:
        """The latest change of the alarm handled here."""
        return self._outbox.last_event(alarm_id)

    def escalating_beds(self) -> set[BedKey]:
        return {esc.event.bed for esc in self._alarms.values()}

    def can_take_over(self, alarm_id: str) -> bool:
        """Whether :meth:`take_over` would start anything for the alarm: not escalating here
        already, and not ended here (acknowledged or cleared) by an event the store may not
        have yet."""
        if alarm_id in self._alarms:
            return False
        last = self._outbox.last_event(alarm_id)
        return last is None or last.state not in _STOPPING

    # --- input ----------------------------------------------------------------------------------

    async def handle(self, event: AlarmEvent) -> None:
        """Record an alarm event, publish it to its bed, then start, follow or stop the alarm's
        escalation."""
        self._outbox.record(event, recorded_us=self._now_us())
        esc = self._alarms.get(event.alarm_id)
        if event.state in _STOPPING:
            await self._stop(event.alarm_id, event.state.value)
            self._publish_state(event)
            return
        self._publish_state(event)
        if esc is not None:
            esc.event = event
        elif not self._outbox.escalation_stopped(event.alarm_id):
            rota = self._rota.for_site(event.bed.site)
            if rota is None:
                # Without a rota the change is still published to the bed; nobody is paged, and
                # the alarm is not taken up again at the next start.
                log.log(
                    logging.ERROR if self._rota.sites else logging.DEBUG,
                    "alarm %s: no rota for site %s; nobody paged",
                    event.alarm_id,
                    event.bed.site,
                )
                self._outbox.stop_escalation(event.alarm_id, self._now_us())
                return
            esc = _Escalation(event, rota, 0, self._now_s())
            self._alarms[event.alarm_id] = esc
            self._notify(esc)

    async def acknowledge(self, key: str, by: str) -> str | None:
        """A recipient acknowledged a notification: the receipt is kept and the alarm stops
        escalating. Returns the alarm's id (None for an unknown key) so the caller can tell the
        alarm state machine."""
        notification = self._outbox.notification(key)
        if notification is None:
            return None
        now_us = self._now_us()
        self._outbox.mark_acknowledged(key, by, now_us)
        # The recipient has it: that is its delivery, even while the channel's own receipt (an
        # HTTP answer, say) is still on its way, so stopping the escalation must not cancel it.
        self._outbox.mark_delivered(key, now_us)
        await self._stop(notification.alarm_id, f"notification acknowledged by {by}")
        if self.on_acknowledged is not None:
            self.on_acknowledged(notification.alarm_id, by)
        return notification.alarm_id

    def hand_over(self, bed: BedKey) -> list[str]:
        """Stop escalating ``bed``'s alarms here without ending them (its partition moved: the
        new owner takes them over, see :meth:`take_over`); deliveries already under way finish.
        Returns the alarm ids."""
        now_us = self._now_us()
        gone = [aid for aid, esc in self._alarms.items() if esc.event.bed == bed]
        for aid in gone:
            del self._alarms[aid]
            self._outbox.stop_escalation(aid, now_us)  # not taken up again at a restart here
        return gone

    async def take_over(self, event: AlarmEvent, receipts: Sequence[DeliveryRecord]) -> int:
        """Go on with the escalation of an alarm another process raised (its bed's partition
        moved here), from ``event``, its latest change, and ``receipts``, the receipts of its
        notifications that process left in the store: at the step it had reached, timed from
        when that step began; that step's pages already delivered are not sent again (the
        others are, under the same idempotency keys). Returns the step."""
        self._outbox.record(event, recorded_us=self._now_us())
        if event.state in _STOPPING:
            self._outbox.stop_escalation(event.alarm_id, self._now_us())
            return -1
        rota = self._rota.for_site(event.bed.site)
        if rota is None:
            log.error("alarm %s taken over: no rota for site %s", event.alarm_id, event.bed.site)
            return -1
        step, started_us, delivered = 0, self._now_us(), set[str]()
        steps = [(_page_step(r.key, event.alarm_id), r) for r in receipts]
        pages = [(n, r) for n, r in steps if n is not None]
        if pages:
            step = max(n for n, _ in pages)
            at_step = [r for n, r in pages if n == step]
            started_us = min(r.enqueued_us for r in at_step)
            delivered = {r.key for r in at_step if r.delivered_us is not None}
        self._outbox.reopen_escalation(event.alarm_id)
        esc = _Escalation(event, rota, step, started_us / 1e6)
        self._alarms[event.alarm_id] = esc
        self._notify(esc)
        now_us = self._now_us()
        for key in esc.keys:
            if key in delivered:
                self._outbox.mark_delivered(key, now_us)  # before its delivery task starts
                esc.delivery_checked = True
        log.info("alarm %s taken over at escalation step %d", event.alarm_id, step)
        return step

    # --- time -----------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Do what is due now on the clock: escalate, and retry failed deliveries."""
        now_s = self._now_s()
        for esc in list(self._alarms.values()):
            level = esc.rota.level(esc.step)
            if now_s >= esc.step_started_s + level.ack_timeout_s[esc.event.priority]:
                self._advance(esc, "no_ack")
                continue
            if esc.delivery_checked:
                continue
            receipts = [self._outbox.receipt(k) for k in esc.keys]
            if any(r is not None and r.delivered_us is not None for r in receipts):
                esc.delivery_checked = True
            elif all(r is None or not r.open for r in receipts):
                self._advance(esc, "refused")
            elif now_s >= esc.step_started_s + self._rota.delivery_timeout_s:
                self._advance(esc, "not_delivered")
        for notification in self._outbox.pending(now_us=int(now_s * 1e6)):
            self._launch(notification)
        self.metrics.escalating.set(len(self._alarms))

    def next_due_s(self) -> float | None:
        """When :meth:`tick` has something to do next (clock seconds)."""
        due: list[float] = []
        for esc in self._alarms.values():
            level = esc.rota.level(esc.step)
            due.append(esc.step_started_s + level.ack_timeout_s[esc.event.priority])
            if not esc.delivery_checked:
                due.append(esc.step_started_s + self._rota.delivery_timeout_s)
        due.extend(
            at_us / 1e6
            for key, at_us in self._outbox.next_attempts().items()
            if key not in self._inflight
        )
        return min(due) if due else None

    # --- running ----------------------------------------------------------------------------------

    async def resume(self) -> None:
        """After a restart: pick up escalations where they stood and send what is pending."""
        for saved in self._outbox.open_escalations():
            event = self._outbox.last_event(saved.alarm_id)
            rota = None if event is None else self._rota.for_site(event.bed.site)
            if event is None or rota is None or event.state in _STOPPING:
                self._outbox.stop_escalation(saved.alarm_id, self._now_us())
                continue
            esc = _Escalation(event, rota, saved.step, saved.step_started_us / 1e6)
            self._alarms[saved.alarm_id] = esc
            self._notify(esc)  # idempotent: pages of this step already enqueued stay as they are
        for alarm_id in self._outbox.unescalated_alarms():
            event = self._outbox.last_event(alarm_id)
            if event is not None and event.state not in _STOPPING:
                await self.handle(event)  # recorded, but the crash came before the first page
            else:
                self._outbox.stop_escalation(alarm_id, self._now_us())
        resumed = self._outbox.pending()
        if resumed or self._alarms:
            log.info(
                "resuming %d escalations and %d pending deliveries", len(self._alarms), len(resumed)
            )
        for notification in resumed:
            self._launch(notification)

    async def run(self, events: asyncio.Queue[AlarmEvent]) -> None:
        """Resume, then take events from the queue and keep time, until cancelled."""
        await self.resume()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._consume(events), name="alarms-dispatch")
                tg.create_task(self.keep_time(), name="alarms-escalation")
        finally:
            await self.close()

    async def _consume(self, events: asyncio.Queue[AlarmEvent]) -> None:
        while True:
            event = await events.get()
            await self.handle(event)

    async def keep_time(self) -> None:
        """Escalate and retry on the clock until cancelled (:meth:`run` does this too)."""
        while True:
            await self.tick()
            due = self.next_due_s()
            wait_s = self._poll_s if due is None else due - self._now_s()
            await self._clock.sleep(min(max(wait_s, 0.01), self._poll_s))

    async def drain(self) -> None:
        """Wait until no delivery is in flight."""
        while self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop deliveries in flight; they stay pending in the outbox."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        self._inflight_alarm.clear()

    # --- inside -----------------------------------------------------------------------------------

    def _notify(self, esc: _Escalation) -> None:
        level = esc.rota.level(esc.step)
        event = esc.event
        now_us = int(esc.step_started_s * 1e6)
        self._outbox.save_escalation(event.alarm_id, esc.step, now_us)
        body: dict[str, object] = {
            "site": event.bed.site,
            "bed": event.bed.bed,
            "kind": event.kind,
            "priority": event.priority.value,
            "category": event.category.value,
            "state": event.state.value,
            "time_us": event.time_us,
            "type": "page",
            "role": level.role,
            "step": esc.step,
        }
        esc.keys = []
        for contact in level.contacts:
            key = notification_key(event.alarm_id, esc.step, level.role, contact)
            address = contact.address or (str(event.bed) if contact.channel == "mqtt" else "")
            notification = Notification(
                key, event.alarm_id, contact.name, contact.channel, address, body, now_us
            )
            self._outbox.enqueue(notification, at_us=now_us)
            esc.keys.append(key)
            self._launch(notification)
        log.info("alarm %s: step %d, paging %s", event.alarm_id, esc.step, level.role)

    def _publish_state(self, event: AlarmEvent) -> None:
        """Every change of an alarm goes to its bed's alarms topic (when an MQTT channel is
        configured) and to each PCD-04 destination, through the outbox like a page; the key is
        derived from the event, so a change is enqueued once however often it is handled."""
        if "mqtt" not in self._channels and not self._pcd04:
            return
        now_us = self._now_us()
        body: dict[str, object] = {
            "type": "state",
            "site": event.bed.site,
            "bed": event.bed.bed,
            "kind": event.kind,
            "priority": event.priority.value,
            "category": event.category.value,
            "state": event.state.value,
            "time_us": event.time_us,
            "actor": event.actor,
            "reason": event.reason,
            "audio_paused_until_us": event.audio_paused_until_us,
        }
        messages = []
        if "mqtt" in self._channels:
            messages.append(
                Notification(
                    state_key(event), event.alarm_id, STATE_RECIPIENT, "mqtt", str(event.bed),
                    body, now_us,
                )
            )  # fmt: skip
        for address in self._pcd04:
            messages.append(
                Notification(
                    state_key(event, f"pcd04@{address}"), event.alarm_id, "pcd04", "mllp",
                    address, body, now_us,
                )
            )  # fmt: skip
        for notification in messages:
            if self._outbox.enqueue(notification, at_us=now_us):
                self._launch(notification)

    def _advance(self, esc: _Escalation, why: str) -> None:
        log.warning("alarm %s: escalating past step %d: %s", esc.event.alarm_id, esc.step, why)
        self.metrics.escalations.labels(why=why).inc()
        esc.step += 1
        esc.step_started_s = self._now_s()
        esc.delivery_checked = False
        self._notify(esc)

    async def _stop(self, alarm_id: str, why: str) -> None:
        self._alarms.pop(alarm_id, None)
        now_us = self._now_us()
        self._outbox.stop_escalation(alarm_id, now_us)
        cancelled = self._outbox.cancel(alarm_id, now_us)
        tasks = [
            t
            for k, t in self._inflight.items()
            if self._inflight_alarm.get(k) == alarm_id and not is_state_key(k, alarm_id)
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("alarm %s: escalation stopped (%s); %d pages cancelled", alarm_id, why, cancelled)

    def _launch(self, notification: Notification) -> None:
        key = notification.key
        if key in self._inflight:
            return
        task = asyncio.create_task(self._deliver(notification), name=f"deliver[{key}]")
        self._inflight[key] = task
        self._inflight_alarm[key] = notification.alarm_id
        task.add_done_callback(lambda _t: self._done(key))

    def _done(self, key: str) -> None:
        self._inflight.pop(key, None)
        self._inflight_alarm.pop(key, None)

    async def _deliver(self, n: Notification) -> None:
        channel = self._channels.get(n.channel)
        if not self._outbox.begin_attempt(n.key, self._now_us()):
            return  # delivered, refused or cancelled meanwhile
        if channel is None:
            self.metrics.notifications.labels(channel=n.channel, outcome="refused").inc()
            self._outbox.mark_failed(
                n.key, f"no {n.channel} channel configured", at_us=self._now_us(), retry_at_us=None
            )
            log.error("notification %s: no %s channel configured", n.key, n.channel)
            return
        try:
            await channel.send(n)
        except DeliveryError as exc:
            record = self._outbox.receipt(n.key)
            attempts = record.attempts if record is not None else 1
            retry_at_us = None
            if exc.retryable:
                delay_s = self._retry.delay_s(max(attempts, 1))
                retry_at_us = self._now_us() + int(delay_s * 1e6)
            outcome = "retry" if exc.retryable else "refused"
            self.metrics.notifications.labels(channel=n.channel, outcome=outcome).inc()
            self._outbox.mark_failed(
                n.key, exc.detail, at_us=self._now_us(), retry_at_us=retry_at_us
            )
            log.warning(
                "notification %s not delivered (attempt %d, %s): %s",
                n.key,
                attempts,
                "will retry" if exc.retryable else "refused",
                exc.detail,
            )
        except Exception:
            self._outbox.mark_failed(
                n.key, "internal error", at_us=self._now_us(), retry_at_us=self._now_us() + 10**6
            )
            log.exception("notification %s: channel failed unexpectedly", n.key)
        else:
            now_us = self._now_us()
            self._outbox.mark_delivered(n.key, now_us)
            self.metrics.notifications.labels(channel=n.channel, outcome="delivered").inc()
            record = self._outbox.receipt(n.key)
            if record is not None:
                self.metrics.delivery_latency.observe(max(0.0, (now_us - record.enqueued_us) / 1e6))
