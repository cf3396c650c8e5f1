"""Paired rounds: per-round ratios from windows, tail removal at idle power, the ratio
interval's coverage of a known true ratio, and a whole simulated group on the sim GPU."""

from __future__ import annotations

import math
import random

import pytest

from wattscope import metrics
from wattscope.events import ConfigFinished, ConfigStarted, Window

GROUP = "M/b1"


def rwin(cid: str, phase: str, k: int, t_s: float, joules: float, calls: int, work_s: float = 1.0,
         tail_s: float = 0.05, steps: int = 32, batch: int = 1) -> Window:
    start = int(t_s * 1e9)
    work_end = start + int(work_s * 1e9)
    end = work_end + int(tail_s * 1e9)
    tokens = batch * steps * calls if phase == "decode" else batch * 16 * calls
    return Window(end, cid, phase, "measure", k, start, end, 0.0, joules, calls,
                  steps if phase == "decode" else 0, tokens, work_end, round=k, group=GROUP)


def started(cid: str, precision: str) -> ConfigStarted:
    return ConfigStarted(0, cid, 0, 2, "synthetic:M", 1, precision, True, 3, "eager", GROUP)


def test_tail_is_removed_at_idle_power_and_the_raw_figure_kept() -> None:
    w = rwin("a", "prefill", 1, 0.0, joules=110.0, calls=10, work_s=1.0, tail_s=0.1)
    assert metrics.work_energy_j(w, 100.0) == pytest.approx(100.0)  # 110 J - 100 W x 0.1 s
    assert metrics.window_value(w, "prefill_energy_j", 100.0) == pytest.approx(10.0)
    assert metrics.window_value(w, "prefill_energy_j", None) == pytest.approx(11.0)
    res, _ = metrics.config_result(started("a", "fp16"), ConfigFinished(1, "a", True), [w], 100.0, "a")
    assert res.figures["prefill_energy_j"] == pytest.approx(10.0)
    assert res.figures["prefill_energy_raw_j"] == pytest.approx(11.0)
    assert res.figures["prefill_power_w"] == pytest.approx(100.0)  # work energy over work time
    assert res.figures["idle_power_w"] == 100.0


def test_ratios_pair_windows_of_the_same_round() -> None:
    ws = []
    # Round k: both rows slowed alike by a drift d_k; the quantised row costs 2x energy.
    for k, drift in enumerate([1.0, 1.5, 0.8, 1.2], start=1):
        ws.append(rwin("fp", "prefill", k, 10 * k, 100.0 * drift, 10))
        ws.append(rwin("q", "prefill", k, 10 * k + 2, 200.0 * drift, 10))
        ws.append(rwin("fp", "decode", k, 10 * k + 4, 50.0 * drift, 2, work_s=drift))
        ws.append(rwin("q", "decode", k, 10 * k + 6, 150.0 * drift, 2, work_s=2 * drift))
    est = metrics.paired_ratios(ws, "q", "fp", None)
    # Drift cancels within each round: the ratios are exact and their intervals closed.
    assert est["prefill_energy_ratio"].value == pytest.approx(2.0)
    assert est["decode_energy_ratio"].value == pytest.approx(3.0)
    assert est["decode_speed_ratio"].value == pytest.approx(0.5)
    assert all(e.n == 4 and e.half_width == pytest.approx(0.0, abs=1e-12) for e in est.values())
    # Unpaired medians would have carried the drift: the ratio of medians is not exact.
    res, warns = metrics.config_result(started("q", "int8"), ConfigFinished(1, "q", True), ws, None, "fp", 0.03)
    assert res.figures["prefill_energy_ratio"] == pytest.approx(2.0)
    assert res.figures["prefill_energy_ratio_low"] == pytest.approx(2.0)
    assert res.figures["rounds"] == 4
    assert not warns
    base, _ = metrics.config_result(started("fp", "fp16"), ConfigFinished(1, "fp", True), ws, None, "fp", 0.03)
    assert base.figures["prefill_energy_ratio"] == 1.0 and math.isnan(base.figures["prefill_energy_ratio_low"])


def test_a_ratio_missing_its_target_is_warned_with_its_interval() -> None:
    rng = random.Random(1)
    ws = []
    for k in range(1, 4):
        ws.append(rwin("fp", "prefill", k, 10 * k, 100.0, 10))
        ws.append(rwin("q", "prefill", k, 10 * k + 2, 200.0 * rng.uniform(0.7, 1.3), 10))
        ws.append(rwin("fp", "decode", k, 10 * k + 4, 50.0, 2))
        ws.append(rwin("q", "decode", k, 10 * k + 6, 100.0, 2))
    res, warns = metrics.config_result(started("q", "nf4"), ConfigFinished(1, "q", True), ws, None, "fp", 0.03)
    text = " ".join(w.message for w in warns)
    assert "prefill energy ratio: 95% interval +-" in text and "after 3 rounds (target +-3%)" in text
    assert "decode energy ratio" not in text
    assert res.figures["prefill_energy_ratio_low"] < res.figures["prefill_energy_ratio"] < res.figures["prefill_energy_ratio_high"]


def test_interval_covers_the_true_ratio_over_many_seeds() -> None:
    """Windows with a shared slow drift, host jitter per window and a hot first round:
    the paired 95% interval holds the true ratio (1.8) in close to 95% of 1000 runs."""
    true, trials, hits = 1.8, 1000, 0
    for seed in range(trials):
        rng = random.Random(seed)
        ws = []
        phase0 = rng.uniform(0, 6.28)
        for k in range(1, 7):
            drift = 1.0 + 0.2 * math.sin(phase0 + 0.3 * k)
            hot = 1.3 if k == 1 else 1.0  # hits both rows of the round alike
            for cid, scale in (("fp", 1.0), ("q", true)):
                j = 100.0 * scale * drift * hot * math.exp(rng.gauss(0, 0.04))
                ws.append(rwin(cid, "prefill", k, 10 * k + (2 if cid == "q" else 0), j, 10))
        e = metrics.paired_ratios(ws, "q", "fp", None)["prefill_energy_ratio"]
        hits += e.low <= true <= e.high
    assert 0.93 <= hits / trials <= 0.97


def test_idle_power_prefers_the_groups_own_baseline() -> None:
    cold = Window(1, None, "idle", "idle", 1, 0, int(1e9), 0.0, 70.0, 0, 0, 0)
    mine = Window(2, None, "idle", "idle", 1, 0, int(1e9), 0.0, 115.0, 0, 0, 0, group=GROUP)
    other = Window(3, None, "idle", "idle", 1, 0, int(1e9), 0.0, 120.0, 0, 0, 0, group="N/b8")
    assert metrics.idle_power_w([cold, mine, other], GROUP) == pytest.approx(115.0)
    assert metrics.idle_power_w([cold], GROUP) == pytest.approx(70.0)  # older recordings
