"""`wattscope compare` on two serving recordings: rows matched by precision and offered
rate, B/A of J per prefill and per decode token with a log-scale delta-method interval,
the sweep compare's "beyond CI" mark, and poor fits shown with their reason."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from serve_stream import StreamRecording, event_stream

from wattscope import cli
from wattscope.analysis import beyond_ci
from wattscope.attribution import Estimate, ratio_estimate, token_dof
from wattscope.metrics import RatioValue
from wattscope.recording import load
from wattscope.serve.analysis import analyse, rates_frame
from wattscope.serve.compare import FIGURES, compare_serving
from wattscope.serve_report import format_serving
from wattscope.stats import t_quantile

ROOT = Path(__file__).resolve().parent.parent
SEED_REC = ROOT / "recordings" / "h100-seed.wattscope"
SEED_CSV = ROOT / "tests" / "data" / "seed_rtx_pro_6000.csv"


def _t_interval(value: float, se: float, dof: int) -> Estimate:
    half = t_quantile(0.975, dof) * se
    return Estimate(value, value - half, value + half)


# --------------------------------------------------------------------------- the ratio


def test_ratio_interval_is_the_log_delta_method_with_welch_dof() -> None:
    a, b = _t_interval(0.2, 0.01, 40), _t_interval(0.3, 0.03, 10)
    r = ratio_estimate(a, 40, b, 10)
    va, vb = (0.01 / 0.2) ** 2, (0.03 / 0.3) ** 2
    dof = (va + vb) ** 2 / (va**2 / 40 + vb**2 / 10)
    half = t_quantile(0.975, dof) * math.sqrt(va + vb)
    assert r.value == pytest.approx(1.5, rel=1e-15)
    assert r.low == pytest.approx(1.5 * math.exp(-half), rel=1e-9)
    assert r.high == pytest.approx(1.5 * math.exp(half), rel=1e-9)
    assert 10 < dof < 50


def test_equal_sides_give_twice_the_degrees_of_freedom() -> None:
    a = _t_interval(1.0, 0.05, 30)
    r = ratio_estimate(a, 30, a, 30)
    half = t_quantile(0.975, 60) * math.sqrt(2) * 0.05
    assert (r.value, r.low, r.high) == pytest.approx((1.0, math.exp(-half), math.exp(half)), rel=1e-9)


def test_no_interval_or_no_value_gives_no_interval_or_no_ratio() -> None:
    point = Estimate(0.2, math.nan, math.nan)
    r = ratio_estimate(point, 30, _t_interval(0.4, 0.01, 30), 30)
    assert r.value == pytest.approx(2.0) and math.isnan(r.low) and math.isnan(r.high)
    assert math.isnan(ratio_estimate(Estimate(math.nan, math.nan, math.nan), 30, point, 30).value)


def test_beyond_ci_is_one_rule_for_sweeps_and_serving() -> None:
    assert beyond_ci(RatioValue(1.0, 0.9, 1.1), RatioValue(1.3, 1.2, 1.4)) == "yes"
    assert beyond_ci(RatioValue(1.0, 0.9, 1.1), RatioValue(1.15, 1.05, 1.25)) == "no"
    assert beyond_ci(RatioValue(1.0), RatioValue(1.3, 1.2, 1.4)) == ""
    assert beyond_ci(None, RatioValue(1.3, 1.2, 1.4)) == ""


# ------------------------------------------------------------------- two recordings


def _frame(path):
    with load(path) as rec:
        return rates_frame(analyse(rec))


@pytest.mark.process
def test_rows_match_by_precision_and_rate_with_b_over_a(serve_recordings) -> None:
    a, b = serve_recordings["a"], serve_recordings["b"]
    fa, fb = _frame(a), _frame(b)
    c = compare_serving(a, b)
    t = c.table
    assert c.labels == ("a", "b")
    assert list(zip(t["precision"], t["offered_rps"])) == [("fp16", 6.0), ("fp16", 18.0), ("nf4", 6.0), ("nf4", 18.0)]
    assert set(t["present"]) == {"both"}
    both_ok = 0
    for _, row in t.iterrows():
        ra = fa[(fa["precision"] == row["precision"]) & (fa["offered_rps"] == row["offered_rps"])].iloc[0]
        rb = fb[(fb["precision"] == row["precision"]) & (fb["offered_rps"] == row["offered_rps"])].iloc[0]
        for side, r in (("a", ra), ("b", rb)):
            assert row[f"fit_{side}"] == ("ok" if r["fit_ok"] else f"fit poor: {r['fit_reason']}")
        for fig in FIGURES:
            for side, r in (("a", ra), ("b", rb)):  # each side's numbers, exactly its own table's
                for end in ("", "_low", "_high"):
                    assert row[f"{fig}{end}_{side}"] == pytest.approx(r[f"{fig}{end}"], nan_ok=True, rel=0)
            if not (ra["fit_ok"] and rb["fit_ok"]):
                assert math.isnan(row[f"{fig}_ratio"]) and row[f"{fig}_beyond_ci"] == ""
                continue
            # B/A and its interval from the two fits' standard errors (t(n - k) intervals).
            sa = (ra[f"{fig}_high"] - ra[f"{fig}_low"]) / 2 / t_quantile(0.975, token_dof(ra["intervals"], ra["fit_terms"]))
            sb = (rb[f"{fig}_high"] - rb[f"{fig}_low"]) / 2 / t_quantile(0.975, token_dof(rb["intervals"], rb["fit_terms"]))
            va, vb = (sa / ra[fig]) ** 2, (sb / rb[fig]) ** 2
            dof = (va + vb) ** 2 / (va**2 / token_dof(ra["intervals"], ra["fit_terms"]) + vb**2 / token_dof(rb["intervals"], rb["fit_terms"]))
            half = t_quantile(0.975, dof) * math.sqrt(va + vb)
            ratio = rb[fig] / ra[fig]
            assert row[f"{fig}_ratio"] == ratio
            assert row[f"{fig}_ratio_low"] == pytest.approx(ratio * math.exp(-half), rel=1e-9)
            assert row[f"{fig}_ratio_high"] == pytest.approx(ratio * math.exp(half), rel=1e-9)
            apart = ra[f"{fig}_low"] > rb[f"{fig}_high"] or ra[f"{fig}_high"] < rb[f"{fig}_low"]
            assert row[f"{fig}_beyond_ci"] == ("yes" if apart else "no")
        if ra["fit_ok"] and rb["fit_ok"]:
            both_ok += 1
            # B's decode costs twice A's on the simulated engine: a difference beyond the intervals.
            assert row["decode_j_per_token_beyond_ci"] == "yes"
            assert 1.5 < row["decode_j_per_token_ratio"] < 2.6
    assert both_ok > 0


@pytest.mark.process
def test_poor_fits_have_no_ratio_and_rows_of_one_side_say_so(serve_recordings) -> None:
    a, poor = serve_recordings["a"], serve_recordings["poor"]
    fp = _frame(poor)
    t = compare_serving(a, poor).table
    where = {(r["precision"], r["offered_rps"]): r for _, r in t.iterrows()}
    assert {k: r["present"] for k, r in where.items()} == {
        ("fp16", 6.0): "both", ("fp16", 18.0): "A only", ("fp16", 30.0): "B only", ("nf4", 6.0): "A only",
        ("nf4", 18.0): "A only"}
    row = where[("fp16", 6.0)]
    reason = fp[fp["offered_rps"] == 6.0]["fit_reason"].iloc[0]
    assert reason and row["fit_b"] == f"fit poor: {reason}"
    for fig in FIGURES:
        assert math.isnan(row[f"{fig}_ratio"]) and math.isnan(row[f"{fig}_b"]) and row[f"{fig}_beyond_ci"] == ""
    assert where[("fp16", 30.0)]["fit_a"] == "" and where[("nf4", 6.0)]["fit_b"] == ""


@pytest.mark.process
def test_cli_compare_prints_the_table_in_each_format(serve_recordings, capsys) -> None:
    a, b, poor = serve_recordings["a"], serve_recordings["b"], serve_recordings["poor"]
    t = compare_serving(a, b).table
    assert cli.main(["compare", str(a), str(b), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["a"], doc["b"]) == ("a", "b")
    for got, (_, row) in zip(doc["serving"], t.iterrows()):
        for fig in FIGURES:
            for col in (fig + "_a", fig + "_b", fig + "_ratio", fig + "_ratio_low", fig + "_ratio_high"):
                assert (got[col] is None and math.isnan(row[col])) or got[col] == pytest.approx(row[col], rel=1e-14)
            assert got[fig + "_beyond_ci"] == row[fig + "_beyond_ci"]
    assert cli.main(["compare", str(a), str(b)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("## Compare serving: A = a, B = b\n")
    assert "| Precision | Offered /s | J/prefill tok A | J/prefill tok B | J/prefill tok B/A |" in md
    marked = sum(r["decode_j_per_token_beyond_ci"] == "yes" for _, r in t.iterrows())
    assert md.count(" beyond CI |") == marked + sum(r["prefill_j_per_token_beyond_ci"] == "yes" for _, r in t.iterrows())
    assert "delta method on the log scale" in md
    assert cli.main(["compare", str(a), str(poor), "--format", "text"]) == 0
    text = capsys.readouterr().out
    reason = _frame(poor)["fit_reason"].iloc[0]
    assert f"B: fit poor: {reason}" in text and "A only" in text and "B only" in text


@pytest.mark.process
def test_a_sweep_against_a_serving_recording_exits_2_naming_both(serve_recordings, capsys) -> None:
    a = serve_recordings["a"]
    assert cli.main(["compare", str(SEED_REC), str(a)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (f"wattscope: error: compare: {SEED_REC} is a sweep recording and {a} is a serving recording "
                       "(serve-bench); compare reads two sweeps or two serving recordings\n")
    assert cli.main(["compare", str(a), str(SEED_CSV)]) == 2
    assert "is a sweep table" in capsys.readouterr().err


def test_each_precision_is_set_against_fp16_at_the_same_rate() -> None:
    results = analyse(StreamRecording(event_stream()))
    df = rates_frame(results)
    fp16 = df[df["precision"] == "fp16"]
    assert (fp16["decode_vs_fp16"] == 1.0).all() and fp16["decode_vs_fp16_low"].isna().all()
    for r in (x for x in results if x.precision == "nf4"):
        base = next(b for b in results if b.precision == "fp16" and b.index == r.index)
        want = ratio_estimate(base.fit.decode_j_per_token, token_dof(base.fit.n_intervals, base.fit.terms),
                              r.fit.decode_j_per_token, token_dof(r.fit.n_intervals, r.fit.terms))
        row = df[(df["precision"] == "nf4") & (df["offered_rps"] == r.offered_rps)].iloc[0]
        assert (row["decode_vs_fp16"], row["decode_vs_fp16_low"], row["decode_vs_fp16_high"]) == pytest.approx(
            (want.value, want.low, want.high))
        # The stream's two precisions cost the same: the ratio's interval holds 1.
        assert want.low < 1.0 < want.high
    text = format_serving(results, "md")
    assert "| nf4 | 4.00 |" in text and "J/decode tok vs FP16" in text
    # A poor FP16 fit leaves its rate without ratios.
    poor = [dataclasses.replace(r, fit=dataclasses.replace(r.fit, ok=False, reason="poor")) if r.precision == "fp16"
            and r.index == 0 else r for r in results]
    df = rates_frame(poor)
    assert df[(df["precision"] == "nf4") & (df["offered_rps"] == 4.0)]["decode_vs_fp16"].isna().all()
    assert df[(df["precision"] == "nf4") & (df["offered_rps"] == 12.0)]["decode_vs_fp16"].notna().all()
