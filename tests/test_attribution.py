"""Attribution of a serving run's energy to idle, prefill and decode tokens.

Synthetic intervals with known per-token costs and autocorrelated errors (a counter read
lagging its update moves energy between neighbouring intervals; slow drift adds a
positive correlation): the fit recovers the costs inside its intervals, and the
intervals cover the truth at close to their nominal 95% over many seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from wattscope import attribution as at

IDLE_W, A, B = 70.0, 0.02, 0.6  # W, J per prefill token, J per decode token


def _idle(rng: np.random.Generator, n: int = 30) -> at.IdleFit:
    dt = rng.uniform(0.45, 0.55, n)
    return at.fit_idle(IDLE_W * dt + rng.normal(0, 0.8, n), dt)


def _synthetic(seed: int, n: int = 200, noise_j: float = 3.0) -> tuple[at.Intervals, at.IdleFit]:
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.45, 0.55, n)
    # Bursty arrivals: prefill comes in lumps, decode follows the running batch.
    prefill = rng.poisson(3, n) * rng.integers(200, 800, n)
    batch = np.clip(np.cumsum(rng.normal(0, 2, n)) + 20, 2, 60)
    decode = rng.poisson(batch * 25 * dt)
    shift = rng.normal(0, noise_j, n + 1)  # energy moved across each edge
    drift = np.zeros(n)
    for i in range(1, n):
        drift[i] = 0.5 * drift[i - 1] + rng.normal(0, noise_j / 2)
    e = IDLE_W * dt + A * prefill + B * decode + shift[1:] - shift[:-1] + drift
    ends = np.cumsum((dt * 1e9).astype(np.int64))
    starts = np.concatenate(([0], ends[:-1]))
    return at.Intervals(starts, ends, e, prefill.astype(float), decode.astype(float)), _idle(rng)


def test_recovers_known_costs_within_their_intervals_across_seeds() -> None:
    covered = 0
    for seed in range(20):
        iv, idle = _synthetic(seed)
        f = at.fit(iv, idle)
        assert f.ok, f.reason
        assert f.prefill_j_per_token.value == pytest.approx(A, rel=0.05)
        assert f.decode_j_per_token.value == pytest.approx(B, rel=0.05)
        assert f.decode_j_per_token.half_width < 0.05
        covered += (f.prefill_j_per_token.low < A < f.prefill_j_per_token.high) and (
            f.decode_j_per_token.low < B < f.decode_j_per_token.high
        )
    # Both 95% intervals hold the truth in about 90% of seeds; 16 of 20 is 2 sd below.
    assert covered >= 16


def test_interval_coverage_is_near_nominal() -> None:
    hits_a = hits_b = 0
    seeds = range(300)
    for seed in seeds:
        f = at.fit(*_synthetic(1000 + seed))
        hits_a += f.prefill_j_per_token.low < A < f.prefill_j_per_token.high
        hits_b += f.decode_j_per_token.low < B < f.decode_j_per_token.high
    # 95% nominal; 300 draws give a binomial sd of 1.3 points.
    assert 0.90 <= hits_a / len(seeds) <= 0.99
    assert 0.90 <= hits_b / len(seeds) <= 0.99


def test_parts_sum_to_the_measured_energy_and_requests_sum_to_the_parts() -> None:
    iv, idle = _synthetic(7)
    rng = np.random.default_rng(7)
    # Three requests sharing each interval's tokens unevenly.
    w = rng.dirichlet([1, 1, 1], len(iv)).T
    pre_r, dec_r = w * iv.prefill_tokens, w * iv.decode_tokens
    f = at.fit(iv, idle)
    assert f.idle_j + f.prefill_j + f.decode_j == pytest.approx(f.measured_j, rel=1e-12)
    assert f.measured_j == pytest.approx(iv.energy_j.sum())
    rp, rd = at.split_requests(f, pre_r, dec_r)
    assert rp.sum() == pytest.approx(f.prefill_j, rel=1e-12)
    assert rd.sum() == pytest.approx(f.decode_j, rel=1e-12)
    # Each request's decode part is close to its tokens at the true cost.
    assert rd == pytest.approx(B * dec_r.sum(axis=1), rel=0.03)


def test_residual_of_an_interval_without_tokens_goes_to_idle() -> None:
    iv, idle = _synthetic(3, n=40)
    p, d, e = iv.prefill_tokens.copy(), iv.decode_tokens.copy(), iv.energy_j.copy()
    p[5] = d[5] = 0
    e[5] = IDLE_W * iv.dt_s[5] + 11.0
    f = at.fit(at.Intervals(iv.start_ns, iv.end_ns, e, p, d), idle)
    assert f.interval_prefill_j[5] == 0 and f.interval_decode_j[5] == 0
    assert f.idle_j + f.prefill_j + f.decode_j == pytest.approx(e.sum(), rel=1e-12)


def test_parts_still_sum_when_a_coefficient_comes_out_negative() -> None:
    # Prefill that costs nothing, and noise: the fitted J per prefill token is negative,
    # so intervals of prefill alone are fitted below zero; their energy goes to idle.
    iv, idle = _synthetic(11, n=60, noise_j=30.0)
    rng = np.random.default_rng(11)
    p = iv.prefill_tokens.copy()
    d = iv.decode_tokens.copy()
    d[::4] = 0  # intervals with prefill only
    e = IDLE_W * iv.dt_s + B * d + rng.normal(0, 30.0, len(iv)) - 2e-3 * p
    f = at.fit(at.Intervals(iv.start_ns, iv.end_ns, e, p, d), idle)
    assert f.prefill_j_per_token.value < 0 and not f.ok
    assert f.idle_j + f.prefill_j + f.decode_j == pytest.approx(e.sum(), rel=1e-12)


def test_idle_share_is_the_idle_energy_over_the_measured() -> None:
    iv, idle = _synthetic(2)
    f = at.fit(iv, idle)
    assert f.idle_share.value == pytest.approx(f.idle_j / iv.energy_j.sum())
    assert f.idle_share.value + (f.prefill_j + f.decode_j) / f.measured_j == pytest.approx(1.0)
    assert f.idle_share.low < f.idle_share.value < f.idle_share.high
    # Its interval is the idle power's uncertainty over the span.
    half = (f.idle_share.high - f.idle_share.low) / 2
    idle_half_w = (idle.watts.high - idle.watts.low) / 2
    assert half == pytest.approx(idle_half_w * iv.dt_s.sum() / iv.energy_j.sum(), rel=1e-6)


def test_noisy_intervals_make_the_fit_poor_with_a_reason() -> None:
    f = at.fit(*_synthetic(4, noise_j=200.0))
    assert not f.ok
    assert "explain" in f.reason and f.r2 < at.MIN_R2
    # Still sums: a poor fit gives everything to idle rather than inventing token energy.
    assert f.idle_j + f.prefill_j + f.decode_j == pytest.approx(f.measured_j)


def test_too_few_intervals_or_no_idle_is_poor() -> None:
    iv, idle = _synthetic(5, n=10)
    f = at.fit(iv, idle)
    assert not f.ok and "at least 20" in f.reason
    assert math.isnan(f.decode_j_per_token.value)
    nan_idle = at.IdleFit(at.NO_ESTIMATE, math.nan, 0)
    assert at.fit(_synthetic(5)[0], nan_idle).reason == "no idle power measured"


def test_no_decode_variation_is_poor() -> None:
    iv, idle = _synthetic(6)
    flat = at.Intervals(iv.start_ns, iv.end_ns, iv.energy_j, iv.prefill_tokens, iv.prefill_tokens * 2)
    assert "vary independently" in at.fit(flat, idle).reason


def test_idle_fit_is_energy_over_time() -> None:
    rng = np.random.default_rng(0)
    dt = rng.uniform(0.4, 0.6, 50)
    e = 65.0 * dt + rng.normal(0, 0.5, 50)
    idle = at.fit_idle(e, dt)
    assert idle.watts.value == pytest.approx(e.sum() / dt.sum(), rel=0.01)
    assert idle.watts.low < 65.0 < idle.watts.high


def test_counter_intervals_skip_repeats_and_merge_short_ones() -> None:
    t = np.array([0, 100, 200, 300, 400, 500, 600, 700, 800]) * 1_000_000
    e = np.array([0.0, 1.0, 1.0, 2.0, np.nan, 3.0, 4.0, 5.0, 6.0])
    starts, ends, de = at.counter_intervals(t, e, 0, 800_000_000, min_interval_s=0.25)
    # Fresh readings at 0, 100, 300, 500, 600, 700, 800 ms, merged to >= 250 ms.
    assert list(starts) == [0, 300_000_000]
    assert list(ends) == [300_000_000, 600_000_000]
    assert list(de) == [2.0, 2.0]
    assert len(at.counter_intervals(t, e, 0, 50_000_000)[0]) == 0


def test_request_activity_spreads_the_prompt_and_counts_later_tokens() -> None:
    starts = np.array([0, 100, 200]) * 1_000_000
    ends = np.array([100, 200, 300]) * 1_000_000
    ms = 1_000_000
    req = at.RequestTimes(prompt_tokens=100, sent_ns=50 * ms, token_ns=[150 * ms, 160 * ms, 210 * ms, 290 * ms])
    failed = at.RequestTimes(prompt_tokens=30, sent_ns=10 * ms, token_ns=[])
    p, d = at.request_activity([req, failed], starts, ends)
    assert list(p[0]) == [50.0, 50.0, 0.0]
    assert list(d[0]) == [0.0, 1.0, 2.0]
    assert p[1].sum() == 0 and d[1].sum() == 0


def test_step_activity_spreads_each_step() -> None:
    starts, ends = np.array([0, 10]), np.array([10, 20])
    p, d = at.step_activity([(5, 15, 40, 0), (15, 20, 0, 8)], starts, ends)
    assert list(p) == [20.0, 20.0]
    assert list(d) == [0.0, 8.0]
