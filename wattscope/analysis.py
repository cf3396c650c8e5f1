"""Tables and findings from recordings or imported tables: the pandas API.

A *source* is a recording path, a measurements CSV path, or any object with ``meta``
(dict) and ``results`` (DataFrame: model, batch, precision, synthetic, ok, reason and
one column per figure of ``wattscope.metrics.FIGURES``); ``windows`` is used when
present. ``wattscope.load`` recordings and ``tables.read_table`` tables both qualify,
and tests pass small fakes.

    a = analyze(["runs/h100.sqlite", "seed.csv"])
    a.phases      # the seed's Section 2 table, with ratios to FP16
    a.power       # average power ranges per precision and phase, W and % of TDP
    a.findings    # computed observations, each with its sentence in findings["statements"]
    a.notes       # method notes per source

Ratios compare a row with the FP16 row of the same source, model and batch. Findings
are pooled over all rows given; ``compare`` keeps two sources apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wattscope.config import BASELINE_PRECISION, PRECISIONS, RunConfig

QUANTISED = ("int8", "nf4")
RATIOS = ("prefill_energy_ratio", "decode_energy_ratio", "decode_speed_ratio")
INPUTS = ("model", "batch", "precision", "prefill_energy_j", "decode_energy_j", "decode_tok_s")
CV_COLUMNS = ("prefill_energy_cv", "decode_energy_cv", "decode_tok_s_cv")
LOW_POWER_FRACTION = 0.25


def precision_label(p: str) -> str:
    return str(p).upper()


def _rank(label: str) -> int:
    p = label.lower()
    return PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS)


class AnalysisError(ValueError):
    """A source that cannot be analysed, phrased for the user."""


@dataclass
class Source:
    label: str
    data: Any  # a Recording, a tables.Table, or anything with .meta and .results
    kind: str  # "recording" | "table"

    @property
    def meta(self) -> dict[str, Any]:
        return getattr(self.data, "meta", None) or {}

    @property
    def results(self) -> pd.DataFrame:
        return getattr(self.data, "results", None) if getattr(self.data, "results", None) is not None else pd.DataFrame()

    @property
    def windows(self) -> pd.DataFrame:
        w = getattr(self.data, "windows", None)
        return w if isinstance(w, pd.DataFrame) else pd.DataFrame()


def open_source(src: Any, label: str | None = None) -> Source:
    """A Source from a path (``.csv`` = imported table, else a recording) or an object."""
    if isinstance(src, Source):
        return src
    if isinstance(src, (str, Path)):
        p = Path(src)
        if p.suffix.lower() == ".csv":
            from wattscope.tables import read_table

            return Source(label or p.stem, read_table(p), "table")
        from wattscope.recording import load

        return Source(label or p.stem, load(p), "recording")
    if not hasattr(src, "results") or not hasattr(src, "meta"):
        raise AnalysisError(
            f"cannot analyse a {type(src).__name__}; expected a recording or .csv path, "
            "a Recording, a Table, or an object with .meta and .results"
        )
    kind = "table" if (src.meta or {}).get("source") == "table" else "recording"
    path = getattr(src, "path", None)
    return Source(label or (Path(path).stem if path else ""), src, kind)


def open_sources(sources: Any) -> list[Source]:
    """One or several sources; labels made unique ('run', 'run (2)'), blanks numbered."""
    if isinstance(sources, (str, Path)) or not isinstance(sources, Iterable):
        sources = [sources]
    out: list[Source] = []
    seen: set[str] = set()
    for i, s in enumerate(sources, 1):
        src = open_source(s)
        label = src.label or f"source {i}"
        base, n = label, 2
        while label in seen:
            label, n = f"{base} ({n})", n + 1
        seen.add(label)
        out.append(Source(label, src.data, src.kind))
    if not out:
        raise AnalysisError("nothing to analyse: no sources given")
    return out


# ---------------------------------------------------------------------------- phases


def _num(row: pd.Series, col: str) -> float:
    v = row.get(col, math.nan)
    try:
        return float(v) if v is not None and not pd.isna(v) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _weights(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "unknown"
    return "synthetic" if bool(v) else "real"


def _tdp_w(src: Source) -> float:
    gpu = src.meta.get("gpu") or {}
    for key in ("tdp_w", "power_default_w", "power_limit_default_w"):
        if isinstance(gpu.get(key), (int, float)) and gpu[key] > 0:
            return float(gpu[key])
    return math.nan


def _rows(src: Source, idle_subtracted: bool, warnings: list[str]) -> list[dict[str, Any]]:
    res = src.results
    if res.empty:
        warnings.append(f"{src.label}: no configuration results")
        return []
    has_idle = {"prefill_energy_idle_sub_j", "decode_energy_idle_sub_j"} <= set(res.columns)
    if idle_subtracted and not has_idle:
        warnings.append(f"{src.label}: no idle baseline in this source; idle-subtracted energies are blank")
    source_tdp = _tdp_w(src)
    rows = []
    for _, r in res.iterrows():
        ok = bool(r.get("ok", True))
        model = str(r["model"])
        row: dict[str, Any] = {
            "source": src.label,
            "model_id": model,
            "model": RunConfig("", model, 1, "").model_label,
            "batch": int(r["batch"]),
            "precision": precision_label(r["precision"]),
            "weights": _weights(r.get("synthetic")),
            "ok": ok,
            "reason": "" if ok else str(r.get("reason") or "failed"),
        }
        suffix = "_idle_sub_j" if idle_subtracted else "_j"
        numbers = {
            "prefill_energy_j": _num(r, "prefill_energy" + suffix),
            "decode_energy_j": _num(r, "decode_energy" + suffix),
            "decode_tok_s": _num(r, "decode_tok_s"),
            "decode_energy_per_token_j": _num(r, "decode_energy_per_token_j"),
            "decode_steps": _num(r, "decode_steps"),
            "prefill_power_w": _num(r, "prefill_power_w"),
            "decode_power_w": _num(r, "decode_power_w"),
            "prefill_energy_cv": _num(r, "prefill_energy_cv"),
            "decode_energy_cv": _num(r, "decode_energy_cv"),
            "decode_tok_s_cv": _num(r, "decode_tok_s_cv"),
        }
        if idle_subtracted and math.isnan(numbers["decode_energy_per_token_j"]) is False:
            # Per-token energy follows the chosen energy: idle-subtracted run energy / tokens.
            steps = numbers["decode_steps"]
            numbers["decode_energy_per_token_j"] = numbers["decode_energy_j"] / (row["batch"] * steps)
        if not ok:
            numbers = dict.fromkeys(numbers, math.nan)
        row.update(numbers)
        tdp = _num(r, "tdp_w")
        row["tdp_w"] = tdp if not math.isnan(tdp) else source_tdp
        rows.append(row)
    return rows


def _add_ratios(df: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    for col in RATIOS:
        df[col] = math.nan
    for (source, model_id, batch), g in df.groupby(["source", "model_id", "batch"], sort=False):
        model = g["model"].iloc[0]
        base = g[g["precision"] == precision_label(BASELINE_PRECISION)]
        where = f"{source}: {model} batch {batch}"
        if base.empty:
            warnings.append(f"{where}: no FP16 baseline; ratios are blank")
            continue
        b = base.iloc[0]
        if not b["ok"]:
            warnings.append(f"{where}: the FP16 baseline failed ({b['reason']}); ratios are blank")
            continue
        for i in g.index:
            df.loc[i, "prefill_energy_ratio"] = df.loc[i, "prefill_energy_j"] / b["prefill_energy_j"]
            df.loc[i, "decode_energy_ratio"] = df.loc[i, "decode_energy_j"] / b["decode_energy_j"]
            df.loc[i, "decode_speed_ratio"] = df.loc[i, "decode_tok_s"] / b["decode_tok_s"]
        steps = set(g.loc[g["ok"], "decode_steps"].dropna())
        if len(steps) > 1:
            warnings.append(
                f"{where}: decode runs have different step counts {sorted(int(s) for s in steps)}; "
                "compare decode energy per token instead"
            )
    return df


_PHASE_ORDER = [
    "source", "model", "batch", "precision", "weights", "ok", "reason",
    "prefill_energy_j", "decode_energy_j", "decode_tok_s", *RATIOS,
    "decode_energy_per_token_j", "decode_steps", "prefill_power_w", "decode_power_w", "tdp_w",
    *CV_COLUMNS, "model_id",
]


def _phases(srcs: list[Source], idle_subtracted: bool, warnings: list[str]) -> pd.DataFrame:
    rows = [r for s in srcs for r in _rows(s, idle_subtracted, warnings)]
    df = pd.DataFrame(rows, columns=_PHASE_ORDER)
    if df.empty:
        return df
    df["batch"] = df["batch"].astype(int)
    df["ok"] = df["ok"].astype(bool)
    source_rank = {s.label: i for i, s in enumerate(srcs)}
    model_rank = {m: i for i, m in enumerate(dict.fromkeys(df["model_id"]))}
    order = sorted(
        df.index,
        key=lambda i: (
            source_rank[df.at[i, "source"]], model_rank[df.at[i, "model_id"]],
            df.at[i, "batch"], _rank(df.at[i, "precision"]),
        ),
    )
    df = df.loc[order].reset_index(drop=True)
    return _add_ratios(df, warnings)[_PHASE_ORDER]


def phases_table(sources: Any, *, idle_subtracted: bool = False) -> pd.DataFrame:
    """The phases table of one or more sources (see ``analyze`` for the warnings)."""
    return _phases(open_sources(sources), idle_subtracted, [])


# ----------------------------------------------------------------------------- power

_POWER_ORDER = [
    "source", "precision", "configs", "tdp_w",
    "prefill_power_min_w", "prefill_power_max_w", "prefill_tdp_min_pct", "prefill_tdp_max_pct",
    "decode_power_min_w", "decode_power_max_w", "decode_tdp_min_pct", "decode_tdp_max_pct",
]


def _power(phases: pd.DataFrame) -> pd.DataFrame:
    """Per source and precision: the range over configurations of each phase's average
    power, in W and as % of TDP (per row's TDP, so a table with a TDP column works)."""
    out = []
    if phases.empty:
        return pd.DataFrame(columns=_POWER_ORDER)
    ok = phases[phases["ok"]]
    for (source, precision), g in ok.groupby(["source", "precision"], sort=False):
        if g[["prefill_power_w", "decode_power_w"]].isna().all().all():
            continue
        row: dict[str, Any] = {"source": source, "precision": precision, "configs": len(g)}
        tdps = g["tdp_w"].dropna().unique()
        row["tdp_w"] = float(tdps[0]) if len(tdps) == 1 else math.nan
        for phase in ("prefill", "decode"):
            w = g[f"{phase}_power_w"]
            pct = w / g["tdp_w"] * 100
            row[f"{phase}_power_min_w"] = w.min()
            row[f"{phase}_power_max_w"] = w.max()
            row[f"{phase}_tdp_min_pct"] = pct.min()
            row[f"{phase}_tdp_max_pct"] = pct.max()
        out.append(row)
    df = pd.DataFrame(out, columns=_POWER_ORDER)
    if not df.empty:
        df["_r"] = [_rank(p) for p in df["precision"]]
        src_rank = {s: i for i, s in enumerate(dict.fromkeys(phases["source"]))}
        df["_s"] = [src_rank[s] for s in df["source"]]
        df = df.sort_values(["_s", "_r"], kind="stable").drop(columns=["_r", "_s"]).reset_index(drop=True)
    return df


def power_table(sources: Any) -> pd.DataFrame:
    return _power(_phases(open_sources(sources), False, []))


# -------------------------------------------------------------------------- findings


def _range(values: Iterable[float]) -> list[float] | None:
    v = [float(x) for x in values if not math.isnan(x)]
    return [min(v), max(v)] if v else None


def _x(v: float) -> str:
    return f"{v:.2f}x"


def _where(r: pd.Series, multi: bool) -> str:
    s = f"{r['model']} batch {r['batch']} {r['precision']}"
    return f"{s} [{r['source']}]" if multi else s


def _low_power_sentence(e: dict[str, Any], threshold: float, multi: bool) -> str:
    who = f"{e['precision']} [{e['source']}]" if multi else e["precision"]
    of_tdp = "" if math.isnan(e["tdp_w"]) else f" of {e['tdp_w']:.0f} W"
    lo, hi = e["decode_speed_ratio_range"]
    return (
        f"{who} average power stayed under {threshold:.0f}% of TDP in both phases (at most "
        f"{e['max_tdp_pct']:.0f}%{of_tdp}) while decoding at {_x(lo)} to {_x(hi)} FP16 speed: a low-power, "
        "low-throughput signature that points at the GPU being under-used rather than at more work."
    )


def findings(
    phases: pd.DataFrame,
    power: pd.DataFrame,
    stack: str,
    low_power_fraction: float = LOW_POWER_FRACTION,
) -> dict[str, Any]:
    """Observations computed from the tables; ``findings['statements']`` phrases each one
    from its numbers. ``stack`` names the hardware/software the rows come from."""
    multi = phases["source"].nunique() > 1 if not phases.empty else False
    usable = phases[phases["ok"]] if not phases.empty else phases
    q = usable[usable["precision"].str.lower().isin(QUANTISED)] if not usable.empty else usable
    q = q[q[["prefill_energy_ratio", "decode_energy_ratio"]].notna().all(axis=1)] if not q.empty else q
    st: dict[str, str] = {}
    f: dict[str, Any] = {"quantised_rows": len(q)}

    f["prefill_ratio_range"] = _range(q["prefill_energy_ratio"]) if len(q) else None
    f["decode_ratio_range"] = _range(q["decode_energy_ratio"]) if len(q) else None
    if len(q):
        (plo, phi), (dlo, dhi) = f["prefill_ratio_range"], f["decode_ratio_range"]
        precs = ", ".join(dict.fromkeys(sorted(q["precision"], key=_rank)))
        st["ratio_ranges"] = (
            f"Across the {len(q)} quantised configurations measured ({precs}), prefill energy ratios "
            f"to FP16 range from {_x(plo)} to {_x(phi)}, and decode energy ratios from {_x(dlo)} to {_x(dhi)}."
        )
    else:
        st["ratio_ranges"] = "No quantised configuration has an FP16 baseline, so no energy ratios are reported."

    exceptions = [
        {"source": r["source"], "model": r["model"], "batch": int(r["batch"]), "precision": r["precision"],
         "prefill_energy_ratio": float(r["prefill_energy_ratio"]),
         "decode_energy_ratio": float(r["decode_energy_ratio"])}
        for _, r in q.iterrows() if not r["prefill_energy_ratio"] > r["decode_energy_ratio"]
    ]
    f["prefill_exceeds_decode"] = {"all": (not exceptions) if len(q) else None, "exceptions": exceptions}
    if len(q) and not exceptions:
        st["prefill_exceeds_decode"] = (
            "The quantisation energy overhead was larger in prefill than in decode in every quantised "
            f"configuration ({len(q)} of {len(q)})."
        )
    elif len(q):
        listed = "; ".join(
            f"{_where(pd.Series(e), multi)} (prefill {_x(e['prefill_energy_ratio'])}, decode {_x(e['decode_energy_ratio'])})"
            for e in exceptions
        )
        st["prefill_exceeds_decode"] = (
            "The quantisation energy overhead was larger in prefill than in decode in "
            f"{len(q) - len(exceptions)} of {len(q)} quantised configurations; exceptions: {listed}."
        )

    crossovers = [
        {"source": r["source"], "model": r["model"], "batch": int(r["batch"]), "precision": r["precision"],
         "phase": phase, "ratio": float(r[f"{phase}_energy_ratio"])}
        for _, r in q.iterrows() for phase in ("prefill", "decode") if r[f"{phase}_energy_ratio"] < 1
    ]
    f["crossovers"] = crossovers
    if len(q) and not crossovers:
        st["crossovers"] = (
            "No energy crossover was observed: no quantised configuration used less energy than FP16 "
            "of the same model and batch in either phase."
        )
    elif crossovers:
        listed = "; ".join(f"{_where(pd.Series(c), multi)} {c['phase']} ({_x(c['ratio'])})" for c in crossovers)
        st["crossovers"] = f"Energy crossovers (less energy than FP16 of the same model and batch): {listed}."

    speed: dict[str, list[float]] = {}
    non_fp16 = usable[usable["precision"] != precision_label(BASELINE_PRECISION)] if not usable.empty else usable
    for prec in sorted(dict.fromkeys(non_fp16["precision"]) if len(non_fp16) else [], key=_rank):
        rng = _range(non_fp16.loc[non_fp16["precision"] == prec, "decode_speed_ratio"])
        if rng:
            speed[prec] = rng
    f["decode_speed_ratio_range"] = speed
    if speed:
        parts = [f"{p} {_x(lo)} to {_x(hi)} ({lo:.0%} to {hi:.0%} of FP16 tok/s)" for p, (lo, hi) in speed.items()]
        st["decode_speed"] = "Decode speed relative to FP16 of the same model and batch: " + "; ".join(parts) + "."

    threshold = low_power_fraction * 100
    f["low_power_threshold_pct"] = threshold
    low: list[dict[str, Any]] = []
    assessed = False
    for _, r in power.iterrows():
        pcts = [r["prefill_tdp_max_pct"], r["decode_tdp_max_pct"]]
        if any(math.isnan(p) for p in pcts) or r["precision"] == precision_label(BASELINE_PRECISION):
            continue
        sel = non_fp16[(non_fp16["source"] == r["source"]) & (non_fp16["precision"] == r["precision"])]
        rng = _range(sel["decode_speed_ratio"])
        if rng is None:
            continue
        assessed = True
        if max(pcts) < threshold and rng[1] < 1:
            low.append({"source": r["source"], "precision": r["precision"], "max_tdp_pct": float(max(pcts)),
                        "tdp_w": float(r["tdp_w"]), "decode_speed_ratio_range": rng})
    f["low_power"] = low
    if low:
        st["low_power"] = " ".join(_low_power_sentence(e, threshold, multi) for e in low)
    elif assessed:
        st["low_power"] = (
            f"No precision combined average power under {threshold:.0f}% of TDP with slower decode than FP16."
        )
    else:
        st["low_power"] = "The low-power diagnostic was not assessed: no average power with a TDP in the source(s)."
    st["scope"] = f"These are observations under this stack ({stack}), not general claims about quantisation."
    f["statements"] = st
    return f
