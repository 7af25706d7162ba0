"""The alarm rules: a bed's derived values in, alarm conditions out. Pure: no I/O, no clock.

Each rule reports a condition as present, as ended, or not at all when it cannot tell: a value
that is missing or older than the policy's ``max_age_s`` never counts as normal. Instead the
parameter's technical condition (``SPO2_PROBE_OFF``, ``HR_UNAVAILABLE``, ...) is present. While
the whole bed is offline or silent (``BED_OFFLINE``, ``DATA_STALE``), only those two conditions
are reported; everything else is unknown and left as it was. A bed in standby (monitoring paused
at the bedside, for a limited time) reports ``BED_STANDBY`` and ends the technical conditions of
its measurements, but fresh values are live data and their physiological conditions still count.

A parameter key that a bed has never sent is not monitored on that bed and raises nothing.

A condition's ``time_us`` is the bed-clock time of the data that shows it, never the moment it
was judged, so the same data gives the same conditions whenever and wherever they are judged (the
alarm state machine names an alarm after the time of the condition that started it): a value's
time; for a value that is missing, when the value went missing (a report without a value, or the
last value's time plus its ``max_age_s``); for rhythm flags, signal quality, status, NEWS2 and
the bed's silence, the times in :class:`DataTimes`. Where a time is not known, the judgement time
``now_us`` stands in.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from eicu.alarm_model import AlarmCondition
from eicu.alarms.policy import NEWS2_BANDS, AlarmPolicy, ConditionPolicy
from eicu.models import BedKey

# Signal-quality verdicts that mean no usable signal at all.
NO_SIGNAL = frozenset({"missing", "flat"})


class VerifierDecision(Protocol):
    """What ``BedSignalPipeline.verify_alarm`` returns (see eicu.signal.alarms.AlarmDecision)."""

    @property
    def true_alarm(self) -> bool: ...

    @property
    def reason(self) -> str: ...


# Multi-signal verification of an arrhythmia label: True confirmed, False a false alarm, None
# cannot judge; or a decision object carrying the verdict and its reason.
Verify = Callable[[str], "bool | VerifierDecision | None"]


class News2Like(Protocol):
    """The fields of eicu.scores.evaluate.ScoreResult the rules read."""

    @property
    def band(self) -> str | None: ...

    @property
    def min_band(self) -> str: ...

    @property
    def complete(self) -> bool: ...

    @property
    def total(self) -> int | None: ...

    @property
    def partial_total(self) -> int: ...


class DeteriorationLike(Protocol):
    """The fields of eicu.scores.deterioration.DeteriorationSignal the rules read."""

    @property
    def time_us(self) -> int: ...

    @property
    def active(self) -> bool: ...

    @property
    def reasons(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class DataTimes:
    """Bed-clock times of the data behind the conditions that have no value of their own."""

    status_us: int | None = None  # the status message that set the bed's current status
    last_data_us: int | None = None  # the newest sample of any kind (data_stale counts from it)
    rhythm_us: Mapping[str, int] = field(default_factory=dict)  # first sample of each flag
    quality_us: Mapping[str, int] = field(default_factory=dict)  # start of each signal's verdict
    news2_us: int | None = None  # the numerics the NEWS2 score was assembled at
    clock_fault_us: int | None = None  # the message that showed the device-clock fault


NO_TIMES = DataTimes()


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A condition a rule found but multi-signal verification called false: it does not sound."""

    condition: AlarmCondition
    reason: str


@dataclass(frozen=True, slots=True)
class RuleOutput:
    conditions: tuple[AlarmCondition, ...]
    suppressed: tuple[Suppressed, ...] = ()


def _fresh(
    latest: Mapping[str, tuple[float | None, int]], policy: AlarmPolicy, key: str, now_us: int
) -> tuple[float, int] | None:
    entry = latest.get(key)
    if entry is None:
        return None
    value, ts_us = entry
    if value is None or now_us - ts_us > policy.max_age_s[key] * 1e6:
        return None
    return value, ts_us


def _missing_since(
    latest: Mapping[str, tuple[float | None, int]], policy: AlarmPolicy, keys: Iterable[str]
) -> int | None:
    """When the last of ``keys`` that a bed sends went missing (bed clock): the time of a report
    without a value, or the last value's time plus its ``max_age_s``."""
    since: int | None = None
    for key in keys:
        entry = latest.get(key)
        if entry is None:
            continue
        value, ts_us = entry
        at_us = ts_us if value is None else ts_us + round(policy.max_age_s[key] * 1e6)
        since = at_us if since is None else max(since, at_us)
    return since


def _monitored(latest: Mapping[str, tuple[float | None, int]], c: ConditionPolicy) -> bool:
    return not latest.keys().isdisjoint(c.params)


def vital_conditions(
    bed: BedKey,
    policy: AlarmPolicy,
    now_us: int,
    latest: Mapping[str, tuple[float | None, int]],
    clock_us: int | None = None,
    tracked: Container[str] | None = None,
) -> list[AlarmCondition]:
    """Limit conditions from the latest numerics, and each monitored parameter's availability.
    Ages are judged at ``clock_us`` on the device's clock (default ``now_us``). ``tracked``:
    see :func:`evaluate_bed`."""
    age_at = now_us if clock_us is None else clock_us
    out: list[AlarmCondition] = []
    unavailable: dict[str, bool] = {}
    keys: dict[str, list[str]] = {}  # the parameters of each 'unavailable' condition
    for c in policy.of_rules("vital"):
        if not _monitored(latest, c):
            continue
        found: tuple[str, tuple[float, int]] | None = None
        for key in c.params:  # the first fresh one
            f = _fresh(latest, policy, key, age_at)
            if f is not None:
                found = (key, f)
                break
        if c.unavailable is not None:
            unavailable[c.unavailable] = unavailable.get(c.unavailable, False) or found is None
            keys.setdefault(c.unavailable, []).extend(c.params)
        if found is None or c.limit is None:
            continue  # unknown: neither present nor ended
        key, (value, ts_us) = found
        present = c.beyond(value, c.limit)
        if not present and tracked is not None and c.kind not in tracked:
            continue
        priority = c.priority
        if (
            present
            and c.escalate_limit is not None
            and c.escalate_priority is not None
            and c.beyond(value, c.escalate_limit)
        ):
            priority = c.escalate_priority
        out.append(
            AlarmCondition(
                bed=bed,
                kind=c.kind,
                category=c.category,
                priority=priority,
                time_us=ts_us,
                present=present,
                value=value,
                limit=c.limit,
                detail=f"{key} {value:g} {c.direction} {c.limit:g}" if present else key,
            )
        )
    # A stand-alone 'unavailable' condition, and the targets named by vital conditions.
    for c in policy.of_rules("unavailable"):
        if c.kind not in unavailable and _monitored(latest, c):
            unavailable[c.kind] = all(
                _fresh(latest, policy, key, age_at) is None for key in c.params
            )
            keys[c.kind] = list(c.params)
    for kind, missing in unavailable.items():
        c = policy.condition(kind)
        if c.rule == "spo2_probe":
            continue  # reported by probe_conditions, which also looks at the pleth
        if not missing and tracked is not None and kind not in tracked:
            continue
        since = _missing_since(latest, policy, keys.get(kind, c.params)) if missing else None
        out.append(
            AlarmCondition(
                bed=bed,
                kind=kind,
                category=c.category,
                priority=c.priority,
                time_us=now_us if since is None else since,
                present=missing,
                detail=f"no fresh value of {' or '.join(c.params)}" if missing else "",
            )
        )
    return out


def probe_conditions(
    bed: BedKey,
    policy: AlarmPolicy,
    now_us: int,
    latest: Mapping[str, tuple[float | None, int]],
    quality: Mapping[str, str],
    clock_us: int | None = None,
    quality_us: Mapping[str, int] | None = None,
) -> list[AlarmCondition]:
    """``lead_off``: every ECG lead without signal; ``spo2_probe``: no SpO2 value or no pleth.
    Ages are judged at ``clock_us`` on the device's clock (default ``now_us``); ``quality_us``
    is when each signal's verdict started (bed clock)."""
    age_at = now_us if clock_us is None else clock_us
    since_of = quality_us or {}
    out: list[AlarmCondition] = []
    for c in policy.of_rules("lead_off", "spo2_probe"):
        since: list[int | None] = []  # when each reason for the condition began
        if c.rule == "lead_off":
            leads = {k: v for k, v in quality.items() if k.startswith("ECG")}
            if not leads:
                continue
            off = all(v in NO_SIGNAL for v in leads.values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(leads.items())) if off else ""
            times = [since_of.get(k) for k in leads]
            # Off once the last lead lost its signal.
            known = [t for t in times if t is not None]
            since = [max(known)] if off and known and len(known) == len(times) else []
        elif c.rule == "spo2_probe":
            pleth = quality.get("PLETH")
            if "SPO2" not in latest and pleth is None:
                continue
            reasons = []
            if "SPO2" in latest and _fresh(latest, policy, "SPO2", age_at) is None:
                reasons.append("no fresh SpO2 value")
                since.append(_missing_since(latest, policy, ("SPO2",)))
            if pleth == "missing":
                reasons.append("PLETH missing")
                since.append(since_of.get("PLETH"))
            off = bool(reasons)
            detail = "; ".join(reasons)
        else:
            continue
        # Present from the first of its reasons; the judgement time when one is not known.
        at_us = now_us if not since or None in since else min(t for t in since if t is not None)
        out.append(_condition(bed, c, at_us, off, detail))
    return out


def _condition(
    bed: BedKey,
    c: ConditionPolicy,
    now_us: int,
    present: bool,
    detail: str = "",
    **extra: Any,
) -> AlarmCondition:
    """A condition of policy entry ``c`` for ``bed`` at ``now_us``."""
    return AlarmCondition(
        bed=bed,
        kind=c.kind,
        category=c.category,
        priority=c.priority,
        time_us=now_us,
        present=present,
        detail=detail,
        **extra,
    )


def bed_conditions(
    bed: BedKey,
    policy: AlarmPolicy,
    now_us: int,
    status: str,
    last_seen_us: int,
    clock_fault: str | None = None,
    times: DataTimes = NO_TIMES,
) -> list[AlarmCondition]:
    """``bed_offline`` from the status; ``data_stale`` after ``after_s`` without any message;
    ``bed_standby`` while the bed is in standby; ``device_clock`` while ``clock_fault`` (a
    description of the bed's device-clock fault) is given. Their times: the status message's
    (``times.status_us``), the newest sample's plus ``after_s`` (``times.last_data_us``), the
    faulty message's (``times.clock_fault_us``).

    Status ``unknown`` and a bed never seen (``last_seen_us`` 0) report nothing; a bed in
    ``standby`` (monitoring deliberately paused at the bedside) is neither offline nor stale.
    """
    out: list[AlarmCondition] = []
    for c in policy.of_rules("bed_offline", "bed_standby", "device_clock", "data_stale"):
        at_us: int | None = None
        if c.rule == "bed_offline":
            if status == "unknown":
                continue
            present = status == "offline"
            detail = f"status {status}"
            at_us = times.status_us
        elif c.rule == "bed_standby":
            if status == "unknown":
                continue
            present = status == "standby"
            detail = "monitoring paused at the bedside" if present else ""
            at_us = times.status_us
        elif c.rule == "device_clock":
            if last_seen_us <= 0 and clock_fault is None:
                continue
            present = clock_fault is not None
            detail = clock_fault or ""
            at_us = times.clock_fault_us
        elif c.rule == "data_stale" and c.after_s is not None:
            if last_seen_us <= 0:
                continue
            silent_s = (now_us - last_seen_us) / 1e6
            present = silent_s > c.after_s and status not in ("offline", "standby")
            detail = f"no data for {silent_s:.1f} s" if present else ""
            if times.last_data_us is not None:
                at_us = times.last_data_us + round(c.after_s * 1e6)
        else:
            continue
        out.append(_condition(bed, c, now_us if at_us is None else at_us, present, detail))
    return out


# Arrhythmia alarm chains, most serious first. Conditions of one chain overlap (VT is also a
# fast rhythm, asystole also a pause); sounding all of them at once would confuse and could hide
# the most serious, so only that one sounds, as bedside monitors do (their "arrhythmia alarm
# chains", e.g. the Mindray ePM operator's manual; the order asystole, VF, VT, bradycardia is
# Mindray V-series' default priority among high-priority arrhythmia alarms).
RHYTHM_CHAINS: tuple[tuple[str, ...], ...] = (
    ("ASYSTOLE", "VFIB", "VTACH", "TACHY"),
    ("ASYSTOLE", "BRADY"),
    ("ASYSTOLE", "PAUSE"),
)


def _superseded_by(label: str, sounding: set[str]) -> str | None:
    """The more serious label of one of ``label``'s chains that is sounding, if any."""
    for chain in RHYTHM_CHAINS:
        if label in chain:
            for above in chain[: chain.index(label)]:
                if above in sounding:
                    return above
    return None


def rhythm_conditions(
    bed: BedKey,
    policy: AlarmPolicy,
    now_us: int,
    rhythms: Iterable[str],
    verify: Verify | None = None,
    unacknowledged: Iterable[str] = (),
    onsets: Mapping[str, int] | None = None,
    tracked: Container[str] | None = None,
) -> RuleOutput:
    """One condition per rhythm flag in the policy: present while the flag is active, from the
    flag's first sample (``onsets``: label -> bed-clock time; default ``now_us``).

    An active flag is checked with ``verify`` (when given): called false, it is suppressed
    (returned in ``suppressed`` with the reason, not among the conditions, so its alarm state
    stays as it was); confirmed or not judged, it is present with ``verified`` True or None.
    A present condition below one of its chain (:data:`RHYTHM_CHAINS`) that is present too, or
    whose alarm is still unacknowledged (``unacknowledged``: the bed's condition kinds with an
    active or latched alarm), is reported ended instead, naming the one it gave way to.
    """
    checked = _rhythm_conditions(bed, policy, now_us, rhythms, verify, onsets or {}, tracked)
    label = {c.kind: c.label or "" for c in policy.of_rules("rhythm")}
    sounding = {label[c.kind] for c in checked.conditions if c.present}
    sounding.update(label[kind] for kind in unacknowledged if kind in label)
    out: list[AlarmCondition] = []
    for condition in checked.conditions:
        above = _superseded_by(label[condition.kind], sounding) if condition.present else None
        if above is not None:
            condition = replace(condition, present=False, detail=f"superseded by {above}")
        out.append(condition)
    return RuleOutput(tuple(out), checked.suppressed)


def _rhythm_conditions(
    bed: BedKey,
    policy: AlarmPolicy,
    now_us: int,
    rhythms: Iterable[str],
    verify: Verify | None,
    onsets: Mapping[str, int],
    tracked: Container[str] | None = None,
) -> RuleOutput:
    """:func:`rhythm_conditions` before the chains are applied."""
    active = set(rhythms)
    out: list[AlarmCondition] = []
    suppressed: list[Suppressed] = []
    for c in policy.of_rules("rhythm"):
        if c.label is None:
            continue
        if c.label not in active:
            if tracked is None or c.kind in tracked:
                out.append(_condition(bed, c, now_us, present=False, detail=c.label))
            continue
        at_us = onsets.get(c.label, now_us)
        verdict: bool | None = None
        reason = ""
        if verify is not None:
            decision = verify(c.label)
            if decision is None or isinstance(decision, bool):
                verdict = decision
            else:
                verdict, reason = decision.true_alarm, decision.reason
        if verdict is False:
            condition = _condition(
                bed,
                c,
                at_us,
                present=True,
                detail=c.label,
                verified=False,
            )
            suppressed.append(
                Suppressed(condition, reason or "multi-signal verification called it false")
            )
            continue
        out.append(
            _condition(
                bed,
                c,
                at_us,
                present=True,
                detail=f"{c.label}: {reason}" if reason else c.label,
                verified=verdict,
            )
        )
    return RuleOutput(tuple(out), tuple(suppressed))


def score_conditions(
    bed: BedKey,
    policy: AlarmPolicy,
    now_us: int,
    news2: News2Like | None,
    deterioration: DeteriorationLike | None,
    news2_us: int | None = None,
) -> list[AlarmCondition]:
    """NEWS2 band conditions (at ``news2_us``, the time the score was assembled at; default
    ``now_us``) and the deterioration condition (at the signal's time).

    A complete NEWS2 reports each band condition present or ended. An incomplete one reports
    present only what its lower bound (``min_band``) already proves; the rest is unknown.
    """
    out: list[AlarmCondition] = []
    rank = {band: i for i, band in enumerate(NEWS2_BANDS)}
    for c in policy.of_rules("news2", "deterioration"):
        if c.rule == "news2" and news2 is not None and c.band is not None:
            if news2.complete and news2.band is not None:
                present = rank.get(news2.band, -1) >= rank[c.band]
                value = news2.total
                detail = f"NEWS2 {news2.total} ({news2.band})"
            elif rank.get(news2.min_band, -1) >= rank[c.band]:
                present = True
                value = news2.partial_total
                detail = f"NEWS2 at least {news2.partial_total} ({news2.min_band}), incomplete"
            else:
                continue
            out.append(
                _condition(
                    bed,
                    c,
                    now_us if news2_us is None else news2_us,
                    present=present,
                    value=None if value is None else float(value),
                    detail=detail,
                )
            )
        elif c.rule == "deterioration" and deterioration is not None:
            out.append(
                AlarmCondition(
                    bed=bed,
                    kind=c.kind,
                    category=c.category,
                    priority=c.priority,
                    time_us=deterioration.time_us,
                    present=deterioration.active,
                    detail="; ".join(deterioration.reasons),
                )
            )
    return out


def evaluate_bed(
    bed: BedKey,
    policy: AlarmPolicy,
    now_us: int,
    *,
    latest: Mapping[str, tuple[float | None, int]],
    status: str,
    last_seen_us: int,
    rhythms: Iterable[str] = (),
    quality: Mapping[str, str] | None = None,
    news2: News2Like | None = None,
    deterioration: DeteriorationLike | None = None,
    verify: Verify | None = None,
    clock_us: int | None = None,
    unacknowledged: Iterable[str] = (),
    clock_fault: str | None = None,
    new_bed: bool = False,
    times: DataTimes = NO_TIMES,
    tracked: Container[str] | None = None,
) -> RuleOutput:
    """Every rule of ``policy`` for one bed at ``now_us``.

    ``status`` ``standby`` (a standby still within its lifetime: the caller decides) ends the
    technical conditions of the measurements and raises ``bed_standby``; physiological
    conditions of fresh values, and rhythm flags while an ECG lead has a signal, still count.
    ``clock_fault`` describes the bed's device-clock fault, if it has one (``device_clock``).
    ``new_bed``: an auto-registered bed not yet confirmed by a stream (``ingest.admission``);
    its bed-level conditions (no data, offline, standby, device clock) are reported as not
    present, and while it is silent or offline nothing else is judged, as for any silent bed.

    ``clock_us`` is the moment on the bed's own (device) clock at which values' ages are judged
    (default ``now_us``); the alarm service passes the bed's clock less the engine's input delay,
    so values that arrive late because the engine is behind do not count as missing.

    ``latest`` is ``BedState.latest`` (key -> (value or None, device time)), ``rhythms`` the
    active labels (``Derived.rhythms``), ``quality`` the per-signal verdicts
    (``Derived.quality``), ``news2`` and ``deterioration`` from ``BedScores``; ``verify`` is
    typically the bed's ``BedSignalPipeline.verify_alarm``; ``unacknowledged`` the kinds of the
    bed's active or latched alarms (``AlarmStateMachine.unacknowledged``); ``times`` the bed-clock
    times of the data behind the conditions without a value of their own (:class:`DataTimes`).

    ``tracked``: the kinds the caller has anything under way of (an alarm, a pending onset;
    ``AlarmStateMachine.tracked``). Given, the rhythm and limit conditions that are not present
    are reported only for those kinds: for any other kind a report that it is absent changes
    nothing (the state machine passes it over), and a bed's rules run every second. None (the
    default): every condition is reported, present or not.
    """
    bed_level = bed_conditions(bed, policy, now_us, status, last_seen_us, clock_fault, times)
    silent = {"bed_offline", "data_stale"}
    quiet = any(c.present for c in bed_level if policy.condition(c.kind).rule in silent)
    if new_bed:
        # A bed heard only briefly (a flood of made-up ids is heard once each): its silence is
        # not a patient's, and a wall of technical alarms would bury the real ones.
        bed_level = [
            replace(c, present=False, detail="new bed, not yet confirmed by a stream")
            if c.present
            else c
            for c in bed_level
        ]
    if quiet:
        return RuleOutput(tuple(bed_level))
    quality = quality or {}
    standby = status == "standby"
    rhythm = rhythm_conditions(
        bed, policy, now_us, rhythms, verify, unacknowledged, times.rhythm_us, tracked
    )
    rhythms_out = list(rhythm.conditions)
    if standby and not any(v not in NO_SIGNAL for k, v in quality.items() if k.startswith("ECG")):
        rhythms_out = []  # no live ECG in standby: its rhythm flags are not judged
    measured = [
        *probe_conditions(bed, policy, now_us, latest, quality, clock_us, times.quality_us),
        *vital_conditions(bed, policy, now_us, latest, clock_us, tracked),
    ]
    if standby:
        # Monitoring paused at the bedside: sensors off and values missing are expected, so the
        # technical conditions of the measurements end. Fresh values are live data: their
        # physiological conditions stand (a stale or wrong standby never hides a patient).
        measured = [
            replace(c, present=False, detail="bed in standby") if c.category == "technical" else c
            for c in measured
        ]
    conditions = [
        *bed_level,
        *measured,
        *rhythms_out,
        *score_conditions(bed, policy, now_us, news2, deterioration, times.news2_us),
    ]
    return RuleOutput(tuple(conditions), rhythm.suppressed)
