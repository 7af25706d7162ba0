"""IHE PCD-04 (Alarm Communication Management, "Report Alert"): one alarm's state change as an
HL7 v2.6 ``ORU^R40^ORU_R40`` message, for an alarm manager downstream. Pure: no I/O.

The message (IHE PCD TF-2, PCD-04): MSH with the ACM profile (MSH-21
``IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO``), PID (the bed's patient where one is
admitted), PV1 (the bed: PV1-3 ``site^^bed``), OBR (OBR-3 the alarm's id, which stays the same
through its whole life; OBR-4 ``196616^MDC_EVT_ALARM^MDC``; OBR-7 the alarm's onset) and one OBX
per facet of the alarm, told apart by OBX-4 ``1.0.0.0.<facet>``:

- facet 1, ``196616^MDC_EVT_ALARM^MDC``: the condition (its MDC code, the local code beside it),
  OBX-8 priority ~ type;
- facet 3, ``68481^MDC_ATTR_EVENT_PHASE^MDC``: ``start``, ``update``, ``escalate`` or ``end``;
- facet 4, ``68482^MDC_ATTR_ALARM_STATE^MDC``: ``active``, ``latched`` or ``inactive``;
- facet 5, ``68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC``: ``enabled``, ``audio-paused`` or
  ``alert-acknowledged``;
- facet 6, ``68484^MDC_ATTR_ALARM_PRIORITY^MDC``: ``PH``, ``PM`` or ``PL``;
- facet 7, ``68485^MDC_ATTR_ALERT_TYPE^MDC``: ``SP`` (physiological) or ``ST`` (technical).

When no patient is admitted at the bed, PID carries no identifier (PID-3 and PID-5 empty): the
alarm is the bed's, and PV1-3 names it. (The base standard makes PID-3 required; a receiver
that insists on it sees the bed's alarms only once a patient is admitted there.)

The condition's code: the ISO/IEEE 11073-10101 event code where one names it (limit alarms
``MDC_EVT_HI_GT_LIM`` 196650 and ``MDC_EVT_LO_LT_LIM`` 196672; ``MDC_EVT_DESAT`` 199854,
``MDC_EVT_ECG_ASYSTOLE`` 199684 and ``MDC_EVT_ECG_ATR_FIB`` 199736, as DICOM PS3.16 context
group 3038 lists them, 3::n being 196608 + n; ``MDC_EVT_LEAD_OFF`` 196680), else the generic
``MDC_EVT_ECG_ARRHY`` 199874 for the other rhythms and ``MDC_EVT_NOS`` 258047 (not otherwise
specified); the engine's own kind always follows as the alternate code (coding system
``99EICU``, a local table in HL7's naming), so nothing is lost where the MDC code is generic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from eicu import hl7
from eicu.codes import ALARM_MDC_EVENT as MDC_EVENT
from eicu.codes import ALARM_MDC_NOS as NOS

PROFILE: Final = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO"
MDC_EVT_ALARM: Final = "196616^MDC_EVT_ALARM^MDC"
LOCAL_SYSTEM: Final = "99EICU"

PRIORITY: Final = {"high": "PH", "medium": "PM", "low": "PL"}
SOURCE: Final = {"physiological": "SP", "technical": "ST"}


@dataclass(frozen=True, slots=True)
class AlarmReport:
    """What one PCD-04 message says: an alarm's state after one change."""

    alarm_id: str
    site: str
    bed: str
    kind: str
    priority: str  # high, medium, low
    category: str  # physiological, technical
    state: str  # active, latched, acknowledged, cleared
    onset_us: int  # when the alarm began (its episode's data time)
    time_us: int  # when this change happened
    reason: str = ""
    audio_paused: bool = False
    mrn: str = ""
    patient_name: str = ""


def control_id(key: str) -> str:
    """MSH-10 of the message of a notification: derived from its key, so a message sent again
    carries the same id and the receiver can drop the repeat."""
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def phase(report: AlarmReport) -> str:
    if report.state == "cleared":
        return "end"
    if report.reason.startswith("started"):
        return "start"
    if "escalat" in report.reason:
        return "escalate"
    return "update"


def oru_r40(report: AlarmReport, control: str, now_us: int, *, facility: str = "") -> str:
    """The ``ORU^R40^ORU_R40`` text (segments ending in carriage returns)."""
    esc = hl7.Encoding().escape_text
    r = report
    code, ref = MDC_EVENT.get(r.kind, NOS)
    alarm_state = {"cleared": "inactive", "latched": "latched"}.get(r.state, "active")
    inactivation = (
        "alert-acknowledged"
        if r.state == "acknowledged"
        else "audio-paused"
        if r.audio_paused and r.state in ("active", "latched")
        else "enabled"
    )
    priority = PRIORITY.get(r.priority, "PL")
    source = SOURCE.get(r.category, "ST")
    at = hl7.format_ts(r.time_us)
    segments = [
        f"MSH|^~\\&|EICU|{esc(facility)}|||{hl7.format_ts(now_us)}||ORU^R40^ORU_R40|"
        f"{esc(control)}|P|2.6|||AL|NE||UNICODE UTF-8|||{PROFILE}",
    ]
    if r.mrn:
        # the name as the patient tables hold it, "Given Family": PID-5 is family^given
        given, _, family = r.patient_name.rpartition(" ")
        name = f"{esc(family)}^{esc(given)}"
        segments.append(f"PID|1||{esc(r.mrn)}^^^{esc(r.site)}^MR||{name}")
    else:
        # no patient admitted at the bed: the alarm is the bed's (PID-3 and PID-5 empty)
        segments.append("PID|1")
    segments += [
        f"PV1|1|I|{esc(r.site)}^^{esc(r.bed)}",
        f"OBR|1||{esc(r.alarm_id)}^EICU|{MDC_EVT_ALARM}|||{hl7.format_ts(r.onset_us)}",
        f"OBX|1|CWE|{MDC_EVT_ALARM}|1.0.0.0.1|{code}^{ref}^MDC^{esc(r.kind)}^{esc(r.kind)}^"
        f"{LOCAL_SYSTEM}|||{priority}~{source}|||F|||{at}",
        f"OBX|2|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.0.0.0.3|{phase(r)}||||||F|||{at}",
        f"OBX|3|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.0.4|{alarm_state}||||||F|||{at}",
        f"OBX|4|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.0.0.0.5|{inactivation}||||||F"
        f"|||{at}",
        f"OBX|5|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.0.0.0.6|{priority}||||||F|||{at}",
        f"OBX|6|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.0.0.0.7|{source}||||||F|||{at}",
    ]
    return "\r".join(segments) + "\r"
