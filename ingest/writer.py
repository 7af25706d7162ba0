"""The store writer: batches frames, writes them, and keeps them while the database is away.

Frames wait in memory (bounded in frames and in bytes, ``memory_max_frames`` and
``memory_max_bytes``), then spill to the on-disk spool; they are written in the order they
arrived, and retried until the store takes them. Writes are idempotent, so a batch retried after
an uncertain commit is stored once. A store that could not be opened at start (the database
down) is opened, and its migrations applied, before the first write that reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np

from eicu.backoff import Backoff
from eicu.config import IngestSettings
from eicu.errors import StorageUnavailable
from eicu.metrics import IngestMetrics
from eicu.models import Batch, BedKey, DeadLetter, Frame, NumericsFrame, StatusFrame, WaveformFrame
from eicu.store import Store
from ingest.spool import Spool

log = logging.getLogger(__name__)


# Rough bytes a frame holds in memory beyond its samples and payload (objects, dict entries).
_FRAME_OVERHEAD_BYTES = 200
_VALUE_BYTES = 60  # one numeric value: a dict entry, a str key, a float


def frame_bytes(frame: Frame | DeadLetter) -> int:
    """What a frame waiting for the store holds in memory, roughly (an upper-side estimate)."""
    if isinstance(frame, WaveformFrame):
        return _FRAME_OVERHEAD_BYTES + sum(
            _FRAME_OVERHEAD_BYTES + block.samples.nbytes for block in frame.blocks
        )
    if isinstance(frame, NumericsFrame):
        return _FRAME_OVERHEAD_BYTES + _VALUE_BYTES * len(frame.values)
    if isinstance(frame, StatusFrame):
        return _FRAME_OVERHEAD_BYTES + _VALUE_BYTES * len(frame.beds)
    return _FRAME_OVERHEAD_BYTES + len(frame.payload) + len(frame.detail) + len(frame.topic)


def batch_bytes(batch: Batch) -> int:
    return sum(
        frame_bytes(f)
        for frames in (batch.numerics, batch.waveforms, batch.statuses, batch.dead_letters)
        for f in frames
    )


class Receipt:
    """What one incoming message put into the writer: durable once every frame it produced is
    stored in the database or fsynced to the spool (``pending`` 0) and the message is handled
    (``sealed``)."""

    __slots__ = ("pending", "sealed")

    def __init__(self) -> None:
        self.pending = 0
        self.sealed = False

    @property
    def durable(self) -> bool:
        return self.sealed and self.pending == 0


def _settle(receipts: list[Receipt]) -> None:
    for receipt in receipts:
        receipt.pending -= 1


def _received(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    numerics = np.array([f.received_us for f in batch.numerics], dtype=np.int64)
    waveforms = np.array([f.received_us for f in batch.waveforms], dtype=np.int64)
    return numerics, waveforms


class StoreWriter:
    def __init__(
        self,
        store: Store,
        settings: IngestSettings,
        metrics: IngestMetrics,
        *,
        store_open: bool = True,
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        # False: the store could not be opened yet; opened (migrations and all) before a write.
        self.store_open = store_open
        self._open = Batch()
        self._open_bytes = 0
        # The receipt of each frame of the open batch (one entry per frame of a tracked message).
        self._open_receipts: list[Receipt] = []
        self._queue: deque[tuple[Batch, int, list[Receipt]]] = deque()
        self._queued_frames = 0
        self._queued_bytes = 0
        self._held_bytes = 0
        self._spool = Spool(settings.spool_dir)
        self._wake = asyncio.Event()
        self._backoff = Backoff(settings.write_retry_min_s, settings.write_retry_max_s)
        self._held: dict[BedKey, list[WaveformFrame]] = {}
        self._held_us: dict[BedKey, int] = {}
        self._held_receipts: dict[BedKey, list[Receipt]] = {}
        self._held_frames = 0
        # The receipt of the message being handled: every frame added meanwhile counts in it.
        self.receipt: Receipt | None = None
        # Called after frames became durable (their receipts settled).
        self.on_durable: Callable[[], None] | None = None
        self.stored_frames = 0
        self.stored_data_frames = 0  # numerics and waveforms (no statuses, no dead letters)
        self.available = True
        if len(self._spool):
            log.info("%d spooled batches from before will be written first", len(self._spool))

    # --- intake (synchronous: called for every message) -----------------------------------------

    def add(self, frame: Frame) -> None:
        if isinstance(frame, NumericsFrame):
            self._open.numerics.append(frame)
            self._open_bytes += frame_bytes(frame)
            self._track(self._open_receipts)
        elif isinstance(frame, WaveformFrame):
            self._hold(frame)
        elif isinstance(frame, StatusFrame):
            self._open.statuses.append(frame)
            self._open_bytes += frame_bytes(frame)
            self._track(self._open_receipts)
        self._seal_if_full()

    def add_repeat(self, frame: Frame) -> None:
        """A frame dropped as a repeat of one already taken: the message that brought it is
        durable only once everything taken before it is (its first delivery's data may still
        wait here, in the open batch or among the bed's held waveforms), so its
        acknowledgement never runs ahead of that data."""
        if isinstance(frame, WaveformFrame) and frame.bed in self._held:
            self._track(self._held_receipts.setdefault(frame.bed, []))
        else:
            self._track(self._open_receipts)

    def _track(self, receipts: list[Receipt]) -> None:
        receipt = self.receipt
        if receipt is not None:
            receipt.pending += 1
            receipts.append(receipt)

    def _durable(self, receipts: list[Receipt]) -> None:
        if receipts:
            _settle(receipts)
            if self.on_durable is not None:
                self.on_durable()

    def _seal_if_full(self) -> None:
        if (
            len(self._open) >= self._settings.batch_max_frames
            or self._open_bytes >= self._batch_max_bytes
        ):
            self._seal()

    @property
    def _batch_max_bytes(self) -> int:
        # A sixteenth of the memory bound: a batch never fills memory alone.
        return max(1, self._settings.memory_max_bytes // 16)

    def _hold(self, frame: WaveformFrame) -> None:
        """Keep a bed's waveform frames until a segment's worth has arrived."""
        segment_us = self._settings.waveform_segment_s * 1e6
        if segment_us <= 0:
            self._open.waveforms.append(frame)
            self._open_bytes += frame_bytes(frame)
            self._track(self._open_receipts)
            return
        held = self._held.setdefault(frame.bed, [])
        held.append(frame)
        self._track(self._held_receipts.setdefault(frame.bed, []))
        self._held_frames += 1
        self._held_bytes += frame_bytes(frame)
        span_us = frame.t0_us - held[0].t0_us
        if span_us + 1 >= segment_us - 1e5 or len(held) >= 256:
            self._release(frame.bed)
        elif len(held) == 1:
            self._held_us[frame.bed] = frame.received_us

    def _release(self, bed: BedKey) -> None:
        held = self._held.pop(bed, [])
        self._open_receipts.extend(self._held_receipts.pop(bed, ()))
        self._held_us.pop(bed, None)
        self._held_frames -= len(held)
        size = sum(frame_bytes(f) for f in held)
        self._held_bytes -= size
        self._open_bytes += size
        self._open.waveforms.extend(held)

    def hand_over(self, beds: Iterable[BedKey]) -> None:
        """Write what is held of ``beds`` now (their partition moves to another worker, which
        goes on from what is stored): held waveforms are released and the open batch sealed."""
        for bed in beds:
            if bed in self._held:
                self._release(bed)
        self._seal()

    def _release_overdue(self, now_us: int) -> None:
        """Release beds whose frames have waited a second longer than a segment takes to arrive
        (the bed went quiet, or its frames come late). Their messages are acknowledged only once
        written, and a broker sends a message again when it has waited its ``ack_wait`` (NATS:
        5 s, docs/bus.md): a quiet bed's last frames are written well before that."""
        limit_us = (self._settings.waveform_segment_s + 1.0) * 1e6
        for bed in [b for b, t in self._held_us.items() if now_us - t > limit_us]:
            self._release(bed)

    def add_dead_letter(self, letter: DeadLetter) -> None:
        self._open.dead_letters.append(letter)
        self._open_bytes += frame_bytes(letter)
        self._track(self._open_receipts)
        self._seal_if_full()

    def _seal(self) -> None:
        batch = self._open
        if not len(batch):
            # Only repeats came since the last batch: they are durable with the batches before.
            receipts, self._open_receipts = self._open_receipts, []
            if receipts and self._queue:
                self._queue[-1][2].extend(receipts)
            elif receipts:
                self._durable(receipts)  # nothing waits in memory: the rest is stored or spooled
            return
        size = self._open_bytes
        receipts = self._open_receipts
        self._open = Batch()
        self._open_bytes = 0
        self._open_receipts = []
        s = self._settings
        full = (
            self._queued_frames + len(batch) > s.memory_max_frames
            or self._queued_bytes + size > s.memory_max_bytes
        )
        if len(self._spool) or full or not self.available:
            self._spool.push(batch)  # fsynced: durable
            self._durable(receipts)
        else:
            self._queue.append((batch, size, receipts))
            self._queued_frames += len(batch)
            self._queued_bytes += size
        self._update_gauges()
        self._wake.set()

    def health(self) -> tuple[bool, str]:
        """Readiness of the store side (eicu.health): the store open and taking writes or, while
        it is not, the spool accepting what waits."""
        if self.store_open and self.available:
            return True, "store open"
        why = "store not open yet" if not self.store_open else "store unavailable"
        accepting, detail = self._spool.accepting()
        if accepting:
            return True, f"{why}; spooling ({detail})"
        return False, f"{why}; spool not accepting: {detail}"

    def spooled_sequences(self) -> dict[tuple[BedKey, str], int]:
        """Each stream's newest sequence number in the spool (see ``Spool.last_sequences``)."""
        return self._spool.last_sequences() if len(self._spool) else {}

    @property
    def pending_frames(self) -> int:
        return self._queued_frames + self._spool.frames + len(self._open) + self._held_frames

    @property
    def memory_bytes(self) -> int:
        """Bytes of the frames waiting in memory (queued, open and held): at most
        ``memory_max_bytes`` plus one batch and the held waveforms."""
        return self._queued_bytes + self._open_bytes + self._held_bytes

    def _update_gauges(self) -> None:
        self._metrics.queue_frames.set(self._queued_frames + len(self._open) + self._held_frames)
        self._metrics.queue_bytes.set(self.memory_bytes)
        self._metrics.spool_frames.set(self._spool.frames)

    # --- the write loop --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.flush_interval_s)
            self._wake.clear()
            self._release_overdue(time.time_ns() // 1000)
            self._seal()
            if not await self._write_pending():
                await asyncio.sleep(self._backoff.next_s())

    async def _write_pending(self) -> bool:
        """Write what is waiting, oldest first. False when the store refused."""
        while self._queue or len(self._spool):
            if not self.store_open and not await self._open_store():
                self._spill()
                return False
            from_memory = bool(self._queue)
            batch = self._queue[0][0] if from_memory else self._spool.peek()
            rx_numerics, rx_waveforms = _received(batch)
            received = np.concatenate([rx_numerics, rx_waveforms])
            if received.size:
                self._metrics.store_lag.set(max(0.0, time.time() - received.min() / 1e6))
            try:
                await self._store.write(batch)
            except StorageUnavailable as exc:
                if self.available:
                    log.warning("store unavailable, keeping data: %s", exc)
                self.available = False
                self._metrics.store_failures.labels(error="unavailable").inc()
                self._spill()
                return False
            except Exception as exc:
                log.exception("store write failed; batch kept for retry")
                self._metrics.store_failures.labels(error=type(exc).__name__).inc()
                self._spill()
                return False
            if not self.available:
                log.info("store available again; writing what was kept")
            self.available = True
            self._backoff.reset()
            if from_memory:
                _, size, receipts = self._queue.popleft()
                self._queued_frames -= len(batch)
                self._queued_bytes -= size
                self._durable(receipts)
            else:
                self._spool.pop()
            self.stored_frames += len(batch)
            self.stored_data_frames += len(batch.numerics) + len(batch.waveforms)
            self._metrics.store_writes.inc()
            now_us = time.time_ns() // 1000
            if batch.numerics:
                device_us = np.array([f.ts_us for f in batch.numerics], dtype=np.int64)
                self._metrics.device_latency.add((now_us - device_us) / 1e6)
            for kind, rx, recorder in (
                ("numerics", rx_numerics, self._metrics.latency),
                ("waveform", rx_waveforms, self._metrics.waveform_latency),
            ):
                if rx.size:
                    latency_s = (now_us - rx) / 1e6
                    recorder.add(latency_s)
                    histogram = self._metrics.store_latency.labels(kind=kind)
                    for value in latency_s[:: max(1, rx.size // 128)].tolist():
                        histogram.observe(value)
            self._update_gauges()
        self._metrics.store_lag.set(0.0)
        return True

    def _spill(self) -> None:
        """The store refused: what waits in memory goes to the spool (in order, in front of
        anything spooled after it), so that it is durable and its messages can be acknowledged
        while the database is away."""
        if not self._queue:
            return
        for batch, _, receipts in reversed(self._queue):
            self._spool.push(batch, front=True)
            self._durable(receipts)
        self._queue.clear()
        self._queued_frames = 0
        self._queued_bytes = 0
        self._update_gauges()

    async def _open_store(self) -> bool:
        """Open the store (and apply its migrations); False while it is still unavailable."""
        try:
            await self._store.open()
        except StorageUnavailable as exc:
            if self.available:
                log.warning("store still unavailable, keeping data: %s", exc)
            self.available = False
            self._metrics.store_failures.labels(error="unavailable").inc()
            return False
        log.info("store opened; schema up to date; writing what was kept")
        self.store_open = True
        return True

    async def close(self, timeout_s: float = 10.0) -> None:
        """Write everything still waiting; what the store cannot take by the deadline goes to
        the spool (in order), so nothing is lost."""
        for bed in list(self._held):
            self._release(bed)
        self._seal()
        deadline = time.monotonic() + timeout_s
        while self._queue or len(self._spool):
            if await self._write_pending():
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(min(self._backoff.next_s(), max(0.0, deadline - time.monotonic())))
        if self._queue:
            # Older than anything spooled: they go in front, newest first.
            log.warning("store unavailable at shutdown: %d frames spooled", self._queued_frames)
            self._spill()
        self._update_gauges()
