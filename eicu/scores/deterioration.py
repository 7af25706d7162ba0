"""Deterioration: a signal that rises when a bed's trend worsens, before a threshold is crossed.

One :class:`DeteriorationTracker` per bed. Feed it vital-sign samples (chunks of times and
values) and NEWS2 results as they come; each call returns a :class:`DeteriorationSignal`, an
input for the alarm engine. The signal is active when any of these holds:

``news2_rise``
    The latest NEWS2 is at least ``news2_rise`` (default 2) points above the lowest *complete*
    NEWS2 of the previous ``news2_window_s`` (default 6 h). An incomplete latest score counts
    by its partial total, a lower bound, so a rise it shows is certain.

``<KEY>_up`` / ``<KEY>_down`` (default HR and RR, upward)
    A one-sided CUSUM of the parameter against the patient's own baseline. Samples are
    summarised as the median of each ``bin_s`` (15 min) bin; the baseline is the median and
    the scaled MAD (1.4826 x MAD, floored at the parameter's ``min_sigma``) of the bin medians
    of the first ``baseline_s`` (2 h) of data, extended until ``baseline_min_bins`` (4) bins
    hold data. For each later bin, z = (median - baseline) / sigma (negated for a downward
    trend), S = max(0, S + z - k) with k = ``cusum_k`` (0.5); the trend is signalled while
    S >= ``cusum_h`` (5). The bin still open counts provisionally (its median so far), so a
    sparse reading acts as soon as it arrives. A step of 2 sigma is signalled in the 4th bin
    (1 h), of 1 sigma in the 10th; noise alone (iid normal bin medians at sigma) crosses on
    average about once in 930 bins (the in-control average run length of a one-sided CUSUM
    with k = 0.5, h = 5), less often when the floor on sigma applies.

Each trend also reports a robust slope (Theil-Sen, per hour) over the last ``slope_window_s``
(4 h) of bin medians, for display. Bins without data are skipped: nothing is imputed. A
bin is closed (and scored) when a sample of a later bin arrives, so samples must come in
time order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from eicu.codes import BY_KEY
from eicu.errors import ConfigError
from eicu.scores.evaluate import ScoreResult
from eicu.signal.stats import median

US_PER_S = 1_000_000
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x 1.4826 = its standard deviation


@dataclass(frozen=True, slots=True)
class TrendParam:
    direction: Literal["up", "down"]
    min_sigma: float  # in the parameter's unit: the smallest spread the baseline may claim


@dataclass(frozen=True)
class DeteriorationConfig:
    news2_rise: int = 2
    news2_window_s: float = 6 * 3600.0
    bin_s: float = 900.0
    baseline_s: float = 2 * 3600.0
    baseline_min_bins: int = 4
    cusum_k: float = 0.5
    cusum_h: float = 5.0
    slope_window_s: float = 4 * 3600.0
    trends: Mapping[str, TrendParam] = field(
        default_factory=lambda: {
            "HR": TrendParam("up", min_sigma=4.0),
            "RR": TrendParam("up", min_sigma=1.5),
        }
    )

    def __post_init__(self) -> None:
        if self.news2_rise < 1:
            raise ConfigError("news2_rise", f"must be >= 1, got {self.news2_rise}")
        for name in ("news2_window_s", "bin_s", "baseline_s", "cusum_h", "slope_window_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)}")
        if self.cusum_k < 0:
            raise ConfigError("cusum_k", f"must be >= 0, got {self.cusum_k}")
        if self.baseline_min_bins < 2:
            raise ConfigError("baseline_min_bins", "must be >= 2")
        for key, tp in self.trends.items():
            if key not in BY_KEY:
                raise ConfigError(f"trends.{key}", "not a parameter key of eicu.codes")
            if tp.direction not in ("up", "down") or not tp.min_sigma > 0:
                raise ConfigError(f"trends.{key}", f"bad direction or min_sigma: {tp}")


@dataclass(frozen=True, slots=True)
class TrendState:
    baseline: float | None  # None until the baseline is established
    sigma: float | None
    cusum: float
    last_bin_median: float | None
    slope_per_h: float | None
    signalled: bool


@dataclass(frozen=True, slots=True)
class DeteriorationSignal:
    time_us: int
    active: bool
    reasons: tuple[str, ...]
    news2: int | None  # the latest NEWS2 (partial total when incomplete)
    news2_rise: int | None  # its rise above the lowest complete NEWS2 in the window
    trends: dict[str, TrendState]


def theil_sen_slope(t: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Median of the pairwise slopes (NaN with fewer than two distinct times)."""
    dt = np.subtract.outer(t, t)
    dy = np.subtract.outer(y, y)
    upper = np.triu(np.ones_like(dt, dtype=bool), k=1) & (dt != 0)
    if not upper.any():
        return float("nan")
    return float(np.median(dy[upper] / dt[upper]))


class _Trend:
    def __init__(self, key: str, param: TrendParam, cfg: DeteriorationConfig) -> None:
        self.key = key
        self.sign = 1.0 if param.direction == "up" else -1.0
        self.param = param
        self.cfg = cfg
        # the open bin's samples (plain lists: most messages add one)
        self.pending_t: list[int] = []
        self.pending_v: list[float] = []
        self.first_us: int | None = None
        self.base_bins: list[float] = []
        self.baseline: float | None = None
        self.sigma: float | None = None
        self.cusum = 0.0
        self.bins: deque[tuple[int, float]] = deque()  # (bin start us, median)
        self.slope: float | None = None
        self.slope_bins = 0
        self.slope_last: int | None = None

    def feed_one(self, t_us: int, x: float, origin_us: int) -> None:
        """:meth:`feed` of one sample, in plain Python when it joins the open bin (most
        numerics messages)."""
        if not self._join_open_bin(t_us, x, origin_us):
            self._feed_arrays(np.array([t_us], dtype=np.int64), np.array([x]), origin_us)

    def _join_open_bin(self, t_us: int, x: float, origin_us: int) -> bool:
        """One sample in the bin still open (or the first): it joins it (a NaN is left out).
        False when it falls in a later bin, which closes the open one."""
        bin_us = int(self.cfg.bin_s * US_PER_S)
        pending = self.pending_t
        if pending and (pending[0] - origin_us) // bin_us < (t_us - origin_us) // bin_us:
            return False
        if math.isnan(x):
            return True
        if self.first_us is None:
            self.first_us = pending[0] if pending else t_us
        pending.append(t_us)
        self.pending_v.append(x)
        return True

    def feed(self, t: NDArray[np.int64], v: NDArray[np.float64], origin_us: int) -> None:
        if t.shape[0] == 1 and self._join_open_bin(int(t[0]), float(v[0]), origin_us):
            return
        self._feed_arrays(t, v, origin_us)

    def _feed_arrays(self, t: NDArray[np.int64], v: NDArray[np.float64], origin_us: int) -> None:
        bin_us = int(self.cfg.bin_s * US_PER_S)
        ok = ~np.isnan(v)
        if not ok.any() and not self.pending_t:
            return
        t_all = np.concatenate([np.array(self.pending_t, dtype=np.int64), t[ok]])
        v_all = np.concatenate([np.array(self.pending_v, dtype=np.float64), v[ok]])
        if t_all.size == 0:
            return
        if self.first_us is None:
            self.first_us = int(t_all[0])
        b = (t_all - origin_us) // bin_us
        current = (int(t[-1]) - origin_us) // bin_us  # the bin of the newest sample fed
        closed = b < current
        if closed.any():
            cb = b[closed]
            cv = v_all[closed]
            starts = np.flatnonzero(np.r_[True, cb[1:] != cb[:-1]])
            for s, e in zip(starts, np.r_[starts[1:], cb.size], strict=True):
                self._close(origin_us + int(cb[s]) * bin_us, float(np.median(cv[s:e])))
        self.pending_t = t_all[~closed].tolist()
        self.pending_v = v_all[~closed].tolist()

    def _close(self, start_us: int, median: float) -> None:
        self.bins.append((start_us, median))
        keep_from = start_us - int(self.cfg.slope_window_s * US_PER_S)
        while self.bins and self.bins[0][0] < keep_from:
            self.bins.popleft()
        if self.baseline is None or self.sigma is None:
            first_us = start_us if self.first_us is None else self.first_us
            in_window = start_us < first_us + self.cfg.baseline_s * US_PER_S
            if in_window or len(self.base_bins) < self.cfg.baseline_min_bins:
                self.base_bins.append(median)
                return
            arr = np.asarray(self.base_bins)
            self.baseline = float(np.median(arr))
            mad = float(np.median(np.abs(arr - self.baseline)))
            self.sigma = max(MAD_TO_SIGMA * mad, self.param.min_sigma)
        z = self.sign * (median - self.baseline) / self.sigma
        self.cusum = max(0.0, self.cusum + z - self.cfg.cusum_k)

    def _slope(self) -> float | None:
        if len(self.bins) < 2:
            return None
        t_h = np.array([b[0] for b in self.bins], dtype=np.float64) / (3600 * US_PER_S)
        y = np.array([b[1] for b in self.bins])
        s = theil_sen_slope(t_h - t_h[0], y)
        return None if np.isnan(s) else s

    def state(self) -> TrendState:
        if self.slope_bins != len(self.bins) or (
            self.bins and self.slope_last != self.bins[-1][0]
        ):  # recomputed only when a bin has closed
            self.slope = self._slope()
            self.slope_bins = len(self.bins)
            self.slope_last = self.bins[-1][0] if self.bins else None
        slope = self.slope
        cusum = self.cusum
        if self.baseline is not None and self.sigma is not None and self.pending_v:
            # the open bin counts provisionally, so a sparse reading acts when it arrives
            z = self.sign * (median(self.pending_v) - self.baseline) / self.sigma
            cusum = max(0.0, cusum + z - self.cfg.cusum_k)
        return TrendState(
            baseline=self.baseline,
            sigma=self.sigma,
            cusum=cusum,
            last_bin_median=self.bins[-1][1] if self.bins else None,
            slope_per_h=slope,
            signalled=self.baseline is not None and cusum >= self.cfg.cusum_h,
        )


class DeteriorationTracker:
    """Per-bed deterioration state (see the module docstring for the definition)."""

    def __init__(self, config: DeteriorationConfig | None = None) -> None:
        self.config = config or DeteriorationConfig()
        self._trends = {k: _Trend(k, p, self.config) for k, p in self.config.trends.items()}
        self._origin_us: int | None = None
        self._last_us: int | None = None
        self._last_score_us: int | None = None
        # (time us, complete NEWS2) of the window, only those no later score is lower than or
        # equal to: their values rise from front to back, so the front is the window's lowest
        self._scores: deque[tuple[int, int]] = deque()
        self._news2: int | None = None
        self._news2_rise: int | None = None

    def feed(self, time_us: ArrayLike, values: Mapping[str, ArrayLike]) -> DeteriorationSignal:
        """A chunk of samples in time order: ``values[key]`` aligned with ``time_us``, NaN
        where a parameter has no value. Keys the tracker does not follow are ignored."""
        self.add(time_us, values)
        return self.signal()

    def add(self, time_us: ArrayLike, values: Mapping[str, ArrayLike]) -> None:
        """:meth:`feed` without computing the signal (for a caller that feeds a score next,
        which returns it)."""
        t = np.atleast_1d(np.asarray(time_us, dtype=np.int64))
        if t.ndim != 1:
            raise ValueError(f"time_us must be 1-D, got shape {t.shape}")
        if t.size == 0:
            return
        if np.any(np.diff(t) < 0) or (self._last_us is not None and t[0] < self._last_us):
            raise ValueError("samples must be fed in time order")
        cols: dict[str, NDArray[np.float64]] = {}
        for key, raw in values.items():
            if key not in self._trends:
                continue
            v = np.atleast_1d(np.asarray(raw, dtype=np.float64))
            if v.shape != t.shape:
                raise ValueError(f"values[{key!r}] has shape {v.shape}, time_us {t.shape}")
            cols[key] = v
        if self._origin_us is None:
            self._origin_us = int(t[0])
        self._last_us = int(t[-1])
        for key, trend in self._trends.items():
            v = cols.get(key, np.full(t.shape, np.nan))
            trend.feed(t, v, self._origin_us)

    def add_one(self, time_us: int, values: Mapping[str, float | None]) -> None:
        """:meth:`add` of one sample time (a numerics message): ``values[key]`` a number, or
        None or NaN where the parameter has no value."""
        t_us = int(time_us)
        if self._last_us is not None and t_us < self._last_us:
            raise ValueError("samples must be fed in time order")
        if self._origin_us is None:
            self._origin_us = t_us
        self._last_us = t_us
        for key, trend in self._trends.items():
            x = values.get(key)
            trend.feed_one(t_us, math.nan if x is None else float(x), self._origin_us)

    def feed_score(self, time_us: int, result: ScoreResult) -> DeteriorationSignal:
        """A NEWS2 result at ``time_us`` (complete or not)."""
        if not result.definition.startswith("news2/"):
            raise ValueError(f"feed_score takes NEWS2 results, got {result.definition}")
        if self._last_score_us is not None and time_us < self._last_score_us:
            raise ValueError("scores must be fed in time order")
        self._last_score_us = time_us
        window_us = int(self.config.news2_window_s * US_PER_S)
        while self._scores and self._scores[0][0] < time_us - window_us:
            self._scores.popleft()
        current = result.total if result.total is not None else result.partial_total
        lowest = self._scores[0][1] if self._scores else None
        self._news2 = current
        self._news2_rise = None if lowest is None else current - lowest
        if result.total is not None:
            while self._scores and self._scores[-1][1] >= result.total:
                self._scores.pop()  # never the lowest again while this one is in the window
            self._scores.append((time_us, result.total))
        return self.signal()

    def reset_baseline(self) -> None:
        """Start a new baseline from the next samples (after a clinician has reviewed)."""
        self._trends = {k: _Trend(k, p, self.config) for k, p in self.config.trends.items()}
        self._origin_us = None
        self._scores.clear()
        self._news2_rise = None

    def signal(self) -> DeteriorationSignal:
        trends = {k: tr.state() for k, tr in self._trends.items()}
        reasons: list[str] = []
        if self._news2_rise is not None and self._news2_rise >= self.config.news2_rise:
            reasons.append("news2_rise")
        for key, st in trends.items():
            if st.signalled:
                reasons.append(f"{key}_{self.config.trends[key].direction}")
        return DeteriorationSignal(
            time_us=max(self._last_us or 0, self._last_score_us or 0),
            active=bool(reasons),
            reasons=tuple(reasons),
            news2=self._news2,
            news2_rise=self._news2_rise,
            trends=trends,
        )
