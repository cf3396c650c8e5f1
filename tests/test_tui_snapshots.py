"""SVG snapshots of the live and replay screens, driven by a synthetic run on a frozen
clock (regenerate with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look
at the SVGs before committing them)."""

from __future__ import annotations

import pytest

from wattscope import events as ev
from wattscope.replay import MemoryRecording, ReplayController
from wattscope.source import LiveSource
from wattscope.state import RunState
from wattscope.tui.app import make_app

from synthetic_run import event_stream

S = 1_000_000_000
CONFIGS = [("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "int8"), ("Qwen2-1.5B", 1, "nf4"),
           ("Qwen2-1.5B", 8, "fp16"), ("Qwen2-1.5B", 8, "int8"), ("Qwen2-1.5B", 8, "nf4")]
FAIL = {"Qwen2-1.5B/b8/int8": "CUDA out of memory"}


@pytest.fixture(scope="module")
def events() -> list[ev.Event]:
    return event_stream(configs=CONFIGS, failures=FAIL)


def _live(events: list[ev.Event], at_s: float):
    t = events[0].t_ns + int(at_s * S)
    state = RunState()
    state.apply_all(e for e in events if e.t_ns <= t)
    return make_app(LiveSource(state, clock=lambda: t))


def test_live_screen_80x24(snap_compare, events) -> None:
    assert snap_compare(_live(events, 33.4), terminal_size=(80, 24))


def test_live_screen_wide_after_a_failure(snap_compare, events) -> None:
    assert snap_compare(_live(events, 45.2), terminal_size=(150, 36))


def test_replay_screen_paused_mid_run(snap_compare, events) -> None:
    rc = ReplayController(MemoryRecording(events), clock=lambda: 0)
    rc.pause()
    rc.seek_to(events[0].t_ns + 24 * S + S // 2)
    assert snap_compare(make_app(rc), terminal_size=(80, 24))


def test_help_screen(snap_compare, events) -> None:
    rc = ReplayController(MemoryRecording(events), clock=lambda: 0)
    rc.pause()
    assert snap_compare(make_app(rc), press=["question_mark"], terminal_size=(80, 24))


# The seed's 15-row sweep, finished: the results view must show its last rows under its
# header, not rows 1-6.
SWEEP = [(m, b, p) for m, batches in (("Qwen2-1.5B", (1, 8)), ("Qwen2.5-3B", (1, 8)), ("Yi-1.5-6B", (8,)))
         for b in batches for p in ("fp16", "int8", "nf4")]


@pytest.fixture(scope="module")
def sweep() -> list[ev.Event]:
    return event_stream(configs=SWEEP, failures=FAIL)


def test_results_view_of_a_finished_sweep_80x24(snap_compare, sweep) -> None:
    assert snap_compare(_live(sweep, (sweep[-1].t_ns - sweep[0].t_ns) / S), terminal_size=(80, 24))


def test_results_view_of_a_finished_sweep_160x45(snap_compare, sweep) -> None:
    assert snap_compare(_live(sweep, (sweep[-1].t_ns - sweep[0].t_ns) / S), terminal_size=(160, 45))


def test_warnings_screen(snap_compare, sweep) -> None:
    assert snap_compare(_live(sweep, (sweep[-1].t_ns - sweep[0].t_ns) / S), press=["w"], terminal_size=(80, 24))


def test_replay_whole_run_zoomed_no_color(snap_compare, sweep, monkeypatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    rc = ReplayController(MemoryRecording(sweep), clock=lambda: 0)
    rc.pause()
    rc.seek_to(sweep[0].t_ns + 40 * S)

    async def whole_and_zoomed(pilot) -> None:
        await pilot.press("a")
        for _ in range(100):  # the whole run is folded off the UI thread
            await pilot.pause(0.05)
            if pilot.app._graph.whole is not None:
                break
        await pilot.press("z")

    assert snap_compare(make_app(rc), run_before=whole_and_zoomed, terminal_size=(100, 30))
