from dataclasses import replace
import math
import random
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wattscope import metrics
from wattscope.events import ConfigFinished, ConfigStarted, Window

CID = "Qwen2-1.5B/b8/int8"
STARTED = ConfigStarted(t_ns=1, config_id=CID, index=0, total=1, model="synthetic:Qwen2-1.5B", batch=8,
                        precision="int8", synthetic=True, repeats=3)
FINISHED = ConfigFinished(t_ns=999, config_id=CID, ok=True)


def win(phase: str, start_s: float, seconds: float, joules: float, calls: int, steps: int = 0,
        role: str = "measure", cid: str | None = CID, e0: float = 1000.0) -> Window:
    start, end = int(start_s * 1e9), int((start_s + seconds) * 1e9)
    return Window(t_ns=end, config_id=cid, phase=phase, role=role, repeat=1, start_ns=start, end_ns=end,
                  energy_start_j=e0, energy_end_j=e0 + joules, calls=calls, steps=steps,
                  tokens=8 * steps * calls)


def test_figures_from_hand_computed_windows():
    ws = [
        win("prefill", 0, 2.0, 20.0, 10),   # 2.0 J/call, 10 W
        win("prefill", 3, 2.0, 24.0, 10),   # 2.4 J/call, 12 W
        win("prefill", 6, 2.5, 22.0, 10),   # 2.2 J/call, 8.8 W
        win("decode", 10, 4.0, 400.0, 2, steps=32),  # 200 J/run, 100 W, 8*32*2/4 = 128 tok/s
        win("decode", 15, 5.0, 420.0, 2, steps=32),  # 210 J/run, 84 W, 102.4 tok/s
        win("decode", 21, 4.0, 440.0, 2, steps=32),  # 220 J/run, 110 W, 128 tok/s
        # Never counted: warm-up, idle, another configuration's window.
        win("prefill", 30, 2.0, 999.0, 10, role="warmup"),
        win("idle", 40, 5.0, 999.0, 0, role="idle", cid=None),
        win("decode", 50, 2.0, 999.0, 1, steps=32, cid="other/b1/fp16"),
    ]
    result, warnings = metrics.config_result(STARTED, FINISHED, ws, idle_power_w=5.0)
    f = result.figures
    assert result.ok and result.reason == "" and result.t_ns == FINISHED.t_ns
    assert list(f) == list(metrics.FIGURES)
    assert f["prefill_energy_j"] == pytest.approx(2.2)
    assert f["prefill_latency_s"] == pytest.approx(0.2)
    assert f["prefill_power_w"] == pytest.approx(10.0)  # the median, as the energies
    assert (f["prefill_power_min_w"], f["prefill_power_max_w"]) == (pytest.approx(8.8), pytest.approx(12.0))
    assert f["prefill_energy_cv"] == pytest.approx(statistics.stdev([2.0, 2.4, 2.2]) / 2.2)
    # idle-subtracted: (E - 5 W x duration) / calls = 1.0, 1.4, 0.95 -> median 1.0
    assert f["prefill_energy_idle_sub_j"] == pytest.approx(1.0)
    assert f["decode_energy_j"] == pytest.approx(210.0)
    assert f["decode_tok_s"] == pytest.approx(128.0)
    assert f["decode_tok_s_cv"] == pytest.approx(statistics.stdev([128, 102.4, 128]) / statistics.fmean([128, 102.4, 128]))
    assert f["decode_energy_per_token_j"] == pytest.approx(210.0 / (8 * 32))
    assert f["decode_latency_s"] == pytest.approx(2.0)
    assert f["decode_power_w"] == pytest.approx(100.0)
    assert f["decode_energy_idle_sub_j"] == pytest.approx((420 - 25) / 2)  # medians of 190, 197.5, 210
    assert f["decode_steps"] == 32
    assert f["prefill_windows"] == 3 and f["decode_windows"] == 3
    # prefill CV 9.1%, decode energy CV 4.8%, tok/s CV 12%: all above 3%.
    assert {w.message.split(": ")[1].split(" varies")[0] for w in warnings} == {
        "prefill energy per call", "decode energy per run", "decode tok/s"}
    assert all(w.config_id == CID and w.source == "metrics" and w.t_ns == FINISHED.t_ns for w in warnings)


def test_steady_windows_raise_no_warning_and_noisy_ones_do():
    steady = [win("prefill", i * 3, 2.0, 20.0 * m, 10) for i, m in enumerate((1.0, 1.01, 0.99))]
    steady += [win("decode", 10 + i * 3, 2.0, 100.0 * m, 2, steps=32) for i, m in enumerate((1.0, 1.01, 0.99))]
    _, warnings = metrics.config_result(STARTED, FINISHED, steady, None)
    assert warnings == []
    noisy = steady[:2] + [win("prefill", 6, 2.0, 20.0 * 0.9, 10)] + steady[3:]
    _, warnings = metrics.config_result(STARTED, FINISHED, noisy, None)
    assert len(warnings) == 1 and "prefill energy per call" in warnings[0].message and "CV above 3%" in warnings[0].message


def test_single_window_cv_is_nan_not_zero():
    result, warnings = metrics.config_result(
        STARTED, FINISHED, [win("prefill", 0, 2, 20, 10), win("decode", 3, 2, 100, 2, steps=32)], None)
    assert math.isnan(result.figures["prefill_energy_cv"]) and math.isnan(result.figures["decode_tok_s_cv"])
    assert math.isnan(result.figures["prefill_energy_idle_sub_j"])  # no idle baseline
    assert warnings == []


def test_failed_config_has_reason_and_nan_figures():
    failed = ConfigFinished(t_ns=5, config_id=CID, ok=False, reason="CUDA out of memory")
    result, warnings = metrics.config_result(STARTED, failed, [win("prefill", 0, 2, 20, 10)], 50.0)
    assert not result.ok and result.reason == "CUDA out of memory"
    assert set(result.figures) == set(metrics.FIGURES)
    assert all(math.isnan(v) for v in result.figures.values())
    assert warnings == []


def test_missing_phase_gives_blank_figures_and_a_warning():
    result, warnings = metrics.config_result(STARTED, FINISHED, [win("prefill", 0, 2, 20, 10)], None)
    assert result.ok and result.figures["prefill_energy_j"] == 2.0
    assert math.isnan(result.figures["decode_energy_j"]) and result.figures["decode_windows"] == 0
    assert any("no measured decode windows" in w.message for w in warnings)


def test_windows_without_an_energy_reading_time_the_phase_but_give_no_energy():
    ws = [win("prefill", 0, 2, 20, 10), win("prefill", 3, 2, 24, 10), win("prefill", 6, 4, math.nan, 10),
          win("decode", 10, 2, 100, 2, steps=32), win("decode", 13, 2, math.nan, 2, steps=32)]
    result, warnings = metrics.config_result(STARTED, FINISHED, ws, 1.0)
    f = result.figures
    assert f["prefill_energy_j"] == pytest.approx(2.2) and f["prefill_power_max_w"] == pytest.approx(12.0)
    assert f["prefill_latency_s"] == pytest.approx(0.2)  # median of 0.2, 0.2, 0.4: all three windows time it
    assert f["decode_energy_j"] == pytest.approx(50.0) and f["decode_energy_per_token_j"] == pytest.approx(50 / 256)
    assert f["decode_tok_s"] == pytest.approx(256.0) and f["prefill_windows"] == 3
    assert any("2 of 5 measured windows have no energy reading" in w.message for w in warnings)


def test_idle_power_is_duration_weighted():
    ws = [win("idle", 0, 5.0, 350.0, 0, role="idle", cid=None), win("idle", 10, 1.0, 100.0, 0, role="idle", cid=None),
          win("prefill", 20, 2.0, 999.0, 10)]
    assert metrics.idle_power_w(ws) == pytest.approx(450.0 / 6.0)
    assert metrics.idle_power_w([win("prefill", 0, 2.0, 9.0, 10)]) is None


def test_every_figure_is_documented_with_a_unit():
    for name, fig in metrics.FIGURES.items():
        assert fig.unit and fig.meaning, name
    # Each figure with a CV names a figure that exists and a warning wording.
    assert metrics.CV_OF == {"prefill_energy_j": "prefill_energy_cv", "decode_energy_j": "decode_energy_cv",
                             "decode_tok_s": "decode_tok_s_cv"}
    assert all(metrics.FIGURES[name].words for name in metrics.CV_OF)


def test_ratio_rule_refuses_what_it_cannot_divide():
    assert metrics.ratio(4.736, 0.924) == pytest.approx(5.1255, abs=1e-4)
    for value, base in ((2.0, 0.0), (2.0, -1.0), (2.0, math.nan), (2.0, math.inf), (math.nan, 1.0),
                        (math.inf, 1.0), (None, 1.0), (1.0, None)):
        assert metrics.ratio(value, base) is None, (value, base)
    r = metrics.ratios({"prefill_energy_j": 2.0, "decode_tok_s": 50.0},
                       {"prefill_energy_j": 1.0, "decode_energy_j": 3.0, "decode_tok_s": 100.0})
    assert r == {"prefill_energy_ratio": metrics.RatioValue(2.0), "decode_energy_ratio": None,
                 "decode_speed_ratio": metrics.RatioValue(0.5)}
    assert metrics.ratios({"decode_tok_s": 50.0}, None) == metrics.NO_RATIOS


def test_cv_flags_above_the_limit_only():
    figs = {"prefill_energy_cv": 0.031, "decode_energy_cv": 0.03, "decode_tok_s_cv": 0.2}
    assert metrics.cv_flags(figs) == {"prefill_energy_j", "decode_tok_s"}
    assert metrics.cv_flags({"decode_tok_s_cv": math.nan}) == frozenset()


def test_titles_name_the_real_decode_steps():
    assert metrics.title("decode_energy_j", 32) == "Decode Energy / 32 tok (J)"
    assert metrics.title("decode_energy_j", 16, idle_subtracted=True) == "Decode Energy / 16 tok, idle-sub (J)"
    assert metrics.title("decode_energy_j") == "Decode Energy / run (J)"
    assert metrics.title("decode_speed_ratio") == "Decode Speed Ratio"
    assert metrics.common_decode_steps([32.0, 32.0, math.nan, None]) == 32
    assert metrics.common_decode_steps([32.0, 16.0]) is None
    assert metrics.common_decode_steps([]) is None


def test_rows_sort_by_model_appearance_batch_then_precision():
    rows = [("B", 1, "nf4"), ("A", 8, "fp16"), ("B", 1, "FP16"), ("A", 1, "int8"), ("B", 1, "bf16"), ("A", 1, "xx")]
    assert metrics.sorted_rows(rows, lambda r: r) == [
        ("B", 1, "FP16"), ("B", 1, "bf16"), ("B", 1, "nf4"), ("A", 1, "int8"), ("A", 1, "xx"), ("A", 8, "fp16")]
    # A given model order comes first; models it lacks follow in order of appearance.
    assert [r[0] for r in metrics.sorted_rows(rows, lambda r: r, ["A"])] == ["A"] * 3 + ["B"] * 3
    assert [metrics.precision_label(p) for p in ("fp16", "bf16", "int8", "nf4")] == ["FP16", "BF16", "INT8", "NF4"]


def test_run_meta_reads_what_the_session_writes():
    gpu = {"index": 1, "name": "NVIDIA H100", "driver_version": "580", "tdp_w": 700.0,
           "refresh_s": {"power_w": 0.1, "energy_j": None}, "signal_sources": {"power_w": "field 186"},
           "signals_absent": {"temp_c": "not supported"}}
    m = metrics.run_meta({"gpu": gpu, "gpus": [gpu], "sampler": {"signal": "power_avg_w", "rate_hz": 100.0},
                          "sweep": {"name": "seed"}, "simulated": False, "weights": "synthetic",
                          "packages": {"bitsandbytes": "0.50.2"}})
    assert (m.tdp_w, m.signal, m.sweep_name, m.weights, m.simulated) == (700.0, "power_avg_w", "seed", "synthetic", False)
    g = m.gpu
    assert (g.index, g.name, g.driver, g.refresh_ms("power_w"), g.refresh_ms("energy_j")) == (1, "NVIDIA H100", "580", 100.0, None)
    assert m.packages["bitsandbytes"] == "0.50.2"
    # Nothing recorded: unknown, never a guess from other keys.
    empty = metrics.run_meta({"gpu": {"power_limit_default_w": 300, "refresh_ms": 50}})
    assert (empty.tdp_w, empty.gpu.refresh_ms("power_w"), empty.signal, empty.sweep_name) == (None, None, "power_w", "")
    assert metrics.run_meta({}).gpu is None


window_specs = st.lists(
    st.tuples(
        st.floats(0.05, 30.0),   # seconds
        st.floats(0.01, 5000.0),  # joules
        st.integers(1, 50),       # calls
    ),
    min_size=1, max_size=7,
)


def _phase_windows(prefill: list, decode: list) -> list[Window]:
    """Prefill then decode windows from (seconds, joules, calls) specs, 1 s apart."""
    ws, t = [], 0.0
    for phase, specs in (("prefill", prefill), ("decode", decode)):
        for seconds, joules, calls in specs:
            ws.append(win(phase, t, seconds, joules, calls, steps=32 if phase == "decode" else 0))
            t += seconds + 1
    return ws


@settings(max_examples=60, deadline=None)
@given(prefill=window_specs, decode=window_specs, idle=st.floats(0.0, 100.0))
def test_figures_match_independent_numpy_arithmetic(prefill, decode, idle):
    ws = _phase_windows(prefill, decode)
    result, _ = metrics.config_result(STARTED, FINISHED, ws, idle)
    f = result.figures
    for phase in ("prefill", "decode"):
        w = [x for x in ws if x.phase == phase]
        dur = np.array([x.duration_s for x in w])
        e = np.array([x.energy_j for x in w])
        calls = np.array([x.calls for x in w])
        per_call = e / calls
        assert f[f"{phase}_energy_j"] == pytest.approx(np.median(per_call), rel=1e-9)
        assert f[f"{phase}_power_w"] == pytest.approx(np.median(e / dur), rel=1e-9)
        assert f[f"{phase}_power_min_w"] == pytest.approx(np.min(e / dur), rel=1e-9)
        assert f[f"{phase}_energy_idle_sub_j"] == pytest.approx(np.median((e - idle * dur) / calls), rel=1e-9, abs=1e-9)
        if len(w) > 1 and np.mean(per_call) > 0:
            assert f[f"{phase}_energy_cv"] == pytest.approx(np.std(per_call, ddof=1) / np.mean(per_call), rel=1e-7, abs=1e-12)
        else:
            assert math.isnan(f[f"{phase}_energy_cv"])
        assert f[f"{phase}_windows"] == len(w)
    d = [x for x in ws if x.phase == "decode"]
    assert f["decode_tok_s"] == pytest.approx(np.median([8 * 32 * x.calls / x.duration_s for x in d]), rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(prefill=window_specs, decode=window_specs, seed=st.integers(0, 1000))
def test_window_order_does_not_change_the_figures(prefill, decode, seed):
    """Replay must reproduce the live numbers exactly, whatever order windows arrive in."""
    ws = _phase_windows(prefill, decode)
    shuffled = list(ws)
    random.Random(seed).shuffle(shuffled)
    a, _ = metrics.config_result(STARTED, FINISHED, ws, 10.0)
    b, _ = metrics.config_result(STARTED, FINISHED, shuffled, 10.0)
    assert [(k, repr(v)) for k, v in a.figures.items()] == [(k, repr(v)) for k, v in b.figures.items()]


def test_counter_tail_is_removed_at_idle_power_and_kept_in_the_raw_figure() -> None:
    """A window closes at the counter update after the work. With no idle baseline the
    tail stays in the energy and the power; latency and tok/s use the work time alone."""
    ws = []
    for k in range(3):
        w = win("decode", 10.0 * k, 2.0, 500.0, 4, steps=32)
        ws.append(replace(w, work_end_ns=w.end_ns - 80_000_000))  # 80 ms tail
        p = win("prefill", 10.0 * k + 5, 2.0, 600.0, 50)
        ws.append(replace(p, work_end_ns=p.end_ns - 50_000_000))
    f, _ = metrics.config_result(STARTED, FINISHED, ws, None)
    f = f.figures
    assert f["decode_tok_s"] == pytest.approx(8 * 32 * 4 / 1.92)
    assert f["decode_power_w"] == pytest.approx(500.0 / 1.92)  # work energy over work time
    assert f["decode_energy_j"] == pytest.approx(125.0) == f["decode_energy_raw_j"]
    assert f["prefill_latency_s"] == pytest.approx(1.95 / 50)
    assert f["prefill_tail_s"] == pytest.approx(0.05)
    assert f["decode_tail_s"] == pytest.approx(0.08)
    # With the idle baseline (100 W) the tail's idle energy leaves the figure; the raw stays.
    g, _ = metrics.config_result(STARTED, FINISHED, ws, 100.0)
    g = g.figures
    assert g["decode_energy_j"] == pytest.approx((500.0 - 100.0 * 0.08) / 4)
    assert g["decode_energy_raw_j"] == pytest.approx(125.0)
    assert g["prefill_energy_j"] == pytest.approx((600.0 - 100.0 * 0.05) / 50)
    assert g["decode_power_w"] == pytest.approx((500.0 - 8.0) / 1.92)


def test_reloaded_groups_name_each_measured_group_once_with_its_engine() -> None:
    from wattscope.metrics import reloaded_groups

    rows = [("Qwen", 1, "eager", True, True), ("Qwen", 1, "eager", True, True), ("Qwen", 8, "graphs", True, True),
            ("Qwen", 8, "eager", True, False), ("Yi", 1, "eager", False, True)]
    # A failed row says nothing of how its group was measured; eager is the default, unnamed.
    assert reloaded_groups(rows) == ["Qwen b1", "Qwen b8 graphs"]
