"""The alarm policy: the default file, validation with errors that name the key, per-bed changes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from eicu.alarm_model import Category, Priority
from eicu.alarms.policy import (
    DEFAULT_PATH,
    PolicyChange,
    load_policy,
    override,
    parse_policy,
)
from eicu.errors import AlarmPolicyError, EicuError
from eicu.models import BedKey

BED = BedKey("site-a", "bed-1")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    return data


def test_default_policy_is_versioned_and_round_trips(raw: dict[str, Any]) -> None:
    p = load_policy()
    assert (p.name, p.version) == ("default", 2) == (raw["name"], raw["version"])
    assert p.audio_pause_max_s == 120.0
    assert parse_policy(p.to_dict()) == p
    assert json.loads(json.dumps(p.to_dict())) == p.to_dict()


def test_default_policy_priorities() -> None:
    p = load_policy()
    high = {k for k, c in p.conditions.items() if c.priority is Priority.HIGH}
    assert high == {"NEWS2_HIGH", "ASYSTOLE", "VFIB", "VTACH", "BRADY", "TACHY"}
    assert p.condition("AFIB").priority is Priority.MEDIUM
    assert p.condition("PAUSE").priority is Priority.MEDIUM
    assert p.condition("NEWS2_MEDIUM").priority is Priority.MEDIUM
    assert p.condition("DETERIORATION").priority is Priority.LOW
    for kind in ("LEAD_OFF", "SPO2_PROBE_OFF", "BED_OFFLINE", "DATA_STALE"):
        assert p.condition(kind).category is Category.TECHNICAL
    assert all(c.latching for c in p.conditions.values() if c.priority is Priority.HIGH)
    spo2 = p.condition("SPO2_LOW")
    assert (spo2.limit, spo2.delay_s, spo2.clear_hysteresis) == (90.0, 15.0, 2.0)
    assert (spo2.escalate_limit, spo2.escalate_priority) == (85.0, Priority.HIGH)
    assert p.condition("SBP_LOW").params == ("ABP_SYS", "NIBP_SYS")
    assert p.condition("DATA_STALE").after_s == 10.0


def test_hysteresis_band() -> None:
    spo2 = load_policy().condition("SPO2_LOW")
    assert not spo2.in_hysteresis(89.9)  # still beyond the limit, not a clearing value
    assert spo2.in_hysteresis(90.0) and spo2.in_hysteresis(91.9)
    assert not spo2.in_hysteresis(92.0)
    hr = load_policy().condition("HR_HIGH")
    assert hr.in_hysteresis(130.0) and hr.in_hysteresis(125.1) and not hr.in_hysteresis(125.0)


def _bad(raw: dict[str, Any], path: str, edit: Any) -> AlarmPolicyError:
    data = copy.deepcopy(raw)
    edit(data)
    with pytest.raises(AlarmPolicyError) as info:
        parse_policy(data)
    assert info.value.path == path, str(info.value)
    assert isinstance(info.value, EicuError) and isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize(
    ("path", "edit"),
    [
        ("version", lambda d: d.update(version=0)),
        ("version", lambda d: d.update(version="1")),
        ("name", lambda d: d.update(name="")),
        ("audio_pause_max_s", lambda d: d.update(audio_pause_max_s=-5)),
        ("colour", lambda d: d.update(colour="red")),
        ("max_age_s.HR", lambda d: d["max_age_s"].update(HR=float("nan"))),
        ("conditions.SPO2_LOW.limit", lambda d: d["conditions"]["SPO2_LOW"].pop("limit")),
        ("conditions.SPO2_LOW.limit", lambda d: d["conditions"]["SPO2_LOW"].update(limit=True)),
        ("conditions.SPO2_LOW.delay_s", lambda d: d["conditions"]["SPO2_LOW"].update(delay_s=-1)),
        (
            "conditions.SPO2_LOW.priority",
            lambda d: d["conditions"]["SPO2_LOW"].update(priority="x"),
        ),
        ("conditions.SPO2_LOW.rule", lambda d: d["conditions"]["SPO2_LOW"].update(rule="magic")),
        ("conditions.SPO2_LOW.band", lambda d: d["conditions"]["SPO2_LOW"].update(band="high")),
        (
            "conditions.SPO2_LOW.escalate.limit",
            lambda d: d["conditions"]["SPO2_LOW"]["escalate"].update(limit=95),
        ),
        (
            "conditions.SPO2_LOW.escalate.priority",
            lambda d: d["conditions"]["SPO2_LOW"]["escalate"].update(priority="low"),
        ),
        (
            "conditions.HR_HIGH.sat_seconds",
            lambda d: d["conditions"]["HR_HIGH"].update(sat_seconds=50),
        ),
        (
            "conditions.SPO2_LOW.sat_seconds",
            lambda d: d["conditions"]["SPO2_LOW"].update(sat_seconds=0),
        ),
        ("conditions.VTACH.label", lambda d: d["conditions"]["VTACH"].update(label="VT")),
        (
            "conditions.VTACH.category",
            lambda d: d["conditions"]["VTACH"].update(category="technical"),
        ),
        ("conditions.NEWS2_HIGH.band", lambda d: d["conditions"]["NEWS2_HIGH"].update(band="red")),
        ("conditions.DATA_STALE.after_s", lambda d: d["conditions"]["DATA_STALE"].pop("after_s")),
        ("conditions.SBP_LOW.params", lambda d: d["conditions"]["SBP_LOW"].update(params=[])),
        (
            "conditions.SBP_LOW.params",
            lambda d: d["conditions"]["SBP_LOW"].update(params=["ABP_MEAN"]),
        ),
        (
            "conditions.SPO2_LOW.unavailable",
            lambda d: d["conditions"]["SPO2_LOW"].update(unavailable="VTACH"),
        ),
        (
            "conditions.BED_OFFLINE.latching",
            lambda d: d["conditions"]["BED_OFFLINE"].update(latching=1),
        ),
    ],
)
def test_bad_policy_names_the_key(raw: dict[str, Any], path: str, edit: Any) -> None:
    _bad(raw, path, edit)


def test_bad_file_names_the_file(tmp_path: Path, raw: dict[str, Any]) -> None:
    bad = tmp_path / "site-v2.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(AlarmPolicyError, match=r"site-v2\.json"):
        load_policy(bad)
    data = copy.deepcopy(raw)
    data["conditions"]["HR_LOW"]["limit"] = "fifty"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(AlarmPolicyError) as info:
        load_policy(bad)
    assert info.value.path == "site-v2.json:conditions.HR_LOW.limit"


def test_override_returns_new_policy_and_audit_record() -> None:
    base = load_policy()
    new, change = override(base, BED, "SPO2_LOW", "limit", 88, user="dr.li", now_us=5_000_000)
    assert new.condition("SPO2_LOW").limit == 88.0
    assert base.condition("SPO2_LOW").limit == 90.0  # the original is untouched
    assert new.condition("HR_LOW") == base.condition("HR_LOW")
    assert change == PolicyChange(
        bed=BED,
        kind="SPO2_LOW",
        field="limit",
        old=90.0,
        new=88.0,
        user="dr.li",
        time_us=5_000_000,
        policy="default-v2",
    )
    with pytest.raises(TypeError):
        new.conditions["SPO2_LOW"] = base.conditions["SPO2_LOW"]  # type: ignore[index]
    sat, change = override(new, BED, "SPO2_LOW", "sat_seconds", 50, user="dr.li", now_us=6)
    assert sat.condition("SPO2_LOW").sat_seconds == 50.0 and change.old is None
    off, _ = override(sat, BED, "SPO2_LOW", "escalate_limit", None, user="dr.li", now_us=7)
    assert off.condition("SPO2_LOW").escalate_priority is None
    assert parse_policy(off.to_dict()) == off


@pytest.mark.parametrize(
    ("kind", "field", "value", "path"),
    [
        ("SPO2_LOW", "priority", 1.0, "conditions.SPO2_LOW.priority"),
        ("SPO2_LOW", "limit", float("inf"), "conditions.SPO2_LOW.limit"),
        ("SPO2_LOW", "limit", 80.0, "conditions.SPO2_LOW.escalate.limit"),  # escalation inside
        ("SPO2_LOW", "limit", None, "conditions.SPO2_LOW.limit"),
        ("SPO2_LOW", "delay_s", -1.0, "conditions.SPO2_LOW.delay_s"),
        ("HR_HIGH", "sat_seconds", 10.0, "conditions.HR_HIGH.sat_seconds"),
        ("VTACH", "limit", 1.0, "conditions.VTACH.limit"),
        ("NOPE", "limit", 1.0, "conditions.NOPE"),
    ],
)
def test_bad_override_names_the_key(kind: str, field: str, value: float | None, path: str) -> None:
    with pytest.raises(AlarmPolicyError) as info:
        override(load_policy(), BED, kind, field, value, user="dr.li", now_us=0)
    assert info.value.path == path, str(info.value)


def test_override_needs_a_user() -> None:
    with pytest.raises(AlarmPolicyError, match="user"):
        override(load_policy(), BED, "SPO2_LOW", "limit", 88, user="", now_us=0)
