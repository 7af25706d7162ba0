"""Beat-by-beat and run scoring of ventricular-beat calls, after ANSI/AAMI EC57.

EC57 (Testing and reporting performance results of cardiac rhythm and ST segment measurement
algorithms) matches each reference beat with the nearest detected beat within 150 ms and
counts, for ventricular ectopic beats (VEB):

- Se = Vv / (all reference V beats, matched or not);
- +P = Vv / (detected beats called V whose reference beat is N, S or V) -- reference fusion
  beats (F) and unclassifiable/paced beats (Q) called V are not counted against +P.

The AAMI classes of the MIT-BIH beat labels: N = N L R e j, S = A a J S, V = V E, F = F,
Q = / f Q. EC57 leaves the first 5 minutes of each record out (a learning period) and
recommends leaving out the paced records (MIT-BIH 102, 104, 107, 217); the callers choose
(``from_sample``) and report which.

Runs (EC57 counts couplets, short runs and long runs): maximal sequences of consecutive V
beats; a couplet has 2 beats, a short run 3-5, a long run 6 or more. A reference run counts as
found when a detected run of the same kind overlaps it (first beat - 150 ms to last beat +
150 ms); a detected run counts as true when a reference run of the same kind overlaps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

AAMI_CLASS: Final[dict[str, str]] = {
    **dict.fromkeys("NLRej", "N"),
    **dict.fromkeys("AaJS", "S"),
    **dict.fromkeys("VE", "V"),
    "F": "F",
    **dict.fromkeys("/fQ", "Q"),
}
PACED_MITDB: Final = ("102", "104", "107", "217")
LEARNING_S: Final = 300.0
RUN_KINDS: Final = ("couplet", "short run", "long run")


@dataclass(slots=True)
class VebCounts:
    """Vv: V called V; Vx: reference V not called V (missed or called otherwise); Nv, Sv, Fv,
    Qv: reference N, S, F, Q called V; Ov: a V call with no reference beat within 150 ms."""

    vv: int = 0
    vx: int = 0
    nv: int = 0
    sv: int = 0
    fv: int = 0
    qv: int = 0
    ov: int = 0

    def add(self, other: VebCounts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def se(self) -> float:
        return 100.0 * self.vv / max(self.vv + self.vx, 1)

    @property
    def ppv(self) -> float:
        """+P as EC57: false V calls on reference N and S beats only."""
        return 100.0 * self.vv / max(self.vv + self.nv + self.sv, 1)

    @property
    def ppv_with_extra(self) -> float:
        """+P also counting V calls without a reference beat as false."""
        return 100.0 * self.vv / max(self.vv + self.nv + self.sv + self.ov, 1)


def reference_classes(symbols: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.str_]]:
    """Which annotations are beats, and their AAMI class ("" for non-beats)."""
    sym = np.asarray(symbols, dtype=str)
    cls = np.array([AAMI_CLASS.get(s, "") for s in sym.tolist()], dtype="<U1")
    return cls != "", cls


def match_beats(ref: ArrayLike, det: ArrayLike, tol: int) -> NDArray[np.int64]:
    """For each reference beat, the index of its matched detected beat (-1 when none).

    Each detected beat matches at most one reference beat: reference beats are taken in time
    order and paired with the nearest detected beat within ``tol`` samples not yet taken."""
    r = np.asarray(ref, dtype=np.int64)
    d = np.asarray(det, dtype=np.int64)
    if r.ndim != 1 or d.ndim != 1 or tol < 0:
        raise ValueError(f"need 1-D sample arrays and tol >= 0, got {r.shape}, {d.shape}, {tol}")
    if (np.diff(r) < 0).any() or (np.diff(d) < 0).any():
        raise ValueError("reference and detected samples must be sorted")
    out = np.full(r.shape[0], -1, dtype=np.int64)
    taken = np.zeros(d.shape[0], dtype=bool)
    for i, s in enumerate(r.tolist()):
        j = int(np.searchsorted(d, s - tol))
        best = -1
        best_dist = tol + 1
        while j < d.shape[0] and d[j] <= s + tol:
            dist = abs(int(d[j]) - s)
            if not taken[j] and dist < best_dist:
                best, best_dist = j, dist
            j += 1
        if best >= 0:
            taken[best] = True
            out[i] = best
    return out


def veb_counts(
    ref: ArrayLike,
    ref_class: ArrayLike,
    det: ArrayLike,
    det_v: ArrayLike,
    tol: int,
    from_sample: int = 0,
) -> VebCounts:
    """EC57 VEB counts of one record, over beats at or after ``from_sample``.

    ``ref``/``ref_class``: reference beats and their AAMI classes; ``det``/``det_v``: detected
    beats and whether each was called ventricular."""
    r = np.asarray(ref, dtype=np.int64)
    rc = np.asarray(ref_class, dtype=str)
    d = np.asarray(det, dtype=np.int64)
    dv = np.asarray(det_v, dtype=bool)
    if rc.shape != r.shape or dv.shape != d.shape:
        raise ValueError("each beat needs one class and each detection one call")
    m = match_beats(r, d, tol)
    c = VebCounts()
    matched_det = np.zeros(d.shape[0], dtype=bool)
    for i in range(r.shape[0]):
        j = int(m[i])
        if j >= 0:
            matched_det[j] = True
        if r[i] < from_sample:
            continue
        called_v = j >= 0 and bool(dv[j])
        k = rc[i]
        if k == "V":
            if called_v:
                c.vv += 1
            else:
                c.vx += 1
        elif called_v:
            if k == "N":
                c.nv += 1
            elif k == "S":
                c.sv += 1
            elif k == "F":
                c.fv += 1
            else:
                c.qv += 1
    c.ov = int((dv & ~matched_det & (d >= from_sample)).sum())
    return c


def v_runs(samples: ArrayLike, is_v: ArrayLike) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive V beats of length >= 2, as (first sample, last sample, n)."""
    s = np.asarray(samples, dtype=np.int64)
    v = np.asarray(is_v, dtype=bool)
    out: list[tuple[int, int, int]] = []
    i = 0
    n = s.shape[0]
    while i < n:
        if not v[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and v[j + 1]:
            j += 1
        if j > i:
            out.append((int(s[i]), int(s[j]), j - i + 1))
        i = j + 1
    return out


def run_kind(n_beats: int) -> str:
    if n_beats == 2:
        return "couplet"
    return "short run" if n_beats <= 5 else "long run"


@dataclass(slots=True)
class RunCounts:
    """Per kind of run: reference runs found / all, detected runs true / all."""

    ref_found: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RUN_KINDS, 0))
    ref_all: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RUN_KINDS, 0))
    det_true: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RUN_KINDS, 0))
    det_all: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RUN_KINDS, 0))

    def add(self, other: RunCounts) -> None:
        for mine, theirs in (
            (self.ref_found, other.ref_found),
            (self.ref_all, other.ref_all),
            (self.det_true, other.det_true),
            (self.det_all, other.det_all),
        ):
            for k in RUN_KINDS:
                mine[k] += theirs[k]


def run_counts(
    ref_runs: list[tuple[int, int, int]],
    det_runs: list[tuple[int, int, int]],
    tol: int,
    from_sample: int = 0,
) -> RunCounts:
    """Match runs of the same kind by overlap (see the module docstring)."""
    c = RunCounts()

    def overlaps(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
        return a[0] - tol <= b[1] and b[0] <= a[1] + tol and run_kind(a[2]) == run_kind(b[2])

    refs = [r for r in ref_runs if r[0] >= from_sample]
    dets = [d for d in det_runs if d[0] >= from_sample]
    for r in refs:
        k = run_kind(r[2])
        c.ref_all[k] += 1
        c.ref_found[k] += any(overlaps(r, d) for d in dets)
    for d in dets:
        k = run_kind(d[2])
        c.det_all[k] += 1
        c.det_true[k] += any(overlaps(d, r) for r in refs)
    return c
