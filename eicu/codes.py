"""The code tables: numeric parameters and waveform signals, with their standard codes.

Each numeric parameter carries its IEEE 11073-10101 (MDC) reference id and numeric code
(partition 2, SCADA: code = 2 * 65536 + term code) and its LOINC code, a unit, and the range a
measurement can physically take. The range rejects only the impossible (a negative heart rate,
SpO2 above 100 %); clinical limits belong to the alarm policy, not here.

Categorical parameters (ACVPU, supplemental oxygen) travel as labels and are stored as
their ordinal code in the same numerics table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Parameter:
    key: str  # the key in a numerics payload
    code: int  # small stable id used in storage
    name: str
    unit: str
    mdc_ref: str | None
    mdc_code: int | None
    loinc: str | None
    low: float  # physically possible range, inclusive
    high: float
    labels: tuple[str, ...] = ()  # categorical: the label of each ordinal value


# The table is append-only: a code, once given, is never reused.
PARAMETERS: Final[tuple[Parameter, ...]] = (
    Parameter("HR", 1, "heart rate (ECG)", "/min", "MDC_ECG_HEART_RATE", 147842, "8867-4", 0, 350),
    Parameter(
        "PR",
        2,
        "pulse rate (oximetry)",
        "/min",
        "MDC_PULS_OXIM_PULS_RATE",
        149530,
        "8889-8",
        0,
        350,
    ),
    Parameter(
        "SPO2",
        3,
        "oxygen saturation (pulse oximetry)",
        "%",
        "MDC_PULS_OXIM_SAT_O2",
        150456,
        "59408-5",
        0,
        100,
    ),
    Parameter("RR", 4, "respiration rate", "/min", "MDC_RESP_RATE", 151562, "9279-1", 0, 150),
    Parameter("TEMP", 5, "body temperature", "Cel", "MDC_TEMP_BODY", 150364, "8310-5", 10, 46),
    Parameter(
        "NIBP_SYS",
        6,
        "non-invasive systolic pressure",
        "mm[Hg]",
        "MDC_PRESS_BLD_NONINV_SYS",
        150021,
        "8480-6",
        0,
        350,
    ),
    Parameter(
        "NIBP_DIA",
        7,
        "non-invasive diastolic pressure",
        "mm[Hg]",
        "MDC_PRESS_BLD_NONINV_DIA",
        150022,
        "8462-4",
        0,
        300,
    ),
    Parameter(
        "NIBP_MEAN",
        8,
        "non-invasive mean pressure",
        "mm[Hg]",
        "MDC_PRESS_BLD_NONINV_MEAN",
        150023,
        "8478-0",
        0,
        300,
    ),
    Parameter(
        "ABP_SYS",
        9,
        "arterial systolic pressure",
        "mm[Hg]",
        "MDC_PRESS_BLD_ART_ABP_SYS",
        150037,
        "8480-6",
        0,
        350,
    ),
    Parameter(
        "ABP_DIA",
        10,
        "arterial diastolic pressure",
        "mm[Hg]",
        "MDC_PRESS_BLD_ART_ABP_DIA",
        150038,
        "8462-4",
        0,
        300,
    ),
    Parameter(
        "ABP_MEAN",
        11,
        "arterial mean pressure",
        "mm[Hg]",
        "MDC_PRESS_BLD_ART_ABP_MEAN",
        150039,
        "8478-0",
        0,
        300,
    ),
    Parameter("FIO2", 12, "inspired oxygen fraction", "%", None, None, "3150-0", 21, 100),
    Parameter(
        "ACVPU",
        13,
        "level of consciousness (ACVPU)",
        "{ACVPU}",
        None,
        None,
        None,
        0,
        4,
        ("A", "C", "V", "P", "U"),
    ),
    Parameter("O2", 14, "supplemental oxygen", "{bool}", None, None, None, 0, 1, ("air", "oxygen")),
)

BY_KEY: Final[dict[str, Parameter]] = {p.key: p for p in PARAMETERS}
BY_CODE: Final[dict[int, Parameter]] = {p.code: p for p in PARAMETERS}


@dataclass(frozen=True, slots=True)
class Signal:
    key: str
    sig_id: int  # the id in the waveform frame header
    name: str
    unit: str
    mdc_ref: str | None
    mdc_code: int | None
    # The range of sample rates a monitor sends for this signal (Hz, inclusive).
    fs_min_hz: float
    fs_max_hz: float


SIGNALS: Final[tuple[Signal, ...]] = (
    Signal("ECG_II", 1, "ECG lead II", "mV", "MDC_ECG_ELEC_POTL_II", 131330, 100, 1000),
    Signal("ECG_V", 2, "ECG lead V", "mV", None, None, 100, 1000),
    Signal("ECG_I", 3, "ECG lead I", "mV", "MDC_ECG_ELEC_POTL_I", 131329, 100, 1000),
    Signal("ECG_III", 4, "ECG lead III", "mV", "MDC_ECG_ELEC_POTL_III", 131389, 100, 1000),
    Signal("ECG_AVR", 5, "ECG lead aVR", "mV", "MDC_ECG_ELEC_POTL_AVR", 131390, 100, 1000),
    Signal("ECG_AVL", 6, "ECG lead aVL", "mV", "MDC_ECG_ELEC_POTL_AVL", 131391, 100, 1000),
    Signal("ECG_AVF", 7, "ECG lead aVF", "mV", "MDC_ECG_ELEC_POTL_AVF", 131392, 100, 1000),
    Signal("ECG_MCL1", 8, "ECG lead MCL1", "mV", None, None, 100, 1000),
    Signal("PLETH", 16, "photoplethysmogram", "1", "MDC_PULS_OXIM_PLETH", 150452, 25, 500),
    Signal(
        "ABP", 17, "arterial blood pressure", "mm[Hg]", "MDC_PRESS_BLD_ART_ABP", 150036, 25, 500
    ),
    Signal("CVP", 18, "central venous pressure", "mm[Hg]", None, None, 25, 500),
    Signal("RESP", 24, "respiration (impedance)", "Ohm", None, None, 10, 500),
)

SIGNAL_BY_KEY: Final[dict[str, Signal]] = {s.key: s for s in SIGNALS}
SIGNAL_BY_ID: Final[dict[int, Signal]] = {s.sig_id: s for s in SIGNALS}

_HI = ("196650", "MDC_EVT_HI_GT_LIM")
_LO = ("196672", "MDC_EVT_LO_LT_LIM")
_ARRHY = ("199874", "MDC_EVT_ECG_ARRHY")
ALARM_MDC_NOS: Final = ("258047", "MDC_EVT_NOS")
# The engine's alarm kinds (eicu/alarms/policies) -> (ISO/IEEE 11073-10101 event code,
# reference id): where a code names the condition (limit alarms; desaturation, asystole and atrial
# fibrillation as DICOM PS3.16 context group 3038 lists them, 3::n being 196608 + n; lead off),
# else the generic arrhythmia event for the other rhythms; ALARM_MDC_NOS (not otherwise
# specified) for the rest.
ALARM_MDC_EVENT: Final = {
    "HR_HIGH": _HI, "RR_HIGH": _HI, "SBP_HIGH": _HI, "TEMP_HIGH": _HI,
    "HR_LOW": _LO, "RR_LOW": _LO, "SBP_LOW": _LO,
    "SPO2_LOW": ("199854", "MDC_EVT_DESAT"),
    "ASYSTOLE": ("199684", "MDC_EVT_ECG_ASYSTOLE"),
    "AFIB": ("199736", "MDC_EVT_ECG_ATR_FIB"),
    "VFIB": _ARRHY, "VTACH": _ARRHY, "BRADY": _ARRHY, "TACHY": _ARRHY, "PAUSE": _ARRHY,
    "LEAD_OFF": ("196680", "MDC_EVT_LEAD_OFF"),
}  # fmt: skip
