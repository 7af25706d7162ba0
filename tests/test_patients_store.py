"""Patients and their stays in the store, PostgreSQL and SQLite alike: admit, transfer,
discharge, notes and a handoff, every change logged; a bed holds one patient and a patient one
open stay, whoever races."""

from __future__ import annotations

import asyncio

import pytest

from eicu.models import BedKey
from eicu.patients import (
    PatientError,
    checked_encounter_fields,
    checked_note,
    checked_patient,
)
from eicu.store import Store

T = 1_800_000_000_000_000
BED1, BED2, BED3 = BedKey("icu", "bed1"), BedKey("icu", "bed2"), BedKey("hdu", "bed7")
ADA = {"mrn": "MRN-0042", "name": "Ada Li", "sex": "F", "birth_date": "1961-03-14",
       "allergies": "penicillin (rash)"}  # fmt: skip


async def test_a_stay_from_admission_to_discharge_is_kept_and_logged(
    store_of_each_kind: Store,
) -> None:
    store = store_of_each_kind
    patient = checked_patient(ADA)
    fields = checked_encounter_fields(
        {"diagnosis": "septic shock", "attending": "Dr Wang", "code_status": "DNR"}
    )
    stay = await store.admit(patient, BED1, T, "nurse-li", fields)
    assert stay.bed == BED1 and stay.patient == patient and stay.code_status == "DNR"
    assert stay.patient.age_years(T) == 65
    (current,) = await store.encounters()
    assert current == stay
    # a bed holds one patient; a patient has one open stay
    bob = checked_patient({"mrn": "MRN-7", "name": "Bob Ma"})
    with pytest.raises(PatientError) as occupied:
        await store.admit(bob, BED1, T + 1, "nurse-li", {})
    assert occupied.value.key == "bed"
    with pytest.raises(PatientError) as twice:
        await store.admit(patient, BED2, T + 1, "nurse-li", {})
    assert twice.value.key == "mrn"
    # a transfer keeps the stay: the history is the beds, each over its time
    moved = await store.transfer(stay.encounter_id, BED3, T + 60_000_000, "dr-wang")
    assert moved.bed == BED3 and moved.encounter_id == stay.encounter_id
    assert [(loc.bed, loc.since_us, loc.until_us) for loc in moved.locations] == [
        (BED1, T, T + 60_000_000), (BED3, T + 60_000_000, None)
    ]  # fmt: skip
    other = await store.admit(bob, BED1, T + 61_000_000, "nurse-li", {})  # bed1 is free now
    changed = await store.update_encounter(
        stay.encounter_id, {"code_status": "full"}, "NKDA", T + 70_000_000, "dr-wang"
    )
    assert changed.code_status == "full" and changed.patient.allergies == "NKDA"
    kind, text, handoff = checked_note(
        "handoff", "", {"illness": "watcher", "summary": "day 3 of septic shock, weaning"}
    )
    note = await store.add_note(stay.encounter_id, kind, text, handoff, T + 80_000_000, "dr-wang")
    await store.add_note(stay.encounter_id, "note", "lactate 1.8", {}, T + 90_000_000, "nurse-li")
    notes = await store.notes(stay.encounter_id)
    assert [n.kind for n in notes] == ["handoff", "note"] and notes[0] == note
    assert notes[0].handoff == {"illness": "watcher", "summary": "day 3 of septic shock, weaning"}
    done = await store.discharge(stay.encounter_id, T + 100_000_000, "dr-wang")
    assert done.discharged_us == T + 100_000_000 and done.bed is None
    with pytest.raises(PatientError) as ended:
        await store.transfer(stay.encounter_id, BED2, T + 110_000_000, "dr-wang")
    assert ended.value.key == "encounter"
    assert [e.encounter_id for e in await store.encounters()] == [other.encounter_id]
    # every change, who and when
    log = await store.encounter_log(stay.encounter_id)
    assert [(e.action, e.actor) for e in log] == [
        ("admit", "nurse-li"), ("transfer", "dr-wang"), ("update", "dr-wang"),
        ("handoff", "dr-wang"), ("note", "nurse-li"), ("discharge", "dr-wang"),
    ]  # fmt: skip
    assert "'DNR' -> 'full'" in log[2].detail and "NKDA" in log[2].detail
    # readmitted later: a new stay, the record found by MRN with both
    again = await store.admit(patient, BED2, T + 200_000_000, "nurse-li", {})
    assert again.encounter_id != stay.encounter_id
    assert len(await store.encounters(mrn=patient.mrn)) == 2


async def test_two_admissions_racing_for_one_bed_admit_one(store_of_each_kind: Store) -> None:
    store = store_of_each_kind
    patients = [checked_patient({"mrn": f"R{i}", "name": f"Racer {i}"}) for i in range(6)]
    results = await asyncio.gather(
        *(store.admit(p, BED2, T, "nurse", {}) for p in patients), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, PatientError)]
    assert len(admitted) == 1 and len(refused) == 5
    assert all(r.key == "bed" for r in refused)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"name": "x"}, "mrn"),
        ({"mrn": "a b", "name": "x"}, "mrn"),
        ({"mrn": "M1"}, "name"),
        ({"mrn": "M1", "name": "x", "sex": "female"}, "sex"),
        ({"mrn": "M1", "name": "x", "birth_date": "14/03/1961"}, "birth_date"),
        ({"mrn": "M1", "name": "x", "birth_date": "2999-01-01"}, "birth_date"),
        ({"mrn": "M1", "name": "x\x07"}, "name"),
    ],
)
def test_a_patient_record_names_the_field_at_fault(doc: dict[str, str], key: str) -> None:
    with pytest.raises(PatientError) as caught:
        checked_patient(doc)
    assert caught.value.key == key


def test_code_status_isolation_and_notes_are_checked() -> None:
    with pytest.raises(PatientError, match="code_status"):
        checked_encounter_fields({"code_status": "no CPR please"})
    with pytest.raises(PatientError, match="isolation"):
        checked_encounter_fields({"isolation": "quarantine"})
    assert checked_encounter_fields({"code_status": "", "isolation": "contact"}) == {
        "code_status": "", "isolation": "contact"
    }  # fmt: skip
    with pytest.raises(PatientError, match="handoff field"):
        checked_note("handoff", "", {"gossip": "x"})
    with pytest.raises(PatientError, match="at least one field"):
        checked_note("handoff", "", {"illness": "  "})
    with pytest.raises(PatientError, match="a note has text"):
        checked_note("note", " ", {})


async def test_a_change_dated_before_the_stays_last_one_is_refused(
    store_of_each_kind: Store,
) -> None:
    """An ADT message that comes out of order cannot put a stay's beds out of time order."""
    store = store_of_each_kind
    stay = await store.admit(checked_patient(ADA), BED1, T, "hl7:HIS", {})
    moved = await store.transfer(stay.encounter_id, BED2, T + 60_000_000, "hl7:HIS")
    for late in (
        store.transfer(stay.encounter_id, BED3, T + 30_000_000, "hl7:HIS"),
        store.discharge(stay.encounter_id, T + 30_000_000, "hl7:HIS"),
        store.cancel(stay.encounter_id, "transfer", T + 30_000_000, "hl7:HIS"),
    ):
        with pytest.raises(PatientError, match="later than this change"):
            await late
    assert (await store.encounters(encounter_id=stay.encounter_id))[0] == moved
