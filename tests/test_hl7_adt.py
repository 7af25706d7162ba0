"""HL7 v2 ADT in: a hospital's admission system admits, moves, updates and discharges the site's
patients over MLLP (python-hl7's client), into the patient tables of a real store; every answer
validated by hl7apy at its strictest level; a refusal names the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eicu import hl7
from eicu.config import MqttSettings
from eicu.devservices import Mosquitto
from eicu.models import BedKey
from eicu.store import Store
from ingest.hl7 import Listener
from tests.hl7_peer import send, strict

SITE = "ward3"


def adt(
    event: str, control: str, bed: str = "bed07", *extra: str, when: str = "20261203101500"
) -> str:
    """An ADT message of ``event`` for patient MRN 4711 (Ada Li), to ``bed`` of ward 3."""
    segments = [
        f"MSH|^~\\&|HIS|HOSP|EICU|ICU|{when}+0000||ADT^{event}^ADT_A01|{control}|P|2.5",
        f"EVN|{event}|{when}+0000",
        "PID|1||4711^^^HOSP^MR||Li^Ada||19610314|F",
        f"PV1|1|I|ICU^^{bed}^HOSP||||D123^Wang^Jun|||||||||||||||||||||||||||||||||||||{when}",
        *extra,
    ]
    return "\r".join(segments) + "\r"


def msa(answer: str) -> str:
    seg = hl7.parse(answer).first("MSA")
    assert seg is not None
    return seg.component(1)


def errs(answer: str) -> list[tuple[str, str]]:
    return [(s.field(2), s.component(8)) for s in hl7.parse(answer).all("ERR")]


@pytest.fixture
async def listener(broker: Mosquitto, store_of_each_kind: Store) -> AsyncIterator[Listener]:
    mqtt = MqttSettings.from_url(broker.url, reconnect_min_s=0.05, reconnect_max_s=0.2)
    lst = Listener(mqtt, SITE, port=0, patients=store_of_each_kind)
    await lst.start()
    yield lst
    await lst.stop()


async def test_admission_transfer_update_and_discharge_over_mllp(
    listener: Listener, store_of_each_kind: Store
) -> None:
    store = store_of_each_kind
    admit = adt("A01", "C1", "bed07", "AL1|1|DA|^Penicillin", "DG1|1||J18.9^Pneumonia")
    answers = await send(listener.port, admit)
    strict(answers[0])
    assert msa(answers[0]) == "AA", errs(answers[0])
    (stay,) = await store.encounters()
    assert stay.bed == BedKey(SITE, "bed07") and stay.patient.mrn == "4711"
    assert (stay.patient.name, stay.patient.sex, stay.patient.birth_date) == (
        "Ada Li", "F", "1961-03-14"
    )  # fmt: skip
    assert stay.patient.allergies == "Penicillin" and stay.diagnosis == "Pneumonia"
    assert stay.attending == "Jun Wang" and stay.admitted_us == hl7.parse_ts("20261203101500+0000")
    # the same admission sent again under another control id: nothing changes, AA
    again = await send(listener.port, adt("A01", "C1b", "bed07"))
    assert msa(again[0]) == "AA" and len(await store.encounters()) == 1
    # moved to bed 9, then an update of the diagnosis, then discharged
    answers = await send(
        listener.port,
        adt("A02", "C2", "bed09", when="20261203110000"),
        adt("A08", "C3", "bed09", "DG1|1||A41.9^Sepsis", when="20261203111500"),
        adt("A03", "C4", "bed09", when="20261203120000"),
    )
    for answer in answers:
        strict(answer)
        assert msa(answer) == "AA", errs(answer)
    (done,) = await store.encounters(mrn="4711")
    assert [str(loc.bed) for loc in done.locations] == ["ward3/bed07", "ward3/bed09"]
    assert done.diagnosis == "Sepsis" and done.discharged_us == hl7.parse_ts("20261203120000+0000")
    actions = [(e.action, e.actor) for e in await store.encounter_log(done.encounter_id)]
    assert actions == [
        ("admit", "hl7:HIS"), ("transfer", "hl7:HIS"), ("update", "hl7:HIS"),
        ("discharge", "hl7:HIS"),
    ]  # fmt: skip
    # a discharge sent again: the stay ended already, nothing to do
    assert msa((await send(listener.port, adt("A03", "C4b", "bed09")))[0]) == "AA"
    assert listener.counts.adt == 6


async def test_an_adt_that_cannot_be_made_names_the_field(
    listener: Listener, store_of_each_kind: Store
) -> None:
    assert msa((await send(listener.port, adt("A01", "D1", "bed07")))[0]) == "AA"
    other = adt("A01", "D2", "bed07").replace("4711^^^HOSP^MR||Li^Ada", "99^^^HOSP^MR||Ma^Bob")
    cases = [
        (other, ("PV1^1^3", "has a patient")),  # the bed is taken
        (adt("A01", "D3", "bed08"), ("PID^1^3", "admitted already")),  # one open stay
        (adt("A02", "D4", "bed 8"), ("PV1^1^3^3", "not a valid bed id")),
        (adt("A01", "D5").replace("|19610314|F", "|19610399|F"), ("PID^1^7", "not a valid date")),
        (adt("A01", "D6").replace("|19610314|F", "|19610314|Q"), ("PID^1^8", "sex")),
        (
            adt("A03", "D7").replace("4711^^^HOSP^MR", "5555^^^HOSP^MR"),
            ("PV1^1^19", "no open stay"),
        ),
    ]
    answers = await send(listener.port, *(text for text, _ in cases))
    for answer, (_text, (where, words)) in zip(answers, cases, strict=True):
        strict(answer)
        assert msa(answer) == "AE"
        (found,) = errs(answer)
        assert found[0] == where and words in found[1], found
    (stay,) = await store_of_each_kind.encounters()
    assert stay.patient.name == "Ada Li" and str(stay.bed) == "ward3/bed07"  # nothing changed
    # an event the listener does not take is refused, naming it
    unknown = await send(listener.port, adt("A17", "D8"))
    assert msa(unknown[0]) == "AR" and "A17" in errs(unknown[0])[0][1]


async def test_an_admission_transfer_or_discharge_entered_in_error_is_cancelled(
    listener: Listener, store_of_each_kind: Store
) -> None:
    store = store_of_each_kind
    answers = await send(
        listener.port,
        adt("A01", "E1", "bed07", when="20261203100000"),
        adt("A02", "E2", "bed09", when="20261203101000"),
        adt("A12", "E3", "bed09", when="20261203101500"),  # the transfer was a mistake
    )
    for answer in answers:
        strict(answer)
        assert msa(answer) == "AA", errs(answer)
    (stay,) = await store.encounters()
    assert str(stay.bed) == "ward3/bed07"
    assert [str(loc.bed) for loc in stay.locations] == ["ward3/bed07", "ward3/bed09", "ward3/bed07"]
    # discharged, and the discharge cancelled: the stay is open again in its bed
    answers = await send(
        listener.port,
        adt("A03", "E4", "bed07", when="20261203110000"),
        adt("A13", "E5", "bed07", when="20261203110500"),
    )
    assert [msa(a) for a in answers] == ["AA", "AA"], [errs(a) for a in answers]
    (reopened,) = await store.encounters()
    assert reopened.encounter_id == stay.encounter_id and reopened.discharged_us is None
    assert str(reopened.bed) == "ward3/bed07"
    # an admission entered in error: the stay ends, logged as cancelled
    answer = (await send(listener.port, adt("A11", "E6", "bed07", when="20261203111000")))[0]
    strict(answer)
    assert msa(answer) == "AA", errs(answer)
    assert await store.encounters() == []
    actions = [e.action for e in await store.encounter_log(stay.encounter_id)]
    assert actions == [
        "admit", "transfer", "cancel_transfer", "discharge", "cancel_discharge", "cancel_admit"
    ]  # fmt: skip
    # nothing to cancel: refused, naming the stay
    nothing = (await send(listener.port, adt("A12", "E7", "bed07")))[0]
    assert msa(nothing) == "AE" and errs(nothing)[0][0] == "PV1^1^19"


def a40(control: str, prior: str, mrn: str = "4711", name: str = "Li^Ada") -> str:
    """An ``ADT^A40``: the record of MRN ``prior`` merged into that of ``mrn``."""
    when = "20261203130000"
    segments = [
        f"MSH|^~\\&|HIS|HOSP|EICU|ICU|{when}+0000||ADT^A40^ADT_A39|{control}|P|2.5",
        f"EVN|A40|{when}+0000",
        f"PID|1||{mrn}^^^HOSP^MR||{name}||19610314|F",
        f"MRG|{prior}^^^HOSP^MR",
    ]
    return "\r".join(segments) + "\r"


def as_patient(text: str, mrn: str, name: str) -> str:
    return text.replace("4711^^^HOSP^MR||Li^Ada", f"{mrn}^^^HOSP^MR||{name}")


async def test_a_duplicate_record_is_merged_into_the_patient_s(
    listener: Listener, store_of_each_kind: Store
) -> None:
    store = store_of_each_kind
    # Registered on arrival under a temporary identifier, later known as MRN 4711.
    arrival = as_patient(adt("A01", "M1", "bed07"), "TMP-1", "Unknown^Female")
    assert msa((await send(listener.port, arrival))[0]) == "AA"
    (stay,) = await store.encounters()
    await store.add_note(stay.encounter_id, "note", "arrived unconscious", {}, 1, "nurse-li")
    answer = (await send(listener.port, a40("M2", "TMP-1")))[0]
    strict(answer)
    assert msa(answer) == "AA", errs(answer)
    (merged,) = await store.encounters()
    assert merged.encounter_id == stay.encounter_id and str(merged.bed) == "ward3/bed07"
    assert (merged.patient.mrn, merged.patient.name) == ("4711", "Ada Li")
    assert not await store.encounters(mrn="TMP-1")
    assert [n.text for n in await store.notes(stay.encounter_id)] == ["arrived unconscious"]
    log = await store.encounter_log(stay.encounter_id)
    assert log[-1].action == "merge" and "TMP-1 (Female Unknown) merged into 4711" in log[-1].detail

    # A record with an ended stay of its own takes the duplicate's stays beside it.
    assert msa((await send(listener.port, adt("A03", "M3", "bed07")))[0]) == "AA"
    again = as_patient(adt("A01", "M4", "bed08", when="20261203140000"), "TMP-2", "Unknown^F")
    assert msa((await send(listener.port, again))[0]) == "AA"
    answer = (await send(listener.port, a40("M5", "TMP-2")))[0]
    assert msa(answer) == "AA", errs(answer)
    stays = await store.encounters(mrn="4711")
    assert [str(s.locations[-1].bed) for s in stays] == ["ward3/bed07", "ward3/bed08"]
    assert [s.discharged_us is None for s in stays] == [False, True]
    assert listener.counts.adt == 5


async def test_a_merge_that_cannot_be_made_names_the_field(
    listener: Listener, store_of_each_kind: Store
) -> None:
    both_open = [adt("A01", "N1", "bed07"), as_patient(adt("A01", "N2", "bed08"), "TMP-3", "X^Y")]
    assert [msa(a) for a in await send(listener.port, *both_open)] == ["AA", "AA"]
    no_mrg = a40("N6", "TMP-3").replace("MRG|TMP-3^^^HOSP^MR\r", "")
    cases = [
        (a40("N3", "TMP-3"), ("MRG^1^1", "both have an open stay")),
        (a40("N4", "NOBODY"), ("MRG^1^1", "no patient NOBODY")),
        (a40("N5", "4711"), ("MRG^1^1", "the patient's own")),
        (no_mrg, ("MRG", "no MRG segment")),
    ]
    answers = await send(listener.port, *(text for text, _ in cases))
    for answer, (_text, (where, words)) in zip(answers, cases, strict=True):
        strict(answer)
        assert msa(answer) == "AE"
        (found,) = errs(answer)
        assert found[0].startswith(where) and words in found[1], found
    assert {s.patient.mrn for s in await store_of_each_kind.encounters()} == {"4711", "TMP-3"}


async def test_observations_naming_another_patient_than_the_bed_s_are_kept_and_counted(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    from pathlib import Path

    example = (Path(__file__).parent / "data" / "hl7" / "pcd01-oru-r01.hl7").read_text()
    assert msa((await send(listener.port, adt("A01", "M1", "bed07")))[0]) == "AA"
    # the monitor of bed 7 still says patient 7001234: the data is the bed's, the mismatch
    # counted and named in the log
    with caplog.at_level("WARNING", logger="ingest.hl7"):
        assert msa((await send(listener.port, example))[0]) == "AA"
    assert listener.counts.patient_mismatches == 1 and listener.counts.frames == 2
    assert "names patient 7001234, but 4711 is admitted there" in caplog.text
    # the monitor set to the admitted patient: nothing to say
    right = example.replace("PCD0001", "PCD0002").replace("PID|||7001234^", "PID|||4711^")
    assert msa((await send(listener.port, right))[0]) == "AA"
    assert listener.counts.patient_mismatches == 1 and listener.counts.frames == 4
