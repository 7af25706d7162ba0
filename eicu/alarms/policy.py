"""The alarm policy: which conditions raise alarms, with what priority, limits, delays and latching.

A policy is versioned data (``eicu/alarms/policies/default-v2.json``), checked on load; errors name
the bad entry. Each condition names the rule that detects it:

- ``vital``: a numeric parameter beyond a limit (``direction`` ``above`` or ``below``); the first
  of ``params`` with a fresh value is used (``ABP_SYS`` before ``NIBP_SYS``). Optional
  ``escalate`` (a second limit beyond the first and the priority it raises the alarm to),
  ``clear_hysteresis`` (the value must come back inside the limit by this much to clear),
  ``sat_seconds`` (SpO2: the alarm starts when the SatSeconds limit-violation index, in %·s,
  reaches the budget, instead of after ``delay_s``; see eicu.alarms.state) and ``unavailable``
  (the technical condition raised when the parameter is monitored but its value is missing or
  stale).
- ``news2``: the NEWS2 clinical-risk band reaches ``band``.
- ``deterioration``: the deterioration signal of the score stage is active.
- ``rhythm``: the signal stage reports the rhythm flag ``label``.
- ``lead_off``, ``spo2_probe``, ``unavailable``, ``bed_offline``, ``data_stale`` (after
  ``after_s`` seconds without data), ``bed_standby`` (monitoring paused at the bedside, for the
  standby's lifetime), ``device_clock`` (the bed's device time out of the engine's window):
  technical conditions.

``severity`` (optional) lists condition kinds from the clinically most to the least severe: within
a priority, alarms are shown, sounded and paged in this order (:mod:`eicu.alarms.ranking`). Kinds it
does not list follow those it lists, in the default order (:func:`default_severity`); every
physiological condition ranks above every technical one whatever the list says.

Per-bed limits are changed with :func:`override`, which returns a new policy and an audit record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from eicu.alarm_model import Category, Priority
from eicu.errors import AlarmPolicyError
from eicu.models import BedKey

Rule = Literal[
    "vital",
    "news2",
    "deterioration",
    "rhythm",
    "lead_off",
    "spo2_probe",
    "unavailable",
    "bed_offline",
    "data_stale",
    "bed_standby",
    "device_clock",
]
RULES: Final[tuple[str, ...]] = get_args(Rule)
NEWS2_BANDS: Final[tuple[str, ...]] = ("low", "low-medium", "medium", "high")
RHYTHM_LABELS: Final[tuple[str, ...]] = (
    "ASYSTOLE",
    "BRADY",
    "TACHY",
    "VTACH",
    "VFIB",
    "AFIB",
    "PAUSE",
)
PRIORITY_RANK: Final[Mapping[Priority, int]] = MappingProxyType(
    {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}
)
# The fields a clinician may change for one bed.
OVERRIDABLE: Final[tuple[str, ...]] = (
    "limit",
    "escalate_limit",
    "clear_hysteresis",
    "delay_s",
    "sat_seconds",
)
DEFAULT_PATH: Final[Path] = Path(__file__).with_name("policies") / "default-v2.json"
# The default severity classes of rhythm conditions, most severe first: the lethal rhythms
# (asystole, ventricular fibrillation, ventricular tachycardia), then the extreme rates. Every
# other physiological condition comes after them, every technical one after those.
LETHAL_RHYTHMS: Final[tuple[str, ...]] = ("ASYSTOLE", "VFIB", "VTACH")
EXTREME_RATES: Final[tuple[str, ...]] = ("BRADY", "TACHY")


@dataclass(frozen=True, slots=True)
class ConditionPolicy:
    kind: str
    rule: Rule
    category: Category
    priority: Priority
    latching: bool = False  # a high-priority alarm latches whatever this says
    delay_s: float = 0.0  # the condition must persist this long before the alarm starts
    params: tuple[str, ...] = ()  # vital, unavailable: parameter keys, first fresh one wins
    direction: Literal["above", "below"] | None = None  # vital
    limit: float | None = None  # vital: in the parameter's unit
    clear_hysteresis: float = 0.0  # vital: back inside the limit by this much to clear
    escalate_limit: float | None = None  # vital: beyond this the priority is escalate_priority
    escalate_priority: Priority | None = None
    sat_seconds: float | None = None  # vital, below: area budget in unit·s instead of delay_s
    unavailable: str | None = None  # vital: technical condition when the value is missing/stale
    band: str | None = None  # news2
    label: str | None = None  # rhythm
    after_s: float | None = None  # data_stale: seconds without any message

    def beyond(self, value: float, limit: float) -> bool:
        """Whether ``value`` is beyond ``limit`` in this condition's direction."""
        return value < limit if self.direction == "below" else value > limit

    def in_hysteresis(self, value: float) -> bool:
        """Whether ``value`` is inside the limit but not yet far enough inside to clear."""
        if self.limit is None or self.clear_hysteresis <= 0:
            return False
        if self.direction == "below":
            return self.limit <= value < self.limit + self.clear_hysteresis
        return self.limit - self.clear_hysteresis < value <= self.limit


@dataclass(frozen=True, slots=True)
class AlarmPolicy:
    name: str
    version: int
    audio_pause_max_s: float
    max_age_s: Mapping[str, float]  # a parameter's value older than this is stale
    conditions: Mapping[str, ConditionPolicy]
    # Every condition kind, the clinically most severe first (see default_severity).
    severity: tuple[str, ...] = ()
    # of_rules' answers: a policy never changes (its mappings are read-only) and the alarm rules
    # ask each bed's policy for its conditions of a rule once a second per bed
    _by_rules: dict[tuple[str, ...], tuple[ConditionPolicy, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def of_rules(self, *rules: str) -> tuple[ConditionPolicy, ...]:
        """The conditions of these rules, in the policy's order."""
        found = self._by_rules.get(rules)
        if found is None:
            found = tuple(c for c in self.conditions.values() if c.rule in rules)
            self._by_rules[rules] = found
        return found

    def severity_rank(self, kind: str) -> int:
        """0 for the most severe condition kind, 1 for the next...; a kind the policy does not
        have ranks after all of its own."""
        try:
            return self.severity.index(kind)
        except ValueError:
            return len(self.severity)

    def condition(self, kind: str) -> ConditionPolicy:
        try:
            return self.conditions[kind]
        except KeyError:
            raise AlarmPolicyError(f"conditions.{kind}", "no such condition") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the file format (``parse_policy(p.to_dict()) == p``)."""
        conditions: dict[str, Any] = {}
        for kind, c in self.conditions.items():
            entry: dict[str, Any] = {
                "rule": c.rule,
                "category": c.category.value,
                "priority": c.priority.value,
                "latching": c.latching,
                "delay_s": c.delay_s,
            }
            for f in fields(ConditionPolicy):
                if f.name in entry or f.name in ("kind", "escalate_limit", "escalate_priority"):
                    continue
                value = getattr(c, f.name)
                if value is None or value == () or (f.name == "clear_hysteresis" and value == 0):
                    continue
                entry[f.name] = list(value) if isinstance(value, tuple) else value
            if c.escalate_limit is not None and c.escalate_priority is not None:
                entry["escalate"] = {
                    "limit": c.escalate_limit,
                    "priority": c.escalate_priority.value,
                }
            conditions[kind] = entry
        return {
            "name": self.name,
            "version": self.version,
            "audio_pause_max_s": self.audio_pause_max_s,
            "max_age_s": dict(self.max_age_s),
            "conditions": conditions,
            "severity": list(self.severity),
        }


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """The audit record of one per-bed change: who changed what, when, from what to what."""

    bed: BedKey
    kind: str
    field: str
    old: float | None
    new: float | None
    user: str
    time_us: int
    policy: str  # name and version of the policy changed, e.g. ``default-v1``
    reason: str = ""


def _num(raw: object, path: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise AlarmPolicyError(path, f"must be a finite number, got {raw!r}")
    if positive and not raw > 0:
        raise AlarmPolicyError(path, f"must be > 0, got {raw!r}")
    if nonneg and raw < 0:
        raise AlarmPolicyError(path, f"must be >= 0, got {raw!r}")
    return float(raw)


def _enum(raw: object, path: str, allowed: tuple[str, ...]) -> str:
    if raw not in allowed:
        raise AlarmPolicyError(path, f"must be one of {list(allowed)}, got {raw!r}")
    return str(raw)


_KEYS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "vital": frozenset(
            {
                "params",
                "direction",
                "limit",
                "clear_hysteresis",
                "escalate",
                "sat_seconds",
                "unavailable",
            }
        ),
        "news2": frozenset({"band"}),
        "deterioration": frozenset(),
        "rhythm": frozenset({"label"}),
        "lead_off": frozenset(),
        "spo2_probe": frozenset(),
        "unavailable": frozenset({"params"}),
        "bed_offline": frozenset(),
        "data_stale": frozenset({"after_s"}),
        "bed_standby": frozenset(),
        "device_clock": frozenset(),
    }
)
_COMMON: Final[frozenset[str]] = frozenset({"rule", "category", "priority", "latching", "delay_s"})


def _condition(kind: str, raw: object) -> ConditionPolicy:
    path = f"conditions.{kind}"
    if not isinstance(raw, Mapping):
        raise AlarmPolicyError(path, f"must be an object, got {type(raw).__name__}")
    rule = _enum(raw.get("rule"), f"{path}.rule", RULES)
    unknown = set(raw) - _COMMON - _KEYS[rule]
    if unknown:
        raise AlarmPolicyError(f"{path}.{sorted(unknown)[0]}", f"not a key of a {rule} condition")
    category = Category(_enum(raw.get("category"), f"{path}.category", tuple(Category)))
    priority = Priority(_enum(raw.get("priority"), f"{path}.priority", tuple(Priority)))
    latching = raw.get("latching", False)
    if not isinstance(latching, bool):
        raise AlarmPolicyError(f"{path}.latching", f"must be true or false, got {latching!r}")
    c = ConditionPolicy(
        kind,
        rule,  # type: ignore[arg-type]  # checked against RULES above
        category,
        priority,
        latching=latching,
        delay_s=_num(raw.get("delay_s", 0.0), f"{path}.delay_s", nonneg=True),
    )
    if rule in ("vital", "unavailable"):
        params = raw.get("params")
        if (
            not isinstance(params, list)
            or not params
            or not all(isinstance(p, str) and p for p in params)
        ):
            raise AlarmPolicyError(
                f"{path}.params", f"must be a non-empty list of keys: {params!r}"
            )
        c = replace(c, params=tuple(params))
    if rule == "vital":
        direction = _enum(raw.get("direction"), f"{path}.direction", ("above", "below"))
        escalate = raw.get("escalate")
        esc_limit: float | None = None
        esc_priority: Priority | None = None
        if escalate is not None:
            if not isinstance(escalate, Mapping) or set(escalate) != {"limit", "priority"}:
                raise AlarmPolicyError(f"{path}.escalate", "must be {limit, priority}")
            esc_limit = _num(escalate["limit"], f"{path}.escalate.limit")
            esc_priority = Priority(
                _enum(escalate["priority"], f"{path}.escalate.priority", tuple(Priority))
            )
        sat = raw.get("sat_seconds")
        unavailable = raw.get("unavailable")
        if unavailable is not None and not isinstance(unavailable, str):
            raise AlarmPolicyError(
                f"{path}.unavailable", f"must be a condition kind: {unavailable!r}"
            )
        c = replace(
            c,
            direction=direction,  # type: ignore[arg-type]  # checked above
            limit=_num(raw.get("limit"), f"{path}.limit"),
            clear_hysteresis=_num(
                raw.get("clear_hysteresis", 0.0), f"{path}.clear_hysteresis", nonneg=True
            ),
            escalate_limit=esc_limit,
            escalate_priority=esc_priority,
            sat_seconds=None if sat is None else _num(sat, f"{path}.sat_seconds", positive=True),
            unavailable=unavailable,
        )
    elif rule == "news2":
        c = replace(c, band=_enum(raw.get("band"), f"{path}.band", NEWS2_BANDS))
    elif rule == "rhythm":
        c = replace(c, label=_enum(raw.get("label"), f"{path}.label", RHYTHM_LABELS))
    elif rule == "data_stale":
        c = replace(c, after_s=_num(raw.get("after_s"), f"{path}.after_s", positive=True))
    check_condition(c)
    return c


def check_condition(c: ConditionPolicy) -> None:
    """The invariants of one condition that span several fields."""
    path = f"conditions.{c.kind}"
    physio = c.rule in ("vital", "news2", "deterioration", "rhythm")
    if physio != (c.category is Category.PHYSIOLOGICAL):
        raise AlarmPolicyError(f"{path}.category", f"a {c.rule} condition cannot be {c.category}")
    if c.delay_s < 0 or not math.isfinite(c.delay_s):
        raise AlarmPolicyError(f"{path}.delay_s", f"must be a finite number >= 0, got {c.delay_s}")
    if c.rule != "vital":
        return
    if c.limit is None or not math.isfinite(c.limit):
        raise AlarmPolicyError(f"{path}.limit", f"must be a finite number, got {c.limit}")
    if c.clear_hysteresis < 0 or not math.isfinite(c.clear_hysteresis):
        raise AlarmPolicyError(f"{path}.clear_hysteresis", f"must be >= 0: {c.clear_hysteresis}")
    if c.escalate_limit is not None:
        if c.escalate_priority is None:
            raise AlarmPolicyError(f"{path}.escalate.priority", "missing")
        if not math.isfinite(c.escalate_limit) or not c.beyond(c.escalate_limit, c.limit):
            raise AlarmPolicyError(
                f"{path}.escalate.limit",
                f"must lie {c.direction} the limit {c.limit}, got {c.escalate_limit}",
            )
        if PRIORITY_RANK[c.escalate_priority] <= PRIORITY_RANK[c.priority]:
            raise AlarmPolicyError(
                f"{path}.escalate.priority",
                f"must be above the condition's priority {c.priority}",
            )
    if c.sat_seconds is not None:
        if c.direction != "below":
            raise AlarmPolicyError(f"{path}.sat_seconds", "only for a 'below' limit")
        if not c.sat_seconds > 0 or not math.isfinite(c.sat_seconds):
            raise AlarmPolicyError(f"{path}.sat_seconds", f"must be > 0, got {c.sat_seconds}")


def parse_policy(raw: object) -> AlarmPolicy:
    """Check and build a policy from plain data (the parsed JSON file)."""
    if not isinstance(raw, Mapping):
        raise AlarmPolicyError("(root)", f"must be an object, got {type(raw).__name__}")
    unknown = set(raw) - {
        "name",
        "version",
        "audio_pause_max_s",
        "max_age_s",
        "conditions",
        "severity",
    }
    if unknown:
        raise AlarmPolicyError(sorted(unknown)[0], "not a key of an alarm policy")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise AlarmPolicyError("name", f"must be a non-empty string, got {name!r}")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise AlarmPolicyError("version", f"must be an integer >= 1, got {version!r}")
    pause_s = _num(raw.get("audio_pause_max_s"), "audio_pause_max_s", positive=True)
    ages = raw.get("max_age_s")
    if not isinstance(ages, Mapping) or not ages:
        raise AlarmPolicyError("max_age_s", "must be a non-empty object of parameter: seconds")
    max_age_s = {str(k): _num(v, f"max_age_s.{k}", positive=True) for k, v in ages.items()}
    conds = raw.get("conditions")
    if not isinstance(conds, Mapping) or not conds:
        raise AlarmPolicyError("conditions", "must be a non-empty object of kind: condition")
    conditions = {str(kind): _condition(str(kind), c) for kind, c in conds.items()}
    for kind, c in conditions.items():
        for key in c.params:
            if key not in max_age_s:
                raise AlarmPolicyError(f"conditions.{kind}.params", f"{key} has no max_age_s")
        if c.unavailable is not None:
            target = conditions.get(c.unavailable)
            if target is None or target.rule not in ("unavailable", "spo2_probe"):
                raise AlarmPolicyError(
                    f"conditions.{kind}.unavailable",
                    f"{c.unavailable!r} is not an unavailable or spo2_probe condition",
                )
    return AlarmPolicy(
        name=name,
        version=version,
        audio_pause_max_s=pause_s,
        max_age_s=MappingProxyType(max_age_s),
        conditions=MappingProxyType(conditions),
        severity=_severity(raw.get("severity"), conditions),
    )


def _severity_class(c: ConditionPolicy) -> int:
    if c.category is Category.TECHNICAL:
        return len(LETHAL_RHYTHMS) + 2
    if c.rule == "rhythm" and c.label in LETHAL_RHYTHMS:
        return LETHAL_RHYTHMS.index(c.label)
    if c.rule == "rhythm" and c.label in EXTREME_RATES:
        return len(LETHAL_RHYTHMS)
    return len(LETHAL_RHYTHMS) + 1


def default_severity(conditions: Mapping[str, ConditionPolicy]) -> tuple[str, ...]:
    """The order of a policy without ``severity``: asystole, ventricular fibrillation,
    ventricular tachycardia, the extreme bradycardia and tachycardia rhythms, every other
    physiological condition, then the technical ones; within each class, the file's order."""
    kinds = list(conditions)
    return tuple(sorted(kinds, key=lambda k: (_severity_class(conditions[k]), kinds.index(k))))


def _severity(raw: object, conditions: Mapping[str, ConditionPolicy]) -> tuple[str, ...]:
    """Every condition kind, most severe first: the listed ones in the listed order, then the
    others in the default order; physiological conditions before technical ones."""
    listed: list[str] = []
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
            raise AlarmPolicyError("severity", f"must be a list of condition kinds, got {raw!r}")
        for i, kind in enumerate(raw):
            if kind not in conditions:
                raise AlarmPolicyError(f"severity[{i}]", f"{kind!r} is not a condition")
            if kind in listed:
                raise AlarmPolicyError(f"severity[{i}]", f"{kind!r} is listed twice")
            listed.append(kind)
    rest = [k for k in default_severity(conditions) if k not in listed]
    order = listed + rest
    technical = [conditions[k].category is Category.TECHNICAL for k in order]
    return tuple(k for k, _ in sorted(zip(order, technical, strict=True), key=lambda kt: kt[1]))


def load_policy(path: str | Path = DEFAULT_PATH) -> AlarmPolicy:
    """Read and check a policy file; errors name the file and the bad entry."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AlarmPolicyError(str(p), f"not valid JSON: {exc}") from exc
    try:
        return parse_policy(raw)
    except AlarmPolicyError as exc:
        raise AlarmPolicyError(f"{p.name}:{exc.path}", exc.detail) from exc


def override(
    policy: AlarmPolicy,
    bed: BedKey,
    kind: str,
    field: str,
    value: float | None,
    *,
    user: str,
    now_us: int,
    reason: str = "",
) -> tuple[AlarmPolicy, PolicyChange]:
    """A new policy for ``bed`` with one field of one condition changed, and its audit record.

    Only the fields in :data:`OVERRIDABLE` can change; the changed condition is checked as on
    load (an escalation limit must stay beyond the limit, for example). ``value`` None removes an
    optional field (``sat_seconds``, ``escalate_limit``).
    """
    path = f"conditions.{kind}.{field}"
    if not user:
        raise AlarmPolicyError(path, "a change needs the user who makes it")
    if field not in OVERRIDABLE:
        raise AlarmPolicyError(path, f"cannot be changed per bed; allowed: {list(OVERRIDABLE)}")
    old = policy.condition(kind)
    if old.rule != "vital":
        raise AlarmPolicyError(path, f"a {old.rule} condition has no limits to change")
    if value is None:
        if field not in ("sat_seconds", "escalate_limit"):
            raise AlarmPolicyError(path, "is required")
        new_value: float | None = None
    else:
        new_value = _num(value, path, nonneg=field in ("delay_s", "clear_hysteresis"))
    if field == "escalate_limit" and new_value is not None and old.escalate_priority is None:
        raise AlarmPolicyError(path, "the condition has no escalation priority")
    updates: dict[str, Any] = {field: new_value}
    changed = replace(old, **updates)
    if field == "escalate_limit" and new_value is None:
        changed = replace(changed, escalate_priority=None)
    check_condition(changed)
    conditions = dict(policy.conditions)
    conditions[kind] = changed
    new_policy = replace(policy, conditions=MappingProxyType(conditions))
    record = PolicyChange(
        bed=bed,
        kind=kind,
        field=field,
        old=getattr(old, field),
        new=new_value,
        user=user,
        time_us=now_us,
        policy=f"{policy.name}-v{policy.version}",
        reason=reason,
    )
    return new_policy, record
