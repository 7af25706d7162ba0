"""The hub's record of a remote site's alarms (docs/remote-sites.md).

A site judges and pages its own beds' alarms; each change of an alarm goes to the bed's alarms
topic, which the site's capture stream forwards to the hub with everything else. The hub's feed
hands those changes here: they are written to the hub's alarm history under the site's own event
ids (the same change has the same id at the site and at the hub), their actor marked
``site:<id>/<actor>`` (raised locally), and the message that carried a change counts as durable
only once the change is written, so it is acknowledged after persist like the samples.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from eicu.alarm_model import AlarmEvent, StoredEvent, event_id
from eicu.backoff import Backoff
from eicu.clock import SYSTEM_CLOCK, Clock
from eicu.errors import StorageUnavailable
from eicu.store import AlarmRepository
from ingest.writer import Receipt, StoreWriter

log = logging.getLogger(__name__)


def raised_locally(event: AlarmEvent, recorded_us: int) -> StoredEvent:
    """The hub's row of a site's alarm change, recorded at ``recorded_us``: the site's event id,
    the actor marked with the site where it was judged."""
    marked = dataclasses.replace(event, actor=f"site:{event.bed.site}/{event.actor}")
    return StoredEvent(event_id(event), marked, recorded_us)


class SiteAlarmCopy:
    """Writes the site alarm changes handed to it (as ``Ingest.on_alarm_state``) to ``store``,
    in batches, retrying while the database is away; each change holds the receipt of the
    message that carried it until written, then the writer's ``on_durable`` lets the ingest
    acknowledge it."""

    def __init__(
        self,
        store: AlarmRepository,
        writer: StoreWriter,
        *,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._writer = writer
        self._backoff = backoff or Backoff(0.5, 10.0)
        self._clock = clock
        self._pending: list[tuple[StoredEvent, Receipt | None]] = []
        self._wake = asyncio.Event()
        self.written = 0

    def __call__(self, event: AlarmEvent) -> None:
        receipt = self._writer.receipt
        if receipt is not None:
            receipt.pending += 1
        self._pending.append((raised_locally(event, self._clock.now_us()), receipt))
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            while True:
                try:
                    await self._store.write_alarms([stored for stored, _ in batch], [])
                    break
                except StorageUnavailable as exc:
                    delay_s = self._backoff.next_s()
                    log.warning("site alarms not written (%s); again in %.1f s", exc, delay_s)
                    await self._clock.sleep(delay_s)
            self._backoff.reset()
            self.written += len(batch)
            for _, receipt in batch:
                if receipt is not None:
                    receipt.pending -= 1
            if self._writer.on_durable is not None:
                self._writer.on_durable()
