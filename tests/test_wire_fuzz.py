"""Fuzzing the wire decoder: whatever arrives, :func:`eicu.wire.decode` returns a valid frame (or
None for what the engine does not consume) or raises :class:`PayloadError` with one of
:data:`eicu.wire.REASONS` and a description; never another exception, never a hang, and never
memory out of proportion to the message.

Short by default; longer on demand, e.g. ``EICU_FUZZ_EXAMPLES=200000 python -m pytest
tests/test_wire_fuzz.py``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eicu import wire
from eicu.codes import BY_KEY, SIGNAL_BY_ID
from eicu.errors import PayloadError
from eicu.models import ID_RE, BedKey, NumericsFrame, SignalBlock, StatusFrame, WaveformFrame

BED = BedKey("karamay", "bed07")
T0 = 1_764_302_400_000_000
EXAMPLES = int(os.environ.get("EICU_FUZZ_EXAMPLES", "100"))
# A message that takes this long to decode is hung, not slow (a decode takes microseconds).
HANG_S = 20
# Peak memory of one decode: the payload a few times over, plus a fixed allowance.
MEMORY_FACTOR = 8
MEMORY_FIXED = 256 * 1024

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z", fullmatch=True)
# Topic levels: mostly valid ids, sometimes anything (spaces, newlines, empty, wildcards).
LEVELS = st.one_of(IDS, st.text(max_size=40), st.sampled_from(["", "+", "#", "_gateway", "v1"]))
KINDS = st.sampled_from(["numerics", "waveform", "status", "alarms", "other"])


@st.composite
def topics(draw: st.DrawFn) -> str:
    shape = draw(st.integers(0, 3))
    version = draw(st.sampled_from(["v1", "v1", "v1", "v2", "v0", "V1", ""]))
    if shape == 0:
        return f"eicu/{version}/{draw(LEVELS)}/{draw(LEVELS)}/{draw(KINDS)}"
    if shape == 1:
        return f"eicu/{version}/{draw(LEVELS)}/_gateway/{draw(LEVELS)}/status"
    if shape == 2:
        return "/".join(draw(st.lists(LEVELS, max_size=8)))
    return draw(st.text(max_size=120))


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def json_payloads(draw: st.DrawFn) -> bytes:
    """JSON documents near the protocol's: right and wrong field types, versions, keys."""
    doc: dict[str, object] = {}
    if draw(st.booleans()):
        doc["v"] = draw(st.one_of(st.just(1), JSON_SCALARS))
    if draw(st.booleans()):
        doc["seq"] = draw(st.one_of(st.integers(-5, 2**33), JSON_SCALARS))
    if draw(st.booleans()):
        doc["ts_ms"] = draw(st.one_of(st.integers(-(2**63), 2**63), JSON_SCALARS))
    if draw(st.booleans()):
        keys = st.one_of(st.sampled_from(sorted(BY_KEY)), st.text(max_size=8))
        doc["values"] = draw(
            st.one_of(st.dictionaries(keys, JSON_VALUES, max_size=12), JSON_VALUES)
        )
    if draw(st.booleans()):
        doc["state"] = draw(
            st.one_of(st.sampled_from(["online", "offline", "standby"]), JSON_VALUES)
        )
    if draw(st.booleans()):
        doc["beds"] = draw(st.one_of(st.lists(st.one_of(IDS, st.text(max_size=8))), JSON_VALUES))
    doc.update(draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)))
    text = json.dumps(doc)
    if draw(st.booleans()):
        # A constant JSON does not allow, or a cut.
        where = draw(st.integers(0, len(text)))
        text = text[:where] + draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "", "\x00"]))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def waveform_payloads(draw: st.DrawFn) -> bytes:
    """Binary frames with drawn header and block fields, and a drawn number of sample bytes."""
    n_blocks = draw(st.integers(0, 18))
    header = struct.pack(
        "<2sBBHIq",
        draw(st.sampled_from([b"EW", b"EW", b"XW"])),
        draw(st.sampled_from([1, 1, 1, 0, 2, 255])),
        n_blocks,
        draw(st.integers(0, 65535)),
        draw(st.integers(0, 2**32 - 1)),
        draw(
            st.one_of(
                st.integers(wire.MIN_TIME_US, wire.MAX_TIME_US), st.integers(-(2**63), 2**63 - 1)
            )
        ),
    )
    blocks = []
    total = 0
    for _ in range(n_blocks):
        n = draw(st.integers(0, 600))
        total += n
        blocks.append(
            struct.pack(
                "<BBHffhi",
                draw(st.one_of(st.sampled_from(sorted(SIGNAL_BY_ID)), st.integers(0, 255))),
                draw(st.integers(0, 255)),
                n,
                draw(st.floats(width=32)),
                draw(st.floats(width=32)),
                draw(st.integers(-32768, 32767)),
                draw(st.integers(-(2**31), 2**31 - 1)),
            )
        )
    samples = draw(st.binary(min_size=0, max_size=4)) + bytes(2 * total)
    cut = draw(st.integers(0, 8))
    if cut:
        samples = samples[: max(0, len(samples) - cut)]
    return header + b"".join(blocks) + samples


@st.composite
def coded_waveform_payloads(draw: st.DrawFn) -> bytes:
    """Valid coded frames (samples compressed by the project's codec), then a byte changed, a cut
    or bytes added: what a corrupt or truncated coded frame looks like."""
    blocks = []
    for key in draw(
        st.lists(
            st.sampled_from(["ECG_II", "ECG_V", "PLETH", "RESP"]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    ):
        n = draw(st.integers(1, 300))
        samples = np.cumsum(
            np.frombuffer(draw(st.binary(min_size=2 * n, max_size=2 * n)), dtype="<i2") // 512
        ).astype(np.int16)
        blocks.append(SignalBlock(key, 250.0, 200.0, 0, samples))
    frame = WaveformFrame(BED, draw(st.integers(0, 2**32 - 1)), T0, tuple(blocks))
    payload = bytearray(wire.encode_waveform(frame, coded=True))
    change = draw(st.sampled_from(["none", "byte", "cut", "add"]))
    if change == "byte":
        payload[draw(st.integers(0, len(payload) - 1))] ^= draw(st.integers(1, 255))
    elif change == "cut":
        del payload[draw(st.integers(0, len(payload) - 1)) :]
    elif change == "add":
        payload += draw(st.binary(min_size=1, max_size=8))
    return bytes(payload)


# Deeply nested JSON: a recursive parser must not overflow its stack.
NESTED = st.builds(
    lambda n, open_, close: (open_ * n + close * n).encode(),
    st.integers(1, wire.MAX_JSON_BYTES),
    st.sampled_from(["[", '{"v":', '{"v":1,"values":{"HR":[']),
    st.sampled_from(["]", "}", ""]),
)
PAYLOADS = st.one_of(
    json_payloads(),
    waveform_payloads(),
    coded_waveform_payloads(),
    NESTED,
    st.binary(max_size=2000),
)


@contextmanager
def _no_hang() -> Iterator[None]:
    def hung(signum: int, frame: object) -> None:
        raise AssertionError(f"the decoder ran for more than {HANG_S} s on one message")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_frame(topic: str, payload: bytes, frame: object) -> None:
    """What a decoder returns is a valid frame of the topic's kind."""
    kind = topic.split("/")[-1]
    if frame is None:
        assert kind in ("alarms", "status") and (kind == "alarms" or payload == b"")
        return
    if isinstance(frame, NumericsFrame):
        assert kind == "numerics" and frame.values
        assert 0 <= frame.seq <= wire.MAX_SEQ
        assert wire.MIN_TIME_US <= frame.ts_us <= wire.MAX_TIME_US
        for key, value in frame.values.items():
            param = BY_KEY[key]
            if value is None:
                continue
            assert math.isfinite(value)
            if key == "O2":
                assert value in (0.0, 1.0)
            elif param.labels:
                assert value == int(value) and 0 <= value < len(param.labels)
            else:
                assert param.low <= value <= param.high
        return
    if isinstance(frame, WaveformFrame):
        assert kind == "waveform" and 1 <= len(frame.blocks) <= wire.MAX_BLOCKS
        assert wire.MIN_TIME_US <= frame.t0_us <= wire.MAX_TIME_US
        if not struct.unpack_from("<H", payload, 4)[0] & wire.FLAG_CODED:
            assert 2 * frame.n_samples <= len(payload)
        else:  # a coded frame holds no more samples than its headers say
            assert frame.n_samples <= wire.MAX_BLOCKS * 65535
        for block in frame.blocks:
            assert isinstance(block, SignalBlock) and block.samples.dtype == np.int16
            assert math.isfinite(block.fs_hz) and block.gain > 0 and block.samples.shape[0] > 0
        return
    assert isinstance(frame, StatusFrame) and kind == "status"
    assert frame.state in ("online", "offline", "standby")
    assert all(ID_RE.fullmatch(b) for b in frame.beds)
    assert frame.ts_us is None or wire.MIN_TIME_US <= frame.ts_us <= wire.MAX_TIME_US


def _decode_checked(topic: str, payload: bytes) -> None:
    tracemalloc.start()
    try:
        with _no_hang():
            try:
                frame = wire.decode(topic, payload, received_us=1_764_302_400_000_000)
            except PayloadError as exc:
                assert exc.reason in wire.REASONS, exc.reason
                assert exc.detail
                frame = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * len(payload) + MEMORY_FIXED, (peak, len(payload))
    if not isinstance(frame, PayloadError):
        _check_frame(topic, payload, frame)


@FUZZ
@given(topics(), PAYLOADS)
def test_decode_returns_a_valid_frame_or_a_typed_rejection(topic: str, payload: bytes) -> None:
    _decode_checked(topic, payload)


@FUZZ
@given(
    st.sampled_from(["numerics", "waveform", "status"]),
    st.one_of(json_payloads(), waveform_payloads(), coded_waveform_payloads()),
)
def test_near_valid_payloads_on_valid_topics(kind: str, payload: bytes) -> None:
    _decode_checked(f"eicu/v1/karamay/bed07/{kind}", payload)
    if kind == "status":
        _decode_checked("eicu/v1/karamay/_gateway/gw1/status", payload)


@FUZZ
@given(st.one_of(json_payloads(), NESTED, st.binary(max_size=wire.MAX_JSON_BYTES + 10)))
def test_alarm_acknowledgements_never_raise_anything_else(payload: bytes) -> None:
    topic = "eicu/v1/karamay/bed07/alarms/ack"
    try:
        wire.decode_alarm_ack(topic, payload)
    except PayloadError as exc:
        assert exc.reason in wire.REASONS and exc.detail
