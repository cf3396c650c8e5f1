"""The serving state: a serve-bench stream folded into snapshots, against the report.

In process on a synthetic stream with known per-token energies (serve_stream.py); and
on a real ``serve-bench --sim`` recording, whose replayed last snapshot must carry the
report's figures exactly."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from wattscope import events as ev
from wattscope.recording import load
from wattscope.serve.analysis import analyse, rates_frame
from wattscope.serve.driver import schedule
from wattscope.serve.source import ServeReplay
from wattscope.serve.state import PlannedPhase, ServeState, plan, serve_config
from wattscope.serve_report import format_serving

from serve_stream import DECODE_J, PREFILL_J, S, SERVE, StreamRecording, event_stream, meta


class Wall:
    """A wall clock the test moves (the recomputation is throttled on it)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def stream() -> list[ev.Event]:
    return event_stream()


def _phases(stream: list[ev.Event]) -> list[ev.ServePhase]:
    return [e for e in stream if isinstance(e, ev.ServePhase)]


def _fold_to(stream: list[ev.Event], t_ns: int, state: ServeState | None = None) -> ServeState:
    state = state or ServeState()
    state.apply_all(e for e in stream if e.t_ns <= t_ns)
    return state


def test_the_plan_and_config_come_from_the_recordings_meta() -> None:
    assert serve_config(meta()) == SERVE
    assert plan(meta()) == (
        PlannedPhase("fp16", "idle", -1, 0.0), PlannedPhase("fp16", "load", 0, 4.0), PlannedPhase("fp16", "load", 1, 12.0),
        PlannedPhase("nf4", "idle", -1, 0.0), PlannedPhase("nf4", "load", 0, 4.0), PlannedPhase("nf4", "load", 1, 12.0),
    )
    assert serve_config({"serve": {"serve": {"rates": "x", "prompt_tokens": {"bogus": 1}}}}) is None
    assert plan({}) == ()


def test_phase_now_follows_the_ended_phases(stream: list[ev.Event]) -> None:
    idle, load0, load1, *_ = _phases(stream)
    snap = _fold_to(stream, idle.start_ns).serving(idle.start_ns)
    assert snap.status == "running" and snap.now == PlannedPhase("fp16", "idle", -1, 0.0)
    assert snap.current is None and snap.in_flight is None and snap.rates == ()
    assert snap.model == "synthetic:Qwen2.5-3B" and snap.power.synthetic and snap.phases_total == 6
    mid = load0.start_ns + (load0.end_ns - load0.start_ns) // 2
    snap = _fold_to(stream, mid).serving(mid)
    assert snap.now == PlannedPhase("fp16", "load", 0, 4.0)
    assert snap.phase_elapsed_s == pytest.approx((mid - idle.end_ns) / S)
    assert snap.phases_done == 1 and snap.power.phase == "load"
    after = load1.end_ns + 1
    snap = _fold_to(stream, after).serving(after)
    assert snap.now == PlannedPhase("nf4", "idle", -1, 0.0) and snap.power.phase == "idle"
    assert [r.offered_rps for r in snap.rates] == [4.0, 12.0] and snap.final == (True, False)


def test_in_flight_ok_and_failed_of_the_running_phase(stream: list[ev.Event]) -> None:
    _, load0, *_ = _phases(stream)
    reqs = [e for e in stream if isinstance(e, ev.Request) and e.precision == "fp16" and e.rate_index == 0]
    mid = reqs[len(reqs) // 2].token_ns[2]  # that request is in flight
    snap = _fold_to(stream, mid).serving(mid)
    ended = [r for r in reqs if r.t_ns <= mid]
    sent = [a for a in schedule(SERVE, 0, "fp16") if load0.start_ns + a.offset_s * S <= mid]
    assert 0 < len(ended) < len(sent)
    assert snap.in_flight == len(sent) - len(ended)
    assert (snap.ok, snap.failed) == (len(ended), 0)


def test_running_attribution_is_the_reports_on_the_phase_so_far(stream: list[ev.Event]) -> None:
    _, load0, *_ = _phases(stream)
    now = load0.end_ns - S // 2
    state = _fold_to(stream, now)
    snap = state.serving(now)
    assert snap.current is not None and snap.current_ns == now
    # The same function on the same events, the phase cut at now.
    so_far = [e for e in stream if e.t_ns <= now] + [
        ev.ServePhase(now, "load", 0, 4.0, load0.start_ns, now, "fp16")]
    expected = analyse(StreamRecording(sorted(so_far, key=lambda e: e.t_ns)))
    pd.testing.assert_frame_equal(rates_frame([snap.current]), rates_frame(expected))
    f = snap.current.fit
    assert f.ok, f.reason
    assert f.n_intervals < next(r for r in analyse(StreamRecording(stream)) if r.index == 0).fit.n_intervals
    assert f.decode_j_per_token.low < DECODE_J < f.decode_j_per_token.high
    idle, pre, dec = snap.shares
    assert idle + pre + dec == pytest.approx(1.0) and 0 < pre < dec < 1


def test_the_running_figures_are_recomputed_at_most_once_a_wall_second(stream: list[ev.Event]) -> None:
    _, load0, *_ = _phases(stream)
    wall = Wall()
    t1 = load0.start_ns + 4 * S
    state = _fold_to(stream, t1, ServeState(wall=wall))
    first = state.serving(t1)
    t2 = t1 + S // 2
    state.apply_all(e for e in stream if t1 < e.t_ns <= t2)
    wall.t = 0.9
    held = state.serving(t2)
    assert held.current is first.current and held.current_ns == t1
    assert held.ok > first.ok  # the counts are not throttled
    wall.t = 1.0
    again = state.serving(t2)
    assert again.current_ns == t2 and again.current is not first.current


def test_last_snapshot_carries_the_reports_figures(stream: list[ev.Event]) -> None:
    state = _fold_to(stream, stream[-1].t_ns)
    snap = state.serving(stream[-1].t_ns)
    assert snap.status == "completed" and snap.now is None and snap.current is None
    assert snap.final == (True,) * 4
    pd.testing.assert_frame_equal(rates_frame(list(snap.rates)), rates_frame(analyse(StreamRecording(stream))))
    for r in snap.rates:
        assert r.fit.ok, r.fit.reason
        for est, truth in ((r.fit.prefill_j_per_token, PREFILL_J), (r.fit.decode_j_per_token, DECODE_J)):
            assert est.low < truth < est.high
            assert est.value == pytest.approx(truth, rel=0.1)


def test_the_rates_table_has_its_columns_with_or_without_a_load_phase(stream: list[ev.Event]) -> None:
    from wattscope.serve.analysis import RATE_COLUMNS

    assert list(rates_frame(analyse(StreamRecording(stream))).columns) == RATE_COLUMNS
    assert list(rates_frame([]).columns) == RATE_COLUMNS
    assert format_serving([], "csv") == ",".join(RATE_COLUMNS) + "\n"


def test_a_poor_fit_has_no_shares(stream: list[ev.Event]) -> None:
    _, load0, *_ = _phases(stream)
    early = load0.start_ns + S  # ten counter intervals: too few
    snap = _fold_to(stream, early).serving(early)
    assert snap.current is not None and not snap.current.fit.ok
    assert "counter intervals" in snap.current.fit.reason
    assert all(math.isnan(x) for x in snap.shares)


def test_replay_seeks_back_and_forth_to_the_same_figures(stream: list[ev.Event]) -> None:
    from wattscope.replay import MemoryRecording

    clock = [0]
    replay = ServeReplay(MemoryRecording(stream), clock=lambda: clock[0])
    replay.to_end()
    end = replay.serving()
    replay.to_start()
    assert replay.serving().rates == ()
    replay.seek(12.0)
    mid = replay.serving()
    assert mid.now is not None and mid.now.phase == "load"
    replay.to_end()
    again = replay.serving()
    pd.testing.assert_frame_equal(rates_frame(list(again.rates)), rates_frame(list(end.rates)))
    pd.testing.assert_frame_equal(rates_frame(list(end.rates)), rates_frame(analyse(StreamRecording(stream))))


@pytest.mark.process
def test_replay_of_a_sim_recording_ends_with_the_reports_table(serve_recordings: dict[str, Path]) -> None:
    out = serve_recordings["a"]
    with load(out) as rec:
        report = analyse(rec)
        replay = ServeReplay(rec)
        replay.run_fast()
        snap = replay.serving()
    assert snap.status == "completed" and snap.final == (True,) * len(report) == (True,) * 4
    pd.testing.assert_frame_equal(rates_frame(list(snap.rates)), rates_frame(report))
    for a, b in zip(snap.rates, report):
        assert a.requests == b.requests
    # `replay --headless` prints the same table from the replayed state.
    p = subprocess.run([sys.executable, "-m", "wattscope", "replay", str(out), "--headless"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == format_serving(report, "text")
