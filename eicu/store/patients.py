"""The patient tables (eicu.patients), one logic for PostgreSQL and SQLite.

Each operation is a generator of SQL statements (``?`` placeholders, times as integer
microseconds in both databases) that receives each statement's rows: the PostgreSQL store drives
it on one async connection inside a transaction, the SQLite store on its connection inside
``BEGIN IMMEDIATE``. The databases enforce what must never happen twice, whoever races: one open
stay per patient (``encounters_open``), one patient per bed (``locations_open``); a race that
loses gets a :class:`~eicu.patients.PatientError` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from typing import Any, Final

from eicu.models import BedKey
from eicu.patients import Encounter, Location, LogEntry, Note, Patient, PatientError

Steps = Generator[tuple[str, tuple[Any, ...]], list[tuple[Any, ...]], Any]

# The tables, in words both databases take; PostgreSQL's migration 5 and SQLite's schema.
ID = "{id}"  # bigserial PRIMARY KEY (PostgreSQL) / INTEGER PRIMARY KEY AUTOINCREMENT (SQLite)
TABLES: Final = (
    f"""CREATE TABLE IF NOT EXISTS patients (patient_id {ID}, mrn text NOT NULL UNIQUE,
        name text NOT NULL, sex text NOT NULL, birth_date text, allergies text NOT NULL,
        updated bigint NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS encounters (encounter_id {ID},
        patient_id bigint NOT NULL REFERENCES patients (patient_id),
        admitted bigint NOT NULL, discharged bigint, diagnosis text NOT NULL,
        attending text NOT NULL, code_status text NOT NULL, isolation text NOT NULL)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS encounters_open ON encounters (patient_id)
        WHERE discharged IS NULL""",
    """CREATE TABLE IF NOT EXISTS encounter_locations (
        encounter_id bigint NOT NULL REFERENCES encounters (encounter_id),
        site text NOT NULL, bed text NOT NULL, since bigint NOT NULL, until bigint)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS locations_open ON encounter_locations (site, bed)
        WHERE until IS NULL""",
    """CREATE INDEX IF NOT EXISTS locations_encounter
        ON encounter_locations (encounter_id, since)""",
    f"""CREATE TABLE IF NOT EXISTS encounter_notes (note_id {ID},
        encounter_id bigint NOT NULL REFERENCES encounters (encounter_id),
        time bigint NOT NULL, author text NOT NULL, kind text NOT NULL, body text NOT NULL,
        handoff text NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS notes_encounter ON encounter_notes (encounter_id, time)",
    """CREATE TABLE IF NOT EXISTS encounter_log (
        encounter_id bigint NOT NULL REFERENCES encounters (encounter_id),
        time bigint NOT NULL, actor text NOT NULL, action text NOT NULL, detail text NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS encounter_log_encounter ON encounter_log (encounter_id, time)",
)


def tables(id_type: str) -> tuple[str, ...]:
    return tuple(t.replace(ID, id_type) for t in TABLES)


def violation(what: str) -> PatientError:
    """What a unique constraint that stopped a change means to the user (``what``: the
    constraint's name, or SQLite's message naming its columns)."""
    if "encounters_open" in what or "encounters.patient_id" in what:
        return PatientError("mrn", "this patient is admitted already: transfer or discharge")
    if "locations_open" in what or "encounter_locations.site" in what:
        return PatientError("bed", "this bed has a patient: discharge or transfer them first")
    return PatientError("encounter", f"the change conflicts with another: {what[:120]}")


_ENCOUNTER = """SELECT e.encounter_id, e.admitted, e.discharged, e.diagnosis, e.attending,
        e.code_status, e.isolation, p.mrn, p.name, p.sex, p.birth_date, p.allergies
    FROM encounters e JOIN patients p USING (patient_id)"""


def _log(eid: int, at_us: int, actor: str, action: str, detail: str) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO encounter_log (encounter_id, time, actor, action, detail) VALUES (?,?,?,?,?)",
        (eid, at_us, actor, action, detail[:500]),
    )


def read(where: str = "", params: tuple[Any, ...] = ()) -> Steps:
    """The encounters ``where`` chooses (SQL on ``e``/``p``), their locations oldest first."""
    rows = yield (f"{_ENCOUNTER} {where} ORDER BY e.encounter_id", params)
    if not rows:
        return []
    ids = [r[0] for r in rows]
    marks = ",".join("?" * len(ids))
    locs = yield (
        f"""SELECT encounter_id, site, bed, since, until FROM encounter_locations
            WHERE encounter_id IN ({marks}) ORDER BY encounter_id, since""",
        tuple(ids),
    )
    by: dict[int, list[Location]] = {}
    for eid, site, bed, since, until in locs:
        by.setdefault(int(eid), []).append(Location(BedKey(site, bed), int(since), until))
    out = []
    for eid, adm, dis, diag, att, code, iso, mrn, name, sex, born, allergies in rows:
        patient = Patient(mrn, name, sex, born, allergies)
        out.append(
            Encounter(int(eid), patient, int(adm), dis, diag, att, code, iso,
                      tuple(by.get(int(eid), ())))
        )  # fmt: skip
    return out


def _one(eid: int) -> Steps:
    found = yield from read("WHERE e.encounter_id = ?", (eid,))
    if not found:
        raise PatientError("encounter", f"no encounter {eid}")
    return found[0]


def _open(eid: int) -> Steps:
    e = yield from _one(eid)
    if e.discharged_us is not None:
        raise PatientError("encounter", f"encounter {eid} ended (discharged)")
    return e


def _not_before(e: Encounter, at_us: int) -> None:
    """A move or an end of a stay is not dated before its last one (an ADT message that comes
    out of order): its beds stay in time order."""
    last = max([e.admitted_us, e.discharged_us or 0, *(loc.since_us for loc in e.locations)])
    if at_us < last:
        raise PatientError(
            "encounter", f"encounter {e.encounter_id} changed later than this change's time"
        )


def _bed_free(bed: BedKey) -> Steps:
    rows = yield (
        "SELECT encounter_id FROM encounter_locations WHERE site = ? AND bed = ? AND until IS NULL",
        (bed.site, bed.bed),
    )
    if rows:
        raise PatientError("bed", f"{bed} has a patient: discharge or transfer them first")


def admit(
    patient: Patient, bed: BedKey, at_us: int, actor: str, fields: Mapping[str, str]
) -> Steps:
    """A patient into ``bed``: their record made or brought up to date by MRN, a new stay."""
    yield from _bed_free(bed)
    rows = yield (
        """INSERT INTO patients (mrn, name, sex, birth_date, allergies, updated)
           VALUES (?,?,?,?,?,?)
           ON CONFLICT (mrn) DO UPDATE SET name = excluded.name, sex = excluded.sex,
               birth_date = excluded.birth_date, allergies = excluded.allergies,
               updated = excluded.updated
           RETURNING patient_id""",
        (patient.mrn, patient.name, patient.sex, patient.birth_date, patient.allergies, at_us),
    )
    pid = int(rows[0][0])
    open_stay = yield (
        "SELECT encounter_id FROM encounters WHERE patient_id = ? AND discharged IS NULL",
        (pid,),
    )
    if open_stay:
        raise PatientError(
            "mrn", f"{patient.mrn} is admitted already (encounter {open_stay[0][0]})"
        )
    rows = yield (
        """INSERT INTO encounters (patient_id, admitted, discharged, diagnosis, attending,
               code_status, isolation) VALUES (?,?,NULL,?,?,?,?) RETURNING encounter_id""",
        (pid, at_us, fields.get("diagnosis", ""), fields.get("attending", ""),
         fields.get("code_status", ""), fields.get("isolation", "")),
    )  # fmt: skip
    eid = int(rows[0][0])
    yield _open_location(eid, bed, at_us)
    yield _log(eid, at_us, actor, "admit", f"{patient.mrn} into {bed}")
    return (yield from _one(eid))


def _open_location(eid: int, bed: BedKey, at_us: int) -> tuple[str, tuple[Any, ...]]:
    """The stay's bed is ``bed`` from ``at_us``."""
    return (
        "INSERT INTO encounter_locations (encounter_id, site, bed, since, until) "
        "VALUES (?,?,?,?,NULL)",
        (eid, bed.site, bed.bed, at_us),
    )


def _close_location(eid: int, at_us: int) -> tuple[str, tuple[Any, ...]]:
    """The stay's bed now stops being its bed at ``at_us``."""
    return (
        "UPDATE encounter_locations SET until = ? WHERE encounter_id = ? AND until IS NULL",
        (at_us, eid),
    )


def transfer(eid: int, bed: BedKey, at_us: int, actor: str) -> Steps:
    e = yield from _open(eid)
    _not_before(e, at_us)
    if e.bed == bed:
        raise PatientError("bed", f"the patient is in {bed} already")
    yield from _bed_free(bed)
    yield _close_location(eid, at_us)
    yield _open_location(eid, bed, at_us)
    yield _log(eid, at_us, actor, "transfer", f"{e.bed} -> {bed}")
    return (yield from _one(eid))


def discharge(eid: int, at_us: int, actor: str) -> Steps:
    e = yield from _open(eid)
    _not_before(e, at_us)
    yield _close_location(eid, at_us)
    yield ("UPDATE encounters SET discharged = ? WHERE encounter_id = ?", (at_us, eid))
    yield _log(eid, at_us, actor, "discharge", f"from {e.bed}")
    return (yield from _one(eid))


def cancel(eid: int, what: str, at_us: int, actor: str) -> Steps:
    """Undo an admission, a transfer or a discharge entered in error (HL7 A11, A12, A13). Nothing
    is deleted: a cancelled admission ends the stay, a cancelled transfer moves it back to the
    bed before (if that bed is free), a cancelled discharge opens the stay again in its last
    bed (if free); each is logged as such."""
    e = yield from _one(eid)
    _not_before(e, at_us)
    if what == "discharge":
        if e.discharged_us is None:
            raise PatientError("encounter", f"encounter {eid} is not discharged")
        last = e.locations[-1].bed
        yield from _bed_free(last)
        yield ("UPDATE encounters SET discharged = NULL WHERE encounter_id = ?", (eid,))
        yield _open_location(eid, last, at_us)
        yield _log(eid, at_us, actor, "cancel_discharge", f"back in {last}")
    elif e.discharged_us is not None:
        raise PatientError("encounter", f"encounter {eid} ended (discharged)")
    elif what == "transfer":
        if len(e.locations) < 2:
            raise PatientError("encounter", f"encounter {eid} has no transfer to cancel")
        before = e.locations[-2].bed
        yield from _bed_free(before)
        yield _close_location(eid, at_us)
        yield _open_location(eid, before, at_us)
        yield _log(eid, at_us, actor, "cancel_transfer", f"{e.bed} -> {before}")
    elif what == "admit":
        yield _close_location(eid, at_us)
        yield ("UPDATE encounters SET discharged = ? WHERE encounter_id = ?", (at_us, eid))
        yield _log(eid, at_us, actor, "cancel_admit", f"from {e.bed}")
    else:
        raise PatientError("encounter", f"nothing to cancel of the kind {what!r}")
    return (yield from _one(eid))


def merge(prior_mrn: str, patient: Patient, at_us: int, actor: str) -> Steps:
    """HL7 ``A40``: the record of ``prior_mrn`` (a duplicate, say a patient registered under a
    temporary identifier on arrival) merged into ``patient``'s, whose record is made from it
    when there is none yet: its stays, with their beds, notes and log, become theirs, each
    stay's log says so, and the duplicate record goes (its name and MRN stay in that log).
    Refused when both have an open stay (one patient is not in two beds: end one first).
    Returns the surviving patient's stays."""
    if prior_mrn == patient.mrn:
        raise PatientError("prior_mrn", "the prior identifier is the patient's own")
    prior = yield ("SELECT patient_id, name FROM patients WHERE mrn = ?", (prior_mrn,))
    if not prior:
        raise PatientError("prior_mrn", f"no patient {prior_mrn} to merge")
    prior_id, prior_name = int(prior[0][0]), prior[0][1]
    stays = yield ("SELECT encounter_id FROM encounters WHERE patient_id = ?", (prior_id,))
    survivor = yield ("SELECT patient_id FROM patients WHERE mrn = ?", (patient.mrn,))
    identity = (patient.name, patient.sex, patient.birth_date, patient.allergies, at_us)
    if not survivor:
        yield (
            """UPDATE patients SET mrn = ?, name = ?, sex = ?, birth_date = ?, allergies = ?,
               updated = ? WHERE patient_id = ?""",
            (patient.mrn, *identity, prior_id),
        )
    else:
        survivor_id = int(survivor[0][0])
        open_stays = yield (
            "SELECT encounter_id FROM encounters WHERE patient_id IN (?, ?) AND discharged IS NULL",
            (prior_id, survivor_id),
        )
        if len(open_stays) > 1:
            raise PatientError(
                "prior_mrn",
                f"{prior_mrn} and {patient.mrn} both have an open stay: discharge one first",
            )
        yield ("UPDATE encounters SET patient_id = ? WHERE patient_id = ?", (survivor_id, prior_id))
        yield (
            """UPDATE patients SET name = ?, sex = ?, birth_date = ?, allergies = ?, updated = ?
               WHERE patient_id = ?""",
            (*identity, survivor_id),
        )
        yield ("DELETE FROM patients WHERE patient_id = ?", (prior_id,))
    for (eid,) in stays:
        detail = f"{prior_mrn} ({prior_name}) merged into {patient.mrn} ({patient.name})"
        yield _log(int(eid), at_us, actor, "merge", detail)
    return (yield from read("WHERE p.mrn = ?", (patient.mrn,)))


def update(
    eid: int, fields: Mapping[str, str], allergies: str | None, at_us: int, actor: str
) -> Steps:
    """Change an open stay's fields (diagnosis, attending, code status, isolation) and the
    patient's allergies; each change is logged with its old and new value."""
    e = yield from _open(eid)
    changed = []
    for key, value in fields.items():
        old = getattr(e, key)
        if value != old:
            yield (f"UPDATE encounters SET {key} = ? WHERE encounter_id = ?", (value, eid))
            changed.append(f"{key}: {old!r} -> {value!r}")
    if allergies is not None and allergies != e.patient.allergies:
        yield (
            "UPDATE patients SET allergies = ?, updated = ? WHERE mrn = ?",
            (allergies, at_us, e.patient.mrn),
        )
        changed.append(f"allergies: {e.patient.allergies!r} -> {allergies!r}")
    if changed:
        yield _log(eid, at_us, actor, "update", "; ".join(changed))
    return (yield from _one(eid))


def add_note(
    eid: int, kind: str, text: str, handoff: Mapping[str, str], at_us: int, author: str
) -> Steps:
    yield from _open(eid)
    rows = yield (
        """INSERT INTO encounter_notes (encounter_id, time, author, kind, body, handoff)
           VALUES (?,?,?,?,?,?) RETURNING note_id""",
        (eid, at_us, author, kind, text, json.dumps(dict(handoff), sort_keys=True)),
    )
    yield _log(eid, at_us, author, kind, (text or "; ".join(handoff))[:80])
    return Note(int(rows[0][0]), eid, at_us, author, kind, text, dict(handoff))


def notes(eid: int) -> Steps:
    rows = yield (
        """SELECT note_id, encounter_id, time, author, kind, body, handoff FROM encounter_notes
           WHERE encounter_id = ? ORDER BY time, note_id""",
        (eid,),
    )
    return [Note(int(n), int(e), int(t), a, k, b, json.loads(h)) for n, e, t, a, k, b, h in rows]


def log(eid: int) -> Steps:
    rows = yield (
        """SELECT encounter_id, time, actor, action, detail FROM encounter_log
           WHERE encounter_id = ? ORDER BY time""",
        (eid,),
    )
    return [LogEntry(int(e), int(t), a, act, d) for e, t, a, act, d in rows]


class PatientMethods:
    """The :class:`~eicu.store.base.PatientRepository` methods of a store, over its
    ``_steps(generator)``, which runs one operation's statements in one transaction."""

    async def _steps(self, steps: Steps) -> Any:
        raise NotImplementedError

    async def admit(
        self, patient: Patient, bed: BedKey, at_us: int, actor: str, fields: Mapping[str, str]
    ) -> Encounter:
        e: Encounter = await self._steps(admit(patient, bed, at_us, actor, fields))
        return e

    async def transfer(self, encounter_id: int, bed: BedKey, at_us: int, actor: str) -> Encounter:
        e: Encounter = await self._steps(transfer(encounter_id, bed, at_us, actor))
        return e

    async def discharge(self, encounter_id: int, at_us: int, actor: str) -> Encounter:
        e: Encounter = await self._steps(discharge(encounter_id, at_us, actor))
        return e

    async def update_encounter(
        self,
        encounter_id: int,
        fields: Mapping[str, str],
        allergies: str | None,
        at_us: int,
        actor: str,
    ) -> Encounter:
        e: Encounter = await self._steps(update(encounter_id, fields, allergies, at_us, actor))
        return e

    async def cancel(self, encounter_id: int, what: str, at_us: int, actor: str) -> Encounter:
        e: Encounter = await self._steps(cancel(encounter_id, what, at_us, actor))
        return e

    async def merge(
        self, prior_mrn: str, patient: Patient, at_us: int, actor: str
    ) -> list[Encounter]:
        found: list[Encounter] = await self._steps(merge(prior_mrn, patient, at_us, actor))
        return found

    async def encounters(
        self, *, current: bool = True, encounter_id: int | None = None, mrn: str | None = None
    ) -> list[Encounter]:
        if encounter_id is not None:
            found: list[Encounter] = await self._steps(
                read("WHERE e.encounter_id = ?", (encounter_id,))
            )
        elif mrn is not None:
            found = await self._steps(read("WHERE p.mrn = ?", (mrn,)))
        else:
            found = await self._steps(read("WHERE e.discharged IS NULL" if current else ""))
        return found

    async def add_note(
        self,
        encounter_id: int,
        kind: str,
        text: str,
        handoff: Mapping[str, str],
        at_us: int,
        author: str,
    ) -> Note:
        n: Note = await self._steps(add_note(encounter_id, kind, text, handoff, at_us, author))
        return n

    async def notes(self, encounter_id: int) -> list[Note]:
        found: list[Note] = await self._steps(notes(encounter_id))
        return found

    async def encounter_log(self, encounter_id: int) -> list[LogEntry]:
        found: list[LogEntry] = await self._steps(log(encounter_id))
        return found
