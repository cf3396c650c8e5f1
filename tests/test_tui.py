"""The Textual app driven by Pilot: keys, what the screen shows, live and replay."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

import pytest

from wattscope import events as ev
from wattscope import render
from wattscope.recording import Recorder
from wattscope.render import fmt_duration
from wattscope.replay import MemoryRecording, ReplayController
from wattscope.source import LiveSource
from wattscope.state import RunState
from wattscope.tui.app import REPLAY_ID, ConfirmQuit, HelpScreen, WattscopeApp, make_app
from wattscope.tui.results import NOISY_STYLE, ResultsTable
from wattscope.tui.widgets import PowerGraph, _columns

from mock_source import MockSource, snapshot_at
from synthetic_run import event_stream, result_cells, result_of

S = 1_000_000_000
CONFIGS = [("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "int8"), ("Qwen2-1.5B", 1, "nf4"),
           ("Qwen2-1.5B", 8, "fp16"), ("Qwen2-1.5B", 8, "int8")]
FAIL = {"Qwen2-1.5B/b8/int8": "CUDA out of memory"}


def sync(fn):
    """Run an async test on a fresh event loop (no asyncio pytest plugin needed)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture(scope="module")
def events() -> list[ev.Event]:
    return event_stream(configs=CONFIGS, failures=FAIL)


def _state_at(events: list[ev.Event], t: int) -> RunState:
    s = RunState()
    s.apply_all(e for e in events if e.t_ns <= t)
    return s


def _frozen(events: list[ev.Event], t: int | None = None) -> MockSource:
    return MockSource(snapshot_at(events, events[-1].t_ns if t is None else t))


def _screen_text(app) -> str:
    update = app.screen._compositor.render_update(full=True)
    return "\n".join("".join(seg.text for seg in line) for line in update.strips)


def _shows_row(text: str, cells: str) -> bool:
    """Whether a screen line holds these cells in this order, however the columns are spaced."""
    return any(cells in " ".join(line.split()) for line in text.splitlines())


class FakeSession:
    def __init__(self, state: RunState) -> None:
        self.state = state
        self.done = threading.Event()
        self.error = None
        self.stopped = False
        self.status = "running"

    def stop(self) -> None:
        self.stopped = True
        self.status = "interrupted"
        self.done.set()


@sync
async def test_live_screen_shows_power_phase_tdp_and_table(events) -> None:
    # A third into the b8 FP16 decode window of round 2, the b1 group's results in.
    decode = next(e for e in events if isinstance(e, ev.Window) and e.config_id == "Qwen2-1.5B/b8/fp16"
                  and e.phase == "decode" and e.round == 2)
    t = decode.start_ns + (decode.end_ns - decode.start_ns) // 3
    app = make_app(_frozen(events, t))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = _screen_text(app)
        snap = app.snap
        assert snap.phase == "decode" and snap.config.batch == 8
        assert f"GPU0 {snap.gpu.latest_w:.0f} W  {snap.gpu.pct_tdp:.0f}% of 700 W TDP" in text
        assert "D decode round 2" in text and "Qwen2-1.5B b8" in text
        # The INT8 row as its result holds it, each ratio with its interval in its cell; at
        # 80 columns the speed ratio is one sideways scroll away, the row's identity held.
        cells = result_cells(events, "Qwen2-1.5B/b1/int8").split()
        assert _shows_row(text, " ".join(["Qwen2-1.5B 1 INT8", *cells[:7]]))
        assert not _shows_row(text, " ".join(cells[7:]))
        await pilot.press("right_square_bracket", "right_square_bracket")
        await pilot.pause()
        assert _shows_row(_screen_text(app), " ".join(["Qwen2-1.5B 1 INT8", *cells[1:]]))
        # The noisy NF4 row's tok/s is marked and coloured in its own cell, the rest of
        # the row is not.
        nf4 = result_of(events, "Qwen2-1.5B/b1/nf4").figures
        tok_s = render.fmt_figure("decode_tok_s", nf4["decode_tok_s"])
        assert nf4["decode_tok_s_cv"] > 0.03 and f"{tok_s}*" in _screen_text(app)
        table = app.query_one(ResultsTable)
        row = [str(c) for c in table.get_row_at(table.row_count - 1)]
        styles = [c.style for c in table.get_row_at(table.row_count - 1)]
        assert [styles[i] for i, c in enumerate(row) if c.endswith("*")] == [NOISY_STYLE]
        assert all(st == "" for i, st in enumerate(styles) if not row[i].endswith("*"))
        assert "Results 3/5" in text
        assert "100/100 Hz" in text and "power_w (refresh 100 ms)" in text


@sync
async def test_failed_row_and_run_failure_are_shown(events) -> None:
    crash = [e for e in events if not isinstance(e, ev.RunEnded)]
    crash.append(ev.RunEnded(events[-1].t_ns, "failed", "runner process died (exit code -11)"))
    for run, expect in ((events, "failed Qwen2-1.5B b8 INT8: CUDA out of memory"),
                        (crash, "run failed: runner process died (exit code -11)")):
        app = make_app(_frozen(run))
        async with app.run_test(size=(100, 36)) as pilot:  # room for the note under the five rows
            await pilot.pause()
            assert expect in _screen_text(app)


@sync
async def test_pause_display_freezes_frames_while_the_run_goes_on(events) -> None:
    t = events[0].t_ns + 5 * S
    source = MockSource(snapshot_at(events, t), running=True)
    app = make_app(source, frame_s=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.snap.now_ns == t
        await pilot.press("p")
        await pilot.pause()
        assert app.display_paused and "DISPLAY PAUSED" in _screen_text(app)
        taken = source.snapshots_taken
        later = result_of(events, "Qwen2-1.5B/b1/fp16").t_ns  # the b1 group's three rows finished
        source.show(snapshot_at(events, later))
        await pilot.pause(0.2)
        assert app.snap.now_ns == t and source.snapshots_taken == taken
        await pilot.press("p")
        await pilot.pause(0.1)
        assert app.snap.now_ns == later and app.snap.configs_done == 3


@sync
async def test_help_and_quit_without_a_running_sweep(events) -> None:
    app = make_app(_frozen(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "prefill" in _screen_text(app) and "seek" not in _screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0 and not app.is_running


@sync
async def test_help_is_generated_from_the_bindings(events) -> None:
    replay = [b for b in WattscopeApp.BINDINGS if (b.id or "").startswith(REPLAY_ID)]
    general = [b for b in WattscopeApp.BINDINGS if b not in replay]
    assert replay and general and all(b.id and b.tooltip for b in WattscopeApp.BINDINGS)
    for source, shown, hidden in ((_frozen(events), general, replay),
                                  (ReplayController(MemoryRecording(events), clock=Clock(0)), general + replay, [])):
        app = make_app(source)
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.press("question_mark")
            await pilot.pause()
            text = _screen_text(app)
            for b in shown:
                assert f"{app.get_key_display(b):>7}  {b.tooltip}" in text
            for b in hidden:
                assert b.tooltip not in text


@sync
async def test_quit_during_a_live_sweep_asks_then_stops_the_runner(events) -> None:
    t = events[0].t_ns + 12 * S
    session = FakeSession(_state_at(events, t))
    app = make_app(LiveSource(session, clock=Clock(t)))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        assert app.is_running and not session.stopped
        await pilot.press("q")
        await pilot.press("y")
        await pilot.pause(0.3)
        assert session.stopped
        assert not app.is_running


@sync
async def test_replay_keys(events) -> None:
    clock = Clock(0)
    rc = ReplayController(MemoryRecording(events), clock=clock)
    t0 = events[0].t_ns
    app = make_app(rc)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        duration = fmt_duration((events[-1].t_ns - t0) / 1e9)
        assert f"REPLAY ▶ 1x 00:00/{duration}" in _screen_text(app)
        await pilot.press("space")
        await pilot.pause()
        assert not rc.playing and "REPLAY ⏸" in _screen_text(app)
        await pilot.press("right", "right")
        assert rc.position_ns == t0 + 20 * S
        done = sum(isinstance(e, ev.ConfigFinished) and e.t_ns <= t0 + 20 * S for e in events)
        assert app.snap.now_ns == t0 + 20 * S and app.snap.configs_done == done
        await pilot.press("left")
        assert rc.position_ns == t0 + 10 * S
        await pilot.press("plus", "plus", "minus")
        assert rc.speed == 2.0
        await pilot.press("G")
        assert app.snap.status == "completed" and len(app.snap.results) == 5
        await pilot.press("g")
        assert rc.position_ns == t0 and app.snap.results == ()
        await pilot.press("question_mark")
        assert "seek" in _screen_text(app)


@sync
async def test_replay_keys_are_hidden_live(events) -> None:
    app = make_app(_frozen(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("right", "G")
        assert "REPLAY" not in _screen_text(app)
        assert app.check_action("seek", (10,)) is False


@sync
async def test_export_writes_markdown_and_csv_beside_the_recording(events, tmp_path: Path) -> None:
    path = tmp_path / "run.wattscope"
    rec = Recorder(path)
    for e in events:
        rec.write(e)
    rec.close()
    from wattscope.recording import load

    rc = ReplayController(load(path), clock=Clock(0))
    app = make_app(rc)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("e")
        for _ in range(50):
            await pilot.pause(0.1)
            if app.export_message:
                break
    assert app.export_message.startswith("exported"), app.export_message
    assert (tmp_path / "run.md").is_file() and (tmp_path / "run.csv").is_file()
    assert str(tmp_path / "run.md") in app.export_message


@sync
async def test_export_without_a_recording_says_so(events) -> None:
    app = make_app(_frozen(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("e")
        assert "no recording file" in app.export_message


@sync
async def test_relayout_on_resize(events) -> None:
    app = make_app(_frozen(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = _screen_text(app)
        # 80 columns: the titles wrap (never renamed) and the %TDP columns stay out.
        table = app.query_one(ResultsTable)
        assert _shows_row(text, "Model Batch Precision")
        assert not any("%TDP" in str(c.label) for c in table.columns.values())
        assert _shows_row(text, "Prefill Decode Decode") and _shows_row(text, "Energy / Energy / tok/s")
        await pilot.resize_terminal(160, 40)
        await pilot.pause(0.3)
        text = _screen_text(app)
        # Two title lines: the titles whole on one line or two, the %TDP columns in.
        assert _shows_row(text, "Prefill Energy Decode Energy Decode Prefill Decode Decode Speed Prefill Decode")
        assert _shows_row(text, "/ Call (J) / 32 tok (J) tok/s Energy Ratio Energy Ratio Ratio %TDP %TDP")
        assert app.query_one(PowerGraph).size.width > 100


def test_graph_columns_average_samples_and_keep_the_last_phase() -> None:
    import numpy as np

    t = np.array([-9.5, -9.2, -5.5, -0.5])
    p = np.array([100.0, 200.0, 300.0, 400.0])
    phase = np.array([3, 4, 4, 5], dtype=np.int8)
    mean, last = _columns(t, p, phase, window_s=10.0, width=10)
    assert mean[0] == 150.0 and last[0] == 4
    assert mean[4] == 300.0 and mean[9] == 400.0 and last[9] == 5
    assert np.isnan(mean[1]) and last[1] == -1


@sync
async def test_command_palette_offers_the_app_commands(events) -> None:
    app = make_app(_frozen(events))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"pause disp")
        await pilot.pause(0.5)
        assert "Pause display" in _screen_text(app)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.display_paused


@sync
async def test_the_palette_offers_every_key_in_its_bindings_words(events) -> None:
    app = make_app(_frozen(events))
    async with app.run_test(size=(80, 24)) as pilot:
        titles = {c.title: c.help for c in app.get_system_commands(app.screen)}
        keyed = [b for b in app.BINDINGS if b.id not in (None, "quit")]
        for b in keyed:
            # A frozen source has no replay controls: its replay keys are not offered.
            assert (b.description in titles) == (not b.id.startswith("replay.")), b.id
        assert titles["Zoom"] == next(b.tooltip for b in keyed if b.id == "graph.zoom")
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"zoom")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.query_one(PowerGraph).auto_zoom
