"""HL7 v2 in: an MLLP listener for IHE PCD-01 (Communicate PCD Data) observation messages.

A hospital's monitor network reaches other systems through a vendor gateway that sends HL7 v2
``ORU^R01`` messages with IEEE 11073-10101 (MDC) codes (IHE PCD Technical Framework, PCD-01).
This listener turns their numeric observations into the numerics frames of the project's wire
protocol and publishes them to the site's MQTT broker as a gateway does, so the engine, the
scores and the alarms see them exactly as they see MQTT numerics. A message is acknowledged
``AA`` only once the broker has acknowledged (QoS 1) every frame made from it; the sender keeps
and resends whatever it has no ``AA`` for, so nothing is lost between the two.

Mapping (one listener per site, ``EICU_HL7_SITE``):

- the bed is PV1-3 component 3 (the bed of the assigned location; component 1, the point of
  care, when there is no bed component); it must be a valid bed id;
- each OBX whose OBX-3 carries an MDC code of :mod:`eicu.codes` (the numeric code in component
  1 or 4, or the reference id such as ``MDC_ECG_HEART_RATE`` in component 2 or 5), with value
  type NM, gives that parameter's value; OBX-11 ``X`` (the result cannot be obtained) gives "no
  valid value"; the unit (OBX-6, MDC or UCUM) must be the parameter's own (no conversion is
  guessed); the time is OBX-14, else OBR-7, else MSH-7;
- OBX rows of the device hierarchy (no value) and codes not in the table are counted and
  skipped, never guessed; one numerics frame is made per observation time.

Answers (original mode): ``AA``; ``AE`` with ERR segments naming each field that is wrong (the
message is not taken, so a corrected resend is not stored twice); ``AR`` for an unsupported
message type or version, a message over the size limit, or a broker that cannot take data now
(send again). A control id (MSH-10) already accepted gets the same answer again without the
data being published twice; a message not accepted is judged afresh when it comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from eicu import bus, hl7, wire
from eicu.codes import PARAMETERS, SIGNAL_BY_KEY, SIGNALS, Parameter, Signal
from eicu.config import AdmissionSettings, MqttSettings
from eicu.errors import StorageUnavailable
from eicu.models import (
    ID_RE,
    INVALID_SAMPLE,
    BedKey,
    DeadLetter,
    NumericsFrame,
    SignalBlock,
    StatusFrame,
    WaveformFrame,
)
from eicu.patients import PatientError, checked_encounter_fields, checked_patient
from eicu.store.base import PatientRepository
from ingest.admission import DeadLetters

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20  # a PCD-01 message of a whole monitor is a few kilobytes
ANSWERED_KEPT = 10_000  # control ids whose answers are kept for duplicates
PUBLISH_TIMEOUT_S = 10.0
# MDC reference ids and numeric codes of the units, and the UCUM spellings, of each unit of the
# code table (IEEE 11073-10101 partition 4 for the MDC units).
UNITS: dict[str, frozenset[str]] = {
    "/min": frozenset(
        {
            "MDC_DIM_BEAT_PER_MIN",
            "264864",
            "MDC_DIM_RESP_PER_MIN",
            "264928",
            "MDC_DIM_PER_MIN",
            "/min",
            "{beats}/min",
            "{beat}/min",
            "{breaths}/min",
            "{breath}/min",
        }
    ),
    "%": frozenset({"MDC_DIM_PERCENT", "262688", "%"}),
    "Cel": frozenset({"MDC_DIM_DEGC", "268192", "Cel"}),
    "mm[Hg]": frozenset({"MDC_DIM_MMHG", "266016", "mm[Hg]", "mmHg"}),
}


def _signals_by_code() -> dict[str, Signal]:
    out: dict[str, Signal] = {}
    for sig in SIGNALS:
        if sig.mdc_code is not None and sig.mdc_ref:
            out[str(sig.mdc_code)] = sig
            out[sig.mdc_ref] = sig
    return out


def _by_code() -> dict[str, Parameter]:
    out: dict[str, Parameter] = {}
    for p in PARAMETERS:
        if p.mdc_code is not None:
            out[str(p.mdc_code)] = p
        if p.mdc_ref is not None:
            out[p.mdc_ref] = p
    return out


BY_MDC: dict[str, Parameter] = _by_code()
SIGNAL_BY_MDC: dict[str, Signal] = _signals_by_code()


@dataclass
class Counts:
    messages: int = 0
    accepted: int = 0
    errors: int = 0  # answered AE
    rejected: int = 0  # answered AR
    duplicates: int = 0  # a control id answered before
    frames: int = 0  # numerics frames published
    values: int = 0
    unknown_codes: int = 0  # OBX with a code not in the table (skipped)
    hierarchy_rows: int = 0  # OBX without a value (MDS, VMD, channel rows)
    refused_connections: int = 0
    framing_errors: int = 0  # bytes outside a start and end block
    adt: int = 0  # ADT events made on the patient tables
    wave_frames: int = 0  # waveform frames published
    samples: int = 0
    # PCD-01 whose PID-3 names another patient than the one admitted to the bed (data kept)
    patient_mismatches: int = 0


@dataclass
class Observations:
    """What a PCD-01 message says: the bed and, per observation time, the values; and the
    waveform segments it carries."""

    bed: BedKey
    by_time: dict[int, dict[str, float | None]] = field(default_factory=dict)
    waves: list[Wave] = field(default_factory=list)
    device: tuple[str, str] | None = None  # the monitor: (identifier, its kind), see device_of


@dataclass
class Wave:
    """One waveform of a PCD-01 message (an ``NA`` OBX, or one channel of an ``MA`` OBX): a
    signal's samples in physical units (NaN where the monitor had none), its sample rate and its
    first sample's time."""

    signal: str  # eicu.codes.SIGNAL_BY_KEY
    fs_hz: float
    t0_us: int
    values: NDArray[np.float64]


# IHE PCD waveform attributes, told apart by OBX-3's reference id (their code is often 0)
SAMPLE_RATE: Final = "MDC_ATTR_SAMP_RATE"
RESOLUTION: Final = "MDC_ATTR_NU_MSMT_RES"
WAVE_ATTRIBUTES: Final = (SAMPLE_RATE, RESOLUTION, "MDC_ATTR_DATA_RANGE")
RATE_UNITS: Final = frozenset({"MDC_DIM_PER_SEC", "264608", "MDC_DIM_HZ", "264640", "/s", "Hz"})
# a waveform's unit as sent -> the unit of eicu.codes (the signal's own) it is in
WAVE_UNITS: Final = {
    "mV": frozenset({"MDC_DIM_MILLI_VOLT", "266418", "mV"}),
    "mm[Hg]": frozenset({"MDC_DIM_MMHG", "266016", "mm[Hg]", "mmHg"}),
    "1": frozenset({"MDC_DIM_DIMLESS", "262656", "1", ""}),
}
MAX_WAVE_SAMPLES: Final = 60_000  # a minute at 1 kHz in one OBX (per channel)
# the value types of a waveform OBX: a numeric array (one signal) and a multiplexed array
WAVE_TYPES: Final = frozenset({"NA", "MA"})


def read_pcd01(message: hl7.Message, site: str, counts: Counts) -> Observations:
    """The numerics of a PCD-01 ``ORU^R01``; raises a list of :class:`hl7.Hl7Error` (in an
    ExceptionGroup) naming every field that is wrong."""
    errors: list[hl7.Hl7Error] = []
    pv1 = message.first("PV1")
    bed = None
    if pv1 is None:
        errors.append(hl7.Hl7Error("PV1", 0, hl7.REQUIRED_FIELD_MISSING, "no PV1 segment"))
    else:
        bed = _bed_of(pv1, site, errors, required=True)
    default_us = _first_time(((message.first("OBR"), 7), (message.msh, 7)), errors)
    by_time: dict[int, dict[str, float | None]] = {}
    obxs = message.all("OBX")
    waves = _waves(obxs, default_us, errors, counts)
    for obx in obxs:
        if obx.component(2) in WAVE_TYPES or _reference(obx) in WAVE_ATTRIBUTES:
            continue  # a waveform and its attributes (read above)
        value_text = obx.field(5)
        status = obx.component(11)
        param = _parameter(obx)
        if not value_text and (param is None or status != "X"):
            counts.hierarchy_rows += 1  # a device, a channel, or a metric without a result
            continue
        if param is None:
            counts.unknown_codes += 1
            log.debug("PCD-01 observation with a code not in the table: %s", obx.field(3)[:80])
            continue
        where = f"OBX {obx.component(1) or '?'} ({param.key})"
        try:
            value = None if status == "X" else _value(obx, param, where)
            t_us = _time(obx, default_us, where)
        except hl7.Hl7Error as exc:
            errors.append(exc)
            continue
        by_time.setdefault(t_us, {})[param.key] = value
    if errors:
        raise ExceptionGroup("the message has errors", errors)
    assert bed is not None
    return Observations(bed, by_time, waves, device_of(message))


# How long the admitted patients read for the PID check are used (an ADT through this
# listener reads them again at once).
PATIENTS_TTL_S: Final = 5.0
MDS_CODE: Final = "69965"  # MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS


def _equipment(ei: str, enc: hl7.Encoding) -> tuple[str, str] | None:
    """An EI (entity identifier) as (identifier, kind): ``id^EUI-64`` (the namespace names
    the kind, as IHE PCD writes it) or ``^^id^EUI-64`` (universal id and its type)."""
    parts = [enc.unescape(p).strip() for p in ei.split(enc.component)] + ["", "", "", ""]
    entity, namespace, universal, universal_type = parts[:4]
    if universal and universal_type:
        ident, kind = universal, universal_type
    else:
        ident, kind = entity or universal, namespace or universal_type
    if not ident or len(ident) > 128 or not ident.isprintable():
        return None
    # the kind as the bed status carries it (eicu.wire): printable, at most 32 characters
    return ident, kind[:32] if kind.isprintable() else ""


def device_of(message: hl7.Message) -> tuple[str, str] | None:
    """The monitor a PCD-01 message comes from: OBX-18 (equipment instance identifier) of
    its MDS row (code 69965, or hierarchy ``1.0.0.0``), else PRT-10 (participation device) of
    its first PRT segment (HL7 2.7 and later), else the first OBX-18 it has; None when it names
    none."""
    enc = message.encoding
    obxs = message.all("OBX")
    mds = [o for o in obxs if o.component(3) == MDS_CODE or o.field(4) == "1.0.0.0"]
    candidates = [o.field(18) for o in mds]
    candidates += [p.field(10) for p in message.all("PRT")[:1]]
    candidates += [o.field(18) for o in obxs]
    for ei in candidates:
        first = ei.split(enc.repetition)[0]
        if first and (found := _equipment(first, enc)) is not None:
            return found
    return None


def _reference(obx: hl7.Segment) -> str:
    """OBX-3's reference id (``MDC_...``), whichever of text or alternate text holds it."""
    for c in (2, 5):
        text = obx.component(3, c).strip()
        if text.startswith("MDC_"):
            return text
    return ""


def _signal(obx: hl7.Segment, repetition: int = 0) -> Signal | None:
    """The signal a coded entry of OBX-3 (its first, or the given repetition) names."""
    for c in (1, 2, 4, 5):
        code = obx.component(3, c, repetition).strip()
        if code and code in SIGNAL_BY_MDC:
            return SIGNAL_BY_MDC[code]
    return None


def _waves(
    obxs: list[hl7.Segment], default_us: int | None, errors: list[hl7.Hl7Error], counts: Counts
) -> list[Wave]:
    """The waveform OBX of a message (value type ``NA``, one signal; ``MA``, one signal per
    coded entry of OBX-3), each with its attributes: the OBX whose sub-id (OBX-4) extends the
    waveform's: MDC_ATTR_SAMP_RATE (required), and MDC_ATTR_NU_MSMT_RES, the physical value of
    one raw unit (samples are multiplied by it). An MA's attributes hold for all its channels."""
    attributes: dict[str, dict[str, hl7.Segment]] = {}
    for obx in obxs:
        ref = _reference(obx)
        sub = obx.field(4)
        if ref in WAVE_ATTRIBUTES and "." in sub:
            attributes.setdefault(sub.rsplit(".", 1)[0], {})[ref] = obx
    out: list[Wave] = []
    for obx in obxs:
        kind = obx.component(2)
        if kind not in WAVE_TYPES:
            continue
        attrs = attributes.get(obx.field(4), {})
        try:
            if kind == "NA":
                out.extend(_numeric_array(obx, attrs, default_us, counts))
            else:
                out.extend(_multiplexed_array(obx, attrs, default_us, counts))
        except hl7.Hl7Error as exc:
            errors.append(exc)
    return out


def _numeric_array(
    obx: hl7.Segment, attrs: dict[str, hl7.Segment], default_us: int | None, counts: Counts
) -> list[Wave]:
    """An ``NA`` OBX: the samples of the signal of OBX-3, separated by components."""
    signal = _signal(obx)
    if signal is None:
        counts.unknown_codes += 1
        log.debug("PCD-01 waveform with a code not in the table: %s", obx.field(3)[:80])
        return []
    where = f"OBX {obx.component(1) or '?'} ({signal.key})"
    fs_hz, scale = _wave_attributes(obx, (signal,), attrs, where)
    text = obx.field(5)
    if not text.strip():
        raise hl7.Hl7Error("OBX", 5, hl7.REQUIRED_FIELD_MISSING, f"{where}: no samples")
    if text.count(obx.encoding.component) >= MAX_WAVE_SAMPLES:
        raise hl7.Hl7Error(
            "OBX", 5, hl7.DATA_TYPE_ERROR, f"{where}: more than {MAX_WAVE_SAMPLES} samples"
        )
    values = _samples(text, obx.encoding.component, where) * scale
    return [Wave(signal.key, fs_hz, _time(obx, default_us, where), values)]


def _multiplexed_array(
    obx: hl7.Segment, attrs: dict[str, hl7.Segment], default_us: int | None, counts: Counts
) -> list[Wave]:
    """An ``MA`` OBX: a repetition per sample instant, holding a component per channel; the
    channels are named, in the same order, by the repetitions of OBX-3 (one coded entry each).
    A channel whose code is not in the table is counted and skipped; the others must all be
    able to take the one sample rate, resolution and unit the OBX has."""
    rep, comp = obx.encoding.repetition, obx.encoding.component
    n_codes = obx.field(3).count(rep) + 1
    signals = [_signal(obx, i) for i in range(n_codes)]
    for i, signal in enumerate(signals):
        if signal is None:
            counts.unknown_codes += 1
            log.debug("PCD-01 waveform channel with a code not in the table: %s",
                      obx.field(3).split(rep)[i][:80])  # fmt: skip
    known = [s for s in signals if s is not None]
    if not known:
        return []
    where = f"OBX {obx.component(1) or '?'} ({', '.join(s.key for s in known)})"
    for n, signal in enumerate(known):
        if signal in known[:n]:
            raise hl7.Hl7Error(
                "OBX", 3, hl7.DATA_TYPE_ERROR, f"{where}: channel {signal.key} named twice"
            )
    fs_hz, scale = _wave_attributes(obx, known, attrs, where)
    text = obx.field(5)
    if not text.strip():
        raise hl7.Hl7Error("OBX", 5, hl7.REQUIRED_FIELD_MISSING, f"{where}: no samples")
    rows = text.split(rep)
    if len(rows) > MAX_WAVE_SAMPLES:
        raise hl7.Hl7Error(
            "OBX", 5, hl7.DATA_TYPE_ERROR, f"{where}: more than {MAX_WAVE_SAMPLES} samples"
        )
    n_channels = rows[0].count(comp) + 1
    for i, row in enumerate(rows):
        if row.count(comp) != n_channels - 1:
            why = (
                f"{where}: sample instant {i + 1} has {row.count(comp) + 1} values, "
                f"the first {n_channels}"
            )
            raise hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, why)
    if n_channels != n_codes:
        why = f"{where}: {n_channels} channels, OBX-3 names {n_codes}"
        raise hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, why)
    # the instants one after another: sample i of channel c is value i * n_channels + c
    values = _samples(comp.join(rows), comp, where).reshape(len(rows), n_channels) * scale
    t0_us = _time(obx, default_us, where)
    return [
        Wave(signal.key, fs_hz, t0_us, np.ascontiguousarray(values[:, c]))
        for c, signal in enumerate(signals)
        if signal is not None
    ]


def _number(obx: hl7.Segment, where: str) -> float:
    try:
        value = float(obx.component(5))
    except ValueError:
        raise hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, f"{where}: not a number") from None
    if not math.isfinite(value):
        raise hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, f"{where}: not a finite number")
    return value


def _wave_attributes(
    obx: hl7.Segment, signals: Sequence[Signal], attrs: dict[str, hl7.Segment], where: str
) -> tuple[float, float]:
    """The sample rate (Hz) and the physical value of one raw unit of a waveform OBX carrying
    ``signals``, checked against each signal's range of rates and its unit."""
    rate = attrs.get(SAMPLE_RATE)
    if rate is None:
        raise hl7.Hl7Error(
            "OBX", 4, hl7.REQUIRED_FIELD_MISSING, f"{where}: no {SAMPLE_RATE} for the waveform"
        )
    fs_hz = _number(rate, f"{where} sample rate")
    rate_units = {rate.component(6, c) for c in (1, 2, 4, 5)} - {""}
    if rate_units and not rate_units & RATE_UNITS:
        why = f"{where}: sample rate in {sorted(rate_units)[0]!r}, not per second"
        raise hl7.Hl7Error("OBX", 6, hl7.TABLE_VALUE_NOT_FOUND, why)
    scale, unit_obx = 1.0, obx
    resolution = attrs.get(RESOLUTION)
    if resolution is not None:
        scale, unit_obx = _number(resolution, f"{where} resolution"), resolution
    units = {unit_obx.component(6, c) for c in (1, 2, 4, 5)} - {""} or {""}
    for signal in signals:
        of = f" for {signal.key}" if len(signals) > 1 else ""
        if not signal.fs_min_hz <= fs_hz <= signal.fs_max_hz:
            raise hl7.Hl7Error(
                "OBX", 5, hl7.DATA_TYPE_ERROR,
                f"{where}: sample rate {fs_hz:g} Hz outside {signal.fs_min_hz:g}-"
                f"{signal.fs_max_hz:g}{of}",
            )  # fmt: skip
        if not units & WAVE_UNITS.get(signal.unit, frozenset({signal.unit})):
            raise hl7.Hl7Error(
                "OBX", 6, hl7.TABLE_VALUE_NOT_FOUND,
                f"{where}: unit {sorted(units)[0]!r}, expected {signal.unit}{of}",
            )  # fmt: skip
    return fs_hz, scale


def _samples(text: str, sep: str, where: str) -> NDArray[np.float64]:
    """Numbers separated by ``sep``; an empty one (two separators in a row) is a sample the
    monitor had no value for: NaN."""
    filled = re.sub(f"(?:(?<={re.escape(sep)})|^)(?=(?:{re.escape(sep)}|$))", "nan", text)
    try:
        values = np.array(filled.split(sep), dtype=np.float64)
    except ValueError:
        why = f"{where}: not a list of numbers"
        raise hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, why) from None
    if np.isinf(values).any():
        raise hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, f"{where}: an infinite sample")
    return values


def _first_time(
    fields: Sequence[tuple[hl7.Segment | None, int]], errors: list[hl7.Hl7Error]
) -> int | None:
    """The time of the first of ``fields`` (segment, field number) that has one; one that is
    not a valid date/time is added to ``errors`` and the next tried."""
    for seg, n in fields:
        if seg is not None and seg.component(n):
            try:
                return hl7.parse_ts(seg.component(n))
            except ValueError:
                errors.append(
                    hl7.Hl7Error(seg.name, n, hl7.DATA_TYPE_ERROR, "not a valid date/time")
                )
    return None


def _bed_of(
    pv1: hl7.Segment, site: str, errors: list[hl7.Hl7Error], *, required: bool
) -> BedKey | None:
    """The bed of PV1-3: component 3 (the bed of the assigned location), else component 1 (the
    point of care); a missing one (where ``required``) or a bad one is added to ``errors``."""
    bed_id = pv1.component(3, 3) or pv1.component(3, 1)
    if not bed_id:
        if required:
            errors.append(
                hl7.Hl7Error("PV1", 3, hl7.REQUIRED_FIELD_MISSING, "no bed in the location", 3)
            )
        return None
    if not ID_RE.fullmatch(bed_id):
        errors.append(
            hl7.Hl7Error(
                "PV1", 3, hl7.DATA_TYPE_ERROR, f"bed {bed_id[:40]!r} is not a valid bed id", 3
            )
        )
        return None
    return BedKey(site, bed_id)


# admit, transfer, discharge, register, update; cancel admit, transfer, discharge; merge
ADT_EVENTS = ("A01", "A02", "A03", "A04", "A08", "A11", "A12", "A13", "A40")
CANCELS = {"A11": "admit", "A12": "transfer", "A13": "discharge"}
# The field an ADT event's refusal names, by what the patient tables refused.
ADT_FIELDS = {
    "mrn": ("PID", 3), "name": ("PID", 5), "birth_date": ("PID", 7), "sex": ("PID", 8),
    "allergies": ("AL1", 3), "bed": ("PV1", 3), "attending": ("PV1", 7),
    "diagnosis": ("DG1", 3), "encounter": ("PV1", 19), "prior_mrn": ("MRG", 1),
}  # fmt: skip


@dataclass
class AdtEvent:
    """What an ``ADT`` message says (HL7 v2 chapter 3): the event (A01 admit, A04 register, both
    taken as an admission to the bed; A02 transfer to the bed; A03 discharge; A08 update), when
    it happened, the patient, and the stay's fields it carries."""

    event: str
    at_us: int
    patient: dict[str, str | None]  # mrn, name, sex, birth_date, allergies (checked later)
    bed: BedKey | None
    fields: dict[str, str]  # diagnosis, attending, where the message carries them
    sender: str
    prior_mrn: str = ""  # A40: the merged (prior) patient's identifier, MRG-1


def _name(seg: hl7.Segment, n: int, *, doctor: bool = False) -> str:
    """An XPN (PID-5: family^given) or XCN (PV1-7: id^family^given) as "Given Family"."""
    first = 2 if doctor else 1
    family, given = seg.component(n, first), seg.component(n, first + 1)
    return " ".join(part for part in (given, family) if part)


def read_adt(message: hl7.Message, site: str) -> AdtEvent:
    """An ``ADT^A01/A02/A03/A04/A08/A11/A12/A13/A40``: raises a list of :class:`hl7.Hl7Error` (in
    an ExceptionGroup) naming every field that is wrong. The MRN is PID-3 (its first identifier),
    the name PID-5, the birth date PID-7, the sex PID-8 (HL7 table 0001; A and N are taken as
    O and U), the bed PV1-3 (as for PCD-01), the attending PV1-7, the diagnosis DG1-3 (its
    text, else DG1-4, else its code; else PV2-3), the allergies every AL1-3 (its text, else its
    code), the time EVN-6 (the event), else EVN-2, else MSH-7; for A40, the merged patient's
    identifier MRG-1 (its first identifier; PV1 is optional)."""
    errors: list[hl7.Hl7Error] = []
    event = message.message_type[1]
    pid, pv1 = message.first("PID"), message.first("PV1")
    patient: dict[str, str | None] = {}
    if pid is None:
        errors.append(hl7.Hl7Error("PID", 0, hl7.REQUIRED_FIELD_MISSING, "no PID segment"))
    else:
        patient["mrn"] = pid.component(3, 1)
        if not patient["mrn"]:
            errors.append(
                hl7.Hl7Error("PID", 3, hl7.REQUIRED_FIELD_MISSING, "no patient identifier")
            )
        patient["name"] = _name(pid, 5)
        born = pid.component(7)
        if born:
            try:
                day = hl7.parse_ts(born[:8])
                patient["birth_date"] = time.strftime("%Y-%m-%d", time.gmtime(day / 1e6))
            except ValueError:
                errors.append(hl7.Hl7Error("PID", 7, hl7.DATA_TYPE_ERROR, "not a valid date"))
        sex = pid.component(8)
        patient["sex"] = {"A": "O", "N": "U"}.get(sex, sex) or None
        allergies = []
        for al1 in message.all("AL1"):
            text = al1.component(3, 2) or al1.component(3, 1)
            if text:
                allergies.append(text)
        if allergies:
            patient["allergies"] = "; ".join(allergies)
    bed = None
    fields: dict[str, str] = {}
    prior_mrn = ""
    if event == "A40":
        mrg = message.first("MRG")
        prior_mrn = mrg.component(1, 1) if mrg is not None else ""
        if not prior_mrn:
            what = "no MRG segment" if mrg is None else "no prior patient identifier"
            errors.append(hl7.Hl7Error("MRG", 0 if mrg is None else 1,
                                       hl7.REQUIRED_FIELD_MISSING, what))  # fmt: skip
    if pv1 is None:
        if event not in ("A08", "A40"):
            errors.append(hl7.Hl7Error("PV1", 0, hl7.REQUIRED_FIELD_MISSING, "no PV1 segment"))
    else:
        bed = _bed_of(pv1, site, errors, required=event in ("A01", "A02", "A04"))
        if attending := _name(pv1, 7, doctor=True):
            fields["attending"] = attending
    dg1, pv2 = message.first("DG1"), message.first("PV2")
    if dg1 is not None and (dg1.component(3, 2) or dg1.component(3, 1) or dg1.component(4)):
        # DG1-3 the coded diagnosis (its text, else its code); DG1-4 the older free text
        fields["diagnosis"] = dg1.component(3, 2) or dg1.component(4) or dg1.component(3, 1)
    elif pv2 is not None and (pv2.component(3, 2) or pv2.component(3, 1)):
        fields["diagnosis"] = pv2.component(3, 2) or pv2.component(3, 1)
    evn = message.first("EVN")
    at_us = _first_time(((evn, 6), (evn, 2), (message.msh, 7)), errors)
    if at_us is None:
        errors.append(hl7.Hl7Error("EVN", 2, hl7.REQUIRED_FIELD_MISSING, "no event time"))
    if errors:
        raise ExceptionGroup("the message has errors", errors)
    assert at_us is not None
    sender = message.msh.component(3) or "hl7"
    return AdtEvent(event, at_us, patient, bed, fields, sender, prior_mrn)


def _value(obx: hl7.Segment, param: Parameter, where: str) -> float:
    """The numeric result of an OBX, checked against the parameter's type, range and unit."""
    kind = obx.component(2)
    if kind and kind != "NM":
        raise hl7.Hl7Error("OBX", 2, hl7.DATA_TYPE_ERROR, f"{where}: value type {kind}, not NM")
    try:
        value = float(obx.component(5))
    except ValueError:
        raise hl7.Hl7Error("OBX", 5, hl7.DATA_TYPE_ERROR, f"{where}: not a number") from None
    if not math.isfinite(value) or not param.low <= value <= param.high:
        raise hl7.Hl7Error(
            "OBX", 5, hl7.DATA_TYPE_ERROR,
            f"{where}: {value:g} outside {param.low:g}-{param.high:g} {param.unit}",
        )  # fmt: skip
    units = {obx.component(6, c) for c in (1, 2, 4, 5)} - {""}
    if not units:
        raise hl7.Hl7Error("OBX", 6, hl7.REQUIRED_FIELD_MISSING, f"{where}: no unit")
    if not units & UNITS.get(param.unit, frozenset({param.unit})):
        raise hl7.Hl7Error(
            "OBX", 6, hl7.TABLE_VALUE_NOT_FOUND,
            f"{where}: unit {sorted(units)[0]!r}, expected {param.unit}",
        )  # fmt: skip
    return value


def _time(obx: hl7.Segment, default_us: int | None, where: str) -> int:
    """OBX-14, else the message's observation time."""
    if obx.component(14):
        try:
            return hl7.parse_ts(obx.component(14))
        except ValueError:
            raise hl7.Hl7Error(
                "OBX", 14, hl7.DATA_TYPE_ERROR, f"{where}: not a date/time"
            ) from None
    if default_us is None:
        raise hl7.Hl7Error("OBX", 14, hl7.REQUIRED_FIELD_MISSING, f"{where}: no time")
    return default_us


def _parameter(obx: hl7.Segment) -> Parameter | None:
    for c in (1, 2, 4, 5):  # identifier and text, then the alternate identifier and text
        code = obx.component(3, c)
        if code and code in BY_MDC:
            return BY_MDC[code]
    return None


TLS_HANDSHAKE_S = 10.0  # a sender that does not finish its TLS handshake by then is dropped


def _allowed(networks: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in networks]


WAVE_CHUNK_S: Final = 5.0  # a waveform OBX longer than this goes out in frames of this length
GAIN: Final = {"mV": 1000.0, "mm[Hg]": 100.0, "1": 1000.0}  # raw units per physical unit


def waveform_frames(found: Observations, next_seq: Callable[[], int]) -> list[WaveformFrame]:
    """The waveform OBX of a message as wire frames (int16 samples with a gain that keeps the
    largest sample in range; NaN as the invalid sample), at most WAVE_CHUNK_S each."""
    frames = []
    for wave in found.waves:
        unit = SIGNAL_BY_KEY[wave.signal].unit
        gain = GAIN.get(unit, 1000.0)
        peak = float(np.nanmax(np.abs(wave.values))) if np.isfinite(wave.values).any() else 0.0
        if peak * gain > 32000:
            gain = 32000 / peak
        scaled = np.round(wave.values * gain)
        scaled[np.isnan(wave.values)] = INVALID_SAMPLE
        raw = scaled.astype(np.int16)
        chunk = max(1, int(WAVE_CHUNK_S * wave.fs_hz))
        for i in range(0, raw.shape[0], chunk):
            t0_us = wave.t0_us + round(i * 1e6 / wave.fs_hz)
            block = SignalBlock(wave.signal, wave.fs_hz, gain, 0, raw[i : i + chunk])
            frames.append(WaveformFrame(found.bed, next_seq(), t0_us, (block,)))
    return frames


class Listener:
    """The MLLP listener of one site: takes PCD-01 messages, publishes their numerics to the
    broker of ``mqtt`` as gateway ``gateway``, answers each message."""

    def __init__(
        self,
        mqtt: MqttSettings,
        site: str,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        allow: Sequence[str] = ("127.0.0.1/32", "::1/128"),
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        gateway: str = "hl7",
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        patients: PatientRepository | None = None,
        tls: ssl.SSLContext | None = None,
        dead_letters: Callable[[DeadLetter], None] | None = None,
        coded_waveforms: bool = False,
    ) -> None:
        if not ID_RE.fullmatch(site):
            raise ValueError(f"site {site!r} is not a valid site id")
        self.mqtt = mqtt
        self.site = site
        self.host = host
        self.port = port
        self.allow = _allowed(allow)
        self.max_message_bytes = max_message_bytes
        self.gateway = gateway
        # how long a message waits for the broker (a reconnect) before it is refused for now
        self.publish_timeout_s = publish_timeout_s
        # where ADT messages admit, move and discharge patients (None: ADT is refused)
        self.patients = patients
        # MLLP over TLS (a server context; with a CA, senders present a certificate it signed)
        self.tls = tls
        # waveform samples compressed by the project's codec (a site whose link costs bytes)
        self.coded_waveforms = coded_waveforms
        # Messages answered AE or AR are kept like the wire protocol's rejects (bounded: the
        # first of each minute whole, the rest summed up), where a sink is given (the store).
        self.dead_letters = (
            DeadLetters(AdmissionSettings(), dead_letters) if dead_letters is not None else None
        )
        self._dead_letter_task: asyncio.Task[None] | None = None
        self.counts = Counts()
        self._answers: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        # per bed: the next sequence number, from the listener's start time in seconds so that
        # numbers go on increasing across restarts (monitors send at most about once a second)
        self._seq: dict[BedKey, int] = {}
        self._wseq: dict[BedKey, int] = {}  # the same for the beds' waveform frames
        self._devices: dict[BedKey, tuple[str, str]] = {}  # the monitor each bed's status named
        self._admitted_by_bed: dict[BedKey, str] = {}  # MRN of each bed's admitted patient
        self._admitted_at = -math.inf
        self._seq0 = int(time.time()) % wire.MAX_SEQ
        self._client: bus.Client | None = None
        self._client_ready = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._broker_task: asyncio.Task[None] | None = None
        self._publish_lock = asyncio.Lock()
        self._control = 0

    async def start(self) -> None:
        self._broker_task = asyncio.create_task(self._broker(), name="hl7-broker")
        if self.dead_letters is not None:
            self._dead_letter_task = asyncio.create_task(
                self._flush_dead_letters(), name="hl7-dead-letters"
            )
        self._server = await asyncio.start_server(
            self._connection,
            self.host,
            self.port,
            ssl=self.tls,
            ssl_handshake_timeout=TLS_HANDSHAKE_S if self.tls is not None else None,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("HL7 MLLP listener for site %s on %s:%d%s", self.site, self.host, self.port,
                 " (TLS)" if self.tls is not None else "")  # fmt: skip

    async def _flush_dead_letters(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.dead_letters is not None:
                self.dead_letters.flush_if_due()

    def _keep(self, now_us: int, sender: str, code: str, detail: str, body: bytes) -> None:
        """A message answered ``code`` (AE, AR) kept for review."""
        if self.dead_letters is None:
            return
        topic = f"hl7/v2/{self.site}/{sender or 'unknown'}"
        self.dead_letters.add(now_us, topic, f"hl7_{code.lower()}", detail[:1000], body)

    async def stop(self) -> None:
        if self._dead_letter_task is not None:
            self._dead_letter_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dead_letter_task
            self._dead_letter_task = None
        if self.dead_letters is not None:
            self.dead_letters.flush()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._broker_task is not None:
            self._broker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._broker_task
            self._broker_task = None

    async def _broker(self) -> None:
        from eicu.backoff import Backoff

        backoff = Backoff(self.mqtt.reconnect_min_s, self.mqtt.reconnect_max_s)
        while True:
            try:
                async with bus.Client(
                    self.mqtt, identifier=f"eicu-hl7-{self.site}-{self.gateway}"
                ) as client:
                    self._client = client
                    self._client_ready.set()
                    backoff.reset()
                    log.info("HL7 listener publishing to %s", self.mqtt.url)
                    async for _message in client.messages:  # nothing subscribed: ends when
                        pass  # the connection is lost (MqttError)
                    raise bus.MqttError("connection closed")
            except bus.MqttError as exc:
                self._client = None
                self._client_ready.clear()
                delay = backoff.next_s()
                log.warning(
                    "HL7 listener: broker %s lost (%s); again in %.1f s", self.mqtt.url, exc, delay
                )
                await asyncio.sleep(delay)
            finally:
                self._client = None
                self._client_ready.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = ipaddress.ip_address(peer[0]) if peer else None
        if address is None or not any(address in net for net in self.allow):
            self.counts.refused_connections += 1
            log.warning("HL7 connection from %s refused: not in EICU_HL7_ALLOW", peer)
            writer.close()
            return
        buffer = bytearray()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
                while True:
                    start = buffer.find(hl7.START_BLOCK)
                    if start < 0:
                        if buffer.strip():
                            self.counts.framing_errors += 1
                        buffer.clear()
                        break
                    if start > 0:
                        if bytes(buffer[:start]).strip():
                            self.counts.framing_errors += 1
                        del buffer[:start]
                    end = buffer.find(hl7.END_BLOCK)
                    if end < 0:
                        if len(buffer) > self.max_message_bytes:
                            # no end in sight: answer and drop the connection (the framing is lost)
                            self.counts.messages += 1
                            self.counts.rejected += 1
                            await self._send(writer, self._too_large())
                            return
                        break
                    body = bytes(buffer[1:end])
                    del buffer[: end + len(hl7.END_BLOCK)]
                    answer = await self.handle(body)
                    await self._send(writer, answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, answer: str) -> None:
        writer.write(hl7.frame(answer))
        await writer.drain()

    def _next_control(self) -> str:
        self._control += 1
        return f"EICU{int(time.time() * 1000)}{self._control:04d}"

    def _too_large(self) -> str:
        err = hl7.Hl7Error(
            "MSH", 0, hl7.APPLICATION_INTERNAL_ERROR,
            f"message larger than {self.max_message_bytes} bytes (EICU_HL7_MAX_BYTES)",
        )  # fmt: skip
        return hl7.ack(None, "AR", self._next_control(), time.time_ns() // 1000, [err])

    async def handle(self, body: bytes) -> str:
        """The answer to one message (its bytes between the MLLP blocks)."""
        counts = self.counts
        counts.messages += 1
        now_us = time.time_ns() // 1000
        if len(body) > self.max_message_bytes:
            counts.rejected += 1
            self._keep(now_us, "", "AR", f"larger than {self.max_message_bytes} bytes", body)
            return self._too_large()
        text = body.decode("utf-8", errors="replace")
        try:
            message = hl7.parse(text)
        except hl7.Hl7Error as exc:
            counts.rejected += 1
            log.warning("HL7 message rejected: %s", exc)
            self._keep(now_us, "", "AR", str(exc), body)
            return hl7.ack(
                None, "AR", self._next_control(), now_us, [exc],
                unread_control_id=hl7.control_id_of(text),
            )  # fmt: skip
        control = message.control_id
        key = (message.msh.field(3), message.msh.field(4), control)
        if control and key in self._answers:
            counts.duplicates += 1
            return self._answers[key]
        code, errors = "AA", []
        kind, trigger = message.message_type
        if not control:
            code = "AE"
            errors.append(
                hl7.Hl7Error("MSH", 10, hl7.REQUIRED_FIELD_MISSING, "no message control id")
            )
        elif message.version not in hl7.VERSIONS:
            code = "AR"
            errors.append(
                hl7.Hl7Error(
                    "MSH", 12, hl7.UNSUPPORTED_VERSION_ID,
                    f"version {message.version!r}; accepted: {', '.join(hl7.VERSIONS)}",
                )
            )  # fmt: skip
        elif kind == "ADT" and self.patients is not None:
            if trigger not in ADT_EVENTS:
                code = "AR"
                errors.append(
                    hl7.Hl7Error(
                        "MSH", 9, hl7.UNSUPPORTED_EVENT_CODE,
                        f"event {trigger!r}; accepted: {', '.join(ADT_EVENTS)}", 2,
                    )
                )  # fmt: skip
            else:
                code, errors = await self._adt(message)
                self._admitted_at = -math.inf  # who is in which bed may have changed
        elif kind != "ORU":
            code = "AR"
            accepted = "ORU^R01" + (", ADT^A01-A04/A08/A11-A13/A40" if self.patients else "")
            errors.append(
                hl7.Hl7Error(
                    "MSH",
                    9,
                    hl7.UNSUPPORTED_MESSAGE_TYPE,
                    f"message type {kind!r}; accepted: {accepted}",
                    1,
                )
            )
        elif trigger != "R01":
            code = "AR"
            errors.append(
                hl7.Hl7Error(
                    "MSH", 9, hl7.UNSUPPORTED_EVENT_CODE, f"event {trigger!r}; accepted: R01", 2
                )
            )
        else:
            try:
                found = read_pcd01(message, self.site, counts)
            except ExceptionGroup as group:
                code = "AE"
                errors = [e for e in group.exceptions if isinstance(e, hl7.Hl7Error)]
            else:
                if not await self._publish(found):
                    # nothing answered for good: the sender sends it again later
                    counts.rejected += 1
                    err = hl7.Hl7Error(
                        "MSH", 0, hl7.APPLICATION_INTERNAL_ERROR,
                        "the engine's broker cannot take data now; send the message again",
                    )  # fmt: skip
                    return hl7.ack(message, "AR", self._next_control(), now_us, [err])
                await self._check_patient(message, found.bed)
        if code == "AA":
            counts.accepted += 1
        elif code == "AE":
            counts.errors += 1
        else:
            counts.rejected += 1
        if errors:
            detail = "; ".join(str(e) for e in errors)
            log.warning(
                "HL7 message %s from %s answered %s: %s",
                control[:40],
                message.msh.field(3)[:40],
                code,
                detail[:300],
            )
            if code != "AA":
                self._keep(now_us, message.msh.component(3), code, detail, body)
        if not errors:
            log.debug("HL7 message %s (%s^%s) from %s answered %s", control[:40], kind, trigger,
                      message.msh.field(3)[:40], code)  # fmt: skip
        answer = hl7.ack(message, code, self._next_control(), now_us, errors)
        if code == "AA" and control:
            # what was taken is answered alike when sent again, and not published twice; a
            # message not taken is judged again (it may come back corrected, same id or not)
            self._answers[key] = answer
            while len(self._answers) > ANSWERED_KEPT:
                self._answers.popitem(last=False)
        return answer

    async def _admitted(self, bed: BedKey) -> str | None:
        """The MRN of the patient admitted to ``bed`` (the open stays, read at most every
        PATIENTS_TTL_S); None when nobody is or the patient tables cannot be read."""
        assert self.patients is not None
        now = time.monotonic()
        if now - self._admitted_at >= PATIENTS_TTL_S:
            try:
                stays = await asyncio.wait_for(self.patients.encounters(current=True), 5.0)
            except Exception as exc:  # a check of identity, never a reason to refuse data
                log.warning("HL7 listener: the admitted patients cannot be read (%r)", exc)
                return None
            self._admitted_by_bed = {e.bed: e.patient.mrn for e in stays if e.bed is not None}
            self._admitted_at = now
        return self._admitted_by_bed.get(bed)

    async def _check_patient(self, message: hl7.Message, bed: BedKey) -> None:
        """A PCD-01 whose PID-3 names a patient other than the one admitted to its bed: the
        data stays the bed's (the location decides, as for every gateway), and the mismatch is
        counted and logged, naming both, for the interface team to find the wrong
        association at the monitor or in the ADT feed."""
        pid = message.first("PID")
        if self.patients is None or pid is None:
            return
        named = message.encoding.unescape(pid.field(3).split(message.encoding.repetition)[0])
        mrn = named.split(message.encoding.component)[0].strip()
        if not mrn:
            return
        admitted = await self._admitted(bed)
        if admitted is not None and admitted != mrn:
            self.counts.patient_mismatches += 1
            log.warning(
                "PCD-01 %s from %s for bed %s names patient %s, but %s is admitted there: "
                "the data stays the bed's",
                message.control_id[:40], message.msh.field(3)[:40], bed, mrn[:40], admitted,
            )  # fmt: skip

    async def _adt(self, message: hl7.Message) -> tuple[str, list[hl7.Hl7Error]]:
        """An ADT event made on the patient tables: (``AA``, []), (``AE``, what is wrong) or
        (``AR``, the database cannot take it now). A repeated event that is already so (the
        patient in that bed, a stay already ended) is ``AA`` with nothing changed."""
        assert self.patients is not None
        try:
            ev = read_adt(message, self.site)
        except ExceptionGroup as group:
            return "AE", [e for e in group.exceptions if isinstance(e, hl7.Hl7Error)]
        actor = f"hl7:{ev.sender}"[:64]
        store = self.patients
        try:
            mrn = str(ev.patient.get("mrn") or "")
            if ev.event == "A40":  # a duplicate record merged into this patient's
                merged = await store.merge(ev.prior_mrn, checked_patient(ev.patient), ev.at_us,
                                           actor)  # fmt: skip
                self.counts.adt += 1
                log.info("HL7 A40: %s merged into %s (%d stays) by %s", ev.prior_mrn, mrn,
                         len(merged), actor)  # fmt: skip
                return "AA", []
            every = await store.encounters(mrn=mrn)
            stays = [e for e in every if e.discharged_us is None]
            stay = stays[0] if stays else None
            fields = checked_encounter_fields(ev.fields)
            if ev.event in ("A01", "A04"):
                patient = checked_patient(ev.patient)
                assert ev.bed is not None
                if stay is None:
                    await store.admit(patient, ev.bed, ev.at_us, actor, fields)
                elif stay.bed != ev.bed:
                    raise PatientError("mrn", f"{mrn} is admitted already, in {stay.bed}")
            elif ev.event == "A13":  # the discharge of the patient's last stay entered in error
                if stay is None:
                    if not every:
                        raise PatientError("encounter", f"{mrn} has no stay")
                    await store.cancel(every[-1].encounter_id, "discharge", ev.at_us, actor)
            elif stay is None:
                if ev.event != "A03" or not every:  # a stay that ended: nothing to do
                    raise PatientError("encounter", f"{mrn} has no open stay")
            elif ev.event in CANCELS:
                await store.cancel(stay.encounter_id, CANCELS[ev.event], ev.at_us, actor)
            elif ev.event == "A02":
                assert ev.bed is not None
                if stay.bed != ev.bed:
                    await store.transfer(stay.encounter_id, ev.bed, ev.at_us, actor)
            elif ev.event == "A03":
                await store.discharge(stay.encounter_id, ev.at_us, actor)
            else:  # A08: the stay's fields and the patient's allergies
                allergies = None
                if "allergies" in ev.patient:
                    allergies = checked_patient(ev.patient).allergies
                await store.update_encounter(stay.encounter_id, fields, allergies, ev.at_us, actor)
        except PatientError as exc:
            where = ADT_FIELDS.get(exc.key, ("PID", 3))
            return "AE", [
                hl7.Hl7Error(where[0], where[1], hl7.APPLICATION_INTERNAL_ERROR, str(exc))
            ]
        except StorageUnavailable as exc:
            log.warning("HL7 ADT not taken now: %s", exc)
            err = hl7.Hl7Error(
                "MSH", 0, hl7.APPLICATION_INTERNAL_ERROR,
                "the patient database cannot take it now; send the message again",
            )  # fmt: skip
            return "AR", [err]
        self.counts.adt += 1
        log.info("HL7 %s of %s (%s) made by %s", ev.event, mrn, ev.bed, actor)
        return "AA", []

    def _next_wave_seq(self, bed: BedKey) -> int:
        seq = self._wseq.get(bed, self._seq0)
        self._wseq[bed] = (seq + 1) % (wire.MAX_SEQ + 1)
        return seq

    async def _publish(self, found: Observations) -> bool:
        """Every frame of the message published and acknowledged by the broker (QoS 1)."""
        if not found.by_time and not found.waves:
            return True
        try:
            await asyncio.wait_for(self._client_ready.wait(), self.publish_timeout_s)
        except TimeoutError:
            return False
        client = self._client
        if client is None:
            return False
        async with self._publish_lock:  # numbers in the order the broker gets them
            try:
                for t_us in sorted(found.by_time):
                    values = found.by_time[t_us]
                    seq = self._seq.get(found.bed, self._seq0)
                    frame = NumericsFrame(found.bed, seq, t_us, values)
                    await asyncio.wait_for(
                        client.publish(
                            wire.numerics_topic(found.bed), wire.encode_numerics(frame), qos=1
                        ),
                        self.publish_timeout_s,
                    )
                    self._seq[found.bed] = (seq + 1) % (wire.MAX_SEQ + 1)
                    self.counts.frames += 1
                    self.counts.values += len(values)
                for wave in waveform_frames(found, lambda: self._next_wave_seq(found.bed)):
                    await asyncio.wait_for(
                        client.publish(
                            wire.waveform_topic(found.bed),
                            wire.encode_waveform(wave, coded=self.coded_waveforms),
                            qos=1,
                        ),
                        self.publish_timeout_s,
                    )
                    self.counts.wave_frames += 1
                    self.counts.samples += wave.n_samples
                if found.device is not None and self._devices.get(found.bed) != found.device:
                    # the bed's status names its monitor (retained), once per change
                    status = StatusFrame(found.bed.site, "online", time.time_ns() // 1000,
                                         bed=found.bed.bed, device=found.device)  # fmt: skip
                    await asyncio.wait_for(
                        client.publish(
                            wire.status_topic(found.bed),
                            wire.encode_status(status),
                            qos=1,
                            retain=True,
                        ),
                        self.publish_timeout_s,
                    )
                    self._devices[found.bed] = found.device
            except (bus.MqttError, TimeoutError) as exc:
                log.warning("HL7 listener: publishing to %s failed: %s", self.mqtt.url, exc)
                return False
        return True
