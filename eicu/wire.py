"""The wire protocol, version 1: topics and payload codecs (bytes <-> models), nothing else.

See docs/protocol.md for the full description. Every decoder either returns a model or raises
:class:`~eicu.errors.PayloadError` whose ``reason`` is one of :data:`REASONS`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Final

import numpy as np
from numpy.typing import NDArray

from eicu.alarm_model import AlarmEvent, AlarmState, Category, Priority
from eicu.codes import BY_KEY, SIGNAL_BY_ID, SIGNAL_BY_KEY
from eicu.errors import CodecError, PayloadError
from eicu.kernels import codec
from eicu.models import (
    ID_RE,
    AlarmAck,
    AlarmCommand,
    BedKey,
    Frame,
    NumericsFrame,
    SignalBlock,
    StatusFrame,
    WaveformFrame,
)

VERSION: Final = 1
ROOT: Final = "eicu/v1"
GATEWAY_LEVEL: Final = "_gateway"

# Why a payload is rejected. Stable labels: metrics and the dead-letter table use them.
REASONS: Final = (
    "wrong_topic",
    "oversized",
    "truncated",
    "malformed",
    "unknown_version",
    "unknown_parameter",
    "unknown_signal",
    "impossible_rate",
    "impossible_time",
    "non_finite",
    "impossible_value",
)

MAX_WAVEFORM_BYTES: Final = 256 * 1024
MAX_JSON_BYTES: Final = 16 * 1024
MAX_BLOCKS: Final = 16
MAX_BLOCK_S: Final = 10.0
MAX_SEQ: Final = 2**32 - 1
# Device times outside these bounds cannot be real (2000-01-01 .. 2100-01-01, in us).
MIN_TIME_US: Final = 946_684_800_000_000
MAX_TIME_US: Final = 4_102_444_800_000_000

_WF_MAGIC: Final = b"EW"
_WF_HEADER = struct.Struct("<2sBBHIq")  # magic, version, n_blocks, flags, seq, t0_us
_WF_BLOCK = struct.Struct("<BBHffhi")  # sig_id, reserved, n, fs_hz, gain, baseline, t_offset_us
_WF_LENGTH = struct.Struct("<I")  # a coded block's length in bytes
# Waveform flags. CODED: each block's samples are one block of the project's lossless codec
# (eicu.kernels.codec), preceded by a table of their lengths. Other bits are reserved and refused.
FLAG_CODED: Final = 0x0001
_WF_FLAGS: Final = FLAG_CODED


# --- topics -----------------------------------------------------------------------------------


def numerics_topic(bed: BedKey) -> str:
    return f"{ROOT}/{bed.site}/{bed.bed}/numerics"


def waveform_topic(bed: BedKey) -> str:
    return f"{ROOT}/{bed.site}/{bed.bed}/waveform"


def status_topic(bed: BedKey) -> str:
    return f"{ROOT}/{bed.site}/{bed.bed}/status"


def alarms_topic(bed: BedKey) -> str:
    return f"{ROOT}/{bed.site}/{bed.bed}/alarms"


def alarm_ack_topic(bed: BedKey) -> str:
    return f"{ROOT}/{bed.site}/{bed.bed}/alarms/ack"


def is_alarm_ack_topic(topic: str) -> bool:
    return topic.startswith(ROOT + "/") and topic.endswith("/alarms/ack")


def alarm_command_topic(bed: BedKey) -> str:
    return f"{ROOT}/{bed.site}/{bed.bed}/alarms/cmd"


def is_alarm_command_topic(topic: str) -> bool:
    return topic.startswith(ROOT + "/") and topic.endswith("/alarms/cmd")


REPLY_ROOT: Final = "eicu/reply"


def reply_topic(dashboard_id: str) -> str:
    """Where the owners of beds answer one dashboard process's alarm commands."""
    return f"{REPLY_ROOT}/{dashboard_id}"


# The hub's own topics under ``eicu/``: the beds' state for dashboards, answers to their
# commands, alarm events for delivery, consult signaling between dashboards. An engine reading
# ``eicu/#`` passes over them.
INTERNAL_ROOTS: Final = ("eicu/state/", "eicu/reply/", "eicu/alarm/", "eicu/consult/")


def is_internal_topic(topic: str) -> bool:
    return topic.startswith(INTERNAL_ROOTS)


def gateway_status_topic(site: str, gateway: str) -> str:
    return f"{ROOT}/{site}/{GATEWAY_LEVEL}/{gateway}/status"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """Split a topic into (kind, site, bed_or_gateway); kind is numerics, waveform, status,
    alarms or gateway_status. Raises PayloadError('wrong_topic') for anything else."""
    parts = topic.split("/")
    if len(parts) >= 2 and parts[0] == "eicu" and parts[1] != "v1":
        raise PayloadError("unknown_version", f"topic version {parts[1]!r} in {topic!r}")
    if len(parts) == 5 and parts[:2] == ["eicu", "v1"]:
        _, _, site, bed, kind = parts
        if kind in ("numerics", "waveform", "status", "alarms") and _ids_ok(site, bed):
            return kind, site, bed
    if len(parts) == 6 and parts[:2] == ["eicu", "v1"] and parts[3] == GATEWAY_LEVEL:
        _, _, site, _, gateway, kind = parts
        if kind == "status" and _ids_ok(site, gateway):
            return "gateway_status", site, gateway
    raise PayloadError("wrong_topic", f"not an eicu/v1 topic: {topic[:200]!r}")


def _ids_ok(*ids: str) -> bool:
    return all(ID_RE.fullmatch(i) for i in ids)


# --- numerics ---------------------------------------------------------------------------------


def encode_numerics(frame: NumericsFrame) -> bytes:
    values: dict[str, object] = {}
    for key, value in frame.values.items():
        param = BY_KEY[key]
        if value is None:
            values[key] = None
        elif key == "O2":
            values[key] = bool(value)
        elif param.labels:
            values[key] = param.labels[int(value)]
        else:
            values[key] = value
    doc = {"v": VERSION, "seq": frame.seq, "ts_ms": frame.ts_us // 1000, "values": values}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def decode_numerics(bed: BedKey, payload: bytes, received_us: int = 0) -> NumericsFrame:
    doc = _json_object(payload)
    seq = _seq(doc)
    ts_us = _ts_ms(doc, required=True)
    assert ts_us is not None
    raw_values = doc.get("values")
    if not isinstance(raw_values, dict) or not raw_values:
        raise PayloadError("malformed", "'values' must be a non-empty object")
    values: dict[str, float | None] = {}
    for key, raw in raw_values.items():
        param = BY_KEY.get(key)
        if param is None:
            raise PayloadError("unknown_parameter", f"unknown parameter {key[:40]!r}")
        if raw is None:
            values[key] = None
        elif key == "O2":
            if not isinstance(raw, bool):
                raise PayloadError("malformed", f"O2 must be true or false, got {raw!r}"[:120])
            values[key] = 1.0 if raw else 0.0
        elif param.labels:
            if raw not in param.labels:
                raise PayloadError(
                    "impossible_value",
                    f"{key} must be one of {list(param.labels)}, got {raw!r}"[:120],
                )
            values[key] = float(param.labels.index(raw))
        else:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise PayloadError(
                    "malformed", f"{key} must be a number or null, got {raw!r}"[:120]
                )
            value = float(raw)
            if not math.isfinite(value):
                raise PayloadError("non_finite", f"{key} is {raw!r}")
            if not param.low <= value <= param.high:
                raise PayloadError(
                    "impossible_value",
                    f"{key}={value:g} {param.unit} is outside {param.low:g}..{param.high:g}",
                )
            values[key] = value
    return NumericsFrame(bed=bed, seq=seq, ts_us=ts_us, values=values, received_us=received_us)


# --- status -----------------------------------------------------------------------------------


def encode_status(frame: StatusFrame, *, with_time: bool = True) -> bytes:
    doc: dict[str, object] = {"v": VERSION, "state": frame.state}
    if with_time and frame.ts_us is not None:
        doc["ts_ms"] = frame.ts_us // 1000
    if frame.gateway is not None:
        doc["beds"] = list(frame.beds)
    if frame.device is not None:
        doc["device"] = {"id": frame.device[0], "type": frame.device[1]}
    return json.dumps(doc, separators=(",", ":")).encode()


def _device(doc: dict[str, object]) -> tuple[str, str] | None:
    """A bed status's ``device``: ``{"id": ..., "type": ...}`` (type optional)."""
    raw = doc.get("device")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise PayloadError("malformed", "'device' must be an object with 'id' and 'type'")
    ident, kind = raw.get("id"), raw.get("type", "")
    if not isinstance(ident, str) or not 1 <= len(ident) <= 128 or not ident.isprintable():
        raise PayloadError("malformed", "'device.id' must be 1-128 printable characters")
    if not isinstance(kind, str) or len(kind) > 32 or not kind.isprintable():
        raise PayloadError("malformed", "'device.type' must be up to 32 printable characters")
    return ident, kind


def decode_status(
    site: str, bed: str | None, gateway: str | None, payload: bytes, received_us: int = 0
) -> StatusFrame:
    doc = _json_object(payload)
    state = doc.get("state")
    if state not in ("online", "offline", "standby"):
        raise PayloadError(
            "malformed", f"state must be online, offline or standby, got {state!r}"[:120]
        )
    beds: tuple[str, ...] = ()
    if gateway is not None:
        raw_beds = doc.get("beds", [])
        if not isinstance(raw_beds, list) or not all(
            isinstance(b, str) and ID_RE.fullmatch(b) for b in raw_beds
        ):
            raise PayloadError("malformed", "'beds' must be a list of bed ids")
        if len(raw_beds) > 4096:
            raise PayloadError("oversized", f"{len(raw_beds)} beds behind one gateway")
        beds = tuple(raw_beds)
    return StatusFrame(
        site=site,
        state=state,
        ts_us=_ts_ms(doc, required=False),
        bed=bed,
        gateway=gateway,
        beds=beds,
        received_us=received_us,
        device=_device(doc) if bed is not None else None,
    )


# --- waveform ---------------------------------------------------------------------------------


def encode_waveform(frame: WaveformFrame, *, coded: bool = False) -> bytes:
    """The frame's bytes; with ``coded`` its samples are compressed losslessly by the project's
    codec (0.4 to 0.6 of the bytes on real ICU records: benchmarks/wire_coding.py), for links
    where bytes cost (a remote site)."""
    if not 1 <= len(frame.blocks) <= MAX_BLOCKS:
        raise ValueError(f"a frame carries 1..{MAX_BLOCKS} blocks, got {len(frame.blocks)}")
    flags = FLAG_CODED if coded else 0
    parts = [_WF_HEADER.pack(_WF_MAGIC, VERSION, len(frame.blocks), flags, frame.seq, frame.t0_us)]
    for b in frame.blocks:
        sig = SIGNAL_BY_KEY[b.signal]
        parts.append(
            _WF_BLOCK.pack(
                sig.sig_id, 0, b.samples.shape[0], b.fs_hz, b.gain, b.baseline, b.t_offset_us
            )
        )
    samples = [np.ascontiguousarray(b.samples, dtype="<i2") for b in frame.blocks]
    if coded:
        blobs = codec.encode_many([s.astype(np.int16, copy=False) for s in samples])
        parts.extend(_WF_LENGTH.pack(len(blob)) for blob in blobs)
        parts.extend(blobs)
    else:
        parts.extend(s.tobytes() for s in samples)
    return b"".join(parts)


def decode_waveform(bed: BedKey, payload: bytes, received_us: int = 0) -> WaveformFrame:
    n = len(payload)
    if n > MAX_WAVEFORM_BYTES:
        raise PayloadError("oversized", f"{n} bytes, the limit is {MAX_WAVEFORM_BYTES}")
    if n < _WF_HEADER.size:
        raise PayloadError(
            "truncated", f"{n} bytes, shorter than the {_WF_HEADER.size}-byte header"
        )
    magic, version, n_blocks, flags, seq, t0_us = _WF_HEADER.unpack_from(payload, 0)
    if magic != _WF_MAGIC:
        raise PayloadError("malformed", f"not a waveform frame (magic {magic!r})")
    if version != VERSION:
        raise PayloadError("unknown_version", f"waveform format version {version}")
    if flags & ~_WF_FLAGS:
        raise PayloadError("malformed", f"unknown waveform flags 0x{flags & ~_WF_FLAGS:04x}")
    if not 1 <= n_blocks <= MAX_BLOCKS:
        raise PayloadError("malformed", f"{n_blocks} blocks, expected 1..{MAX_BLOCKS}")
    if not MIN_TIME_US <= t0_us <= MAX_TIME_US:
        raise PayloadError("impossible_time", f"first-sample time {t0_us} us is not a real date")
    descriptors_end = _WF_HEADER.size + n_blocks * _WF_BLOCK.size
    if n < descriptors_end:
        raise PayloadError("truncated", f"{n} bytes, the block headers need {descriptors_end}")
    heads = [
        _WF_BLOCK.unpack_from(payload, _WF_HEADER.size + i * _WF_BLOCK.size)
        for i in range(n_blocks)
    ]
    data: list[NDArray[np.int16]] | None = None
    if flags & FLAG_CODED:
        data = _coded_samples(payload, descriptors_end, heads)
    else:
        expected = descriptors_end + 2 * sum(h[2] for h in heads)
        if n < expected:
            raise PayloadError("truncated", f"{n} bytes, the samples need {expected}")
        if n > expected:
            raise PayloadError("malformed", f"{n - expected} bytes after the last sample")
    blocks: list[SignalBlock] = []
    seen: set[int] = set()
    pos = descriptors_end
    for sig_id, _reserved, count, fs_hz, gain, baseline, offset_us in heads:
        sig = SIGNAL_BY_ID.get(sig_id)
        if sig is None:
            raise PayloadError("unknown_signal", f"signal id {sig_id}")
        if sig_id in seen:
            raise PayloadError("malformed", f"signal {sig.key} twice in one frame")
        seen.add(sig_id)
        if not (math.isfinite(fs_hz) and math.isfinite(gain)):
            raise PayloadError("non_finite", f"{sig.key}: fs_hz={fs_hz}, gain={gain}")
        if not sig.fs_min_hz <= fs_hz <= sig.fs_max_hz:
            raise PayloadError(
                "impossible_rate",
                f"{sig.key} at {fs_hz:g} Hz, outside {sig.fs_min_hz:g}..{sig.fs_max_hz:g} Hz",
            )
        if gain <= 0:
            raise PayloadError("malformed", f"{sig.key}: gain must be > 0, got {gain:g}")
        if count == 0:
            raise PayloadError("malformed", f"{sig.key}: empty block")
        if count / fs_hz > MAX_BLOCK_S or not 0 <= offset_us <= MAX_BLOCK_S * 1e6:
            raise PayloadError(
                "impossible_rate", f"{sig.key}: {count} samples at {fs_hz:g} Hz exceed one frame"
            )
        if data is None:
            samples = np.frombuffer(payload, dtype="<i2", count=count, offset=pos)
            pos += 2 * count
        else:
            samples = data[len(blocks)]
        blocks.append(
            SignalBlock(sig.key, float(fs_hz), float(gain), int(baseline), samples, int(offset_us))
        )
    return WaveformFrame(
        bed=bed, seq=seq, t0_us=t0_us, blocks=tuple(blocks), received_us=received_us
    )


def _coded_samples(
    payload: bytes, start: int, heads: list[tuple[int, int, int, float, float, int, int]]
) -> list[NDArray[np.int16]]:
    """The samples of a coded frame's blocks, each exactly as many as its header says."""
    n = len(payload)
    table_end = start + _WF_LENGTH.size * len(heads)
    if n < table_end:
        raise PayloadError("truncated", f"{n} bytes, the coded blocks' lengths need {table_end}")
    lengths = [_WF_LENGTH.unpack_from(payload, start + 4 * i)[0] for i in range(len(heads))]
    expected = table_end + sum(lengths)
    if n < expected:
        raise PayloadError("truncated", f"{n} bytes, the coded samples need {expected}")
    if n > expected:
        raise PayloadError("malformed", f"{n - expected} bytes after the last coded block")
    views, pos = [], table_end
    for i, (length, head) in enumerate(zip(lengths, heads, strict=True)):
        view = memoryview(payload)[pos : pos + length]
        pos += length
        # The count the block claims, read before decoding: no more memory than the header says.
        if _coded_count(view) != head[2]:
            raise PayloadError(
                "malformed", f"coded block {i} does not hold the {head[2]} samples its header says"
            )
        views.append(view)
    try:
        return codec.decode_many(views)
    except CodecError as exc:
        raise PayloadError("malformed", f"coded samples: {exc}") from None


def _coded_count(view: memoryview) -> int | None:
    """The sample count at the start of a coded block (LEB128 after the format byte), or None."""
    count, shift = 0, 0
    for i in range(1, min(len(view), 6)):
        count |= (view[i] & 0x7F) << shift
        if not view[i] & 0x80:
            return count
        shift += 7
    return None


# --- alarm acknowledgements from the remote ICU --------------------------------------------------

MAX_USER_CHARS: Final = 64


def _alarm_topic(topic: str, last: str, what: str) -> tuple[str, str]:
    """(site, bed) of ``eicu/v1/{site}/{bed}/alarms/{last}``; PayloadError otherwise."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[:2] != ["eicu", "v1"] or parts[4:] != ["alarms", last]:
        raise PayloadError("wrong_topic", f"not an alarm {what} topic: {topic[:200]!r}")
    site, bed = parts[2], parts[3]
    if not _ids_ok(site, bed):
        raise PayloadError("wrong_topic", f"bad site or bed id in {topic[:200]!r}")
    return site, bed


def _user(user: object) -> str:
    """A user's name as given in a message, checked; PayloadError otherwise."""
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_USER_CHARS:
        raise PayloadError("malformed", f"'user' must be a name of 1..{MAX_USER_CHARS} characters")
    if not user.isprintable():
        raise PayloadError("malformed", "'user' has control characters")
    return user.strip()


def is_alarm_state_topic(topic: str) -> bool:
    """``eicu/v1/{site}/{bed}/alarms``: where an engine's alarm changes go back to the bed."""
    return topic.startswith(ROOT + "/") and topic.endswith("/alarms") and topic.count("/") == 4


def decode_alarm_state(topic: str, payload: bytes) -> AlarmEvent | None:
    """The alarm change in a message an engine published on its bed's alarms topic (a
    ``"type": "state"`` message of the alarm delivery's MQTT channel): the event as the engine
    recorded it, so its id (``eicu.alarm_model.event_id``) is the engine's. None for the other
    messages of that topic (pages to a bedside display). The alarm must be one of that bed's."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[:2] != ["eicu", "v1"] or parts[4] != "alarms":
        raise PayloadError("wrong_topic", f"not an alarms topic: {topic[:200]!r}")
    site, bed = parts[2], parts[3]
    if not _ids_ok(site, bed):
        raise PayloadError("wrong_topic", f"bad site or bed id in {topic[:200]!r}")
    doc = _json_object(payload)
    if doc.get("type") != "state":
        return None
    alarm_id = doc.get("alarm_id")
    if not isinstance(alarm_id, str) or not alarm_id.startswith(f"{site}/{bed}/"):
        raise PayloadError("malformed", f"'alarm_id' must be an alarm of {site}/{bed}")
    if doc.get("site") != site or doc.get("bed") != bed:
        raise PayloadError("malformed", f"'site' and 'bed' must be those of the topic {site}/{bed}")
    try:
        event = event_of({**doc, "bed": f"{site}/{bed}"})
    except (KeyError, ValueError, TypeError) as exc:
        raise PayloadError("malformed", f"not an alarm change: {exc!r}"[:160]) from None
    if not event.kind or event.time_us <= 0:
        raise PayloadError("malformed", "'kind' and a positive 'time_us' are required")
    return event


def encode_alarm_ack(ack: AlarmAck) -> bytes:
    doc: dict[str, object] = {"v": VERSION, "alarm_id": ack.alarm_id, "user": ack.user}
    if ack.ts_us is not None:
        doc["ts_ms"] = ack.ts_us // 1000
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_alarm_ack(topic: str, payload: bytes, received_us: int = 0) -> AlarmAck:
    """An acknowledgement on ``eicu/v1/{site}/{bed}/alarms/ack``. The alarm must be one of that
    bed's (its id starts with ``site/bed/``), so a site acknowledges its own alarms only."""
    site, bed = _alarm_topic(topic, "ack", "acknowledgement")
    doc = _json_object(payload)
    alarm_id, user, ts_ms = doc.get("alarm_id"), doc.get("user"), doc.get("ts_ms")
    if not isinstance(alarm_id, str) or not alarm_id.startswith(f"{site}/{bed}/"):
        raise PayloadError("malformed", f"'alarm_id' must be an alarm of {site}/{bed}"[:160])
    if len(alarm_id) > 200:
        raise PayloadError("malformed", "'alarm_id' is too long")
    user = _user(user)
    ts_us = None
    if ts_ms is not None:
        if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
            raise PayloadError("malformed", "'ts_ms' must be an integer")
        ts_us = ts_ms * 1000
        if not MIN_TIME_US <= ts_us <= MAX_TIME_US:
            raise PayloadError("impossible_time", f"ts_ms {ts_ms} is not a real date")
    return AlarmAck(BedKey(site, bed), alarm_id, user, ts_us, received_us)


# --- alarm commands from dashboards, and their answers -------------------------------------------

COMMAND_ACTIONS: Final = ("ack", "pause")
MAX_COMMAND_ID_CHARS: Final = 64
MAX_PAUSE_S: Final = 3600.0


def encode_alarm_command(cmd: AlarmCommand) -> bytes:
    doc: dict[str, object] = {
        "v": VERSION, "action": cmd.action, "alarm_id": cmd.alarm_id, "user": cmd.user,
        "id": cmd.cmd_id, "reply_to": cmd.reply_to,
    }  # fmt: skip
    if cmd.action == "pause":
        doc["duration_s"] = cmd.duration_s
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_alarm_command(topic: str, payload: bytes, received_us: int = 0) -> AlarmCommand:
    """A command on ``eicu/v1/{site}/{bed}/alarms/cmd``; its alarm must be one of that bed's, its
    answer goes under ``eicu/reply/``. PayloadError naming what is wrong."""
    site, bed = _alarm_topic(topic, "cmd", "command")
    doc = _json_object(payload)
    action, alarm_id, user = doc.get("action"), doc.get("alarm_id"), doc.get("user")
    cmd_id, reply_to = doc.get("id"), doc.get("reply_to")
    if action not in COMMAND_ACTIONS:
        raise PayloadError("malformed", f"'action' must be one of {', '.join(COMMAND_ACTIONS)}")
    if alarm_id is not None and (
        not isinstance(alarm_id, str)
        or not alarm_id.startswith(f"{site}/{bed}/")
        or len(alarm_id) > 200
    ):
        raise PayloadError("malformed", f"'alarm_id' must be an alarm of {site}/{bed}"[:160])
    if action == "ack" and alarm_id is None:
        raise PayloadError("malformed", "an acknowledgement names its 'alarm_id'")
    user = _user(user)
    if not isinstance(cmd_id, str) or not 0 < len(cmd_id) <= MAX_COMMAND_ID_CHARS:
        raise PayloadError("malformed", f"'id' must be 1..{MAX_COMMAND_ID_CHARS} characters")
    if (
        not isinstance(reply_to, str)
        or not reply_to.startswith(REPLY_ROOT + "/")
        or len(reply_to) > 200
        or any(c in reply_to for c in "#+\x00")
    ):
        raise PayloadError("malformed", f"'reply_to' must be a topic under {REPLY_ROOT}/")
    duration_s = 0.0
    if action == "pause":
        raw = doc.get("duration_s")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise PayloadError("malformed", "'duration_s' must be a number")
        duration_s = float(raw)
        if not 0 < duration_s <= MAX_PAUSE_S:
            raise PayloadError("malformed", f"'duration_s' must be in (0, {MAX_PAUSE_S:.0f}]")
    return AlarmCommand(
        BedKey(site, bed), action, alarm_id, user, cmd_id, reply_to, duration_s,
        received_us,
    )  # fmt: skip


def event_doc(e: AlarmEvent) -> dict[str, object]:
    return {
        "alarm_id": e.alarm_id, "bed": str(e.bed), "kind": e.kind, "priority": e.priority.value,
        "category": e.category.value, "state": e.state.value, "time_us": e.time_us,
        "actor": e.actor, "reason": e.reason, "audio_paused_until_us": e.audio_paused_until_us,
    }  # fmt: skip


def event_of(d: dict[str, object]) -> AlarmEvent:
    paused = d.get("audio_paused_until_us")
    return AlarmEvent(
        alarm_id=str(d["alarm_id"]), bed=BedKey.parse(str(d["bed"])), kind=str(d["kind"]),
        priority=Priority(str(d["priority"])), category=Category(str(d["category"])),
        state=AlarmState(str(d["state"])), time_us=int(str(d["time_us"])), actor=str(d["actor"]),
        reason=str(d.get("reason") or ""),
        audio_paused_until_us=int(str(paused)) if paused is not None else None,
    )  # fmt: skip


def encode_command_answer(
    cmd_id: str, events: list[AlarmEvent], error: str | None = None, detail: str = ""
) -> bytes:
    """The owner's answer to a command: the events it caused, or ``error`` (``not_live``: no
    such live alarm; ``refused``: the state machine refused it, ``detail`` says why)."""
    doc: dict[str, object] = {"v": VERSION, "id": cmd_id, "events": [event_doc(e) for e in events]}
    if error is not None:
        doc["error"], doc["detail"] = error, detail[:200]
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_command_answer(payload: bytes) -> tuple[str, list[AlarmEvent], str | None, str]:
    """(command id, events, error, detail) of an answer; PayloadError naming what is wrong."""
    doc = _json_object(payload)
    cmd_id, events, error = doc.get("id"), doc.get("events"), doc.get("error")
    if not isinstance(cmd_id, str) or not isinstance(events, list):
        raise PayloadError("malformed", "an answer has an 'id' and a list of 'events'")
    try:
        decoded = [event_of(e) for e in events]
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError("malformed", f"an answer's event: {exc}"[:160]) from exc
    return cmd_id, decoded, str(error) if error is not None else None, str(doc.get("detail", ""))


# --- alarm events for delivery (inside the hub) ------------------------------------------------

ALARM_EVENT_ROOT: Final = "eicu/alarm"


def alarm_event_topic(partition: int, bed: BedKey) -> str:
    """Where an engine publishes a bed's alarm events for the delivery processes:
    ``eicu/alarm/<k>/<site>/<bed>``, ``k`` the bed's delivery partition."""
    return f"{ALARM_EVENT_ROOT}/{partition}/{bed.site}/{bed.bed}"


def alarm_event_filter(partition: int) -> str:
    return f"{ALARM_EVENT_ROOT}/{partition}/#"


def encode_alarm_event(event_id: str, event: AlarmEvent) -> bytes:
    """One alarm event as an engine publishes it for delivery: the event and its stable id."""
    doc: dict[str, object] = {"v": VERSION, "event_id": event_id, **event_doc(event)}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_alarm_event(topic: str, payload: bytes) -> tuple[str, AlarmEvent]:
    """(event id, event) of a message on :func:`alarm_event_topic`; PayloadError naming what is
    wrong (a topic not of that form, or whose bed is not the event's, is ``wrong_topic``)."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ALARM_EVENT_ROOT or not parts[2].isdigit():
        raise PayloadError("wrong_topic", f"not an alarm event topic: {topic[:200]!r}")
    if not _ids_ok(parts[3], parts[4]):
        raise PayloadError("wrong_topic", f"bad site or bed id in {topic[:200]!r}")
    doc = _json_object(payload)
    event_id = doc.get("event_id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 64:
        raise PayloadError("malformed", "'event_id' must be a string of 1..64 characters")
    try:
        event = event_of(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError("malformed", f"an alarm event: {exc!r}"[:160]) from exc
    if event.bed != BedKey(parts[3], parts[4]):
        raise PayloadError("wrong_topic", f"event of {event.bed} on the topic of another bed")
    return event_id, event


# --- one entry point ---------------------------------------------------------------------------


def decode(topic: str, payload: bytes, received_us: int = 0) -> Frame | None:
    """Decode any inbound message. Returns None for messages the engine does not consume
    (its own alarms, a cleared retained status)."""
    kind, site, name = parse_topic(topic)
    if kind == "alarms":
        return None
    if kind in ("status", "gateway_status") and len(payload) == 0:
        return None  # a retained status was cleared
    if kind == "waveform":
        return decode_waveform(BedKey(site, name), payload, received_us)
    if kind == "numerics":
        return decode_numerics(BedKey(site, name), payload, received_us)
    if kind == "status":
        return decode_status(site, name, None, payload, received_us)
    return decode_status(site, None, name, payload, received_us)


def device_time_us(topic: str, payload: bytes) -> int | None:
    """The device time a message carries (a waveform frame's first sample, a numerics or status
    message's time), or None: no time, or not a message the decoder takes."""
    try:
        frame = decode(topic, payload)
    except PayloadError:
        return None
    if isinstance(frame, WaveformFrame):
        return frame.t0_us
    if isinstance(frame, NumericsFrame):
        return frame.ts_us
    if isinstance(frame, StatusFrame):
        return frame.ts_us
    return None


# --- helpers ----------------------------------------------------------------------------------


def _json_object(payload: bytes) -> dict[str, object]:
    if len(payload) > MAX_JSON_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes, the limit is {MAX_JSON_BYTES}")
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except PayloadError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("malformed", f"not JSON: {exc}"[:160]) from None
    except RecursionError:
        # The parser is recursive: thousands of nested brackets exhaust its depth. No protocol
        # document nests more than three levels.
        raise PayloadError("malformed", "JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise PayloadError("malformed", f"expected a JSON object, got {type(doc).__name__}")
    if "v" not in doc:
        raise PayloadError("malformed", "no version field 'v'")
    version = doc["v"]
    # Exactly the integer: in Python true == 1 == 1.0, and neither is a protocol version.
    if type(version) is not int:
        raise PayloadError("malformed", f"'v' must be an integer, got {version!r}"[:80])
    if version != VERSION:
        raise PayloadError("unknown_version", f"payload version {version!r}"[:80])
    return doc


def _reject_constant(name: str) -> float:
    raise PayloadError("non_finite", f"{name} is not a number")


def _seq(doc: dict[str, object]) -> int:
    seq = doc.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise PayloadError("malformed", f"'seq' must be an integer 0..{MAX_SEQ}, got {seq!r}"[:120])
    return seq


def _ts_ms(doc: dict[str, object], *, required: bool) -> int | None:
    ts = doc.get("ts_ms")
    if ts is None and not required:
        return None
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise PayloadError("malformed", f"'ts_ms' must be an integer, got {ts!r}"[:120])
    ts_us = ts * 1000
    if not MIN_TIME_US <= ts_us <= MAX_TIME_US:
        raise PayloadError("impossible_time", f"ts_ms={ts} is not a real date")
    return ts_us
