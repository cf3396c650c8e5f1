"""Export tests. Golden files live in tests/golden/; regenerate them after an intended
change with ``WATTSCOPE_REGEN_GOLDEN=1 pytest tests/test_export.py`` and review the diff."""

import io
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import synthetic_run
from wattscope import analysis, export, metrics

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
SEED_CSV = HERE / "data" / "seed_rtx_pro_6000.csv"
REGEN = os.environ.get("WATTSCOPE_REGEN_GOLDEN") == "1"
TEXT_FORMATS = {"md": "md", "csv": "csv", "json": "json", "latex": "tex"}


def check_golden(name: str, content: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.write_text(content, encoding="utf-8")
        return
    assert path.is_file(), f"{path} missing; run with WATTSCOPE_REGEN_GOLDEN=1 to create it"
    assert content == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def parquet_summary(data: bytes) -> str:
    t = pq.read_table(io.BytesIO(data))
    meta = t.schema.metadata
    df = t.to_pandas()
    return json.dumps({
        "columns": {c: str(df[c].dtype) for c in df.columns},
        "rows": json.loads(df.to_json(orient="records", double_precision=15)),
        "notes": json.loads(meta[b"wattscope.notes"]),
        "warnings": json.loads(meta[b"wattscope.warnings"]),
    }, indent=1) + "\n"


@pytest.fixture(scope="module")
def run():
    return synthetic_run.build()


@pytest.fixture(scope="module")
def sources(run):
    return {"seed": analysis.analyze(SEED_CSV), "synthetic": analysis.analyze(run)}


@pytest.mark.parametrize("source", ["seed", "synthetic"])
@pytest.mark.parametrize("table", ["phases", "power", "findings", "crosscheck", "all"])
@pytest.mark.parametrize("fmt", list(TEXT_FORMATS))
def test_text_formats_match_golden(sources, source, table, fmt):
    check_golden(f"{source}_{table}.{TEXT_FORMATS[fmt]}", export.export(sources[source], fmt, table))


@pytest.mark.parametrize("source", ["seed", "synthetic"])
@pytest.mark.parametrize("table", ["phases", "power", "findings"])
def test_parquet_matches_golden(sources, source, table):
    data = export.export(sources[source], "parquet", table)
    assert isinstance(data, bytes) and data[:4] == b"PAR1"
    check_golden(f"{source}_{table}.parquet.json", parquet_summary(data))


def test_markdown_options_match_golden(run):
    a = analysis.analyze(run, idle_subtracted=True)
    check_golden("synthetic_phases_options.md", export.export(a, "md", "phases", per_token=True, cv=True))


def test_compare_matches_golden(run):
    c = analysis.compare(SEED_CSV, run)
    for fmt, ext in (("md", "md"), ("text", "txt"), ("json", "json")):
        check_golden(f"compare_seed_synthetic.{ext}", export.format_compare(c, fmt=fmt))
    # The CLI passes two sources instead of a Comparison.
    assert export.format_compare(SEED_CSV, run, fmt="md") == export.format_compare(c, fmt="md")


# ---------------------------------------------------------------- format properties

SEED_TABLE_ROWS = [  # the seed's Section 2, first six columns, as printed
    "| Qwen2-1.5B | 1 | FP16 | 0.924 | 42.737 | 105.26 |",
    "| Qwen2-1.5B | 1 | INT8 | 4.736 | 135.724 | 15.79 |",
    "| Qwen2-1.5B | 1 | NF4 | 3.569 | 71.281 | 41.10 |",
    "| Qwen2-1.5B | 8 | FP16 | 1.326 | 48.156 | 789.97 |",
    "| Qwen2-1.5B | 8 | INT8 | 5.829 | 154.507 | 112.77 |",
    "| Qwen2-1.5B | 8 | NF4 | 4.511 | 133.460 | 244.35 |",
    "| Qwen2.5-3B | 1 | FP16 | 1.575 | 73.191 | 80.74 |",
    "| Qwen2.5-3B | 1 | INT8 | 6.620 | 186.035 | 12.30 |",
    "| Qwen2.5-3B | 1 | NF4 | 6.412 | 108.622 | 31.71 |",
    "| Qwen2.5-3B | 8 | FP16 | 2.423 | 81.280 | 636.22 |",
    "| Qwen2.5-3B | 8 | INT8 | 8.364 | 212.776 | 86.55 |",
    "| Qwen2.5-3B | 8 | NF4 | 7.886 | 234.826 | 188.79 |",
    "| Yi-1.5-6B | 8 | FP16 | 3.645 | 116.080 | 617.32 |",
    "| Yi-1.5-6B | 8 | INT8 | 9.124 | 218.745 | 99.99 |",
    "| Yi-1.5-6B | 8 | NF4 | 12.126 | 365.331 | 222.80 |",
]


def test_markdown_looks_like_the_seed_table(sources):
    md = export.export(sources["seed"], "md", "phases")
    lines = [line for line in md.splitlines() if line.startswith("| ") and line[2].isalpha() and "Model" not in line]
    assert len(lines) == 15
    for line, expected in zip(lines, SEED_TABLE_ROWS):
        cells = line.split(" | ")
        assert " | ".join(cells[:6]) + " |" == expected
        assert all(c.rstrip(" |").endswith("x") and len(c.rstrip(" |").split(".")[1]) == 3 for c in cells[6:])
    assert "| Model | Batch | Precision | Prefill Energy / Call (J) | Decode Energy / 32 tok (J) | Decode tok/s |" in md
    assert "## Method notes" in md and "imported table; method unknown" in md


def test_json_shape_and_full_precision(sources):
    out = json.loads(export.export(sources["seed"], "json"))
    assert set(out) == {"phases", "power", "findings", "notes", "warnings"}
    first = out["phases"][1]
    for col in (*analysis.INPUTS, *metrics.RATIO_NAMES):
        assert col in first
    assert first["prefill_energy_ratio"] == 4.736 / 0.924  # full precision
    assert first["prefill_energy_cv"] is None  # NaN -> null
    f = out["findings"]
    assert f["prefill_ratio_range"] == [9.124 / 3.645, 4.736 / 0.924]
    assert set(f["decode_speed_ratio_range"]) == {"INT8", "NF4"} and f["crossovers"] == []
    assert out["notes"]["seed_rtx_pro_6000"]["method"].startswith("imported table")


def test_csv_round_trips_full_precision(sources, tmp_path):
    a = sources["synthetic"]
    path = tmp_path / "phases.csv"
    export.export(a, "csv", "phases", out_path=path)
    back = pd.read_csv(path, comment="#", keep_default_na=False, na_values=[""])
    for col in ("prefill_energy_j", "decode_tok_s", *metrics.RATIO_NAMES):
        pd.testing.assert_series_equal(back[col], a.phases[col], check_exact=True, check_names=False)
    trailing = path.read_text().splitlines()
    assert any(line.startswith("# notes: synthetic_run: GPU: Simulated H100") for line in trailing)
    assert any(line.startswith("# warning: ") for line in trailing)


def test_latex_escapes_and_times_sign(sources):
    tex = export.export(sources["synthetic"], "latex", "all")
    assert r"5.00$\times$" in tex and r"\toprule" in tex
    assert r"nf4\_compute\_dtype" in tex and r"25\% of TDP" in tex


def test_bad_requests_are_refused_with_what_is_allowed(sources):
    with pytest.raises(export.ExportError, match="allowed: md, csv, json, parquet, latex"):
        export.export(sources["seed"], "xlsx")
    with pytest.raises(export.ExportError, match="allowed: phases, power, findings"):
        export.export(sources["seed"], "md", "everything")
    with pytest.raises(export.ExportError, match="parquet holds one table"):
        export.export(sources["seed"], "parquet", "all")
    with pytest.raises(export.ExportError, match="no raw traces"):
        export.export_traces(SEED_CSV, "csv", ".")


# ------------------------------------------------------------------- files, atomicity


def test_out_path_is_written_atomically(sources, tmp_path, monkeypatch):
    path = tmp_path / "sub" / "report.md"
    content = export.export(sources["seed"], "md", out_path=path)
    assert path.read_text() == content
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]  # no temp file left

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        export.export(sources["synthetic"], "md", out_path=path)
    assert path.read_text() == content  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]


def test_parquet_file_carries_notes(sources, tmp_path):
    path = tmp_path / "phases.parquet"
    export.export(sources["synthetic"], "parquet", "phases", out_path=path)
    t = pq.read_table(path)
    assert json.loads(t.schema.metadata[b"wattscope.notes"])["synthetic_run"]["GPU"] == "Simulated H100"
    pd.testing.assert_frame_equal(t.to_pandas(), sources["synthetic"].phases, check_dtype=False)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_traces_round_trip(run, tmp_path, fmt):
    paths = export.export_traces(run, fmt, tmp_path / "traces")
    assert [p.name for p in paths] == [f"samples.{fmt}", f"windows.{fmt}"]
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    samples, windows = read(paths[0]), read(paths[1])
    pd.testing.assert_frame_equal(samples[list(run.samples.columns)], run.samples, check_dtype=False)
    assert list(samples.columns)[len(run.samples.columns):] == ["config_id", "phase", "unix_ns"]
    assert len(windows) == len(run.windows)
    pd.testing.assert_series_equal(windows["energy_j"], run.windows["energy_j"], check_exact=True)
    assert windows["config_id"].isna().sum() == 1  # the idle window belongs to no configuration
