"""Every surface carries a ratio's 95% interval, and findings claim only what the
intervals support (crossovers below 1.0, prefill vs decode overhead, compare)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from wattscope import analysis, export
from wattscope.metrics import RatioValue, ratios
from wattscope.render import fmt_ratio

NAN = math.nan


def _row(precision: str, prefill: tuple, decode: tuple, speed: tuple, rounds: float = 8.0) -> dict:
    out = {"config_id": f"M/b1/{precision}", "model": "synthetic:M", "batch": 1, "precision": precision,
           "synthetic": True, "ok": True, "reason": "", "prefill_energy_j": 2.0, "decode_energy_j": 50.0,
           "decode_tok_s": 30.0, "decode_steps": 32.0, "rounds": rounds}
    for name, (v, lo, hi) in (("prefill_energy_ratio", prefill), ("decode_energy_ratio", decode),
                              ("decode_speed_ratio", speed)):
        out |= {name: v, f"{name}_low": lo, f"{name}_high": hi}
    return out


def _source(*rows: dict, label: str = "run") -> SimpleNamespace:
    return SimpleNamespace(meta={"gpu": {"name": "GPU", "tdp_w": 700.0}}, results=pd.DataFrame(rows), path=f"{label}.wattscope")


BASE = _row("fp16", (1.0, NAN, NAN), (1.0, NAN, NAN), (1.0, NAN, NAN))


def test_paired_ratios_come_with_their_interval_and_print_it() -> None:
    a = analysis.analyze(_source(BASE, _row("int8", (3.0, 2.9, 3.1), (2.0, 1.9, 2.1), (0.3, 0.29, 0.31))))
    r = a.phases.set_index("precision").loc["INT8"]
    assert (r["prefill_energy_ratio"], r["prefill_energy_ratio_low"], r["prefill_energy_ratio_high"]) == (3.0, 2.9, 3.1)
    assert r["rounds"] == 8
    assert fmt_ratio(RatioValue(3.0, 2.9, 3.1)) == "3.00x ±3.3%"
    assert fmt_ratio(RatioValue(3.0)) == "3.00x"
    md = export.export(a, "md", "phases")
    assert "| 3.00x ±3.3% | 2.00x ±5.0% | 0.30x ±3.3% |" in md
    j = json.loads(export.export(a, "json", "phases"))["phases"]
    int8 = next(x for x in j if x["precision"] == "INT8")
    assert int8["prefill_energy_ratio_ci"] == [2.9, 3.1]
    keys = list(int8)
    assert keys.index("prefill_energy_ratio_ci") == keys.index("prefill_energy_ratio") + 1
    fp16 = next(x for x in j if x["precision"] == "FP16")
    assert fp16["prefill_energy_ratio"] == 1.0 and fp16["prefill_energy_ratio_ci"] is None


def test_a_crossover_needs_the_whole_interval_below_one() -> None:
    a = analysis.analyze(_source(
        BASE,
        _row("int8", (1.5, 1.4, 1.6), (0.8, 0.7, 0.9), (0.5, 0.45, 0.55)),   # decided crossover
        _row("nf4", (1.5, 1.4, 1.6), (0.95, 0.85, 1.05), (0.9, 0.8, 1.0)),  # undecided
    ))
    f = a.findings
    assert [(c["precision"], c["phase"]) for c in f["crossovers"]] == [("INT8", "decode")]
    assert [(c["precision"], c["phase"]) for c in f["crossovers_undecided"]] == [("NF4", "decode")]
    st = f["statements"]["crossovers"]
    assert "claimed only where the whole 95% interval lies below 1.0" in st
    assert "INT8 decode (0.80x [0.70, 0.90])" in st and "Undecided" in st and "NF4 decode (0.95x [0.85, 1.05])" in st


def test_prefill_versus_decode_counts_only_separated_intervals() -> None:
    b8 = [dict(r, batch=8) for r in (
        BASE,
        _row("nf4", (1.0, 0.99, 1.01), (1.2, 1.15, 1.25), (1.0, 0.98, 1.02)),  # decode larger, separated
    )]
    a = analysis.analyze(_source(
        BASE,
        _row("int8", (3.0, 2.9, 3.1), (2.0, 1.9, 2.1), (0.3, 0.29, 0.31)),   # prefill larger, separated
        _row("nf4", (1.5, 1.3, 1.7), (1.4, 1.2, 1.6), (0.9, 0.8, 1.0)),    # overlap: undecided
        *b8,
    ))
    p = a.findings["prefill_exceeds_decode"]
    assert p["all"] is False
    assert [(e["batch"], e["precision"]) for e in p["exceptions"]] == [(8, "NF4")]
    assert [(e["batch"], e["precision"]) for e in p["undecided"]] == [(1, "NF4")]
    st = a.findings["statements"]["prefill_exceeds_decode"]
    assert "in 1 of the 2 quantised configurations whose intervals separate" in st
    assert "undecided (intervals overlap): M batch 1 NF4" in st


def test_imported_tables_keep_point_ratios_and_say_they_have_no_interval() -> None:
    a = analysis.analyze("tests/data/seed_rtx_pro_6000.csv")
    assert a.phases["prefill_energy_ratio_low"].isna().all()
    assert a.findings["prefill_exceeds_decode"]["undecided"] == []
    assert "no interval" in a.notes["seed_rtx_pro_6000"]["intervals"]


def test_compare_says_which_ratios_differ_beyond_their_intervals() -> None:
    a = _source(BASE, _row("int8", (3.0, 2.9, 3.1), (2.0, 1.9, 2.1), (0.30, 0.29, 0.31)), label="a")
    b = _source(BASE, _row("int8", (3.5, 3.3, 3.7), (2.05, 1.95, 2.15), (0.30, 0.28, 0.32)), label="b")
    t = analysis.compare(a, b).table.set_index("precision").loc["INT8"]
    assert (t["prefill_energy_ratio_beyond_ci"], t["decode_energy_ratio_beyond_ci"]) == ("yes", "no")
    text = export.format_compare(analysis.compare(a, b), fmt="md")
    assert "+0.50 beyond CI" in text and "+0.05 beyond" not in text
    seed = analysis.compare(a, "tests/data/seed_rtx_pro_6000.csv").table
    assert set(seed["prefill_energy_ratio_beyond_ci"]) <= {""}  # a table without intervals decides nothing


def test_live_rows_take_the_recorded_paired_ratio() -> None:
    figs = {"prefill_energy_j": 2.0, "decode_energy_j": 50.0, "decode_tok_s": 30.0,
            "prefill_energy_ratio": 1.9, "prefill_energy_ratio_low": 1.8, "prefill_energy_ratio_high": 2.0}
    base = {"prefill_energy_j": 1.0, "decode_energy_j": 25.0, "decode_tok_s": 60.0}
    r = ratios(figs, base)
    assert r["prefill_energy_ratio"] == RatioValue(1.9, 1.8, 2.0)  # paired, not 2.0 / 1.0
    assert r["decode_energy_ratio"] == RatioValue(2.0)  # no paired figure: the plain rule
    assert ratios(figs, None)["prefill_energy_ratio"] is None  # no baseline row: no ratio


def _repeatability():
    import benchmark_script

    return benchmark_script.load("repeatability")


def test_cross_run_criterion_uses_the_standard_error_of_the_difference() -> None:
    rep = _repeatability()
    from wattscope.stats import t_quantile

    def est(value: float, se: float, rounds: int) -> object:
        h = t_quantile(0.975, rounds - 1) * se
        return rep.Estimate(RatioValue(value, value * math.exp(-h), value * math.exp(h)), rounds)

    a = est(1.00, 0.01, 1000)
    assert a.se == pytest.approx(0.01)
    # Difference 2.5%: beyond run b's own interval (1.96%), within the difference's (2.77%).
    b = est(math.exp(0.025), 0.01, 1000)
    assert not rep._inside(a, b) and rep._consistent(a, b)
    assert not rep._consistent(a, est(math.exp(0.03), 0.01, 1000))
    # Calibrated intervals of equal width: each inside the other only ~83% of the time.
    assert rep._expected_inclusion(a, est(1.0, 0.01, 1000)) == pytest.approx(0.834, abs=0.002)
    # Few rounds: the t of the Welch degrees of freedom, not 1.96.
    c, d = est(1.0, 0.01, 3), est(math.exp(0.035), 0.01, 3)  # Welch df 4: t 2.78, not 1.96
    assert rep._consistent(c, d) and not rep._consistent(est(1.0, 0.01, 1000), est(math.exp(0.035), 0.01, 1000))
    assert rep._expected_inclusion(None, a) == 0.0 and not rep._consistent(a, None)
