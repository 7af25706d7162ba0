"""Score definitions: thresholds as versioned data, read by one evaluator.

A definition is a plain mapping (JSON-compatible), so a hospital can run a local variant (a
local MEWS, say) by writing a file rather than code; :func:`definition_from_mapping` checks it
and every score result names the ``id`` (``name/version``) of the definition that produced it.

The layout::

    name, version, source          what it is and where the numbers come from
    inputs[]                       name, unit, low..high (physically possible; outside = error),
                                   resolution (the chart's grid: 1 or 0.1), labels (categorical),
                                   values (the only allowed values), default, missing_allowed
    components[]                   name, variants[]: when {input: value}, input, bands[]
                                   bands: [lo, hi, points], inclusive, in the input's unit;
                                   lo of the first and hi of the last are null (open-ended);
                                   consecutive bands meet on the grid (hi + resolution == lo)
    risk[]                         band, min_total, min_single (highest single component),
                                   response, monitoring; most severe first; the first row whose
                                   minima are met applies; the last row has both minima 0

The built-in definitions below are transcribed from the published tables, cited in ``source``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import numpy as np

from eicu.codes import BY_KEY
from eicu.errors import ScoreDefinitionError
from eicu.kernels.scores import PackedTables

ACVPU_LABELS: Final[tuple[str, ...]] = BY_KEY["ACVPU"].labels  # A C V P U -> 0..4
O2_LABELS: Final[tuple[str, ...]] = BY_KEY["O2"].labels  # air, oxygen -> 0, 1


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    unit: str
    low: float
    high: float
    resolution: float = 1.0
    labels: tuple[str, ...] = ()
    values: tuple[float, ...] = ()
    default: float | None = None
    missing_allowed: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True)
class Band:
    lo: float | None
    hi: float | None
    points: int


@dataclass(frozen=True, slots=True)
class Variant:
    when: tuple[tuple[str, float], ...]
    input: str
    bands: tuple[Band, ...]


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    variants: tuple[Variant, ...]


@dataclass(frozen=True, slots=True)
class RiskRow:
    band: str
    min_total: int
    min_single: int = 0
    response: str = ""
    monitoring: str = ""


@dataclass(frozen=True)
class ScoreDefinition:
    name: str
    version: str
    source: str
    inputs: tuple[InputSpec, ...]
    components: tuple[Component, ...]
    risk: tuple[RiskRow, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.name}/{self.version}"

    @cached_property
    def input_index(self) -> dict[str, int]:
        return {spec.name: i for i, spec in enumerate(self.inputs)}

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    @cached_property
    def packed(self) -> PackedTables:
        return _pack(self)


def _fail(path: str, detail: str) -> ScoreDefinitionError:
    return ScoreDefinitionError(path, detail)


def _num(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, f"expected a finite number, got {value!r}")
    return float(value)


def _str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"expected a non-empty string, got {value!r}")
    return value


def _chart(value: float, scale: float) -> int:
    return round(value * scale)


def _scale(resolution: float, path: str) -> float:
    scale = 1.0 / resolution
    if resolution <= 0 or abs(scale - round(scale)) > 1e-9:
        raise _fail(path, f"resolution must be 1/k for a whole k (1, 0.1, ...), got {resolution}")
    return float(round(scale))


def _parse_input(raw: object, path: str) -> InputSpec:
    if not isinstance(raw, Mapping):
        raise _fail(path, "expected an object")
    name = _str(raw.get("name"), f"{path}.name")
    low = _num(raw.get("low"), f"{path}.low")
    high = _num(raw.get("high"), f"{path}.high")
    if low > high:
        raise _fail(path, f"low {low} is above high {high}")
    resolution = _num(raw.get("resolution", 1), f"{path}.resolution")
    _scale(resolution, f"{path}.resolution")
    labels = tuple(_str(x, f"{path}.labels") for x in raw.get("labels", ()))
    values = tuple(_num(x, f"{path}.values") for x in raw.get("values", ()))
    default_raw = raw.get("default")
    default = None if default_raw is None else _num(default_raw, f"{path}.default")
    missing_allowed = raw.get("missing_allowed", True)
    if not isinstance(missing_allowed, bool):
        raise _fail(f"{path}.missing_allowed", "expected true or false")
    if not missing_allowed and default is None:
        raise _fail(path, "an input that cannot be missing needs a default")
    if default is not None and values and default not in values:
        raise _fail(f"{path}.default", f"{default} is not one of {values}")
    return InputSpec(
        name=name,
        unit=str(raw.get("unit", "")),
        low=low,
        high=high,
        resolution=resolution,
        labels=labels,
        values=values,
        default=default,
        missing_allowed=missing_allowed,
        description=str(raw.get("description", "")),
    )


def _parse_bands(raw: object, spec: InputSpec, path: str) -> tuple[Band, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise _fail(path, "expected a non-empty list of [lo, hi, points]")
    scale = _scale(spec.resolution, path)
    bands: list[Band] = []
    for k, row in enumerate(raw):
        p = f"{path}[{k}]"
        if not isinstance(row, Sequence) or isinstance(row, str) or len(row) != 3:
            raise _fail(p, f"expected [lo, hi, points], got {row!r}")
        lo = None if row[0] is None else _num(row[0], f"{p}.lo")
        hi = None if row[1] is None else _num(row[1], f"{p}.hi")
        pts = row[2]
        if isinstance(pts, bool) or not isinstance(pts, int) or not 0 <= pts <= 100:
            raise _fail(f"{p}.points", f"expected a whole number 0..100, got {pts!r}")
        for bound in (lo, hi):
            if bound is not None and abs(bound * scale - round(bound * scale)) > 1e-6:
                raise _fail(p, f"bound {bound} is not on the {spec.resolution} grid")
        if (lo is None) != (k == 0):
            raise _fail(p, "only the first band is open below (lo null)")
        if (hi is None) != (k == len(raw) - 1):
            raise _fail(p, "only the last band is open above (hi null)")
        if lo is not None and hi is not None and _chart(lo, scale) > _chart(hi, scale):
            raise _fail(p, f"lo {lo} is above hi {hi}")
        if k > 0:
            prev_hi = bands[-1].hi
            if lo is None or prev_hi is None or _chart(lo, scale) != _chart(prev_hi, scale) + 1:
                raise _fail(p, f"band starts at {lo} but the previous one ends at {prev_hi}")
        bands.append(Band(lo, hi, pts))
    return tuple(bands)


def _parse_component(raw: object, inputs: Mapping[str, InputSpec], path: str) -> Component:
    if not isinstance(raw, Mapping):
        raise _fail(path, "expected an object")
    name = _str(raw.get("name"), f"{path}.name")
    variants_raw = raw.get("variants")
    if not isinstance(variants_raw, Sequence) or isinstance(variants_raw, str) or not variants_raw:
        raise _fail(f"{path}.variants", "expected a non-empty list")
    variants: list[Variant] = []
    for k, v in enumerate(variants_raw):
        p = f"{path}.variants[{k}]"
        if not isinstance(v, Mapping):
            raise _fail(p, "expected an object")
        input_name = _str(v.get("input"), f"{p}.input")
        if input_name not in inputs:
            raise _fail(f"{p}.input", f"unknown input {input_name!r}")
        when_raw = v.get("when", {})
        if not isinstance(when_raw, Mapping):
            raise _fail(f"{p}.when", "expected an object {input: value}")
        when: list[tuple[str, float]] = []
        for cond_name, cond_value in when_raw.items():
            if cond_name not in inputs:
                raise _fail(f"{p}.when", f"unknown input {cond_name!r}")
            value = _num(cond_value, f"{p}.when.{cond_name}")
            spec = inputs[cond_name]
            if spec.values and value not in spec.values:
                raise _fail(f"{p}.when.{cond_name}", f"{value} is not one of {spec.values}")
            when.append((cond_name, value))
        bands = _parse_bands(v.get("bands"), inputs[input_name], f"{p}.bands")
        variants.append(Variant(tuple(when), input_name, bands))
    return Component(name, tuple(variants))


def _parse_risk(raw: object, path: str) -> tuple[RiskRow, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise _fail(path, "expected a non-empty list")
    rows: list[RiskRow] = []
    for k, r in enumerate(raw):
        p = f"{path}[{k}]"
        if not isinstance(r, Mapping):
            raise _fail(p, "expected an object")
        min_total = r.get("min_total", 0)
        min_single = r.get("min_single", 0)
        for key, val in (("min_total", min_total), ("min_single", min_single)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise _fail(f"{p}.{key}", f"expected a whole number >= 0, got {val!r}")
        rows.append(
            RiskRow(
                band=_str(r.get("band"), f"{p}.band"),
                min_total=min_total,
                min_single=min_single,
                response=str(r.get("response", "")),
                monitoring=str(r.get("monitoring", "")),
            )
        )
    if rows[-1].min_total != 0 or rows[-1].min_single != 0:
        raise _fail(f"{path}[{len(rows) - 1}]", "the last row must apply to any score (minima 0)")
    return tuple(rows)


def definition_from_mapping(raw: Mapping[str, Any]) -> ScoreDefinition:
    """Check a definition (as loaded from JSON) and build it; errors name the bad entry."""
    if not isinstance(raw, Mapping):
        raise _fail("$", "expected an object")
    name = _str(raw.get("name"), "name")
    version = _str(raw.get("version"), "version")
    inputs_raw = raw.get("inputs")
    if not isinstance(inputs_raw, Sequence) or isinstance(inputs_raw, str) or not inputs_raw:
        raise _fail("inputs", "expected a non-empty list")
    inputs = tuple(_parse_input(x, f"inputs[{i}]") for i, x in enumerate(inputs_raw))
    by_name = {spec.name: spec for spec in inputs}
    if len(by_name) != len(inputs):
        raise _fail("inputs", "input names repeat")
    comps_raw = raw.get("components")
    if not isinstance(comps_raw, Sequence) or isinstance(comps_raw, str) or not comps_raw:
        raise _fail("components", "expected a non-empty list")
    components = tuple(
        _parse_component(c, by_name, f"components[{i}]") for i, c in enumerate(comps_raw)
    )
    if len({c.name for c in components}) != len(components):
        raise _fail("components", "component names repeat")
    risk = _parse_risk(raw.get("risk"), "risk")
    return ScoreDefinition(
        name=name,
        version=version,
        source=str(raw.get("source", "")),
        inputs=inputs,
        components=components,
        risk=risk,
        raw=dict(raw),
    )


def load_definition(path: str | Path) -> ScoreDefinition:
    """Read a definition from a JSON file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ScoreDefinitionError(str(path), f"cannot read a JSON definition: {exc}") from exc
    return definition_from_mapping(raw)


def _pack(d: ScoreDefinition) -> PackedTables:
    idx = d.input_index
    comp_var_start = [0]
    var_input: list[int] = []
    var_scale: list[float] = []
    var_cond_start = [0]
    cond_input: list[int] = []
    cond_value: list[float] = []
    var_edge_start = [0]
    edges: list[float] = []
    var_point_start: list[int] = []
    points: list[int] = []
    for comp in d.components:
        for v in comp.variants:
            spec = d.inputs[idx[v.input]]
            scale = _scale(spec.resolution, v.input)
            var_input.append(idx[v.input])
            var_scale.append(scale)
            for cname, cval in v.when:
                cond_input.append(idx[cname])
                cond_value.append(cval)
            var_cond_start.append(len(cond_input))
            edges.extend(float(_chart(b.lo, scale)) for b in v.bands[1:] if b.lo is not None)
            var_edge_start.append(len(edges))
            var_point_start.append(len(points))
            points.extend(b.points for b in v.bands)
        comp_var_start.append(len(var_input))
    return PackedTables(
        comp_var_start=np.array(comp_var_start, dtype=np.int64),
        var_input=np.array(var_input, dtype=np.int64),
        var_scale=np.array(var_scale, dtype=np.float64),
        var_cond_start=np.array(var_cond_start, dtype=np.int64),
        cond_input=np.array(cond_input, dtype=np.int64),
        cond_value=np.array(cond_value, dtype=np.float64),
        var_edge_start=np.array(var_edge_start, dtype=np.int64),
        edges=np.array(edges, dtype=np.float64),
        var_point_start=np.array(var_point_start, dtype=np.int64),
        points=np.array(points, dtype=np.int8),
        band_min_total=np.array([r.min_total for r in d.risk], dtype=np.int64),
        band_min_single=np.array([r.min_single for r in d.risk], dtype=np.int64),
    )


# ---------------------------------------------------------------------------------------------
# Built-in definitions. Physically possible ranges come from eicu.codes (outside them: an error).


def _range(key: str) -> dict[str, float]:
    p = BY_KEY[key]
    return {"low": p.low, "high": p.high}


_RR = {"name": "rr", "unit": "/min", **_range("RR"), "resolution": 1}
_SBP = {"name": "sbp", "unit": "mmHg", **_range("NIBP_SYS"), "resolution": 1}
_HR = {"name": "hr", "unit": "/min", **_range("HR"), "resolution": 1}
_TEMP = {"name": "temp_c", "unit": "Cel", **_range("TEMP"), "resolution": 0.1}
_SPO2 = {"name": "spo2", "unit": "%", **_range("SPO2"), "resolution": 1}
_ACVPU = {
    "name": "acvpu",
    "unit": "{ACVPU}",
    **_range("ACVPU"),
    "labels": list(ACVPU_LABELS),
    "values": [0, 1, 2, 3, 4],
    "description": "level of consciousness: 0 A, 1 C (new confusion), 2 V, 3 P, 4 U",
}
_O2 = {
    "name": "on_oxygen",
    "unit": "{bool}",
    **_range("O2"),
    "labels": list(O2_LABELS),
    "values": [0, 1],
    "description": "supplemental oxygen: 0 air, 1 oxygen",
}

# Royal College of Physicians, National Early Warning Score (NEWS) 2, 2017: Chart 1 (scoring),
# Chart 3 (clinical risk thresholds), Chart 4 (clinical response and monitoring frequency).
NEWS2_RCP_2017: Final[dict[str, Any]] = {
    "name": "news2",
    "version": "rcp-2017",
    "source": (
        "Royal College of Physicians. National Early Warning Score (NEWS) 2: Standardising the "
        "assessment of acute-illness severity in the NHS. London: RCP, 2017. Charts 1, 3 and 4."
    ),
    "inputs": [
        _RR,
        _SPO2,
        _O2,
        _SBP,
        _HR,
        _ACVPU,
        _TEMP,
        {
            "name": "spo2_scale",
            "unit": "{scale}",
            "low": 1,
            "high": 2,
            "values": [1, 2],
            "default": 1,
            "missing_allowed": False,
            "description": (
                "SpO2 scale 2 only for a patient a clinician has flagged with hypercapnic "
                "respiratory failure (target 88-92 %)"
            ),
        },
    ],
    "components": [
        {
            "name": "rr",
            "variants": [
                {
                    "input": "rr",
                    "bands": [[None, 8, 3], [9, 11, 1], [12, 20, 0], [21, 24, 2], [25, None, 3]],
                }
            ],
        },
        {
            "name": "spo2",
            "variants": [
                {
                    "when": {"spo2_scale": 1},
                    "input": "spo2",
                    "bands": [[None, 91, 3], [92, 93, 2], [94, 95, 1], [96, None, 0]],
                },
                {
                    "when": {"spo2_scale": 2, "on_oxygen": 0},
                    "input": "spo2",
                    "bands": [[None, 83, 3], [84, 85, 2], [86, 87, 1], [88, None, 0]],
                },
                {
                    "when": {"spo2_scale": 2, "on_oxygen": 1},
                    "input": "spo2",
                    "bands": [
                        [None, 83, 3],
                        [84, 85, 2],
                        [86, 87, 1],
                        [88, 92, 0],
                        [93, 94, 1],
                        [95, 96, 2],
                        [97, None, 3],
                    ],
                },
            ],
        },
        {
            "name": "on_oxygen",
            "variants": [{"input": "on_oxygen", "bands": [[None, 0, 0], [1, None, 2]]}],
        },
        {
            "name": "sbp",
            "variants": [
                {
                    "input": "sbp",
                    "bands": [
                        [None, 90, 3],
                        [91, 100, 2],
                        [101, 110, 1],
                        [111, 219, 0],
                        [220, None, 3],
                    ],
                }
            ],
        },
        {
            "name": "hr",
            "variants": [
                {
                    "input": "hr",
                    "bands": [
                        [None, 40, 3],
                        [41, 50, 1],
                        [51, 90, 0],
                        [91, 110, 1],
                        [111, 130, 2],
                        [131, None, 3],
                    ],
                }
            ],
        },
        {
            "name": "acvpu",
            "variants": [{"input": "acvpu", "bands": [[None, 0, 0], [1, None, 3]]}],
        },
        {
            "name": "temp_c",
            "variants": [
                {
                    "input": "temp_c",
                    "bands": [
                        [None, 35.0, 3],
                        [35.1, 36.0, 1],
                        [36.1, 38.0, 0],
                        [38.1, 39.0, 1],
                        [39.1, None, 2],
                    ],
                }
            ],
        },
    ],
    "risk": [
        {
            "band": "high",
            "min_total": 7,
            "response": "emergency response",
            "monitoring": "continuous monitoring of vital signs",
        },
        {
            "band": "medium",
            "min_total": 5,
            "response": "urgent response",
            "monitoring": "minimum 1-hourly",
        },
        {
            "band": "low-medium",
            "min_total": 0,
            "min_single": 3,
            "response": "urgent ward-based response",
            "monitoring": "minimum 1-hourly",
        },
        {
            "band": "low",
            "min_total": 1,
            "response": "ward-based response: registered nurse to assess",
            "monitoring": "minimum 4-6-hourly",
        },
        {
            "band": "low",
            "min_total": 0,
            "response": "continue routine NEWS monitoring",
            "monitoring": "minimum 12-hourly",
        },
    ],
}

# Subbe CP, Kruger M, Rutherford P, Gemmel L. Validation of a modified Early Warning Score in
# medical admissions. QJM 2001;94(10):521-526, Table 1. The table writes SBP "<70 / 71-80" and
# HR "<40 / 41-50"; on the whole-number grid the lower bands are read as "<= 70" and "<= 40"
# (so that 70 mmHg and 40 /min score), as in later reproductions of the table. Temperature
# "<35" is <= 34.9 on the 0.1 grid. AVPU has no C: new confusion (C) is scored as V (1 point),
# a local choice stated here. Risk: Subbe et al. found a score of 5 or more associated with
# increased risk of death and of ICU/HDU admission.
MEWS_SUBBE_2001: Final[dict[str, Any]] = {
    "name": "mews",
    "version": "subbe-2001",
    "source": (
        "Subbe CP, Kruger M, Rutherford P, Gemmel L. Validation of a modified Early Warning "
        "Score in medical admissions. QJM 2001;94:521-526, Table 1; new confusion (C) scored "
        "as V."
    ),
    "inputs": [_SBP, _HR, _RR, _TEMP, _ACVPU],
    "components": [
        {
            "name": "sbp",
            "variants": [
                {
                    "input": "sbp",
                    "bands": [
                        [None, 70, 3],
                        [71, 80, 2],
                        [81, 100, 1],
                        [101, 199, 0],
                        [200, None, 2],
                    ],
                }
            ],
        },
        {
            "name": "hr",
            "variants": [
                {
                    "input": "hr",
                    "bands": [
                        [None, 40, 2],
                        [41, 50, 1],
                        [51, 100, 0],
                        [101, 110, 1],
                        [111, 129, 2],
                        [130, None, 3],
                    ],
                }
            ],
        },
        {
            "name": "rr",
            "variants": [
                {
                    "input": "rr",
                    "bands": [[None, 8, 2], [9, 14, 0], [15, 20, 1], [21, 29, 2], [30, None, 3]],
                }
            ],
        },
        {
            "name": "temp_c",
            "variants": [
                {"input": "temp_c", "bands": [[None, 34.9, 2], [35.0, 38.4, 0], [38.5, None, 2]]}
            ],
        },
        {
            "name": "acvpu",
            "variants": [
                # ordinal A0 C1 V2 P3 U4 -> 0, 1, 1, 2, 3
                {"input": "acvpu", "bands": [[None, 0, 0], [1, 2, 1], [3, 3, 2], [4, None, 3]]}
            ],
        },
    ],
    "risk": [
        {"band": "high", "min_total": 5, "response": "increased risk: medical review"},
        {"band": "low", "min_total": 0, "response": "routine observation"},
    ],
}

# Seymour CW, Liu VX, Iwashyna TJ, et al. Assessment of clinical criteria for sepsis: for the
# Third International Consensus Definitions for Sepsis and Septic Shock (Sepsis-3). JAMA
# 2016;315(8):762-774: respiratory rate >= 22/min, altered mentation (GCS < 15), systolic blood
# pressure <= 100 mmHg; 2 or more is positive. Altered mentation is read from ACVPU: anything
# other than A (including new confusion) scores 1.
QSOFA_SEYMOUR_2016: Final[dict[str, Any]] = {
    "name": "qsofa",
    "version": "seymour-2016",
    "source": (
        "Seymour CW et al. Assessment of clinical criteria for sepsis (Sepsis-3). JAMA "
        "2016;315:762-774; altered mentation read as ACVPU other than A."
    ),
    "inputs": [_RR, _SBP, _ACVPU],
    "components": [
        {"name": "rr", "variants": [{"input": "rr", "bands": [[None, 21, 0], [22, None, 1]]}]},
        {"name": "sbp", "variants": [{"input": "sbp", "bands": [[None, 100, 1], [101, None, 0]]}]},
        {
            "name": "acvpu",
            "variants": [{"input": "acvpu", "bands": [[None, 0, 0], [1, None, 1]]}],
        },
    ],
    "risk": [
        {"band": "positive", "min_total": 2, "response": "consider sepsis: assess organ function"},
        {"band": "negative", "min_total": 0},
    ],
}

NEWS2: Final[ScoreDefinition] = definition_from_mapping(NEWS2_RCP_2017)
MEWS: Final[ScoreDefinition] = definition_from_mapping(MEWS_SUBBE_2001)
QSOFA: Final[ScoreDefinition] = definition_from_mapping(QSOFA_SEYMOUR_2016)

BUILTIN: Final[dict[str, ScoreDefinition]] = {d.name: d for d in (NEWS2, MEWS, QSOFA)}
