"""The display floor: one way to write each number, one results table for every surface."""

from __future__ import annotations

import io
import math

import pandas as pd
from rich.console import Console

from wattscope import analysis, export, render
from wattscope.metrics import RatioValue
from synthetic_run import event_stream, result_cells
from wattscope.state import RunState

FIGS = {"prefill_energy_j": 4.736, "decode_energy_j": 135.724, "decode_tok_s": 15.79, "decode_steps": 16.0,
        "decode_energy_per_token_j": 0.26508, "decode_tok_s_cv": 0.045, "prefill_energy_cv": math.nan}
RATIOS = {"prefill_energy_ratio": RatioValue(5.1255), "decode_energy_ratio": RatioValue(3.1758),
          "decode_speed_ratio": None}


def _line(**kw) -> render.ResultLine:
    base = dict(model="Qwen2-1.5B", batch=1, precision="int8", ok=True, figures=FIGS, ratios=RATIOS)
    return render.ResultLine(**(base | kw))


def test_numbers_print_one_way_with_the_surface_blank() -> None:
    assert render.fmt_ratio(RatioValue(5.1255)) == "5.13x" == render.fmt_ratio(5.1255)
    assert render.fmt_ratio(None) == "-" and render.fmt_ratio(math.nan, "") == ""
    assert render.fmt_figure("decode_energy_j", 135.7244) == "135.724"
    assert render.fmt_figure("decode_tok_s", 15.789) == "15.79"
    assert render.fmt_figure("decode_tok_s_cv", 0.045) == "4.5%"  # a fraction prints as a percentage
    assert render.fmt_figure("prefill_energy_j", math.inf) == "-"
    assert render.fmt_fixed(pd.NA, 3, "") == ""
    assert render.fmt_percent(27.4) == "27%" and render.fmt_percent(None) == "--%"
    assert render.fmt_span(120.4, 159.6, "W") == "120-160W" and render.fmt_span(99.6, 100.4) == "100"
    assert render.fmt_delta(-0.0001) == "+0.00" and render.fmt_delta(0.126) == "+0.13"
    assert render.fmt_duration(3725) == "1:02:05" and render.fmt_duration(None) == "--:--"


def test_results_grid_titles_come_from_metrics_and_name_the_real_steps() -> None:
    grid = render.results_grid([_line()], per_token=True, cv=True, tdp=True)
    assert grid.headers == [
        "Model", "Batch", "Precision", "Prefill Energy / Call (J)", "Decode Energy / 16 tok (J)", "Decode tok/s",
        "Prefill Energy Ratio", "Decode Energy Ratio", "Decode Speed Ratio", "Decode Energy / tok (J)",
        "Prefill Energy CV", "Decode Energy CV", "Decode tok/s CV", "Prefill %TDP", "Decode %TDP",
    ]
    assert grid.rows == [["Qwen2-1.5B", "1", "INT8", "4.736", "135.724", "15.79", "5.13x", "3.18x", "-", "0.2651",
                          "-", "-", "4.5%", "-", "-"]]
    assert grid.align == "lrl" + "r" * 12
    # Rows that disagree on decode steps: the title says "run".
    other = _line(figures=FIGS | {"decode_steps": 32.0})
    assert render.results_grid([_line(), other]).headers[4] == "Decode Energy / run (J)"


def test_a_failed_row_says_so_in_its_note_or_its_first_figure() -> None:
    failed = _line(precision="nf4", ok=False, reason="CUDA out of memory", figures={}, ratios={})
    orphan = _line(ratios={"prefill_energy_ratio": None})
    fp16 = _line(precision="fp16", ratios={})
    plain = render.results_grid([failed, orphan, fp16])
    assert plain.rows[0][3:] == ["failed", "-", "-", "-", "-", "-"]
    assert "Note" not in plain.headers
    noted = render.results_grid([failed, orphan, fp16], notes=True, missing="")
    assert noted.headers[-1] == "Note"
    assert [r[-1] for r in noted.rows] == ["failed: CUDA out of memory", "no FP16 baseline", ""]
    assert noted.rows[0][3:-1] == [""] * 6


def test_marks_flag_only_the_noisy_figure() -> None:
    grid = render.results_grid([_line(flagged=frozenset({"decode_tok_s"}))], marks=True)
    assert grid.rows[0][3:6] == ["4.736", "135.724", "15.79*"]


def test_every_surface_prints_the_same_titles_for_the_same_figures() -> None:
    events = event_stream(configs=[("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "int8")])
    state = RunState()
    state.apply_all(events)
    snap = state.snapshot(events[-1].t_ns)
    terminal = render.snapshot_markdown(snap).splitlines()[0]
    wide = Console(width=200, record=True, file=io.StringIO(), color_system=None)
    wide.print(render.results_table(snap, 200))
    tui_header = wide.export_text().splitlines()[0]

    class Results:  # the same two rows, as the analysis reads a recording's results
        meta = {"gpu": {"tdp_w": 700.0}}
        results = pd.DataFrame([
            {"model": r.model, "batch": r.batch, "precision": r.precision, "synthetic": True, "ok": True, **r.figures}
            for r in state.snapshot(events[-1].t_ns).results
        ])

    table = export.export(analysis.analyze(Results()), "md", "phases").splitlines()
    exported = table[2]
    titles = ["Prefill Energy / Call (J)", "Decode Energy / 32 tok (J)", "Decode tok/s",
              "Prefill Energy Ratio", "Decode Energy Ratio", "Decode Speed Ratio"]
    for t in titles:
        assert f"| {t} |" in terminal and f"| {t} |" in exported and t in tui_header, t
    assert f"| FP16 | synthetic | {result_cells(events, 'Qwen2-1.5B/b1/fp16', ' | ')} |" in table[4]


def test_narrow_terminal_wraps_titles_and_keeps_every_cell() -> None:
    events = event_stream(configs=[("Qwen2.5-3B", 1, "fp16"), ("Qwen2.5-3B", 1, "int8")])
    state = RunState()
    state.apply_all(events)
    snap = state.snapshot(events[-1].t_ns)
    console = Console(width=76, record=True, file=io.StringIO(), color_system=None)
    console.print(render.results_table(snap, 76))
    lines = console.export_text().splitlines()
    assert max(len(x) for x in lines) <= 76
    assert "Model" in lines[-4] and "Precision" in lines[-4]  # the last title line, above the rows
    # The INT8 row's cells as its result holds them; the ratios' intervals wrap under them.
    cells = result_cells(events, "Qwen2.5-3B/b1/int8").split()
    assert lines[-2].split() == ["Qwen2.5-3B", "1", "INT8", *cells[:3], *cells[3::2]]
    assert lines[-1].split() == cells[4::2] and all(c.startswith("±") for c in cells[4::2])
    assert "%TDP" not in console.export_text()  # no room: the %TDP columns stay out
