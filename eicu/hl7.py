"""HL7 v2 messages: parsing, escapes, MLLP framing and original-mode acknowledgements.

Pure: no I/O. A message is segments separated by carriage returns; MSH-1 names the field
separator and MSH-2 the component, repetition, escape and subcomponent characters (normally
``^~\\&``). Field numbers follow the standard: in MSH, MSH-1 is the field separator itself, so
MSH-n is the n-th field counted from it; in every other segment the n-th field follows the
segment name. Components are counted from 1.

MLLP (the HL7 minimal lower layer protocol): each message travels as ``0x0b`` + message +
``0x1c 0x0d``.

Acknowledgements are original mode (HL7 v2.6 chapter 2): ``MSA-1`` is ``AA`` (accepted),
``AE`` (an error in the message: fix and send again) or ``AR`` (rejected: unsupported type,
version or processing failure); an ``ERR`` segment names the location (``ERR-2``: segment,
sequence, field, component), the HL7 error code (``ERR-3``, table 0357) and severity (``ERR-4``)
of each problem, with its text in ``ERR-8``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Final

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c\x0d"

# HL7 table 0357, message error condition codes (the ones used here)
SEGMENT_SEQUENCE_ERROR: Final = 100
REQUIRED_FIELD_MISSING: Final = 101
DATA_TYPE_ERROR: Final = 102
TABLE_VALUE_NOT_FOUND: Final = 103
UNSUPPORTED_MESSAGE_TYPE: Final = 200
UNSUPPORTED_EVENT_CODE: Final = 201
UNSUPPORTED_PROCESSING_ID: Final = 202
UNSUPPORTED_VERSION_ID: Final = 203
UNKNOWN_KEY_IDENTIFIER: Final = 204
DUPLICATE_KEY_IDENTIFIER: Final = 205
APPLICATION_RECORD_LOCKED: Final = 206
APPLICATION_INTERNAL_ERROR: Final = 207
ERROR_TEXT: Final = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
# The versions whose messages this parser reads (IHE PCD profiles are written for 2.6).
VERSIONS: Final = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8")
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?")


class Hl7Error(ValueError):
    """A problem with a message: where it is (segment name, field, component; 0 where not
    known), its HL7 error code (table 0357) and what is wrong, for the ERR segment."""

    def __init__(
        self, segment: str, field_no: int, code: int, text: str, component: int = 0
    ) -> None:
        where = f"{segment}-{field_no}" if field_no else segment
        if component:
            where += f".{component}"
        super().__init__(f"{where}: {text}")
        self.segment = segment
        self.field_no = field_no
        self.component = component
        self.code = code
        self.text = text


@dataclass(frozen=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    def unescape(self, text: str) -> str:
        """The text of a field with HL7 escape sequences (``\\F\\`` and the like) resolved;
        formatting and hexadecimal escapes are dropped, as a receiver that only reads values
        may."""
        e = self.escape
        if e not in text:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] != e:
                out.append(text[i])
                i += 1
                continue
            j = text.find(e, i + 1)
            if j < 0:
                out.append(text[i:])
                break
            code = text[i + 1 : j]
            out.append(
                {
                    "F": self.field,
                    "S": self.component,
                    "T": self.subcomponent,
                    "R": self.repetition,
                    "E": self.escape,
                }.get(code, "")
            )
            i = j + 1
        return "".join(out)

    def escape_text(self, text: str) -> str:
        """``text`` with the delimiters escaped, for a field of a message this side writes."""
        e = self.escape
        return (
            text.replace(e, f"{e}E{e}")
            .replace(self.field, f"{e}F{e}")
            .replace(self.component, f"{e}S{e}")
            .replace(self.repetition, f"{e}R{e}")
            .replace(self.subcomponent, f"{e}T{e}")
        )


@dataclass(frozen=True)
class Segment:
    name: str
    fields: tuple[str, ...]  # fields[n] is field n (fields[0] the name; for MSH, MSH-1 is "|")
    encoding: Encoding

    def field(self, n: int) -> str:
        """Field ``n``, escapes left in (empty when absent)."""
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def component(self, n: int, c: int = 1, repetition: int = 0) -> str:
        """Component ``c`` of the first (or given) repetition of field ``n``, unescaped."""
        value = self.field(n)
        if n == 2 and self.name == "MSH":
            return value
        reps = value.split(self.encoding.repetition)
        if repetition >= len(reps):
            return ""
        comps = reps[repetition].split(self.encoding.component)
        if not 0 < c <= len(comps):
            return ""
        sub = comps[c - 1].split(self.encoding.subcomponent)[0]
        return self.encoding.unescape(sub)


@dataclass(frozen=True)
class Message:
    segments: tuple[Segment, ...]
    encoding: Encoding = field(default_factory=Encoding)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    @property
    def control_id(self) -> str:
        return self.msh.component(10)

    @property
    def version(self) -> str:
        return self.msh.component(12)

    @property
    def message_type(self) -> tuple[str, str]:
        return self.msh.component(9, 1), self.msh.component(9, 2)


def parse(text: str) -> Message:
    """A message from its text. Raises :class:`Hl7Error` naming what is wrong (no MSH first,
    bad delimiters, a malformed segment name)."""
    lines = [s for s in re.split(r"\r\n|\r|\n", text.strip("\r\n")) if s]
    if not lines or not lines[0].startswith("MSH"):
        raise Hl7Error("MSH", 0, SEGMENT_SEQUENCE_ERROR, "the message does not start with MSH")
    head = lines[0]
    if len(head) < 8:
        raise Hl7Error("MSH", 2, REQUIRED_FIELD_MISSING, "no encoding characters")
    sep = head[3]
    chars = head[4:].split(sep, 1)[0]
    if sep.isalnum() or len(chars) < 4 or len(set(sep + chars[:4])) != 5:
        raise Hl7Error("MSH", 2, DATA_TYPE_ERROR, f"bad delimiters {head[3:8]!r}")
    enc = Encoding(sep, chars[0], chars[1], chars[2], chars[3])
    segments: list[Segment] = []
    for i, line in enumerate(lines):
        name = line[:3]
        if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != sep):
            raise Hl7Error(
                line[:3] or "?", 0, SEGMENT_SEQUENCE_ERROR, f"segment {i + 1} is malformed"
            )
        if name == "MSH":
            if i:
                raise Hl7Error("MSH", 0, SEGMENT_SEQUENCE_ERROR, "a second MSH segment")
            parts = line[4:].split(sep)
            fields = ("MSH", sep, *parts)  # MSH-1 is the separator, MSH-2 the encoding chars
        else:
            fields = (name, *line[4:].split(sep)) if len(line) > 3 else (name,)
        segments.append(Segment(name, tuple(fields), enc))
    return Message(tuple(segments), enc)


def parse_ts(value: str) -> int:
    """An HL7 TS/DTM (``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``) as microseconds since
    the epoch; without an offset the time is taken as UTC. Raises ValueError."""
    m = _TS.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"not an HL7 date/time: {value!r}")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    tz = dt.UTC
    if offset:
        sign = 1 if offset[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    moment = dt.datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        round(float(frac) * 1e6) if frac else 0,
        tzinfo=tz,
    )
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def format_ts(t_us: int) -> str:
    """Microseconds since the epoch as an HL7 DTM in UTC with its offset."""
    moment = dt.datetime.fromtimestamp(t_us / 1e6, dt.UTC)
    return moment.strftime("%Y%m%d%H%M%S") + f".{moment.microsecond // 1000:03d}+0000"


def frame(message: str) -> bytes:
    """A message ready for MLLP (segments joined by carriage returns)."""
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


def ack(
    message: Message | None,
    code: str,
    control_id: str,
    now_us: int,
    errors: list[Hl7Error] | None = None,
    *,
    application: str = "EICU",
    facility: str = "",
    unread_control_id: str = "",
) -> str:
    """The original-mode acknowledgement of ``message`` (None: one that could not be parsed,
    answered as version 2.6 with what is known). ``code``: AA, AE or AR."""
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"acknowledgement code must be AA, AE or AR, not {code!r}")
    enc = Encoding()
    esc = enc.escape_text
    version = message.version if message is not None and message.version in VERSIONS else "2.6"
    their_app = message.msh.field(3) if message is not None else ""
    their_fac = message.msh.field(4) if message is not None else ""
    # the event of the message acknowledged; R01 (the observations this side takes) when the
    # message could not be read
    trigger = (message.message_type[1] if message is not None else "") or "R01"
    # MSA-2 is required: for a message that could not be read, its MSH-10 if it can be seen
    # (UNKNOWN when the message has none)
    acked = (message.control_id if message is not None else unread_control_id) or "UNKNOWN"
    msh = (
        f"MSH|^~\\&|{esc(application)}|{esc(facility)}|{their_app}|{their_fac}|"
        f"{format_ts(now_us)}||ACK^{trigger}^ACK|{esc(control_id)}|P|{version}"
    )
    segments = [msh, f"MSA|{code}|{esc(acked)}"]
    for err in errors or []:
        # ERL: segment id, its sequence (the first of its name), field, component
        location = f"{err.segment}^1^{err.field_no or ''}^{err.component or ''}".rstrip("^")
        name = ERROR_TEXT.get(err.code, "")
        segments.append(
            f"ERR||{location}|{err.code}^{esc(name)}^HL70357|E||||{esc(err.text)[:250]}"
        )
    return "\r".join(segments) + "\r"


def control_id_of(text: str) -> str:
    """MSH-10 of a message that does not parse, when its first line is an MSH at all."""
    head = text.lstrip("\r\n").split("\r", 1)[0].split("\n", 1)[0]
    if not head.startswith("MSH") or len(head) < 4:
        return ""
    parts = head.split(head[3])
    return parts[9][:50] if len(parts) > 9 else ""


def read_capture(data: bytes) -> list[str]:
    """The messages of an HL7 capture file, in order: MLLP frames as a network capture or an
    interface engine's log keeps them (``<VT> message <FS><CR>``), or plain text in which each
    message begins with a line ``MSH`` (segments ending in CR, LF or CRLF; blank lines between
    messages are ignored). Segments come back joined by CR. Raises ValueError naming what cannot
    be read (text before the first MSH, a frame without its end, text that is not UTF-8)."""
    if START_BLOCK in data:
        messages = []
        rest = data
        while rest.strip():
            start = rest.find(START_BLOCK)
            if start < 0 or rest[:start].strip():
                raise ValueError(f"bytes outside an MLLP frame near {rest[:40]!r}")
            end = rest.find(END_BLOCK, start)
            if end < 0:
                raise ValueError(f"an MLLP frame without its end near {rest[start : start + 40]!r}")
            messages.append(_text(rest[start + len(START_BLOCK) : end]))
            rest = rest[end + len(END_BLOCK) :]
        return [_segments(m) for m in messages]
    text = _text(data)
    found: list[list[str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            continue
        if line.startswith("MSH"):
            found.append([])
        elif not found:
            raise ValueError(f"text before the first MSH: {line[:40]!r}")
        found[-1].append(line)
    return ["\r".join(segments) + "\r" for segments in found]


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 at byte {exc.start}") from exc


def _segments(message: str) -> str:
    lines = [s for s in message.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    return "\r".join(lines) + "\r"


# The date/time fields a capture is shifted by (``shift_times``): the message, the event, the
# order's observation times, the observations', the stay's admission and discharge.
TIME_FIELDS: Final = {
    "MSH": (7,),
    "EVN": (2, 6),
    "PV1": (44, 45),
    "OBR": (7, 8),
    "OBX": (14, 19),
}


def shift_times(message: str, offset_us: int) -> str:
    """The message with every date/time of ``TIME_FIELDS`` moved by ``offset_us`` (written in
    UTC, to the millisecond); other fields, and fields that hold no date/time, unchanged."""
    if not message.startswith("MSH") or len(message) < 8:
        raise ValueError("not an HL7 message: it does not begin with MSH")
    sep, comp = message[3], message[4]
    out = []
    for segment in message.rstrip("\r").split("\r"):
        fields = segment.split(sep)
        name = fields[0]
        for n in TIME_FIELDS.get(name, ()):
            # MSH-1 is the separator itself: MSH-n is at index n - 1, others at index n
            i = n - 1 if name == "MSH" else n
            if i >= len(fields) or not fields[i]:
                continue
            first, *rest = fields[i].split(comp)
            try:
                moved = format_ts(parse_ts(first) + offset_us)
            except ValueError:
                continue
            fields[i] = comp.join([moved, *rest])
        out.append(sep.join(fields))
    return "\r".join(out) + "\r"
