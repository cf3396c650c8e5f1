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

Ratios compare a row with the FP16 row of the same source, model and batch, by the
ratio rule of ``wattscope.metrics`` (a ratio the rule refuses is NaN). Findings are
pooled over all rows given; ``compare`` keeps two sources apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wattscope.config import QUANTISED, model_labels
from wattscope.errors import WattscopeError
from wattscope.metrics import (
    CI_COLUMNS,
    CV_OF,
    RATIO_NAMES,
    RATIOS,
    RELOADED,
    RatioValue,
    is_baseline,
    percent_of_tdp,
    precision_label,
    precision_rank,
    ratio_text,
    ratio_value,
    ratios,
    reloaded_groups,
    run_meta,
    separated,
    sorted_rows,
)

INPUTS = ("model", "batch", "precision", "prefill_energy_j", "decode_energy_j", "decode_tok_s")
LOW_POWER_FRACTION = 0.25


class SourceError(WattscopeError, ValueError):
    """A source that cannot be opened or analysed, phrased for the user (names the file)."""


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
        r = getattr(self.data, "results", None)
        return r if isinstance(r, pd.DataFrame) else pd.DataFrame()

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
            from wattscope.tables import TableError, read_table

            try:
                return Source(label or p.stem, read_table(p), "table")
            except TableError as e:
                raise SourceError(str(e)) from None
        from wattscope.recording import RecordingError, label as recording_label, load

        try:
            return Source(label or recording_label(p), load(p), "recording")
        except RecordingError as e:
            raise SourceError(str(e)) from None
    if not hasattr(src, "results") or not hasattr(src, "meta"):
        raise SourceError(
            f"cannot analyse a {type(src).__name__}; expected a recording or .csv path, "
            "a Recording, a Table, or an object with .meta and .results"
        )
    kind = "table" if (src.meta or {}).get("source") == "table" else "recording"
    path = getattr(src, "path", None)
    if not label and path:
        from wattscope.recording import label as recording_label

        label = recording_label(path)
    return Source(label or "", src, kind)


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
        raise SourceError("nothing to analyse: no sources given")
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
    tdp = run_meta(src.meta).tdp_w
    return math.nan if tdp is None else tdp


def _rows(src: Source, idle_subtracted: bool, warnings: list[str]) -> list[dict[str, Any]]:
    res = src.results
    if res.empty:
        warnings.append(f"{src.label}: no configuration results")
        return []
    has_idle = {"prefill_energy_idle_sub_j", "decode_energy_idle_sub_j"} <= set(res.columns)
    if idle_subtracted and not has_idle:
        warnings.append(f"{src.label}: no idle baseline in this source; idle-subtracted energies are blank")
    source_tdp = _tdp_w(src)
    # Each row's engine is in its result; recordings made before it was, keep it in the sweep.
    configs = run_meta(src.meta).sweep.get("configs") or []
    engine_of = {c.get("config_id"): c.get("engine") for c in configs if isinstance(c, dict)}
    # Rows are keyed by the full model id; the Model column names it short where that
    # is unambiguous in this source.
    labels = model_labels(str(m) for m in res["model"])
    rows = []
    for _, r in res.iterrows():
        ok = bool(r.get("ok", True))
        model = str(r["model"])
        row: dict[str, Any] = {
            "source": src.label,
            "model_id": model,
            "model": labels[model],
            "batch": int(r["batch"]),
            "precision": precision_label(r["precision"]),
            "weights": _weights(r.get("synthetic")),
            # Rows of an imported table or an older recording ran the eager stack.
            "engine": next((e for e in (r.get("engine"), engine_of.get(r.get("config_id"))) if isinstance(e, str)), "eager"),
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
            **{cv: _num(r, cv) for cv in CV_OF.values()},
            # Paired-round ratios and their intervals where the source has them (recordings
            # made with rounds); they are of the counter energies, so an idle-subtracted
            # table recomputes its ratios by the plain rule instead.
            **{f"{n}_paired": math.nan if idle_subtracted else _num(r, n) for n in RATIO_NAMES},
            **{c: math.nan if idle_subtracted else _num(r, c) for c in CI_COLUMNS},
            "rounds": _num(r, "rounds"),
        }
        if idle_subtracted:
            # Per-token energy follows the chosen energy: idle-subtracted run energy / tokens.
            tokens = row["batch"] * numbers["decode_steps"]
            numbers["decode_energy_per_token_j"] = numbers["decode_energy_j"] / tokens if tokens > 0 else math.nan
        if not ok:
            numbers = dict.fromkeys(numbers, math.nan)
        row.update(numbers)
        tdp = _num(r, "tdp_w")
        row["tdp_w"] = tdp if not math.isnan(tdp) else source_tdp
        rows.append(row)
    return rows


def _add_ratios(df: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    keys = ["source", "model_id", "batch", "engine"]
    fp16 = df["precision"].map(is_baseline).astype(bool)
    for (source, _, batch, _engine), g in df.groupby(keys, sort=False):
        where = f"{source}: {g['model'].iloc[0]} batch {batch}"
        base = g[fp16[g.index]]
        if base.empty:
            warnings.append(f"{where}: no FP16 baseline; ratios are blank")
        elif not base["ok"].iloc[0]:
            warnings.append(f"{where}: the FP16 baseline failed ({base['reason'].iloc[0]}); ratios are blank")
        elif g.loc[g["ok"], "decode_steps"].dropna().nunique() > 1:
            steps = sorted(int(x) for x in g.loc[g["ok"], "decode_steps"].dropna().unique())
            warnings.append(f"{where}: decode runs have different step counts {steps}; compare decode energy per token instead")
    # The ratio rule is metrics.ratios, row by row: the row's paired ratio and interval
    # where it has them, else value / base, nothing where the baseline is unusable.
    cols = [r.figure for r in RATIOS]
    base = df.loc[fp16 & df["ok"], keys + cols].drop_duplicates(keys)
    b = df[keys].merge(base, on=keys, how="left")
    paired = {f"{r.name}_paired": r.name for r in RATIOS}
    values = []
    for i in range(len(df)):
        row = df.iloc[i]
        figures = {c: row[c] for c in cols} | {name: row[col] for col, name in paired.items()}
        figures |= {c: row[c] for c in CI_COLUMNS}
        values.append(ratios(figures, {c: b.iloc[i][c] for c in cols}))
    df = df.drop(columns=list(paired))
    for r in RATIOS:
        got = [v[r.name] for v in values]
        df[r.name] = [math.nan if v is None else v.value for v in got]
        df[f"{r.name}_low"] = [math.nan if v is None or v.low is None else v.low for v in got]
        df[f"{r.name}_high"] = [math.nan if v is None or v.high is None else v.high for v in got]
    return df


_PHASE_ORDER = [
    "source", "model", "batch", "precision", "weights", "ok", "reason",
    "prefill_energy_j", "decode_energy_j", "decode_tok_s", *RATIO_NAMES,
    "decode_energy_per_token_j", "decode_steps", "prefill_power_w", "decode_power_w", "tdp_w",
    *CV_OF.values(), "model_id", *CI_COLUMNS, "rounds", "engine",
]
_ROW_COLUMNS = [*_PHASE_ORDER, *(f"{n}_paired" for n in RATIO_NAMES)]


def _phases(srcs: list[Source], idle_subtracted: bool, warnings: list[str]) -> pd.DataFrame:
    per_source = [_rows(s, idle_subtracted, warnings) for s in srcs]
    # Sources in the order given; within each, models in their order across all sources.
    models = list(dict.fromkeys(r["model_id"] for rows in per_source for r in rows))
    rows = [
        r for rows in per_source
        for r in sorted_rows(rows, lambda r: (r["model_id"], r["batch"], r["precision"], r["engine"]), models)
    ]
    df = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    if df.empty:
        return df
    df["batch"] = df["batch"].astype(int)
    df["ok"] = df["ok"].astype(bool)
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
            pct = pd.Series([percent_of_tdp(v, t) for v, t in zip(w, g["tdp_w"])], dtype=float)
            row[f"{phase}_power_min_w"] = w.min()
            row[f"{phase}_power_max_w"] = w.max()
            row[f"{phase}_tdp_min_pct"] = pct.min()
            row[f"{phase}_tdp_max_pct"] = pct.max()
        out.append(row)
    df = pd.DataFrame(out, columns=_POWER_ORDER)
    if not df.empty:
        df["_r"] = [precision_rank(p) for p in df["precision"]]
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


def _x_range(lo: float, hi: float, pct: bool = False) -> str:
    """'0.14x to 0.16x', or one value where both print the same; with pct, also as % of FP16."""
    same = ratio_text(lo) == ratio_text(hi)
    text = ratio_text(lo) if same else f"{ratio_text(lo)} to {ratio_text(hi)}"
    if pct:
        text += f" ({lo:.0%} of FP16 tok/s)" if same else f" ({lo:.0%} to {hi:.0%} of FP16 tok/s)"
    return text


def _spread(lo: float, hi: float) -> str:
    same = ratio_text(lo) == ratio_text(hi)
    return f"are all {ratio_text(lo)}" if same else f"range from {ratio_text(lo)} to {ratio_text(hi)}"


def _where(r: pd.Series, multi: bool) -> str:
    s = f"{r['model']} batch {r['batch']} {r['precision']}"
    if r.get("engine", "eager") != "eager":
        s += f" ({r['engine']} engine)"
    return f"{s} [{r['source']}]" if multi else s


def _ci_text(c: dict[str, Any]) -> str:
    """A ratio with its interval where it has one: ``0.87x [0.80, 0.93]``."""
    text = ratio_text(c["ratio"])
    ci = c.get("ci")
    return text if not ci or None in ci else f"{text} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _with_ci(q: pd.DataFrame, e: dict[str, Any], phase: str) -> str:
    row = q[(q["source"] == e["source"]) & (q["model"] == e["model"]) & (q["batch"] == e["batch"])
            & (q["precision"] == e["precision"]) & (q["engine"] == e["engine"])].iloc[0]
    v = ratio_value(row, f"{phase}_energy_ratio")
    assert v is not None
    return _ci_text({"ratio": v.value, "ci": [v.low, v.high]})


def _low_power_sentence(e: dict[str, Any], threshold: float, multi: bool) -> str:
    who = f"{e['precision']} [{e['source']}]" if multi else e["precision"]
    of_tdp = "" if math.isnan(e["tdp_w"]) else f" of {e['tdp_w']:.0f} W"
    lo, hi = e["decode_speed_ratio_range"]
    return (
        f"{who} average power stayed under {threshold:.0f}% of TDP in both phases (at most "
        f"{e['max_tdp_pct']:.0f}%{of_tdp}) while decoding at {_x_range(lo, hi)} FP16 speed: a low-power, "
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
        precs = ", ".join(dict.fromkeys(sorted(q["precision"], key=precision_rank)))
        st["ratio_ranges"] = (
            f"Across the {len(q)} quantised configurations measured ({precs}), prefill energy ratios "
            f"to FP16 {_spread(plo, phi)}, and decode energy ratios {_spread(dlo, dhi)}."
        )
    else:
        st["ratio_ranges"] = "No quantised configuration has an FP16 baseline, so no energy ratios are reported."

    # With intervals (paired rounds), a comparison is claimed only where the intervals
    # separate; rows without (imported tables, older recordings) compare point values.
    has_ci = bool(len(q)) and bool(q[list(CI_COLUMNS)].notna().any(axis=None))
    exceptions: list[dict[str, Any]] = []
    undecided: list[dict[str, Any]] = []
    for _, r in q.iterrows():
        pv, dv = ratio_value(r, "prefill_energy_ratio"), ratio_value(r, "decode_energy_ratio")
        assert pv is not None and dv is not None
        entry = {"source": r["source"], "model": r["model"], "batch": int(r["batch"]), "precision": r["precision"],
                 "engine": r["engine"], "prefill_energy_ratio": pv.value, "decode_energy_ratio": dv.value}
        sep = separated(pv, dv)
        if sep is None and has_ci:
            sep = 0  # among rows with intervals, one without cannot be counted as decided
        if sep == 0:
            undecided.append(entry | {"prefill_ci": [pv.low, pv.high], "decode_ci": [dv.low, dv.high]})
        elif sep == -1 or (sep is None and not pv.value > dv.value):
            exceptions.append(entry)
    decided = len(q) - len(undecided)
    f["prefill_exceeds_decode"] = {
        "all": (not exceptions and not undecided) if len(q) else None, "exceptions": exceptions, "undecided": undecided,
    }
    if len(q) and not has_ci:
        if not exceptions:
            st["prefill_exceeds_decode"] = (
                "The quantisation energy overhead was larger in prefill than in decode in every quantised "
                f"configuration ({len(q)} of {len(q)})."
            )
        else:
            listed = "; ".join(
                f"{_where(pd.Series(e), multi)} (prefill {ratio_text(e['prefill_energy_ratio'])}, decode {ratio_text(e['decode_energy_ratio'])})"
                for e in exceptions
            )
            st["prefill_exceeds_decode"] = (
                "The quantisation energy overhead was larger in prefill than in decode in "
                f"{len(q) - len(exceptions)} of {len(q)} quantised configurations; exceptions: {listed}."
            )
    elif len(q):
        text = (
            "Judged by their 95% intervals, the quantisation energy overhead was larger in prefill than in decode "
            f"in {decided - len(exceptions)} of the {decided} quantised configurations whose intervals separate"
            if decided else
            f"In none of the {len(q)} quantised configurations do the prefill and decode intervals separate"
        )
        if exceptions:
            text += "; larger in decode: " + "; ".join(
                f"{_where(pd.Series(e), multi)} (prefill {_with_ci(q, e, 'prefill')}, decode {_with_ci(q, e, 'decode')})"
                for e in exceptions)
        if undecided:
            text += "; undecided (intervals overlap): " + "; ".join(
                f"{_where(pd.Series(e), multi)} (prefill {_with_ci(q, e, 'prefill')}, decode {_with_ci(q, e, 'decode')})"
                for e in undecided)
        st["prefill_exceeds_decode"] = text + "."

    crossovers: list[dict[str, Any]] = []
    near: list[dict[str, Any]] = []
    for _, r in q.iterrows():
        for phase in ("prefill", "decode"):
            v = ratio_value(r, f"{phase}_energy_ratio")
            assert v is not None
            c = {"source": r["source"], "model": r["model"], "batch": int(r["batch"]), "precision": r["precision"],
                 "engine": r["engine"], "phase": phase, "ratio": v.value}
            if v.high is not None:
                c["ci"] = [v.low, v.high]
                if v.high < 1:
                    crossovers.append(c)
                elif v.value < 1 or (v.low is not None and v.low < 1):
                    near.append(c)
            elif v.value < 1:
                crossovers.append(c)
    f["crossovers"] = crossovers
    f["crossovers_undecided"] = near
    rule = " (claimed only where the whole 95% interval lies below 1.0)" if has_ci else ""
    if len(q) and not crossovers:
        st["crossovers"] = (
            "No energy crossover was observed: no quantised configuration used less energy than FP16 "
            f"of the same model and batch in either phase{rule}."
        )
    elif crossovers:
        listed = "; ".join(f"{_where(pd.Series(c), multi)} {c['phase']} ({_ci_text(c)})" for c in crossovers)
        st["crossovers"] = f"Energy crossovers (less energy than FP16 of the same model and batch){rule}: {listed}."
    if near:
        st["crossovers"] = st.get("crossovers", "") + " Undecided (the interval includes 1.0): " + "; ".join(
            f"{_where(pd.Series(c), multi)} {c['phase']} ({_ci_text(c)})" for c in near) + "."

    speed: dict[str, list[float]] = {}
    non_fp16 = usable[~usable["precision"].map(is_baseline).astype(bool)] if not usable.empty else usable
    for prec in sorted(dict.fromkeys(non_fp16["precision"]) if len(non_fp16) else [], key=precision_rank):
        rng = _range(non_fp16.loc[non_fp16["precision"] == prec, "decode_speed_ratio"])
        if rng:
            speed[prec] = rng
    f["decode_speed_ratio_range"] = speed
    if speed:
        parts = [f"{p} {_x_range(lo, hi, pct=True)}" for p, (lo, hi) in speed.items()]
        st["decode_speed"] = "Decode speed relative to FP16 of the same model and batch: " + "; ".join(parts) + "."

    threshold = low_power_fraction * 100
    f["low_power_threshold_pct"] = threshold
    low: list[dict[str, Any]] = []
    assessed = False
    for _, r in power.iterrows():
        pcts = [r["prefill_tdp_max_pct"], r["decode_tdp_max_pct"]]
        if any(math.isnan(p) for p in pcts) or is_baseline(r["precision"]):
            continue
        sel = non_fp16[(non_fp16["source"] == r["source"]) & (non_fp16["precision"] == r["precision"])]
        rng = _range(sel["decode_speed_ratio"])
        if rng is None:
            continue
        assessed = True
        # Slower than FP16 must hold for the whole interval where the rows have one.
        upper = max(h if math.isfinite(h) else v for v, h in zip(sel["decode_speed_ratio"], sel["decode_speed_ratio_high"]))
        if max(pcts) < threshold and rng[1] < 1 and upper < 1:
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


# ------------------------------------------------------------------------------ notes


def _fmt_items(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _window_lengths(windows: pd.DataFrame) -> str | None:
    if windows.empty or "role" not in windows:
        return None
    m = windows[windows["role"] == "measure"]
    parts = []
    for phase in ("prefill", "decode"):
        d = m.loc[m["phase"] == phase, "duration_s"] if "duration_s" in m else pd.Series(dtype=float)
        if len(d):
            parts.append(f"{phase} median {d.median():.2f} s, min {d.min():.2f} s ({len(d)} windows)")
    return "; ".join(parts) or None


def _weights_note(results: pd.DataFrame) -> str:
    if results.empty or "synthetic" not in results:
        return "not stated"
    w = [_weights(v) for v in results["synthetic"]]
    n_syn = w.count("synthetic")
    if n_syn == len(w):
        return "synthetic (random) weights in every configuration: energy and speed are meaningful, outputs are not"
    if n_syn:
        return f"synthetic (random) weights in {n_syn} of {len(w)} configurations (see the weights column)"
    return "real weights" if "unknown" not in w else "not stated"


def _interval_note(results: pd.DataFrame) -> str:
    rounds = results["rounds"].dropna() if "rounds" in results else pd.Series(dtype=float)
    rounds = rounds[rounds > 0]
    if rounds.empty:
        return "none: recorded before paired rounds, so its ratios carry no interval"
    span = f"{rounds.min():.0f}" if rounds.min() == rounds.max() else f"{rounds.min():.0f} to {rounds.max():.0f}"
    return (f"95% t-interval of the geometric mean of per-round paired ratios (log scale), {span} rounds per row; "
            "the precisions of a model and batch rotate in shuffled rounds so drift cancels in each round's ratio")


def _reload_note(results: pd.DataFrame) -> str:
    """The groups whose precisions were loaded one at a time (ConfigResult.reloaded); ""
    where none were, so recordings without reloads keep their notes as they were."""
    if "reloaded" not in results:
        return ""
    groups = reloaded_groups(zip(results["model"], results["batch"], results["engine"], results["ok"],
                                 results["reloaded"].eq(True)))
    return f"{RELOADED}: {', '.join(groups)}" if groups else ""


def method_notes(src: Source) -> dict[str, str]:
    """What is known about how a source's numbers were made, item -> sentence."""
    meta = src.meta
    if src.kind == "table":
        notes = {
            "source": f"imported table {Path(meta.get('path', src.label)).name}",
            "method": "imported table; method unknown (GPU, driver, signal, windows and repeats not recorded)",
            "decode energy": (
                "per 32 decode steps of the whole batch (assumed: the seed protocol)"
                if meta.get("decode_steps_assumed", True) else "per decode run of the table's decode_steps"
            ),
        }
        cols = meta.get("columns", [])
        notes["average power"] = "from the table" if "prefill_power_w" in cols or "decode_power_w" in cols else "not in the table"
        notes["TDP"] = "from the table's tdp_w column" if "tdp_w" in cols else "not in the table"
        notes["weights"] = "not stated"
        notes["intervals"] = "none: an imported table holds point values, so its ratios carry no interval"
        return notes

    run = run_meta(meta)
    gpu = run.gpu
    protocol = run.sweep.get("protocol") or {}
    notes = {"source": f"recording {Path(getattr(src.data, 'path', None) or src.label).name}"}
    if run.simulated:
        notes["simulated"] = "simulated GPU: a demo of the pipeline, the numbers are not measurements"
    status = meta.get("status")
    if status and status != "completed":
        notes["status"] = f"run {status}" + (f" ({meta['end_reason']})" if meta.get("end_reason") else "")
    notes["GPU"] = (gpu.name if gpu else "") or "not recorded"
    notes["driver"] = (gpu.driver if gpu else "") or "not recorded"
    notes["TDP"] = "not recorded" if run.tdp_w is None else f"{run.tdp_w:.0f} W (default power limit)"
    notes["energy signal"] = run.energy_signal or "energy counter read at both edges of each window"
    if gpu and gpu.signal_sources:
        notes["signals"] = _fmt_items(gpu.signal_sources)
    if gpu and gpu.signals_absent:
        notes["absent signals"] = "; ".join(f"{k} ({v})" for k, v in gpu.signals_absent.items())
    if gpu and gpu.refresh_s:
        notes["sensor refresh"] = ", ".join(
            f"{k} not measured" if (ms := gpu.refresh_ms(k)) is None else f"{k} {ms:.0f} ms" for k in gpu.refresh_s
        )
    else:
        notes["sensor refresh"] = "not recorded"
    sampler = run.sampler
    if sampler:
        notes["sampler"] = f"{sampler.get('rate_hz', '?')} Hz power, energy counter at {sampler.get('energy_hz', '?')} Hz"
    notes["windows"] = _window_lengths(src.windows) or "not recorded"
    if protocol:
        if "min_rounds" in protocol:
            measured = (
                f"interleaved rounds of every precision of a model and batch, at least {protocol['min_rounds']}, until "
                f"every ratio's 95% interval is within +-{protocol.get('ci_target', 0):.0%} or "
                f"{protocol.get('max_row_s', '?')} s have passed"
            )
        else:  # recordings made before rounds
            measured = f"{protocol.get('repeats', '?')} measured repeats per phase"
        notes["protocol"] = (
            f"{measured}, prompt {protocol.get('prompt_tokens', '?')} tokens, {protocol.get('decode_steps', '?')} "
            f"decode steps per run, windows of at least {protocol.get('min_window_s', '?')} s"
        )
    notes["weights"] = _weights_note(src.results)
    notes["intervals"] = _interval_note(src.results)
    if reloaded := _reload_note(src.results):
        notes["loading"] = reloaded
    bnb = run.sweep.get("bitsandbytes") or {}
    packages = run.packages
    if bnb or packages.get("bitsandbytes"):
        version = packages.get("bitsandbytes")
        notes["bitsandbytes"] = ", ".join(
            x for x in (f"version {version}" if version else "", _fmt_items(bnb)) if x
        )
    if packages:
        notes["versions"] = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    return notes


def _stack(srcs: list[Source]) -> str:
    parts = []
    for s in srcs:
        if s.kind == "table":
            parts.append(f"{s.label}: imported table, method unknown")
            continue
        run = run_meta(s.meta)
        gpu = (run.gpu.name if run.gpu else "") or "unknown GPU"
        bnb = run.packages.get("bitsandbytes")
        desc = f"{gpu}" + (f", bitsandbytes {bnb}" if bnb else "")
        if run.simulated:
            desc += ", simulated"
        parts.append(desc if len(srcs) == 1 else f"{s.label}: {desc}")
    return "; ".join(parts)


# ------------------------------------------------------------------------- crosscheck

_CROSS_ORDER = [
    "source", "config_id", "model", "batch", "precision", "phase", "windows",
    "counter_j", "integrated_j", "difference_pct", "stalled_windows",
]


def crosscheck_table(sources: Any) -> pd.DataFrame:
    """Counter energy vs integrated instant power, per configuration and phase over the
    measured windows. ``difference_pct`` = (integrated / counter - 1) x 100; instant
    samples under-count bursty loads, so a negative difference is expected.
    ``stalled_windows`` counts the windows the sampler did not cover (a hole or a rate
    drop, ``metrics.sampler_stall``): there the integral interpolates and is unreliable."""
    frames = []
    for src in open_sources(sources):
        w = src.windows
        if w.empty or "integrated_j" not in w:
            continue
        m = w[w["role"] == "measure"]
        if "sampler_stall" not in m:  # windows from elsewhere than a recording: no verdict
            m = m.assign(sampler_stall=None)
        g = m.groupby(["config_id", "phase"], sort=False).agg(
            windows=("energy_j", "size"), counter_j=("energy_j", "sum"),
            integrated_j=("integrated_j", "sum"), covered=("integrated_j", "count"),
            stalled_windows=("sampler_stall", "count"),  # windows metrics.sampler_stall flags
        ).reset_index()
        # A window the instant samples did not cover leaves its group's sum unknown.
        g["integrated_j"] = g["integrated_j"].where(g.pop("covered") == g["windows"])
        g["difference_pct"] = (g["integrated_j"] / g["counter_j"] - 1) * 100
        res = src.results
        if not res.empty and "config_id" in res:
            info = res[["config_id", "model", "batch", "precision"]].copy()
            labels = model_labels(str(x) for x in info["model"])
            info["model"] = [labels[str(x)] for x in info["model"]]
            info["precision"] = [precision_label(p) for p in info["precision"]]
            g = g.merge(info, on="config_id", how="left")
        g["source"] = src.label
        frames.append(g.reindex(columns=_CROSS_ORDER))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_CROSS_ORDER)


# --------------------------------------------------------------------------- analyze


@dataclass
class Analysis:
    """Everything the exports draw: DataFrames, findings (dict) and notes per source."""

    phases: pd.DataFrame
    power: pd.DataFrame
    findings: dict[str, Any]
    notes: dict[str, dict[str, str]]
    crosscheck: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return [k for k in self.notes if k != "analysis"]


def analyze(
    sources: Any,
    *,
    idle_subtracted: bool = False,
    low_power_fraction: float = LOW_POWER_FRACTION,
) -> Analysis:
    """Tables, findings and notes of one or more sources (paths or objects)."""
    if isinstance(sources, Analysis):
        return sources
    srcs = open_sources(sources)
    warnings: list[str] = []
    phases = _phases(srcs, idle_subtracted, warnings)
    power = _power(phases)
    for s in srcs:
        w = getattr(s.data, "warnings", None)
        if isinstance(w, pd.DataFrame) and not w.empty and "message" in w:
            warnings.extend(f"{s.label}: recorded: {m}" for m in w["message"])
    notes: dict[str, dict[str, str]] = {s.label: method_notes(s) for s in srcs}
    notes["analysis"] = {
        "ratios": "each row over the FP16 row of the same source, model and batch; above 1 is more energy or lower speed",
        "decode energy": "per run of decode_steps decode steps of the whole batch (32 in the seed protocol)",
    }
    if any(s.kind == "recording" for s in srcs):
        notes["analysis"] |= {
            "energies": (
                "idle-subtracted: idle power x window time subtracted from each window, then divided by its calls"
                if idle_subtracted else "energy counter difference over each window, divided by the calls in it"
            ),
            "figures": "median over the measured windows of each configuration; CV is the sample CV (n-1) across them",
            "average power": "mean over a configuration's windows of energy / duration; ranges are over configurations",
        }
    elif idle_subtracted:
        notes["analysis"]["energies"] = "idle-subtracted energies requested; imported tables have none"
    return Analysis(
        phases=phases,
        power=power,
        findings=findings(phases, power, _stack(srcs), low_power_fraction),
        notes=notes,
        crosscheck=crosscheck_table(srcs),
        warnings=warnings,
        options={"idle_subtracted": idle_subtracted, "low_power_fraction": low_power_fraction},
    )


# --------------------------------------------------------------------------- compare


@dataclass
class Comparison:
    """Two analyses side by side: ``table`` has each ratio of A and B per (model, batch,
    precision) and B - A; ``differences`` lists findings that differ."""

    a: Analysis
    b: Analysis
    labels: tuple[str, str]
    table: pd.DataFrame
    differences: list[dict[str, Any]]


def _summary(f: dict[str, Any]) -> dict[str, Any]:
    """Findings reduced to what a reader compares: ranges at the printed two decimals,
    sets of rows as sorted labels (sources dropped, since A and B differ by source)."""

    def rng(r: list[float] | None) -> list[float] | None:
        return None if r is None else [round(r[0], 2), round(r[1], 2)]

    def label(e: dict[str, Any]) -> str:
        engine = e.get("engine", "eager")
        return f"{e['model']} b{e['batch']} {e['precision']}" + ("" if engine == "eager" else f" {engine}")

    return {
        "prefill_ratio_range": rng(f["prefill_ratio_range"]),
        "decode_ratio_range": rng(f["decode_ratio_range"]),
        "prefill_exceeds_decode": f["prefill_exceeds_decode"]["all"],
        "prefill_exceeds_decode_exceptions": sorted(label(e) for e in f["prefill_exceeds_decode"]["exceptions"]),
        "prefill_exceeds_decode_undecided": sorted(label(e) for e in f["prefill_exceeds_decode"].get("undecided", [])),
        "crossovers": sorted(f"{label(c)} {c['phase']}" for c in f["crossovers"]),
        "decode_speed_ratio_range": {p: rng(r) for p, r in f["decode_speed_ratio_range"].items()},
        "low_power": sorted(e["precision"] for e in f["low_power"]),
    }


def beyond_ci(a: RatioValue | None, b: RatioValue | None) -> str:
    """How a comparison marks a difference: 'yes' where A's and B's 95% intervals do not
    overlap, 'no' where they do, '' where either side has no value or no interval (an
    imported table, an older recording, a poor fit). Sweep and serving compares both ask it."""
    sep = None if a is None or b is None else separated(a, b)
    return "" if sep is None else ("no" if sep == 0 else "yes")


def _beyond(row: pd.Series, name: str) -> str:
    """The mark of one ratio of a sweep comparison's row (``beyond_ci``)."""
    def side(s: str) -> RatioValue | None:
        return ratio_value({name: row[f"{name}_{s}"], f"{name}_low": row[f"{name}_low_{s}"],
                            f"{name}_high": row[f"{name}_high_{s}"]}, name)

    return beyond_ci(side("a"), side("b"))


def compare(a: Any, b: Any, *, idle_subtracted: bool = False) -> Comparison:
    """Two sources (or lists of sources, or Analyses) side by side, matched by model
    display name (short where it is unambiguous in its source, so a table's 'Qwen2-1.5B'
    meets a recording's 'Qwen/Qwen2-1.5B'), batch, precision and engine."""
    aa = a if isinstance(a, Analysis) else analyze(a, idle_subtracted=idle_subtracted)
    bb = b if isinstance(b, Analysis) else analyze(b, idle_subtracted=idle_subtracted)
    la, lb = ", ".join(aa.sources) or "A", ", ".join(bb.sources) or "B"
    if la == lb:
        la, lb = f"{la} (A)", f"{lb} (B)"
    key = ["model", "batch", "precision", "engine"]
    cols = key + list(RATIO_NAMES) + list(CI_COLUMNS)
    left = aa.phases[cols] if not aa.phases.empty else pd.DataFrame(columns=cols)
    right = bb.phases[cols] if not bb.phases.empty else pd.DataFrame(columns=cols)
    left, right = left.drop_duplicates(key), right.drop_duplicates(key)
    t = left.merge(right, on=key, how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    t["present"] = t.pop("_merge").map({"both": "both", "left_only": "A only", "right_only": "B only"}).astype(str)
    for r in RATIO_NAMES:
        t[f"{r}_delta"] = t[f"{r}_b"] - t[f"{r}_a"]
        t[f"{r}_beyond_ci"] = [_beyond(row, r) for _, row in t.iterrows()]
    order = key + [f"{r}_{s}" for r in RATIO_NAMES for s in ("a", "b", "delta", "beyond_ci")] + ["present"]
    order += [f"{c}_{s}" for c in CI_COLUMNS for s in ("a", "b")]
    t = t[order]
    rows = sorted_rows(t.index, lambda i: (t.at[i, "model"], t.at[i, "batch"], t.at[i, "precision"], t.at[i, "engine"]),
                       [*left["model"], *right["model"]])
    t = t.loc[rows].reset_index(drop=True)
    sa, sb = _summary(aa.findings), _summary(bb.findings)
    diffs = [{"finding": k, "a": sa[k], "b": sb[k]} for k in sa if sa[k] != sb[k]]
    return Comparison(aa, bb, (la, lb), t, diffs)
