"""An engine in a process of its own, for tests that kill it: ``python -m tests.engine_child
MQTT_URL DATABASE_URL SPOOL_DIR FLUSH_S BATCH_MAX``. Prints ``READY`` once subscribed and
``ROUTED site/bed kind seq`` for every frame it takes; runs until killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from eicu.config import IngestSettings, MqttSettings
from eicu.models import Frame, NumericsFrame, WaveformFrame
from eicu.store import open_store
from ingest.engine import Engine


async def main(mqtt_url: str, db_url: str, spool: str, flush_s: float, batch_max: int) -> None:
    store = open_store(db_url)
    await store.open()
    settings = IngestSettings(
        spool_dir=Path(spool),
        flush_interval_s=flush_s,
        batch_max_frames=batch_max,
        analyse_signals=False,
    )
    engine = Engine(MqttSettings.from_url(mqtt_url, client_id="eicu-test-killed"), settings, store)

    def tell(frame: Frame, state: object) -> None:
        if isinstance(frame, NumericsFrame | WaveformFrame):
            kind = "numerics" if isinstance(frame, NumericsFrame) else "waveform"
            print(f"ROUTED {frame.bed} {kind} {frame.seq}", flush=True)

    engine.router.subscribe(tell)
    await engine.start()
    await engine.wait_connected()
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], float(a[3]), int(a[4])))
