"""How benchmarks/accuracy.py takes a record's ECG leads: as a bed's monitor does."""

from __future__ import annotations

import numpy as np

from benchmarks.accuracy import bed_channels
from eicu.signal.records import Record


def _record(*names: str) -> Record:
    zeros = np.zeros(10)
    return Record(
        name="r",
        fs_hz=360.0,
        sig_names=names,
        channels=tuple(zeros for _ in names),
        channel_fs=tuple(360.0 for _ in names),
        comments=(),
    )


def test_lead_ii_is_the_primary_lead_wherever_the_record_keeps_it() -> None:
    assert bed_channels(_record("MLII", "V1")) == [0, 1]
    # a record whose channel 0 is a chest lead: lead II first, as the pipeline takes ECG_II
    assert bed_channels(_record("V5", "MLII")) == [1, 0]
    assert bed_channels(_record("V1", "V2", "II")) == [2, 0, 1]


def test_a_record_without_lead_ii_keeps_its_own_order() -> None:
    assert bed_channels(_record("V5", "V2")) == [0, 1]
    assert bed_channels(_record("ECG")) == [0]
