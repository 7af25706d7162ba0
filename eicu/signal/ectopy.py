"""Ventricular rhythm calls from a stream of classified beats.

What a central station reports of ventricular ectopy, each with its source (docs/signal.md
has the table):

- PVCs per minute: ventricular beats in the last 60 s (a bedside-monitor parameter);
- couplet: exactly 2 ventricular beats in a row; run: 3 or more (ANSI/AAMI EC57 counts
  couplets, short runs of 3-5 and long runs of 6 or more); each reported once it has ended, as
  a :class:`~eicu.signal.events.VentricularRun`, with its rate: 60 over the mean of the
  intervals ending at its beats (a beat's heart rate is 60 over the interval before it, so a
  run of n beats has n intervals, the first beat's coupling interval among them);
- VT episode: a run holding ``VT_EPISODE_BEATS`` (3) consecutive ventricular beats at ``vt_bpm``
  (100/min) or faster (over the 3 intervals ending at them) -- the ventricular tachycardia that
  the MIT-BIH Arrhythmia Database annotates ``(VT`` and that EC57's run statistics count
  (``VentricularRun.vt``);
- BIGEMINY: every other beat ventricular (N V N V N V: 3 cycles) and as long as that lasts;
- TRIGEMINY: every third beat ventricular (N N V three times) and as long as that lasts;
- VTACH (the alarm): a run of at least ``vt_beats`` ventricular beats (``eicu.signal.rhythm``
  passes 5, the PhysioNet/CinC Challenge 2015 definition of a VT alarm)
  whose rate over its last ``vt_beats`` beats is at least ``vt_bpm`` (100/min); it lasts as
  long as the run does at that rate, and starts at the run's first beat. Where the rate falls
  below ``vt_bpm`` inside the run, the VT ends there, reported once the window of ``vt_beats``
  beats no longer reaches back to that beat (or at once when the run ends); a window that is
  fast again before then continues the same VT, so an alarm does not clear and sound again
  over a few long intervals, and no VT starts before the one before it ended;
- VT_SUSTAINED: ventricular tachycardia lasting 30 s or more (Zipes et al., ACC/AHA/ESC 2006
  guidelines for ventricular arrhythmias, Circulation 114:e385-e484), from the beat at which
  it reached 30 s to the end of the VT.

The rate of a run is taken over its beats, not over single intervals, so that one QRS complex
missed by the detector (a ventricular complex of lower slope) does not break the run. An
unclassifiable beat (noise, "Q") or one not yet classified neither extends nor breaks a run.
A paced beat ("P") is not ventricular ectopy: it breaks a run like a normal beat, so a paced
rhythm, however wide its complexes, is never a run or VT.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from eicu.signal.events import RhythmFlag, RhythmLabel, VentricularRun

VT_SUSTAINED_S: Final = 30.0
VT_EPISODE_BEATS: Final = 3
PVC_WINDOW_S: Final = 60.0
BIGEMINY_CYCLES: Final = 3
TRIGEMINY_CYCLES: Final = 3

FlagFn = Callable[[RhythmLabel, str, int], RhythmFlag]


class VentricularTracker:
    """Ventricular calls of one lead; ``flag(label, state, sample)`` makes (and records) a flag."""

    def __init__(
        self,
        signal: str,
        fs_hz: float,
        flag: FlagFn,
        active: Callable[[], dict[str, int]],
        *,
        vt_beats: int,
        vt_bpm: float,
    ) -> None:
        if vt_beats < 3 or not vt_bpm > 0:
            raise ValueError(f"need vt_beats >= 3 and vt_bpm > 0, got {vt_beats}, {vt_bpm}")
        self.signal = signal
        self.fs_hz = fs_hz
        self._flag = flag
        self._active = active
        self.vt_beats = vt_beats
        self.vt_bpm = vt_bpm
        self._run: list[int] = []  # samples of the current run of ventricular beats
        self._last: int | None = None  # the last N, V or P beat since the last gap
        self._before_run: int | None = None  # the beat before the current run's first
        self._seq: deque[tuple[int, bool]] = deque(maxlen=3 * TRIGEMINY_CYCLES)
        self._n_v_seq = 0  # ventricular beats in _seq
        self._v_times: deque[int] = deque()
        self._vt_start: int | None = None
        # where a VT's rate fell below vt_bpm inside its run, held until the window of vt_beats
        # beats no longer reaches back to it (or the run ends): a window that is fast again
        # before then continues the same VT
        self.vt_pending_end: int | None = None
        self._pvc_window_n = round(PVC_WINDOW_S * fs_hz)

    def pvc_per_min(self, now: int) -> float:
        """Ventricular beats in the ``PVC_WINDOW_S`` before sample ``now``, per minute."""
        lo = now - round(PVC_WINDOW_S * self.fs_hz)
        n = sum(1 for s in self._v_times if lo <= s < now)
        return n * 60.0 / PVC_WINDOW_S

    def gap(self) -> None:
        """Samples are missing: a run cut by the gap is not reported (its end is unknown); the
        caller ends the active flags."""
        self._run = []
        self._last = None
        self._before_run = None
        self._seq.clear()
        self._n_v_seq = 0
        self._vt_start = None
        self.vt_pending_end = None

    def _rate_bpm(self, samples: list[int]) -> float:
        if len(samples) < 2 or samples[-1] <= samples[0]:
            return 0.0
        return 60.0 * self.fs_hz * (len(samples) - 1) / (samples[-1] - samples[0])

    def _close_run(self) -> list[VentricularRun]:
        run = self._run
        self._run = []
        if len(run) < 2:
            return []
        beats = run if self._before_run is None else [self._before_run, *run]
        rate = self._rate_bpm(beats)
        m = min(VT_EPISODE_BEATS + 1, len(beats))  # 3 intervals (2 without the beat before)
        fastest = max(self._rate_bpm(beats[i : i + m]) for i in range(len(beats) - m + 1))
        return [
            VentricularRun(
                signal=self.signal,
                sample=run[0],
                time_s=run[0] / self.fs_hz,
                end_sample=run[-1],
                n_beats=len(run),
                rate_bpm=rate,
                label="COUPLET" if len(run) == 2 else "RUN",
                vt=len(run) >= VT_EPISODE_BEATS and fastest >= self.vt_bpm,
            )
        ]

    def beat(self, sample: int, beat_class: str | None) -> list[RhythmFlag | VentricularRun]:
        out: list[RhythmFlag | VentricularRun] = []
        if beat_class not in ("N", "V", "P"):
            return out  # unclassifiable or not yet classified: neither extends nor breaks
        active = self._active()
        ventricular = beat_class == "V"
        keep_from = sample - self._pvc_window_n
        while self._v_times and self._v_times[0] < keep_from:
            self._v_times.popleft()
        if ventricular:
            self._v_times.append(sample)
            if not self._run:
                self._before_run = self._last
            self._run.append(sample)
            tail = self._run[-self.vt_beats :]
            full = len(tail) == self.vt_beats
            fast = full and self._rate_bpm(tail) >= self.vt_bpm
            pending = self.vt_pending_end
            if pending is not None:
                if fast and tail[0] <= pending:
                    self.vt_pending_end = None  # fast again within its window: the same VT
                elif tail[0] > pending:
                    # the window has passed the slowing: the VT ended there
                    self.vt_pending_end = None
                    out.extend(self._end_vt(pending))
                    active = self._active()
            if fast and "VTACH" not in active:
                start = self._run[0] if self._vt_start is None else tail[0]
                self._vt_start = start
                out.append(self._flag("VTACH", "start", start))
            elif not fast and full and "VTACH" in active and self.vt_pending_end is None:
                self.vt_pending_end = sample
            if (
                self.vt_pending_end is None
                and "VTACH" in self._active()
                and "VT_SUSTAINED" not in self._active()
                and self._vt_start is not None
                and sample - self._vt_start >= round(VT_SUSTAINED_S * self.fs_hz)
            ):
                out.append(self._flag("VT_SUSTAINED", "start", sample))
        else:
            if "VTACH" in active:
                pending, self.vt_pending_end = self.vt_pending_end, None
                out.extend(self._end_vt(sample if pending is None else pending))
            self._vt_start = None
            out.extend(self._close_run())
        self._last = sample
        if len(self._seq) == self._seq.maxlen:
            self._n_v_seq -= self._seq[0][1]
        self._seq.append((sample, ventricular))
        self._n_v_seq += ventricular
        if self._n_v_seq or "BIGEMINY" in active or "TRIGEMINY" in active:
            out.extend(self._patterns(sample))  # (no V in sight and neither active: none)
        return out

    def _end_vt(self, sample: int) -> list[RhythmFlag | VentricularRun]:
        out: list[RhythmFlag | VentricularRun] = []
        if "VT_SUSTAINED" in self._active():
            out.append(self._flag("VT_SUSTAINED", "end", sample))
        out.append(self._flag("VTACH", "end", sample))
        return out

    def _patterns(self, sample: int) -> list[RhythmFlag | VentricularRun]:
        """Bigeminy and trigeminy: every window of ``period`` beats holds exactly one V."""
        out: list[RhythmFlag | VentricularRun] = []
        seq = list(self._seq)
        for label, period, cycles in (
            ("BIGEMINY", 2, BIGEMINY_CYCLES),
            ("TRIGEMINY", 3, TRIGEMINY_CYCLES),
        ):
            lab: RhythmLabel = label  # type: ignore[assignment]
            active = label in self._active()
            if active:
                last = seq[-period:]
                if len(last) < period or sum(v for _, v in last) != 1:
                    out.append(self._flag(lab, "end", sample))
                continue
            n = period * cycles
            if len(seq) < n:
                continue
            win = seq[-n:]
            if all(sum(v for _, v in win[i : i + period]) == 1 for i in range(n - period + 1)):
                out.append(self._flag(lab, "start", win[0][0]))
        return out
