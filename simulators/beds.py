"""Bed sources for the simulator: synthetic beds and replayed WFDB records, both producing wire
frames (int16 with gain and baseline, per-block time offsets) and numerics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from eicu.codes import SIGNAL_BY_KEY
from eicu.errors import RecordError
from eicu.models import INVALID_SAMPLE, BedKey, NumericsFrame, SignalBlock, WaveformFrame

# ADC units per physical unit on the wire, per signal.
GAIN = {"ECG_II": 200.0, "ECG_V": 200.0, "PLETH": 1000.0, "ABP": 10.0, "RESP": 1000.0}


def quantize(values: NDArray[np.float64], gain: float, baseline: int = 0) -> NDArray[np.int16]:
    """Physical values to int16; NaN becomes INVALID_SAMPLE, the rest is clipped to int16."""
    raw = np.round(values * gain) + baseline
    raw = np.clip(raw, -32767, 32767)
    raw[np.isnan(values)] = INVALID_SAMPLE
    return raw.astype(np.int16)


Tick = tuple[BedKey, "WaveformFrame | None", "NumericsFrame | None", bool]


class BedGroup(Protocol):
    """The beds behind one gateway, advanced together one frame at a time."""

    beds: list[BedKey]

    def tick(self, frame_s: float) -> list[Tick]:
        """Per bed: (bed, waveform frame, numerics due now, whether the bed is connected)."""
        ...


class _Framer:
    """Cuts consecutive per-signal sample streams into frames with exact first-sample offsets."""

    def __init__(self, bed: BedKey, start_us: int) -> None:
        self.bed = bed
        self.start_us = start_us
        self.t_s = 0.0
        self.seq = 0
        self.counts: dict[str, int] = {}

    def frame(
        self, chunks: dict[str, tuple[float, float, int, NDArray[np.int16]]], frame_s: float
    ) -> WaveformFrame | None:
        """``chunks`` maps signal -> (fs_hz, gain, baseline, raw samples of this frame).

        The frame's time is that of its earliest first sample; each block's offset is exact
        (sample k of a signal was taken at start + k / fs)."""
        firsts = []
        for key, (fs_hz, gain, baseline, raw) in chunks.items():
            k0 = self.counts.get(key, 0)
            self.counts[key] = k0 + raw.shape[0]
            if raw.shape[0]:
                firsts.append(
                    (key, fs_hz, gain, baseline, raw, self.start_us + round(k0 * 1e6 / fs_hz))
                )
        self.t_s += frame_s
        if not firsts:
            return None
        t0_us = min(f[5] for f in firsts)
        blocks = [
            SignalBlock(key, fs_hz, gain, baseline, raw, first_us - t0_us)
            for key, fs_hz, gain, baseline, raw, first_us in firsts
        ]
        frame = WaveformFrame(self.bed, self.seq % (1 << 32), t0_us, tuple(blocks))
        self.seq += 1
        return frame


class SynthGroup:
    """Synthetic beds (see simulators.synth), generated together as arrays of beds x samples."""

    def __init__(
        self,
        beds: list[BedKey],
        scenarios: list[str],
        seeds: list[int],
        start_us: int,
        time_scale: float = 1.0,
        events_at_s: float | None = None,
    ) -> None:
        from simulators.synth import BedSynthBank

        self.beds = beds
        self.bank = BedSynthBank(scenarios, seeds, time_scale=time_scale, events_at_s=events_at_s)
        self._framers = [_Framer(bed, start_us) for bed in beds]
        self._start_us = start_us
        self._numerics_seq = 0
        self._next_numerics_s = 0.0

    def _numerics_due(self) -> list[NumericsFrame | None]:
        t_s = self.bank.t_s
        numerics: list[NumericsFrame | None] = [None] * len(self.beds)
        if t_s + 1e-9 >= self._next_numerics_s:
            ts_us = self._start_us + round(t_s * 1e6)
            ts_us -= ts_us % 1000  # the wire carries milliseconds
            for i, values in enumerate(self.bank.numerics()):
                numerics[i] = NumericsFrame(self.beds[i], self._numerics_seq, ts_us, values)
            self._numerics_seq += 1
            self._next_numerics_s += 1.0
        return numerics

    def tick_numerics(self, frame_s: float) -> list[Tick]:
        """As :meth:`tick` with no waveforms (``None`` in their place, none rendered): for a
        consumer of the numerics alone. Not to be mixed with :meth:`tick` on one group."""
        numerics = self._numerics_due()
        connected = self.bank.connected(self.bank.t_s)
        self.bank.skip(frame_s)
        return [(bed, None, numerics[i], bool(connected[i])) for i, bed in enumerate(self.beds)]

    def tick(self, frame_s: float) -> list[Tick]:
        t_s = self.bank.t_s
        numerics = self._numerics_due()
        connected = self.bank.connected(t_s)
        waves = self.bank.waveforms(frame_s)
        raw = {key: quantize(v, GAIN[key]) for key, v in waves.items()}
        out: list[Tick] = []
        for i, framer in enumerate(self._framers):
            chunks = {key: (self.bank.fs_hz[key], GAIN[key], 0, r[i]) for key, r in raw.items()}
            out.append(
                (self.beds[i], framer.frame(chunks, frame_s), numerics[i], bool(connected[i]))
            )
        return out


_WFDB_NAMES = {
    "II": "ECG_II",
    "MLII": "ECG_II",
    "ECG": "ECG_II",
    "I": "ECG_I",
    "III": "ECG_III",
    "V": "ECG_V",
    "V1": "ECG_V",
    "V2": "ECG_V",
    "V4": "ECG_V",
    "V5": "ECG_V",
    "MCL1": "ECG_MCL1",
    "AVR": "ECG_AVR",
    "AVL": "ECG_AVL",
    "AVF": "ECG_AVF",
    "PLETH": "PLETH",
    "ABP": "ABP",
    "ART": "ABP",
    "CVP": "CVP",
    "RESP": "RESP",
}


class ReplayBed:
    """Replays a WFDB record at its own rates, as int16 with the record's gain and baseline.
    A group of one bed."""

    def __init__(
        self, bed: BedKey, record: str | Path, start_us: int, offset_s: float = 0.0
    ) -> None:
        from eicu.signal.records import wfdb_module

        wfdb = wfdb_module()
        self.bed = bed
        self.beds = [bed]
        try:
            rec = wfdb.rdrecord(str(record), physical=False, smooth_frames=False)
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise RecordError(f"cannot read WFDB record {record}: {exc}") from exc
        self.signals: list[tuple[str, float, float, int, NDArray[np.int16]]] = []
        used: set[str] = set()
        for i, name in enumerate(rec.sig_name):
            key = _WFDB_NAMES.get(name.strip().upper())
            if key is None or key in used:
                continue
            fs = float(rec.fs) * int(rec.samps_per_frame[i])
            sig = SIGNAL_BY_KEY[key]
            if not sig.fs_min_hz <= fs <= sig.fs_max_hz:
                continue
            raw = np.asarray(rec.e_d_signal[i])
            invalid = raw == -32768 if raw.dtype.kind == "i" else np.zeros(raw.shape, bool)
            raw16 = np.clip(raw, -32767, 32767).astype(np.int16)
            raw16[invalid] = INVALID_SAMPLE
            gain = float(rec.adc_gain[i]) or 200.0
            self.signals.append((key, fs, gain, int(rec.baseline[i]), raw16))
            used.add(key)
        if not self.signals:
            raise RecordError(f"{record}: no signal this engine knows ({', '.join(rec.sig_name)})")
        self.duration_s = min(s[4].shape[0] / s[1] for s in self.signals)
        self._framer = _Framer(bed, start_us)
        self._offset_s = offset_s % max(self.duration_s, 1.0)

    def tick(self, frame_s: float) -> list[Tick]:
        t_s = self._framer.t_s
        chunks = {}
        for key, fs, gain, baseline, raw in self.signals:
            n_total = raw.shape[0]
            a = math.floor(round(t_s * fs, 6))
            b = math.floor(round((t_s + frame_s) * fs, 6))
            idx = (np.arange(a, b) + int(self._offset_s * fs)) % n_total  # loops the record
            chunks[key] = (fs, gain, baseline, raw[idx])
        return [(self.bed, self._framer.frame(chunks, frame_s), None, True)]
