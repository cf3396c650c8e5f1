from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import synthetic_run
from wattscope import analysis, metrics
from wattscope.tables import TableError, read_table

SEED_CSV = Path(__file__).parent / "data" / "seed_rtx_pro_6000.csv"

# The seed study's printed ratio columns (Section 2), its published numbers:
# (model, batch, precision) -> (prefill energy ratio, decode energy ratio, decode speed ratio)
SEED_RATIOS = {
    ("Qwen2-1.5B", 1, "FP16"): (1.00, 1.00, 1.00),
    ("Qwen2-1.5B", 1, "INT8"): (5.12, 3.18, 0.15),
    ("Qwen2-1.5B", 1, "NF4"): (3.86, 1.67, 0.39),
    ("Qwen2-1.5B", 8, "FP16"): (1.00, 1.00, 1.00),
    ("Qwen2-1.5B", 8, "INT8"): (4.39, 3.21, 0.14),
    ("Qwen2-1.5B", 8, "NF4"): (3.40, 2.77, 0.31),
    ("Qwen2.5-3B", 1, "FP16"): (1.00, 1.00, 1.00),
    ("Qwen2.5-3B", 1, "INT8"): (4.20, 2.54, 0.15),
    ("Qwen2.5-3B", 1, "NF4"): (4.07, 1.48, 0.39),
    ("Qwen2.5-3B", 8, "FP16"): (1.00, 1.00, 1.00),
    ("Qwen2.5-3B", 8, "INT8"): (3.45, 2.62, 0.14),
    ("Qwen2.5-3B", 8, "NF4"): (3.25, 2.89, 0.30),
    ("Yi-1.5-6B", 8, "FP16"): (1.00, 1.00, 1.00),
    ("Yi-1.5-6B", 8, "INT8"): (2.50, 1.88, 0.16),
    ("Yi-1.5-6B", 8, "NF4"): (3.33, 3.15, 0.36),
}


@pytest.fixture(scope="module")
def seed():
    return analysis.analyze(SEED_CSV)


@pytest.fixture(scope="module")
def run():
    return synthetic_run.build()


@pytest.fixture(scope="module")
def synth(run):
    return analysis.analyze(run)


class Fake:
    """The least a source needs: meta and results."""

    def __init__(self, rows, meta=None):
        self.meta = meta or {}
        self.results = pd.DataFrame(rows)


def row(model, batch, precision, pe, de, tok, ok=True, reason=""):
    return {"config_id": f"{model}/b{batch}/{precision}", "model": model, "batch": batch, "precision": precision,
            "synthetic": False, "ok": ok, "reason": reason, "prefill_energy_j": pe, "decode_energy_j": de,
            "decode_tok_s": tok}


# ----------------------------------------------------------------------------- seed


def test_seed_reproduces_the_printed_ratio_columns(seed):
    p = seed.phases
    assert len(p) == len(SEED_RATIOS)
    assert list(zip(p["model"], p["batch"], p["precision"])) == list(SEED_RATIOS)  # the seed's row order
    for _, r in p.iterrows():
        expected = SEED_RATIOS[(r["model"], r["batch"], r["precision"])]
        got = (r["prefill_energy_ratio"], r["decode_energy_ratio"], r["decode_speed_ratio"])
        for g, e in zip(got, expected):
            assert abs(g - e) <= 0.01, (r["model"], r["batch"], r["precision"], got, expected)
    assert seed.warnings == []


def test_seed_findings(seed):
    f = seed.findings
    assert f["quantised_rows"] == 10
    lo, hi = f["prefill_ratio_range"]
    assert round(lo, 1) == 2.5 and round(hi, 1) == 5.1
    lo, hi = f["decode_ratio_range"]
    assert round(lo, 1) == 1.5 and round(hi, 1) == 3.2
    assert f["crossovers"] == []
    assert f["prefill_exceeds_decode"] == {"all": True, "exceptions": [], "undecided": []}
    lo, hi = f["decode_speed_ratio_range"]["INT8"]
    assert round(lo, 2) == 0.14 and round(hi, 2) == 0.16
    assert set(f["decode_speed_ratio_range"]) == {"INT8", "NF4"}
    assert f["low_power"] == []  # no power in the CSV: not assessed, and said so
    assert "not assessed" in f["statements"]["low_power"]
    assert "2.50x to 5.13x" in f["statements"]["ratio_ranges"]
    assert "1.48x to 3.21x" in f["statements"]["ratio_ranges"]
    assert f["statements"]["crossovers"].startswith("No energy crossover was observed")
    assert "INT8 0.14x to 0.16x (14% to 16% of FP16 tok/s)" in f["statements"]["decode_speed"]
    assert "imported table, method unknown" in f["statements"]["scope"]


def test_seed_notes_say_what_is_unknown(seed):
    n = seed.notes["seed_rtx_pro_6000"]
    assert n["method"].startswith("imported table; method unknown")
    assert "assumed" in n["decode energy"]
    assert seed.power.empty


# ---------------------------------------------------------------- synthetic recording


def test_synthetic_phases_table(synth, run):
    p = synth.phases.set_index(["model", "batch", "precision"])
    assert list(synth.phases["precision"][:4]) == ["FP16", "BF16", "INT8", "NF4"]
    assert (synth.phases["weights"] == "synthetic").all()
    r = p.loc[("Qwen2-1.5B", 1, "INT8")]
    assert r["prefill_energy_ratio"] == pytest.approx(5.0)
    assert r["decode_energy_ratio"] == pytest.approx(130 / 40)
    fp16 = run.results.set_index("config_id").loc["Qwen2-1.5B/b1/fp16", "decode_tok_s"]
    int8 = run.results.set_index("config_id").loc["Qwen2-1.5B/b1/int8", "decode_tok_s"]
    assert r["decode_speed_ratio"] == pytest.approx(int8 / fp16)
    failed = p.loc[("Qwen2-1.5B", 8, "NF4")]
    assert not failed["ok"] and failed["reason"] == "CUDA out of memory"
    assert failed[["prefill_energy_j", "decode_energy_j", "decode_tok_s", *metrics.RATIO_NAMES]].isna().all()
    orphan = p.loc[("Qwen2.5-3B", 1, "INT8")]
    assert orphan["prefill_energy_j"] == pytest.approx(6.5)
    assert orphan[list(metrics.RATIO_NAMES)].isna().all()
    assert any("Qwen2.5-3B batch 1: the FP16 baseline failed (model failed to load)" in w for w in synth.warnings)
    assert sum("CV above 3%" in w for w in synth.warnings) == 3


def test_synthetic_findings(synth):
    f = synth.findings
    assert f["quantised_rows"] == 3  # the failed NF4 and the orphan INT8 have no ratios
    assert f["crossovers"] == [{"source": "synthetic_run", "model": "Qwen2-1.5B", "batch": 1, "precision": "NF4", "engine": "eager",
                                "phase": "decode", "ratio": pytest.approx(0.9)}]
    exc = f["prefill_exceeds_decode"]
    assert exc["all"] is False and [(e["batch"], e["precision"]) for e in exc["exceptions"]] == [(8, "INT8")]
    assert "2 of 3" in f["statements"]["prefill_exceeds_decode"]
    assert [e["precision"] for e in f["low_power"]] == ["INT8"]
    # The INT8 row's prefill power: the median of its windows' work power (120 W).
    assert f["low_power"][0]["max_tdp_pct"] == pytest.approx(120.0 / 700 * 100, rel=1e-3)
    assert "INT8 average power stayed under 25% of TDP" in f["statements"]["low_power"]
    assert "Qwen2-1.5B batch 1 NF4 decode (0.90x)" in f["statements"]["crossovers"]
    # A stricter threshold finds nothing, and says it was assessed.
    strict = analysis.analyze(synthetic_run.build(), low_power_fraction=0.10)
    assert strict.findings["low_power"] == [] and strict.findings["statements"]["low_power"].startswith("No precision")


def test_synthetic_power_table(synth, run):
    pw = synth.power.set_index("precision")
    assert list(pw.index) == ["FP16", "BF16", "INT8", "NF4"]
    ok = run.results[run.results["ok"] & (run.results["precision"] == "fp16")]
    assert pw.loc["FP16", "prefill_power_min_w"] == pytest.approx(ok["prefill_power_w"].min())
    assert pw.loc["FP16", "decode_power_max_w"] == pytest.approx(ok["decode_power_w"].max())
    assert pw.loc["FP16", "decode_tdp_max_pct"] == pytest.approx(ok["decode_power_w"].max() / 7)
    assert pw.loc["FP16", "tdp_w"] == 700 and pw.loc["FP16", "configs"] == 2
    assert pw.loc["NF4", "configs"] == 1  # the failed NF4 row does not count


def test_recording_notes(synth):
    n = synth.notes["synthetic_run"]
    assert n["GPU"] == "Simulated H100" and n["driver"] == "580.159.04" and n["TDP"].startswith("700 W")
    assert "simulated" in n and "not measurements" in n["simulated"]
    assert n["sensor refresh"] == "power_w 100 ms, energy_j 100 ms"
    assert n["energy signal"].startswith("NVML total energy counter")
    assert "at least 3, until every ratio's 95% interval is within +-3%" in n["protocol"]
    assert n["bitsandbytes"] == "version 0.50.2, llm_int8_threshold=6.0, nf4_compute_dtype=float16, nf4_double_quant=False"
    assert n["weights"].startswith("synthetic")
    assert "prefill median 2.00 s" in n["windows"] and "(24 windows)" in n["windows"]
    assert "torch 2.11.0" in n["versions"]


def test_crosscheck_compares_counter_and_integrated_energy(synth, run):
    c = synth.crosscheck
    assert len(c) == 2 * 8  # 8 configurations with windows, two phases each
    m = run.windows[(run.windows["role"] == "measure") & (run.windows["config_id"] == "Qwen2-1.5B/b1/int8")]
    r = c[(c["config_id"] == "Qwen2-1.5B/b1/int8") & (c["phase"] == "prefill")].iloc[0]
    assert r["counter_j"] == pytest.approx(m.loc[m["phase"] == "prefill", "energy_j"].sum())
    assert r["difference_pct"] == pytest.approx(-5.0)
    assert (r["model"], r["batch"], r["precision"]) == ("Qwen2-1.5B", 1, "INT8")


def test_idle_subtracted_option(run):
    a = analysis.analyze(run, idle_subtracted=True)
    p = a.phases.set_index(["model", "batch", "precision"])
    res = run.results.set_index("config_id")
    assert p.loc[("Qwen2-1.5B", 1, "INT8"), "decode_energy_j"] == pytest.approx(
        res.loc["Qwen2-1.5B/b1/int8", "decode_energy_idle_sub_j"])
    assert p.loc[("Qwen2-1.5B", 1, "INT8"), "prefill_energy_ratio"] == pytest.approx(
        res.loc["Qwen2-1.5B/b1/int8", "prefill_energy_idle_sub_j"] / res.loc["Qwen2-1.5B/b1/fp16", "prefill_energy_idle_sub_j"])
    assert a.notes["analysis"]["energies"].startswith("idle-subtracted")
    t = analysis.analyze(SEED_CSV, idle_subtracted=True)
    assert t.phases["prefill_energy_j"].isna().all()
    assert any("no idle baseline" in w for w in t.warnings)


def test_real_recording_file_gives_the_same_tables(run, synth, tmp_path):
    recording = pytest.importorskip("wattscope.recording")
    path = tmp_path / "run.wattscope"
    rec = recording.Recorder(path)
    for ev in run.events():
        rec.write(ev)
    rec.close()
    a = analysis.analyze(path)
    pd.testing.assert_frame_equal(a.phases.drop(columns="source"), synth.phases.drop(columns="source"))
    pd.testing.assert_frame_equal(a.power.drop(columns="source"), synth.power.drop(columns="source"))
    assert without_sources(a.findings) == without_sources(synth.findings)


def without_sources(o):
    if isinstance(o, dict):
        return {k: without_sources(v) for k, v in o.items() if k not in ("source", "scope")}
    if isinstance(o, list):
        return [without_sources(v) for v in o]
    return o


# ----------------------------------------------------------------- baselines, errors


def test_missing_fp16_baseline_gives_blank_ratios_and_a_warning():
    a = analysis.analyze(Fake([row("m", 1, "int8", 2.0, 20.0, 10.0), row("m", 1, "nf4", 3.0, 30.0, 20.0),
                               row("m", 8, "fp16", 1.0, 10.0, 100.0), row("m", 8, "int8", 2.0, 25.0, 50.0)]))
    p = a.phases.set_index(["batch", "precision"])
    assert p.loc[[(1, "INT8"), (1, "NF4")], list(metrics.RATIO_NAMES)].isna().all().all()
    assert p.loc[(8, "INT8"), "decode_energy_ratio"] == 2.5
    assert a.warnings == ["source 1: m batch 1: no FP16 baseline; ratios are blank"]
    assert a.findings["quantised_rows"] == 1


def test_sources_without_results_or_the_wrong_type():
    with pytest.raises(analysis.SourceError, match="expected a recording or .csv path"):
        analysis.analyze(42)
    a = analysis.analyze(Fake([]))
    assert a.phases.empty and a.power.empty and a.warnings == ["source 1: no configuration results"]
    assert a.findings["prefill_ratio_range"] is None and "No quantised configuration" in a.findings["statements"]["ratio_ranges"]


def test_two_sources_keep_their_own_baselines(tmp_path):
    scaled = tmp_path / "scaled.csv"
    df = pd.read_csv(SEED_CSV)
    df["prefill_energy_j"] *= 2  # a different machine: twice the energy, same ratios
    df.to_csv(scaled, index=False)
    a = analysis.analyze([SEED_CSV, scaled])
    assert list(dict.fromkeys(a.phases["source"])) == ["seed_rtx_pro_6000", "scaled"]
    one, two = (a.phases[a.phases["source"] == s].reset_index(drop=True) for s in ("seed_rtx_pro_6000", "scaled"))
    pd.testing.assert_series_equal(one["prefill_energy_ratio"], two["prefill_energy_ratio"], rtol=1e-12)
    assert len(a.notes) == 3  # two sources and the analysis notes


def test_power_table_and_low_power_from_an_imported_table(tmp_path):
    path = tmp_path / "power.csv"
    path.write_text(
        "model,batch,precision,prefill_energy_j,decode_energy_j,decode_tok_s,prefill_power_w,decode_power_w,tdp_w\n"
        "A,1,FP16,1.0,40,100,92,141,600\n"
        "A,1,INT8,5.0,130,15,67,85,600\n"
        "A,8,FP16,1.3,48,790,247,280,600\n"
        "A,8,INT8,5.8,154,112,109,67,600\n"
    )
    a = analysis.analyze(path)
    pw = a.power.set_index("precision")
    assert (pw.loc["FP16", "prefill_power_min_w"], pw.loc["FP16", "prefill_power_max_w"]) == (92, 247)
    assert pw.loc["INT8", "decode_tdp_min_pct"] == pytest.approx(67 / 6)
    assert pw.loc["INT8", "prefill_tdp_max_pct"] == pytest.approx(109 / 6)
    assert [e["precision"] for e in a.findings["low_power"]] == ["INT8"]
    assert "at most 18% of 600 W" in a.findings["statements"]["low_power"]


# -------------------------------------------------------------------------- CSV import

HEADER = "model,batch,precision,prefill_energy_j,decode_energy_j,decode_tok_s\n"
GOOD = "A,1,FP16,1.0,40,100\n"


@pytest.mark.parametrize("text, where", [
    (HEADER + GOOD + "A,1,FP32,1.0,40,100\n", "line 3, column 'precision'"),
    (HEADER + GOOD + "A,1,INT8,abc,40,100\n", "line 3, column 'prefill_energy_j'"),
    (HEADER + GOOD + "A,1,INT8,1.0,-4,100\n", "line 3, column 'decode_energy_j'"),
    (HEADER + GOOD + "A,1,INT8,1.0,40,nan\n", "line 3, column 'decode_tok_s'"),
    (HEADER + "A,0,FP16,1.0,40,100\n", "line 2, column 'batch'"),
    (HEADER + ",1,FP16,1.0,40,100\n", "line 2, column 'model'"),
    (HEADER + GOOD + "A,1,INT8,1.0,40\n", "line 3: 5 fields"),
    (HEADER + GOOD + "\n" + "A,1,FP16,2.0,40,100\n", "line 4: A batch 1 FP16 repeats line 2"),
    ("model,batch,precision,prefill_energy_j,decode_energy_j\n" + "A,1,FP16,1,2\n", "line 1: missing column(s) decode_tok_s"),
    (HEADER.strip() + ",watts\n" + GOOD.strip() + ",3\n", "line 1, column 7: unknown column 'watts'"),
    ("", "line 1: empty file"),
    (HEADER, "no data rows"),
])
def test_malformed_csv_names_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TableError) as e:
        read_table(path)
    assert str(e.value).startswith(f"{path}: ")
    assert where in str(e.value)
    with pytest.raises(analysis.SourceError, match="bad.csv"):
        analysis.open_source(path)


def test_csv_import_accepts_reordered_columns_and_lowercase_precision(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("precision,model,batch,decode_tok_s,decode_energy_j,prefill_energy_j,decode_steps\n"
                    "fp16,A,1,100,40,1.0,64\nnf4,A,1,50,60,2.0,64\n")
    t = read_table(path)
    assert list(t.results["precision"]) == ["fp16", "nf4"] and list(t.results["decode_steps"]) == [64.0, 64.0]
    a = analysis.analyze(t)
    assert a.phases["decode_energy_ratio"].tolist() == [1.0, 1.5]
    assert "decode_steps" in a.notes["t"]["decode energy"]


# ------------------------------------------------------------------------- properties

energies = st.floats(0.01, 1e4, allow_nan=False, allow_infinity=False)
configs = st.lists(
    st.tuples(st.sampled_from(["m1", "m2", "m3"]), st.sampled_from([1, 4, 8]),
              st.sampled_from(["fp16", "bf16", "int8", "nf4"]), energies, energies, energies),
    min_size=1, max_size=24, unique_by=lambda c: c[:3],
)


@settings(max_examples=60, deadline=None)
@given(configs)
def test_fp16_rows_have_ratio_exactly_one(cs):
    p = analysis.phases_table(Fake([row(*c) for c in cs]))
    fp16 = p[p["precision"] == "FP16"]
    assert (fp16[list(metrics.RATIO_NAMES)] == 1.0).all().all()


@settings(max_examples=60, deadline=None)
@given(configs, st.floats(1e-3, 1e3), st.sampled_from(["m1", "m2", "m3"]))
def test_scaling_a_models_energies_changes_no_ratio(cs, k, model):
    before = analysis.phases_table(Fake([row(*c) for c in cs]))
    scaled = [(m, b, p, pe * k, de * k, tok) if m == model else (m, b, p, pe, de, tok) for m, b, p, pe, de, tok in cs]
    after = analysis.phases_table(Fake([row(*c) for c in scaled]))
    for col in metrics.RATIO_NAMES:
        pd.testing.assert_series_equal(before[col], after[col], rtol=1e-12, check_exact=False)
    changed = after["model"] == model
    if changed.any():
        assert after.loc[changed, "prefill_energy_j"].tolist() == pytest.approx(
            (before.loc[changed, "prefill_energy_j"] * k).tolist())


# --------------------------------------------------------------------------- compare


def test_compare_lines_up_ratios_and_lists_differing_findings(run):
    c = analysis.compare(SEED_CSV, run)
    t = c.table.set_index(["model", "batch", "precision"])
    both = t.loc[("Qwen2-1.5B", 1, "INT8")]
    assert both["present"] == "both"
    assert both["prefill_energy_ratio_a"] == pytest.approx(4.736 / 0.924)
    assert both["prefill_energy_ratio_b"] == pytest.approx(5.0)
    assert both["prefill_energy_ratio_delta"] == pytest.approx(5.0 - 4.736 / 0.924)
    assert t.loc[("Yi-1.5-6B", 8, "NF4"), "present"] == "A only"
    assert t.loc[("Qwen2-1.5B", 1, "BF16"), "present"] == "B only"
    diff = {d["finding"]: d for d in c.differences}
    assert diff["crossovers"]["a"] == [] and diff["crossovers"]["b"] == ["Qwen2-1.5B b1 NF4 decode"]
    assert diff["prefill_exceeds_decode"]["a"] is True and diff["prefill_exceeds_decode"]["b"] is False
    assert diff["low_power"] == {"finding": "low_power", "a": [], "b": ["INT8"]}
    same = analysis.compare(SEED_CSV, SEED_CSV)
    assert same.differences == [] and same.labels == ("seed_rtx_pro_6000 (A)", "seed_rtx_pro_6000 (B)")
