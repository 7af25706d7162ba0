"""Real records replayed bedside to database: the stored samples are the record's own, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eicu.config import IngestSettings, MqttSettings
from eicu.devservices import Mosquitto
from eicu.models import BedKey
from eicu.signal.records import wfdb_module
from eicu.store import Store
from ingest.engine import Engine
from simulators.beds import ReplayBed
from simulators.run import SimulationPlan, simulate
from tests.conftest import require_data

pytestmark = [pytest.mark.realdata, pytest.mark.broker, pytest.mark.db]


@pytest.mark.parametrize(
    ("record", "signal", "channel"),
    [
        ("mitdb/208", "ECG_II", 0),
        ("challenge2015/v131l", "ABP", None),
        ("mimic/mixedsignals", "ECG_V", None),
    ],
)
async def test_replay_is_stored_exactly_and_losslessly(
    broker: Mosquitto, store: Store, tmp_path: Path, record: str, signal: str, channel: int | None
) -> None:
    path = require_data(record + ".hea") / record
    engine = Engine(
        MqttSettings.from_url(broker.url, client_id="replay-engine"),
        IngestSettings(spool_dir=tmp_path / "spool", flush_interval_s=0.1),
        store,
    )
    await engine.start()
    await engine.wait_connected()
    plan = SimulationPlan(site="replay", beds=1, duration_s=20.0, speed=10.0, replay=path)
    summary = await simulate(MqttSettings.from_url(broker.url), plan)
    await engine.stop()
    assert (await store.stats())["beds"] == summary["beds"]

    # The replayed bed's stored samples are the record's digital samples, in order.
    source = ReplayBed(BedKey("x", "y"), path, 0)
    _key, fs, gain, baseline, raw = next(s for s in source.signals if s[0] == signal)
    stored = await store.waveform(BedKey("replay", "bed001"), signal, 0, 2**62)
    n = int(20.0 * fs)
    assert stored.values.shape[0] == n
    gain = float(np.float32(gain))  # the wire carries gains as float32; samples are exact
    expected = (raw[:n].astype(np.float64) - baseline) / gain
    expected[raw[:n] == -32768] = np.nan
    np.testing.assert_array_equal(stored.values, expected)
    assert stored.fs_hz == pytest.approx(fs)
    if channel is not None:
        rec = wfdb_module().rdrecord(str(path), physical=False, sampto=n, channels=[channel])
        np.testing.assert_array_equal(
            rec.d_signal[:, 0], np.round(stored.values * gain + baseline).astype(np.int64)
        )
