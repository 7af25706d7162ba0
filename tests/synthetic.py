"""Synthetic ECG and pulse waveforms with known beat times, for tests."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def ecg_from_rr(
    rr_s: NDArray[np.float64],
    fs_hz: float,
    *,
    start_s: float = 0.5,
    qrs_width_s: float = 0.025,
    amplitude_mv: float = 1.2,
    noise_mv: float = 0.0,
    p_wave: bool = True,
    seed: int = 0,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """A PQRST train whose R peaks follow ``rr_s``; returns (signal in mV, R-peak indices)."""
    r_times = start_s + np.concatenate([[0.0], np.cumsum(rr_s)])
    duration_s = r_times[-1] + 1.0
    n = int(duration_s * fs_hz)
    t = np.arange(n) / fs_hz
    x = np.zeros(n)
    waves = [(-0.03, 0.01, -0.12), (0.0, qrs_width_s / 2.5, 1.0), (0.03, 0.012, -0.2)]
    waves.append((0.25, 0.05, 0.3))  # T wave
    if p_wave:
        waves.append((-0.18, 0.025, 0.12))
    for rt in r_times:
        lo, hi = np.searchsorted(t, [rt - 0.4, rt + 0.6])
        seg = t[lo:hi] - rt
        for mu, sd, a in waves:
            x[lo:hi] += amplitude_mv * a * np.exp(-0.5 * ((seg - mu) / sd) ** 2)
    if noise_mv > 0:
        x += np.random.default_rng(seed).normal(0.0, noise_mv, n)
    x += 0.1 * np.sin(2 * np.pi * 0.25 * t)  # baseline wander
    return x, np.round(r_times * fs_hz).astype(np.int64)


def pulse_from_beats(
    beat_idx: NDArray[np.int64], n: int, fs_hz: float, *, delay_s: float = 0.2
) -> NDArray[np.float64]:
    """An arterial-pressure-like wave (mmHg) with one pulse per beat, ``delay_s`` after it."""
    t = np.arange(n) / fs_hz
    x = np.full(n, 80.0)
    for b in beat_idx:
        t0 = b / fs_hz + delay_s
        seg = t - t0
        up = (seg >= 0) & (seg < 0.12)
        x[up] += 40.0 * np.sin(0.5 * np.pi * seg[up] / 0.12)
        down = (seg >= 0.12) & (seg < 0.9)
        x[down] += 40.0 * np.exp(-(seg[down] - 0.12) / 0.25)
    return x


def ecg_with_ventricular_beats(
    rr_s: NDArray[np.float64],
    ventricular: NDArray[np.bool_],
    fs_hz: float,
    *,
    wide_qrs_s: float = 0.16,
    noise_mv: float = 0.01,
    seed: int = 0,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Narrow sinus beats (QRS of some 60 ms, with P waves) where ``ventricular[i]`` is False
    and wide, inverted beats without P waves where it is True (their R wave lasts
    ``wide_qrs_s``, 6 standard deviations of its Gaussian); beat ``i + 1`` comes ``rr_s[i]``
    after beat ``i``. Returns (signal in mV, R-peak indices)."""
    narrow, r_idx = ecg_from_rr(rr_s, fs_hz, noise_mv=noise_mv, seed=seed)
    wide, _ = ecg_from_rr(
        rr_s, fs_hz, qrs_width_s=wide_qrs_s * 2.5 / 6.0, p_wave=False, seed=seed + 1
    )
    x = narrow.copy()
    half = round(0.3 * fs_hz)
    for i, r in enumerate(r_idx):
        if ventricular[i]:
            lo, hi = max(r - half, 0), min(r + half, x.shape[0])
            x[lo:hi] = -wide[lo:hi]
    return x, r_idx
