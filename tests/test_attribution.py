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
from serve_stream import all_in_truth

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
    # Fresh readings at 0, 100, 300, 500, 600, 700, 800 ms, merged to >= 250 ms; a counter
    # always current (refresh 0) has its edges at the reads.
    assert list(starts) == [0, 300_000_000]
    assert list(ends) == [300_000_000, 600_000_000]
    assert list(de) == [2.0, 2.0]
    assert len(at.counter_intervals(t, e, 0, 50_000_000)[0]) == 0


def test_counter_edges_sit_where_the_refresh_most_likely_happened() -> None:
    ms = 1_000_000
    # Reads every 50 ms of a counter refreshed every 100 ms: each change happened after the
    # read before it, so its edge is 25 ms back.
    t = np.arange(0, 1000, 50) * ms
    e = np.floor((t / ms + 30) / 100)  # refreshes at 70, 170, 270... ms
    starts, ends, de = at.counter_intervals(t, e, 60 * ms, 1000 * ms, min_interval_s=0.15, refresh_s=0.1)
    assert list(starts[:3]) == [75 * ms, 275 * ms, 475 * ms]  # the refreshes at 70, 270, 470 ms
    assert set(de) == {2.0}
    # A counter refreshed every 10 ms and read every 50: at most 10 ms old, so 5 ms back.
    starts, _, _ = at.counter_intervals(t, t / ms, 10 * ms, 1000 * ms, min_interval_s=0.1, refresh_s=0.01)
    assert list(starts[:3]) == [45 * ms, 145 * ms, 245 * ms]
    # A window that opens on a repeated reading: that reading saw no refresh (the one at
    # 100 ms did), so the first edge is the next refresh's, not the window's first reading.
    t = np.arange(0, 600, 50) * ms
    e = np.floor((t / ms + 30) / 100)
    starts, _, _ = at.counter_intervals(t, e, 110 * ms, 600 * ms, min_interval_s=0.1, refresh_s=0.1)
    assert starts[0] == 175 * ms


def _brute_spread(a, b, w, starts, ends):
    out = np.zeros(len(starts))
    for x0, x1, amount in zip(a, b, w):
        if x1 > x0:
            out += amount * np.clip(np.minimum(ends, x1) - np.maximum(starts, x0), 0, None) / (x1 - x0)
        else:
            out += amount * ((starts <= x0) & (x0 < ends))
    return out


def test_spread_puts_each_amount_evenly_over_its_span() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        base = 10**13  # monotonic clocks of long-running hosts
        edges = base + np.cumsum(rng.integers(1, 500, 30)) * 1_000_000
        a = base + rng.integers(-50, 16_000, 200) * 1_000_000
        b = a + rng.integers(0, 400, 200) * 1_000_000 * (rng.random(200) < 0.8)  # some of no length
        w = rng.uniform(0, 100, 200)
        got = at.spread(a, b, w, edges[:-1], edges[1:])
        assert got == pytest.approx(_brute_spread(a, b, w, edges[:-1], edges[1:]), abs=1e-6)
    assert at.spread(np.array([1.0]), np.array([2.0]), np.array([3.0]), np.array([]), np.array([])).shape == (0,)


MS = 1_000_000


def _engine(requests: list[tuple[int, int, int]], step_ms: int = 20) -> list[at.RequestTimes]:
    """Requests (sent ms, prompt tokens, tokens) through an engine whose steps last
    ``step_ms``: a request sent during a step is admitted at the next, and every running
    request gets its token at the end of each step, 0.1 ms apart."""
    times: list[list[int]] = [[] for _ in requests]
    t = 0
    pending = sorted(range(len(requests)), key=lambda i: requests[i][0])
    running: list[int] = []
    while pending or running:
        if not running and pending and requests[pending[0]][0] > t:
            t = requests[pending[0]][0]  # idle until the next request
        while pending and requests[pending[0]][0] <= t:
            running.append(pending.pop(0))
        t += step_ms
        for k, i in enumerate(running):
            times[i].append(t * MS + k * 100_000)
        running = [i for i in running if len(times[i]) < requests[i][2]]
    return [at.RequestTimes(p, s * MS, ts) for (s, p, _), ts in zip(requests, times)]


def test_bursts_are_steps_that_run_from_the_burst_before() -> None:
    reqs = _engine([(0, 100, 3), (5, 50, 2), (200, 10, 1)])
    b = at.bursts(reqs)
    # Steps end at 20, 40, 60 ms (the second request admitted at 20), then idle until 200.
    assert list(b.first_ns) == [20 * MS, 40 * MS, 60 * MS, 220 * MS]
    assert list(b.begin_ns) == [0, 20 * MS, 40 * MS + 100_000, 200 * MS]
    assert [list(x) for x in b.of_token] == [[0, 1, 2], [1, 2], [3]]
    starts, ends = np.array([0, 30, 100]) * MS, np.array([30, 100, 300]) * MS
    p, d = at.request_activity(reqs, starts, ends, b)
    # The first prompt over the first step (0-20 ms); the second over the second (20-40).
    assert p[0].tolist() == pytest.approx([100.0, 0.0, 0.0])
    assert p[1].tolist() == pytest.approx([25.0, 25.0, 0.0])
    assert p[2].tolist() == pytest.approx([0.0, 0.0, 10.0])
    # Later tokens over their own steps: the first request's at 20-40 and 40-60 ms.
    assert d[0].tolist() == pytest.approx([0.5, 1.5, 0.0])
    steps = at.stream_steps(b)
    assert steps is not None and steps.per_interval(starts, ends).tolist() == pytest.approx([1.5, 1.5, 1.0])
    # Each step's own work: the first prompt, then the second with the first's decode token.
    assert steps.prefill_tokens.tolist() == [100.0, 50.0, 0.0, 10.0]
    assert steps.decode_tokens.tolist() == [0.0, 1.0, 2.0, 0.0]
    # The prompt and decode tokens per interval are the steps' own, spread the same way.
    assert steps.per_interval(starts, ends, steps.prefill_tokens) == pytest.approx(p.sum(axis=0))
    assert steps.per_interval(starts, ends, steps.decode_tokens) == pytest.approx(d.sum(axis=0))
    assert b.merged == 0.0


def test_a_step_after_an_idle_spell_begins_when_its_last_request_came() -> None:
    # The engine was idle; two requests sent at 100 and 103 ms were admitted together and
    # prefilled in one step that returned both first tokens at 150 ms.
    reqs = [at.RequestTimes(40, 100 * MS, [150 * MS]), at.RequestTimes(60, 103 * MS, [150 * MS + 100_000])]
    b = at.bursts(reqs)
    assert list(b.begin_ns) == [103 * MS] and list(b.first_ns) == [150 * MS]
    assert b.prefill_tokens.tolist() == [100.0]


def test_merged_bursts_drop_the_step_term() -> None:
    # Steps 2 ms apart under a 5 ms gap rule: the bursts run together, each holding a
    # request twice, so the steps are not counted.
    reqs = _engine([(0, 100, 6), (1, 100, 6)], step_ms=2)
    b = at.bursts(reqs)
    assert b.merged > at.MAX_MERGED_BURSTS
    assert at.stream_steps(b) is None
    assert np.isnan(at.bursts([at.RequestTimes(5, 0, [])]).merged)


def test_a_request_without_tokens_has_no_activity() -> None:
    starts, ends = np.array([0, 100]) * MS, np.array([100, 200]) * MS
    reqs = [at.RequestTimes(100, 10 * MS, [50 * MS, 60 * MS]), at.RequestTimes(30, 10 * MS, [])]
    p, d = at.request_activity(reqs, starts, ends)
    assert p[1].sum() == 0 and d[1].sum() == 0
    assert p[0].sum() == pytest.approx(100.0) and d[0].sum() == pytest.approx(1.0)


def test_logged_steps_spread_each_step() -> None:
    starts, ends = np.array([0, 10]), np.array([10, 20])
    steps = at.logged_steps([(5, 15, 40, 0), (15, 20, 0, 8)])
    assert list(steps.per_interval(starts, ends, steps.prefill_tokens)) == pytest.approx([20.0, 20.0])
    assert list(steps.per_interval(starts, ends, steps.decode_tokens)) == pytest.approx([0.0, 8.0])
    assert list(steps.per_interval(starts, ends)) == pytest.approx([0.5, 1.5])


STEP_COSTS = (0.012, 0.3, 0.8)  # J per prefill token, per decode token, per step


def _with_steps(rng: np.random.Generator, n: int, noise_j: float) -> tuple[at.Intervals, at.IdleFit]:
    """Intervals of an engine whose steps each cost STEP_COSTS: a varying number of steps
    an interval, each decoding a varying batch, some prefilling a prompt."""
    dt = rng.uniform(0.45, 0.55, n)
    ends = np.cumsum((dt * 1e9).astype(np.int64))
    starts = np.concatenate(([0], ends[:-1]))
    count = rng.poisson(5.0, n) + 1
    k = int(count.sum())
    interval = np.repeat(np.arange(n), count)
    slot = np.concatenate([np.arange(c) for c in count])
    width = (ends - starts)[interval] / count[interval]
    begin = (starts[interval] + slot * width).astype(np.int64)
    steps = at.Steps(begin, (begin + width).astype(np.int64),
                     np.where(rng.random(k) < 0.1, rng.integers(100, 1500, k), 0).astype(float),
                     np.repeat(rng.integers(1, 9, n), count).astype(float))  # sequences a step vary with the load
    a, b, c = STEP_COSTS
    per_step = a * steps.prefill_tokens + b * steps.decode_tokens + c
    energy = IDLE_W * dt + np.bincount(interval, per_step, n) + rng.normal(0.0, noise_j, n)
    prefill = np.bincount(interval, steps.prefill_tokens, n)
    decode = np.bincount(interval, steps.decode_tokens, n)
    return at.Intervals(starts, ends, energy, prefill, decode, steps), _idle(rng)


def _all_in_truth(steps: at.Steps) -> tuple[float, float]:
    return all_in_truth(steps.prefill_tokens, steps.decode_tokens, STEP_COSTS)


def test_the_step_term_recovers_known_costs_and_shares_the_step_energy_out() -> None:
    iv, idle = _with_steps(np.random.default_rng(1), 400, 0.5)
    f = at.fit(iv, idle)
    assert f.ok and f.terms == 3
    assert f.step_j.value == pytest.approx(STEP_COSTS[2], rel=0.1)
    assert iv.steps is not None
    want_p, want_d = _all_in_truth(iv.steps)
    assert f.decode_j_per_token.value == pytest.approx(want_d, rel=0.03)
    assert f.prefill_j_per_token.value == pytest.approx(want_p, rel=0.05)
    # The step energy is shared out, not lost or made: the all-in figures times the tokens
    # are the fitted energy above idle, and the parts with their residuals the measured.
    fitted = f.prefill_j_per_token.value * iv.prefill_tokens.sum() + f.decode_j_per_token.value * iv.decode_tokens.sum()
    above = iv.energy_j.sum() - idle.watts.value * iv.dt_s.sum()
    assert fitted == pytest.approx(above, rel=0.01)
    assert f.idle_j + f.prefill_j + f.decode_j == pytest.approx(f.measured_j, rel=1e-12)
    assert f.r2 > 0.9
    # Without the steps the same intervals fit worse: the step energy rides on the tokens.
    two = at.fit(at.Intervals(iv.start_ns, iv.end_ns, iv.energy_j, iv.prefill_tokens, iv.decode_tokens), idle)
    assert math.isnan(two.step_j.value) and two.r2 < f.r2


def test_the_all_in_intervals_cover_the_true_values_near_their_nominal_rate() -> None:
    hits_p = hits_d = 0
    trials = 300
    for seed in range(trials):
        iv, idle = _with_steps(np.random.default_rng(seed), 150, 2.0)
        f = at.fit(iv, idle)
        assert iv.steps is not None
        truth = _all_in_truth(iv.steps)
        hits_p += f.prefill_j_per_token.low <= truth[0] <= f.prefill_j_per_token.high
        hits_d += f.decode_j_per_token.low <= truth[1] <= f.decode_j_per_token.high
    assert 0.90 <= hits_p / trials <= 0.99
    assert 0.90 <= hits_d / trials <= 0.99


def test_steps_that_do_not_vary_apart_from_the_tokens_leave_the_term_out() -> None:
    iv, idle = _with_steps(np.random.default_rng(2), 60, 0.5)
    assert iv.steps is not None
    # Every step decodes four sequences: the steps are the decode tokens over four, so a
    # step's cost cannot be told from a decode token's and rides on it.
    four = at.Steps(iv.steps.begin_ns, iv.steps.end_ns, iv.steps.prefill_tokens, np.full(len(iv.steps), 4.0))
    p = four.per_interval(iv.start_ns, iv.end_ns, four.prefill_tokens)
    d = four.per_interval(iv.start_ns, iv.end_ns, four.decode_tokens)
    a, b, c = STEP_COSTS
    rng = np.random.default_rng(3)
    e = IDLE_W * iv.dt_s + a * p + b * d + c * four.per_interval(iv.start_ns, iv.end_ns) + rng.normal(0, 0.5, len(iv))
    f = at.fit(at.Intervals(iv.start_ns, iv.end_ns, e, p, d, four), idle)
    assert f.ok and f.terms == 2 and math.isnan(f.step_j.value)
    assert f.decode_j_per_token.low < b + c / 4 < f.decode_j_per_token.high
    # Nearly so is the same: a step count a billionth off the decode tokens over four.
    jitter = at.Steps(four.begin_ns, four.end_ns, four.prefill_tokens, four.decode_tokens * (1 + 1e-9 * rng.random(len(four))))
    d2 = jitter.per_interval(iv.start_ns, iv.end_ns, jitter.decode_tokens)
    near = at.fit(at.Intervals(iv.start_ns, iv.end_ns, e, p, d2, jitter), idle)
    assert near.terms == 2 and near.decode_j_per_token.value == pytest.approx(f.decode_j_per_token.value, rel=1e-6)
