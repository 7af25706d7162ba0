"""Where the real PhysioNet recordings are: ``EICU_DATA_DIR`` (default ``../shared/data``).

Tests and benchmarks use this to find records; they skip with a clear reason when a record is
absent. The records are never copied into the project.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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
