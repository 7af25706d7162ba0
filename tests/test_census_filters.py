"""The census's filters and sort, on rows as the census builds them: alarm priority (a bed whose
most urgent live alarm is at least that priority), NEWS2 band (at least that band, complete or
proven by a partial score; a stale score counts by what it proves too), rhythm flag, stale or
offline beds, and the order (acuity, or bed name)."""

from __future__ import annotations

from typing import Any

import pytest

from dashboards.views import CensusFilter


def row(bed: str, **parts: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "bed": bed, "site": bed.split("/")[0], "status": "online", "stale": False,
        "alarm": None, "news2": None, "engine": {"rhythms": []}, "acuity": [-1, -1],
    }  # fmt: skip
    return {**base, **parts}


def alarm(priority: str) -> dict[str, Any]:
    return {"priority": priority, "state": "active", "kind": "X"}


ROWS = [
    row("a/1", alarm=alarm("high"), engine={"rhythms": ["VTACH"]}),
    row("a/2", alarm=alarm("medium"), news2={"complete": True, "band": "high", "total": 8}),
    row("b/3", alarm=alarm("low"), news2={"complete": False, "min_band": "medium"}),
    row("b/4", news2={"complete": True, "band": "low-medium", "total": 3}, stale=True),
    row("a/5", status="offline", engine={"rhythms": ["AFIB"]}),
    row("a/0", news2={"invalid": "no inputs"}),
]


def beds(f: CensusFilter) -> list[str]:
    return [r["bed"] for r in f.apply(ROWS)]


def test_each_filter_keeps_what_its_definition_says() -> None:
    assert beds(CensusFilter()) == [r["bed"] for r in ROWS]  # no filter: all, in their order
    assert beds(CensusFilter(priority="high")) == ["a/1"]
    assert beds(CensusFilter(priority="medium")) == ["a/1", "a/2"]
    assert beds(CensusFilter(priority="low")) == ["a/1", "a/2", "b/3"]
    assert beds(CensusFilter(band="high")) == ["a/2"]
    assert beds(CensusFilter(band="medium")) == ["a/2", "b/3"]
    assert beds(CensusFilter(band="low-medium")) == ["a/2", "b/3", "b/4"]
    assert beds(CensusFilter(rhythm="VTACH")) == ["a/1"]
    assert beds(CensusFilter(rhythm="any")) == ["a/1", "a/5"]
    assert beds(CensusFilter(stale=True)) == ["b/4", "a/5"]
    assert beds(CensusFilter(priority="low", band="medium")) == ["a/2", "b/3"]  # both hold
    assert beds(CensusFilter(sort="bed")) == ["a/0", "a/1", "a/2", "a/5", "b/3", "b/4"]


def test_filters_from_an_address_are_checked() -> None:
    f = CensusFilter.parse({"priority": "high", "band": "", "stale": "1", "sort": "bed"})
    assert f == CensusFilter(priority="high", stale=True, sort="bed")
    for bad in ({"priority": "urgent"}, {"band": "red"}, {"sort": "age"}, {"rhythm": "x;y"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CensusFilter.parse(bad)
