"""Export an analysis as Markdown, CSV, JSON, Parquet or LaTeX, and a recording's raw
traces as CSV or Parquet.

Every export carries the method notes (and any warnings) with the numbers:
- Markdown and LaTeX: a "Method notes" section after the tables.
- CSV: trailing comment lines starting with ``#`` (``pandas.read_csv(path, comment="#")``
  reads the table back). ``table="all"`` returns each table after a ``# table: NAME``
  line, separated by blank lines; ``export_csv_tables`` (the CLI's ``--format csv
  --table all -o DIR``) writes one plain CSV per table into a folder instead.
- JSON: a ``notes`` object (and ``warnings`` list) beside the tables.
- Parquet: one table per file (``table="all"`` is refused); notes and warnings are JSON in
  the file's schema metadata under ``wattscope.notes`` / ``wattscope.warnings``.

JSON and CSV keep full float precision; Markdown and LaTeX print energies with 3
decimals, tok/s with 2 and ratios as ``5.12x``. Files are written atomically (a temporary
file in the same folder, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from wattscope import timeline
from wattscope.analysis import Analysis, Comparison, analyze, compare, open_source
from wattscope.errors import WattscopeError
from wattscope.extras import require
from wattscope.files import new_file_mode
from wattscope.metrics import CI_COLUMNS, FIGURES, RATIO_NAMES, RATIOS, ratio_value, run_meta, title
from wattscope.render import (
    Grid,
    ResultLine,
    csv_cell,
    fmt_delta,
    fmt_fixed,
    fmt_ratio,
    fmt_span,
    markdown_table,
    md_text,
    results_grid,
    tex_text,
    text_table,
)
from wattscope.safe_text import printable

FORMATS = ("md", "csv", "json", "parquet", "latex")
TABLES = ("phases", "power", "findings", "crosscheck", "all")
TRACE_FORMATS = ("csv", "parquet")
_TITLES = {
    "phases": "Phase-separated energy",
    "power": "Average power",
    "findings": "Findings",
    "crosscheck": "Counter vs integrated instant power",
}


class ExportError(WattscopeError, ValueError):
    """An export that cannot be made, phrased for the user: what was asked, what is allowed."""


# ------------------------------------------------------------------------ file writing


def write_atomic(path: str | Path, data: str | bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (or let ``data(file)`` write) to ``path`` through a temporary file in
    the same folder and a rename, so the file is either the old one or the complete new one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp's 0600 would otherwise be the export's mode
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


# ---------------------------------------------------------------------- data frames


def findings_frame(findings: dict[str, Any]) -> pd.DataFrame:
    """One row per finding: its key, its sentence and the numbers behind it (JSON)."""
    data = {
        "ratio_ranges": {k: findings[k] for k in ("quantised_rows", "prefill_ratio_range", "decode_ratio_range")},
        "prefill_exceeds_decode": findings["prefill_exceeds_decode"],
        "crossovers": findings["crossovers"],
        "decode_speed": findings["decode_speed_ratio_range"],
        "low_power": {"threshold_pct": findings["low_power_threshold_pct"], "precisions": findings["low_power"]},
        "scope": None,
    }
    rows = [
        {"finding": k, "statement": text, "value": json.dumps(_clean(data.get(k)), allow_nan=False)}
        for k, text in findings["statements"].items()
    ]
    return pd.DataFrame(rows, columns=["finding", "statement", "value"])


def _frame(a: Analysis, table: str) -> pd.DataFrame:
    if table == "findings":
        return findings_frame(a.findings)
    return getattr(a, table)


def _clean(o: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON objects; a ratio's interval sits next to it as ``<ratio>_ci: [low,
    high]`` (null where the source has none) instead of two loose columns."""
    out = []
    for r in df.astype(object).to_dict(orient="records"):
        if all(c in r for c in CI_COLUMNS):
            for name in RATIO_NAMES:
                low, high = r.pop(f"{name}_low"), r.pop(f"{name}_high")
                r = _insert_after(r, name, f"{name}_ci", None if _clean(low) is None else [low, high])
        out.append(_clean(r))
    return out


def _insert_after(d: dict[str, Any], key: str, new: str, value: Any) -> dict[str, Any]:
    items = list(d.items())
    i = [k for k, _ in items].index(key) + 1 if key in d else len(items)
    return dict([*items[:i], (new, value), *items[i:]])


# ---------------------------------------------------------------- display (md, latex)


def _phases_display(a: Analysis, per_token: bool, cv: bool) -> Grid:
    df = a.phases
    lines = [
        ResultLine(
            model=r["model"], batch=int(r["batch"]), precision=r["precision"], ok=bool(r["ok"]),
            figures={k: r[k] for k in FIGURES if k in r.index}, ratios={k: ratio_value(r, k) for k in RATIO_NAMES},
            reason=r["reason"], source=r["source"], weights=r["weights"], engine=r["engine"],
        )
        for _, r in df.iterrows()
    ]
    return results_grid(
        lines, idle_subtracted=bool(a.options.get("idle_subtracted")), source=df["source"].nunique() > 1,
        weights=bool((df["weights"] == "synthetic").any()), per_token=per_token, cv=cv, notes=True, missing="",
    )


def _power_display(a: Analysis) -> Grid:
    df = a.power
    multi = df["source"].nunique() > 1
    tdps = df["tdp_w"].dropna().unique()
    of = f"% of {tdps[0]:.0f}W TDP" if len(tdps) == 1 and not df["tdp_w"].isna().any() else "% of TDP"
    headers = (["Source"] if multi else []) + ["Precision", title("prefill_power_w"), of, title("decode_power_w"), of]
    rows = [
        ([r["source"]] if multi else []) + [
            r["precision"],
            fmt_span(r["prefill_power_min_w"], r["prefill_power_max_w"]),
            fmt_span(r["prefill_tdp_min_pct"], r["prefill_tdp_max_pct"], "%"),
            fmt_span(r["decode_power_min_w"], r["decode_power_max_w"]),
            fmt_span(r["decode_tdp_min_pct"], r["decode_tdp_max_pct"], "%"),
        ]
        for _, r in df.iterrows()
    ]
    return Grid(headers, rows, ("l" if multi else "") + "lrrrr")


def _crosscheck_display(a: Analysis) -> Grid:
    df = a.crosscheck
    multi = df["source"].nunique() > 1
    headers = (["Source"] if multi else []) + [
        "Model", "Batch", "Precision", "Phase", "Windows", "Counter (J)", "Integrated (J)", "Difference",
    ]
    rows = [
        ([r["source"]] if multi else []) + [
            str(r["model"]) if not pd.isna(r["model"]) else str(r["config_id"]),
            "" if pd.isna(r["batch"]) else str(int(r["batch"])),
            "" if pd.isna(r["precision"]) else r["precision"],
            r["phase"], str(int(r["windows"])),
            fmt_fixed(r["counter_j"], 3, ""), fmt_fixed(r["integrated_j"], 3, ""),
            ("" if pd.isna(r["difference_pct"]) else f"{r['difference_pct']:+.1f}%")
            + (f" (sampler stalled in {int(r['stalled_windows'])})" if r["stalled_windows"] > 0 else ""),
        ]
        for _, r in df.iterrows()
    ]
    return Grid(headers, rows, ("l" if multi else "") + "lrllrrrr")


_EMPTY = {
    "phases": "No configuration results in the source(s).",
    "power": "No average power in the source(s).",
    "crosscheck": "No windows with instant-power samples in the source(s).",
}


def _display(a: Analysis, table: str, per_token: bool, cv: bool) -> Grid | None:
    if _frame(a, table).empty:
        return None
    if table == "phases":
        return _phases_display(a, per_token, cv)
    if table == "power":
        return _power_display(a)
    return _crosscheck_display(a)


# ------------------------------------------------------------------------- markdown


def _md_notes(a: Analysis) -> str:
    out = ["## Method notes"]
    for label, items in a.notes.items():
        out.append(f"\n### {'Analysis' if label == 'analysis' else md_text(label)}\n")
        out += [f"- **{md_text(k)}**: {md_text(v)}" for k, v in items.items()]
    if a.warnings:
        out.append("\n## Warnings\n")
        out += [f"- {md_text(w)}" for w in a.warnings]
    return "\n".join(out)


def _to_md(a: Analysis, tables: list[str], per_token: bool, cv: bool) -> str:
    parts = []
    for t in tables:
        if t == "findings":
            body = "\n".join(f"- {md_text(s)}" for s in a.findings["statements"].values())
        else:
            d = _display(a, t, per_token, cv)
            body = markdown_table(d) if d else f"_{_EMPTY[t]}_"
        parts.append(f"## {_TITLES[t]}\n\n{body}")
    parts.append(_md_notes(a))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- latex

def _tex(s: str) -> str:
    s = tex_text(s)
    # A ratio like 5.12x prints with a real times sign.
    return s[:-1] + r"$\times$" if s[:-1].replace(".", "", 1).isdigit() and s.endswith("x") else s


def _tex_table(d: Grid, caption: str) -> str:
    headers, rows, align = d.headers, d.rows, d.align
    lines = [
        r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(caption)}}}",
        rf"\begin{{tabular}}{{{align}}}", r"\toprule",
        " & ".join(_tex(h) for h in headers) + r" \\", r"\midrule",
    ]
    lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def _tex_items(items: list[str]) -> str:
    return "\n".join([r"\begin{itemize}"] + [rf"\item {_tex(i)}" for i in items] + [r"\end{itemize}"])


def _to_latex(a: Analysis, tables: list[str], per_token: bool, cv: bool) -> str:
    parts = ["% wattscope export; tables need \\usepackage{booktabs}"]
    for t in tables:
        if t == "findings":
            parts.append(r"\subsection*{Findings}" + "\n" + _tex_items(list(a.findings["statements"].values())))
            continue
        d = _display(a, t, per_token, cv)
        parts.append(_tex_table(d, _TITLES[t]) if d else _tex(_EMPTY[t]))
    parts.append(r"\subsection*{Method notes}")
    for label, items in a.notes.items():
        parts.append(rf"\paragraph{{{_tex('Analysis' if label == 'analysis' else label)}}}")
        parts.append(_tex_items([f"{k}: {v}" for k, v in items.items()]))
    if a.warnings:
        parts.append(r"\subsection*{Warnings}" + "\n" + _tex_items(a.warnings))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------- csv, json, parquet


def _comment_lines(a: Analysis) -> list[str]:
    # One line each, so no text can end the comment and start a row of the table.
    lines = [printable(f"# notes: {label}: {k}: {v}") for label, items in a.notes.items() for k, v in items.items()]
    return lines + [printable(f"# warning: {w}") for w in a.warnings]


def _csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell made a safe CSV cell (``render.csv_cell``)."""
    text = [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c].dtype)]
    if not text:
        return df
    df = df.copy()
    for c in text:
        df[c] = df[c].map(csv_cell)
    return df


def _to_csv(a: Analysis, tables: list[str]) -> str:
    parts = []
    for t in tables:
        text = _csv_safe(_frame(a, t)).to_csv(index=False, lineterminator="\n")
        parts.append(text if len(tables) == 1 else f"# table: {t}\n{text}")
    return "\n".join(parts) + "\n".join(_comment_lines(a)) + "\n"


def _to_json(a: Analysis, tables: list[str]) -> str:
    out: dict[str, Any] = {}
    for t in tables:
        out[t] = _clean({k: v for k, v in a.findings.items()}) if t == "findings" else _records(_frame(a, t))
    out["notes"] = a.notes
    out["warnings"] = a.warnings
    return json.dumps(out, indent=2, allow_nan=False) + "\n"


def _to_parquet(a: Analysis, table: str) -> bytes:
    require("parquet", "Parquet export")
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.Table.from_pandas(_frame(a, table), preserve_index=False)
    meta = dict(t.schema.metadata or {})
    meta[b"wattscope.notes"] = json.dumps(a.notes).encode()
    meta[b"wattscope.warnings"] = json.dumps(a.warnings).encode()
    buf = io.BytesIO()
    pq.write_table(t.replace_schema_metadata(meta), buf)
    return buf.getvalue()


# ------------------------------------------------------------------------- public API


def export(
    sources: Any,
    fmt: str = "md",
    table: str = "all",
    out_path: str | Path | None = None,
    *,
    idle_subtracted: bool = False,
    per_token: bool = False,
    cv: bool = False,
) -> str | bytes:
    """Render ``table`` of ``sources`` (paths, Recordings, Tables, or an Analysis) in
    ``fmt``; with ``out_path`` also write it there atomically. Returns the content (bytes for
    Parquet). ``per_token``/``cv`` add columns to the Markdown/LaTeX phases table (CSV,
    JSON and Parquet always carry every column)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if table not in TABLES:
        raise ExportError(f"unknown table {table!r}; allowed: {', '.join(TABLES)}")
    if fmt == "parquet" and table == "all":
        raise ExportError("parquet holds one table per file; choose --table phases, power, findings or crosscheck")
    a = analyze(sources, idle_subtracted=idle_subtracted)
    # "all" carries the cross-check only where instant-power samples covered some window.
    has_cross = a.crosscheck["integrated_j"].notna().any()
    tables = [t for t in TABLES[:-1] if t != "crosscheck" or has_cross] if table == "all" else [table]
    content: str | bytes
    if fmt == "md":
        content = _to_md(a, tables, per_token, cv)
    elif fmt == "latex":
        content = _to_latex(a, tables, per_token, cv)
    elif fmt == "csv":
        content = _to_csv(a, tables)
    elif fmt == "json":
        content = _to_json(a, tables)
    else:
        content = _to_parquet(a, table)
    if out_path is not None:
        write_atomic(out_path, content)
    return content


def export_csv_tables(
    sources: Any, out_dir: str | Path | None, *, idle_subtracted: bool = False
) -> list[Path]:
    """Every table as its own CSV (``phases.csv``, ``power.csv``, ``findings.csv`` and, where
    instant power covered some window, ``crosscheck.csv``) in the folder ``out_dir``, each
    exactly what a one-table CSV export writes. All are rendered before any is written."""
    where = None if out_dir is None else Path(out_dir)
    if where is None or where.suffix.lower() == ".csv" or (where.exists() and not where.is_dir()):
        got = "no -o" if where is None else f"-o {where}" + (" (a file)" if where.is_file() else "")
        raise ExportError(
            f"--format csv --table all writes one CSV per table into a folder, and {got} is not one; "
            "give -o DIR, or choose --table phases, power, findings or crosscheck for a single CSV"
        )
    a = analyze(sources, idle_subtracted=idle_subtracted)
    has_cross = a.crosscheck["integrated_j"].notna().any()
    tables = [t for t in TABLES[:-1] if t != "crosscheck" or has_cross]
    contents = {t: _to_csv(a, [t]) for t in tables}
    return [write_atomic(where / f"{t}.csv", text) for t, text in contents.items()]


def export_traces(recording: Any, fmt: str, out_dir: str | Path) -> list[Path]:
    """Write a recording's raw samples and windows as ``samples.<fmt>`` and
    ``windows.<fmt>`` in ``out_dir`` (CSV or Parquet), atomically. ``recording`` is a
    Recording, a Source wrapping one, or a path. Returns the paths.

    Samples gain ``config_id`` and ``phase`` (the phase each falls in, by
    ``wattscope.timeline``) and ``unix_ns`` (its Unix time by the run's wall-clock anchor;
    empty without one), so they join other traces by time. Parquet files carry the
    anchor as JSON in their schema metadata under ``wattscope.clock``."""
    if fmt not in TRACE_FORMATS:
        raise ExportError(f"unknown trace format {fmt!r} for raw traces; allowed: {', '.join(TRACE_FORMATS)}")
    src = open_source(recording)
    if src.kind != "recording":
        raise ExportError(f"{src.label}: an imported table has no raw traces; give a recording")
    recording = src.data
    require("parquet", "raw trace export")
    import pyarrow as pa

    tl = timeline.of_recording(recording)
    clock = timeline.wall_clock(run_meta(recording.meta), tl.start_ns)
    samples = _labelled_samples(recording.samples, tl, clock)
    out = Path(out_dir)
    paths = []
    for name, frame in (("samples", samples), ("windows", recording.windows)):
        t = pa.Table.from_pandas(_csv_safe(frame) if fmt == "csv" else frame, preserve_index=False)
        if clock is not None:
            meta = dict(t.schema.metadata or {})
            meta[b"wattscope.clock"] = json.dumps(clock.to_meta()).encode()
            t = t.replace_schema_metadata(meta)
        writer = _csv_writer(t) if fmt == "csv" else _parquet_writer(t)
        paths.append(write_atomic(out / f"{name}.{fmt}", writer))
    return paths


def _labelled_samples(samples: pd.DataFrame, tl: timeline.Timeline, clock: timeline.WallClock | None) -> pd.DataFrame:
    t = samples["t_ns"].to_numpy(dtype="int64")
    configs, phases = tl.label(t)
    out = samples.copy()
    out["config_id"] = configs
    out["phase"] = phases
    out["unix_ns"] = clock.unix(t) if clock is not None else pd.Series(pd.NA, index=out.index, dtype="Int64")
    return out


_CSV_CHUNK_ROWS = 50_000


def _csv_writer(t: Any) -> Callable[[BinaryIO], None]:
    """Formatting numbers dominates CSV export (an hour at 100 Hz is 3.6M values), and
    pyarrow releases the GIL while it formats, so chunks are formatted on two threads and
    written in order."""
    import pyarrow.csv as pacsv

    def chunk(i: int) -> bytes:
        buf = io.BytesIO()
        opts = pacsv.WriteOptions(include_header=i == 0, quoting_style="needed", batch_size=16384)
        pacsv.write_csv(t.slice(i, _CSV_CHUNK_ROWS), buf, opts)
        return buf.getvalue()

    def write(f: BinaryIO) -> None:
        starts = range(0, max(t.num_rows, 1), _CSV_CHUNK_ROWS)
        with ThreadPoolExecutor(2) as pool:
            for part in pool.map(chunk, starts):
                f.write(part)

    return write


def _parquet_writer(t: Any) -> Callable[[BinaryIO], None]:
    import pyarrow.parquet as pq

    # Dictionary encoding costs 3x the write time on float sensor columns for a ~30%
    # smaller file; plain encoding + snappy keeps an hour's trace under 0.1 s.
    return lambda f: pq.write_table(t, f, compression="snappy", use_dictionary=False)


# -------------------------------------------------------------------------- compare


def _cmp_display(c: Comparison) -> Grid:
    headers = ["Model", "Batch", "Precision"]
    for ratio in RATIOS:
        headers += [f"{ratio.short} A", f"{ratio.short} B", f"{ratio.short} B-A"]
    rows = []
    for _, r in c.table.iterrows():
        engine = "" if r["engine"] == "eager" else f" ({r['engine']})"
        row = [r["model"], str(int(r["batch"])), r["precision"] + engine]
        for name in RATIO_NAMES:
            a, b = (ratio_value({name: r[f"{name}_{s}"], f"{name}_low": r[f"{name}_low_{s}"],
                                 f"{name}_high": r[f"{name}_high_{s}"]}, name) for s in ("a", "b"))
            # A difference the two intervals support says so in its cell.
            beyond = " beyond CI" if r[f"{name}_beyond_ci"] == "yes" else ""
            row += [fmt_ratio(a, ""), fmt_ratio(b, ""), fmt_delta(r[f"{name}_delta"], "") + beyond]
        rows.append(row)
    return Grid(headers, rows, "lrl" + "rrr" * len(RATIOS))


def _cmp_value(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"{fmt_ratio(v[0])}-{fmt_ratio(v[1])}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "none"
    if isinstance(v, dict):
        return "; ".join(f"{k} {_cmp_value(x)}" for k, x in v.items()) or "none"
    return str(v)


def format_compare(a: Any, b: Any = None, fmt: str = "md") -> str:
    """Two sources side by side (``wattscope compare A B``): ratios of A and B per
    (model, batch, precision), then the findings that differ. ``a`` is a Comparison, or
    ``a`` and ``b`` are sources. ``fmt`` is 'md', 'text' or 'json'."""
    if fmt not in ("md", "text", "json"):
        raise ExportError(f"unknown compare format {fmt!r}; allowed: md, text, json")
    c = a if isinstance(a, Comparison) else compare(a, b)
    la, lb = c.labels
    if fmt == "json":
        return json.dumps(
            _clean({"a": la, "b": lb, "ratios": _records(c.table), "differences": c.differences,
                    "notes": {"a": c.a.notes, "b": c.b.notes}}),
            indent=2, allow_nan=False,
        ) + "\n"
    d = _cmp_display(c)
    table = markdown_table(d) if fmt == "md" else text_table(d)
    # Labels, names and notes come from the sources: shown through the format's escape.
    say = md_text if fmt == "md" else printable
    if c.differences:
        diffs = [f"- {say(x['finding'])}: A {say(_cmp_value(x['a']))}; B {say(_cmp_value(x['b']))}" for x in c.differences]
    else:
        diffs = ["- none: the findings agree (ranges at two decimals)"]
    only = c.table[c.table["present"] != "both"]
    missing = [f"- {say(r['model'])} batch {r['batch']} {say(r['precision'])}"
               f"{'' if r['engine'] == 'eager' else say(' (' + r['engine'] + ')')}: {r['present']}"
               for _, r in only.iterrows()]
    h2 = "## " if fmt == "md" else ""
    intro = "Ratios to FP16 of the same model and batch within each source; B-A is B minus A."
    parts = [f"{h2}Compare: A = {say(la)}, B = {say(lb)}", intro, table, f"{h2}Findings that differ", "\n".join(diffs)]
    if missing:
        parts += [f"{h2}Rows in one source only", "\n".join(missing)]
    for label, an in ((la, c.a), (lb, c.b)):
        parts.append(f"{h2}Method notes: {say(label)}")
        parts.append("\n".join(f"- {say(k)}: {say(v)}" for src, items in an.notes.items() if src != "analysis"
                               for k, v in items.items()))
    return "\n\n".join(parts) + "\n"
