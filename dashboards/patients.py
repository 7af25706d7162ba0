"""The patients behind the beds, as the dashboard shows them: a cache of the open stays (read
from the store, so every dashboard process sees every change within REFRESH_S), the census's
short view of a bed's patient, and the request bodies of admit, transfer and the rest."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel

from eicu.errors import StorageUnavailable
from eicu.patients import Encounter, encounter_view
from eicu.store.base import Store

log = logging.getLogger(__name__)

REFRESH_S = 2.0


class PatientIn(BaseModel):
    mrn: str
    name: str
    sex: str | None = None
    birth_date: str | None = None
    allergies: str | None = None


class Admission(BaseModel):
    patient: PatientIn
    diagnosis: str | None = None
    attending: str | None = None
    code_status: str | None = None
    isolation: str | None = None


class Transfer(BaseModel):
    bed: str  # SITE/BED


class EncounterChange(BaseModel):
    diagnosis: str | None = None
    attending: str | None = None
    code_status: str | None = None
    isolation: str | None = None
    allergies: str | None = None


class NoteIn(BaseModel):
    kind: str
    text: str | None = None
    handoff: dict[str, str] | None = None


def census_view(e: Encounter, now_us: int) -> dict[str, Any]:
    """What a census row shows of its bed's patient (the bed view has the rest)."""
    p = e.patient
    return {
        "encounter_id": e.encounter_id, "name": p.name, "mrn": p.mrn, "sex": p.sex,
        "age": p.age_years(now_us), "code_status": e.code_status, "isolation": e.isolation,
        "allergies": bool(p.allergies and p.allergies.upper() != "NKDA"),
    }  # fmt: skip


class PatientCache:
    """The open stays by bed, read from the store at most every REFRESH_S (and at once after a
    change made here). While the store cannot be read the last reading stays, and
    ``stale_since`` says since when (wall clock, seconds)."""

    def __init__(self, store: Store, refresh_s: float = REFRESH_S) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._read_at = -1e9
        self.by_bed: dict[str, Encounter] = {}
        self.stale_since: float | None = None

    def changed(self) -> None:
        self._read_at = -1e9

    async def refresh_if_due(self) -> None:
        if time.monotonic() - self._read_at < self._refresh_s:
            return
        self._read_at = time.monotonic()
        try:
            current = await self._store.encounters()
        except Exception as exc:  # the census goes on without fresh patients, never stops
            if self.stale_since is None:
                self.stale_since = time.time()
                if isinstance(exc, StorageUnavailable):
                    log.warning("patients not read (%s): the last reading is shown", exc)
                else:
                    log.exception("patients not read: the last reading is shown")
            return
        self.stale_since = None
        self.by_bed = {str(e.bed): e for e in current if e.bed is not None}

    def summary(self, bed: str, now_us: int) -> dict[str, Any] | None:
        e = self.by_bed.get(bed)
        return census_view(e, now_us) if e is not None else None

    def view(self, bed: str, now_us: int) -> dict[str, Any] | None:
        e = self.by_bed.get(bed)
        return encounter_view(e, now_us) if e is not None else None
