"""A replay shows what the live run showed: a simulated live session (real sampler and
runner processes) snapshots its RunState at instants during the run, then its recording
is replayed and snapshotted at the same instants, and the two must agree.

Live, events arrive on a queue from several processes, so at a given instant an event
stamped just before it may still be in flight. An instant is compared only where the
live state had been given exactly the events the recording holds up to that instant
(checked from the arrival log, not assumed); the test requires most instants to
qualify. Instants are taken on the session's own thread right after a sample batch
arrives, at that batch's last row, so the samples up to the instant are all there too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pytest

import wattscope
from wattscope import config
from wattscope import events as ev
from wattscope.recording import REPLAY_BATCH_NS
from wattscope.replay import ReplayController
from wattscope.session import Session
from wattscope.state import RunState, Snapshot

pytestmark = pytest.mark.process

WINDOW_S = 3.0

SWEEP = """
name = "live-vs-replay"
[protocol]
min_rounds = 2
max_rounds = 2
max_warmup_rounds = 2
steady_tolerance = 0.000001  # the simulated card is never this steady: runner warnings
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [1, 8]
precisions = ["fp16", "int8", "nf4"]
"""


@dataclass(frozen=True)
class Instant:
    t_ns: int
    snapshot: Snapshot
    events_seen: int  # non-sample events applied before the snapshot
    rows_seen: int  # sample rows applied before the snapshot


class RecordingState(RunState):
    """The session's RunState, which also logs what it was given, in arrival order, and
    snapshots itself after every sample batch (about every 100 ms)."""

    def __init__(self, window_s: float) -> None:
        super().__init__(window_s=window_s)
        self.arrived: list[tuple[str, int]] = []
        self.rows = 0
        self.instants: list[Instant] = []

    def apply(self, event: ev.Event) -> None:
        super().apply(event)
        if not isinstance(event, ev.Samples):
            self.arrived.append((event.kind, event.t_ns))
            return
        self.rows += len(event.rows)
        if event.rows:
            t = max(r[0] for r in event.rows)
            self.instants.append(Instant(t, self.snapshot(t), len(self.arrived), self.rows))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> tuple[RecordingState, Path]:
    tmp = tmp_path_factory.mktemp("live")
    state = RecordingState(WINDOW_S)
    session = Session(config.parse(SWEEP, str(tmp / "sweep.toml")), tmp / "run.wattscope", sim=True, state=state)
    session.start()
    assert session.wait(180), "the simulated session did not finish"
    assert session.status == "completed", session.error
    return state, tmp / "run.wattscope"


def _comparable(state: RecordingState, rec: wattscope.recording.Recording) -> tuple[list[Instant], list[str]]:
    """The instants at which the live state held exactly the recording's events up to
    that instant and all of its sample rows; and why the others are not. Events from
    different processes may arrive in another order than their stamps; only the
    warnings' order shows on screen (they are numbered), so only theirs must match."""
    recorded = [(e.kind, e.t_ns) for e in rec.events(samples=False)]
    sample_t = np.sort(rec.samples["t_ns"].to_numpy())
    out, excluded = [], []
    for i in state.instants:
        upto = [k for k in recorded if k[1] <= i.t_ns]
        rows = int(np.searchsorted(sample_t, i.t_ns, side="right"))
        seen = state.arrived[: i.events_seen]
        same_warnings = [k for k in seen if k[0] == "warning"] == [k for k in upto if k[0] == "warning"]
        if sorted(seen) == sorted(upto) and same_warnings and i.rows_seen == rows:
            out.append(i)
            continue
        late = [f"{k} {(t - i.t_ns) / 1e6:+.1f} ms" for k, t in upto if (k, t) not in seen]
        early = [f"{k} {(t - i.t_ns) / 1e6:+.1f} ms" for k, t in seen if (k, t) not in upto]
        excluded.append(f"in flight {late}, ahead {early}, warnings in order {same_warnings}, "
                        f"rows short {rows - i.rows_seen}")
    return out, excluded


def _same_display(live: Snapshot, replay: Snapshot, where: str) -> None:
    """Every field a display draws, except the power graph (compared separately) and
    the raw metadata (whose tuples come back from JSON as lists; the fields derived from
    it are compared)."""
    for f in fields(Snapshot):
        if f.name == "results":
            # NaN (a figure with no value, e.g. an FP16 row's interval) never equals itself.
            assert _rows(replay.results) == _rows(live.results), f"results differ {where}"
        elif f.name not in ("gpus", "meta"):
            assert getattr(replay, f.name) == getattr(live, f.name), f"{f.name} differs {where}"
    assert len(replay.gpus) == len(live.gpus) == 1


def _rows(rows: tuple) -> list:
    return [replace(r, figures={k: None if v != v else v for k, v in r.figures.items()}) for r in rows]


def _same_graph(live: Snapshot, replay: Snapshot, where: str) -> None:
    a, b = live.gpus[0], replay.gpus[0]
    assert (b.index, b.name, b.tdp_w) == (a.index, a.name, a.tdp_w)
    assert len(a.t_s) > 0, where
    for name in ("t_s", "power_w", "phase"):
        assert np.array_equal(getattr(b, name), getattr(a, name)), f"graph {name} differs {where}"
    assert (b.latest_w, b.pct_tdp) == (a.latest_w, a.pct_tdp), where
    # Sums of the same samples in another grouping: equal up to rounding.
    if a.phase_avg_w is None:
        assert b.phase_avg_w is None, where
    else:
        assert b.phase_avg_w == pytest.approx(a.phase_avg_w, rel=1e-12), where


def test_the_live_run_was_rich_enough_to_compare(live) -> None:
    state, path = live
    rec = wattscope.load(path)
    assert len(rec.results) == 6 and rec.results["ok"].all()
    assert len(rec.warnings) > 0  # the runner's "not steady" warnings
    comparable, excluded = _comparable(state, rec)
    # Events in flight at an instant are rare (a queue hop, against 100 ms batches).
    assert len(state.instants) >= 20
    assert len(comparable) >= 0.8 * len(state.instants), "\n".join(excluded)
    seen = {i.snapshot.phase for i in comparable}
    assert {"prefill", "decode"} <= seen
    assert len({len(i.snapshot.results) for i in comparable}) >= 3  # before, during and after rows came


def test_a_recording_folded_into_a_fresh_state_equals_the_live_snapshots(live) -> None:
    state, path = live
    rec = wattscope.load(path)
    t0 = rec.time_range()[0]
    for i in _comparable(state, rec)[0]:
        replay = RunState(window_s=WINDOW_S)
        replay.apply_all(rec.events(end_ns=i.t_ns))
        got = replay.snapshot(i.t_ns)
        where = f"at +{(i.t_ns - t0) / 1e9:.3f} s"
        _same_display(i.snapshot, got, where)
        _same_graph(i.snapshot, got, where)


def test_the_replay_controller_shows_the_live_snapshots(live) -> None:
    """Played forward to each instant, then seeking back to them: the same display; the
    graph is the live one up to the last replayed sample batch (batches of at most
    REPLAY_BATCH_NS are applied whole, once their last row is due)."""
    state, path = live
    rec = wattscope.load(path)
    t0 = rec.time_range()[0]
    comparable, _ = _comparable(state, rec)
    rc = ReplayController(rec, clock=lambda: 0, window_s=WINDOW_S)
    rc.pause()
    for label, order in (("forward", comparable), ("seeking back", comparable[::-1])):
        for i in order:
            rc.seek_to(i.t_ns)
            got = rc.snapshot()
            where = f"{label} at +{(i.t_ns - t0) / 1e9:.3f} s"
            assert got.now_ns == i.t_ns, where
            _same_display(i.snapshot, got, where)
            a, b = i.snapshot.gpus[0], got.gpus[0]
            n = len(b.t_s)
            assert 0 < n <= len(a.t_s), where
            assert np.array_equal(b.t_s, a.t_s[:n]) and np.array_equal(b.power_w, a.power_w[:n]), where
            assert np.array_equal(b.phase, a.phase[:n]), where
            assert a.t_s[n:].size == 0 or a.t_s[n] > -REPLAY_BATCH_NS / 1e9, where


def test_the_finished_run_replays_to_the_same_final_screen(live) -> None:
    state, path = live
    rec = wattscope.load(path)
    end = rec.time_range()[1]
    final = state.snapshot(end)
    assert final.status == "completed" and final.configs_done == 6
    replay = RunState(window_s=WINDOW_S)
    replay.apply_all(rec.events())
    got = replay.snapshot(end)
    _same_display(final, got, "at the end")
    _same_graph(final, got, "at the end")
    assert all(math.isfinite(r.figures["prefill_energy_j"]) for r in got.results)
