"""The int16 waveform codec: round trips, a bit-by-bit reference, corrupt input, real records."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from eicu.datasets import mitdb_records
from eicu.errors import CodecError, StorageError
from eicu.kernels.codec import (
    BLOCK,
    FORMAT_VERSION,
    decode_int16,
    decode_many,
    encode_int16,
    encode_many,
)
from tests.conftest import require_data

# ---------------------------------------------------------------------------------------------
# The reference: plain Python, one bit at a time, written from the format description alone.

_ORDERS = 4
_KS = 14


def naive_crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _zigzag(r: int) -> int:
    return 2 * r if r >= 0 else -2 * r - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


def _residual(x: list[int], i: int, order: int) -> int:
    q = min(order, i)
    return sum((-1) ** j * math.comb(q, j) * x[i - j] for j in range(q + 1))


def _prediction(x: list[int], i: int, order: int) -> int:
    q = min(order, i)
    return -sum((-1) ** j * math.comb(q, j) * x[i - j] for j in range(1, q + 1))


def naive_encode(samples: NDArray[np.int16]) -> bytes:
    x = [int(v) for v in samples]
    n = len(x)
    out = bytearray([FORMAT_VERSION])
    c = n
    while c >= 0x80:
        out.append((c & 0x7F) | 0x80)
        c >>= 7
    out.append(c)
    if n:
        out += (x[0] & 0xFFFF).to_bytes(2, "little")
    bits: list[str] = []
    for a in range(1, n, BLOCK):
        idx = range(a, min(a + BLOCK, n))
        m = len(idx)
        us = [[_zigzag(_residual(x, i, p)) for i in idx] for p in range(_ORDERS)]
        order = min(range(_ORDERS), key=lambda p: (sum(us[p]), p))
        u = us[order]
        if sum(u) == 0:
            bits.append(f"{14:04b}{order:02b}")
            continue
        costs = [m * (k + 1) + sum(v >> k for v in u) for k in range(_KS)]
        k = min(range(_KS), key=lambda k: (costs[k], k))
        if 16 * m < 2 + costs[k]:
            bits.append("1111")
            bits.extend(f"{x[i] & 0xFFFF:016b}" for i in idx)
            continue
        bits.append(f"{k:04b}{order:02b}")
        for v in u:
            bits.append("0" * (v >> k) + "1" + (format(v & ((1 << k) - 1), f"0{k}b") if k else ""))
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    out += bytes(int(stream[j : j + 8], 2) for j in range(0, len(stream), 8))
    out.append(naive_crc8(bytes(out)))
    return bytes(out)


def naive_decode(data: bytes) -> list[int]:
    """The samples, or ValueError for anything the format does not allow."""
    if len(data) < 3 or data[0] != FORMAT_VERSION or naive_crc8(data[:-1]) != data[-1]:
        raise ValueError("header or checksum")
    body = data[:-1]
    pos, n, shift = 1, 0, 0
    while True:
        if pos >= len(body) or shift >= 35:
            raise ValueError("count")
        byte = body[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift > 0:
                raise ValueError("over-long count")
            break
        shift += 7
    if n == 0:
        if pos != len(body):
            raise ValueError("trailing")
        return []
    if pos + 2 > len(body):
        raise ValueError("truncated")
    x = [int.from_bytes(body[pos : pos + 2], "little", signed=True)]
    stream = "".join(f"{b:08b}" for b in body[pos + 2 :])
    at = 0

    def take(width: int) -> int:
        nonlocal at
        if at + width > len(stream):
            raise ValueError("truncated")
        at += width
        return int(stream[at - width : at], 2) if width else 0

    for a in range(1, n, BLOCK):
        idx = range(a, min(a + BLOCK, n))
        param = take(4)
        if param == 15:
            for _ in idx:
                v = take(16)
                x.append(v - 0x10000 if v >= 0x8000 else v)
            continue
        order = take(2)
        for i in idx:
            if param == 14:
                u = 0
            else:
                q = 0
                while take(1) == 0:
                    q += 1
                u = (q << param) | take(param)
            v = _prediction(x, i, order) + _unzigzag(u)
            if not -32768 <= v <= 32767:
                raise ValueError("range")
            x.append(v)
    rest = stream[at:]
    if len(rest) >= 8 or "1" in rest:
        raise ValueError("trailing or padding")
    return x


# ---------------------------------------------------------------------------------------------
# Inputs


def _i16(values: object) -> NDArray[np.int16]:
    return np.asarray(np.clip(np.asarray(values, dtype=np.int64), -32768, 32767), dtype=np.int16)


def _fixed_cases() -> dict[str, NDArray[np.int16]]:
    rng = np.random.default_rng(20260101)
    t = np.arange(3000)
    spike = np.zeros(64 + 1, dtype=np.int64)
    spike[40] = 300  # one large residual among zeros: a 75-bit unary run at the chosen k
    return {
        "empty": _i16([]),
        "one": _i16([-32768]),
        "two": _i16([32767, -32768]),
        "three": _i16([5, -7, 9]),
        "constant": np.full(1000, -1234, dtype=np.int16),
        "zeros_block_edge": np.zeros(BLOCK + 1, dtype=np.int16),
        "ramp": _i16(t - 1500),
        "parabola": _i16((t - 1500) ** 2 // 200 - 10000),
        "cubic": _i16((t - 1500) ** 3 // 200_000),
        "alternating_extremes": _i16(np.where(t % 2, 32767, -32768)),
        "white_noise": rng.integers(-32768, 32768, 3000).astype(np.int16),
        "small_noise": rng.integers(-3, 4, 2999).astype(np.int16),
        "sine_12bit": _i16(2000 * np.sin(2 * np.pi * t / 360) + rng.normal(0, 3, t.size)),
        "spike": _i16(spike),
        "saturated_steps": _i16(np.where((t // 97) % 2, 32767, -32768)),
    }


FIXED = _fixed_cases()


@st.composite
def waveforms(draw: st.DrawFn, max_len: int = 3000) -> NDArray[np.int16]:
    n = draw(st.one_of(st.integers(0, 2 * BLOCK + 3), st.integers(0, max_len)))
    kind = draw(st.sampled_from(["uniform", "walk", "constant", "ramp", "extremes", "spikes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        return rng.integers(-32768, 32768, n).astype(np.int16)
    if kind == "walk":
        step = draw(st.integers(1, 5000))
        start = draw(st.integers(-32768, 32767))
        return _i16(start + np.cumsum(rng.integers(-step, step + 1, n)))
    if kind == "constant":
        return np.full(n, draw(st.integers(-32768, 32767)), dtype=np.int16)
    if kind == "ramp":
        slope = draw(st.integers(-70, 70))
        return _i16(draw(st.integers(-32768, 32767)) + slope * np.arange(n))
    if kind == "extremes":
        return rng.choice(np.array([-32768, -32767, -1, 0, 1, 32766, 32767]), n).astype(np.int16)
    x = np.zeros(n, dtype=np.int64)
    hits = rng.random(n) < draw(st.floats(0.0, 0.2))
    x[hits] = rng.integers(-32768, 32768, int(hits.sum()))
    return _i16(x)


# ---------------------------------------------------------------------------------------------
# Round trips and equality with the reference


def test_reference_crc_matches_the_published_check_value() -> None:
    # CRC-8/SMBUS (poly 0x07, init 0, no reflection, no final xor): check value 0xF4
    assert naive_crc8(b"123456789") == 0xF4


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_inputs_round_trip_and_match_the_reference(name: str) -> None:
    x = FIXED[name]
    data = encode_int16(x)
    assert data == naive_encode(x)
    y = decode_int16(data)
    assert y.dtype == np.int16
    np.testing.assert_array_equal(y, x)
    assert naive_decode(data) == x.tolist()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(waveforms())
def test_drawn_inputs_round_trip_and_match_the_reference(x: NDArray[np.int16]) -> None:
    data = encode_int16(x)
    assert data == naive_encode(x)
    np.testing.assert_array_equal(decode_int16(data), x)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-32768, 32767), max_size=300))
def test_drawn_lists_round_trip(values: list[int]) -> None:
    x = np.array(values, dtype=np.int16)
    data = encode_int16(x)
    assert data == naive_encode(x)
    assert decode_int16(data).tolist() == values


def test_header_is_four_bytes_plus_a_checksum() -> None:
    assert encode_int16(_i16([])) == bytes([FORMAT_VERSION, 0, naive_crc8(bytes([1, 0]))])
    data = encode_int16(_i16([-2]))
    assert data[:4] == bytes([FORMAT_VERSION, 1, 0xFE, 0xFF])
    assert len(data) == 5
    assert len(encode_int16(np.zeros(BLOCK + 1, dtype=np.int16))) == 1 + 1 + 2 + 1 + 1
    assert len(encode_int16(np.zeros(2 * BLOCK + 1, dtype=np.int16))) == 1 + 2 + 2 + 2 + 1
    assert encode_int16(np.zeros(300, dtype=np.int16))[1:3] == bytes([0xAC, 0x02])


@pytest.mark.parametrize("name", ["white_noise", "alternating_extremes", "saturated_steps"])
def test_worst_case_grows_by_half_a_byte_per_sub_block(name: str) -> None:
    x = FIXED[name]
    n = x.shape[0]
    sub_blocks = math.ceil((n - 1) / BLOCK)
    count_bytes = len(encode_int16(x)) - 2 * n - 2 - math.ceil(sub_blocks / 2)
    assert count_bytes <= 2  # the LEB128 sample count: 2 bytes for n < 16384


def test_encode_many_equals_encode_one_by_one() -> None:
    chunks = [FIXED[name][:size] for name in sorted(FIXED) for size in (0, 1, 16, 90, 3000)]
    assert encode_many(chunks) == [encode_int16(c) for c in chunks]
    assert encode_many([]) == []


def test_decode_many_equals_decode_one_by_one() -> None:
    chunks = [FIXED[name][:size] for name in sorted(FIXED) for size in (0, 1, 16, 90, 3000)]
    blocks = encode_many(chunks)
    decoded = decode_many([*blocks[:3], bytearray(blocks[3]), memoryview(blocks[4]), *blocks[5:]])
    assert len(decoded) == len(chunks)
    for got, chunk in zip(decoded, chunks, strict=True):
        assert got.dtype == np.int16
        np.testing.assert_array_equal(got, chunk)
    assert decode_many([]) == []


@pytest.mark.parametrize(
    ("damage", "reason"), [(slice(None, -1), "checksum"), (slice(0, 2), "truncated")]
)
def test_decode_many_names_the_bad_block(damage: slice, reason: str) -> None:
    blocks = encode_many([FIXED["sine_12bit"][a : a + 250] for a in range(0, 2500, 250)])
    blocks[6] = blocks[6][damage]
    with pytest.raises(CodecError, match="block 6") as info:
        decode_many(blocks)
    assert info.value.reason == reason


def test_decode_many_checks_every_stream() -> None:
    # a well-formed header whose stream runs out: caught in the second pass
    bad = _with_crc(bytes([1, 2, 0, 0, 0b11010000]))
    with pytest.raises(CodecError, match="block 1") as info:
        decode_many([encode_int16(FIXED["ramp"]), bad, encode_int16(FIXED["spike"])])
    assert info.value.reason == "truncated"


def test_decode_takes_bytearray_and_memoryview() -> None:
    x = FIXED["sine_12bit"]
    data = encode_int16(x)
    np.testing.assert_array_equal(decode_int16(bytearray(data)), x)
    framed = b"xx" + data + b"yy"
    np.testing.assert_array_equal(decode_int16(memoryview(framed)[2:-2]), x)


def test_encode_takes_strided_and_byte_swapped_int16() -> None:
    x = FIXED["sine_12bit"]
    expected = encode_int16(np.ascontiguousarray(x[::3]))
    assert encode_int16(x[::3]) == expected
    assert encode_many([x[::3]]) == [expected]
    swapped = x.astype(">i2")
    assert encode_int16(swapped) == encode_int16(x)
    assert encode_many([swapped, x]) == [encode_int16(x)] * 2


def test_encode_rejects_other_dtypes_and_shapes() -> None:
    with pytest.raises(ValueError, match="1-D int16"):
        encode_int16(np.zeros(4, dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D int16"):
        encode_int16(np.zeros((2, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="1-D int16"):
        encode_many([np.zeros(3, dtype=np.uint16)])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# Corrupt input


def _with_crc(body: bytes) -> bytes:
    return body + bytes([naive_crc8(body)])


def _valid_blob() -> bytes:
    return encode_int16(FIXED["sine_12bit"][:700])


def test_codec_error_is_a_value_error_and_a_storage_error() -> None:
    with pytest.raises(CodecError) as info:
        decode_int16(b"\x02\x00\x00")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, StorageError)
    assert info.value.reason == "version"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01\x00", "truncated"),
        (b"\x01\x00\x00", "checksum"),
        (bytes([1, 0x80, 0x00]) + bytes([naive_crc8(bytes([1, 0x80, 0x00]))]), "count"),
        (bytes([1, 0, 0]) + bytes([naive_crc8(bytes([1, 0, 0]))]), "trailing"),
        (bytes([1, 0xFF, 0x7F, 0, 0]) + bytes([naive_crc8(bytes([1, 0xFF, 0x7F, 0, 0]))]), "count"),
        (bytes([1, 2, 0, 0]) + bytes([naive_crc8(bytes([1, 2, 0, 0]))]), "count"),
        (_with_crc(bytes([1, 2, 0, 0, 0b11010000])), "truncated"),
    ],
)
def test_malformed_blocks_name_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as info:
        decode_int16(data)
    assert info.value.reason == reason


def test_sample_outside_int16_is_rejected() -> None:
    # n = 2, x0 = 32767, sub-block k=0 order 1, residual +1 (zigzag 2: "001") -> 32768
    body = bytes([1, 2, 0xFF, 0x7F]) + bytes([0b00000100, 0b10000000])
    with pytest.raises(CodecError) as info:
        decode_int16(_with_crc(body))
    assert info.value.reason == "range"


def _stream(n: int, bits: str) -> bytes:
    """A block of n samples starting at 0 with the given bit stream, padded, with its CRC."""
    bits += "0" * (-len(bits) % 8)
    body = bytes([1, n, 0, 0]) + bytes(int(bits[j : j + 8], 2) for j in range(0, len(bits), 8))
    return _with_crc(body)


@pytest.mark.parametrize(
    ("minus_ones", "tail", "reason"),
    [
        (8, "", "truncated"),  # 78 bits, then 2 bits of padding where a 4-bit param should be
        (6, "1101", "truncated"),  # 76 bits, a 4-bit param, and no room for the 2-bit order
        (6, "111001", None),  # 76 bits, then a whole zero-residual sub-block: valid
    ],
)
def test_stream_ending_inside_a_sub_block_header(
    minus_ones: int, tail: str, reason: str | None
) -> None:
    # sub-block 1: k = 0, order 1, residuals 0 ("1") and then some -1 ("01")
    first = "0000" + "01" + "1" * (BLOCK - minus_ones) + "01" * minus_ones
    data = _stream(BLOCK + 2, first + tail)
    if reason is None:
        assert decode_int16(data).tolist() == naive_decode(data)
        return
    with pytest.raises(CodecError) as info:
        decode_int16(data)
    assert info.value.reason == reason
    with pytest.raises(ValueError):
        naive_decode(data)


@pytest.mark.parametrize("zeros", [(1 << 21) + 1, (1 << 21) + 200])
def test_overlong_rice_quotient_is_rejected(zeros: int) -> None:
    # k = 0, order 0, then a run of zero bits longer than any valid quotient, then a one
    data = _stream(2, "000000" + "0" * zeros + "1")
    with pytest.raises(CodecError) as info:
        decode_int16(data)
    assert info.value.reason == "quotient"


def test_sample_counts_beyond_the_format_limit_are_refused(monkeypatch: pytest.MonkeyPatch):
    from eicu.kernels import codec

    monkeypatch.setattr(codec, "_MAX_COUNT", 10)
    with pytest.raises(ValueError, match="at most 9 samples a block"):
        encode_int16(np.zeros(10, dtype=np.int16))
    with pytest.raises(ValueError, match="at most 9 samples in all"):
        encode_many([np.zeros(5, dtype=np.int16), np.zeros(5, dtype=np.int16)])
    assert decode_int16(encode_int16(np.zeros(9, dtype=np.int16))).tolist() == [0] * 9


@pytest.mark.parametrize("name", ["one", "two", "ramp", "sine_12bit", "white_noise"])
@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 9, b"\x80"])
def test_bytes_after_the_stream_are_rejected(name: str, extra: bytes) -> None:
    data = _with_crc(encode_int16(FIXED[name])[:-1] + extra)
    with pytest.raises(CodecError) as info:
        decode_int16(data)
    assert info.value.reason == "trailing"
    with pytest.raises(ValueError):
        naive_decode(data)


def test_non_zero_padding_is_rejected() -> None:
    # n = 2, x0 = 0, sub-block of zero residuals under order 1, then a stray one bit
    body = bytes([1, 2, 0, 0]) + bytes([0b11100100 | 0b1])
    with pytest.raises(CodecError) as info:
        decode_int16(_with_crc(body))
    assert info.value.reason == "padding"
    np.testing.assert_array_equal(decode_int16(_with_crc(body[:-1] + b"\xe4")), [0, 0])


def test_non_contiguous_memoryview_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_int16(memoryview(_valid_blob() * 2)[::2])
    with pytest.raises(TypeError):
        decode_int16("not bytes")  # type: ignore[arg-type]


def test_every_truncation_is_rejected() -> None:
    data = _valid_blob()
    for size in range(len(data)):
        with pytest.raises(CodecError):
            decode_int16(data[:size])


def test_every_single_bit_flip_is_rejected() -> None:
    data = bytearray(_valid_blob())
    for bit in range(len(data) * 8):
        data[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CodecError):
            decode_int16(bytes(data))
        data[bit // 8] ^= 1 << (bit % 8)


def _agrees_with_reference(data: bytes) -> None:
    try:
        expected = naive_decode(data)
    except ValueError:
        with pytest.raises(CodecError):
            decode_int16(data)
    else:
        assert decode_int16(data).tolist() == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_rejected_or_decoded_like_the_reference(data: bytes) -> None:
    _agrees_with_reference(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_random_streams_behind_a_valid_checksum_match_the_reference(body: bytes) -> None:
    # version byte and checksum right, so the structure checks do the work
    _agrees_with_reference(_with_crc(bytes([FORMAT_VERSION]) + body))


@settings(max_examples=300, deadline=None)
@given(waveforms(max_len=400), st.data())
def test_bit_flips_in_valid_streams_match_the_reference(x: NDArray[np.int16], data: st.DataObject):
    blob = bytearray(encode_int16(x)[:-1])
    flips = data.draw(st.lists(st.integers(0, len(blob) * 8 - 1), min_size=1, max_size=6))
    for bit in flips:
        blob[bit // 8] ^= 1 << (bit % 8)
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    _agrees_with_reference(_with_crc(bytes(blob)))


# ---------------------------------------------------------------------------------------------
# Real records


def _read_adc(path: Path, channels: list[int] | None = None) -> NDArray[np.int16]:
    """The stored ADC units of a WFDB record, one column a channel."""
    with warnings.catch_warnings():
        # importing wfdb builds a table with a pandas keyword that newer pandas deprecates
        warnings.filterwarnings("ignore", "The inplace keyword", DeprecationWarning)
        import wfdb

        record = wfdb.rdrecord(str(path), physical=False, channels=channels)
    return np.asarray(record.d_signal, dtype=np.int16)


@pytest.mark.realdata
@pytest.mark.parametrize("channel", [0, 1])
def test_mitdb_250_sample_chunks_round_trip_within_one_byte_per_sample(channel: int) -> None:
    root = require_data("mitdb/208.hea", "mitdb/208.dat")
    x = _read_adc(root / "mitdb" / "208", [channel])[:, 0]
    chunks = [x[a : a + 250] for a in range(0, x.shape[0], 250)]
    encoded = encode_many(chunks)
    total = sum(len(b) for b in encoded)
    for chunk, data in zip(chunks, encoded, strict=True):
        np.testing.assert_array_equal(decode_int16(data), chunk)
    assert total / x.shape[0] <= 1.0
    whole = encode_int16(x)
    np.testing.assert_array_equal(decode_int16(whole), x)


@pytest.mark.realdata
def test_every_mitdb_record_round_trips_within_one_byte_per_sample() -> None:
    root = require_data("mitdb/RECORDS")
    names = mitdb_records()
    assert names
    worst = 0.0
    for name in names:
        signals = _read_adc(root / "mitdb" / name)
        for x in signals.T:
            chunks = [x[a : a + 250] for a in range(0, x.shape[0], 250)]
            encoded = encode_many(chunks)
            decoded = np.concatenate(decode_many(encoded))
            np.testing.assert_array_equal(decoded, x)
            worst = max(worst, sum(len(b) for b in encoded) / x.shape[0])
    assert worst <= 1.0


@pytest.mark.realdata
def test_challenge2015_record_round_trips() -> None:
    root = require_data("challenge2015/v131l.hea", "challenge2015/v131l.mat")
    signals = _read_adc(root / "challenge2015" / "v131l")
    assert signals.shape[1] == 4
    for x in signals.T:
        np.testing.assert_array_equal(decode_int16(encode_int16(x)), x)
