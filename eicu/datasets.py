"""Where the real PhysioNet recordings are: ``EICU_DATA_DIR`` (default ``../shared/data``).

Tests and benchmarks use this to find records; they skip with a clear reason when a record is
absent. The records are never copied into the project.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from eicu.errors import RecordError

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    raw = env.get("EICU_DATA_DIR")
    return Path(raw) if raw else (_REPO_ROOT.parent / "shared" / "data")


def missing_reason(*relative: str, environ: Mapping[str, str] | None = None) -> str | None:
    """None when every path exists under the data folder, else a sentence saying what is absent."""
    root = data_dir(environ)
    for rel in relative:
        if not (root / rel).exists():
            return f"PhysioNet data not found: {root / rel} (set EICU_DATA_DIR to the data folder)"
    return None


def mitdb_records(environ: Mapping[str, str] | None = None) -> list[str]:
    """The MIT-BIH record names present, from mitdb/RECORDS (empty when absent)."""
    path = data_dir(environ) / "mitdb" / "RECORDS"
    if not path.exists():
        return []
    return [r.strip() for r in path.read_text().split() if r.strip()]


def challenge2012_stays(
    path: Path, limit: int | None = None
) -> Iterator[tuple[int, dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]]]:
    """Stays of a PhysioNet/CinC Challenge 2012 set (``set-a.tar.gz``), read from the tar.

    Yields ``(record_id, {parameter: (minutes since admission, values)})`` in file order; the
    general descriptors (RecordID, Age, Gender, Height, ICUType, Weight) at time 00:00 are
    included as parameters. Values are as recorded (the set uses -1 for "not measured" in the
    descriptors); repeated parameters keep their time order.
    """
    with tarfile.open(path, "r:gz") as tar:
        count = 0
        for member in tar:
            if not member.isfile() or not member.name.endswith(".txt"):
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            series: dict[str, tuple[list[float], list[float]]] = {}
            record_id = -1
            lines = fh.read().decode("ascii").splitlines()
            if not lines or lines[0].strip() != "Time,Parameter,Value":
                raise RecordError(f"{member.name}: not a Challenge 2012 stay (bad header)")
            for line in lines[1:]:
                if not line.strip():
                    continue
                try:
                    stamp, param, raw = line.split(",")
                    hh, mm = stamp.split(":")
                    minute = int(hh) * 60 + int(mm)
                    value = float(raw)
                except ValueError as exc:
                    raise RecordError(f"{member.name}: bad line {line!r}") from exc
                if param == "RecordID":
                    record_id = int(value)
                ts, vs = series.setdefault(param, ([], []))
                ts.append(float(minute))
                vs.append(value)
            yield record_id, {k: (np.array(t), np.array(v)) for k, (t, v) in series.items()}
            count += 1
            if limit is not None and count >= limit:
                return


def challenge2012_outcomes(path: Path) -> dict[int, dict[str, int]]:
    """``Outcomes-a.txt``: RecordID -> {SAPS-I, SOFA, Length_of_stay, Survival,
    In-hospital_death} (-1 where the set says the value is missing)."""
    rows = path.read_text(encoding="ascii").splitlines()
    header = rows[0].split(",")
    if header[0] != "RecordID":
        raise RecordError(f"{path}: not a Challenge 2012 outcomes file")
    out: dict[int, dict[str, int]] = {}
    for row in rows[1:]:
        if row.strip():
            fields = [int(x) for x in row.split(",")]
            out[fields[0]] = dict(zip(header[1:], fields[1:], strict=True))
    return out
