"""Lossless codec for int16 waveform blocks: fixed linear prediction, zigzag, Rice codes.

One encoded block is self-describing (format version 1; see docs/storage-codec.md)::

    byte 0         format version (1)
    bytes 1..      sample count n, unsigned LEB128 (1 byte below 128, 2 below 16384)
    (n > 0)        the first sample, int16 little-endian
    (n > 1)        a bit stream, most significant bit first, of the n - 1 later samples in
                   sub-blocks of BLOCK samples (the last may be shorter), each:
                     4 bits  param: 0..13 Rice parameter k, 14 all residuals zero, 15 verbatim
                     verbatim:   16 bits per sample, two's complement
                     otherwise:  2 bits predictor order p (0..3), then, when param is k,
                                 one Rice code per sample of the zigzagged residual
                   zero bits up to the next byte boundary
    last byte      CRC-8 (polynomial 0x07, initial value 0) of every byte before it

The residual of sample i under order p is the finite difference of order min(p, i) at i (the
fixed polynomial predictors of Shorten and FLAC, with the order shortened where fewer than p
earlier samples exist). Zigzag maps r to 2r (r >= 0) or -2r - 1 (r < 0). A Rice code of u with
parameter k is u >> k zero bits, a one bit, then the low k bits of u.

The encoder picks per sub-block the order with the smallest sum of zigzagged residuals (lowest
order on ties), then the k of the exact smallest bit cost (lowest k on ties), and stores the
sub-block verbatim when that is strictly smaller. The worst case (white noise, full-scale
alternation) thus costs 4 bits per sub-block over raw int16, plus the header.

Decoding checks the CRC first, then the structure: a sample count the data cannot hold, a
decoded sample outside int16, a truncated stream, non-zero padding or trailing bytes all raise
:class:`eicu.errors.CodecError`. The kernels check every index against the buffer length and
report failures as status codes, so corrupt input never reads out of bounds or loops without end.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numba
import numpy as np
from numpy.typing import NDArray

from eicu.errors import CodecError

# fastmath without nnan/ninf (house policy); the kernels here use integer arithmetic only.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

FORMAT_VERSION = 1
BLOCK = 64  # samples per sub-block (fixed by format version 1)
MAX_ORDER = 3
MAX_RICE_K = 13
PARAM_ZERO = 14
PARAM_VERBATIM = 15
_INT16 = np.dtype(np.int16)
_MAX_COUNT = 1 << 35  # a LEB128 count takes at most 5 bytes
_MAX_QUOTIENT = 1 << 21  # above any quotient a valid stream holds (|residual| < 2**19)

_OK = 0
_E_SHORT = 1
_E_VERSION = 2
_E_CHECKSUM = 3
_E_COUNT = 4
_E_TRUNCATED = 5
_E_RANGE = 6
_E_QUOTIENT = 7
_E_PADDING = 8
_E_TRAILING = 9

_ERRORS: dict[int, tuple[str, str]] = {
    _E_SHORT: ("truncated", "shorter than the smallest encoded block (3 bytes)"),
    _E_VERSION: ("version", f"first byte is not format version {FORMAT_VERSION}"),
    _E_CHECKSUM: ("checksum", "CRC-8 does not match: the block is corrupt or truncated"),
    _E_COUNT: ("count", "sample count is malformed or more than the data can hold"),
    _E_TRUNCATED: ("truncated", "the bit stream ends before the last sample"),
    _E_RANGE: ("range", "a decoded sample falls outside int16"),
    _E_QUOTIENT: ("quotient", "a Rice code is longer than any valid residual"),
    _E_PADDING: ("padding", "non-zero bits after the last sample"),
    _E_TRAILING: ("trailing", "bytes after the end of the bit stream"),
}


def _crc8_table() -> NDArray[np.uint8]:
    table = np.zeros(256, dtype=np.uint8)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table[byte] = crc
    return table


_CRC8 = _crc8_table()


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _crc8(buf, start, stop):
    crc = 0
    for i in range(start, stop):
        crc = _CRC8[crc ^ buf[i]]
    return crc


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _max_encoded_size(n):
    """Bytes an n-sample block can take at most (verbatim sub-blocks throughout)."""
    nres = max(n - 1, 0)
    nblocks = (nres + BLOCK - 1) // BLOCK
    return 1 + 5 + 2 + (nblocks * 4 + nres * 16 + 7) // 8 + 1


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _rice_cost(u, m, k):
    total = m * (k + 1)
    for j in range(m):
        total += u[j] >> k
    return total


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _flush(out, pos, acc, nb):
    while nb >= 8:
        nb -= 8
        out[pos] = (acc >> nb) & 0xFF
        pos += 1
    acc &= (1 << nb) - 1
    return pos, acc, nb


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _encode_into(x, out, pos, zz, sums):
    """Encode x (int16) into out from pos; returns the position after the CRC byte.

    zz (int64, MAX_ORDER + 1 by BLOCK) and sums (int64, MAX_ORDER + 1) are scratch space.
    """
    start = pos
    n = x.shape[0]
    out[pos] = FORMAT_VERSION
    pos += 1
    c = n
    while c >= 0x80:
        out[pos] = (c & 0x7F) | 0x80
        pos += 1
        c >>= 7
    out[pos] = c
    pos += 1
    if n > 0:
        x0 = np.int64(x[0]) & 0xFFFF
        out[pos] = x0 & 0xFF
        out[pos + 1] = x0 >> 8
        pos += 2
    acc = np.int64(0)
    nb = np.int64(0)
    a = 1
    while a < n:
        b = min(a + BLOCK, n)
        m = b - a
        for p in range(MAX_ORDER + 1):
            sums[p] = 0
        for j in range(m):
            i = a + j
            v0 = np.int64(x[i])
            v1 = np.int64(x[i - 1])
            e0 = v0
            e1 = v0 - v1
            if i >= 2:
                v2 = np.int64(x[i - 2])
                e2 = e1 - (v1 - v2)
                e3 = e2 - ((v1 - v2) - (v2 - np.int64(x[i - 3]))) if i >= 3 else e2
            else:
                e2 = e1
                e3 = e1
            u0 = (e0 << 1) ^ (e0 >> 63)
            u1 = (e1 << 1) ^ (e1 >> 63)
            u2 = (e2 << 1) ^ (e2 >> 63)
            u3 = (e3 << 1) ^ (e3 >> 63)
            zz[0, j] = u0
            zz[1, j] = u1
            zz[2, j] = u2
            zz[3, j] = u3
            sums[0] += u0
            sums[1] += u1
            sums[2] += u2
            sums[3] += u3
        order = 0
        for p in range(1, MAX_ORDER + 1):
            if sums[p] < sums[order]:
                order = p
        u = zz[order]
        if sums[order] == 0:
            acc = (acc << 6) | (PARAM_ZERO << 2) | order
            nb += 6
        else:
            # cost(k) = m(k+1) + sum(u >> k) is convex in k. From k = floor(log2(mean u)) the
            # minimum is at most one step up: cost(k+2) - cost(k+1) = m - sum(ceil(v/2)) with
            # v = u >> (k+1), and sum(v) < m because mean u < 2**(k+1), so that step is > 0.
            mean = sums[order] // m
            k = 0
            while k < MAX_RICE_K and (mean >> (k + 1)) > 0:
                k += 1
            cost = _rice_cost(u, m, k)
            up = _rice_cost(u, m, k + 1) if k < MAX_RICE_K else cost
            if up < cost:
                k += 1
                cost = up
            else:
                while k > 0:
                    nxt = _rice_cost(u, m, k - 1)
                    if nxt > cost:
                        break
                    k -= 1
                    cost = nxt
            if 16 * m < 2 + cost:
                acc = (acc << 4) | PARAM_VERBATIM
                nb += 4
                for j in range(m):
                    acc = (acc << 16) | (np.int64(x[a + j]) & 0xFFFF)
                    nb += 16
                    if nb >= 32:
                        pos, acc, nb = _flush(out, pos, acc, nb)
            else:
                acc = (acc << 6) | (k << 2) | order
                nb += 6
                lowmask = (1 << k) - 1
                for j in range(m):
                    uj = u[j]
                    q = uj >> k
                    width = q + 1 + k
                    if width <= 31:
                        acc = (acc << width) | (1 << k) | (uj & lowmask)
                        nb += width
                    else:
                        while q > 0:
                            step = min(q, 24)
                            acc <<= step
                            nb += step
                            q -= step
                            pos, acc, nb = _flush(out, pos, acc, nb)
                        acc = (acc << (k + 1)) | (1 << k) | (uj & lowmask)
                        nb += k + 1
                    if nb >= 32:
                        pos, acc, nb = _flush(out, pos, acc, nb)
        pos, acc, nb = _flush(out, pos, acc, nb)
        a = b
    if nb > 0:
        out[pos] = (acc << (8 - nb)) & 0xFF
        pos += 1
    out[pos] = _crc8(out, start, pos)
    return pos + 1


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _encode(x):
    out = np.empty(_max_encoded_size(x.shape[0]), dtype=np.uint8)
    zz = np.empty((MAX_ORDER + 1, BLOCK), dtype=np.int64)
    sums = np.empty(MAX_ORDER + 1, dtype=np.int64)
    size = _encode_into(x, out, 0, zz, sums)
    return out[:size]


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _encode_many(flat, bounds):
    nchunks = bounds.shape[0] - 1
    cap = 0
    for c in range(nchunks):
        cap += _max_encoded_size(bounds[c + 1] - bounds[c])
    out = np.empty(cap, dtype=np.uint8)
    ends = np.empty(nchunks + 1, dtype=np.int64)
    ends[0] = 0
    zz = np.empty((MAX_ORDER + 1, BLOCK), dtype=np.int64)
    sums = np.empty(MAX_ORDER + 1, dtype=np.int64)
    pos = 0
    for c in range(nchunks):
        pos = _encode_into(flat[bounds[c] : bounds[c + 1]], out, pos, zz, sums)
        ends[c + 1] = pos
    return out, ends


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _refill(buf, pos, end, acc, nb):
    while nb <= 48 and pos < end:
        acc = (acc << 8) | int(buf[pos])
        pos += 1
        nb += 8
    return pos, acc, nb


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _header(buf, start, stop):
    """Check buf[start:stop] up to the bit stream: (status, sample count, stream start, end)."""
    size = stop - start
    if size < 3:
        return _E_SHORT, 0, 0, 0
    if buf[start] != FORMAT_VERSION:
        return _E_VERSION, 0, 0, 0
    end = stop - 1
    if _crc8(buf, start, end) != buf[end]:
        return _E_CHECKSUM, 0, 0, 0
    pos = start + 1
    n = 0
    shift = 0
    while True:
        if pos >= end or shift >= 35:
            return _E_COUNT, 0, 0, 0
        byte = int(buf[pos])
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift > 0:  # over-long encoding
                return _E_COUNT, 0, 0, 0
            break
        shift += 7
    if n == 0:
        if pos != end:
            return _E_TRAILING, 0, 0, 0
        return _OK, 0, pos, end
    if pos + 2 > end:
        return _E_TRUNCATED, 0, 0, 0
    nblocks = (n - 1 + BLOCK - 1) // BLOCK
    if nblocks * 6 > (end - pos - 2) * 8:  # every sub-block takes at least 6 bits
        return _E_COUNT, 0, 0, 0
    return _OK, n, pos, end


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _body(buf, pos, end, n, out):
    """Decode n >= 1 samples from buf[pos:end] into out[:n]; returns a status."""
    x0 = int(buf[pos]) | (int(buf[pos + 1]) << 8)
    if x0 >= 0x8000:
        x0 -= 0x10000
    out[0] = x0
    pos += 2
    x1 = x0
    x2 = x0
    x3 = x0
    acc = 0
    nb = 0
    a = 1
    while a < n:
        b = min(a + BLOCK, n)
        pos, acc, nb = _refill(buf, pos, end, acc, nb)
        if nb < 4:
            return _E_TRUNCATED
        nb -= 4
        param = acc >> nb
        acc &= (1 << nb) - 1
        if param == PARAM_VERBATIM:
            for i in range(a, b):
                if nb < 16:
                    pos, acc, nb = _refill(buf, pos, end, acc, nb)
                    if nb < 16:
                        return _E_TRUNCATED
                nb -= 16
                v = acc >> nb
                acc &= (1 << nb) - 1
                if v >= 0x8000:
                    v -= 0x10000
                out[i] = v
                x3 = x2
                x2 = x1
                x1 = v
            a = b
            continue
        if nb < 2:
            return _E_TRUNCATED
        nb -= 2
        order = acc >> nb
        acc &= (1 << nb) - 1
        k = param
        for i in range(a, b):
            if order == 0:
                pred = 0
            elif order == 1 or i == 1:
                pred = x1
            elif order == 2 or i == 2:
                pred = 2 * x1 - x2
            else:
                pred = 3 * (x1 - x2) + x3
            if param == PARAM_ZERO:
                v = pred
            else:
                if nb < 32:
                    pos, acc, nb = _refill(buf, pos, end, acc, nb)
                q = 0
                while acc == 0:
                    q += nb
                    nb = 0
                    if q > _MAX_QUOTIENT:
                        return _E_QUOTIENT
                    if pos >= end:
                        return _E_TRUNCATED
                    pos, acc, nb = _refill(buf, pos, end, acc, nb)
                top = nb - 1
                while (acc >> top) == 0:
                    top -= 1
                q += nb - 1 - top
                if q > _MAX_QUOTIENT:
                    return _E_QUOTIENT
                nb = top
                acc ^= 1 << top
                if nb < k:
                    pos, acc, nb = _refill(buf, pos, end, acc, nb)
                    if nb < k:
                        return _E_TRUNCATED
                nb -= k
                uz = (q << k) | (acc >> nb)
                acc &= (1 << nb) - 1
                v = pred + ((uz >> 1) ^ -(uz & 1))
            if v < -32768 or v > 32767:
                return _E_RANGE
            out[i] = v
            x3 = x2
            x2 = x1
            x1 = v
        a = b
    # nb < 8 bits of padding may remain in acc, and bytes beyond that are trailing
    if nb >= 8 or pos != end:
        return _E_TRAILING
    if acc != 0:
        return _E_PADDING
    return _OK


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _decode(buf):
    status, n, pos, end = _header(buf, 0, buf.shape[0])
    out = np.empty(n, dtype=np.int16)
    if status == _OK and n > 0:
        status = _body(buf, pos, end, n, out)
    if status != _OK:
        return status, np.empty(0, dtype=np.int16)
    return status, out


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def _decode_many(buf, bounds):
    """Decode the blocks buf[bounds[c]:bounds[c + 1]] into one array.

    Returns (status, index of the failing block or -1, samples, sample bounds).
    """
    nblocks = bounds.shape[0] - 1
    counts = np.zeros(nblocks + 1, dtype=np.int64)
    starts = np.empty(nblocks, dtype=np.int64)
    for c in range(nblocks):
        status, n, pos, _ = _header(buf, bounds[c], bounds[c + 1])
        if status != _OK:
            return status, c, np.empty(0, dtype=np.int16), counts
        counts[c + 1] = counts[c] + n
        starts[c] = pos
    out = np.empty(counts[nblocks], dtype=np.int16)
    for c in range(nblocks):
        n = counts[c + 1] - counts[c]
        if n > 0:
            status = _body(buf, starts[c], bounds[c + 1] - 1, n, out[counts[c] : counts[c + 1]])
            if status != _OK:
                return status, c, np.empty(0, dtype=np.int16), counts
    return _OK, -1, out, counts


def encode_int16(samples: NDArray[np.int16]) -> bytes:
    """Encode a 1-D int16 array losslessly into a self-describing block (format version 1)."""
    x = _check_samples(samples)
    return _encode(x).tobytes()


def encode_many(chunks: Sequence[NDArray[np.int16]]) -> list[bytes]:
    """Encode many 1-D int16 arrays in one kernel call; each result equals ``encode_int16``."""
    arrays = [
        chunk
        if type(chunk) is np.ndarray and chunk.dtype is _INT16 and chunk.ndim == 1
        else _check_samples(chunk)
        for chunk in chunks
    ]
    if not arrays:
        return []
    bounds = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([a.shape[0] for a in arrays], out=bounds[1:])
    if bounds[-1] >= _MAX_COUNT:
        raise ValueError(f"at most {_MAX_COUNT - 1} samples in all, got {bounds[-1]}")
    out, ends = _encode_many(np.concatenate(arrays), bounds)
    blob = out.tobytes()
    return [blob[a:b] for a, b in pairwise(ends.tolist())]


def decode_int16(data: bytes | bytearray | memoryview) -> NDArray[np.int16]:
    """Decode one block written by :func:`encode_int16`.

    Raises :class:`eicu.errors.CodecError` (a ``ValueError``) when the block is corrupt,
    truncated, has trailing bytes, or is of another format version.
    """
    view = _byte_view(data)
    status, out = _decode(np.frombuffer(view, dtype=np.uint8))
    if status != _OK:
        reason, detail = _ERRORS[int(status)]
        raise CodecError(reason, f"{detail} ({len(view)} bytes)")
    return out


def decode_many(blocks: Sequence[bytes | bytearray | memoryview]) -> list[NDArray[np.int16]]:
    """Decode many blocks in one kernel call; each result equals ``decode_int16`` of its block.

    The arrays are disjoint views of one buffer. A bad block raises :class:`CodecError` naming
    its index, and nothing is returned.
    """
    views = [_byte_view(block) for block in blocks]
    if not views:
        return []
    bounds = np.zeros(len(views) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in views], out=bounds[1:])
    buf = np.frombuffer(b"".join(views), dtype=np.uint8)
    status, bad, out, counts = _decode_many(buf, bounds)
    if status != _OK:
        reason, detail = _ERRORS[int(status)]
        raise CodecError(reason, f"block {bad}: {detail} ({len(views[bad])} bytes)")
    return [out[a:b] for a, b in pairwise(counts.tolist())]


def _byte_view(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    if isinstance(data, bytes | bytearray):
        return data
    if not isinstance(data, memoryview):
        raise TypeError(f"need bytes, bytearray or memoryview, got {type(data).__name__}")
    try:
        return data.cast("B")
    except TypeError as exc:
        raise CodecError("layout", f"the buffer is not C-contiguous: {exc}") from exc


def _check_samples(samples: NDArray[np.int16]) -> NDArray[np.int16]:
    x = np.asarray(samples)
    if x.dtype.kind != "i" or x.dtype.itemsize != 2 or x.ndim != 1:
        raise ValueError(f"need a 1-D int16 array, got dtype {x.dtype} and shape {x.shape}")
    if x.dtype is not _INT16:  # int16 in the other byte order
        x = x.astype(_INT16)
    if x.shape[0] >= _MAX_COUNT:
        raise ValueError(f"at most {_MAX_COUNT - 1} samples a block, got {x.shape[0]}")
    return np.ascontiguousarray(x)
