"""What every store offers, and the shapes its queries return."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from eicu.alarm_model import (
    AlarmEvent,
    AlarmState,
    Category,
    DeliveryRecord,
    Priority,
    StoredEvent,
)
from eicu.codes import BY_CODE
from eicu.models import Batch, BedKey, NumericsFrame, StatusFrame, WaveformFrame
from eicu.patients import Encounter, LogEntry, Note, Patient


@dataclass(frozen=True)
class LatestValue:
    key: str
    value: float | None
    ts_us: int


@dataclass(frozen=True)
class TrendPoint:
    bucket_us: int
    avg: float | None
    min: float | None
    max: float | None
    n: int


@dataclass(frozen=True)
class NumericSample:
    """One stored numeric value of a bed at its device time."""

    bed: BedKey
    key: str
    value: float | None
    ts_us: int


@dataclass(frozen=True)
class BedDevice:
    """A monitor a bed's data came from, as its gateway identified it (a bed status's
    ``device``): when it was first and last said."""

    bed: BedKey
    device_id: str
    id_type: str  # e.g. "EUI-64" (IEEE 11073 / IHE PCD), "UDI"; "" when not said
    first_seen_us: int
    last_seen_us: int


def device_rows(frames: list[StatusFrame]) -> list[tuple[str, str, str, str, int, int]]:
    """Rows of bed_devices (site, bed, device id, id type, first seen, last seen) from each bed
    status that names its device: first and last seen at the status's receipt."""
    return [
        (f.site, f.bed, f.device[0], f.device[1], f.received_us, f.received_us)
        for f in frames
        if f.bed is not None and f.device is not None
    ]


def bed_devices_query(bed: BedKey | None, mark: str) -> tuple[str, tuple[str, ...]]:
    """The query of ``Store.bed_devices`` and its parameters, with the backend's parameter
    ``mark`` (``?`` or ``%s``)."""
    sql = "SELECT site, bed, device_id, id_type, first_seen, last_seen FROM bed_devices "
    order = "ORDER BY last_seen DESC, device_id"
    if bed is None:
        return sql + order, ()
    return f"{sql}WHERE site = {mark} AND bed = {mark} {order}", (bed.site, bed.bed)


def bed_device_records(rows: list[tuple[Any, ...]]) -> list[BedDevice]:
    """Rows of ``bed_devices_query`` as BedDevice."""
    return [BedDevice(BedKey(r[0], r[1]), r[2], r[3], int(r[4]), int(r[5])) for r in rows]


@dataclass(frozen=True)
class CallRecord:
    """One video consult call as audited: who called which bed, when it started, was answered
    and ended, how it ended (``outcome``: completed, unanswered, busy, failed, refused) and
    why (``end_reason``), and who ended it. Open calls have ``ended_us`` None."""

    call_id: str
    bed: BedKey
    caller: str
    started_us: int
    cart: str = ""
    alarm_id: str = ""
    answered_us: int | None = None
    ended_us: int | None = None
    outcome: str | None = None
    end_reason: str = ""
    ended_by: str = ""


@dataclass(frozen=True)
class WaveformWindow:
    """Samples of one signal in a time window, in physical units, with each sample's time.

    Where frames are missing the times jump: nothing is interpolated.
    """

    signal: str
    fs_hz: float
    t_us: NDArray[np.int64]
    values: NDArray[np.float64]


class AlarmRepository(Protocol):
    """The alarm tables: the audit trail and the delivery receipts, copied there from the alarm
    outboxes. Writes are idempotent whichever process makes them and however often: an event is
    inserted once (keyed by its ``event_id``), a receipt copied again merges into its row (keyed
    by the notification key; a time once set stays set, the attempts only grow)."""

    async def write_alarms(
        self, events: Sequence[StoredEvent], deliveries: Sequence[DeliveryRecord]
    ) -> None:
        """Store events and receipts in one transaction. Raises
        :class:`~eicu.errors.StorageUnavailable` while the database cannot take them (down, or
        its schema not yet brought up to date by ``open``)."""
        ...

    async def alarm_events(
        self, start_us: int, end_us: int, beds: Collection[BedKey] | None = None
    ) -> list[StoredEvent]:
        """Events with time in [start_us, end_us) (of ``beds`` only, when given), oldest
        first."""
        ...

    async def alarm_deliveries(self, alarm_id: str) -> list[DeliveryRecord]:
        """The receipts of one alarm's notifications, in the order they were enqueued."""
        ...


class PatientRepository(Protocol):
    """Patients, their stays, notes and the log of every change (eicu.patients; one logic for
    both databases in eicu.store.patients). Changes raise
    :class:`~eicu.patients.PatientError` naming what is wrong (a bed that has a patient, a
    patient admitted already, a stay that ended), :class:`~eicu.errors.StorageUnavailable` while
    the database cannot take them."""

    async def admit(
        self, patient: Patient, bed: BedKey, at_us: int, actor: str, fields: Mapping[str, str]
    ) -> Encounter: ...

    async def transfer(
        self, encounter_id: int, bed: BedKey, at_us: int, actor: str
    ) -> Encounter: ...

    async def discharge(self, encounter_id: int, at_us: int, actor: str) -> Encounter: ...

    async def update_encounter(
        self,
        encounter_id: int,
        fields: Mapping[str, str],
        allergies: str | None,
        at_us: int,
        actor: str,
    ) -> Encounter: ...

    async def cancel(self, encounter_id: int, what: str, at_us: int, actor: str) -> Encounter:
        """Undo an ``admit``, a ``transfer`` or a ``discharge`` entered in error."""
        ...

    async def merge(
        self, prior_mrn: str, patient: Patient, at_us: int, actor: str
    ) -> list[Encounter]:
        """Merge the record of ``prior_mrn`` into ``patient``'s (HL7 A40); their stays."""
        ...

    async def encounters(
        self, *, current: bool = True, encounter_id: int | None = None, mrn: str | None = None
    ) -> list[Encounter]:
        """The open stays (``current``), or one stay, or a patient's stays by MRN."""
        ...

    async def add_note(
        self,
        encounter_id: int,
        kind: str,
        text: str,
        handoff: Mapping[str, str],
        at_us: int,
        author: str,
    ) -> Note: ...

    async def notes(self, encounter_id: int) -> list[Note]: ...

    async def encounter_log(self, encounter_id: int) -> list[LogEntry]: ...


class SessionRepository(Protocol):
    """Dashboard sessions shared by the dashboard processes (eicu.store.sessions)."""

    async def session_put(
        self, token_hash: str, user: str, credential: str, csrf: str, now_us: int
    ) -> None: ...

    async def session_get(self, token_hash: str) -> tuple[str, str, str, int] | None:
        """(user, credential, csrf, last used) of a session, or None."""
        ...

    async def session_touch(self, token_hash: str, now_us: int) -> None: ...

    async def session_drop(self, token_hash: str, idle_before_us: int) -> None: ...


class Store(AlarmRepository, PatientRepository, SessionRepository, Protocol):
    """The store interface. Writes are idempotent: writing a batch twice stores it once."""

    backend: str  # "timescaledb", "postgresql" or "sqlite"

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, batch: Batch) -> None: ...
    async def latest(self, max_age_s: float = 86_400.0) -> dict[BedKey, dict[str, LatestValue]]: ...
    async def trend(
        self, bed: BedKey, key: str, start_us: int, end_us: int, bucket_s: int = 60
    ) -> list[TrendPoint]:
        """The 1-minute aggregate of one parameter in [start_us, end_us), merged into buckets
        of ``bucket_s`` (a multiple of 60, aligned on the epoch): the mean weighted by each
        minute's count, the smallest minimum and the largest maximum, so a spike stays."""
        ...

    async def waveform(
        self, bed: BedKey, signal: str, start_us: int, end_us: int
    ) -> WaveformWindow: ...
    async def numerics(
        self, start_us: int, end_us: int, bed: BedKey | None = None
    ) -> list[NumericSample]:
        """Every bed's (or ``bed``'s) numeric values with device time in [start_us, end_us),
        oldest first."""
        ...

    async def stats(self) -> dict[str, dict[str, dict[str, int]]]: ...
    async def dead_letter_counts(self) -> dict[str, int]: ...
    async def stored_sequences(
        self, since_us: int, until_us: int, beds: Collection[BedKey]
    ) -> dict[tuple[BedKey, str], frozenset[int]]:
        """The sequence numbers of the messages of ``beds`` stored with a time in [since_us,
        until_us), per (bed, "numerics" | "waveform"): every frame of a waveform segment."""
        ...

    async def last_sequences(self, since_us: int, until_us: int) -> dict[tuple[BedKey, str], int]:
        """The sequence number of each bed's newest stored ``numerics`` message and ``waveform``
        frame with device time in [since_us, until_us): where the engine's sequence tracking
        goes on from after a restart, so frames lost in between are counted as a gap."""
        ...

    async def call_started(self, call: CallRecord) -> None:
        """Audit the start of a video consult call (idempotent on ``call_id``)."""
        ...

    async def call_ended(
        self,
        call_id: str,
        ended_us: int,
        outcome: str,
        end_reason: str,
        ended_by: str,
        answered_us: int | None = None,
    ) -> None:
        """Audit the end of a call; the first end recorded stands."""
        ...

    async def calls(self, start_us: int, end_us: int) -> list[CallRecord]:
        """Calls started in [start_us, end_us), oldest first."""
        ...

    async def bed_devices(self, bed: BedKey | None = None) -> list[BedDevice]:
        """The monitors the beds' (or ``bed``'s) statuses named, the most recently said
        first."""
        ...


# --- rows shared by every backend ---------------------------------------------------------------

NumericRow = tuple[
    int, int, int, float | None, int, int
]  # time_us, bed_id, code, value, seq, rx_us
# time_us, bed_id, seq, n_frames, duration_us, n_samples, data, received_us
WaveformRow = tuple[int, int, int, int, int, int, bytes, int]


def numeric_rows(frames: list[NumericsFrame], bed_ids: dict[BedKey, int]) -> list[NumericRow]:
    from eicu.codes import BY_KEY

    rows: list[NumericRow] = []
    for f in frames:
        bed_id = bed_ids[f.bed]
        for key, value in f.values.items():
            rows.append((f.ts_us, bed_id, BY_KEY[key].code, value, f.seq, f.received_us))
    return rows


def waveform_rows(frames: list[WaveformFrame], bed_ids: dict[BedKey, int]) -> list[WaveformRow]:
    """One row per segment: consecutive contiguous frames of a bed joined (see segments.py)."""
    from eicu.store.segments import segments

    per_bed: dict[BedKey, list[WaveformFrame]] = {}
    first_rx: dict[tuple[BedKey, int, int], int] = {}
    for f in frames:
        per_bed.setdefault(f.bed, []).append(f)
    rows: list[WaveformRow] = []
    for bed, bed_frames in per_bed.items():
        for f in bed_frames:
            first_rx.setdefault((bed, f.t0_us, f.seq), f.received_us)
        for seg in segments(bed_frames):
            rx = first_rx[(bed, seg.t0_us, seg.seq)]
            rows.append(
                (
                    seg.t0_us,
                    bed_ids[bed],
                    seg.seq,
                    seg.n_frames,
                    seg.duration_us,
                    seg.n_samples,
                    seg.data,
                    rx,
                )
            )
    return rows


def beds_in(batch: Batch) -> set[BedKey]:
    beds = {f.bed for f in batch.numerics} | {f.bed for f in batch.waveforms}
    return beds


def status_rows(
    frames: list[StatusFrame],
) -> list[tuple[int, str, str | None, str | None, str, list[str], int | None]]:
    return [
        (f.received_us, f.site, f.bed, f.gateway, f.state, list(f.beds), f.ts_us) for f in frames
    ]


def window_from_blocks(
    signal: str, pieces: list[tuple[int, object]], start_us: int, end_us: int
) -> WaveformWindow:
    """Join decoded blocks ``(frame_t0_us, SignalBlock)`` into one window, cut to the range."""
    from eicu.models import SignalBlock

    times: list[NDArray[np.int64]] = []
    values: list[NDArray[np.float64]] = []
    fs_hz = 0.0
    for t0_us, block in pieces:
        if not isinstance(block, SignalBlock):
            continue
        fs_hz = block.fs_hz
        n = block.samples.shape[0]
        t = (
            t0_us
            + block.t_offset_us
            + np.round(np.arange(n) * (1e6 / block.fs_hz)).astype(np.int64)
        )
        keep = (t >= start_us) & (t < end_us)
        times.append(t[keep])
        values.append(block.physical()[keep])
    if not times:
        return WaveformWindow(signal, fs_hz, np.empty(0, np.int64), np.empty(0, np.float64))
    t_all = np.concatenate(times)
    order = np.argsort(t_all, kind="stable")
    return WaveformWindow(signal, fs_hz, t_all[order], np.concatenate(values)[order])


def minute_ceil_us(t_us: int) -> int:
    """The start of the first minute that begins at or after ``t_us``: the 1-minute buckets
    ``[start_us, end_us)`` holds are those of the raw values in ``[ceil(start), ceil(end))``."""
    return -(-t_us // 60_000_000) * 60_000_000


def check_bucket_s(bucket_s: int) -> int:
    if bucket_s < 60 or bucket_s % 60:
        raise ValueError(f"bucket_s must be a positive multiple of 60, got {bucket_s}")
    return int(bucket_s)


def param_key(code: int) -> str:
    param = BY_CODE.get(code)
    return param.key if param else f"code{code}"


# What is stored per bed, in the simulator's summary shape; the same SQL on every backend.
STATS_SQL = """WITH n AS (SELECT bed_id, count(*) AS messages, sum(k) AS samples
                         FROM (SELECT bed_id, count(*) AS k FROM numerics
                               GROUP BY bed_id, time, seq) m GROUP BY bed_id),
                   w AS (SELECT bed_id, sum(n_frames) AS messages, sum(n_samples) AS samples
                         FROM waveforms GROUP BY bed_id)
              SELECT b.site, b.bed, coalesce(n.messages, 0) + coalesce(w.messages, 0),
                     coalesce(n.samples, 0) + coalesce(w.samples, 0)
              FROM beds b LEFT JOIN n USING (bed_id) LEFT JOIN w USING (bed_id)
              ORDER BY b.site, b.bed"""


def stats_doc(rows: list[tuple[object, ...]]) -> dict[str, dict[str, dict[str, int]]]:
    return {
        "beds": {
            f"{site}/{bed}": {"messages": int(m), "samples": int(n)}  # type: ignore[call-overload]
            for site, bed, m, n in rows
        }
    }


def call_records(rows: list[tuple[Any, ...]]) -> list[CallRecord]:
    """Rows of consult_calls in CALL_COLUMNS order (times as integer microseconds)."""
    return [
        CallRecord(
            call_id=str(call_id),
            bed=BedKey(str(site), str(bed)),
            caller=str(caller),
            cart=str(cart),
            alarm_id=str(alarm_id),
            started_us=int(started),
            answered_us=None if answered is None else int(answered),
            ended_us=None if ended is None else int(ended),
            outcome=None if outcome is None else str(outcome),
            end_reason=str(end_reason),
            ended_by=str(ended_by),
        )
        for (call_id, site, bed, caller, cart, alarm_id, started, answered, ended, outcome,
             end_reason, ended_by) in rows
    ]  # fmt: skip


def numeric_samples(rows: list[tuple[object, ...]]) -> list[NumericSample]:
    """Rows of (site, bed, code, value, time_us) as samples."""
    return [
        NumericSample(
            BedKey(str(site), str(bed)),
            param_key(int(code)),  # type: ignore[call-overload]
            None if value is None else float(value),  # type: ignore[arg-type]
            int(ts_us),  # type: ignore[call-overload]
        )
        for site, bed, code, value, ts_us in rows
    ]


def latest_doc(rows: list[tuple[object, ...]]) -> dict[BedKey, dict[str, LatestValue]]:
    """Rows of (site, bed, code, value, time_us) as the latest values per bed."""
    out: dict[BedKey, dict[str, LatestValue]] = {}
    for site, bed, code, value, ts_us in rows:
        key = param_key(int(code))  # type: ignore[call-overload]
        out.setdefault(BedKey(str(site), str(bed)), {})[key] = LatestValue(
            key,
            None if value is None else float(value),  # type: ignore[arg-type]
            int(ts_us),  # type: ignore[call-overload]
        )
    return out


def stored_sequence_doc(
    rows: list[tuple[Any, ...]],
) -> dict[tuple[BedKey, str], frozenset[int]]:
    """Rows of (site, bed, kind, seq, n_frames) -> {(bed, kind): every number they hold}."""
    out: dict[tuple[BedKey, str], set[int]] = {}
    for site, bed, kind, seq, n_frames in rows:
        numbers = out.setdefault((BedKey(site, bed), kind), set())
        numbers.update((int(seq) + i) % (1 << 32) for i in range(int(n_frames)))
    return {key: frozenset(numbers) for key, numbers in out.items()}


def last_sequence_doc(rows: list[tuple[Any, ...]]) -> dict[tuple[BedKey, str], int]:
    """Rows of (site, bed, kind, seq, n_frames) -> {(bed, kind): seq of the last frame}."""
    out: dict[tuple[BedKey, str], int] = {}
    for site, bed, kind, seq, n_frames in rows:
        out[(BedKey(site, bed), kind)] = (int(seq) + int(n_frames) - 1) % (1 << 32)
    return out


# --- the alarm tables ----------------------------------------------------------------------------

# Column order of the rows below; times are microseconds since the epoch.
ALARM_EVENT_COLUMNS = (
    "event_id, alarm_id, site, bed, kind, priority, category, state, time, actor, reason, "
    "audio_paused_until, recorded"
)
ALARM_DELIVERY_COLUMNS = (
    "key, alarm_id, recipient, channel, address, enqueued, sent, delivered, acknowledged, "
    "acknowledged_by, attempts, last_error, failed, cancelled"
)
# Which of those hold a time.
ALARM_EVENT_TIMES = frozenset({"time", "audio_paused_until", "recorded"})
ALARM_DELIVERY_TIMES = frozenset(
    {"enqueued", "sent", "delivered", "acknowledged", "failed", "cancelled"}
)


def alarm_event_rows(events: Sequence[StoredEvent]) -> list[tuple[Any, ...]]:
    """Rows in ALARM_EVENT_COLUMNS order, sorted by key: concurrent writers of overlapping rows
    then lock them in the same order and never deadlock."""
    return [
        (
            s.event_id,
            s.event.alarm_id,
            s.event.bed.site,
            s.event.bed.bed,
            s.event.kind,
            s.event.priority.value,
            s.event.category.value,
            s.event.state.value,
            s.event.time_us,
            s.event.actor,
            s.event.reason,
            s.event.audio_paused_until_us,
            s.recorded_us,
        )
        for s in sorted(events, key=lambda s: s.event_id)
    ]


def alarm_delivery_rows(deliveries: Sequence[DeliveryRecord]) -> list[tuple[Any, ...]]:
    """Rows in ALARM_DELIVERY_COLUMNS order, sorted by key (see :func:`alarm_event_rows`)."""
    return [
        (
            d.key,
            d.alarm_id,
            d.recipient,
            d.channel,
            d.address,
            d.enqueued_us,
            d.sent_us,
            d.delivered_us,
            d.acknowledged_us,
            d.acknowledged_by,
            d.attempts,
            d.last_error,
            d.failed_us,
            d.cancelled_us,
        )
        for d in sorted(deliveries, key=lambda d: d.key)
    ]


def _us(value: Any) -> int | None:
    return None if value is None else int(value)


def stored_events(rows: list[tuple[Any, ...]]) -> list[StoredEvent]:
    """Rows in ALARM_EVENT_COLUMNS order as events."""
    return [
        StoredEvent(
            str(event_id),
            AlarmEvent(
                alarm_id=str(alarm_id),
                bed=BedKey(str(site), str(bed)),
                kind=str(kind),
                priority=Priority(priority),
                category=Category(category),
                state=AlarmState(state),
                time_us=int(time_us),
                actor=str(actor),
                reason=str(reason),
                audio_paused_until_us=_us(paused_us),
            ),
            int(recorded_us),
        )
        for (event_id, alarm_id, site, bed, kind, priority, category, state, time_us, actor,
             reason, paused_us, recorded_us) in rows
    ]  # fmt: skip


def delivery_records(rows: list[tuple[Any, ...]]) -> list[DeliveryRecord]:
    """Rows in ALARM_DELIVERY_COLUMNS order as receipts."""
    return [
        DeliveryRecord(
            key=str(key),
            alarm_id=str(alarm_id),
            recipient=str(recipient),
            channel=channel,
            address=str(address),
            enqueued_us=int(enqueued),
            sent_us=_us(sent),
            delivered_us=_us(delivered),
            acknowledged_us=_us(acknowledged),
            acknowledged_by=None if acknowledged_by is None else str(acknowledged_by),
            attempts=int(attempts),
            last_error=str(last_error),
            failed_us=_us(failed),
            cancelled_us=_us(cancelled),
        )
        for (key, alarm_id, recipient, channel, address, enqueued, sent, delivered, acknowledged,
             acknowledged_by, attempts, last_error, failed, cancelled) in rows
    ]  # fmt: skip
