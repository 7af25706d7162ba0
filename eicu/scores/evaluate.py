"""The one evaluator: any score definition, one patient or many beds at once.

Inputs are given by name (``rr``, ``spo2``, ``on_oxygen``, ``sbp``, ``hr``, ``acvpu``,
``temp_c``, ``spo2_scale``). A missing input is ``None`` (scalar) or NaN (array): the component
that needs it is reported missing and the score incomplete; nothing missing is ever scored as 0.
An impossible input (outside the physically possible range of :mod:`eicu.codes`, such as a
negative rate or SpO2 above 100 %, infinity, or a label that is not one of the input's labels)
raises :class:`~eicu.errors.ScoreInputError` naming the input.

Charting rule (see :mod:`eicu.kernels.scores`): a non-integer value is charted to the nearest
point of the chart's grid (whole numbers; tenths of a degree for temperature); a value exactly
halfway (20.5 /min, 38.05 °C) is charted to whichever neighbour scores higher.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from eicu.errors import ScoreInputError
from eicu.kernels.scores import MISSING, TableScores, score_tables
from eicu.scores.definitions import MEWS, NEWS2, QSOFA, InputSpec, ScoreDefinition


@dataclass(frozen=True)
class ScoreResult:
    """One score for one patient at one time.

    ``total`` and ``band`` are None unless ``complete``. ``partial_total`` sums the components
    that could be scored: the true total is at least that, and the band at least ``min_band``.
    ``missing`` names the inputs that were absent, ``stale`` those too old to use and
    ``invalid`` those with an impossible value (the last two only from assembly in time).
    """

    definition: str
    total: int | None
    partial_total: int
    components: dict[str, int | None]
    band: str | None
    min_band: str
    response: str | None
    monitoring: str | None
    complete: bool
    missing: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "definition": self.definition,
            "total": self.total,
            "components": dict(self.components),
            "band": self.band,
            "complete": self.complete,
            "partial_total": self.partial_total,
            "min_band": self.min_band,
            "response": self.response,
            "monitoring": self.monitoring,
            "missing": list(self.missing),
        }
        if self.stale:
            out["stale"] = list(self.stale)
        if self.invalid:
            out["invalid"] = list(self.invalid)
        if self.sources:
            out["sources"] = dict(self.sources)
        return out


@dataclass(frozen=True)
class ScoreBatch:
    """Scores for many beds: one column per bed, -1 where a value is missing or incomplete."""

    definition: ScoreDefinition
    components: dict[str, NDArray[np.int8]]
    total: NDArray[np.int16]
    partial_total: NDArray[np.int16]
    band_index: NDArray[np.int8]  # row of definition.risk, -1 where incomplete
    min_band_index: NDArray[np.int8]
    input_missing: dict[str, NDArray[np.bool_]]

    def __len__(self) -> int:
        return int(self.total.shape[0])

    @property
    def complete(self) -> NDArray[np.bool_]:
        return self.total != MISSING

    def _risk_field(self, attr: str, index: NDArray[np.int8]) -> NDArray[np.object_]:
        names = [getattr(r, attr) or None for r in self.definition.risk]
        return np.array([*names, None], dtype=object)[index]  # -1 picks the trailing None

    def band(self) -> NDArray[np.object_]:
        """The band name of each bed (None where incomplete)."""
        return self._risk_field("band", self.band_index)

    def min_band(self) -> NDArray[np.object_]:
        """The band each bed's partial total already proves (complete beds: their band)."""
        return self._risk_field("band", self.min_band_index)

    def response(self) -> NDArray[np.object_]:
        """The clinical response of each bed's band (None where incomplete or undefined)."""
        return self._risk_field("response", self.band_index)

    def monitoring(self) -> NDArray[np.object_]:
        """The monitoring frequency of each bed's band (None where incomplete or undefined)."""
        return self._risk_field("monitoring", self.band_index)

    def row(self, i: int) -> ScoreResult:
        """Bed ``i`` as a :class:`ScoreResult`."""
        comps = {
            name: (None if int(v[i]) == MISSING else int(v[i]))
            for name, v in self.components.items()
        }
        missing_comps = {name for name, v in comps.items() if v is None}
        missing = _missing_inputs(
            self.definition, missing_comps, {k: bool(v[i]) for k, v in self.input_missing.items()}
        )
        return _result(
            self.definition,
            comps,
            int(self.partial_total[i]),
            int(self.band_index[i]),
            int(self.min_band_index[i]),
            missing,
        )


def _missing_inputs(
    d: ScoreDefinition, missing_comps: set[str], is_missing: Mapping[str, bool]
) -> tuple[str, ...]:
    needed: list[str] = []
    for comp in d.components:
        if comp.name not in missing_comps:
            continue
        for v in comp.variants:
            for name in (*(c for c, _ in v.when), v.input):
                if is_missing.get(name, False) and name not in needed:
                    needed.append(name)
    return tuple(sorted(needed, key=d.input_index.__getitem__))


def _result(
    d: ScoreDefinition,
    comps: dict[str, int | None],
    partial: int,
    band_index: int,
    min_band_index: int,
    missing: tuple[str, ...],
    **extra: Any,
) -> ScoreResult:
    complete = band_index != MISSING
    row = d.risk[band_index] if complete else None
    return ScoreResult(
        definition=d.id,
        total=partial if complete else None,
        partial_total=partial,
        components=comps,
        band=row.band if row else None,
        min_band=d.risk[min_band_index].band,
        response=(row.response or None) if row else None,
        monitoring=(row.monitoring or None) if row else None,
        complete=complete,
        missing=missing,
        **extra,
    )


def _label_code(spec: InputSpec, value: str) -> float:
    wanted = value.strip().lower()
    for i, label in enumerate(spec.labels):
        if label.lower() == wanted:
            return float(i)
    raise ScoreInputError(
        spec.name, f"{value!r} is not one of {', '.join(spec.labels) or 'the allowed values'}"
    )


def _scalar(spec: InputSpec, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        return _label_code(spec, value)
    if isinstance(value, bool | np.bool_):
        if not spec.labels:
            raise ScoreInputError(spec.name, f"expected a number, got {value!r}")
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    raise ScoreInputError(spec.name, f"expected a number or None, got {type(value).__name__}")


def _column(spec: InputSpec, value: Any) -> NDArray[np.float64]:
    if value is None:
        return np.array(math.nan)
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind in "USO":
        flat = [_scalar(spec, v) for v in arr.ravel().tolist()]
        return np.array(flat, dtype=np.float64).reshape(arr.shape)
    raise ScoreInputError(spec.name, f"expected numbers, got an array of {arr.dtype}")


def _validate(spec: InputSpec, x: NDArray[np.float64]) -> None:
    nan = np.isnan(x)
    if spec.missing_allowed:
        ok = nan | ((x >= spec.low) & (x <= spec.high))
    else:
        ok = (x >= spec.low) & (x <= spec.high)
    if spec.values:
        ok &= nan | np.isin(x, spec.values)
    if not ok.all():
        i = int(np.flatnonzero(~ok.ravel())[0])
        bad = float(x.ravel()[i])
        where = f" (at index {i})" if x.ndim else ""
        if math.isnan(bad):
            raise ScoreInputError(spec.name, f"is required and cannot be missing{where}")
        if spec.values:
            allowed = ", ".join(
                f"{v:g}" + (f" ({spec.labels[int(v)]})" if int(v) < len(spec.labels) else "")
                for v in spec.values
            )
            raise ScoreInputError(spec.name, f"{bad:g} is not one of {allowed}{where}")
        raise ScoreInputError(
            spec.name,
            f"{bad:g} {spec.unit} is impossible: outside {spec.low:g}..{spec.high:g}{where}",
        )


def _validate_scalar(spec: InputSpec, x: float) -> None:
    """The one-value twin of :func:`_validate` (plain Python: one bed is not worth numpy)."""
    if math.isnan(x):
        if not spec.missing_allowed:
            raise ScoreInputError(spec.name, "is required and cannot be missing")
        return
    if spec.values and x not in spec.values:
        allowed = ", ".join(
            f"{v:g}" + (f" ({spec.labels[int(v)]})" if int(v) < len(spec.labels) else "")
            for v in spec.values
        )
        raise ScoreInputError(spec.name, f"{x:g} is not one of {allowed}")
    if not spec.low <= x <= spec.high:
        raise ScoreInputError(
            spec.name, f"{x:g} {spec.unit} is impossible: outside {spec.low:g}..{spec.high:g}"
        )


_SCALAR_TYPES = (type(None), bool, int, float, str, np.integer, np.floating, np.bool_)


def _stack(d: ScoreDefinition, inputs: Mapping[str, Any]) -> tuple[NDArray[np.float64], bool]:
    unknown = inputs.keys() - d.input_index.keys()
    if unknown:
        raise ScoreInputError(
            sorted(unknown)[0], f"is not an input of {d.id} (inputs: {', '.join(d.input_index)})"
        )
    if all(isinstance(v, _SCALAR_TYPES) for v in inputs.values()):
        row: list[float] = []
        for spec in d.inputs:
            raw = inputs.get(spec.name)
            if raw is None and spec.default is not None:
                raw = spec.default
            xv = raw if type(raw) is float else _scalar(spec, raw)  # (a float is itself)
            _validate_scalar(spec, xv)
            row.append(xv)
        return np.array(row, dtype=np.float64).reshape(-1, 1), True
    cols: list[NDArray[np.float64]] = []
    scalar = True
    for spec in d.inputs:
        value: Any = inputs.get(spec.name)
        if value is None and spec.default is not None:
            value = spec.default
        if np.ndim(value) == 0 and not isinstance(value, np.ndarray):
            col = np.array(_scalar(spec, value))
        else:
            scalar = False
            col = _column(spec, value)
        _validate(spec, col)
        cols.append(col)
    try:
        shape = np.broadcast_shapes(*(c.shape for c in cols))
    except ValueError as exc:
        raise ScoreInputError(
            "inputs", f"array shapes do not match: {[c.shape for c in cols]}"
        ) from exc
    if len(shape) > 1:
        raise ScoreInputError("inputs", f"expected 1-D arrays (one value per bed), got {shape}")
    n = shape[0] if shape else 1
    x = np.empty((len(cols), n), dtype=np.float64)
    for i, c in enumerate(cols):
        x[i] = c
    return x, scalar


def evaluate(d: ScoreDefinition, inputs: Mapping[str, Any]) -> ScoreResult | ScoreBatch:
    """Score ``inputs`` with definition ``d``: a :class:`ScoreResult` when every input is a
    scalar, else a :class:`ScoreBatch` with one column per bed (arrays broadcast together)."""
    x, scalar = _stack(d, inputs)
    out = score_tables(x, d.packed)
    if scalar:
        comps = _components_of_one(d, out)
        missing: tuple[str, ...] = ()
        if None in comps.values():
            is_missing = {
                spec.name: math.isnan(v) for spec, v in zip(d.inputs, x[:, 0].tolist(), strict=True)
            }
            missing = _missing_inputs(d, {k for k, v in comps.items() if v is None}, is_missing)
        return _result(
            d, comps, int(out.partial[0]), int(out.band[0]), int(out.min_band[0]), missing
        )
    return _batch(d, x, out)


def _components_of_one(d: ScoreDefinition, out: TableScores) -> dict[str, int | None]:
    """One bed's component points (None where an input is missing) from the kernel's output."""
    return {
        c.name: (None if p == MISSING else p)
        for c, p in zip(d.components, out.comps[:, 0].tolist(), strict=True)
    }


def _score_one(
    d: ScoreDefinition, inputs: Mapping[str, Any]
) -> tuple[dict[str, int | None], int, int, int]:
    """The components, partial total, band index and least band index of scalar ``inputs``
    (:func:`evaluate` without building its result, for a caller that builds its own)."""
    x, scalar = _stack(d, inputs)
    if not scalar:
        raise TypeError("one bed gives one result")
    out = score_tables(x, d.packed)
    return _components_of_one(d, out), int(out.partial[0]), int(out.band[0]), int(out.min_band[0])


def evaluate_array(d: ScoreDefinition, x: ArrayLike) -> ScoreBatch:
    """Score a ready (inputs x beds) float array in ``d.inputs`` order, NaN where missing.

    The fast path for callers that keep their beds in such an array; inputs are validated.
    """
    xx = np.asarray(x, dtype=np.float64)
    if xx.ndim != 2 or xx.shape[0] != len(d.inputs):
        raise ScoreInputError(
            "inputs", f"expected shape ({len(d.inputs)}, n_beds) for {d.id}, got {xx.shape}"
        )
    for i, spec in enumerate(d.inputs):
        _validate(spec, xx[i])
    return _batch(d, xx, score_tables(xx, d.packed))


def _batch(d: ScoreDefinition, x: NDArray[np.float64], out: TableScores) -> ScoreBatch:
    return ScoreBatch(
        definition=d,
        components={c.name: out.comps[j] for j, c in enumerate(d.components)},
        total=out.total,
        partial_total=out.partial,
        band_index=out.band,
        min_band_index=out.min_band,
        input_missing={spec.name: np.isnan(x[i]) for i, spec in enumerate(d.inputs)},
    )


Scalar = float | int | bool | str | None


@overload
def news2(
    *,
    rr: Scalar = ...,
    spo2: Scalar = ...,
    on_oxygen: Scalar = ...,
    sbp: Scalar = ...,
    hr: Scalar = ...,
    acvpu: Scalar = ...,
    temp_c: Scalar = ...,
    spo2_scale: Scalar = ...,
    definition: ScoreDefinition = ...,
) -> ScoreResult: ...
@overload
def news2(
    *,
    rr: ArrayLike | None = ...,
    spo2: ArrayLike | None = ...,
    on_oxygen: ArrayLike | None = ...,
    sbp: ArrayLike | None = ...,
    hr: ArrayLike | None = ...,
    acvpu: ArrayLike | None = ...,
    temp_c: ArrayLike | None = ...,
    spo2_scale: ArrayLike | None = ...,
    definition: ScoreDefinition = ...,
) -> ScoreBatch: ...
def news2(
    *,
    rr: Any = None,
    spo2: Any = None,
    on_oxygen: Any = None,
    sbp: Any = None,
    hr: Any = None,
    acvpu: Any = None,
    temp_c: Any = None,
    spo2_scale: Any = 1,
    definition: ScoreDefinition = NEWS2,
) -> ScoreResult | ScoreBatch:
    """NEWS2 (RCP 2017): a :class:`ScoreResult`, or a :class:`ScoreBatch` over arrays.

    ``rr`` breaths/min, ``spo2`` %, ``on_oxygen`` bool/0/1/"air"/"oxygen", ``sbp`` mmHg,
    ``hr`` /min, ``acvpu`` "A"/"C"/"V"/"P"/"U" or ordinal 0..4, ``temp_c`` °C,
    ``spo2_scale`` 1 or 2 (2 only for clinician-confirmed hypercapnic respiratory failure).
    """
    return evaluate(
        definition,
        {
            "rr": rr,
            "spo2": spo2,
            "on_oxygen": on_oxygen,
            "sbp": sbp,
            "hr": hr,
            "acvpu": acvpu,
            "temp_c": temp_c,
            "spo2_scale": spo2_scale,
        },
    )


@overload
def mews(
    *,
    sbp: Scalar = ...,
    hr: Scalar = ...,
    rr: Scalar = ...,
    temp_c: Scalar = ...,
    acvpu: Scalar = ...,
    definition: ScoreDefinition = ...,
) -> ScoreResult: ...
@overload
def mews(
    *,
    sbp: ArrayLike | None = ...,
    hr: ArrayLike | None = ...,
    rr: ArrayLike | None = ...,
    temp_c: ArrayLike | None = ...,
    acvpu: ArrayLike | None = ...,
    definition: ScoreDefinition = ...,
) -> ScoreBatch: ...
def mews(
    *,
    sbp: Any = None,
    hr: Any = None,
    rr: Any = None,
    temp_c: Any = None,
    acvpu: Any = None,
    definition: ScoreDefinition = MEWS,
) -> ScoreResult | ScoreBatch:
    """MEWS (Subbe et al. 2001, or a local definition): ScoreResult or ScoreBatch."""
    return evaluate(definition, {"sbp": sbp, "hr": hr, "rr": rr, "temp_c": temp_c, "acvpu": acvpu})


@overload
def qsofa(
    *, rr: Scalar = ..., sbp: Scalar = ..., acvpu: Scalar = ..., definition: ScoreDefinition = ...
) -> ScoreResult: ...
@overload
def qsofa(
    *,
    rr: ArrayLike | None = ...,
    sbp: ArrayLike | None = ...,
    acvpu: ArrayLike | None = ...,
    definition: ScoreDefinition = ...,
) -> ScoreBatch: ...
def qsofa(
    *, rr: Any = None, sbp: Any = None, acvpu: Any = None, definition: ScoreDefinition = QSOFA
) -> ScoreResult | ScoreBatch:
    """qSOFA (Seymour et al. 2016): ScoreResult or ScoreBatch."""
    return evaluate(definition, {"rr": rr, "sbp": sbp, "acvpu": acvpu})
