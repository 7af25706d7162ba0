"""Reading WFDB records for the command-line tools, benchmarks and tests.

This is the only module of :mod:`eicu.signal` that touches files. wfdb's import emits a pandas
deprecation warning on recent pandas; it is silenced here, at the boundary, and only that one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

from eicu.errors import RecordError

# Beat annotation codes of the MIT format (everything else is rhythm, noise or comment).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")


@contextmanager
def quiet_wfdb() -> Iterator[None]:
    """Silence the pandas deprecation warnings that wfdb's annotation code triggers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inplace keyword.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def wfdb_module() -> ModuleType:
    with quiet_wfdb():
        import wfdb
        import wfdb.processing

    return wfdb


@dataclass(frozen=True, slots=True)
class Record:
    """A WFDB record in physical units (NaN = missing). Channels may have different rates."""

    name: str
    fs_hz: float  # the frame rate; channel j runs at channel_fs[j]
    sig_names: tuple[str, ...]
    channels: tuple[NDArray[np.float64], ...]
    channel_fs: tuple[float, ...]
    comments: tuple[str, ...]

    @property
    def signals(self) -> NDArray[np.float64]:
        """(n_samples, n_signals) when every channel runs at the frame rate."""
        if any(f != self.fs_hz for f in self.channel_fs):
            raise RecordError(
                f"record {self.name} has channels at different rates {self.channel_fs}; "
                "use Record.channels"
            )
        return np.column_stack(self.channels) if self.channels else np.empty((0, 0))


def read_record(path: str | Path, *, sampto: int | None = None) -> Record:
    """Read a WFDB record (path without extension) into physical units, every channel at its
    own rate; ``sampto`` counts frames (samples of the frame rate)."""
    p = Path(path)
    if not p.with_suffix(".hea").exists() and not Path(str(p) + ".hea").exists():
        raise RecordError(f"no WFDB header {p}.hea")
    wfdb = wfdb_module()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            rec = wfdb.rdrecord(str(p), sampto=sampto, smooth_frames=False)
    except Exception as exc:  # wfdb raises bare ValueError/OSError/...: translate at the boundary
        raise RecordError(f"cannot read WFDB record {p}: {exc}") from exc
    if rec.e_p_signal is None or rec.fs is None:
        raise RecordError(f"record {p} has no physical signals")
    spf = list(rec.samps_per_frame or [1] * len(rec.e_p_signal))
    return Record(
        name=p.name,
        fs_hz=float(rec.fs),
        sig_names=tuple(rec.sig_name),
        channels=tuple(np.asarray(c, dtype=np.float64) for c in rec.e_p_signal),
        channel_fs=tuple(float(rec.fs) * int(k) for k in spf),
        comments=tuple(rec.comments or ()),
    )


def read_beat_annotations(path: str | Path, extension: str = "atr") -> NDArray[np.int64]:
    """Sample indices of the beat annotations of a record."""
    wfdb = wfdb_module()
    try:
        with quiet_wfdb():
            ann = wfdb.rdann(str(path), extension)
    except Exception as exc:
        raise RecordError(f"cannot read annotations {path}.{extension}: {exc}") from exc
    keep = [s for s, y in zip(ann.sample, ann.symbol, strict=True) if y in BEAT_SYMBOLS]
    return np.asarray(keep, dtype=np.int64)


def read_rhythm_episodes(
    path: str | Path, label: str, n_samples: int, extension: str = "atr"
) -> list[tuple[int, int]]:
    """[start, end) sample ranges where the rhythm annotation ``(LABEL`` holds."""
    wfdb = wfdb_module()
    try:
        with quiet_wfdb():
            ann = wfdb.rdann(str(path), extension)
    except Exception as exc:
        raise RecordError(f"cannot read annotations {path}.{extension}: {exc}") from exc
    episodes: list[tuple[int, int]] = []
    start: int | None = None
    for s, note in zip(ann.sample, ann.aux_note, strict=True):
        note = (note or "").strip("\x00").strip()
        if not note.startswith("("):
            continue
        if note == "(" + label:
            if start is None:
                start = int(s)
        elif start is not None:
            episodes.append((start, int(s)))
            start = None
    if start is not None:
        episodes.append((start, n_samples))
    return episodes


_NAME_TO_KEY = {
    "II": "ECG_II",
    "MLII": "ECG_II",
    "V": "ECG_V",
    "I": "ECG_I",
    "III": "ECG_III",
    "AVR": "ECG_AVR",
    "AVL": "ECG_AVL",
    "AVF": "ECG_AVF",
    "MCL": "ECG_MCL1",
    "MCL1": "ECG_MCL1",
    "ABP": "ABP",
    "ART": "ABP",
    "PLETH": "PLETH",
    "PPG": "PLETH",
    "RESP": "RESP",
    "CVP": "CVP",
}


def signal_key_for_name(name: str) -> str | None:
    """The eicu signal key of a WFDB channel name, or None when it is not a known signal.

    Chest leads V1-V6 and the like map to ECG_V.
    """
    upper = name.strip().upper()
    if upper in _NAME_TO_KEY:
        return _NAME_TO_KEY[upper]
    if upper.startswith("V") and upper[1:].isdigit():
        return "ECG_V"
    return None
