"""eicu.signal.stats against NumPy, whose values it promises."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from eicu.signal.stats import median

values = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.integers(-1000, 1000),
    st.just(float("nan")),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(values, max_size=12))
def test_median_is_numpys(xs: list[float]) -> None:
    got = median(xs)
    assert isinstance(got, float)
    if not xs:
        assert math.isnan(got)
        return
    want = float(np.median(np.array(xs, dtype=np.float64)))
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_median_takes_numpy_values_and_any_iterable() -> None:
    assert median(np.array([3.0, 1.0, 2.0])) == 2.0
    assert median(iter([4, 1, 3, 2])) == 2.5
    assert math.isnan(median([1.0, float("nan"), 0.5]))
    assert math.isnan(median([float("nan"), 1.0]))
