"""ReplayController: a recording's stream played into a RunState on a clock."""

from __future__ import annotations

import numpy as np
import pytest

from wattscope import events as ev
from wattscope.recording import Recorder, load
from wattscope.replay import MemoryRecording, ReplayController
from wattscope.state import RunState

from synthetic_run import event_stream, result_of

S = 1_000_000_000
CONFIGS = [("Qwen2-1.5B", 1, "fp16"), ("Qwen2-1.5B", 1, "int8"), ("Qwen2-1.5B", 1, "nf4"),
           ("Qwen2-1.5B", 8, "fp16"), ("Qwen2-1.5B", 8, "nf4")]


class Clock:
    def __init__(self, t: int = 0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture(scope="module")
def run_events() -> list[ev.Event]:
    return event_stream(configs=CONFIGS, rate_hz=200.0)


def _reference(events: list[ev.Event], t_ns: int, window_s: float = 60.0):
    s = RunState(window_s=window_s)
    s.apply_all(e for e in events if e.t_ns <= t_ns)
    return s.snapshot(t_ns)


def _same(a, b) -> None:
    assert (a.now_ns, a.status, a.phase, a.repeat, a.configs_done, a.eta_s) == \
        (b.now_ns, b.status, b.phase, b.repeat, b.configs_done, b.eta_s)
    assert a.results == b.results
    assert a.warnings == b.warnings
    ga, gb = a.gpu, b.gpu
    assert np.array_equal(ga.t_s, gb.t_s) and np.array_equal(ga.power_w, gb.power_w)
    assert np.array_equal(ga.phase, gb.phase)
    assert ga.latest_w == gb.latest_w
    assert ga.phase_avg_w == pytest.approx(gb.phase_avg_w)


def test_plays_on_the_clock_at_speed(run_events) -> None:
    clock = Clock()
    rc = ReplayController(MemoryRecording(run_events), clock=clock, speed=2.0)
    t0 = run_events[0].t_ns
    assert rc.snapshot().now_ns == t0 and rc.snapshot().status == "running"
    clock.t += 5 * S  # 5 s of wall time at 2x = 10 s of run
    rc.advance()
    _same(rc.snapshot(), _reference(run_events, t0 + 10 * S))
    rc.pause()
    clock.t += 100 * S
    rc.advance()
    assert rc.position_ns == t0 + 10 * S
    rc.faster()
    assert rc.speed == 4.0
    rc.play()
    clock.t += 1 * S
    rc.advance()
    assert rc.position_ns == t0 + 14 * S


def test_speed_is_clamped(run_events) -> None:
    rc = ReplayController(MemoryRecording(run_events), clock=Clock())
    for _ in range(20):
        rc.faster()
    assert rc.speed == 64.0
    for _ in range(20):
        rc.slower()
    assert rc.speed == 0.25


def test_seek_back_rebuilds_the_same_state_as_playing_through(run_events) -> None:
    clock = Clock()
    rc = ReplayController(MemoryRecording(run_events), clock=clock, window_s=5.0)
    t0 = run_events[0].t_ns
    rc.to_end()
    assert rc.snapshot().status == "completed"
    rc.seek_to(t0 + 23 * S + S // 3)
    _same(rc.snapshot(), _reference(run_events, t0 + 23 * S + S // 3, window_s=5.0))
    rc.seek(-10)
    _same(rc.snapshot(), _reference(run_events, t0 + 13 * S + S // 3, window_s=5.0))
    rc.seek(+2)  # a short step forward keeps folding
    _same(rc.snapshot(), _reference(run_events, t0 + 15 * S + S // 3, window_s=5.0))
    rc.to_start()
    assert rc.position_ns == t0 and rc.snapshot().configs_done == 0


def test_rebuild_folds_only_the_window_of_samples(run_events) -> None:
    seen: list[int] = []

    class Counting(MemoryRecording):
        def events(self, start_ns=None, end_ns=None, samples=True):
            for e in super().events(start_ns, end_ns, samples):
                if isinstance(e, ev.Samples):
                    seen.append(e.t_ns)
                yield e

    rc = ReplayController(Counting(run_events), clock=Clock(), window_s=2.0)
    seen.clear()
    target = run_events[0].t_ns + 40 * S
    rc.seek_to(target)
    # The decode phase at 40 s began at most 1 s before; with a 2 s window at most
    # ~2 s of 100 ms batches are read, not the 40 s before.
    assert 0 < len(seen) <= 22
    assert min(seen) >= target - 2 * S


def test_stops_at_the_end(run_events) -> None:
    clock = Clock()
    rc = ReplayController(MemoryRecording(run_events), clock=clock, speed=64.0)
    clock.t += 10 * S
    rc.advance()
    assert not rc.playing and rc.finished
    assert rc.position_ns == run_events[-1].t_ns
    assert rc.snapshot().configs_done == len(CONFIGS)


def test_fast_mode_reports_non_sample_events(run_events) -> None:
    rc = ReplayController(MemoryRecording(run_events), clock=Clock())
    kinds: list[str] = []
    snap = rc.run_fast(lambda e, state: kinds.append(e.kind))
    assert "samples" not in kinds and kinds.count("config_result") == len(CONFIGS)
    assert snap.status == "completed"
    ids = [f"{m}/b{b}/{p}" for m, b, p in CONFIGS]
    assert [(r.config_id, r.ratios["prefill_energy_ratio"].value) for r in snap.results] == \
        [(cid, result_of(run_events, cid).figures["prefill_energy_ratio"]) for cid in ids]


def test_replays_a_real_recording_file(run_events, tmp_path) -> None:
    path = tmp_path / "run.wattscope"
    rec = Recorder(path)
    for e in run_events:
        rec.write(e)
    rec.close()
    clock = Clock()
    rc = ReplayController(load(path), clock=clock, window_s=5.0)
    t0 = run_events[0].t_ns
    assert rc.end_ns == run_events[-1].t_ns
    rc.seek_to(t0 + 30 * S)
    live = _reference(run_events, t0 + 30 * S, window_s=5.0)
    got = rc.snapshot()
    assert got.results == live.results and got.phase == live.phase
    assert np.array_equal(got.gpu.power_w, live.gpu.power_w)
