"""Patients and their ICU stays (encounters): who is in a bed, and what follows them when they
move.

A :class:`Patient` is identified by the hospital's medical record number (MRN). An
:class:`Encounter` is one ICU stay: from admission to discharge, in one bed after another
(:class:`Location`: a transfer closes one and opens the next), with what the team must see at a
glance (diagnosis, attending, code status, isolation). The bed's data stays keyed by bed and
time; a patient's history is the data of each of their locations over its interval, so a transfer
loses nothing. Notes and a structured handoff belong to the encounter; every change is logged
(who, when, what). The fields follow what HL7 v2 ADT messages carry (PID: MRN, name, birth date,
sex; PV1: location, attending, admit time; AL1: allergies; DG1: diagnosis), so an ADT feed fills
the same model.

Validation is here (pure); the store keeps them (``eicu.store``), the dashboard shows and
changes them. Times are integers in microseconds since the epoch.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from eicu.models import BedKey

MRN_RE: Final = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,39}\Z")
SEXES: Final = ("F", "M", "O", "U")  # HL7 table 0001: female, male, other, unknown
# Code status as the team documents it; "" is not documented yet, and is shown as such.
CODE_STATUSES: Final = ("full", "DNR", "DNI", "DNR/DNI", "comfort", "")
ISOLATIONS: Final = ("", "contact", "droplet", "airborne", "protective")
NOTE_KINDS: Final = ("note", "handoff")
HANDOFF_FIELDS: Final = ("illness", "summary", "actions", "situation", "synthesis")  # I-PASS
MAX_TEXT: Final = 4000
MAX_FIELD: Final = 200


class PatientError(ValueError):
    """A patient or encounter change that cannot be made; ``key`` names the field at fault
    (``bed``: occupied; ``mrn``: already admitted; ``encounter``: no such open stay)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Patient:
    mrn: str
    name: str
    sex: str = "U"
    birth_date: str | None = None  # ISO date
    allergies: str = ""  # as documented; "" is none documented, "NKDA" none known

    def age_years(self, at_us: int) -> int | None:
        if not self.birth_date:
            return None
        born = dt.date.fromisoformat(self.birth_date)
        at = dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC).date()
        return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


@dataclass(frozen=True)
class Location:
    bed: BedKey
    since_us: int
    until_us: int | None = None  # None: the patient is there now


@dataclass(frozen=True)
class Encounter:
    encounter_id: int
    patient: Patient
    admitted_us: int
    discharged_us: int | None = None
    diagnosis: str = ""
    attending: str = ""
    code_status: str = ""
    isolation: str = ""
    locations: tuple[Location, ...] = ()  # oldest first

    @property
    def bed(self) -> BedKey | None:
        """The bed now (None once discharged)."""
        last = self.locations[-1] if self.locations else None
        return last.bed if last is not None and last.until_us is None else None


@dataclass(frozen=True)
class Note:
    note_id: int
    encounter_id: int
    time_us: int
    author: str
    kind: str  # note | handoff
    text: str = ""
    handoff: Mapping[str, str] = field(default_factory=dict)  # the I-PASS fields of a handoff


@dataclass(frozen=True)
class LogEntry:
    encounter_id: int
    time_us: int
    actor: str
    action: str  # admit, transfer, discharge, update, note, handoff
    detail: str = ""


ENCOUNTER_FIELDS: Final = ("diagnosis", "attending", "code_status", "isolation")


def _text(key: str, value: object, limit: int = MAX_FIELD) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PatientError(key, f"{key} must be text")
    value = value.strip()
    if len(value) > limit:
        raise PatientError(key, f"{key} is longer than {limit} characters")
    if any(ord(c) < 0x20 and c not in "\n\t" for c in value):
        raise PatientError(key, f"{key} has control characters")
    return value


def checked_patient(doc: Mapping[str, Any]) -> Patient:
    """A patient from a request's fields; PatientError naming the field at fault."""
    mrn = doc.get("mrn")
    if not isinstance(mrn, str) or not MRN_RE.fullmatch(mrn.strip()):
        raise PatientError("mrn", "mrn must be 1-40 letters, digits, '.', '_' or '-'")
    name = _text("name", doc.get("name"))
    if not name:
        raise PatientError("name", "a patient has a name (or a documented alias)")
    sex = doc.get("sex") or "U"
    if sex not in SEXES:
        raise PatientError("sex", f"sex is one of {', '.join(SEXES)}")
    birth = doc.get("birth_date") or None
    if birth is not None:
        try:
            born = dt.date.fromisoformat(str(birth))
        except ValueError as exc:
            raise PatientError("birth_date", "birth_date is a date, YYYY-MM-DD") from exc
        if not dt.date(1890, 1, 1) <= born <= dt.datetime.now(dt.UTC).date():
            raise PatientError("birth_date", f"birth_date {born} is not a possible birth date")
        birth = born.isoformat()
    allergies = _text("allergies", doc.get("allergies"), MAX_TEXT)
    return Patient(mrn.strip(), name, sex, birth, allergies)


def checked_encounter_fields(doc: Mapping[str, Any]) -> dict[str, str]:
    """The encounter fields present in ``doc``, checked; PatientError naming the one at fault."""
    out: dict[str, str] = {}
    for key in ENCOUNTER_FIELDS:
        if key not in doc:
            continue
        value = _text(key, doc[key])
        if key == "code_status" and value not in CODE_STATUSES:
            raise PatientError(key, f"code_status is one of {', '.join(CODE_STATUSES[:-1])}")
        if key == "isolation" and value not in ISOLATIONS:
            raise PatientError(key, f"isolation is one of {', '.join(ISOLATIONS[1:])} or none")
        out[key] = value
    return out


def checked_note(kind: object, text: object, handoff: object) -> tuple[str, str, dict[str, str]]:
    """(kind, text, handoff fields) of a note; a handoff has at least one I-PASS field."""
    if kind not in NOTE_KINDS:
        raise PatientError("kind", f"kind is one of {', '.join(NOTE_KINDS)}")
    body = _text("text", text, MAX_TEXT)
    fields: dict[str, str] = {}
    if kind == "handoff":
        if not isinstance(handoff, Mapping):
            raise PatientError("handoff", f"a handoff has fields {', '.join(HANDOFF_FIELDS)}")
        for key, value in handoff.items():
            if key not in HANDOFF_FIELDS:
                raise PatientError("handoff", f"{key!r} is not a handoff field")
            if checked := _text(key, value, MAX_TEXT):
                fields[str(key)] = checked
        if not fields:
            raise PatientError("handoff", "a handoff says something in at least one field")
    elif not body:
        raise PatientError("text", "a note has text")
    return str(kind), body, fields


def patient_view(p: Patient, now_us: int) -> dict[str, Any]:
    return {
        "mrn": p.mrn, "name": p.name, "sex": p.sex, "birth_date": p.birth_date,
        "age": p.age_years(now_us), "allergies": p.allergies,
    }  # fmt: skip


def encounter_view(e: Encounter, now_us: int) -> dict[str, Any]:
    return {
        "encounter_id": e.encounter_id,
        "patient": patient_view(e.patient, now_us),
        "admitted_us": e.admitted_us,
        "discharged_us": e.discharged_us,
        "bed": str(e.bed) if e.bed is not None else None,
        "diagnosis": e.diagnosis,
        "attending": e.attending,
        "code_status": e.code_status,
        "isolation": e.isolation,
        "locations": [
            {"bed": str(loc.bed), "since_us": loc.since_us, "until_us": loc.until_us}
            for loc in e.locations
        ],
    }


def note_view(n: Note) -> dict[str, Any]:
    return {
        "note_id": n.note_id, "encounter_id": n.encounter_id, "time_us": n.time_us,
        "author": n.author, "kind": n.kind, "text": n.text, "handoff": dict(n.handoff),
    }  # fmt: skip
