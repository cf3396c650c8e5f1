"""The ratio interval: t quantiles against published values, the paired estimate, and its
coverage over many simulated rounds."""

from __future__ import annotations

import math
import random

import pytest

from wattscope.stats import paired_ratio, t_cdf, t_quantile

# Student's t 0.975 quantiles (standard tables).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 29: 2.045, 120: 1.980}


@pytest.mark.parametrize("df,expected", sorted(T975.items()))
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


def test_t_cdf_is_symmetric_and_monotone() -> None:
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(1.0, 5) + t_cdf(-1.0, 5) == pytest.approx(1.0)
    assert t_cdf(0.5, 3) < t_cdf(1.0, 3) < t_cdf(2.0, 3)


def test_t_quantile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.5, 0)


def test_paired_ratio_is_the_geometric_mean_with_a_t_interval() -> None:
    r = [2.0, 2.2, 1.9, 2.1]
    e = paired_ratio(r)
    logs = [math.log(x) for x in r]
    mean = sum(logs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 3)
    half = 3.182 * sd / 2
    assert e.n == 4
    assert e.value == pytest.approx(math.exp(mean))
    assert e.low == pytest.approx(math.exp(mean - half), rel=1e-4)
    assert e.high == pytest.approx(math.exp(mean + half), rel=1e-4)
    assert e.low < e.value < e.high
    assert e.half_width == pytest.approx((e.high - e.low) / 2 / e.value)


def test_paired_ratio_without_enough_rounds_has_no_interval() -> None:
    one = paired_ratio([1.5])
    assert one.value == pytest.approx(1.5) and one.n == 1
    assert math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.half_width)
    none = paired_ratio([])
    assert none.n == 0 and math.isnan(none.value)


def test_paired_ratio_drops_unusable_rounds() -> None:
    e = paired_ratio([2.0, float("nan"), 0.0, -1.0, 2.0])
    assert e.n == 2 and e.value == pytest.approx(2.0)
    assert e.low == pytest.approx(2.0) and e.high == pytest.approx(2.0)


def test_interval_covers_the_true_ratio_at_its_nominal_rate() -> None:
    """Rounds whose two windows share a drift and carry independent noise: the 95%
    interval must contain the true ratio in about 95% of 2000 seeded experiments."""
    true = 1.7
    hits = 0
    trials = 2000
    rng = random.Random(8)
    for _ in range(trials):
        ratios = []
        for _ in range(6):
            drift = rng.uniform(0.7, 1.3)  # cancels within a round
            base = 100.0 * drift * math.exp(rng.gauss(0, 0.05))
            other = 100.0 * true * drift * math.exp(rng.gauss(0, 0.05))
            ratios.append(other / base)
        e = paired_ratio(ratios)
        hits += e.low <= true <= e.high
    assert 0.93 <= hits / trials <= 0.97


def test_binomial_interval_is_the_wilson_score_interval() -> None:
    from wattscope.stats import binomial_interval

    # Published Wilson 95% intervals (Newcombe 1998, Table I): 81/263, 15/148, 0/20.
    assert binomial_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert binomial_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    lo, hi = binomial_interval(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(x) for x in binomial_interval(0, 0))
