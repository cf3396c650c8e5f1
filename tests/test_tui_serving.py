"""The serving screen driven by Pilot (frozen snapshots, a replay) and, through the CLI in
tmux, a live serve-bench run that the user quits."""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from wattscope import events as ev
from wattscope.recording import load
from wattscope.replay import MemoryRecording
from wattscope.serve.analysis import analyse
from wattscope.serve.source import ServeReplay
from wattscope.serve.state import ServeSnapshot, ServeState
from wattscope.serve_report import serving_grid
from wattscope.tui.app import ConfirmQuit, HelpScreen
from wattscope.tui.serving import RUNNING_MARK, PhasesTable, ServeApp

from mock_source import MockServeSource
from serve_stream import S, StreamRecording, event_stream


def sync(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run


@pytest.fixture(scope="module")
def stream() -> list[ev.Event]:
    return event_stream()


def _mid_second_load(stream: list[ev.Event]) -> ServeSnapshot:
    load1 = [e for e in stream if isinstance(e, ev.ServePhase)][2]
    t = load1.start_ns + 6 * S
    state = ServeState()
    state.apply_all(e for e in stream if e.t_ns <= t)
    return state.serving(t)


def _screen_text(app) -> str:
    update = app.screen._compositor.render_update(full=True)
    return "\n".join("".join(seg.text for seg in line) for line in update.strips)


def _rows(app) -> list[list[str]]:
    table = app.query_one(PhasesTable)
    return [[str(c).strip() for c in table.get_row_at(i)] for i in range(table.row_count)]


@sync
async def test_live_frame_shows_header_panel_and_phases(stream) -> None:
    snap = _mid_second_load(stream)
    assert snap.current is not None and snap.in_flight is not None
    app = ServeApp(MockServeSource(snap))
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause()
        text = _screen_text(app)
        header = text.splitlines()[0]
        for part in ("LIVE", "running", "synthetic:Qwen2.5-3B", "fp16", "synthetic weights", "Simulated H100"):
            assert part in header, header
        cur = serving_grid([snap.current])
        cells = dict(zip(cur.headers, cur.rows[0]))
        assert "fp16 load 2 at 12.00/s 00:06 (3/6)" in text
        assert f"{snap.in_flight} in flight · {snap.ok} ok · 0 failed" in text
        assert f"offered 12.00 · achieved {cells['Achieved /s']}" in text
        assert cells["J/prefill tok"] in text and cells["J/decode tok"] in text
        idle, pre, dec = snap.shares
        assert f"idle {idle * 100:.0f}% · prefill {pre * 100:.0f}% · decode {dec * 100:.0f}%" in text
        # The ended phase as the report prints it, then the running one marked.
        ended = serving_grid(list(snap.rates)).rows
        assert _rows(app) == [ended[0], [RUNNING_MARK.strip() + " " + cur.rows[0][0], *cur.rows[0][1:]]]
        assert [str(c.label).strip() for c in app.query_one(PhasesTable).columns.values()] == cur.headers


@sync
async def test_quit_asks_while_the_run_goes_then_stops_it(stream) -> None:
    source = MockServeSource(_mid_second_load(stream), running=True)
    app = ServeApp(source)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuit)
        assert "Stop the load and the engine" in _screen_text(app)
        await pilot.press("n")
        await pilot.pause()
        assert not source.stopped and not isinstance(app.screen, ConfirmQuit)
        await pilot.press("q", "y")
        await pilot.pause(0.2)
    assert source.stopped


@sync
async def test_help_lists_keys_and_the_columns(stream) -> None:
    app = ServeApp(ServeReplay(MemoryRecording(stream)))
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = _screen_text(app)
        assert "Load phases: the serving report's table" in text
        assert "J/decode tok (steps)" in text and "seek back 10 s" in text
        assert "export" not in text.lower()
        # The graph's legend has the serving run's two phases, not a sweep's.
        assert "offered load at one rate" in text and "idle (and the engine's start)" in text
        assert "warm-up" not in text and "cool-down" not in text


@sync
async def test_replay_plays_to_the_end_and_shows_the_reports_table(stream) -> None:
    app = ServeApp(ServeReplay(MemoryRecording(stream), speed=64.0))
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        assert "REPLAY" in _screen_text(app).splitlines()[0]
        await pilot.press("G")
        await pilot.pause(0.3)
        text = _screen_text(app)
        assert "completed" in text.splitlines()[0]
        assert _rows(app) == serving_grid(analyse(StreamRecording(stream))).rows
        await pilot.press("g")  # back to the start: nothing ended yet
        await pilot.pause(0.2)
        assert _rows(app) == [] and "no load phase yet" in _screen_text(app)


SIM = """
name = "sim-serve"
[serve]
engine = "sim"
rates = [6.0, 18.0]
duration_s = 30
idle_s = 1
drain_s = 5
min_interval_s = 0.15
"""


@pytest.mark.process
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_quitting_the_live_app_finalises_the_recording(tmp_path: Path) -> None:
    from test_demo_tmux import Pane, _started, _wait_dead

    cfg = tmp_path / "sim.toml"
    cfg.write_text(SIM)
    out = tmp_path / "live.wattscope"
    cmd = (f"{shlex.quote(sys.executable)} -m wattscope serve-bench {shlex.quote(str(cfg))} -o {shlex.quote(str(out))}"
           "; echo exit=$?")
    env = {"TERM": os.environ.get("TERM", "xterm-256color"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    pane = Pane(cmd, env=env)
    try:
        text = pane.wait_for("LIVE", "load 1 at 6.00/s", timeout=60)
        _started(pane, text, "wattscope serve-bench")
        assert "Serving" in text and "Load phases" in text
        pane.keys("q")
        text = pane.wait_for("Stop the load", timeout=10)
        assert "Stop the load" in text, text
        pane.keys("y")
        text = pane.wait_for("exit=", timeout=60)
        assert "exit=130" in text, text
        assert _wait_dead(pane, 10)
    finally:
        pane.close()
    with load(out) as rec:
        assert rec.meta["status"] == "interrupted"
        assert rec.meta["end_reason"] == "stopped by the user"
        phases = [e for e in rec.events(samples=False) if isinstance(e, ev.ServePhase)]
    assert [p.phase for p in phases] == ["idle", "load"]  # the first rate, cut short


def test_a_bad_fps_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wattscope.cli import main

    cfg = tmp_path / "sim.toml"
    cfg.write_text(SIM)
    out = tmp_path / "x.wattscope"
    assert main(["serve-bench", str(cfg), "--fps", "100", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattscope: error: --fps 100") and len(err.strip().splitlines()) == 1
    assert not out.exists()
