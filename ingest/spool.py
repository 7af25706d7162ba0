"""The on-disk spool: batches the store could not take yet, in order, surviving a restart.

Each file holds one batch as records that reuse the wire encodings (so nothing is pickled)::

    kind u8 (1 numerics, 2 waveform, 3 status, 4 dead letter)
    received_us i64
    topic: u16 length + UTF-8
    extra: u32 length + bytes (dead letters: reason NUL detail)
    payload: u32 length + bytes

Files are written to a temporary name, fsynced, then renamed: a crash leaves whole batches.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from eicu import wire
from eicu.models import Batch, BedKey, DeadLetter, NumericsFrame, StatusFrame, WaveformFrame

_REC = struct.Struct("<Bq")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_NUMERICS, _WAVEFORM, _STATUS, _DEAD = 1, 2, 3, 4
_FIRST = 10**9  # numbering starts high so that batches can be put in front


def encode_batch(batch: Batch) -> bytes:
    out = bytearray()

    def record(kind: int, received_us: int, topic: str, extra: bytes, payload: bytes) -> None:
        t = topic.encode()
        out.extend(_REC.pack(kind, received_us))
        out.extend(_U16.pack(len(t)) + t)
        out.extend(_U32.pack(len(extra)) + extra)
        out.extend(_U32.pack(len(payload)) + payload)

    for n in batch.numerics:
        record(_NUMERICS, n.received_us, wire.numerics_topic(n.bed), b"", wire.encode_numerics(n))
    for w in batch.waveforms:
        record(_WAVEFORM, w.received_us, wire.waveform_topic(w.bed), b"", wire.encode_waveform(w))
    for s in batch.statuses:
        topic = (
            wire.status_topic(BedKey(s.site, s.bed))
            if s.bed is not None
            else wire.gateway_status_topic(s.site, s.gateway or "")
        )
        record(_STATUS, s.received_us, topic, b"", wire.encode_status(s))
    for d in batch.dead_letters:
        extra = d.reason.encode() + b"\0" + d.detail.encode()
        record(_DEAD, d.received_us, d.topic, extra, d.payload)
    return bytes(out)


def decode_batch(data: bytes) -> Batch:
    batch = Batch()
    pos = 0
    while pos < len(data):
        kind, received_us = _REC.unpack_from(data, pos)
        pos += _REC.size
        (n,) = _U16.unpack_from(data, pos)
        topic = data[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        (n,) = _U32.unpack_from(data, pos)
        extra = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        (n,) = _U32.unpack_from(data, pos)
        payload = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        if kind == _DEAD:
            reason, _, detail = extra.partition(b"\0")
            batch.dead_letters.append(
                DeadLetter(received_us, topic, reason.decode(), detail.decode(), payload)
            )
            continue
        frame = wire.decode(topic, payload, received_us)
        if isinstance(frame, NumericsFrame):
            batch.numerics.append(frame)
        elif isinstance(frame, WaveformFrame):
            batch.waveforms.append(frame)
        elif isinstance(frame, StatusFrame):
            batch.statuses.append(frame)
    return batch


class Spool:
    """A folder of numbered batch files, oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for tmp in folder.glob("*.tmp"):
            tmp.unlink()  # a write that a crash interrupted; its batch is still in memory or lost
        self._files = sorted(folder.glob("*.batch"))
        self._next = int(self._files[-1].stem) + 1 if self._files else _FIRST
        self.frames = 0
        # Why the last batch could not be written (a full or failing disk); None after a success.
        self.error: str | None = None
        for f in self._files:
            self.frames += _count_hint(f)

    def __len__(self) -> int:
        return len(self._files)

    def accepting(self) -> tuple[bool, str]:
        """Whether a batch can be written now: the last write did not fail and the folder is
        writable."""
        if self.error is not None:
            return False, f"the last batch could not be written: {self.error}"
        if not os.access(self.folder, os.W_OK):
            return False, f"{self.folder} is not writable"
        return True, f"{self.frames} frames in {self.folder}"

    def push(self, batch: Batch, *, front: bool = False) -> None:
        """Append a batch; with ``front``, put it before every file already there."""
        if front and self._files:
            number = int(self._files[0].stem) - 1
            if number < 0:
                raise RuntimeError(f"spool {self.folder} cannot take more batches in front")
        else:
            number = self._next
            self._next += 1
        path = self.folder / f"{number:012d}.batch"
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("wb") as fh:
                fh.write(_U32.pack(len(batch)))
                fh.write(encode_batch(batch))
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(path)
            # The rename itself survives a power failure only once the folder is synced.
            folder_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)
        except OSError as exc:
            self.error = str(exc)
            raise
        self.error = None
        if front:
            self._files.insert(0, path)
        else:
            self._files.append(path)
        self.frames += len(batch)

    def peek(self) -> Batch:
        data = self._files[0].read_bytes()
        return decode_batch(data[_U32.size :])

    def last_sequences(self) -> dict[tuple[BedKey, str], int]:
        """The sequence number of each stream's newest frame in the spool (read at start, so
        that the broker's redelivery of a spooled message is known as a duplicate)."""
        out: dict[tuple[BedKey, str], int] = {}
        for path in self._files:
            batch = decode_batch(path.read_bytes()[_U32.size :])
            for frame in batch.numerics:
                out[(frame.bed, "numerics")] = frame.seq
            for wave in batch.waveforms:
                out[(wave.bed, "waveform")] = wave.seq
        return out

    def pop(self) -> None:
        path = self._files.pop(0)
        self.frames -= _count_hint(path)
        path.unlink()


def _count_hint(path: Path) -> int:
    with path.open("rb") as fh:
        head = fh.read(_U32.size)
    return _U32.unpack(head)[0] if len(head) == _U32.size else 0
