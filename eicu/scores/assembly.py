"""Assembly in time: a score from each parameter's latest value, if it is recent enough.

The engine's per-bed state holds, for each parameter key of :mod:`eicu.codes`, the latest value
(or None when the monitor said it had none) and its device time in microseconds. A score input
takes its value from the first *usable* source in the policy's preference list:

* usable = present, not older than that parameter's maximum age, not more than
  ``max_future_s`` ahead of ``now_us`` (a clock running ahead), and physically possible;
* ``sbp``: ``ABP_SYS`` (arterial line, beat to beat) when usable, else ``NIBP_SYS`` (the last
  cuff reading, usable for longer);
* ``hr``: ``HR`` (ECG) when usable, else ``PR`` (oximeter pulse rate);
* ``on_oxygen``: from ``O2`` (0 air / 1 oxygen) and ``FIO2`` (% : above 21 means supplemental
  oxygen); when both are usable and disagree, oxygen wins (it scores, and is the safer reading);
* ``rr`` RR, ``spo2`` SPO2, ``temp_c`` TEMP, ``acvpu`` ACVPU (the last nursing entry).

An input with no usable source is never scored: the score is incomplete and the input is listed
in ``missing`` (no value at all), ``stale`` (values exist but are too old, or from the future) or
``invalid`` (the freshest value is physically impossible, e.g. SpO2 of 120 %).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike, NDArray

from eicu.codes import BY_KEY
from eicu.errors import ConfigError
from eicu.kernels.scores import MISSING
from eicu.scores.definitions import MEWS, NEWS2, QSOFA, ScoreDefinition
from eicu.scores.evaluate import (
    ScoreBatch,
    ScoreResult,
    _result,
    _score_one,
    evaluate_array,
)

US_PER_S = 1_000_000

DEFAULT_MAX_AGE_S: Mapping[str, float] = MappingProxyType(
    {
        "HR": 300.0,  # continuous vitals: 5 min
        "PR": 300.0,
        "SPO2": 300.0,
        "RR": 300.0,
        "ABP_SYS": 300.0,
        "NIBP_SYS": 1800.0,  # a cuff reading: 30 min
        "TEMP": 4 * 3600.0,  # 4 h
        "ACVPU": 12 * 3600.0,  # the last nursing entry, up to NEWS2's longest interval (12 h)
        "O2": 12 * 3600.0,
        "FIO2": 1800.0,
    }
)

DEFAULT_SOURCES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "rr": ("RR",),
        "spo2": ("SPO2",),
        "on_oxygen": ("O2", "FIO2"),
        "sbp": ("ABP_SYS", "NIBP_SYS"),
        "hr": ("HR", "PR"),
        "acvpu": ("ACVPU",),
        "temp_c": ("TEMP",),
    }
)

AIR_FIO2_PCT = 21.0


@dataclass(frozen=True)
class AssemblyPolicy:
    """How old each parameter may be, and where each score input comes from."""

    max_age_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_AGE_S))
    sources: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    max_future_s: float = 60.0

    def __post_init__(self) -> None:
        for key, age in self.max_age_s.items():
            if key not in BY_KEY:
                raise ConfigError(f"max_age_s.{key}", "not a parameter key of eicu.codes")
            if not age > 0:
                raise ConfigError(f"max_age_s.{key}", f"must be > 0 s, got {age}")
        for name, keys in self.sources.items():
            if not keys:
                raise ConfigError(f"sources.{name}", "needs at least one parameter key")
            for key in keys:
                if key not in BY_KEY:
                    raise ConfigError(f"sources.{name}", f"{key!r} is not a parameter key")
                if key not in self.max_age_s:
                    raise ConfigError(f"max_age_s.{key}", f"no maximum age for source of {name}")
        if not self.max_future_s >= 0:
            raise ConfigError("max_future_s", f"must be >= 0, got {self.max_future_s}")


DEFAULT_POLICY = AssemblyPolicy()


@dataclass(frozen=True)
class AssembledBatch:
    """Scores for many beds assembled in time, with why each input was not used."""

    scores: ScoreBatch
    missing: dict[str, NDArray[np.bool_]]
    stale: dict[str, NDArray[np.bool_]]
    invalid: dict[str, NDArray[np.bool_]]
    source: dict[str, NDArray[np.int8]]  # index into policy.sources[input], -1 when none
    policy: AssemblyPolicy

    def row(self, i: int) -> ScoreResult:
        """Bed ``i`` as a :class:`ScoreResult` naming missing, stale and invalid inputs."""
        policy = self.policy
        base = self.scores.row(i)
        order = [s.name for s in self.scores.definition.inputs]
        missing = tuple(n for n in order if n in self.missing and self.missing[n][i])
        stale = tuple(n for n in order if n in self.stale and self.stale[n][i])
        invalid = tuple(n for n in order if n in self.invalid and self.invalid[n][i])
        sources = {
            n: policy.sources[n][int(s[i])] for n, s in self.source.items() if int(s[i]) >= 0
        }
        return ScoreResult(
            definition=base.definition,
            total=base.total,
            partial_total=base.partial_total,
            components=base.components,
            band=base.band,
            min_band=base.min_band,
            response=base.response,
            monitoring=base.monitoring,
            complete=base.complete,
            missing=missing,
            stale=stale,
            invalid=invalid,
            sources=sources,
        )


def _usable_range(key: str) -> tuple[float, float, bool]:
    p = BY_KEY[key]
    return p.low, p.high, bool(p.labels)


def assemble_arrays(
    definition: ScoreDefinition,
    values: Mapping[str, ArrayLike],
    times_us: Mapping[str, ArrayLike],
    now_us: ArrayLike,
    policy: AssemblyPolicy = DEFAULT_POLICY,
    *,
    spo2_scale: ArrayLike = 1,
) -> AssembledBatch:
    """Assemble and score many beds at once.

    ``values[key]`` holds each bed's latest value of parameter ``key`` (NaN where none) and
    ``times_us[key]`` its device time; ``now_us`` is one time or one per bed.
    """
    n = None
    for key, v in values.items():
        length = np.shape(v)[0] if np.ndim(v) else 1
        if n is None:
            n = length
        elif length != n:
            raise ValueError(f"values[{key!r}] has {length} beds, expected {n}")
        if key not in times_us or np.shape(times_us[key]) != np.shape(v):
            raise ValueError(f"times_us[{key!r}] must match values[{key!r}] in shape")
    n = 1 if n is None else n
    now = np.broadcast_to(np.asarray(now_us, dtype=np.int64), (n,))
    x = np.full((len(definition.inputs), n), np.nan)
    missing: dict[str, NDArray[np.bool_]] = {}
    stale: dict[str, NDArray[np.bool_]] = {}
    invalid: dict[str, NDArray[np.bool_]] = {}
    source: dict[str, NDArray[np.int8]] = {}
    for row, spec in enumerate(definition.inputs):
        keys = policy.sources.get(spec.name)
        if keys is None:  # not a measured parameter (spo2_scale): given by the caller
            continue
        chosen = np.full(n, np.nan)
        src = np.full(n, -1, dtype=np.int8)
        any_stale = np.zeros(n, dtype=bool)
        any_invalid = np.zeros(n, dtype=bool)
        for k, key in enumerate(keys):
            if key not in values:
                continue
            v = np.broadcast_to(np.asarray(values[key], dtype=np.float64), (n,))
            t = np.broadcast_to(np.asarray(times_us[key], dtype=np.int64), (n,))
            present = ~np.isnan(v)
            age_s = (now - t) / US_PER_S
            fresh = present & (age_s <= policy.max_age_s[key]) & (age_s >= -policy.max_future_s)
            low, high, categorical = _usable_range(key)
            with np.errstate(invalid="ignore"):
                ok = (v >= low) & (v <= high)
                if categorical:
                    ok &= v == np.floor(v)
            any_stale |= present & ~fresh
            any_invalid |= fresh & ~ok
            usable = fresh & ok
            if key == "FIO2":
                v = (v > AIR_FIO2_PCT).astype(np.float64)
            if spec.name == "on_oxygen":  # oxygen wins over air between usable sources
                take = usable & (np.isnan(chosen) | (v > chosen))
            else:
                take = usable & (src == -1)
            chosen = np.where(take, v, chosen)
            src = np.where(take, np.int8(k), src)
        x[row] = chosen
        none = src == -1
        invalid[spec.name] = none & any_invalid
        stale[spec.name] = none & any_stale & ~any_invalid
        missing[spec.name] = none & ~any_stale & ~any_invalid
        source[spec.name] = src
    if "spo2_scale" in definition.input_index:
        x[definition.input_index["spo2_scale"]] = np.broadcast_to(
            np.asarray(spo2_scale, dtype=np.float64), (n,)
        )
    scores = evaluate_array(definition, x)
    # only inputs the score could not do without are reported
    needed = {name: ~scores.complete for name in missing}
    return AssembledBatch(
        scores=scores,
        missing={k: v & needed[k] for k, v in missing.items()},
        stale={k: v & needed[k] for k, v in stale.items()},
        invalid={k: v & needed[k] for k, v in invalid.items()},
        source=source,
        policy=policy,
    )


def assemble(
    definition: ScoreDefinition,
    latest: Mapping[str, tuple[float | None, int]],
    now_us: int,
    policy: AssemblyPolicy = DEFAULT_POLICY,
    *,
    spo2_scale: int = 1,
) -> ScoreResult:
    """One bed's score from its latest values: ``latest[key] = (value or None, device_time_us)``.

    The one-bed twin of :func:`assemble_arrays` in plain Python (a bed's handful of values is
    not worth numpy); the two are tested against each other.
    """
    inputs: dict[str, float | None] = {}
    missing: list[str] = []
    stale: list[str] = []
    invalid: list[str] = []
    sources: dict[str, str] = {}
    for spec in definition.inputs:
        keys = policy.sources.get(spec.name)
        if keys is None:
            continue
        chosen: float | None = None
        chosen_key = ""
        any_stale = any_invalid = False
        for key in keys:
            entry = latest.get(key)
            if entry is None or entry[0] is None or math.isnan(entry[0]):
                continue
            value, t_us = float(entry[0]), int(entry[1])
            age_s = (now_us - t_us) / US_PER_S
            if not -policy.max_future_s <= age_s <= policy.max_age_s[key]:
                any_stale = True
                continue
            low, high, categorical = _usable_range(key)
            if not low <= value <= high or (categorical and value != math.floor(value)):
                any_invalid = True
                continue
            if key == "FIO2":
                value = 1.0 if value > AIR_FIO2_PCT else 0.0
            if chosen is None or (spec.name == "on_oxygen" and value > chosen):
                chosen, chosen_key = value, key
        inputs[spec.name] = chosen
        if chosen is not None:
            sources[spec.name] = chosen_key
        elif any_invalid:
            invalid.append(spec.name)
        elif any_stale:
            stale.append(spec.name)
        else:
            missing.append(spec.name)
    if "spo2_scale" in definition.input_index:
        inputs["spo2_scale"] = spo2_scale
    comps, partial, band_index, min_band_index = _score_one(definition, inputs)
    if band_index != MISSING:  # complete
        missing, stale, invalid = [], [], []
    return _result(
        definition,
        comps,
        partial,
        band_index,
        min_band_index,
        tuple(missing),
        stale=tuple(stale),
        invalid=tuple(invalid),
        sources=sources,
    )


def assemble_news2(
    latest: Mapping[str, tuple[float | None, int]],
    now_us: int,
    policy: AssemblyPolicy = DEFAULT_POLICY,
    *,
    spo2_scale: int = 1,
    definition: ScoreDefinition = NEWS2,
) -> ScoreResult:
    """NEWS2 from a bed's latest values (see the module docstring for the rules)."""
    return assemble(definition, latest, now_us, policy, spo2_scale=spo2_scale)


def assemble_mews(
    latest: Mapping[str, tuple[float | None, int]],
    now_us: int,
    policy: AssemblyPolicy = DEFAULT_POLICY,
    *,
    definition: ScoreDefinition = MEWS,
) -> ScoreResult:
    return assemble(definition, latest, now_us, policy)


def assemble_qsofa(
    latest: Mapping[str, tuple[float | None, int]],
    now_us: int,
    policy: AssemblyPolicy = DEFAULT_POLICY,
    *,
    definition: ScoreDefinition = QSOFA,
) -> ScoreResult:
    return assemble(definition, latest, now_us, policy)
