"""An engine in a process of its own, for tests that kill it: ``python -m tests.engine_child
MQTT_URL DATABASE_URL SPOOL_DIR FLUSH_S BATCH_MAX [ACK [QUIET]]`` (ACK: ``persist``, the default,
or ``receipt``; QUIET: ``quiet`` prints no ROUTED lines). Prints ``READY`` once subscribed and
``ROUTED site/bed kind seq`` for every frame it takes; runs until killed. It reads the partitions
in ``EICU_TEST_PARTITIONS`` (e.g. "0-3"), when set."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from eicu.config import IngestSettings, MqttSettings, parse_partitions
from eicu.models import Frame, NumericsFrame, WaveformFrame
from eicu.store import open_store
from ingest.engine import Engine


async def main(
    mqtt_url: str,
    db_url: str,
    spool: str,
    flush_s: float,
    batch_max: int,
    ack: str = "persist",
    quiet: bool = False,
) -> None:
    store = open_store(db_url)
    await store.open()
    settings = IngestSettings(
        spool_dir=Path(spool),
        flush_interval_s=flush_s,
        batch_max_frames=batch_max,
        analyse_signals=False,
    )
    mqtt = MqttSettings.from_url(
        mqtt_url,
        client_id="eicu-test-killed",
        ack=ack,
        partitions=parse_partitions(os.environ.get("EICU_TEST_PARTITIONS")),
    )
    engine = Engine(mqtt, settings, store)

    def tell(frame: Frame, state: object) -> None:
        if isinstance(frame, NumericsFrame | WaveformFrame):
            kind = "numerics" if isinstance(frame, NumericsFrame) else "waveform"
            print(f"ROUTED {frame.bed} {kind} {frame.seq}", flush=True)

    if not quiet:
        engine.router.subscribe(tell)
    await engine.start()
    await engine.wait_connected()
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    a = sys.argv[1:]
    ack = a[5] if len(a) > 5 else "persist"
    asyncio.run(main(a[0], a[1], a[2], float(a[3]), int(a[4]), ack, len(a) > 6 and a[6] == "quiet"))
