"""The one backoff of the project (eicu.backoff): exponential delays with jitter, a count of its
own or a numbered attempt, and the stats it keeps."""

from __future__ import annotations

import random

import pytest

from eicu.backoff import Backoff


def test_delays_double_from_the_minimum_to_the_maximum_within_the_jitter() -> None:
    b = Backoff(0.5, 4.0, rng=random.Random(1))
    delays = [b.next_s() for _ in range(7)]
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    for got, want in zip(delays, nominal, strict=True):
        assert want * 0.5 <= got <= want
    assert b.attempts == 7
    assert len(set(delays)) == len(delays)  # drawn, not fixed: processes do not retry in step


def test_a_reset_starts_again_from_the_minimum_and_the_stats_count_everything() -> None:
    b = Backoff(1.0, 30.0, jitter=0.0)
    assert [b.next_s() for _ in range(3)] == [1.0, 2.0, 4.0]
    b.reset()
    b.reset()  # nothing to reset: not counted
    assert b.next_s() == 1.0
    assert (b.stats.retries, b.stats.resets, b.stats.waited_s, b.stats.longest_s) == (
        4,
        1,
        8.0,
        4.0,
    )


def test_a_numbered_attempt_for_a_count_kept_elsewhere() -> None:
    b = Backoff(1.0, 30.0, jitter=0.0)
    assert [b.delay_s(n) for n in (1, 2, 5, 6, 10_000)] == [1.0, 2.0, 16.0, 30.0, 30.0]
    assert b.attempts == 0  # its own count is untouched
    with pytest.raises(ValueError):
        b.delay_s(0)


def test_the_cart_jitter_shortens_by_at_most_a_fifth() -> None:
    b = Backoff(0.5, 30.0, jitter=0.2, rng=random.Random(7))
    assert all(0.8 * b.nominal_s(n) <= b.delay_s(n) <= b.nominal_s(n) for n in range(1, 12))


@pytest.mark.parametrize(
    ("min_s", "max_s", "factor", "jitter"),
    [(0.0, 1.0, 2.0, 0.5), (2.0, 1.0, 2.0, 0.5), (1.0, 2.0, 0.5, 0.5), (1.0, 2.0, 2.0, 1.0)],
)
def test_settings_that_make_no_backoff_are_refused(
    min_s: float, max_s: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError):
        Backoff(min_s, max_s, factor, jitter)
