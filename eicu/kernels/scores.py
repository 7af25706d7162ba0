"""Step-table evaluation of early-warning scores over many beds at once.

A score definition (see :mod:`eicu.scores.definitions`) is packed into flat arrays: each
component has one or more *variants* (a table plus the conditions under which it applies, such
as NEWS2's SpO2 scale 2 on oxygen), each table is a step function over the *charted* value
(the measurement on the chart's grid, in chart units: whole breaths, tenths of a degree).

Charting rule: a value is charted to the nearest point of the chart's grid; a value exactly
halfway between two grid points (20.5 breaths/min, 38.05 °C, within ``TIE_EPS`` of a chart unit
to absorb binary floating-point representation) is charted to whichever of the two scores
higher, so rounding never hides a worse score.

Inputs are NaN where missing. A missing value (or a missing condition that decides which table
applies) makes that component missing (-1), never 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numpy.typing import NDArray

# fastmath without nnan/ninf: NaN marks a missing value and must propagate.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Half a chart unit, plus or minus this (in chart units), counts as exactly halfway.
TIE_EPS = 1e-9

MISSING = -1


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _points_at(charted: float, edges: NDArray[np.float64], e0: int, e1: int,
               points: NDArray[np.int8], p0: int) -> int:  # fmt: skip
    k = 0
    for e in range(e0, e1):
        if charted >= edges[e]:
            k += 1
        else:
            break
    return int(points[p0 + k])


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _score_table(
    x: NDArray[np.float64],
    comp_var_start: NDArray[np.int64],
    var_input: NDArray[np.int64],
    var_scale: NDArray[np.float64],
    var_cond_start: NDArray[np.int64],
    cond_input: NDArray[np.int64],
    cond_value: NDArray[np.float64],
    var_edge_start: NDArray[np.int64],
    edges: NDArray[np.float64],
    var_point_start: NDArray[np.int64],
    points: NDArray[np.int8],
    band_min_total: NDArray[np.int64],
    band_min_single: NDArray[np.int64],
    comps: NDArray[np.int8],
    total: NDArray[np.int16],
    partial: NDArray[np.int16],
    band: NDArray[np.int8],
    min_band: NDArray[np.int8],
) -> None:
    n = x.shape[1]
    n_comp = comp_var_start.shape[0] - 1
    n_band = band_min_total.shape[0]
    for i in range(n):
        tot = 0
        top = 0
        complete = True
        for j in range(n_comp):
            result = MISSING
            for v in range(comp_var_start[j], comp_var_start[j + 1]):
                decided = True
                match = True
                for c in range(var_cond_start[v], var_cond_start[v + 1]):
                    cv = x[cond_input[c], i]
                    if math.isnan(cv):
                        decided = False
                        break
                    if cv != cond_value[c]:
                        match = False
                        break
                if not decided:
                    break
                if not match:
                    continue
                value = x[var_input[v], i]
                if math.isnan(value):
                    break
                e0 = var_edge_start[v]
                e1 = var_edge_start[v + 1]
                p0 = var_point_start[v]
                s = value * var_scale[v]
                f = math.floor(s)
                if abs(s - f - 0.5) <= TIE_EPS:
                    lo = _points_at(f, edges, e0, e1, points, p0)
                    hi = _points_at(f + 1.0, edges, e0, e1, points, p0)
                    result = lo if lo > hi else hi
                else:
                    result = _points_at(math.floor(s + 0.5), edges, e0, e1, points, p0)
                break
            comps[j, i] = result
            if result == MISSING:
                complete = False
            else:
                tot += result
                if result > top:
                    top = result
        partial[i] = tot
        b = n_band - 1
        for k in range(n_band):
            if tot >= band_min_total[k] and top >= band_min_single[k]:
                b = k
                break
        min_band[i] = b
        if complete:
            total[i] = tot
            band[i] = b
        else:
            total[i] = MISSING
            band[i] = MISSING


class PackedTables(NamedTuple):
    """A score definition flattened for :func:`score_tables` (built by eicu.scores)."""

    comp_var_start: NDArray[np.int64]  # variants of component j: [start[j], start[j+1])
    var_input: NDArray[np.int64]  # row of x holding the value the variant's table scores
    var_scale: NDArray[np.float64]  # chart units per input unit (1 / resolution)
    var_cond_start: NDArray[np.int64]  # conditions of variant v: [start[v], start[v+1])
    cond_input: NDArray[np.int64]  # row of x a condition tests
    cond_value: NDArray[np.float64]  # the value it must equal
    var_edge_start: NDArray[np.int64]  # table edges of variant v: [start[v], start[v+1])
    edges: NDArray[np.float64]  # charted value at which each band after the first starts
    var_point_start: NDArray[np.int64]  # points of variant v start here (n_edges + 1 of them)
    points: NDArray[np.int8]
    band_min_total: NDArray[np.int64]  # risk rows, most severe first; the last is a catch-all
    band_min_single: NDArray[np.int64]


class TableScores(NamedTuple):
    comps: NDArray[np.int8]  # (n_components, n): points, -1 where missing
    total: NDArray[np.int16]  # -1 where any component is missing
    partial: NDArray[np.int16]  # sum of the components present: a lower bound of the total
    band: NDArray[np.int8]  # risk row index, -1 where incomplete
    min_band: NDArray[np.int8]  # risk row of the partial sum: the least the band can be


def score_tables(x: NDArray[np.float64], packed: PackedTables) -> TableScores:
    """Score every column of ``x`` (inputs x beds, NaN where missing) against packed tables."""
    xx = np.ascontiguousarray(x, dtype=np.float64)
    if xx.ndim != 2:
        raise ValueError(f"need a 2-D (inputs, beds) array, got shape {xx.shape}")
    n_in = int(max(packed.var_input.max(initial=-1), packed.cond_input.max(initial=-1))) + 1
    if xx.shape[0] < n_in:
        raise ValueError(f"the tables read {n_in} input rows, got {xx.shape[0]}")
    n = xx.shape[1]
    n_comp = packed.comp_var_start.shape[0] - 1
    comps = np.empty((n_comp, n), dtype=np.int8)
    total = np.empty(n, dtype=np.int16)
    partial = np.empty(n, dtype=np.int16)
    band = np.empty(n, dtype=np.int8)
    min_band = np.empty(n, dtype=np.int8)
    _score_table(xx, *packed, comps, total, partial, band, min_band)
    return TableScores(comps, total, partial, band, min_band)
