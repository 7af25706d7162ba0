"""How old a value may be before it is stale: one table, used by every view of a bed.

Continuous parameters (HR, SpO2, RR, arterial pressure) arrive every second; a value older than
:data:`CONTINUOUS_STALE_S` means the stream has stopped. Intermittent ones (cuff pressure,
temperature, consciousness) are measured minutes or hours apart and have limits of their own.
"""

from __future__ import annotations

from typing import Final

STALE_S: Final[dict[str, float]] = {
    "NIBP_SYS": 1800.0,
    "NIBP_DIA": 1800.0,
    "NIBP_MEAN": 1800.0,
    "TEMP": 4 * 3600.0,
    "ACVPU": 12 * 3600.0,
    # whether the patient breathes supplemental oxygen, and how much: entered or set, then kept
    # (the score assembly's maximum ages, eicu.scores.assembly)
    "O2": 12 * 3600.0,
    "FIO2": 1800.0,
}
CONTINUOUS_STALE_S: Final = 10.0


def stale_after_s(key: str) -> float:
    """Seconds after which a value of parameter ``key`` is stale."""
    return STALE_S.get(key, CONTINUOUS_STALE_S)
