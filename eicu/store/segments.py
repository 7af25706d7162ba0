"""The stored form of one waveform frame: every block of the frame in one compact container.

Container, version 1 (little-endian)::

    0  1  version (1)
    1  1  n_blocks
    then per block:
       0  1  signal id
       1  1  codec: 0 raw int16, 1 eicu lossless codec (eicu.kernels.codec)
       2  4  fs_hz (float32)
       6  4  gain (float32)
      10  2  baseline (int16)
      12  4  t_offset_us (int32)
      16  4  n samples (uint32)
      20  4  encoded length in bytes (uint32)
      24  .. encoded samples

Lossless: decoding gives back the exact int16 samples that arrived.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from eicu.codes import SIGNAL_BY_ID, SIGNAL_BY_KEY
from eicu.errors import StorageError
from eicu.kernels import codec
from eicu.models import SignalBlock

VERSION = 1
CODEC_RAW = 0
CODEC_EICU = 1
_HEAD = struct.Struct("<BB")
_BLOCK = struct.Struct("<BBffhiII")

Encoder = Callable[[NDArray[np.int16]], bytes]
Decoder = Callable[[bytes], NDArray[np.int16]]


_DECODERS: dict[int, Decoder] = {
    CODEC_RAW: lambda b: np.frombuffer(b, dtype="<i2"),
    CODEC_EICU: codec.decode_int16,
}
_CODEC_ID = CODEC_EICU
_encode: Encoder = codec.encode_int16


def encode_blocks(blocks: tuple[SignalBlock, ...]) -> bytes:
    parts = [_HEAD.pack(VERSION, len(blocks))]
    for b in blocks:
        data = _encode(b.samples)
        parts.append(
            _BLOCK.pack(
                SIGNAL_BY_KEY[b.signal].sig_id,
                _CODEC_ID,
                b.fs_hz,
                b.gain,
                b.baseline,
                b.t_offset_us,
                b.samples.shape[0],
                len(data),
            )
        )
        parts.append(data)
    return b"".join(parts)


def decode_blocks(data: bytes, only: str | None = None) -> tuple[SignalBlock, ...]:
    """Decode a stored container; with ``only``, just that signal's block (if present)."""
    try:
        version, n_blocks = _HEAD.unpack_from(data, 0)
        if version != VERSION:
            raise StorageError(f"waveform container version {version} is not supported")
        pos = _HEAD.size
        out = []
        for _ in range(n_blocks):
            sig_id, codec_id, fs_hz, gain, baseline, offset, n, length = _BLOCK.unpack_from(
                data, pos
            )
            pos += _BLOCK.size
            body = bytes(data[pos : pos + length])
            pos += length
            sig = SIGNAL_BY_ID[sig_id]
            if only is not None and sig.key != only:
                continue
            decoder = _DECODERS.get(codec_id)
            if decoder is None:
                raise StorageError(f"waveform codec {codec_id} is not supported")
            samples = decoder(body)
            if samples.shape[0] != n:
                raise StorageError(f"{sig.key}: {samples.shape[0]} samples decoded, {n} stored")
            out.append(SignalBlock(sig.key, float(fs_hz), float(gain), baseline, samples, offset))
        return tuple(out)
    except (struct.error, KeyError, ValueError) as exc:
        raise StorageError(f"damaged waveform container: {exc}") from exc
