"""Plain data types that flow through the engine: frames from the wire and what follows them.

Times are integers in microseconds since the Unix epoch (UTC): ``*_us``. Device time is what
the bedside clock said; receive time is what the engine's clock said when the message arrived.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

# \A and \Z, not ^ and $: "$" also matches before a trailing newline, so "bed07\n" would pass.
ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")


class BedKey(NamedTuple):
    """A bed of a site. A named tuple, not a dataclass: a bed is the key of most of the engine's
    dictionaries, looked up several times per message and per alarm evaluation, and a tuple's
    hash and equality run in C (a dict look-up with an equal key about 4 times as fast as with a
    frozen dataclass's generated methods)."""

    site: str
    bed: str

    def __str__(self) -> str:
        return f"{self.site}/{self.bed}"

    @classmethod
    def parse(cls, text: str) -> BedKey:
        site, sep, bed = text.partition("/")
        if not sep or not ID_RE.fullmatch(site) or not ID_RE.fullmatch(bed):
            raise ValueError(f"expected SITE/BED with ids of [A-Za-z0-9_-], got {text!r}")
        return cls(site, bed)


@dataclass(frozen=True, slots=True)
class NumericsFrame:
    """One numerics message: the values a monitor reported at one device time.

    ``values`` maps a parameter key (see :mod:`eicu.codes`) to its value, or to ``None`` when the
    monitor says it has no valid value (a probe off, a measurement failed). Categorical
    parameters hold their ordinal code as a float.
    """

    bed: BedKey
    seq: int
    ts_us: int
    values: dict[str, float | None]
    received_us: int = 0

    @property
    def n_values(self) -> int:
        return len(self.values)


INVALID_SAMPLE = -32768  # a raw sample with no valid value (lead off, probe off)


@functools.cache
def _to_physical() -> Callable[[NDArray[np.int16], int, float], NDArray[np.float64]]:
    """:func:`eicu.kernels.samples.to_physical`, imported (with numba) by the first caller and
    kept: an import statement per block costs more than the conversion."""
    from eicu.kernels.samples import to_physical

    return to_physical


@dataclass(frozen=True, slots=True)
class SignalBlock:
    """Consecutive samples of one signal: physical = (raw - baseline) / gain.

    The raw value -32768 (:data:`INVALID_SAMPLE`) marks a sample the monitor had no valid
    value for; it reads back as NaN, never as a number.
    """

    signal: str  # key in eicu.codes.SIGNAL_BY_KEY
    fs_hz: float
    gain: float
    baseline: int
    samples: NDArray[np.int16]
    t_offset_us: int = 0  # first-sample time relative to the frame's t0_us
    # physical(), once computed: the live state, the signal stage and the store share it
    _physical: NDArray[np.float64] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def t0_offset_s(self) -> float:
        return self.t_offset_us / 1e6

    def physical(self) -> NDArray[np.float64]:
        """The samples in physical units, NaN where invalid: computed on the first call and
        shared by every later one, hence read-only (copy it to change it)."""
        out = self._physical
        if out is not None:
            return out
        samples = self.samples
        if samples.dtype == np.int16 and samples.ndim == 1:
            out = _to_physical()(samples, self.baseline, self.gain)
        else:
            out = (samples.astype(np.float64) - self.baseline) / self.gain
            out[samples == INVALID_SAMPLE] = np.nan
        out.flags.writeable = False
        object.__setattr__(self, "_physical", out)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SignalBlock):
            return NotImplemented
        return (
            self.signal == other.signal
            and self.fs_hz == other.fs_hz
            and self.gain == other.gain
            and self.baseline == other.baseline
            and self.t_offset_us == other.t_offset_us
            and np.array_equal(self.samples, other.samples)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class WaveformFrame:
    """One waveform message: a fraction of a second of several signals of one bed."""

    bed: BedKey
    seq: int
    t0_us: int  # device time of the first sample of every block
    blocks: tuple[SignalBlock, ...]
    received_us: int = 0

    @property
    def n_samples(self) -> int:
        return sum(b.samples.shape[0] for b in self.blocks)


StatusState = Literal["online", "offline", "standby"]


@dataclass(frozen=True, slots=True)
class StatusFrame:
    """The state of a bed, or of a gateway and the beds behind it (retained on the broker)."""

    site: str
    state: StatusState
    ts_us: int | None
    bed: str | None = None  # set for a bed's status
    gateway: str | None = None  # set for a gateway's status
    beds: tuple[str, ...] = ()  # the beds a gateway serves
    received_us: int = 0
    # the bed's monitor as the gateway knows it: (identifier, its kind, e.g. "EUI-64"); None
    # when the status does not say
    device: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class AlarmAck:
    """An acknowledgement of an alarm sent by the remote ICU (``.../{bed}/alarms/ack``): who
    acknowledged ``alarm_id`` of ``bed``, and when the bedside clock said they did."""

    bed: BedKey
    alarm_id: str
    user: str
    ts_us: int | None = None
    received_us: int = 0


@dataclass(frozen=True, slots=True)
class AlarmCommand:
    """A clinician's change to a bed's alarms made at a dashboard of its own process, sent to the
    bed's owner (``.../{bed}/alarms/cmd``): ``ack`` an alarm, or ``pause`` the audio of an alarm
    (``alarm_id``) or of every alarm of the bed (``alarm_id`` None) for ``duration_s``. The
    owner answers on ``reply_to`` with the command's ``cmd_id``."""

    bed: BedKey
    action: Literal["ack", "pause"]
    alarm_id: str | None
    user: str
    cmd_id: str
    reply_to: str
    duration_s: float = 0.0
    received_us: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, kept for review."""

    received_us: int
    topic: str
    reason: str
    detail: str
    payload: bytes


Frame = NumericsFrame | WaveformFrame | StatusFrame


@dataclass(slots=True)
class Batch:
    """What the ingest hands the store in one write."""

    numerics: list[NumericsFrame] = field(default_factory=list)
    waveforms: list[WaveformFrame] = field(default_factory=list)
    statuses: list[StatusFrame] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.numerics) + len(self.waveforms) + len(self.statuses) + len(self.dead_letters)
        )
