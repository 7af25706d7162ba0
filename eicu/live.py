"""A bed's live state as the dashboard sees it, the same whether it is read in the process that
judges the bed or received over the bus from the worker that does.

:class:`BedSnapshot` is what the bed's owner knows now: latest values and their device times,
status, clock offset, NEWS2, the signal stage's heart rate, rhythms and quality, the newest beat
and rhythm marks, and the bed's live alarms. It holds no judgement of time: ages and staleness
are worked out by the reader against its own clock (``dashboards.views``), so a snapshot that
arrives late, or is not refreshed because its worker died, shows its values as old as they are.

On the bus (MQTT topic ``eicu/state/<site>``, QoS 0, latest wins) a worker publishes its beds'
snapshots about once a second and at once when an alarm of a bed changes, in batches of at most
:data:`BATCH_BEDS` beds: :func:`encode_batch` / :func:`decode_batch`. A reader that misses one
takes the next.

:class:`Ring` and :class:`SignalTrace` keep a live signal's newest samples, for the engine's
per-bed state and for a dashboard that reads a bed's waveforms off the bus.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.alarms.policy import AlarmPolicy
from eicu.alarms.state import Alarm
from eicu.errors import PayloadError
from eicu.models import BedKey

if TYPE_CHECKING:
    from eicu.site_link import SiteLink

STATE_ROOT: Final = "eicu/state"
STATE_VERSION: Final = 1
BATCH_BEDS: Final = 32  # beds per state message: ~30 kB, below every broker's message limit
MAX_STATE_BYTES: Final = 4 * 1024 * 1024


def state_topic(site: str) -> str:
    return f"{STATE_ROOT}/{site}"


STATE_FILTER: Final = f"{STATE_ROOT}/+"


def live_waveform_topic(bed: BedKey) -> str:
    """``eicu/state/<site>/<bed>/waveform``: a remote site's live waveform frames at the hub, as
    its gateway sent them, passed on by ``eicu site-feed`` for dashboards (an internal topic: no
    engine takes them for a bed of its own)."""
    return f"{STATE_ROOT}/{bed.site}/{bed.bed}/waveform"


def bed_of_live_waveform_topic(topic: str) -> BedKey | None:
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:2]) == STATE_ROOT and parts[4] == "waveform":
        return BedKey(parts[2], parts[3])
    return None


class Ring:
    """The last ``capacity`` samples of one signal (physical units), kept circularly: writing a
    chunk costs the chunk, not the whole buffer."""

    def __init__(self, capacity: int) -> None:
        from eicu.kernels.samples import _ring_write  # numba: loaded by the first ring made

        self.buf = np.full(capacity, np.nan)
        self.total = 0  # samples ever written; the next one goes to buf[total % capacity]
        self._write = _ring_write

    @property
    def capacity(self) -> int:
        return int(self.buf.shape[0])

    def extend(self, values: NDArray[np.float64]) -> None:
        self._write(self.buf, self.total, values)
        self.total += values.shape[0]

    def last(self, n: int) -> NDArray[np.float64]:
        """The newest ``n`` samples in time order (fewer when fewer were written)."""
        cap = self.buf.shape[0]
        n = min(n, self.total, cap)
        end = self.total % cap
        idx = (np.arange(end - n, end)) % cap
        return self.buf[idx]


@dataclass
class SignalTrace:
    """One live signal of a bed: its rate, its newest samples, the device time of the newest."""

    fs_hz: float
    ring: Ring
    last_t_us: int = 0


@dataclass(frozen=True, slots=True)
class Mark:
    """A beat or a rhythm change on a signal, at its device time, for drawing on the trace.

    ``label``: ``N`` (a QRS), ``V`` (a ventricular QRS), ``P`` (a pulse), or a rhythm label;
    ``state`` is ``start`` or ``end`` for a rhythm, None for a beat. ``seq`` counts the bed's
    marks, so a reader can ask for the ones after the last it saw."""

    seq: int
    signal: str
    t_us: int
    kind: Literal["beat", "rhythm"]
    label: str
    state: str | None = None


@dataclass(frozen=True)
class BedSnapshot:
    """What the owner of a bed knows of it at engine time ``taken_us`` (see the module)."""

    bed: BedKey
    taken_us: int
    status: str = "unknown"  # as the bed last said: online, offline, standby, unknown
    standby_until_us: int = 0  # engine time at which a standby ends
    new: bool = False  # auto-registered, not yet confirmed by a stream
    last_seen_us: int = 0  # engine time of the bed's newest message
    clock_offset_us: float = 0.0  # the bed's device clock minus the engine's
    latest: Mapping[str, tuple[float | None, int]] = field(default_factory=dict)
    signals: Mapping[str, tuple[float, int]] = field(default_factory=dict)  # fs_hz, last_t_us
    news2: Mapping[str, Any] | None = None  # the last NEWS2 (ScoreResult.as_dict())
    news2_us: int | None = None  # device time of the numerics it was assembled at
    news2_invalid: str | None = None  # why the last assembly failed, if it did
    rising_reasons: tuple[str, ...] | None = None  # deterioration flagged (None: not flagged)
    hr_bpm: float | None = None  # the signal stage's heart rate (ECG II first)
    rhythms: tuple[str, ...] = ()
    quality: Mapping[str, str] = field(default_factory=dict)
    marks: tuple[Mark, ...] = ()  # the newest marks, oldest first
    marks_total: int = 0
    alarms: tuple[Alarm, ...] | None = None  # the live alarms (None: the owner judges none)
    input_delay_us: int | None = None  # how far the owner is behind its input

    def device_now_us(self, now_us: int) -> int:
        """The bed's device clock at engine time ``now_us``."""
        return now_us + int(self.clock_offset_us)

    def status_at(self, now_us: int) -> str:
        """A standby past its lifetime is over: the bed is monitored (``online``) again."""
        if self.status == "standby" and now_us >= self.standby_until_us:
            return "online"
        return self.status

    def is_stale(self, now_us: int, max_silence_s: float) -> bool:
        return now_us - self.last_seen_us > max_silence_s * 1e6


class LiveBeds(Protocol):
    """What the dashboard reads of the beds: their snapshots, the live waveforms of the beds it
    shows, their marks. ``eicu serve`` reads its engine's memory (ingest.live); ``eicu
    dashboard`` reads the bus (dashboards.bus)."""

    @property
    def alarms_available(self) -> bool:
        """Whether the beds' owners judge alarms."""
        ...

    def snapshots(self, now_us: int) -> list[BedSnapshot]:
        """Every bed's snapshot, for the census: without the live signals' times (the bed
        detail's :meth:`snapshot` has them), read before the caller yields to its loop."""
        ...

    def snapshot(self, bed: BedKey, now_us: int) -> BedSnapshot | None: ...

    def traces(self, bed: BedKey) -> Mapping[str, SignalTrace]: ...

    def marks(self, bed: BedKey, after_seq: int) -> tuple[list[Mark], int]: ...

    def watch(self, bed: BedKey) -> None:
        """A page shows ``bed``'s waveforms from now on (until :meth:`unwatch`)."""

    def unwatch(self, bed: BedKey) -> None: ...

    def input_delay_us(self, now_us: int) -> int | None: ...

    def sites(self) -> set[str]: ...

    def site_links(self) -> Mapping[str, SiteLink]:
        """The links of the remote sites whose beds the hub's feed publishes, by site, as last
        reported (eicu.site_link); empty where no remote site is shown."""
        ...

    def starting(self) -> str | None:
        """Why no bed is shown yet while none is (the engine warming up, the bus not read yet),
        for the empty census to say; None otherwise."""
        ...


class AlarmDesk(Protocol):
    """What the dashboard reads and does of the alarms. ``acknowledge`` and ``pause`` return the
    events they caused; they raise KeyError for an alarm that is not live, ValueError when the
    alarm's owner refused the change (its message names why) and TimeoutError when the owner
    did not answer in time."""

    @property
    def policy(self) -> AlarmPolicy: ...

    def policy_for(self, bed: BedKey) -> AlarmPolicy: ...

    def alarms(self) -> list[Alarm]: ...

    def alarm(self, alarm_id: str) -> Alarm: ...

    async def recent(self, limit: int) -> list[AlarmEvent]:
        """The newest alarm events, oldest first."""
        ...

    async def events_since(self, start_us: int) -> list[AlarmEvent]:
        """The alarm events of alarms that began after ``start_us``, or are still going."""
        ...

    async def acknowledge(self, alarm_id: str, user: str, now_us: int) -> list[AlarmEvent]: ...

    async def pause(
        self, target: BedKey | str, user: str, now_us: int, duration_s: float
    ) -> list[AlarmEvent]: ...


# --- the wire ----------------------------------------------------------------------------------


def _num(value: float | None) -> float | None:
    """A JSON number, or null for a value that is not one (NaN is an invalid reading)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _alarm_doc(a: Alarm) -> dict[str, Any]:
    return {
        "id": a.alarm_id, "kind": a.kind, "cat": a.category.value, "pri": a.priority.value,
        "state": a.state.value, "start": a.started_us, "present": a.condition_present,
        "value": _num(a.value), "detail": a.detail, "ack_by": a.acknowledged_by,
        "ack_us": a.acknowledged_us, "pause_us": a.audio_paused_until_us,
    }  # fmt: skip


def _snapshot_doc(s: BedSnapshot) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "bed": str(s.bed), "t": s.taken_us, "status": s.status, "seen": s.last_seen_us,
        "offset": round(s.clock_offset_us),
        "latest": {k: [_num(v), ts] for k, (v, ts) in s.latest.items()},
        "signals": {k: [fs, t] for k, (fs, t) in s.signals.items()},
        "rhythms": list(s.rhythms), "quality": dict(s.quality), "marks_total": s.marks_total,
        "marks": [[m.seq, m.signal, m.t_us, m.kind, m.label, m.state] for m in s.marks],
    }  # fmt: skip
    if s.standby_until_us:
        doc["standby_until"] = s.standby_until_us
    if s.new:
        doc["new"] = True
    if s.news2 is not None:
        doc["news2"] = s.news2
        doc["news2_us"] = s.news2_us
    if s.news2_invalid is not None:
        doc["news2_invalid"] = s.news2_invalid
    if s.rising_reasons is not None:
        doc["rising"] = list(s.rising_reasons)
    if s.hr_bpm is not None and math.isfinite(s.hr_bpm):
        doc["hr"] = s.hr_bpm
    if s.alarms is not None:
        doc["alarms"] = [_alarm_doc(a) for a in s.alarms]
    if s.input_delay_us is not None:
        doc["delay"] = s.input_delay_us
    return doc


def encode_batch(snapshots: Sequence[BedSnapshot]) -> bytes:
    """One state message: ``snapshots`` (of one site, at most :data:`BATCH_BEDS`)."""
    doc = {"v": STATE_VERSION, "beds": [_snapshot_doc(s) for s in snapshots]}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def _int(doc: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError("malformed", f"'{key}' must be an integer")
    return value


def _opt_int(doc: Mapping[str, Any], key: str) -> int | None:
    """An integer field that may be absent or null (a time, a delay): never a string or a float
    that would reach a comparison in the views."""
    return None if doc.get(key) is None else _int(doc, key)


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise PayloadError("malformed", f"'{key}' must be text")
    return value


def _alarm(bed: BedKey, d: Mapping[str, Any]) -> Alarm:
    return Alarm(
        alarm_id=str(d["id"]), bed=bed, kind=str(d["kind"]), category=Category(d["cat"]),
        priority=Priority(d["pri"]), state=AlarmState(d["state"]), started_us=int(d["start"]),
        condition_present=bool(d["present"]),
        value=float(d["value"]) if d.get("value") is not None else None,
        detail=str(d.get("detail") or ""), acknowledged_by=_opt_str(d, "ack_by"),
        acknowledged_us=_opt_int(d, "ack_us"), audio_paused_until_us=_opt_int(d, "pause_us"),
    )  # fmt: skip


def _snapshot(d: Mapping[str, Any]) -> BedSnapshot:
    bed = BedKey.parse(str(d["bed"]))
    alarms = d.get("alarms")
    news2 = d.get("news2")
    rising = d.get("rising")
    hr = d.get("hr")
    return BedSnapshot(
        bed=bed,
        taken_us=_int(d, "t"),
        status=str(d.get("status", "unknown")),
        standby_until_us=_int(d, "standby_until", 0),
        new=bool(d.get("new", False)),
        last_seen_us=_int(d, "seen", 0),
        clock_offset_us=float(d.get("offset", 0)),
        latest={
            str(k): (float(v) if v is not None else None, int(ts))
            for k, (v, ts) in dict(d.get("latest", {})).items()
        },
        signals={str(k): (float(fs), int(t)) for k, (fs, t) in dict(d.get("signals", {})).items()},
        news2=dict(news2) if isinstance(news2, dict) else None,
        news2_us=_opt_int(d, "news2_us"),
        news2_invalid=_opt_str(d, "news2_invalid"),
        rising_reasons=tuple(str(r) for r in rising) if isinstance(rising, list) else None,
        hr_bpm=float(hr) if hr is not None else None,
        rhythms=tuple(str(r) for r in d.get("rhythms", ())),
        quality={str(k): str(v) for k, v in dict(d.get("quality", {})).items()},
        marks=tuple(
            Mark(int(seq), str(sig), int(t), kind, str(label), state)
            for seq, sig, t, kind, label, state in d.get("marks", ())
        ),
        marks_total=_int(d, "marks_total", 0),
        alarms=tuple(_alarm(bed, a) for a in alarms) if isinstance(alarms, list) else None,
        input_delay_us=_opt_int(d, "delay"),
    )


def decode_batch(payload: bytes) -> list[BedSnapshot]:
    """The snapshots of one state message; PayloadError naming what is wrong."""
    if len(payload) > MAX_STATE_BYTES:
        raise PayloadError("too_large", f"a state message of {len(payload)} bytes")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError("malformed", f"not JSON: {exc}"[:160]) from exc
    if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION:
        raise PayloadError("unsupported_version", f"state version {str(doc)[:20]!r}")
    beds = doc.get("beds")
    if not isinstance(beds, list):
        raise PayloadError("malformed", "'beds' must be a list")
    try:
        return [_snapshot(d) for d in beds]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        why = f"a bed's state: {type(exc).__name__}: {exc}"[:160]
        raise PayloadError("malformed", why) from exc


def batches(snapshots: Iterable[BedSnapshot]) -> list[tuple[str, list[BedSnapshot]]]:
    """``snapshots`` grouped by site, in batches of at most :data:`BATCH_BEDS`: (topic, batch)."""
    by_site: dict[str, list[BedSnapshot]] = {}
    for s in snapshots:
        by_site.setdefault(s.bed.site, []).append(s)
    out = []
    for site, group in sorted(by_site.items()):
        for i in range(0, len(group), BATCH_BEDS):
            out.append((state_topic(site), group[i : i + BATCH_BEDS]))
    return out


def site_of_state_topic(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) == 3 and "/".join(parts[:2]) == STATE_ROOT:
        return parts[2]
    return None
