"""The wire protocol: round trips of every message kind, and every kind of bad payload."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu import wire
from eicu.errors import PayloadError
from eicu.models import BedKey, NumericsFrame, SignalBlock, StatusFrame, WaveformFrame

BED = BedKey("karamay", "bed07")
T0 = 1_764_302_400_000_000


def _frame(seq: int = 5) -> WaveformFrame:
    rng = np.random.default_rng(seq)
    return WaveformFrame(
        bed=BED,
        seq=seq,
        t0_us=T0,
        blocks=(
            SignalBlock("ECG_II", 250.0, 200.0, 0, rng.integers(-2000, 2000, 62, dtype=np.int16)),
            SignalBlock("ECG_V", 250.0, 200.0, 0, rng.integers(-2000, 2000, 62, dtype=np.int16)),
            SignalBlock("PLETH", 125.0, 1000.0, 0, rng.integers(0, 1000, 31, dtype=np.int16)),
            SignalBlock(
                "RESP", 62.5, 100.0, 10, rng.integers(-500, 500, 16, dtype=np.int16), 12_000
            ),
        ),
    )


def test_waveform_round_trip() -> None:
    frame = _frame()
    payload = wire.encode_waveform(frame)
    back = wire.decode(wire.waveform_topic(BED), payload, received_us=7)
    assert isinstance(back, WaveformFrame)
    assert back.bed == BED and back.seq == frame.seq and back.t0_us == frame.t0_us
    assert back.blocks == frame.blocks
    assert back.received_us == 7
    assert back.n_samples == 62 + 62 + 31 + 16
    assert len(payload) == 18 + 4 * 18 + 2 * back.n_samples


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 600),
    lo=st.integers(-32768, 0),
    seq=st.integers(0, 2**32 - 1),
    gain=st.floats(0.5, 1024.0, width=32),
)
def test_waveform_round_trip_drawn(n: int, lo: int, seq: int, gain: float) -> None:
    samples = np.random.default_rng(n).integers(lo, 32767, n, endpoint=True).astype(np.int16)
    frame = WaveformFrame(BED, seq, T0, (SignalBlock("ABP", 125.0, gain, -3, samples),))
    back = wire.decode_waveform(BED, wire.encode_waveform(frame))
    assert back.blocks == frame.blocks and back.seq == seq


def test_numerics_round_trip() -> None:
    values: dict[str, float | None] = {
        "HR": 72.0,
        "SPO2": 97.5,
        "RR": 16.0,
        "TEMP": 37.2,
        "NIBP_SYS": None,
        "ACVPU": 1.0,
        "O2": 1.0,
    }
    frame = NumericsFrame(BED, 9, T0, values)
    payload = wire.encode_numerics(frame)
    doc = json.loads(payload)
    assert doc["values"]["ACVPU"] == "C" and doc["values"]["O2"] is True
    back = wire.decode(wire.numerics_topic(BED), payload)
    assert back == frame


def test_status_round_trips() -> None:
    bed_status = StatusFrame("karamay", "online", T0, bed="bed07")
    back = wire.decode(wire.status_topic(BED), wire.encode_status(bed_status))
    assert back == bed_status
    gw = StatusFrame("karamay", "offline", None, gateway="gw1", beds=("bed01", "bed02"))
    back = wire.decode(wire.gateway_status_topic("karamay", "gw1"), wire.encode_status(gw))
    assert back == gw
    # a bed's status may name its monitor
    named = StatusFrame("karamay", "online", T0, bed="bed07", device=("0123456789ABCDEF", "EUI-64"))
    back = wire.decode(wire.status_topic(BED), wire.encode_status(named))
    assert back == named
    untyped = b'{"v":1,"state":"online","device":{"id":"SN-4711"}}'
    assert wire.decode(wire.status_topic(BED), untyped).device == ("SN-4711", "")  # type: ignore[union-attr]


def test_engine_ignores_its_own_alarms_and_cleared_status() -> None:
    assert wire.decode(wire.alarms_topic(BED), b'{"anything": 1}') is None
    assert wire.decode(wire.status_topic(BED), b"") is None


def _num(**overrides: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "seq": 1, "ts_ms": T0 // 1000, "values": {"HR": 80}}
    doc.update(overrides)
    return json.dumps(doc).encode()


GOOD_WF = wire.encode_waveform(_frame())


def _patch_block(field_offset: int, fmt: str, value: object) -> bytes:
    buf = bytearray(GOOD_WF)
    struct.pack_into(fmt, buf, 18 + field_offset, value)
    return bytes(buf)


BAD = [
    ("eicu/v1/karamay/bed07/vitals", _num(), "wrong_topic"),
    ("eicu/v2/karamay/bed07/numerics", _num(), "unknown_version"),
    ("eicu/v1/kara may/bed07/numerics", _num(), "wrong_topic"),
    ("other/topic", _num(), "wrong_topic"),
    ("eicu/v1/karamay/bed07/numerics", b"{not json", "malformed"),
    ("eicu/v1/karamay/bed07/numerics", b"[1, 2]", "malformed"),
    ("eicu/v1/karamay/bed07/numerics", b"\xff\xfe", "malformed"),
    ("eicu/v1/karamay/bed07/numerics", b" " * 20000, "oversized"),
    ("eicu/v1/karamay/bed07/numerics", _num(v=2), "unknown_version"),
    # The version is exactly the integer 1: true and 1.0 equal 1 in Python, but are not it.
    ("eicu/v1/karamay/bed07/numerics", _num(v=True), "malformed"),
    ("eicu/v1/karamay/bed07/numerics", _num(v=1.0), "malformed"),
    ("eicu/v1/karamay/bed07/numerics", _num(v="1"), "malformed"),
    ("eicu/v1/karamay/bed07/status", b'{"v":true,"state":"standby"}', "malformed"),
    ("eicu/v1/karamay/bed07/status", b'{"v":1,"state":"online","device":"x"}', "malformed"),
    ("eicu/v1/karamay/bed07/status", b'{"v":1,"state":"online","device":{"id":""}}', "malformed"),
    (
        "eicu/v1/karamay/bed07/status",
        b'{"v":1,"state":"online","device":{"id":"a","type":7}}',
        "malformed",
    ),
    # Ids end where the topic level ends: "$" would let a trailing newline through.
    ("eicu/v1/karamay/bed07\n/numerics", _num(), "wrong_topic"),
    ("eicu/v1/karamay\n/bed07/numerics", _num(), "wrong_topic"),
    ("eicu/v1/karamay/_gateway/gw1\n/status", b'{"v":1,"state":"online"}', "wrong_topic"),
    (
        "eicu/v1/karamay/_gateway/gw1/status",
        b'{"v":1,"state":"online","beds":["bed01\\n"]}',
        "malformed",
    ),
    ("eicu/v1/karamay/bed07/numerics", _num(seq=-1), "malformed"),
    ("eicu/v1/karamay/bed07/numerics", _num(ts_ms=12), "impossible_time"),
    ("eicu/v1/karamay/bed07/numerics", _num(values={}), "malformed"),
    ("eicu/v1/karamay/bed07/numerics", _num(values={"XYZ": 1}), "unknown_parameter"),
    ("eicu/v1/karamay/bed07/numerics", _num(values={"HR": "80"}), "malformed"),
    ("eicu/v1/karamay/bed07/numerics", _num(values={"HR": -3}), "impossible_value"),
    ("eicu/v1/karamay/bed07/numerics", _num(values={"SPO2": 101}), "impossible_value"),
    ("eicu/v1/karamay/bed07/numerics", _num(values={"ACVPU": "Q"}), "impossible_value"),
    ("eicu/v1/karamay/bed07/numerics", _num(values={"O2": 1}), "malformed"),
    (
        "eicu/v1/karamay/bed07/numerics",
        b'{"v":1,"seq":1,"ts_ms":1764302400000,"values":{"HR":NaN}}',
        "non_finite",
    ),
    (
        "eicu/v1/karamay/bed07/numerics",
        b'{"v":1,"seq":1,"ts_ms":1764302400000,"values":{"HR":Infinity}}',
        "non_finite",
    ),
    ("eicu/v1/karamay/bed07/status", b'{"v":1,"state":"asleep"}', "malformed"),
    ("eicu/v1/karamay/_gateway/gw1/status", b'{"v":1,"state":"online","beds":"b1"}', "malformed"),
    ("eicu/v1/karamay/bed07/waveform", GOOD_WF[:10], "truncated"),
    ("eicu/v1/karamay/bed07/waveform", GOOD_WF[:40], "truncated"),
    ("eicu/v1/karamay/bed07/waveform", GOOD_WF[:-1], "truncated"),
    ("eicu/v1/karamay/bed07/waveform", GOOD_WF + b"\x00\x00", "malformed"),
    ("eicu/v1/karamay/bed07/waveform", b"XX" + GOOD_WF[2:], "malformed"),
    ("eicu/v1/karamay/bed07/waveform", GOOD_WF[:2] + b"\x02" + GOOD_WF[3:], "unknown_version"),
    ("eicu/v1/karamay/bed07/waveform", GOOD_WF + b"\x00" * 300_000, "oversized"),
    ("eicu/v1/karamay/bed07/waveform", _num(), "malformed"),
    ("eicu/v1/karamay/bed07/waveform", _patch_block(0, "<B", 99), "unknown_signal"),
    ("eicu/v1/karamay/bed07/waveform", _patch_block(4, "<f", 5000.0), "impossible_rate"),
    ("eicu/v1/karamay/bed07/waveform", _patch_block(4, "<f", 0.0), "impossible_rate"),
    ("eicu/v1/karamay/bed07/waveform", _patch_block(4, "<f", float("nan")), "non_finite"),
    ("eicu/v1/karamay/bed07/waveform", _patch_block(8, "<f", float("inf")), "non_finite"),
    ("eicu/v1/karamay/bed07/waveform", _patch_block(8, "<f", -1.0), "malformed"),
    ("eicu/v1/karamay/bed07/waveform", _patch_block(18, "<B", 1), "malformed"),  # ECG_II twice
    (
        "eicu/v1/karamay/bed07/waveform",
        GOOD_WF[:10] + struct.pack("<q", -5) + GOOD_WF[18:],
        "impossible_time",
    ),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"), BAD, ids=[f"{i}-{r}" for i, (_, _, r) in enumerate(BAD)]
)
def test_bad_payload_rejected_with_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        wire.decode(topic, payload)
    assert info.value.reason == reason
    assert info.value.reason in wire.REASONS
    assert info.value.detail


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, len(GOOD_WF)))
def test_random_bytes_never_crash_the_decoder(junk: bytes, cut: int) -> None:
    for payload in (junk, GOOD_WF[:cut] + junk):
        for topic in (wire.waveform_topic(BED), wire.numerics_topic(BED), wire.status_topic(BED)):
            try:
                wire.decode(topic, payload)
            except PayloadError as exc:
                assert exc.reason in wire.REASONS


# --- coded waveform frames (samples compressed by the project's codec) --------------------------


def _ecg_like(n: int, seed: int) -> np.ndarray:
    """A smooth signal with noise, as a monitor's ADC gives: what the codec is for."""
    t = np.arange(n) / 250.0
    noise = np.random.default_rng(seed).normal(0, 4, n)
    return (
        800 * np.sin(2 * np.pi * 1.2 * t) ** 15 + 60 * np.sin(2 * np.pi * 0.3 * t) + noise
    ).astype(np.int16)


def test_coded_waveform_round_trip_is_lossless_and_smaller() -> None:
    frame = WaveformFrame(
        BED,
        9,
        T0,
        (
            SignalBlock("ECG_II", 250.0, 200.0, 0, _ecg_like(62, 1)),
            SignalBlock("ECG_V", 250.0, 200.0, 0, _ecg_like(63, 2)),
            SignalBlock("RESP", 62.5, 100.0, 10, _ecg_like(16, 3), 12_000),
        ),
    )
    raw = wire.encode_waveform(frame)
    coded = wire.encode_waveform(frame, coded=True)
    assert struct.unpack_from("<H", coded, 4)[0] == wire.FLAG_CODED
    back = wire.decode(wire.waveform_topic(BED), coded, received_us=3)
    assert isinstance(back, WaveformFrame)
    assert back.blocks == frame.blocks and back.seq == 9 and back.received_us == 3
    assert len(coded) < len(raw) - 2 * (62 + 63 + 16) // 3


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2000), lo=st.integers(-32768, 0), blocks=st.integers(1, 16))
def test_coded_waveform_round_trip_drawn(n: int, lo: int, blocks: int) -> None:
    rng = np.random.default_rng(n)
    keys = [k for k in ("ECG_I", "ECG_II", "ECG_III", "ECG_V", "PLETH", "ABP", "RESP", "CVP")]
    frame = WaveformFrame(
        BED,
        n,
        T0,
        tuple(
            SignalBlock(
                key, 500.0, 1.0, 0, rng.integers(lo, 32767, n, endpoint=True).astype(np.int16)
            )
            for key in keys[: min(blocks, len(keys))]
        ),
    )
    back = wire.decode_waveform(BED, wire.encode_waveform(frame, coded=True))
    assert back.blocks == frame.blocks


GOOD_CODED = wire.encode_waveform(_frame(), coded=True)
_CODED_TABLE = 18 + 4 * 18  # where the coded blocks' lengths start


def _coded_with(at: int, fmt: str, value: object) -> bytes:
    buf = bytearray(GOOD_CODED)
    struct.pack_into(fmt, buf, at, value)
    return bytes(buf)


CODED_BAD = [
    (GOOD_CODED[: _CODED_TABLE + 6], "truncated"),  # the length table cut
    (GOOD_CODED[:-1], "truncated"),
    (GOOD_CODED + b"\x00", "malformed"),
    (_coded_with(4, "<H", 0x0003), "malformed"),  # a flag this version does not know
    (_coded_with(4, "<H", 0x8000), "malformed"),
    # The first block's count (62 in its header) changed in the coded data: refused before decoding.
    (_coded_with(_CODED_TABLE + 16 + 1, "<B", 61), "malformed"),
    (_coded_with(_CODED_TABLE + 16 + 1, "<B", 0xFF), "malformed"),
    # A sample byte changed: the block's CRC-8 no longer matches.
    (
        _coded_with(_CODED_TABLE + 16 + 5, "<B", GOOD_CODED[_CODED_TABLE + 16 + 5] ^ 0x10),
        "malformed",
    ),
    # The block header's count no longer matches the coded block's.
    (_coded_with(18 + 2, "<H", 63), "malformed"),
    # A raw frame that says it is coded: its samples read as lengths no payload holds.
    (GOOD_WF[:4] + struct.pack("<H", wire.FLAG_CODED) + GOOD_WF[6:], "truncated"),
]


@pytest.mark.parametrize(
    ("payload", "reason"), CODED_BAD, ids=[str(i) for i in range(len(CODED_BAD))]
)
def test_bad_coded_waveform_rejected_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        wire.decode(wire.waveform_topic(BED), payload)
    assert (info.value.reason, bool(info.value.detail)) == (reason, True), info.value.detail


def test_a_coded_block_that_would_decode_to_more_samples_than_declared_is_refused_unread() -> None:
    # All-zero sub-blocks cost 6 bits per 64 samples: a few bytes could claim millions of samples.
    # The count is read and compared with the header before anything is decoded.
    from eicu.kernels import codec

    huge = codec.encode_int16(np.zeros(1_000_000, dtype=np.int16))
    assert len(huge) < 20_000
    head = struct.pack("<2sBBHIq", b"EW", 1, 1, wire.FLAG_CODED, 1, T0)
    block = struct.pack("<BBHffhi", 1, 0, 100, 250.0, 1.0, 0, 0)
    payload = head + block + struct.pack("<I", len(huge)) + huge
    with pytest.raises(PayloadError) as info:
        wire.decode(wire.waveform_topic(BED), payload)
    assert info.value.reason == "malformed" and "100 samples" in info.value.detail
