"""Two serving recordings side by side (``wattscope compare A B`` on serve-bench runs).

Rows are matched by precision and offered rate. Each row has A's and B's J per prefill
token and J per decode token with their 95% intervals (``serve.analysis.rates_frame``),
the ratio B/A with its 95% interval, and the "beyond CI" mark of sweep compares
(``analysis.beyond_ci``: A's and B's intervals do not overlap).

**The ratio's interval** is ``attribution.ratio_estimate``: the delta method on the log
scale. Each figure's interval is Student's t(n - k) times its Newey-West standard error
(``attribution.fit``, k its terms), so the standard error is read back as half-width / t
quantile (``attribution.token_dof`` of the row's ``intervals`` and ``fit_terms``). The two
fits come from different runs, so their variances add: ``var(log B/A) = (se_A/A)^2 +
(se_B/B)^2``; the interval is ``B/A x exp(+-t * sd)`` with t at the Welch-Satterthwaite
degrees of freedom of the two. A poor fit has no figures, so its row has no ratio and
says why (``fit_a`` / ``fit_b``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from wattscope.analysis import beyond_ci
from wattscope.attribution import NO_ESTIMATE as NO_RATIO, Estimate, ratio_estimate, token_dof
from wattscope.metrics import RatioValue, precision_rank

FIGURES = ("prefill_j_per_token", "decode_j_per_token")
KEY = ["precision", "offered_rps"]


@dataclass(frozen=True)
class ServeComparison:
    """``table``: one row per (precision, offered rate) of either recording; see
    ``compare_frames`` for its columns. ``labels`` name A and B."""

    labels: tuple[str, str]
    table: pd.DataFrame


def _estimate(row: pd.Series, fig: str, side: str) -> Estimate:
    return Estimate(float(row[f"{fig}_{side}"]), float(row[f"{fig}_low_{side}"]), float(row[f"{fig}_high_{side}"]))


def _value(est: Estimate) -> RatioValue | None:
    if not math.isfinite(est.value):
        return None
    ends = (est.low, est.high) if math.isfinite(est.low) and math.isfinite(est.high) else (None, None)
    return RatioValue(est.value, *ends)


def figures_beyond_ci(a: Estimate, b: Estimate) -> str:
    """``analysis.beyond_ci`` of two fits' figures: 'yes' where their 95% intervals do not
    overlap, 'no' where they do, '' where either has no value or no interval."""
    return beyond_ci(_value(a), _value(b))


def _fit_text(present: bool, ok: Any, reason: Any) -> str:
    if not present:
        return ""
    return "ok" if bool(ok) else f"fit poor: {reason}"


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Two ``rates_frame`` tables matched by precision and offered rate. Columns: the key;
    per figure ``FIG_a``, ``FIG_low_a``, ``FIG_high_a``, the same for ``_b``, ``FIG_ratio``
    (B/A) with ``FIG_ratio_low``/``_high`` and ``FIG_beyond_ci``; ``fit_a``/``fit_b``
    ("ok", "fit poor: why", or "" where the row is absent) and ``present``."""
    cols = [*KEY, "fit_ok", "fit_reason", "intervals", "fit_terms",
            *(f"{f}{end}" for f in FIGURES for end in ("", "_low", "_high"))]
    left, right = (df[cols].drop_duplicates(KEY) if not df.empty else pd.DataFrame(columns=cols) for df in (a, b))
    t = left.merge(right, on=KEY, how="outer", suffixes=("_a", "_b"), indicator=True, sort=False)
    t["present"] = t.pop("_merge").map({"both": "both", "left_only": "A only", "right_only": "B only"}).astype(str)
    out = t[KEY].copy()
    for f in FIGURES:
        for side in ("a", "b"):
            for end in ("", "_low", "_high"):
                out[f"{f}{end}_{side}"] = t[f"{f}{end}_{side}"].astype(float)
        ratios, marks = [], []
        for _, row in t.iterrows():
            ea, eb = _estimate(row, f, "a"), _estimate(row, f, "b")
            dof_a = token_dof(int(row["intervals_a"]), int(row["fit_terms_a"])) if row["present"] == "both" else 0
            dof_b = token_dof(int(row["intervals_b"]), int(row["fit_terms_b"])) if row["present"] == "both" else 0
            ratios.append(ratio_estimate(ea, dof_a, eb, dof_b) if row["present"] == "both" else NO_RATIO)
            marks.append(figures_beyond_ci(ea, eb))
        out[f"{f}_ratio"] = [r.value for r in ratios]
        out[f"{f}_ratio_low"] = [r.low for r in ratios]
        out[f"{f}_ratio_high"] = [r.high for r in ratios]
        out[f"{f}_beyond_ci"] = marks
    for side, only in (("a", "B only"), ("b", "A only")):
        out[f"fit_{side}"] = [_fit_text(p != only, ok, why)
                              for p, ok, why in zip(t["present"], t[f"fit_ok_{side}"], t[f"fit_reason_{side}"])]
    out["present"] = t["present"]
    order = sorted(out.index, key=lambda i: (precision_rank(out.at[i, "precision"]), out.at[i, "precision"],
                                             float(out.at[i, "offered_rps"])))
    return out.loc[order].reset_index(drop=True)


def _rates(src: Any) -> pd.DataFrame:
    from wattscope.recording import load
    from wattscope.serve.analysis import analyse, rates_frame

    if not isinstance(src, (str, Path)):
        return rates_frame(analyse(src))
    with load(src) as rec:
        return rates_frame(analyse(rec))


def compare_serving(a: Any, b: Any, labels: tuple[str, str] | None = None) -> ServeComparison:
    """Two serving recordings (paths or ``wattscope.load`` results) side by side; labels
    default to the files' names ('(A)'/'(B)' added where they are the same)."""
    if labels is None:
        from wattscope.recording import label

        la, lb = (label(str(getattr(s, "path", s))) for s in (a, b))
        labels = (f"{la} (A)", f"{lb} (B)") if la == lb else (la, lb)
    return ServeComparison(labels, compare_frames(_rates(a), _rates(b)))
