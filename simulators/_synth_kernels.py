"""numba kernels of the synthetic monitor: event tables of many beds in, sample rows out.

Every kernel writes rows ``out[b, i]`` for the global sample indices ``n0 + i`` of bed ``b``,
at ``t = n / fs_hz``. A sample depends only on its own index and the events, never on where a
chunk starts, so any chunking gives bit-identical samples. No fastmath: a fused multiply-add in a
vectorised loop body but not in its remainder would make a sample depend on its position in the
chunk.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def add_templates(
    out, n0, fs_hz, ev_t_s, ev_kind, ev_amp, ev_count, table, table_t0_s, table_fs_hz
):
    """Add ``ev_amp * table[ev_kind]`` placed at each event time (template origin at the event).

    ``table[k, j]`` is the template of kind k sampled at ``table_fs_hz`` from ``table_t0_s[k]``
    seconds relative to the event; a sample takes the nearest table point.
    """
    n_beds, n_out = out.shape
    m = table.shape[1]
    span_s = (m - 1) / table_fs_hz
    for b in range(n_beds):
        for k in range(ev_count[b]):
            kind = ev_kind[b, k]
            start_s = ev_t_s[b, k] + table_t0_s[kind]
            first = math.ceil(start_s * fs_hz)
            last = math.floor((start_s + span_s) * fs_hz)
            lo = max(first, n0)
            hi = min(last + 1, n0 + n_out)
            amp = ev_amp[b, k]
            for n in range(lo, hi):
                j = int((n / fs_hz - start_s) * table_fs_hz + 0.5)
                if j > m - 1:
                    j = m - 1
                out[b, n - n0] += amp * table[kind, j]


@numba.njit(cache=True, nogil=True)
def add_cycles(out, n0, fs_hz, foot_s, sys_s, lo, pp, tau_s, floor, count, table, gain):
    """Add ``gain[b]`` times a cycle-by-cycle waveform (pressure pulse, pleth pulse, breath).

    Cycle k starts at ``foot_s[b, k]`` and lasts until the next foot. For ``u = t - foot`` below
    ``sys_s`` the value is ``lo + pp * table[u / sys_s]`` (the table is stretched over the
    systolic part); afterwards it decays exponentially from the table's last value towards
    ``floor[b]`` with time constant ``tau_s``. Samples before the first foot take ``lo`` of the
    first cycle.
    """
    n_beds, n_out = out.shape
    m = table.shape[0]
    t_end = table[m - 1]
    for b in range(n_beds):
        c = count[b]
        if c == 0:
            continue
        g = gain[b]
        k = 0
        for i in range(n_out):
            t = (n0 + i) / fs_hz
            while k + 1 < c and foot_s[b, k + 1] <= t:
                k += 1
            u = t - foot_s[b, k]
            if u < 0.0:
                v = lo[b, k]
            elif u < sys_s[b, k]:
                j = int(u / sys_s[b, k] * (m - 1) + 0.5)
                v = lo[b, k] + pp[b, k] * table[j]
            else:
                top = lo[b, k] + pp[b, k] * t_end
                v = floor[b] + (top - floor[b]) * math.exp(-(u - sys_s[b, k]) / tau_s[b, k])
            out[b, i] += g * v


@numba.njit(cache=True, nogil=True)
def add_fwaves(out, n0, fs_hz, start_s, end_s, count, f_hz, amp):
    """Add fibrillatory waves of atrial fibrillation inside each bed's episodes.

    A frequency-modulated oscillation around ``f_hz[b]`` (+-0.4 Hz at 0.3 Hz) with a second
    harmonic and a slow amplitude modulation, faded in and out over 1 s.
    """
    n_beds, n_out = out.shape
    two_pi = 2.0 * math.pi
    fm_hz = 0.3
    dev_hz = 0.4
    for b in range(n_beds):
        for e in range(count[b]):
            first = max(math.ceil(start_s[b, e] * fs_hz), n0)
            if end_s[b, e] == math.inf:
                hi = n0 + n_out
            else:
                hi = min(math.ceil(end_s[b, e] * fs_hz), n0 + n_out)
            for n in range(first, hi):
                t = n / fs_hz
                fade = min(1.0, t - start_s[b, e], end_s[b, e] - t)
                theta = two_pi * f_hz[b] * t + dev_hz / fm_hz * math.sin(two_pi * fm_hz * t)
                a = amp[b] * fade * (1.0 + 0.3 * math.sin(two_pi * 0.17 * t))
                out[b, n - n0] += a * (math.sin(theta) + 0.35 * math.sin(2.0 * theta + 0.7))


@numba.njit(cache=True, nogil=True)
def add_vf(out, n0, fs_hz, start_s, end_s, count, f_hz, amp):
    """Add ventricular fibrillation inside each bed's episodes: no complexes, an irregular
    oscillation whose dominant frequency is ``f_hz[b]`` and whose amplitude waxes and wanes.

    Two frequency-modulated components (at ``f_hz`` +-0.7 Hz, and at 1.45 ``f_hz`` with a third
    of the amplitude), each with an envelope of two incommensurate slow modulations between
    about 0.3 and 1, so that neither the period nor the amplitude repeats; faded in over 0.5 s.
    """
    n_beds, n_out = out.shape
    two_pi = 2.0 * math.pi
    for b in range(n_beds):
        for e in range(count[b]):
            first = max(math.ceil(start_s[b, e] * fs_hz), n0)
            if end_s[b, e] == math.inf:
                hi = n0 + n_out
            else:
                hi = min(math.ceil(end_s[b, e] * fs_hz), n0 + n_out)
            f = f_hz[b]
            for n in range(first, hi):
                t = n / fs_hz
                u = t - start_s[b, e]
                fade = min(1.0, 2.0 * u, 2.0 * (end_s[b, e] - t))
                th1 = two_pi * f * u + 0.7 / 0.37 * math.sin(two_pi * 0.37 * u)
                th1 += 0.4 / 0.13 * math.sin(two_pi * 0.13 * u + 1.0)
                th2 = two_pi * 1.45 * f * u + 0.9 / 0.29 * math.sin(two_pi * 0.29 * u + 0.5)
                e1 = 0.3 + 0.7 * (0.5 + 0.5 * math.sin(two_pi * 0.19 * u)) * (
                    0.6 + 0.4 * math.sin(two_pi * 0.53 * u + 2.0)
                )
                e2 = 0.3 + 0.7 * (0.5 + 0.5 * math.sin(two_pi * 0.23 * u + 1.3)) * (
                    0.6 + 0.4 * math.sin(two_pi * 0.71 * u + 0.4)
                )
                out[b, n - n0] += amp[b] * fade * (e1 * math.sin(th1) + 0.33 * e2 * math.sin(th2))


@numba.njit(cache=True, nogil=True)
def add_bursts(out, n0, fs_hz, start_s, end_s, count, amp, noise, noise_offset):
    """Add ``amp[b]`` times a cyclic noise table inside each episode, faded over 0.5 s."""
    n_beds, n_out = out.shape
    mask = noise.shape[0] - 1  # the table length is a power of two
    for b in range(n_beds):
        for e in range(count[b]):
            first = max(math.ceil(start_s[b, e] * fs_hz), n0)
            if end_s[b, e] == math.inf:
                hi = n0 + n_out
            else:
                hi = min(math.ceil(end_s[b, e] * fs_hz), n0 + n_out)
            for n in range(first, hi):
                t = n / fs_hz
                fade = min(1.0, 2.0 * (t - start_s[b, e]), 2.0 * (end_s[b, e] - t))
                out[b, n - n0] += amp[b] * fade * noise[(noise_offset[b] + n) & mask]


@numba.njit(cache=True, nogil=True)
def blank(out, n0, fs_hz, start_s, end_s, count):
    """Set NaN exactly on the samples with ``start_s <= n / fs_hz < end_s``."""
    n_beds, n_out = out.shape
    for b in range(n_beds):
        for e in range(count[b]):
            for i in range(n_out):
                t = (n0 + i) / fs_hz
                if start_s[b, e] <= t < end_s[b, e]:
                    out[b, i] = np.nan


@numba.njit(cache=True, nogil=True)
def add_noise(out, n0, scale, noise, noise_offset):
    """Add ``scale[b]`` times a cyclic noise table read from ``noise_offset[b] + n``."""
    n_beds, n_out = out.shape
    mask = noise.shape[0] - 1
    for b in range(n_beds):
        s = scale[b]
        off = noise_offset[b] + n0
        for i in range(n_out):
            out[b, i] += s * noise[(off + i) & mask]


@numba.njit(cache=True, nogil=True)
def add_drift(out, n0, fs_hz, amp, f_hz, phase):
    """Add a slow sinusoidal baseline drift per bed."""
    n_beds, n_out = out.shape
    two_pi = 2.0 * math.pi
    for b in range(n_beds):
        for i in range(n_out):
            out[b, i] += amp[b] * math.sin(two_pi * f_hz[b] * ((n0 + i) / fs_hz) + phase[b])


@numba.njit(cache=True, nogil=True)
def rates_bpm(times_s, count, t_s, n_intervals, min_s, max_s):
    """A monitor-style rate per bed from event times up to ``t_s``.

    The mean of the last ``n_intervals`` intervals within ``[min_s, max_s]``, rounded; 0 when
    the last event is older than max(4 s, 2.5 mean intervals); NaN when there is no value yet.
    """
    n_beds = times_s.shape[0]
    out = np.full(n_beds, np.nan)
    for b in range(n_beds):
        n = count[b]
        while n > 0 and times_s[b, n - 1] > t_s:
            n -= 1
        if n == 0:
            continue
        total = 0.0
        k = 0
        for i in range(max(n - n_intervals, 1), n):
            iv = times_s[b, i] - times_s[b, i - 1]
            if min_s <= iv <= max_s:
                total += iv
                k += 1
        limit = 4.0
        if k > 0:
            limit = max(4.0, 2.5 * total / k)
        if t_s - times_s[b, n - 1] > limit:
            out[b] = 0.0
        elif k > 0:
            out[b] = math.floor(60.0 * k / total + 0.5)
    return out


@numba.njit(cache=True, nogil=True)
def _cycle_value(foot, sys_s, lo, pp, tau, floor, table, t_s):
    u = t_s - foot
    m = table.shape[0]
    if u < 0.0:
        return lo
    if u < sys_s:
        return lo + pp * table[int(u / sys_s * (m - 1) + 0.5)]
    top = lo + pp * table[m - 1]
    return floor + (top - floor) * math.exp(-(u - sys_s) / tau)


@numba.njit(cache=True, nogil=True)
def pressure_summary(foot_s, sys_s, lo, pp, tau_s, count, floor, t_s, table, mean_frac, n_cycles):
    """Systolic, diastolic and mean per bed over the last ``n_cycles`` complete cycles.

    A cycle is complete when the next one has started by ``t_s``. Systolic is its peak, diastolic
    the value where the next cycle starts, mean its integral over its duration. With no cycle
    started for 4 s (or fewer than two started) all three are the pressure at ``t_s``; with no
    cycle at all they are NaN.
    """
    n_beds = foot_s.shape[0]
    out = np.full((n_beds, 3), np.nan)
    m = table.shape[0]
    for b in range(n_beds):
        n = count[b]
        while n > 0 and foot_s[b, n - 1] > t_s:
            n -= 1
        if n == 0:
            continue
        if n < 2 or t_s - foot_s[b, n - 1] > 4.0:
            k = n - 1
            p = _cycle_value(
                foot_s[b, k], sys_s[b, k], lo[b, k], pp[b, k], tau_s[b, k], floor[b], table, t_s
            )
            out[b, 0] = p
            out[b, 1] = p
            out[b, 2] = p
            continue
        s_sys = 0.0
        s_dia = 0.0
        s_mean = 0.0
        first = max(n - 1 - n_cycles, 0)
        for i in range(first, n - 1):
            d = foot_s[b, i + 1] - foot_s[b, i]
            dia_s = d - sys_s[b, i]
            top = lo[b, i] + pp[b, i] * table[m - 1] - floor[b]
            area = sys_s[b, i] * (lo[b, i] + pp[b, i] * mean_frac) + floor[b] * dia_s
            area += top * tau_s[b, i] * (1.0 - math.exp(-dia_s / tau_s[b, i]))
            s_sys += lo[b, i] + pp[b, i]
            s_dia += lo[b, i + 1]
            s_mean += area / d
        k = n - 1 - first
        out[b, 0] = s_sys / k
        out[b, 1] = s_dia / k
        out[b, 2] = s_mean / k
    return out
