"""The engine: ingest, per-bed state and the store writer under one task group."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from eicu.config import IngestSettings, MqttSettings
from eicu.metrics import IngestMetrics
from eicu.store import Store
from ingest.scores import ScoreStage
from ingest.service import Ingest
from ingest.signals import SignalStage
from ingest.state import BedRouter
from ingest.writer import StoreWriter

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        mqtt: MqttSettings,
        ingest: IngestSettings,
        store: Store,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.metrics = metrics or IngestMetrics()
        self.store = store
        self.router = BedRouter(self.metrics)
        self.scores = ScoreStage()
        self.signals = SignalStage()
        self.router.subscribe(self.scores)
        if ingest.analyse_signals:
            self.router.subscribe(self.signals)
        self.writer = StoreWriter(store, ingest, self.metrics)
        self.ingest = Ingest(mqtt, self.router, self.writer, self.metrics)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.writer.run(), name="store-writer"),
            asyncio.create_task(self.ingest.run(), name="ingest"),
        ]

    async def wait_connected(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self.ingest.connected.wait(), timeout_s)

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop taking messages, then write (or spool) everything received."""
        ingest_task = self._tasks[1] if len(self._tasks) > 1 else None
        writer_task = self._tasks[0] if self._tasks else None
        for task in (ingest_task, writer_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.writer.close(drain_timeout_s)
        self._tasks = []

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            waiter.cancel()
        finally:
            await self.stop()
