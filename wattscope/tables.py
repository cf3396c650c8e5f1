"""Import a measurements table (CSV) so published numbers, like the seed study's, go
through the same analysis and export as a recording.

Header: ``model,batch,precision,prefill_energy_j,decode_energy_j,decode_tok_s`` and
optionally ``prefill_power_w``, ``decode_power_w``, ``tdp_w``, ``decode_steps``. Columns
may come in any order. Decode energy is per run of ``decode_steps`` steps of the whole
batch; without that column the seed protocol's 32 steps is assumed (and said so in the
method notes).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from wattscope.config import PRECISIONS
from wattscope.errors import WattscopeError

REQUIRED = ("model", "batch", "precision", "prefill_energy_j", "decode_energy_j", "decode_tok_s")
OPTIONAL = ("prefill_power_w", "decode_power_w", "tdp_w", "decode_steps")
SEED_DECODE_STEPS = 32

# numeric column -> what is allowed
_NUMBERS = {
    "prefill_energy_j": "a number of joules > 0",
    "decode_energy_j": "a number of joules > 0",
    "decode_tok_s": "a rate in tokens/s > 0",
    "prefill_power_w": "a power in W > 0 (or empty)",
    "decode_power_w": "a power in W > 0 (or empty)",
    "tdp_w": "a power in W > 0 (or empty)",
}


class TableError(WattscopeError, ValueError):
    """A malformed table, phrased for the user: file, line, column, what is allowed."""


@dataclass
class Table:
    """An imported table, shaped like a Recording so the analysis takes either: ``meta``,
    ``results`` (one row per configuration, figures as columns) and empty ``windows``,
    ``samples`` and ``warnings``."""

    path: Path
    meta: dict[str, Any]
    results: pd.DataFrame
    windows: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    warnings: pd.DataFrame = field(default_factory=pd.DataFrame)


def _number(path: Path, line: int, col: str, text: str, optional: bool) -> float:
    text = text.strip()
    if optional and text == "":
        return math.nan
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise TableError(f"{path}: line {line}, column '{col}': {text!r} is not allowed; expected {_NUMBERS[col]}")
    return v


def _integer(path: Path, line: int, col: str, text: str) -> int:
    try:
        v = int(text.strip())
    except ValueError:
        v = 0
    if v < 1:
        raise TableError(f"{path}: line {line}, column '{col}': {text!r} is not allowed; expected an integer >= 1")
    return v


def read_table(path: str | Path) -> Table:
    """Read and validate a measurements CSV. Raises TableError naming the file, the line
    and the column of the first problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TableError(f"{p}: table not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TableError(f"{p}: cannot read table: {e}") from None
    # Read as a stream, not line by line: a quoted cell may hold a newline, and a model id
    # is kept whole (newlines, slashes and all); displays escape what they must.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _read_rows(p, reader)
    except csv.Error as e:
        raise TableError(f"{p}: line {reader.line_num}: not a valid CSV table: {e}") from None


def _read_rows(p: Path, reader: Any) -> Table:
    header = [h.strip() for h in next(reader, [])]
    if not any(header):
        raise TableError(f"{p}: line 1: empty file; expected a header with columns {','.join(REQUIRED)}")
    for i, col in enumerate(header, 1):
        if col not in REQUIRED + OPTIONAL:
            raise TableError(
                f"{p}: line 1, column {i}: unknown column {col!r}; allowed: {', '.join(REQUIRED + OPTIONAL)}"
            )
        if header.index(col) != i - 1:
            raise TableError(f"{p}: line 1, column {i}: column {col!r} appears twice")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise TableError(f"{p}: line 1: missing column(s) {', '.join(missing)}; required: {','.join(REQUIRED)}")

    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, int, str], int] = {}
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise TableError(f"{p}: line {line}: {len(fields)} fields; the header has {len(header)}")
        raw = dict(zip(header, fields))
        model = raw["model"].strip()
        if not model:
            raise TableError(f"{p}: line {line}, column 'model': empty; expected a model name")
        precision = raw["precision"].strip().lower()
        if precision not in PRECISIONS:
            raise TableError(
                f"{p}: line {line}, column 'precision': {raw['precision']!r} is not allowed; "
                f"expected one of {', '.join(x.upper() for x in PRECISIONS)}"
            )
        row: dict[str, Any] = {
            "config_id": f"{model}/b{raw['batch'].strip()}/{precision}",
            "model": model,
            "batch": _integer(p, line, "batch", raw["batch"]),
            "precision": precision,
            "synthetic": None,  # an imported table does not say
            "ok": True,
            "reason": "",
        }
        for col in _NUMBERS:
            row[col] = _number(p, line, col, raw[col], col in OPTIONAL) if col in raw else math.nan
        if "decode_steps" in raw and raw["decode_steps"].strip():
            row["decode_steps"] = float(_integer(p, line, "decode_steps", raw["decode_steps"]))
        else:
            row["decode_steps"] = float(SEED_DECODE_STEPS)
        key = (model, row["batch"], precision)
        if key in seen:
            raise TableError(
                f"{p}: line {line}: {model} batch {row['batch']} {precision.upper()} repeats line {seen[key]}"
            )
        seen[key] = line
        rows.append(row)
    if not rows:
        raise TableError(f"{p}: no data rows after the header")
    meta = {
        "source": "table",
        "path": str(p),
        "columns": header,
        "decode_steps_assumed": "decode_steps" not in header,
    }
    return Table(path=p, meta=meta, results=pd.DataFrame(rows))
