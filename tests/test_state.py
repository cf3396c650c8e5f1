"""RunState: folding events into the numbers the displays show."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from wattscope import events as ev
from wattscope.metrics import NO_RATIOS, RatioValue
from wattscope.source import LiveSource
from wattscope.state import MAX_RATE_HZ, RunState

from synthetic_run import event_stream

T0 = 1_000_000_000_000
S = 1_000_000_000


def _meta(tdp: float = 700.0) -> dict:
    # The keys the session writes (Session._describe).
    return {"gpu": {"name": "NVIDIA H100 80GB HBM3", "tdp_w": tdp, "index": 0, "refresh_s": {"power_w": 0.1}},
            "simulated": True, "weights": "real", "sweep": {"name": "t", "configs": [{}, {}, {}, {}]}}


def _row(t: int, w: float, gpu: int = 0) -> tuple:
    return (t, gpu, w, w, math.nan, 1755.0, 90.0, 50.0, 1000.0, ev.FRESH_POWER)


def _result(t: int, prec: str, pre: float, dec: float, tok: float, model: str = "synthetic:Qwen2-1.5B",
            batch: int = 1, **extra: float) -> ev.ConfigResult:
    figs = {"prefill_energy_j": pre, "decode_energy_j": dec, "decode_tok_s": tok,
            "prefill_power_w": 140.0, "decode_power_w": 350.0, **extra}
    return ev.ConfigResult(t, f"Qwen2-1.5B/b{batch}/{prec}", model, batch, prec, True, True, "", figs)


def test_ratios_against_fp16_of_same_model_and_batch() -> None:
    s = RunState()
    s.apply(ev.RunStarted(T0, _meta()))
    # INT8 arrives before its FP16 baseline: the ratio appears once the baseline does.
    s.apply(_result(T0 + 1, "int8", 4.736, 135.724, 15.79))
    assert s.snapshot(T0 + 2).results[0].ratios == NO_RATIOS
    s.apply(_result(T0 + 3, "fp16", 0.924, 42.737, 105.26))
    s.apply(_result(T0 + 4, "fp16", 2.0, 50.0, 800.0, batch=8))
    rows = {(r.precision, r.batch): r for r in s.snapshot(T0 + 5).results}
    int8 = rows[("int8", 1)].ratios
    assert int8["prefill_energy_ratio"].value == pytest.approx(4.736 / 0.924)  # seed: 5.12x
    assert int8["decode_energy_ratio"].value == pytest.approx(135.724 / 42.737)  # 3.18x
    assert int8["decode_speed_ratio"].value == pytest.approx(15.79 / 105.26)  # 0.15x
    assert dict(rows[("fp16", 1)].ratios) == dict.fromkeys(NO_RATIOS, RatioValue(1.0))
    # Sorted like the seed: by model, batch, then fp16, bf16, int8, nf4.
    assert [(r.batch, r.precision) for r in s.snapshot(T0 + 5).results] == [(1, "fp16"), (1, "int8"), (8, "fp16")]
    assert rows[("fp16", 1)].prefill_pct_tdp == pytest.approx(20.0)
    assert rows[("fp16", 1)].decode_pct_tdp == pytest.approx(50.0)


def test_failed_rows_keep_their_reason() -> None:
    s = RunState()
    s.apply(ev.RunStarted(T0, _meta()))
    s.apply(ev.ConfigStarted(T0 + 1, "Yi/b8/int8", 0, 2, "synthetic:Yi-1.5-6B", 8, "int8", True, 3))
    s.apply(ev.ConfigFinished(T0 + 2, "Yi/b8/int8", False, "CUDA out of memory"))
    (row,) = s.snapshot(T0 + 3).results
    assert (row.ok, row.reason, row.model, row.batch) == (False, "CUDA out of memory", "Yi-1.5-6B", 8)
    s.apply(ev.ConfigResult(T0 + 4, "Yi/b8/int8", "synthetic:Yi-1.5-6B", 8, "int8", True, False,
                            "CUDA out of memory", {}))
    assert len(s.snapshot(T0 + 5).results) == 1


def test_latest_power_pct_tdp_and_running_phase_average() -> None:
    s = RunState()
    s.apply(ev.RunStarted(T0, _meta(tdp=700.0)))
    s.apply(ev.Samples(T0 + S, [_row(T0 + k * S // 10, 100.0) for k in range(10)]))
    # Rows stamped after the phase began arrive before the PhaseStarted event (another
    # queue): they still count for the new phase's average.
    s.apply(ev.Samples(T0 + 2 * S, [_row(T0 + S + k * S // 10, 300.0) for k in range(10)]))
    s.apply(ev.PhaseStarted(T0 + S, "c", "decode", 1))
    s.apply(ev.Samples(T0 + 3 * S, [_row(T0 + 2 * S + k * S // 10, 400.0 if k < 5 else 350.0) for k in range(10)]))
    snap = s.snapshot(T0 + 3 * S)
    g = snap.gpu
    assert g.latest_w == 350.0
    assert g.pct_tdp == pytest.approx(50.0)
    assert g.phase_avg_w == pytest.approx((10 * 300 + 5 * 400 + 5 * 350) / 20)
    assert snap.phase == "decode" and snap.repeat == 1
    assert snap.phase_elapsed_s == pytest.approx(2.0)
    # Phase codes follow the timeline: the first second is before any phase.
    assert (g.phase[:10] == -1).all() and (g.phase[10:] == ev.PHASES.index("decode")).all()


def test_ring_buffer_is_bounded_and_keeps_the_window() -> None:
    s = RunState(window_s=2.0)
    s.apply(ev.RunStarted(T0, _meta()))
    dt = S // 1000  # 1 kHz for 10 s
    for b in range(100):
        rows = [_row(T0 + (b * 100 + k) * dt, float(b)) for k in range(100)]
        s.apply(ev.Samples(T0 + (b + 1) * 100 * dt, rows))
    now = T0 + 10 * S
    g = s.snapshot(now).gpu
    assert len(g.t_s) == 2000  # the last 2 s at 1 kHz, nothing older
    assert g.t_s[0] >= -2.0 and g.t_s[-1] < 0
    assert np.all(np.diff(g.t_s) > 0)
    assert g.power_w[-1] == 99.0 and g.power_w[0] == 80.0
    assert not g.power_w.flags.writeable
    # Memory is bounded: the state keeps 1 s beyond the window at MAX_RATE_HZ (here the
    # samples of 7.000-9.999 s), so a snapshot at 8 s finds only its window's last second.
    assert MAX_RATE_HZ == 1000
    earlier = s.snapshot(now - 2 * S).gpu
    assert earlier.t_s[0] == pytest.approx(-1.0) and earlier.t_s[-1] == 0.0
    assert len(earlier.t_s) == 1001 and earlier.power_w[0] == 70.0


def test_eta_from_finished_configs() -> None:
    s = RunState()
    s.apply(ev.RunStarted(T0, _meta()))
    for i, dur in enumerate((10, 20)):
        start = T0 + i * 100 * S
        s.apply(ev.ConfigStarted(start, f"c{i}", i, 4, "m", 1, "fp16", False, 3))
        s.apply(ev.ConfigFinished(start + dur * S, f"c{i}", True))
    s.apply(ev.ConfigStarted(T0 + 200 * S, "c2", 2, 4, "m", 1, "int8", False, 3))
    snap = s.snapshot(T0 + 205 * S)
    # Mean 15 s per config, 2 left, 5 s already spent on the current one.
    assert snap.eta_s == pytest.approx(25.0)
    assert (snap.configs_done, snap.configs_total) == (2, 4)
    assert snap.elapsed_s == pytest.approx(205.0)


def test_status_sampler_and_warnings() -> None:
    s = RunState()
    assert s.snapshot(T0).status == "waiting"
    s.apply(ev.RunStarted(T0, _meta()))
    s.apply(ev.SamplerStats(T0 + S, 100.0, 99.5, 0.3, 2, {"power_w": 10.0}, 3.0))
    s.apply(ev.RunWarning(T0 + S, "sampler", "power refresh is 100 ms"))
    s.apply(ev.RunEnded(T0 + 2 * S, "failed", "runner crashed: segfault"))
    s.apply(ev.RunEnded(T0 + 3 * S, "interrupted"))  # the first verdict stands
    snap = s.snapshot(T0 + 10 * S)
    assert (snap.status, snap.error) == ("failed", "runner crashed: segfault")
    assert snap.elapsed_s == pytest.approx(2.0)  # the clock stops when the run ends
    assert snap.sampler.achieved_hz == 99.5 and snap.sampler.distinct_per_s == 10.0
    assert [w.message for w in snap.warnings] == ["power refresh is 100 ms"]
    assert snap.refresh_ms == 100.0 and snap.tdp_w == 700.0


def test_snapshot_is_deterministic_for_a_frozen_clock() -> None:
    events = event_stream()
    a, b = RunState(), RunState()
    a.apply_all(events)
    b.apply_all(events)
    t = events[len(events) // 2].t_ns
    sa, sb = a.snapshot(t), b.snapshot(t)
    assert np.array_equal(sa.gpu.power_w, sb.gpu.power_w)
    assert sa.results == sb.results and sa.eta_s == sb.eta_s


def test_apply_from_another_thread_while_snapshotting() -> None:
    events = event_stream(phase_s=0.5)
    s = RunState()
    feeder = threading.Thread(target=s.apply_all, args=(events,))
    feeder.start()
    while feeder.is_alive():
        s.snapshot(events[-1].t_ns)
    feeder.join()
    assert s.snapshot(events[-1].t_ns).configs_done == 3


def test_live_source_marks_a_crashed_session_failed() -> None:
    class Session:
        def __init__(self) -> None:
            self.state = RunState()
            self.done = threading.Event()
            self.error = None

    sess = Session()
    sess.state.apply(ev.RunStarted(T0, _meta()))
    src = LiveSource(sess, clock=lambda: T0 + S)
    assert src.snapshot().status == "running"
    sess.error = "runner exited with code -9"
    sess.done.set()
    snap = src.snapshot()
    assert (snap.status, snap.error) == ("failed", "runner exited with code -9")
