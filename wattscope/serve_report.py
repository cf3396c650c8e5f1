"""The serving report: per precision and offered rate, J per prefill and per decode token
with their 95% intervals, the idle share, and whether the fit held.

Printed at the end of ``serve-bench`` and by ``export --table serving`` (md, csv, json,
parquet; csv/json/parquet carry every column of ``serve.analysis.rates_frame``, interval
ends included, and ``--per-request`` the per-request energies). Numbers are formatted
through ``wattscope.render`` like every other table.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from wattscope.attribution import MIN_INTERVALS, MIN_R2
from wattscope.errors import WattscopeError
from wattscope.metrics import RatioValue
from wattscope.render import MISSING, Grid, fmt_fixed, fmt_percent, markdown_table, text_table
from wattscope.serve.analysis import RateResult, baseline_of, rates_frame, requests_frame, vs_baseline
from wattscope.serve.compare import FIGURES as COMPARE_FIGURES, ServeComparison, figures_beyond_ci
from wattscope.stats import relative_half_width

FORMATS = ("text", "md", "csv", "json", "parquet")
METHOD_NOTE = (
    "Counter energy per interval = idle W x dt + a x prefill tokens + b x decode tokens + c x engine steps (OLS, idle "
    "measured in an idle window; 95% intervals from Newey-West errors). The steps are the bursts of streamed tokens "
    "(one a step); each burst's work is spread over its step: a prompt over the step of its first token, each later "
    "token over its own (no step term where bursts merge). J/prefill and J/decode tok are all in: each step's energy "
    "c goes to its own prefill and decode tokens by their fitted energies. The fit is poor (no figures) with fewer than "
    f"{MIN_INTERVALS} intervals, when the work explains less than {MIN_R2:.0%} of the energy above idle (R2), or "
    "when a per-token interval reaches zero. Residuals go to the tokens of their interval (to idle where it is fitted "
    "at no energy), so idle + prefill + decode = measured."
)


class ServeReportError(WattscopeError):
    pass


def _pm(value: float, low: float, high: float, digits: int) -> str:
    """A figure and its 95% interval: ± its relative half-width (``stats.relative_half_width``),
    or, for a value that is not positive (which has none), the interval's ends."""
    if not math.isfinite(value):
        return MISSING
    text = fmt_fixed(value, digits)
    half = relative_half_width(value, low, high)
    if math.isfinite(half):
        return f"{text} ±{fmt_percent(half * 100, 1)}"
    if math.isfinite(low) and math.isfinite(high):
        return f"{text} [{fmt_fixed(low, digits)}, {fmt_fixed(high, digits)}]"
    return text


def serving_grid(results: list[RateResult]) -> Grid:
    df = rates_frame(results)
    steps = df["steps_decode_j_per_token"].notna().any() if not df.empty else False
    headers = ["Precision", "Offered /s", "Achieved /s", "Requests ok/failed", "J/prefill tok", "J/decode tok",
               "J/step", "Idle share", "Measured J", "Fit"]
    if steps:
        headers[8:8] = ["J/decode tok (steps)"]
    rows = []
    for _, r in df.iterrows():
        row = [
            str(r["precision"]), fmt_fixed(r["offered_rps"], 2), fmt_fixed(r["achieved_rps"], 2),
            f"{r['requests_ok']}/{r['requests_failed']}",
            _pm(r["prefill_j_per_token"], r["prefill_j_per_token_low"], r["prefill_j_per_token_high"], 4),
            _pm(r["decode_j_per_token"], r["decode_j_per_token_low"], r["decode_j_per_token_high"], 4),
            _pm(r["j_per_step"], r["j_per_step_low"], r["j_per_step_high"], 3),
            _pm(r["idle_share"] * 100, r["idle_share_low"] * 100, r["idle_share_high"] * 100, 1),
            fmt_fixed(r["measured_j"], 0),
            "ok" if r["fit_ok"] else f"fit poor: {r['fit_reason']}",
        ]
        if steps:
            row[8:8] = [_pm(r["steps_decode_j_per_token"], r["steps_decode_j_per_token_low"],
                            r["steps_decode_j_per_token_high"], 4)]
        rows.append(row)
    return Grid(headers, rows, "l" + "r" * (len(headers) - 2) + "l", [bool(x) for x in df.get("fit_ok", [])])


def format_serving(results: list[RateResult], fmt: str = "text", per_request: bool = False) -> str | bytes:
    if fmt not in FORMATS:
        raise ServeReportError(f"unknown format {fmt!r} for the serving table; allowed: {', '.join(FORMATS)}")
    df = requests_frame(results) if per_request else rates_frame(results)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = json.loads(df.to_json(orient="records"))
        return json.dumps({"serving": records, "notes": METHOD_NOTE}, indent=2) + "\n"
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    if per_request:
        raise ServeReportError("per-request energies export as csv, json or parquet")
    grid = serving_grid(results)
    if not grid.rows:
        return "no load phases in this recording\n"
    table = markdown_table if fmt == "md" else text_table
    parts = [table(grid)]
    vs = vs_fp16_grid(results)
    if vs.rows:
        parts += [table(vs), VS_FP16_NOTE]
    return "\n\n".join([*parts, METHOD_NOTE]) + "\n"


VS_FP16_NOTE = (
    "vs FP16: J per token over FP16's at the same offered rate, 95% interval by the delta method on the log scale (the "
    "two fits' variances add; Welch-Satterthwaite degrees of freedom). The precisions ran one after the other, not "
    "interleaved. beyond CI: the two J per token intervals do not overlap. No ratio where either fit is poor."
)


def _ratio_cell(value: float, low: float, high: float) -> str:
    from wattscope.render import fmt_ratio

    if not math.isfinite(value):
        return MISSING
    has_ci = math.isfinite(low) and math.isfinite(high)
    return fmt_ratio(RatioValue(value, low if has_ci else None, high if has_ci else None), "")


def vs_fp16_grid(results: list[RateResult]) -> Grid:
    """Each other precision's J per prefill and per decode token over FP16's at the same
    offered rate (``serve.analysis.vs_baseline``); no rows without an FP16 row."""
    headers = ["Precision", "Offered /s", "J/prefill tok vs FP16", "J/decode tok vs FP16"]
    rows = []
    for r in results:
        base = baseline_of(r, results)
        if base is None or base is r:
            continue
        row = [str(r.precision), fmt_fixed(r.offered_rps, 2)]
        for ratio, a, b in zip(vs_baseline(r, results), (base.fit.prefill_j_per_token, base.fit.decode_j_per_token),
                               (r.fit.prefill_j_per_token, r.fit.decode_j_per_token)):
            shown = base.fit.ok and r.fit.ok
            mark = figures_beyond_ci(a, b) if shown else ""
            row.append(_ratio_cell(ratio.value, ratio.low, ratio.high) + (" beyond CI" if mark == "yes" else ""))
        rows.append(row)
    return Grid(headers, rows, "lrrr")


def export_serving(path: Any, fmt: str, per_request: bool = False) -> str | bytes:
    """The serving table of one recording (path)."""
    from wattscope.recording import load
    from wattscope.serve.analysis import analyse

    rec = load(path)
    try:
        return format_serving(analyse(rec), fmt, per_request)
    finally:
        rec.close()


COMPARE_NOTE = (
    "Rows matched by precision and offered rate. B/A: B's J per token over A's, 95% interval by the delta method "
    "on the log scale (each fit's standard error from its t-interval; the two variances add; Welch-Satterthwaite "
    "degrees of freedom). beyond CI: A's and B's 95% intervals do not overlap, the rule of sweep compares. "
    "A poor fit has no figures and so no ratio; its reason is shown."
)


def _compare_grid(c: ServeComparison) -> Grid:
    headers = ["Precision", "Offered /s"]
    for short in ("J/prefill tok", "J/decode tok"):
        headers += [f"{short} A", f"{short} B", f"{short} B/A"]
    headers += ["Fit"]
    rows = []
    for _, r in c.table.iterrows():
        row = [str(r["precision"]), fmt_fixed(r["offered_rps"], 2)]
        for fig in COMPARE_FIGURES:
            a, b = (_pm(r[f"{fig}_{s}"], r[f"{fig}_low_{s}"], r[f"{fig}_high_{s}"], 4) for s in ("a", "b"))
            cell = _ratio_cell(r[f"{fig}_ratio"], r[f"{fig}_ratio_low"], r[f"{fig}_ratio_high"])
            # A difference the two intervals support says so in its cell, as in sweep compares.
            row += [a, b, cell + (" beyond CI" if r[f"{fig}_beyond_ci"] == "yes" else "")]
        fits = [f"{side}: {r[f'fit_{side.lower()}']}" for side in ("A", "B") if r[f"fit_{side.lower()}"] not in ("", "ok")]
        row.append(r["present"] if r["present"] != "both" else ("; ".join(fits) or "ok"))
        rows.append(row)
    return Grid(headers, rows, "lr" + "rrr" * len(COMPARE_FIGURES) + "l")


def format_serving_compare(c: ServeComparison, fmt: str = "md") -> str:
    """Two serving recordings side by side (``wattscope compare A B``): md, text or json."""
    if fmt not in ("md", "text", "json"):
        raise ServeReportError(f"unknown compare format {fmt!r}; allowed: md, text, json")
    la, lb = c.labels
    if fmt == "json":
        rows = json.loads(c.table.to_json(orient="records", double_precision=15))
        return json.dumps({"a": la, "b": lb, "serving": rows, "notes": COMPARE_NOTE}, indent=2) + "\n"
    from wattscope.render import md_text
    from wattscope.safe_text import printable

    say = md_text if fmt == "md" else printable
    grid = _compare_grid(c)
    table = markdown_table(grid) if fmt == "md" else text_table(grid)
    h2 = "## " if fmt == "md" else ""
    return "\n\n".join([f"{h2}Compare serving: A = {say(la)}, B = {say(lb)}", table, COMPARE_NOTE, METHOD_NOTE]) + "\n"
