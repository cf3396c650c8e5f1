"""`wattscope plot`: the files are written, and the numbers drawn are the analysis tables'
numbers, read back from the plotted artists."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest

import synthetic_run
from wattscope import cli, plot, timeline
from wattscope.analysis import analyze
from wattscope.metrics import RATIO_NAMES
from wattscope.recording import load

ROOT = Path(__file__).resolve().parent.parent
SEED_REC = ROOT / "recordings" / "h100-seed.wattscope"
SEED_CSV = ROOT / "tests" / "data" / "seed_rtx_pro_6000.csv"


@pytest.fixture(scope="module")
def rounds_rec(tmp_path_factory):
    """A recording with paired rounds, so its ratios carry intervals."""
    path = tmp_path_factory.mktemp("plot") / "rounds.wattscope"
    return synthetic_run.record(synthetic_run.event_stream(phase_s=0.3, repeats=3), path)


def _artists(fig, prefix: str) -> dict[str, object]:
    found = {}
    for a in [*fig.texts, *(a for ax in fig.axes for a in [*ax.lines, *ax.collections, *ax.texts, *ax.patches])]:
        gid = a.get_gid()
        if gid and gid.startswith(prefix):
            found[gid] = a
    return found


def _row_positions(fig) -> dict[str, int]:
    ax = fig.axes[0]
    return {t.get_text(): int(round(y)) for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}


def test_ratios_drawn_are_the_analysis_ratios_with_their_intervals(rounds_rec) -> None:
    sources = [str(rounds_rec), str(SEED_CSV)]
    a = analyze(sources)
    fig = plot.figure(sources, "ratios")
    rows = _row_positions(fig)
    lines = _artists(fig, "ratio|")
    whiskers = _artists(fig, "whiskers|")
    drawn_ci = drawn_points = 0
    for _, r in a.phases.iterrows():
        if r["precision"] == "FP16" or not r["ok"]:
            continue
        for name in RATIO_NAMES:
            if np.isnan(r[name]):
                continue
            has_ci = not np.isnan(r[f"{name}_low"])
            line = lines[f"ratio|{r['source']}|{name}|{'ci' if has_ci else 'point'}"]
            xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
            at = np.flatnonzero(np.round(ys).astype(int) == rows[plot.row_label(r)])
            assert len(at) == 1
            assert xs[at[0]] == r[name]  # exactly the table's number
            if has_ci:
                segs = whiskers[f"whiskers|{r['source']}|{name}"].get_segments()
                seg = next(s for s in segs if int(round(s[0][1])) == rows[plot.row_label(r)])
                assert seg[0][0] == pytest.approx(r[f"{name}_low"], rel=1e-12)
                assert seg[1][0] == pytest.approx(r[f"{name}_high"], rel=1e-12)
                drawn_ci += 1
            else:
                drawn_points += 1
    assert drawn_ci > 0 and drawn_points > 0  # both kinds of source were drawn
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["rounds (95% intervals)", "seed_rtx_pro_6000 (no intervals: point values)"]
    assert all(ax.lines[0].get_gid() == "ratio-baseline" and ax.lines[0].get_xdata()[0] == 1.0 for ax in fig.axes[:3])


def test_power_drawn_is_the_power_table(rounds_rec) -> None:
    a = analyze([str(rounds_rec)])
    fig = plot.figure([str(rounds_rec)], "power")
    label = a.power["source"].iloc[0]
    for phase in ("prefill", "decode"):
        ranges = _artists(fig, f"power-range|{label}|{phase}")[f"power-range|{label}|{phase}"]
        segs = ranges.get_segments()
        assert [s[0][1] for s in segs] == a.power[f"{phase}_power_min_w"].tolist()
        assert [s[1][1] for s in segs] == a.power[f"{phase}_power_max_w"].tolist()
        points = _artists(fig, f"power-rows|{label}|{phase}")[f"power-rows|{label}|{phase}"]
        ok = a.phases[a.phases["ok"]]
        assert list(points.get_ydata()) == ok[f"{phase}_power_w"].tolist()
    (pct_axis,) = fig.axes[1].child_axes
    assert pct_axis.get_ylabel() == "% of 700 W TDP"
    to_pct = pct_axis._functions[0]
    assert [to_pct(w) for w in a.power["decode_power_max_w"]] == pytest.approx(a.power["decode_tdp_max_pct"].tolist())


def test_timeline_draws_the_samples_and_the_phase_spans() -> None:
    rec = load(SEED_REC)
    tl = timeline.of_recording(rec)
    fig = plot.figure([str(SEED_REC)], "timeline")
    line = _artists(fig, "power|0")["power|0"]
    s = rec.samples[rec.samples["gpu"] == 0]
    assert np.array_equal(line.get_ydata(), s["power_w"].to_numpy(), equal_nan=True)
    assert np.array_equal(line.get_xdata(), (s["t_ns"].to_numpy() - tl.start_ns) / 1e9)
    bands = _artists(fig, "phase|")
    assert len(bands) == len(tl.phases)
    labels = [t.get_text() for t in _artists(fig, "config-label|").values()]
    # Rows measured together in rounds share their span: one label per group.
    assert len(labels) == len({c.group for c in tl.configs}) == 5 and "Yi-1.5-6B b8 (graphs)" in labels


def test_timeline_of_one_configuration_keeps_to_its_span() -> None:
    rec = load(SEED_REC)
    tl = timeline.of_recording(rec)
    c = next(c for c in tl.configs if c.config_id == "Qwen2.5-3B/b1/graphs/nf4")
    fig = plot.figure([str(SEED_REC)], "timeline", config=c.config_id)
    x = _artists(fig, "power|0")["power|0"].get_xdata()
    assert x.min() >= (c.start_ns - tl.start_ns) / 1e9 and x.max() <= (c.end_ns - tl.start_ns) / 1e9
    assert fig.axes[0].get_xlim() == ((c.start_ns - tl.start_ns) / 1e9, (c.end_ns - tl.start_ns) / 1e9)


@pytest.mark.parametrize("kind, fmt", [*((k, "png") for k in (*plot.SWEEP_KINDS, "timeline")), ("power", "svg"),
                                       ("power", "pdf")])
def test_cli_writes_each_kind_and_each_format(tmp_path, kind, fmt) -> None:
    out = tmp_path / f"fig.{fmt}"
    assert cli.main(["plot", str(SEED_REC), "-o", str(out), "--kind", kind]) == 0
    data = out.read_bytes()
    assert len(data) > 10_000
    magic = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[fmt]
    assert data.startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_svg_is_the_same_file_every_time(tmp_path) -> None:
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    for p in (a, b):
        plot.plot([str(SEED_REC)], p, "power")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "{tmp}/f.jpg"], "unknown figure format '.jpg'; allowed: .png, .svg, .pdf"),
        (["-o", "{tmp}/f.png", "--kind", "ratios", "--config", "x"], "--config narrows a timeline"),
        (["-o", "{tmp}/f.png", "--kind", "timeline", "--config", "nope"], "no configuration 'nope'; allowed: Qwen2-1.5B/b1/graphs/fp16"),
        ([str(SEED_REC), "-o", "{tmp}/f.png", "--kind", "timeline"], "a timeline draws one recording; got 2 sources"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, capsys, args, message) -> None:
    argv = ["plot", str(SEED_REC), *[a.format(tmp=tmp_path) for a in args]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattscope: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_table_has_no_timeline(tmp_path, capsys) -> None:
    assert cli.main(["plot", str(SEED_CSV), "-o", str(tmp_path / "t.png"), "--kind", "timeline"]) == 2
    assert "an imported table has no samples" in capsys.readouterr().err


def test_without_matplotlib_the_error_names_the_pip_command(tmp_path, capsys, monkeypatch) -> None:
    real = builtins.__import__

    def no_matplotlib(name, *args, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert cli.main(["plot", str(SEED_REC), "-o", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert err == "wattscope: error: plotting needs matplotlib, which is not installed; " \
                  "install it with: pip install 'wattscope[plot]'\n"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- serving


def _serving_rows(path):
    from wattscope.serve.analysis import analyse, rates_frame

    with load(path) as rec:
        return rates_frame(analyse(rec))


@pytest.mark.process
@pytest.mark.parametrize("rate", ["offered", "achieved"])
def test_serving_drawn_is_the_rates_frame_and_poor_fits_are_named(serve_recordings, rate) -> None:
    a, poor = serve_recordings["a"], serve_recordings["poor"]
    fig = plot.figure([str(a), str(poor)], "serving", rate=rate)
    lines, whiskers = _artists(fig, "serving|"), _artists(fig, "serving-whiskers|")
    drawn = 0
    for label, path in (("a", a), ("poor", poor)):
        df = _serving_rows(path)
        for precision, rows in df.groupby("precision"):
            ok = rows[rows["fit_ok"]]
            for col, _ in plot.SERVING_PANELS:
                gid = f"serving|{label}|{precision}|{col}"
                if ok.empty:
                    assert gid not in lines
                    continue
                # Exactly the table's numbers: x the rate, y the figure, whiskers its interval.
                assert list(lines[gid].get_xdata()) == ok[f"{rate}_rps"].tolist()
                assert list(lines[gid].get_ydata()) == ok[col].tolist()
                segs = whiskers[f"serving-whiskers|{label}|{precision}|{col}"].get_segments()
                assert [s[0][0] for s in segs] == ok[f"{rate}_rps"].tolist()
                assert [s[0][1] for s in segs] == pytest.approx(ok[f"{col}_low"].tolist(), rel=1e-12)
                assert [s[1][1] for s in segs] == pytest.approx(ok[f"{col}_high"].tolist(), rel=1e-12)
                drawn += len(ok)
    assert drawn > 0
    # The short run's fits are all poor: none drawn, each named with its reason.
    note = _artists(fig, "serving-poor")["serving-poor"].get_text()
    bad = _serving_rows(poor)
    assert not bad["fit_ok"].any()
    for _, r in bad.iterrows():
        assert f"poor FP16 at {r['offered_rps']:g}/s: {r['fit_reason']}" in note
        assert r["fit_reason"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["a (Simulated H100) FP16", "a (Simulated H100) NF4"][:len(legend)] and legend
    # Only drawn series are set apart, and the axis says so.
    gap = f"; series set {plot.SERIES_GAP_PT:g} pt apart" if len(legend) > 1 else ""
    assert fig.axes[0].get_xlabel() == f"{rate} rate (requests/s){gap}"
    offsets = sorted({round(lines[g].get_transform().transform((0, 0))[0] - lines[g].axes.transData.transform((0, 0))[0], 3)
                      for g in lines if g.endswith("|decode_j_per_token")})
    step = plot.SERIES_GAP_PT / 72 * fig.dpi
    assert offsets == pytest.approx([(j - (len(legend) - 1) / 2) * step for j in range(len(legend))], abs=1e-3)


@pytest.mark.process
def test_serving_timeline_bands_are_the_idle_and_load_phases(serve_recordings) -> None:
    from wattscope.events import ServePhase

    rec = load(serve_recordings["a"])
    tl = timeline.of_recording(rec)
    phases = sorted((e for e in rec.events(samples=False) if isinstance(e, ServePhase)), key=lambda e: e.start_ns)
    fig = plot.figure([str(serve_recordings["a"])], "timeline")
    bands = _artists(fig, "phase|")
    expected = {}
    for e in phases:
        label = f"{e.precision.upper()} {'idle' if e.phase == 'idle' else f'{e.rate_rps:g}/s'}"
        expected[f"phase|{e.phase}|{label}|{e.start_ns}"] = ((e.start_ns - tl.start_ns) / 1e9, (e.end_ns - tl.start_ns) / 1e9)
    assert set(bands) == set(expected)
    for gid, (x0, x1) in expected.items():
        assert bands[gid].get_x() == x0
        assert bands[gid].get_x() + bands[gid].get_width() == pytest.approx(x1, rel=1e-12)
    labels = [t.get_text() for t in _artists(fig, "phase-label|").values()]
    assert labels == ["FP16 idle", "FP16 6/s", "FP16 18/s", "NF4 idle", "NF4 6/s", "NF4 18/s"]
    line = _artists(fig, "power|0")["power|0"]
    s = rec.samples[rec.samples["gpu"] == 0]
    assert np.array_equal(line.get_ydata(), s["power_w"].to_numpy(), equal_nan=True)


@pytest.mark.process
def test_cli_draws_a_serving_recording_and_refuses_sweep_kinds(serve_recordings, tmp_path, capsys) -> None:
    a = serve_recordings["a"]
    for kind in ("serving", "timeline", None):
        out = tmp_path / f"{kind}.png"
        assert cli.main(["plot", str(a), "-o", str(out), *(["--kind", kind] if kind else [])]) == 0
        assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    # Without --kind a serving recording is drawn as the serving figure.
    assert (tmp_path / "None.png").read_bytes() == (tmp_path / "serving.png").read_bytes()
    capsys.readouterr()
    for argv, message in [
        (["--kind", "ratios"], "a: a serving recording (serve-bench); --kind ratios draws sweeps; "
                               "for this recording: --kind serving or --kind timeline"),
        (["--kind", "power"], "--kind power draws sweeps"),
        (["--kind", "timeline", "--config", "x"], "a: a serving recording (serve-bench) has no configurations"),
        # Without --kind, a serving recording beside a sweep names both kinds, not a flag.
        ([str(SEED_CSV)], "serving recordings (a) and sweeps (seed_rtx_pro_6000) do not share a figure"),
    ]:
        assert cli.main(["plot", str(a), *argv, "-o", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wattscope: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("source", "message"), [
    (SEED_REC, "h100-seed: a sweep recording; --kind serving draws serving recordings (serve-bench); "
               "for this recording: --kind ratios or --kind power or --kind timeline"),
    (SEED_CSV, "seed_rtx_pro_6000: a sweep table; --kind serving draws serving recordings (serve-bench); "
               "for this table: --kind ratios or --kind power\n"),
])
def test_the_serving_kind_refuses_a_sweep(tmp_path, capsys, source, message) -> None:
    assert cli.main(["plot", str(source), "-o", str(tmp_path / "s.png"), "--kind", "serving"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_rate_is_the_serving_figure_s_axis_only(tmp_path, capsys) -> None:
    assert cli.main(["plot", str(SEED_REC), "-o", str(tmp_path / "s.png"), "--rate", "achieved"]) == 2
    assert "--rate picks the serving figure's axis; --kind ratios has none" in capsys.readouterr().err
