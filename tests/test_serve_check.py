"""benchmarks/serve_check.py's step counting and per-step fit: the README's serving run 3
findings come from them."""

from __future__ import annotations

import numpy as np
import pytest


def _check():
    import benchmark_script

    return benchmark_script.load("serve_check")


def test_each_burst_of_streamed_tokens_is_one_step_counted_where_it_starts() -> None:
    sc = _check()
    ms = 1_000_000
    # Five steps 20 ms apart, each handing four sequences a token within 0.9 ms; the first
    # burst starts before the intervals and the last after them.
    bursts = [-10 * ms, 10 * ms, 30 * ms, 50 * ms, 130 * ms]
    tokens = [b + k * 300_000 for b in bursts for k in range(4)]
    starts = np.array([0, 40 * ms], dtype=np.int64)
    ends = np.array([40 * ms, 100 * ms], dtype=np.int64)
    assert sc.stream_steps(tokens, starts, ends).tolist() == [2.0, 1.0]
    # A gap shorter than STEP_GAP_MS joins two bursts into one step.
    close = [0, int(sc.STEP_GAP_MS * ms) - 1]
    assert sc.stream_steps(close, starts, ends).tolist() == [1.0, 0.0]
    assert sc.stream_steps([], starts, ends).tolist() == [0.0, 0.0]


def _phase(rng: np.random.Generator, n: int, costs: tuple[float, float, float], idle_w: float, noise_j: float):
    dt = rng.uniform(0.45, 0.55, n)
    steps = rng.poisson(5.0, n).astype(float)
    decode = steps * rng.uniform(1.0, 8.0, n)  # sequences a step vary with the load
    prefill = np.where(rng.random(n) < 0.4, rng.uniform(100, 1500, n), 0.0)
    a, b, c = costs
    energy = idle_w * dt + a * prefill + b * decode + c * steps + rng.normal(0.0, noise_j, n)
    return prefill, decode, steps, energy, dt


def _all_in_truth(costs: tuple[float, float, float], p: np.ndarray, d: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    a, b, c = costs
    tok = a * p + b * d
    to_decode = np.divide(b * d, tok, out=np.full_like(tok, 0.5), where=tok > 0)
    return ((a * p + (1 - to_decode) * c * n).sum() / p.sum(), (b * d + to_decode * c * n).sum() / d.sum())


def test_the_step_fit_recovers_known_costs_and_its_all_in_parts_add_up() -> None:
    sc = _check()
    costs = (0.012, 0.3, 0.8)
    p, d, n, e, dt = _phase(np.random.default_rng(1), 400, costs, 120.0, 0.5)
    fit = sc.step_fit(p, d, n, e, dt, 120.0)
    for name, true in zip(("j_per_prefill_token", "j_per_decode_token", "j_per_step"), costs):
        assert fit[name]["low"] <= true <= fit[name]["high"], name
    fitted = np.array([fit[k]["value"] for k in ("j_per_prefill_token", "j_per_decode_token", "j_per_step")])
    # The step energy is shared out, not lost or made: the all-in parts sum to the fitted energy.
    parts = fit["j_per_prefill_token_all_in"]["value"] * p.sum() + fit["j_per_decode_token_all_in"]["value"] * d.sum()
    assert parts == pytest.approx(float((np.column_stack([p, d, n]) @ fitted).sum()), rel=1e-9)
    want_p, want_d = _all_in_truth(costs, p, d, n)
    assert fit["j_per_decode_token_all_in"]["value"] == pytest.approx(want_d, rel=0.03)
    assert fit["j_per_prefill_token_all_in"]["value"] == pytest.approx(want_p, rel=0.1)
    assert fit["r2"] > 0.9


def test_the_all_in_interval_covers_the_true_value_near_its_nominal_rate() -> None:
    sc = _check()
    costs = (0.012, 0.3, 0.8)
    hits = 0
    trials = 300
    for seed in range(trials):
        p, d, n, e, dt = _phase(np.random.default_rng(seed), 150, costs, 120.0, 2.0)
        fit = sc.step_fit(p, d, n, e, dt, 120.0)
        _, want = _all_in_truth(costs, p, d, n)
        est = fit["j_per_decode_token_all_in"]
        hits += est["low"] <= want <= est["high"]
    assert 0.90 <= hits / trials <= 0.99


def test_a_phase_whose_terms_do_not_vary_apart_has_no_step_fit() -> None:
    sc = _check()
    p, d, n, e, dt = _phase(np.random.default_rng(2), 50, (0.01, 0.3, 0.8), 100.0, 0.5)
    assert sc.step_fit(p, np.zeros_like(d), n, e, dt, 100.0) is None  # no decode token at all


def test_a_burst_holding_one_request_twice_is_two_steps_run_together() -> None:
    sc = _check()
    ms = 1_000_000
    apart = [[0, 20 * ms, 40 * ms], [100_000, 20 * ms + 100_000]]  # one token a request a burst
    assert sc.merged_bursts(apart) == 0.0
    # Steps 2 ms apart with a 5 ms rule: every burst after the first request's first token
    # holds that request again.
    fast = [[0, 2 * ms, 4 * ms], [100_000, 2 * ms + 100_000]]
    assert sc.merged_bursts(fast) == 1.0
    assert np.isnan(sc.merged_bursts([[], []]))
