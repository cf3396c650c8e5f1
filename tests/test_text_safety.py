"""Untrusted text: what a recording, a config or a CSV says is shown, never obeyed.

A hostile recording (ESC/OSC/CSI sequences, a bidi override, Rich markup, HTML, a
Markdown pipe and spreadsheet formulas in its model ids, GPU and sweep names, failure
reasons and warnings) goes through every surface: the headless replay, every export
format, compare, the TUI and its toasts. None may write a control sequence to a
terminal, read the markup, render the HTML, split a table cell or leave a formula; and
model ids are kept whole wherever they are keys.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from wattscope import cli, config, render
from wattscope import events as ev
from wattscope.analysis import analyze, compare
from wattscope.recording import Recorder, load
from wattscope.replay import ReplayController
from wattscope.safe_text import printable
from wattscope.state import RunState
from wattscope.tables import read_table

from synthetic_run import event_stream

# Characters that must never reach a terminal raw.
RAW = ("\x1b", "\x07", "\x9b", "\x9d", "\u202e", "\u2066", "\r", "\x00")
# No '/' in it: a model id's Model column is its short name (after the last '/').
EVIL = "Evil\x1b]0;pwned\x07\x1b[2J[bold red]\u202e|<b>x<i>\\"
FORMULA = "@SUM(1+1)"
GPU = "H100\x1b]8;;http://x\x07link\x9b31m"
SWEEP = "sweep[/]\x1b[31m"
REASON = "oom\x1b[1A\rFAKE OK"
WARNING = "stall\x1b]52;c;cGF5bG9hZA==\x07 \u2066hidden"


def _safe(text: str) -> None:
    found = [repr(c) for c in RAW if c in text]
    assert not found, f"raw control characters {found} in output"


# ------------------------------------------------------------------------ the rules


@pytest.mark.parametrize("raw, shown", [
    ("a\x1bb", "a\\x1bb"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("csi\x9b2J", "csi\\x9b2J"),
    ("line\nbreak\ttab\rcr", "line\\nbreak\\ttab\\rcr"),
    ("bidi\u202eevil\u2066", "bidi\\u202eevil\\u2066"),
    ("lone\ud800surrogate", "lone\\ud800surrogate"),
    ("Qwen/Qwen2-1.5B é 中文 ±5% [x]", "Qwen/Qwen2-1.5B é 中文 ±5% [x]"),
])
def test_printable_escapes_what_a_terminal_would_obey(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_keeps_newlines_only_when_asked() -> None:
    assert printable("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"
    assert printable(42) == "42"


@pytest.mark.parametrize("cell, written", [
    ("=1+2", "'=1+2"), ("+cmd", "'+cmd"), ("-x", "'-x"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\\t=1"), ("\r=1", "'\\r=1"), ("=a\nb", "'=a\nb"),
    ("-0.5", "-0.5"), ("+3", "+3"), ("-1e-3", "-1e-3"), ("plain", "plain"), ("a=b", "a=b"),
])
def test_csv_cell_neutralises_formulas_but_keeps_numbers(cell: str, written: str) -> None:
    assert render.csv_cell(cell) == written


def test_csv_cell_leaves_non_text_alone() -> None:
    assert render.csv_cell(-0.5) == -0.5 and render.csv_cell(None) is None


def test_markdown_text_keeps_one_cell_and_shows_html() -> None:
    assert render.md_text("a|b<i>c</i>&\\\nz") == "a\\|b&lt;i&gt;c&lt;/i&gt;&amp;\\\\\\\\nz"
    grid = render.Grid(["Model"], [["x|y\nz"]], "l")
    rows = render.markdown_table(grid).splitlines()
    assert len(rows) == 3 and rows[2] == "| x\\|y\\\\nz |"


def test_latex_text_escapes_specials_and_stays_on_one_line() -> None:
    assert render.tex_text("50%_a&b\n\nc") == r"50\%\_a\&b\textbackslash{}n\textbackslash{}nc"


def test_rich_table_cells_are_not_markup() -> None:
    from rich.console import Console

    grid = render.Grid(["Model"], [["[/b][bold]x\x1b[31m"]], "l", [True])
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(render._rich_table(grid, [False]))  # a MarkupError here would be the bug
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "[/b][bold]x\\x1b[31m" in out
    _safe(out)
    assert render.markup_text("[/b] x") == "\\[/b] x"


# ------------------------------------------------------------------ a hostile recording


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording whose every name and message is hostile, in a folder whose name is markup."""
    events = event_stream(
        configs=((EVIL, 1, "fp16"), (EVIL, 1, "nf4"), (FORMULA, 1, "fp16"), (FORMULA, 1, "int8")),
        failures={f"{FORMULA}/b1/int8": REASON}, noisy=(),
    )
    first = events[0]
    assert isinstance(first, ev.RunStarted)
    meta = dict(first.meta)
    meta["gpu"] = {**meta["gpu"], "name": GPU}
    meta["sweep"] = {**meta["sweep"], "name": SWEEP}
    events[0] = replace(first, meta=meta)
    events.insert(5, ev.RunWarning(events[4].t_ns, "sampler\x1b[0m", WARNING))
    path = tmp_path_factory.mktemp("hostile") / "dir[b]x[/b]" / "run.wattscope"
    rec = Recorder(path)
    for e in events:
        rec.write(e)
    rec.close()
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    _safe(out)
    _safe(err)
    return out


def test_headless_replay_shows_names_escaped(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "replay", str(hostile), "--headless")
    assert printable(GPU) in out  # the run-started line names the GPU, escaped
    assert printable(WARNING) in out
    assert printable(REASON) in out
    assert "Evil\\x1b]0;pwned\\x07" in out


def test_markdown_export_escapes_pipes_html_and_controls(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "export", str(hostile), "--table", "phases")
    assert "<b>" not in out and "&lt;b&gt;x&lt;i&gt;" in out
    table = [line for line in out.splitlines() if line.startswith("| Evil")]
    assert table, out
    # The pipe in the name is escaped: the row has as many cells as the header.
    header = next(line for line in out.splitlines() if line.startswith("| Model"))
    cells = lambda line: len(line.replace("\\|", "").split("|"))  # noqa: E731
    assert all(cells(line) == cells(header) for line in table)


def test_latex_export_escapes_controls_and_specials(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "export", str(hostile), "--format", "latex")
    assert r"Evil\textbackslash{}x1b]0;pwned" in out
    assert "[bold red]" in out  # harmless in LaTeX, kept as written


def test_csv_export_has_no_formula_and_no_control(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "export", str(hostile), "--format", "csv", "--table", "phases")
    rows = list(csv.DictReader(io.StringIO(out.split("\n# ")[0])))
    assert {r["model"] for r in rows} >= {"'" + FORMULA}
    for r in rows:
        for cell in r.values():
            assert not cell.startswith(render.FORMULA_PREFIXES) or _number(cell), cell
    assert any(float(r["prefill_energy_ratio"] or "nan") > 0 for r in rows)  # numbers stay numbers


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_csv_comment_lines_cannot_start_a_row() -> None:
    class Fake:
        meta = {"source": "table", "path": "x.csv", "columns": []}
        results = read_table(Path(__file__).parent / "data" / "seed_rtx_pro_6000.csv").results
        path = Path("evil\nname,1,fp16,1,1,1.csv")

    from wattscope.export import export

    out = str(export(Fake(), "csv", "phases"))
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert any("evil\\nname" in line for line in comments)
    # Read back as the module docstring says: the rows are the table's, no more.
    import pandas as pd

    back = pd.read_csv(io.StringIO(out), comment="#")
    assert len(back) == len(Fake.results) and set(back["source"]) == {"evil\nname,1,fp16,1,1,1"}


def test_json_export_keeps_names_exact_and_escaped(hostile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "export", str(hostile), "--format", "json", "--table", "phases")
    data = json.loads(out)
    assert f"synthetic:{EVIL}" in {r["model_id"] for r in data["phases"]}


@pytest.mark.parametrize("fmt", ["md", "text", "json"])
def test_compare_output_is_safe(hostile: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "compare", str(hostile), str(hostile), "--format", fmt)
    if fmt != "json":
        assert "Evil\\x1b]0;pwned" in out.replace("\\\\", "\\")


def test_error_messages_are_printed_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x\x1b]0;t\x07.toml"
    bad.write_text('name = "x"\n[protocol]\n"key\x1b[2J" = 1\n')
    code = cli.main(["run", str(bad), "--sim", "--headless"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wattscope: error:")
    _safe(err)


def test_tui_shows_hostile_names_and_exports_beside_a_markup_path(hostile: Path) -> None:
    from wattscope.tui.app import make_app

    class Clock:
        def __call__(self) -> int:
            return 0

    async def go() -> tuple[str, str]:
        app = make_app(ReplayController(load(hostile), clock=Clock()))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("G")
            await pilot.pause(0.2)
            update = app.screen._compositor.render_update(full=True)
            screen = "\n".join("".join(seg.text for seg in line) for line in update.strips)
            await pilot.press("e")
            for _ in range(50):
                await pilot.pause(0.1)
                if app.export_message:
                    break
            return screen, app.export_message

    screen, message = asyncio.run(go())
    _safe(screen)
    assert "Evil\\x1b]0;pwned" in screen
    assert message.startswith("exported"), message
    assert "[b]x[/b]" in message  # the path, shown as it is


# -------------------------------------------------------------------- names kept whole


def test_model_labels_are_short_only_where_unambiguous() -> None:
    labels = config.model_labels(["synthetic:Qwen2-1.5B", "Qwen/Qwen2-1.5B", "Qwen/Qwen2.5-3B", "synthetic:Yi-1.5-6B"])
    assert labels == {
        "synthetic:Qwen2-1.5B": "synthetic:Qwen2-1.5B", "Qwen/Qwen2-1.5B": "Qwen/Qwen2-1.5B",
        "Qwen/Qwen2.5-3B": "Qwen2.5-3B", "synthetic:Yi-1.5-6B": "Yi-1.5-6B",
    }
    assert config.short_model_name("synthetic:") == "synthetic:"  # never an empty name


def test_config_keeps_two_models_with_one_short_name_apart(tmp_path: Path) -> None:
    p = tmp_path / "two.toml"
    p.write_text('name = "two"\n[[matrix]]\nmodels = ["synthetic:Qwen2-1.5B", "Qwen/Qwen2-1.5B"]\n'
                 'batches = [1]\nprecisions = ["fp16", "nf4"]\n')
    sweep = config.load(p)
    ids = [c.config_id for c in sweep.configs]
    assert sorted(ids) == ["Qwen/Qwen2-1.5B/b1/fp16", "Qwen/Qwen2-1.5B/b1/nf4",
                           "synthetic:Qwen2-1.5B/b1/fp16", "synthetic:Qwen2-1.5B/b1/nf4"]
    assert [len(g) for g in sweep.groups()] == [2, 2]
    assert {c.group for c in sweep.configs} == {"synthetic:Qwen2-1.5B/b1", "Qwen/Qwen2-1.5B/b1"}


def test_config_ids_of_an_unambiguous_sweep_are_unchanged() -> None:
    sweep = config.load(Path(__file__).resolve().parent.parent / "configs" / "seed.toml")
    assert "Qwen2-1.5B/b1/fp16" in [c.config_id for c in sweep.configs]


def _table(tmp_path: Path, rows: str) -> Path:
    p = tmp_path / "t.csv"
    p.write_text("model,batch,precision,prefill_energy_j,decode_energy_j,decode_tok_s\n" + rows)
    return p


def test_imported_models_with_one_short_name_stay_two(tmp_path: Path) -> None:
    p = _table(tmp_path, "synthetic:Qwen2-1.5B,1,fp16,1,2,3\nsynthetic:Qwen2-1.5B,1,nf4,2,3,2\n"
                         "Qwen/Qwen2-1.5B,1,fp16,1.5,2,3\nQwen/Qwen2-1.5B,1,nf4,3,3,2\n")
    a = analyze(p)
    assert list(a.phases["model"]) == ["synthetic:Qwen2-1.5B"] * 2 + ["Qwen/Qwen2-1.5B"] * 2
    # Each NF4 row over its own FP16 row: 2/1 and 3/1.5.
    assert list(a.phases["prefill_energy_ratio"]) == [1.0, 2.0, 1.0, 2.0]
    c = compare(p, p)
    assert len(c.table) == 4 and set(c.table["present"]) == {"both"}


def test_imported_model_keeps_its_newline(tmp_path: Path) -> None:
    t = read_table(_table(tmp_path, '"a\nb",1,fp16,1,1,1\nab,1,fp16,1,1,1\n'))
    assert list(t.results["model"]) == ["a\nb", "ab"]


def test_a_malformed_csv_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _table(tmp_path, '"unterminated,1,fp16,1,1,1\n')
    code = cli.main(["export", str(p)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wattscope: error:") and "Traceback" not in err


def test_live_table_names_two_models_with_one_short_name_apart() -> None:
    events = event_stream(configs=(("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "nf4")), noisy=())
    other = event_stream(configs=(("Qwen2-1.5B", 8, "fp16"),), noisy=())
    # The second model: the same short name under another id.
    renamed = [replace(e, model="org/Qwen2-1.5B") if isinstance(e, (ev.ConfigStarted, ev.ConfigResult)) else e
               for e in other if not isinstance(e, ev.RunStarted)]
    state = RunState()
    state.apply_all(events + renamed)
    snap = state.snapshot(max(e.t_ns for e in events + renamed))
    assert {r.model for r in snap.results} == {"synthetic:Qwen2-1.5B", "org/Qwen2-1.5B"}
