"""Synthetic patients for simulated beds (``eicu demo``): a name, age, sex and allergies drawn
from a seed, and a diagnosis that fits the bed's scenario. Their MRNs start ``DEMO-`` so nobody
mistakes them for a hospital's records."""

from __future__ import annotations

import datetime as dt
import random

from eicu.patients import Patient

GIVEN_F = ("Fang", "Min", "Na", "Hui", "Yan", "Jing", "Mei", "Aigul", "Dilnur", "Gulnara", "Li")
GIVEN_M = ("Wei", "Jun", "Lei", "Qiang", "Erkin", "Nurlan", "Timur", "Hao", "Bo", "Yusup")
FAMILY = ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu",
          "Abdulla", "Tursun", "Ismail", "Ma")  # fmt: skip
ALLERGIES = ("NKDA", "NKDA", "NKDA", "penicillin (rash)", "sulfonamides", "iodinated contrast")
DIAGNOSIS = {
    "stable": "post-operative monitoring after laparotomy",
    "sepsis": "community-acquired pneumonia with sepsis",
    "af": "atrial fibrillation with rapid ventricular response",
    "vt": "ischaemic cardiomyopathy, NSTEMI",
    "asystole": "complete heart block awaiting pacing",
    "artefact": "post-CABG day 1",
    "spo2_off": "COPD exacerbation on NIV",
    "disconnect": "diabetic ketoacidosis",
    "vf": "acute anterior STEMI after PCI",
    "pvc": "hypokalaemia, acute kidney injury",
    "bigeminy": "digoxin toxicity",
    "paced": "sick sinus syndrome with pacemaker",
}
ATTENDINGS = ("Dr Chen", "Dr Wang", "Dr Abdulla", "Dr Zhou")


def demo_patient(
    n: int, scenario: str, today: dt.date, seed: int = 0
) -> tuple[Patient, dict[str, str]]:
    """The ``n``-th demo patient and their stay's fields, the same for the same arguments."""
    rng = random.Random(seed * 100_003 + n)
    sex = rng.choice("FM")
    given = rng.choice(GIVEN_F if sex == "F" else GIVEN_M)
    age = rng.randint(28, 88)
    born = today.replace(year=today.year - age) - dt.timedelta(days=rng.randint(1, 360))
    patient = Patient(
        mrn=f"DEMO-{n:04d}", name=f"{given} {rng.choice(FAMILY)}", sex=sex,
        birth_date=born.isoformat(), allergies=rng.choice(ALLERGIES),
    )  # fmt: skip
    code = "DNR" if age > 80 and rng.random() < 0.6 else rng.choice(("full", "full", "full", ""))
    fields = {
        "diagnosis": DIAGNOSIS.get(scenario, "ICU monitoring"),
        "attending": rng.choice(ATTENDINGS),
        "code_status": code,
        "isolation": "contact" if scenario == "sepsis" and rng.random() < 0.5 else "",
    }
    return patient, fields
