"""The stored form of waveforms: a segment of consecutive frames of one bed in one container.

Consecutive, contiguous frames of a bed with the same signals, rates, gains and baselines are
joined into one segment: each signal's samples end to end, encoded once. Fewer, longer blocks
compress better and cost fewer rows.

Container, version 2 (little-endian; LEB128 = unsigned base-128 varint)::

    0  1  version (2)
    1  1  n_blocks
    then per block:
       1  signal id
       1  codec: 0 raw int16, 1 eicu lossless codec (eicu.kernels.codec; it stores its count)
       4  fs_hz (float32)
       4  gain (float32)
       .. baseline, zigzag LEB128
       .. t_offset_us after the segment's first frame time, LEB128
       .. encoded length in bytes, LEB128
       .. encoded samples

Lossless: decoding gives back the exact int16 samples that arrived.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from eicu.codes import SIGNAL_BY_ID, SIGNAL_BY_KEY
from eicu.errors import StorageError
from eicu.kernels import codec
from eicu.models import SignalBlock, WaveformFrame

VERSION = 2
CODEC_RAW = 0
CODEC_EICU = 1
_HEAD = struct.Struct("<BB")
_BLOCK = struct.Struct("<BBff")

Decoder = Callable[[bytes], NDArray[np.int16]]
_DECODERS: dict[int, Decoder] = {
    CODEC_RAW: lambda b: np.frombuffer(b, dtype="<i2"),
    CODEC_EICU: codec.decode_int16,
}


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise StorageError("damaged waveform container: bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_blocks(blocks: tuple[SignalBlock, ...] | list[SignalBlock]) -> bytes:
    parts = [_HEAD.pack(VERSION, len(blocks))]
    for b in blocks:
        data = codec.encode_int16(b.samples)
        zigzag = (b.baseline << 1) ^ (b.baseline >> 31)
        parts.append(_BLOCK.pack(SIGNAL_BY_KEY[b.signal].sig_id, CODEC_EICU, b.fs_hz, b.gain))
        parts.append(_uvarint(zigzag & 0xFFFFFFFF))
        parts.append(_uvarint(b.t_offset_us))
        parts.append(_uvarint(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_blocks(data: bytes, only: str | None = None) -> tuple[SignalBlock, ...]:
    """Decode a stored container; with ``only``, just that signal's block (if present)."""
    data = bytes(data)
    try:
        version, n_blocks = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise StorageError(f"waveform container version {version} is not supported")
        pos = _HEAD.size
        out = []
        for _ in range(n_blocks):
            sig_id, codec_id, fs_hz, gain = _BLOCK.unpack_from(data, pos)
            pos += _BLOCK.size
            zigzag, pos = _read_uvarint(data, pos)
            offset_us, pos = _read_uvarint(data, pos)
            length, pos = _read_uvarint(data, pos)
            body = data[pos : pos + length]
            pos += length
            sig = SIGNAL_BY_ID[sig_id]
            if only is not None and sig.key != only:
                continue
            decoder = _DECODERS.get(codec_id)
            if decoder is None:
                raise StorageError(f"waveform codec {codec_id} is not supported")
            baseline = (zigzag >> 1) ^ -(zigzag & 1)
            out.append(
                SignalBlock(sig.key, float(fs_hz), float(gain), baseline, decoder(body), offset_us)
            )
        return tuple(out)
    except (struct.error, KeyError, ValueError) as exc:
        raise StorageError(f"damaged waveform container: {exc}") from exc


@dataclass(frozen=True)
class Segment:
    """Consecutive frames of one bed, joined: what one row of the waveforms table holds."""

    t0_us: int
    seq: int  # of the first frame
    n_frames: int
    duration_us: int
    n_samples: int
    data: bytes


def _layout(frame: WaveformFrame) -> tuple[tuple[str, float, float, int], ...]:
    return tuple((b.signal, b.fs_hz, b.gain, b.baseline) for b in frame.blocks)


def _end_us(frame: WaveformFrame) -> dict[str, float]:
    return {
        b.signal: frame.t0_us + b.t_offset_us + b.samples.shape[0] * 1e6 / b.fs_hz
        for b in frame.blocks
    }


def _continues(prev: WaveformFrame, frame: WaveformFrame) -> bool:
    if _layout(prev) != _layout(frame) or (frame.seq - prev.seq) % (1 << 32) != 1:
        return False
    ends = _end_us(prev)
    return all(
        abs(frame.t0_us + b.t_offset_us - ends[b.signal]) <= 0.5e6 / b.fs_hz for b in frame.blocks
    )


def segments(frames: list[WaveformFrame], max_frames: int = 256) -> list[Segment]:
    """Join the frames (of one bed, in arrival order) into segments of contiguous runs."""
    runs: list[list[WaveformFrame]] = []
    for f in frames:
        if runs and len(runs[-1]) < max_frames and _continues(runs[-1][-1], f):
            runs[-1].append(f)
        else:
            runs.append([f])
    out = []
    for run in runs:
        first = run[0]
        blocks = []
        for i, b in enumerate(first.blocks):
            samples = (
                np.concatenate([f.blocks[i].samples for f in run]) if len(run) > 1 else b.samples
            )
            blocks.append(
                SignalBlock(b.signal, b.fs_hz, b.gain, b.baseline, samples, b.t_offset_us)
            )
        end = max(_end_us(run[-1]).values())
        out.append(
            Segment(
                first.t0_us,
                first.seq,
                len(run),
                round(end - first.t0_us),
                sum(b.samples.shape[0] for b in blocks),  # the run's samples, joined
                encode_blocks(blocks),
            )
        )
    return out
