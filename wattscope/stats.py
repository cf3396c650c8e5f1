"""The interval every ratio carries: a t-interval on per-round log ratios.

Why this statistic: a round measures every precision of one model and batch back to back,
in a shuffled order, so slow drift (host load, clocks, temperature) hits all of them alike
and cancels in the ratio of the same round. Each round therefore gives one independent,
paired ratio. Ratios are positive and their errors multiplicative, so the rounds are
averaged on the log scale: the estimate is the geometric mean of the per-round ratios and
its 95% interval is exp(mean +- t(0.975, n-1) * sd / sqrt(n)), with Student's t because the
number of rounds is small (3 to a few dozen). Pure Python so that the runner (which decides
when to stop adding rounds) and the analysis compute exactly the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t cumulative distribution function."""
    x = df / (df + t * t)
    tail = 0.5 * _betai(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (bisection on t_cdf).
    Cached: the runner asks for the same few quantiles after every round, and a
    simulation of the stopping rule asks millions of times."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def relative_half_width(value: float, low: float | None, high: float | None) -> float:
    """(high - low) / 2 / value: how every surface sizes an interval; NaN without one."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)) or not value > 0:
        return math.nan
    return (high - low) / 2.0 / value


@dataclass(frozen=True)
class RatioEstimate:
    """A ratio from ``n`` paired rounds: geometric-mean estimate and its 95% interval.
    ``low``/``high`` are NaN with fewer than two usable rounds (no interval)."""

    value: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """Relative half-width of the interval; NaN without one."""
        return relative_half_width(self.value, self.low, self.high)


NO_ESTIMATE = RatioEstimate(math.nan, math.nan, math.nan, 0)


def paired_ratio(ratios: Sequence[float], confidence: float = CONFIDENCE) -> RatioEstimate:
    """The estimate and t-interval of per-round ratios (see the module docstring).
    Non-finite or non-positive ratios are left out (a round whose window lost its
    energy reading)."""
    logs = [math.log(r) for r in ratios if math.isfinite(r) and r > 0]
    n = len(logs)
    if n == 0:
        return NO_ESTIMATE
    mean = statistics.fmean(logs)
    if n < 2:
        return RatioEstimate(math.exp(mean), math.nan, math.nan, n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * statistics.stdev(logs) / math.sqrt(n)
    return RatioEstimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def binomial_interval(hits: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / trials``: how sure a simulated
    coverage rate is (it stays inside [0, 1] and is sound near 0 and 1, where the
    coverage of a 95% interval lies). (nan, nan) without trials."""
    if trials <= 0:
        return math.nan, math.nan
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
    phat = hits / trials
    centre = (phat + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
