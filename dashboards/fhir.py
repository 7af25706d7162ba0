"""A FHIR R4 read and search API over the store, behind the dashboard's logins and sites.

Resources (JSON, ``application/fhir+json``), under ``/fhir``:

- ``metadata``: the CapabilityStatement (no login needed: it names no patient).
- ``Patient/{id}``; ``Patient?identifier=[system|]MRN``, ``Patient?name=``: the patients of the
  patient tables (``eicu.patients``), MRN as identifier (type ``MR``).
- ``Encounter/{id}``; ``Encounter?patient=``, ``status=in-progress|finished``: the stays, with
  their beds over time as ``location`` entries (each with its period).
- ``Location/{id}``: a bed (``site/bed``); ``Device/{id}``, ``Device?location=``: its monitor.
- ``Observation?patient=&code=&date=``: the patient's vital signs, as the FHIR vital-signs
  profile names them (LOINC with the ISO/IEEE 11073 MDC code beside it, UCUM units): heart rate,
  respiratory rate, oxygen saturation, body temperature, and the blood pressure panel (systolic
  and diastolic as components), from the beds the patient was in over ``date`` (default: the
  last 24 hours; ``ge``, ``gt``, ``le``, ``lt``). Paged with ``_count`` (default 100, at most
  1000) and the bundle's ``next`` link.
- ``RiskAssessment?patient=&date=&code=``: NEWS2 (default), MEWS or qSOFA a minute apart from
  the stored values usable then; only complete scores.
- ``$export`` (FHIR Bulk Data, ``Prefer: respond-async``; ``_type``, ``_since``, at most 7
  days): Patient, Encounter, vital-sign Observation and Flag as ndjson files, for the user who
  asked, kept an hour in the dashboard process that ran it.
- ``Flag?patient=&date=&status=``: the alarms of the beds the patient was in (from the alarm
  tables), one Flag each, ``active`` until the alarm is cleared, coded with its MDC event code and
  the engine's own kind.

A user sees only what lies in their sites: a patient or a stay in a bed of another site is
"not found" to them, and only the observations of beds in their sites are returned. Errors are
OperationOutcome resources with the HTTP status (400 for a search that cannot be read, 401
without a session, 404 for what is not there).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from dashboards.security import Session, csrf_ok
from dashboards.users import Permission
from eicu import __version__
from eicu.alarm_model import AlarmEvent, AlarmState, StoredEvent
from eicu.codes import ALARM_MDC_EVENT, ALARM_MDC_NOS, BY_KEY, SIGNAL_BY_KEY, SIGNALS
from eicu.errors import StorageUnavailable
from eicu.models import BedKey
from eicu.patients import Encounter, Location
from eicu.scores.assembly import assemble_mews, assemble_news2, assemble_qsofa
from eicu.store.base import BedDevice, NumericSample, Store, WaveformWindow

log = logging.getLogger(__name__)

FHIR_JSON: Final = "application/fhir+json"
CSRF_HEADER: Final = "x-csrf-token"  # as the dashboard's (dashboards.app)
FHIR_VERSION: Final = "4.0.1"
MRN_SYSTEM: Final = "urn:eicu:mrn"
LOINC: Final = "http://loinc.org"
MDC: Final = "urn:iso:std:iso:11073:10101"
UCUM: Final = "http://unitsofmeasure.org"
DEFAULT_WINDOW_US: Final = 24 * 3600 * 1_000_000
MAX_COUNT: Final = 1000
MAX_WAVE_WINDOW_US: Final = 600 * 1_000_000
GENDER: Final = {"M": "male", "F": "female", "O": "other", "U": "unknown"}


@dataclass(frozen=True)
class VitalSign:
    """One vital sign of the FHIR vital-signs profile and the parameter(s) it is made of."""

    loinc: str
    display: str
    keys: tuple[str, ...]  # one parameter, or (systolic, diastolic) for a panel
    extra_loinc: tuple[tuple[str, str], ...] = ()  # codes the profile also wants


VITALS: Final = (
    VitalSign("8867-4", "Heart rate", ("HR",)),
    VitalSign("9279-1", "Respiratory rate", ("RR",)),
    VitalSign(
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        ("SPO2",),
        (("2708-6", "Oxygen saturation in Arterial blood"),),
    ),
    VitalSign("8310-5", "Body temperature", ("TEMP",)),
    VitalSign("85354-9", "Blood pressure panel", ("NIBP_SYS", "NIBP_DIA")),
    VitalSign("85354-9", "Blood pressure panel", ("ABP_SYS", "ABP_DIA")),
)
COMPONENTS: Final = {
    "NIBP_SYS": ("8480-6", "Systolic blood pressure"),
    "NIBP_DIA": ("8462-4", "Diastolic blood pressure"),
    "ABP_SYS": ("8480-6", "Systolic blood pressure"),
    "ABP_DIA": ("8462-4", "Diastolic blood pressure"),
}


class FhirError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def outcome(status: int, code: str, text: str) -> JSONResponse:
    doc = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return JSONResponse(doc, status_code=status, media_type=FHIR_JSON)


def _iso(t_us: int) -> str:
    moment = dt.datetime.fromtimestamp(t_us / 1e6, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fhir_id(text: str) -> str:
    """A FHIR id ([A-Za-z0-9-.], at most 64) for a key of ours: itself where it is one, else
    ``x`` and its base32 (our keys may hold ``_`` and ``/``)."""
    plain = all(c.isascii() and (c.isalnum() or c in "-.") for c in text)
    if text and len(text) <= 64 and plain and not text.startswith("x"):
        return text
    return "x" + base64.b32encode(text.encode()).decode().rstrip("=").lower()


def from_fhir_id(fid: str) -> str:
    if not fid.startswith("x"):
        return fid
    raw = fid[1:].upper()
    try:
        return base64.b32decode(raw + "=" * (-len(raw) % 8)).decode()
    except (ValueError, UnicodeDecodeError):
        raise FhirError(404, "not-found", f"no such resource {fid!r}") from None


def location_id(bed: BedKey) -> str:
    return fhir_id(f"{bed.site}.{bed.bed}" if "_" not in str(bed) else str(bed))


def bed_of_location(fid: str) -> BedKey:
    text = from_fhir_id(fid)
    try:
        return BedKey.parse(text if "/" in text else text.replace(".", "/", 1))
    except ValueError:
        raise FhirError(404, "not-found", f"no such Location {fid!r}") from None


def patient_resource(e: Encounter) -> dict[str, Any]:
    p = e.patient
    given, _, family = p.name.rpartition(" ")
    name: dict[str, Any] = {"text": p.name, "family": family}
    if given:
        name["given"] = given.split()
    doc: dict[str, Any] = {
        "resourceType": "Patient",
        "id": fhir_id(p.mrn),
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "MR",
                        }
                    ]
                },
                "system": MRN_SYSTEM,
                "value": p.mrn,
            }
        ],
        "name": [name],
        "gender": GENDER.get(p.sex, "unknown"),
    }
    if p.birth_date:
        doc["birthDate"] = p.birth_date
    return doc


def encounter_resource(e: Encounter) -> dict[str, Any]:
    ended = e.discharged_us is not None
    period: dict[str, str] = {"start": _iso(e.admitted_us)}
    if e.discharged_us is not None:
        period["end"] = _iso(e.discharged_us)
    locations = []
    for loc in e.locations:
        lp: dict[str, str] = {"start": _iso(loc.since_us)}
        if loc.until_us is not None:
            lp["end"] = _iso(loc.until_us)
        locations.append(
            {
                "location": {"reference": f"Location/{location_id(loc.bed)}",
                             "display": str(loc.bed)},
                "status": "completed" if loc.until_us is not None else "active",
                "period": lp,
            }
        )  # fmt: skip
    doc: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": str(e.encounter_id),
        "status": "finished" if ended else "in-progress",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "IMP",
            "display": "inpatient encounter",
        },
        "subject": {"reference": f"Patient/{fhir_id(e.patient.mrn)}"},
        "period": period,
        "location": locations,
    }
    if e.diagnosis:
        doc["reasonCode"] = [{"text": e.diagnosis}]
    if e.attending:
        doc["participant"] = [{"individual": {"display": e.attending}}]
    return doc


def location_resource(bed: BedKey) -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "id": location_id(bed),
        "status": "active",
        "name": str(bed),
        "mode": "instance",
        "physicalType": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                    "code": "bd",
                    "display": "Bed",
                }
            ]
        },
    }


def device_resource(bed: BedKey, known: Sequence[BedDevice] = ()) -> dict[str, Any]:
    """The bedside monitor of a bed: what sends the bed's data (through its gateway). ``known``:
    the monitors the bed's statuses named (newest first): each an identifier, the newest
    ``official``, the others ``old``, each with the period it was named in."""
    identifiers = [
        {
            "use": "official" if i == 0 else "old",
            "type": {"text": d.id_type or "device identifier"},
            "value": d.device_id,
            "period": {"start": _iso(d.first_seen_us), "end": _iso(d.last_seen_us)},
        }
        for i, d in enumerate(known)
    ]
    resource = {
        "resourceType": "Device",
        "id": location_id(bed),
        "status": "active",
        "deviceName": [{"name": f"monitor of {bed}", "type": "user-friendly-name"}],
        "type": {
            "coding": [
                {
                    "system": MDC,
                    "code": "69965",
                    "display": "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS",
                }
            ],
            "text": "multi-parameter physiological monitor",
        },
        "location": {"reference": f"Location/{location_id(bed)}"},
    }
    if identifiers:
        resource["identifier"] = identifiers
    return resource


def _coding(key: str) -> list[dict[str, str]]:
    p = BY_KEY[key]
    out = []
    if p.mdc_code is not None and p.mdc_ref:
        out.append({"system": MDC, "code": str(p.mdc_code), "display": p.mdc_ref})
    return out


def _quantity(key: str, value: float) -> dict[str, Any]:
    unit = BY_KEY[key].unit
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


_ABSENT: Final = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "unknown",
            "display": "Unknown",
        }
    ]
}


def observations(
    samples: Iterable[NumericSample], patient_id: str, encounter_id: int, codes: set[str] | None
) -> list[dict[str, Any]]:
    """The vital-sign Observations of one bed's samples (one time: one observation per sign)."""
    at: dict[int, dict[str, float | None]] = {}
    for s in samples:
        at.setdefault(s.ts_us, {})[s.key] = s.value
    out = []
    for ts_us in sorted(at):
        values = at[ts_us]
        for sign in VITALS:
            if codes is not None and not codes & {sign.loinc, *_mdc_codes(sign)}:
                continue
            if not any(k in values for k in sign.keys):
                continue
            coding = [{"system": LOINC, "code": sign.loinc, "display": sign.display}]
            coding += [{"system": LOINC, "code": c, "display": d} for c, d in sign.extra_loinc]
            doc: dict[str, Any] = {
                "resourceType": "Observation",
                "id": fhir_id(f"{encounter_id}.{sign.keys[0]}.{ts_us}"),
                "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/"
                                "observation-category",
                                "code": "vital-signs",
                                "display": "Vital Signs",
                            }
                        ]
                    }
                ],
                "subject": {"reference": f"Patient/{patient_id}"},
                "encounter": {"reference": f"Encounter/{encounter_id}"},
                "effectiveDateTime": _iso(ts_us),
            }
            if len(sign.keys) == 1:
                key = sign.keys[0]
                doc["code"] = {"coding": coding + _coding(key), "text": sign.display}
                value = values[key]
                if value is None:
                    doc["dataAbsentReason"] = _ABSENT
                else:
                    doc["valueQuantity"] = _quantity(key, value)
            else:
                doc["code"] = {"coding": coding, "text": sign.display}
                components = []
                for key in sign.keys:
                    code, display = COMPONENTS[key]
                    component: dict[str, Any] = {
                        "code": {
                            "coding": [
                                {"system": LOINC, "code": code, "display": display},
                                *_coding(key),
                            ]
                        },
                    }
                    value = values.get(key)
                    if value is None:
                        component["dataAbsentReason"] = _ABSENT
                    else:
                        component["valueQuantity"] = _quantity(key, value)
                    components.append(component)
                doc["component"] = components
            out.append(doc)
    return out


WAVE_SEGMENT_S: Final = 10.0  # a waveform Observation holds at most this much signal


def waveform_observations(
    window: WaveformWindow, patient_id: str, encounter_id: int
) -> list[dict[str, Any]]:
    """A stored signal as Observations of SampledData (at most WAVE_SEGMENT_S each; a gap in
    the recording starts a new one), its samples in physical units, ``E`` where the monitor
    had none."""
    sig = SIGNAL_BY_KEY[window.signal]
    n = window.t_us.shape[0]
    if sig.mdc_code is None or not n:
        return []
    period_us = 1e6 / window.fs_hz
    size = max(1, int(WAVE_SEGMENT_S * window.fs_hz))
    # segments: cut at every gap (a step longer than 1.5 sample periods) and every `size`
    gaps = (np.flatnonzero(np.diff(window.t_us) > 1.5 * period_us) + 1).tolist()
    cuts = sorted({0, n, *gaps, *range(size, n, size)})
    out = []
    unit = sig.unit
    for a, b in itertools.pairwise(cuts):
        values = window.values[a:b]
        text = np.char.mod("%.4g", values)
        text[np.isnan(values)] = "E"
        t0 = int(window.t_us[a])
        category = {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "procedure",
            "display": "Procedure",
        }
        out.append(
            {
                "resourceType": "Observation",
                "id": fhir_id(f"{encounter_id}.{sig.key}.{t0}"),
                "status": "final",
                "category": [{"coding": [category]}],
                "code": {
                    "coding": [{"system": MDC, "code": str(sig.mdc_code), "display": sig.mdc_ref}],
                    "text": sig.name,
                },
                "subject": {"reference": f"Patient/{patient_id}"},
                "encounter": {"reference": f"Encounter/{encounter_id}"},
                "effectivePeriod": {
                    "start": _iso(t0),
                    "end": _iso(t0 + round((b - a) * period_us)),
                },
                "valueSampledData": {
                    "origin": {"value": 0, "unit": unit, "system": UCUM, "code": unit},
                    "period": round(period_us / 1000, 6),
                    "dimensions": 1,
                    "data": " ".join(text.tolist()),
                },
            }
        )
    return out


WAVE_CODES: Final = {str(s.mdc_code): s.key for s in SIGNALS if s.mdc_code is not None} | {
    s.mdc_ref: s.key for s in SIGNALS if s.mdc_ref
}


SCORES: Final = {"NEWS2": assemble_news2, "MEWS": assemble_mews, "qSOFA": assemble_qsofa}
SCORE_METHOD: Final = {
    "NEWS2": "National Early Warning Score 2 (Royal College of Physicians, 2017)",
    "MEWS": "Modified Early Warning Score (Subbe et al., 2001)",
    "qSOFA": "quick Sequential Organ Failure Assessment (Seymour et al., 2016)",
}
# a score's band -> HL7 risk-probability
RISK: Final = {
    "high": "high", "medium": "moderate", "low-medium": "moderate", "low": "low",
    "positive": "high", "negative": "low",
}  # fmt: skip
SCORE_STEP_US: Final = 60 * 1_000_000  # an assessment per minute
MAX_SCORE_WINDOW_US: Final = 6 * 3600 * 1_000_000
SCORE_LOOKBACK_US: Final = 12 * 3600 * 1_000_000  # the longest an input stays usable


def risk_assessments(
    samples: list[NumericSample],
    start_us: int,
    end_us: int,
    names: list[str],
    patient_id: str,
    encounter_id: int,
) -> list[dict[str, Any]]:
    """The scores ``names`` of one bed's stored values at each whole minute of [start, end),
    each from the values usable then (as the live scores are assembled); a score whose inputs
    are not all there is not given (an incomplete score is never shown as a number)."""
    out = []
    latest: dict[str, tuple[float | None, int]] = {}
    i = 0
    first = -(-start_us // SCORE_STEP_US) * SCORE_STEP_US
    for at_us in range(first, end_us, SCORE_STEP_US):
        while i < len(samples) and samples[i].ts_us <= at_us:
            latest[samples[i].key] = (samples[i].value, samples[i].ts_us)
            i += 1
        for name in names:
            result = SCORES[name](latest, at_us)
            if not result.complete or result.total is None or result.band is None:
                continue
            parts = ", ".join(f"{k} {v}" for k, v in result.components.items() if v is not None)
            out.append(
                {
                    "resourceType": "RiskAssessment",
                    "id": fhir_id(f"{encounter_id}.{name}.{at_us}"),
                    "status": "final",
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "encounter": {"reference": f"Encounter/{encounter_id}"},
                    "occurrenceDateTime": _iso(at_us),
                    "code": {"text": name},
                    "method": {"text": SCORE_METHOD[name]},
                    "prediction": [
                        {
                            "outcome": {"text": "clinical deterioration"},
                            "qualitativeRisk": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/"
                                        "risk-probability",
                                        "code": RISK.get(result.band, "moderate"),
                                    }
                                ],
                                "text": f"{name} {result.total}: {result.band}",
                            },
                        }
                    ],
                    "note": [{"text": f"{name} {result.total} ({result.band}); {parts}"}],
                }
            )
    return out


def _mdc_codes(sign: VitalSign) -> set[str]:
    return {str(BY_KEY[k].mdc_code) for k in sign.keys if BY_KEY[k].mdc_code is not None}


def capability_statement(base: str) -> dict[str, Any]:
    def resource(kind: str, search: list[tuple[str, str]], read: bool = True) -> dict[str, Any]:
        interactions = [{"code": "search-type"}] + ([{"code": "read"}] if read else [])
        return {
            "type": kind,
            "interaction": interactions,
            "searchParam": [{"name": n, "type": t} for n, t in search],
        }

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _iso(time.time_ns() // 1000)[:10],
        "kind": "instance",
        "software": {"name": "eicu", "version": __version__},
        "implementation": {"description": "eicu tele-ICU engine", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "A dashboard session: POST /api/login, then its cookie."
                },
                "resource": [
                    resource("Patient", [("identifier", "token"), ("name", "string")]),
                    resource("Encounter", [("patient", "reference"), ("status", "token")]),
                    resource("Location", [], read=True),
                    resource("Device", [("location", "reference")], read=True),
                    resource(
                        "RiskAssessment",
                        [("patient", "reference"), ("date", "date"), ("code", "token")],
                        read=False,
                    ),
                    resource(
                        "Flag",
                        [("patient", "reference"), ("date", "date"), ("status", "token")],
                        read=False,
                    ),
                    resource(
                        "Observation",
                        [
                            ("patient", "reference"),
                            ("code", "token"),
                            ("date", "date"),
                            ("_count", "number"),
                        ],
                        read=False,
                    ),
                ],
            }
        ],
    }


def flag_resource(
    trail: list[AlarmEvent], subject: str, encounter_id: int | None
) -> dict[str, Any]:
    """One alarm (its events, oldest first) as a Flag: active until the alarm is cleared,
    its period from its onset, its condition coded (MDC, and the engine's own kind)."""
    first, last = trail[0], trail[-1]
    code, ref = ALARM_MDC_EVENT.get(first.kind, ALARM_MDC_NOS)
    onset_us = int(first.alarm_id.rsplit("/", 1)[-1])
    period: dict[str, str] = {"start": _iso(onset_us)}
    if last.state is AlarmState.CLEARED:
        period["end"] = _iso(last.time_us)
    doc: dict[str, Any] = {
        "resourceType": "Flag",
        "id": fhir_id(first.alarm_id),
        "identifier": [{"system": "urn:eicu:alarm", "value": first.alarm_id}],
        "status": "inactive" if last.state is AlarmState.CLEARED else "active",
        "category": [{"text": f"{first.category.value} alarm"}],
        "code": {
            "coding": [
                {"system": MDC, "code": code, "display": ref},
                {"system": "urn:eicu:alarm-kind", "code": first.kind},
            ],
            "text": f"{first.kind} ({last.priority.value} priority, {last.state.value})",
        },
        "subject": {"reference": subject},
        "period": period,
    }
    if encounter_id is not None:
        doc["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return doc


def flags_of(
    rows: Iterable[StoredEvent], subject: str, encounter_id: int | None
) -> list[dict[str, Any]]:
    """One Flag per alarm of the audit trail ``rows``."""
    trails: dict[str, list[AlarmEvent]] = {}
    for row in rows:
        trails.setdefault(row.event.alarm_id, []).append(row.event)
    return [
        flag_resource(sorted(trail, key=lambda ev: ev.time_us), subject, encounter_id)
        for trail in trails.values()
    ]


EXPORT_TYPES: Final = ("Patient", "Encounter", "Observation", "Flag")
EXPORT_DEFAULT_US: Final = 24 * 3600 * 1_000_000  # without _since: the last day
EXPORT_MAX_US: Final = 7 * 24 * 3600 * 1_000_000
EXPORT_KEPT_US: Final = 3600 * 1_000_000  # a finished export's files are kept this long
EXPORT_RUNNING_MAX: Final = 2


@dataclass
class ExportJob:
    """One bulk export: its files (one ndjson per resource type) once done, for its user."""

    job_id: str
    user: str
    types: list[str]
    since_us: int
    until_us: int
    started_us: int
    state: str = "running"  # running, done, failed
    error: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def expired(self, now_us: int) -> bool:
        return self.state != "running" and now_us - self.started_us > EXPORT_KEPT_US


def _date_bounds(values: list[str], now_us: int) -> tuple[int, int]:
    start, end = now_us - DEFAULT_WINDOW_US, now_us + 1
    for raw in values:
        prefix, text = raw[:2], raw[2:]
        if prefix not in ("ge", "gt", "le", "lt"):
            prefix, text = "eq", raw
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise FhirError(400, "invalid", f"date {raw!r} is not a FHIR dateTime") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        t_us = int(moment.timestamp() * 1e6)
        if prefix in ("ge", "gt", "eq"):
            start = t_us + (1 if prefix == "gt" else 0)
        if prefix in ("le", "lt", "eq"):
            end = t_us + (0 if prefix == "lt" else 1)
    if end <= start:
        raise FhirError(400, "invalid", "the date range is empty")
    return start, end


def _count(raw: str | None) -> int:
    if raw is None:
        return 100
    if not raw.isdigit() or not 0 < int(raw) <= MAX_COUNT:
        raise FhirError(400, "invalid", f"_count must be 1-{MAX_COUNT}")
    return int(raw)


def _token(raw: str) -> str:
    return raw.split("|", 1)[1] if "|" in raw else raw


def register(
    app: FastAPI,
    store: Store,
    session_of: Callable[[Request], Awaitable[Session | None]],
    by_token: Callable[[str], Awaitable[Session | None]] | None = None,
) -> None:
    """Add ``/fhir`` to the dashboard app. ``session_of``: the request's session from its
    cookie (None without one); ``by_token``: a session from its token, which a system client
    (an EHR, a research pipeline) presents as ``Authorization: Bearer <token>`` instead of the
    cookie: a system account's API token (role ``system``), or a user's session cookie value
    after ``POST /api/login``."""

    def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    async def user_session(request: Request) -> Session:
        session = await session_of(request)
        token = bearer(request)
        if session is None and token is not None and by_token is not None:
            session = await by_token(token)
        if session is None:
            raise FhirError(401, "login", "log in first (POST /api/login)")
        if not session.user.can(Permission.VIEW):
            raise FhirError(403, "forbidden", f"the {session.user.role} role may not read this")
        return session

    def visible(e: Encounter, session: Session) -> bool:
        return any(session.user.can_see(loc.bed.site) for loc in e.locations)

    async def stays(session: Session, mrn: str | None = None) -> list[Encounter]:
        try:
            found = await store.encounters(current=False, mrn=mrn)
        except StorageUnavailable as exc:
            raise FhirError(503, "transient", f"the store cannot be reached now: {exc}") from exc
        return [e for e in found if visible(e, session)]

    def windows(
        found: list[Encounter], session: Session, start_us: int, end_us: int
    ) -> Iterator[tuple[Encounter, Location, int, int]]:
        """Each bed of each stay that the user may see, with the part of [start, end) the
        patient was in it."""
        for e in found:
            for loc in e.locations:
                if not session.user.can_see(loc.bed.site):
                    continue
                a = max(start_us, loc.since_us)
                b = min(end_us, loc.until_us if loc.until_us is not None else end_us)
                if b > a:
                    yield e, loc, a, b

    def paged(request: Request, found: list[dict[str, Any]]) -> JSONResponse:
        """A searchset of ``found`` from ``_offset``, ``_count`` of them, with its next link."""
        q = request.query_params
        count = _count(q.get("_count"))
        raw_offset = q.get("_offset", "0")
        if not raw_offset.isdigit():
            raise FhirError(400, "invalid", "_offset must be a whole number")
        offset = int(raw_offset)
        next_url = None
        if offset + count < len(found):
            next_url = str(request.url.include_query_params(_offset=offset + count))
        return bundle(request, found[offset : offset + count], len(found), next_url)

    def bundle(request: Request, resources: list[dict[str, Any]], total: int,
               next_url: str | None) -> JSONResponse:  # fmt: skip
        base = str(request.base_url).rstrip("/") + "/fhir"
        links = [{"relation": "self", "url": str(request.url)}]
        if next_url is not None:
            links.append({"relation": "next", "url": next_url})
        doc = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
        return JSONResponse(doc, media_type=FHIR_JSON)

    def one(doc: dict[str, Any]) -> JSONResponse:
        return JSONResponse(doc, media_type=FHIR_JSON)

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> JSONResponse:
        return outcome(exc.status, exc.code, exc.text)

    @app.get("/fhir/metadata")
    async def metadata(request: Request) -> JSONResponse:
        return one(capability_statement(str(request.base_url).rstrip("/") + "/fhir"))

    @app.get("/fhir/Patient/{fid}")
    async def read_patient(fid: str, request: Request) -> JSONResponse:
        session = await user_session(request)
        found = await stays(session, mrn=from_fhir_id(fid))
        if not found:
            raise FhirError(404, "not-found", f"no Patient {fid}")
        return one(patient_resource(found[-1]))

    @app.get("/fhir/Patient")
    async def search_patients(request: Request) -> JSONResponse:
        session = await user_session(request)
        q = request.query_params
        unknown = set(q) - {"identifier", "name", "_count"}
        if unknown:
            raise FhirError(400, "not-supported", f"search parameters {sorted(unknown)}")
        found = await stays(session)
        if "identifier" in q:
            mrn = _token(q["identifier"])
            found = [e for e in found if e.patient.mrn == mrn]
        if "name" in q:
            needle = q["name"].lower()
            found = [e for e in found if needle in e.patient.name.lower()]
        latest: dict[str, Encounter] = {}
        for e in found:
            latest[e.patient.mrn] = e
        resources = [patient_resource(e) for e in latest.values()][: _count(q.get("_count"))]
        return bundle(request, resources, len(latest), None)

    @app.get("/fhir/Encounter/{fid}")
    async def read_encounter(fid: str, request: Request) -> JSONResponse:
        session = await user_session(request)
        if not fid.isdigit():
            raise FhirError(404, "not-found", f"no Encounter {fid}")
        try:
            found = await store.encounters(encounter_id=int(fid))
        except StorageUnavailable as exc:
            raise FhirError(503, "transient", f"the store cannot be reached now: {exc}") from exc
        found = [e for e in found if visible(e, session)]
        if not found:
            raise FhirError(404, "not-found", f"no Encounter {fid}")
        return one(encounter_resource(found[0]))

    @app.get("/fhir/Encounter")
    async def search_encounters(request: Request) -> JSONResponse:
        session = await user_session(request)
        q = request.query_params
        unknown = set(q) - {"patient", "subject", "status", "_count"}
        if unknown:
            raise FhirError(400, "not-supported", f"search parameters {sorted(unknown)}")
        ref = q.get("patient") or q.get("subject")
        mrn = from_fhir_id(ref.removeprefix("Patient/")) if ref else None
        found = await stays(session, mrn=mrn)
        status = q.get("status")
        if status is not None:
            if status not in ("in-progress", "finished"):
                raise FhirError(400, "invalid", f"status {status!r}")
            found = [e for e in found if (e.discharged_us is None) == (status == "in-progress")]
        resources = [encounter_resource(e) for e in found][: _count(q.get("_count"))]
        return bundle(request, resources, len(found), None)

    @app.get("/fhir/Location/{fid}")
    async def read_location(fid: str, request: Request) -> JSONResponse:
        session = await user_session(request)
        bed = bed_of_location(fid)
        if not session.user.can_see(bed.site):
            raise FhirError(404, "not-found", f"no Location {fid}")
        return one(location_resource(bed))

    @app.get("/fhir/Observation")
    async def search_observations(request: Request) -> JSONResponse:
        session = await user_session(request)
        q = request.query_params
        unknown = set(q) - {"patient", "subject", "code", "date", "category", "_count",
                            "_offset"}  # fmt: skip
        if unknown:
            raise FhirError(400, "not-supported", f"search parameters {sorted(unknown)}")
        ref = q.get("patient") or q.get("subject")
        if not ref:
            raise FhirError(400, "required", "an Observation search needs patient=")
        category = q.get("category")
        if category is not None and _token(category) != "vital-signs":
            return bundle(request, [], 0, None)
        pid = ref.removeprefix("Patient/")
        now = time.time_ns() // 1000
        start_us, end_us = _date_bounds(q.getlist("date"), now)
        codes = {_token(c) for raw in q.getlist("code") for c in raw.split(",")} or None
        waves = sorted({WAVE_CODES[c] for c in codes or () if c in WAVE_CODES})
        if waves and end_us - start_us > MAX_WAVE_WINDOW_US:
            why = "a waveform search spans at most 10 minutes: narrow its date"
            raise FhirError(400, "too-costly", why)
        found: list[dict[str, Any]] = []
        patient_stays = await stays(session, mrn=from_fhir_id(pid))
        for e, loc, a, b in windows(patient_stays, session, start_us, end_us):
            subject = fhir_id(e.patient.mrn)
            try:
                if codes is None or codes - set(WAVE_CODES):
                    samples = await store.numerics(a, b, bed=loc.bed)
                    found += observations(samples, subject, e.encounter_id, codes)
                for signal in waves:
                    window = await store.waveform(loc.bed, signal, a, b)
                    found += waveform_observations(window, subject, e.encounter_id)
            except StorageUnavailable as exc:
                why = f"the store cannot be reached: {exc}"
                raise FhirError(503, "transient", why) from exc
        found.sort(key=lambda r: r.get("effectiveDateTime") or r["effectivePeriod"]["start"])
        return paged(request, found)

    @app.get("/fhir/Flag")
    async def search_flags(request: Request) -> JSONResponse:
        """The alarms of the beds a patient was in, as Flags (one per alarm)."""
        session = await user_session(request)
        q = request.query_params
        unknown = set(q) - {"patient", "subject", "date", "status", "_count", "_offset"}
        if unknown:
            raise FhirError(400, "not-supported", f"search parameters {sorted(unknown)}")
        ref = q.get("patient") or q.get("subject")
        if not ref:
            raise FhirError(400, "required", "a Flag search needs patient=")
        status = q.get("status")
        if status is not None and status not in ("active", "inactive"):
            raise FhirError(400, "invalid", f"status {status!r}")
        start_us, end_us = _date_bounds(q.getlist("date"), time.time_ns() // 1000)
        flags: list[dict[str, Any]] = []
        patient_stays = await stays(session, mrn=from_fhir_id(ref.removeprefix("Patient/")))
        for e, loc, a, b in windows(patient_stays, session, start_us, end_us):
            try:
                rows = await store.alarm_events(a, b, beds=[loc.bed])
            except StorageUnavailable as exc:
                why = f"the store cannot be reached: {exc}"
                raise FhirError(503, "transient", why) from exc
            for flag in flags_of(rows, f"Patient/{fhir_id(e.patient.mrn)}", e.encounter_id):
                if status is None or flag["status"] == status:
                    flags.append(flag)
        flags.sort(key=lambda f: f["period"]["start"])
        return paged(request, flags)

    @app.get("/fhir/RiskAssessment")
    async def search_risk(request: Request) -> JSONResponse:
        """The patient's early-warning scores, a minute apart, from the stored values."""
        session = await user_session(request)
        q = request.query_params
        unknown = set(q) - {"patient", "subject", "date", "code", "_count", "_offset"}
        if unknown:
            raise FhirError(400, "not-supported", f"search parameters {sorted(unknown)}")
        ref = q.get("patient") or q.get("subject")
        if not ref:
            raise FhirError(400, "required", "a RiskAssessment search needs patient=")
        names = [c for raw in q.getlist("code") for c in raw.split(",")] or ["NEWS2"]
        bad = [n for n in names if n not in SCORES]
        if bad:
            raise FhirError(400, "invalid", f"code {bad[0]!r}; one of {', '.join(SCORES)}")
        now = time.time_ns() // 1000
        dates = q.getlist("date") or [f"ge{_iso(now - 3600 * 1_000_000)}"]
        start_us, end_us = _date_bounds(dates, now)
        if end_us - start_us > MAX_SCORE_WINDOW_US:
            raise FhirError(400, "too-costly", "a score search spans at most 6 hours")
        found: list[dict[str, Any]] = []
        patient_stays = await stays(session, mrn=from_fhir_id(ref.removeprefix("Patient/")))
        for e, loc, a, b in windows(patient_stays, session, start_us, end_us):
            try:
                samples = await store.numerics(
                    max(a - SCORE_LOOKBACK_US, loc.since_us), b, bed=loc.bed
                )
            except StorageUnavailable as exc:
                why = f"the store cannot be reached: {exc}"
                raise FhirError(503, "transient", why) from exc
            subject = fhir_id(e.patient.mrn)
            found += risk_assessments(samples, a, b, names, subject, e.encounter_id)
        found.sort(key=lambda r: r["occurrenceDateTime"])
        return paged(request, found)

    async def named_devices(bed: BedKey | None = None) -> list[BedDevice]:
        """The monitors ``bed``'s statuses named (every bed's when None)."""
        try:
            return await store.bed_devices(bed)
        except StorageUnavailable as exc:
            raise FhirError(503, "transient", f"the store cannot be reached now: {exc}") from exc

    @app.get("/fhir/Device/{fid}")
    async def read_device(fid: str, request: Request) -> JSONResponse:
        session = await user_session(request)
        bed = bed_of_location(fid)
        if not session.user.can_see(bed.site):
            raise FhirError(404, "not-found", f"no Device {fid}")
        return one(device_resource(bed, await named_devices(bed)))

    @app.get("/fhir/Device")
    async def search_devices(request: Request) -> JSONResponse:
        """The monitors of the beds of the user's sites that have a patient now, or of one
        bed (``location=Location/{id}``)."""
        session = await user_session(request)
        q = request.query_params
        unknown = set(q) - {"location", "_count"}
        if unknown:
            raise FhirError(400, "not-supported", f"search parameters {sorted(unknown)}")
        if "location" in q:
            beds = [bed_of_location(q["location"].removeprefix("Location/"))]
        else:
            current = [e for e in await stays(session) if e.discharged_us is None]
            beds = sorted({e.bed for e in current if e.bed is not None}, key=str)
        seen = [b for b in beds if session.user.can_see(b.site)]
        shown = seen[: _count(q.get("_count"))]
        known: dict[BedKey, list[BedDevice]] = {b: [] for b in shown}
        if shown:
            for d in await named_devices(shown[0] if len(shown) == 1 else None):
                if d.bed in known:
                    known[d.bed].append(d)  # newest first, as the store gives them
        devices = [device_resource(b, known[b]) for b in shown]
        return bundle(request, devices, len(seen), None)

    # --- bulk export (FHIR Bulk Data: kick-off, status, files) ------------------------------

    jobs: dict[str, ExportJob] = {}

    def job_of(job_id: str, session: Session) -> ExportJob:
        job = jobs.get(job_id)
        if job is None or job.user != session.user.name:
            raise FhirError(404, "not-found", f"no export {job_id}")
        return job

    async def run_export(job: ExportJob, session: Session) -> None:
        try:
            everyone = await stays(session)
            by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in job.types}
            patients: dict[str, dict[str, Any]] = {}
            for e in everyone:
                patients[e.patient.mrn] = patient_resource(e)
            if "Patient" in by_type:
                by_type["Patient"] = list(patients.values())
            if "Encounter" in by_type:
                by_type["Encounter"] = [encounter_resource(e) for e in everyone]
            for e, loc, a, b in windows(everyone, session, job.since_us, job.until_us):
                subject = fhir_id(e.patient.mrn)
                if "Observation" in by_type:
                    samples = await store.numerics(a, b, bed=loc.bed)
                    by_type["Observation"] += observations(samples, subject, e.encounter_id, None)
                if "Flag" in by_type:
                    rows = await store.alarm_events(a, b, beds=[loc.bed])
                    by_type["Flag"] += flags_of(rows, f"Patient/{subject}", e.encounter_id)
            for kind, resources in by_type.items():
                job.files[kind] = "".join(
                    json.dumps(r, separators=(",", ":")) + "\n" for r in resources
                ).encode()
            job.state = "done"
        except StorageUnavailable as exc:
            job.state, job.error = "failed", f"the store cannot be reached: {exc}"
        except Exception as exc:  # the job fails, saying so; the dashboard goes on
            log.exception("FHIR export %s failed", job.job_id)
            job.state, job.error = "failed", f"internal error: {exc!r}"[:300]

    @app.get("/fhir/$export")
    async def export_kickoff(request: Request) -> JSONResponse:
        session = await user_session(request)
        if request.headers.get("prefer", "").strip() != "respond-async":
            raise FhirError(400, "required", "a bulk export needs the header Prefer: respond-async")
        q = request.query_params
        unknown = set(q) - {"_type", "_since", "_outputFormat"}
        if unknown:
            raise FhirError(400, "not-supported", f"parameters {sorted(unknown)}")
        output = q.get("_outputFormat", "application/fhir+ndjson")
        if output not in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
            raise FhirError(400, "not-supported", f"_outputFormat {output!r}")
        types = [t for raw in q.getlist("_type") for t in raw.split(",") if t] or list(EXPORT_TYPES)
        bad = [t for t in types if t not in EXPORT_TYPES]
        if bad:
            raise FhirError(400, "not-supported", f"_type {bad[0]!r}; one of {EXPORT_TYPES}")
        now = time.time_ns() // 1000
        since_us = now - EXPORT_DEFAULT_US
        if "_since" in q:
            since_us, _ = _date_bounds([f"ge{q['_since']}"], now)
        if now - since_us > EXPORT_MAX_US:
            raise FhirError(400, "too-costly", "an export spans at most 7 days: a later _since")
        for old_id in [j for j, job in jobs.items() if job.expired(now)]:
            del jobs[old_id]
        if sum(1 for job in jobs.values() if job.state == "running") >= EXPORT_RUNNING_MAX:
            raise FhirError(429, "throttled", "too many exports running: try again later")
        job = ExportJob(secrets.token_hex(8), session.user.name, types, since_us, now, now)
        jobs[job.job_id] = job
        job.task = asyncio.create_task(run_export(job, session), name=f"fhir-export-{job.job_id}")
        base = str(request.base_url).rstrip("/")
        response = JSONResponse({}, status_code=202, media_type=FHIR_JSON)
        response.headers["Content-Location"] = f"{base}/fhir/$export-status/{job.job_id}"
        return response

    @app.get("/fhir/$export-status/{job_id}")
    async def export_status(job_id: str, request: Request) -> Response:
        session = await user_session(request)
        job = job_of(job_id, session)
        if job.state == "running":
            return Response(status_code=202, headers={"X-Progress": "running"})
        if job.state == "failed":
            raise FhirError(500, "exception", job.error)
        base = str(request.base_url).rstrip("/")
        manifest = {
            "transactionTime": _iso(job.until_us),
            "request": f"{base}/fhir/$export",
            "requiresAccessToken": True,
            "output": [
                {
                    "type": kind,
                    "url": f"{base}/fhir/$export-file/{job.job_id}/{kind}.ndjson",
                    "count": data.count(b"\n"),
                }
                for kind, data in job.files.items()
            ],
            "error": [],
        }
        return JSONResponse(manifest, media_type="application/json")

    @app.delete("/fhir/$export-status/{job_id}")
    async def export_cancel(job_id: str, request: Request) -> Response:
        session = await user_session(request)
        # a browser's cookie needs its CSRF token; a bearer token is not sent by itself
        if bearer(request) is None and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
            raise FhirError(403, "forbidden", "missing or wrong CSRF token")
        job = job_of(job_id, session)
        if job.task is not None:
            job.task.cancel()
        del jobs[job_id]
        return Response(status_code=202)

    @app.get("/fhir/$export-file/{job_id}/{name}")
    async def export_file(job_id: str, name: str, request: Request) -> Response:
        session = await user_session(request)
        job = job_of(job_id, session)
        data = job.files.get(name.removesuffix(".ndjson"))
        if data is None or job.state != "done":
            raise FhirError(404, "not-found", f"no file {name} in export {job_id}")
        return Response(data, media_type="application/fhir+ndjson")
