"""The evaluator's contract: arrays == scalars, missing is never 0, impossible is an error,
definitions are data (checked on load), and the kernel equals a naive reading of the data."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.errors import ScoreDefinitionError, ScoreInputError
from eicu.kernels.scores import score_tables
from eicu.scores import (
    MEWS,
    NEWS2,
    QSOFA,
    ScoreDefinition,
    definition_from_mapping,
    evaluate,
    evaluate_array,
    load_definition,
    mews,
    news2,
    qsofa,
)
from eicu.scores.definitions import MEWS_SUBBE_2001, NEWS2_RCP_2017


def naive_score_tables(
    d: ScoreDefinition, x: dict[str, float]
) -> tuple[dict[str, int | None], int]:
    """Read the definition's bands directly: lo <= charted <= hi, ties to the worse score."""

    def points(bands, value, resolution):
        def at(charted):
            for b in bands:
                lo = -math.inf if b.lo is None else round(b.lo / resolution)
                hi = math.inf if b.hi is None else round(b.hi / resolution)
                if lo <= charted <= hi:
                    return b.points
            raise AssertionError("bands do not cover the value")

        s = value / resolution
        if abs(s - math.floor(s) - 0.5) <= 1e-9:
            return max(at(math.floor(s)), at(math.floor(s) + 1))
        return at(math.floor(s + 0.5))

    comps: dict[str, int | None] = {}
    for comp in d.components:
        result = None
        for v in comp.variants:
            conds = [x[name] for name, _ in v.when]
            if any(math.isnan(c) for c in conds):
                break
            if all(x[name] == val for name, val in v.when):
                if not math.isnan(x[v.input]):
                    spec = d.inputs[d.input_index[v.input]]
                    result = points(v.bands, x[v.input], spec.resolution)
                break
        comps[comp.name] = result
    return comps, sum(p for p in comps.values() if p is not None)


def maybe(strategy):
    return st.one_of(st.just(math.nan), strategy)


news2_rows = st.fixed_dictionaries(
    {
        "rr": maybe(st.floats(0, 150)),
        "spo2": maybe(st.floats(0, 100)),
        "on_oxygen": maybe(st.sampled_from([0.0, 1.0])),
        "sbp": maybe(st.floats(0, 350)),
        "hr": maybe(st.floats(0, 350)),
        "acvpu": maybe(st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0])),
        "temp_c": maybe(st.floats(10, 46)),
        "spo2_scale": st.sampled_from([1.0, 2.0]),
    }
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(news2_rows, min_size=1, max_size=40))
def test_news2_array_equals_scalar_and_naive(rows):
    arrays = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    batch = news2(**arrays)
    assert len(batch) == len(rows)
    for i, r in enumerate(rows):
        scalar = news2(**{k: (None if math.isnan(v) else v) for k, v in r.items()})
        assert batch.row(i) == scalar
        comps, partial = naive_score_tables(NEWS2, r)
        assert scalar.components == comps
        assert scalar.partial_total == partial
        assert scalar.complete == all(p is not None for p in comps.values())
        assert scalar.total == (partial if scalar.complete else None)
        assert batch.band()[i] == scalar.band
        assert batch.min_band()[i] == scalar.min_band
        assert batch.response()[i] == scalar.response
        assert batch.monitoring()[i] == scalar.monitoring


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "rr": maybe(st.floats(0, 150)),
                "sbp": maybe(st.floats(0, 350)),
                "hr": maybe(st.floats(0, 350)),
                "acvpu": maybe(st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0])),
                "temp_c": maybe(st.floats(10, 46)),
            }
        ),
        min_size=1,
        max_size=30,
    )
)
def test_mews_and_qsofa_array_equals_scalar_and_naive(rows):
    arrays = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    mb = mews(**arrays)
    qb = qsofa(rr=arrays["rr"], sbp=arrays["sbp"], acvpu=arrays["acvpu"])
    for i, r in enumerate(rows):
        clean = {k: (None if math.isnan(v) else v) for k, v in r.items()}
        assert mb.row(i) == mews(**clean)
        assert qb.row(i) == qsofa(rr=clean["rr"], sbp=clean["sbp"], acvpu=clean["acvpu"])
        assert mews(**clean).components == naive_score_tables(MEWS, r)[0]
        assert qb.row(i).components == naive_score_tables(QSOFA, r)[0]


def test_missing_is_never_scored_as_normal():
    r = news2(rr=16, spo2=98, on_oxygen=False, sbp=120, hr=None, acvpu="A", temp_c=37.0)
    assert not r.complete
    assert r.total is None and r.band is None
    assert r.components["hr"] is None
    assert r.missing == ("hr",)
    assert r.partial_total == 0
    assert r.min_band == "low"
    # a partial score can already prove a band: 9 points without the pulse is at least high
    r = news2(rr=30, spo2=85, on_oxygen=True, sbp=120, hr=None, acvpu="A", temp_c=37.0)
    assert (r.total, r.partial_total, r.min_band) == (None, 8, "high")


def test_scale2_needs_to_know_air_or_oxygen():
    r = news2(rr=16, spo2=95, sbp=120, hr=70, acvpu="A", temp_c=37.0, spo2_scale=2)
    assert r.components["spo2"] is None and r.components["on_oxygen"] is None
    assert r.missing == ("on_oxygen",)
    # on scale 1 the SpO2 points do not depend on oxygen
    r = news2(rr=16, spo2=95, sbp=120, hr=70, acvpu="A", temp_c=37.0, spo2_scale=1)
    assert r.components["spo2"] == 1 and r.missing == ("on_oxygen",)


def test_nothing_at_all_is_incomplete_not_zero():
    r = news2()
    assert not r.complete and r.total is None and r.partial_total == 0
    assert set(r.missing) == {"rr", "spo2", "on_oxygen", "sbp", "hr", "acvpu", "temp_c"}


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"rr": -1}, "rr", "impossible"),
        ({"spo2": 100.5}, "spo2", "impossible"),
        ({"spo2": 101}, "spo2", "outside 0..100"),
        ({"sbp": math.inf}, "sbp", "impossible"),
        ({"hr": -math.inf}, "hr", "impossible"),
        ({"temp_c": 98.6}, "temp_c", "impossible"),  # Fahrenheit by mistake
        ({"acvpu": "X"}, "acvpu", "A, C, V, P, U"),
        ({"acvpu": 5}, "acvpu", "not one of"),
        ({"acvpu": 1.5}, "acvpu", "not one of"),
        ({"on_oxygen": 2}, "on_oxygen", "not one of"),
        ({"spo2_scale": 3}, "spo2_scale", "not one of"),
        ({"spo2_scale": math.nan}, "spo2_scale", "cannot be missing"),
        ({"hr": True}, "hr", "expected a number"),
        ({"hr": [1, 2], "rr": [1, 2, 3]}, "inputs", "shapes"),
        ({"hr": [[70]]}, "inputs", "1-D"),
    ],
)
def test_impossible_inputs_raise_naming_the_field(kwargs, field, fragment):
    with pytest.raises(ScoreInputError) as info:
        news2(**kwargs)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_array_errors_name_the_index():
    with pytest.raises(ScoreInputError, match=r"spo2: 120 % is impossible.*index 2"):
        news2(spo2=np.array([97, 98, 120, 99]))


def test_nan_in_array_is_missing_not_error():
    b = news2(rr=np.array([16.0, np.nan]), spo2=98, on_oxygen=0, sbp=120, hr=70, acvpu=0,
              temp_c=37.0)  # fmt: skip
    assert b.total.tolist() == [0, -1]
    assert b.complete.tolist() == [True, False]
    assert b.row(1).missing == ("rr",)


def test_string_arrays_of_labels():
    b = news2(acvpu=np.array(["A", "c", "U"]), on_oxygen=np.array(["air", "oxygen", "air"]))
    assert b.components["acvpu"].tolist() == [0, 3, 3]
    assert b.components["on_oxygen"].tolist() == [0, 2, 0]


def test_non_integer_values_follow_the_charting_rule():
    # nearest point on the chart's grid; exactly halfway goes to the worse neighbour
    assert news2(rr=20.4).components["rr"] == 0
    assert news2(rr=20.5).components["rr"] == 2  # 20 -> 0, 21 -> 2
    assert news2(rr=20.6).components["rr"] == 2
    assert news2(hr=50.5).components["hr"] == 1  # 50 -> 1, 51 -> 0
    assert news2(hr=50.6).components["hr"] == 0
    assert news2(temp_c=38.05).components["temp_c"] == 1  # 38.0 -> 0, 38.1 -> 1
    assert news2(temp_c=38.04).components["temp_c"] == 0
    assert news2(temp_c=35.05).components["temp_c"] == 3  # 35.0 -> 3, 35.1 -> 1
    assert news2(spo2=95.5).components["spo2"] == 1  # 95 -> 1, 96 -> 0
    assert news2(sbp=110.5).components["sbp"] == 1  # 110 -> 1, 111 -> 0


def test_evaluate_array_fast_path_matches_keywords():
    rng = np.random.default_rng(7)
    n = 500
    x = np.vstack(
        [
            rng.uniform(0, 40, n),
            rng.uniform(80, 100, n),
            rng.integers(0, 2, n).astype(float),
            rng.uniform(60, 240, n),
            rng.uniform(30, 180, n),
            rng.integers(0, 5, n).astype(float),
            rng.uniform(33, 41, n),
            rng.integers(1, 3, n).astype(float),
        ]
    )
    x[0, ::7] = np.nan
    fast = evaluate_array(NEWS2, x)
    slow = evaluate(NEWS2, {spec.name: x[i] for i, spec in enumerate(NEWS2.inputs)})
    np.testing.assert_array_equal(fast.total, slow.total)
    np.testing.assert_array_equal(fast.partial_total, slow.partial_total)
    x[1, 3] = 130.0
    with pytest.raises(ScoreInputError, match="spo2"):
        evaluate_array(NEWS2, x)
    with pytest.raises(ScoreInputError, match="shape"):
        evaluate_array(NEWS2, x[:3])


def test_kernel_rejects_a_bad_shape():
    with pytest.raises(ValueError, match="2-D"):
        score_tables(np.zeros(8), NEWS2.packed)
    with pytest.raises(ValueError, match="input rows"):
        score_tables(np.zeros((2, 3)), NEWS2.packed)


# ---------------------------------------------------------------- definitions as data


def test_every_result_names_its_definition():
    assert news2(rr=12).definition == "news2/rcp-2017"
    assert mews(rr=12).definition == "mews/subbe-2001"
    assert qsofa(rr=12).definition == "qsofa/seymour-2016"


def test_a_local_mews_variant_from_json(tmp_path):
    local = copy.deepcopy(MEWS_SUBBE_2001)
    local["version"] = "local-2024"
    # a hospital that calls at 4 or more, and scores new confusion as P
    local["risk"][0]["min_total"] = 4
    local["components"][4]["variants"][0]["bands"] = [
        [None, 0, 0], [1, 1, 2], [2, 2, 1], [3, 3, 2], [4, None, 3],
    ]  # fmt: skip
    path = tmp_path / "mews-local.json"
    path.write_text(json.dumps(local))
    d = load_definition(path)
    r = mews(sbp=75, hr=105, rr=16, temp_c=37.0, acvpu="A", definition=d)
    assert (r.total, r.band, r.definition) == (4, "high", "mews/local-2024")
    assert mews(acvpu="C", definition=d).components["acvpu"] == 2
    assert mews(acvpu="C").components["acvpu"] == 1


def _broken(path, value):
    raw = copy.deepcopy(NEWS2_RCP_2017)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("name",), "", "name"),
        (("components", 0, "variants", 0, "bands", 1), [10, 11, 1], "components[0].variants[0]"),
        (("components", 0, "variants", 0, "bands", 4), [25, 30, 3], "components[0].variants[0]"),
        (("components", 6, "variants", 0, "bands", 1), [35.15, 36.0, 1], "not on the 0.1 grid"),
        (("components", 0, "variants", 0, "input"), "breaths", "unknown input"),
        (("components", 1, "variants", 0, "when"), {"spo2_scale": 3}, "not one of"),
        (("components", 0, "variants", 0, "bands", 2), [12, 20, -1], "points"),
        (("risk", 4, "min_total"), 1, "the last row must apply"),
        (("inputs", 0, "low"), "zero", "inputs[0].low"),
        (("inputs", 7, "default"), None, "needs a default"),
    ],
)
def test_malformed_definitions_are_rejected_with_the_path(path, value, where):
    with pytest.raises(ScoreDefinitionError) as info:
        definition_from_mapping(_broken(path, value))
    assert where in str(info.value)


def test_unreadable_definition_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ScoreDefinitionError, match="cannot read"):
        load_definition(bad)
