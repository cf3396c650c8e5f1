"""Paired rounds: per-round ratios from windows, tail removal at idle power, the ratio
interval's coverage of a known true ratio, and a whole simulated group on the sim GPU."""

from __future__ import annotations

import math
import random

import pytest

from wattscope import metrics
from wattscope.events import ConfigFinished, ConfigStarted, Window

GROUP = "M/b1"


def rwin(cid: str, phase: str, k: int, t_s: float, joules: float, calls: int, work_s: float = 1.0,
         tail_s: float = 0.05, steps: int = 32, batch: int = 1) -> Window:
    start = int(t_s * 1e9)
    work_end = start + int(work_s * 1e9)
    end = work_end + int(tail_s * 1e9)
    tokens = batch * steps * calls if phase == "decode" else batch * 16 * calls
    return Window(end, cid, phase, "measure", k, start, end, 0.0, joules, calls,
                  steps if phase == "decode" else 0, tokens, work_end, round=k, group=GROUP)


def started(cid: str, precision: str) -> ConfigStarted:
    return ConfigStarted(0, cid, 0, 2, "synthetic:M", 1, precision, True, 3, "eager", GROUP)


def test_tail_is_removed_at_idle_power_and_the_raw_figure_kept() -> None:
    w = rwin("a", "prefill", 1, 0.0, joules=110.0, calls=10, work_s=1.0, tail_s=0.1)
    assert metrics.work_energy_j(w, 100.0) == pytest.approx(100.0)  # 110 J - 100 W x 0.1 s
    assert metrics.window_value(w, "prefill_energy_j", 100.0) == pytest.approx(10.0)
    assert metrics.window_value(w, "prefill_energy_j", None) == pytest.approx(11.0)
    res, _ = metrics.config_result(started("a", "fp16"), ConfigFinished(1, "a", True), [w], 100.0, "a")
    assert res.figures["prefill_energy_j"] == pytest.approx(10.0)
    assert res.figures["prefill_energy_raw_j"] == pytest.approx(11.0)
    assert res.figures["prefill_power_w"] == pytest.approx(100.0)  # work energy over work time
    assert res.figures["idle_power_w"] == 100.0


def test_ratios_pair_windows_of_the_same_round() -> None:
    ws = []
    # Round k: both rows slowed alike by a drift d_k; the quantised row costs 2x energy.
    for k, drift in enumerate([1.0, 1.5, 0.8, 1.2], start=1):
        ws.append(rwin("fp", "prefill", k, 10 * k, 100.0 * drift, 10))
        ws.append(rwin("q", "prefill", k, 10 * k + 2, 200.0 * drift, 10))
        ws.append(rwin("fp", "decode", k, 10 * k + 4, 50.0 * drift, 2, work_s=drift))
        ws.append(rwin("q", "decode", k, 10 * k + 6, 150.0 * drift, 2, work_s=2 * drift))
    est = metrics.paired_ratios(ws, "q", "fp", None)
    # Drift cancels within each round: the ratios are exact and their intervals closed.
    assert est["prefill_energy_ratio"].value == pytest.approx(2.0)
    assert est["decode_energy_ratio"].value == pytest.approx(3.0)
    assert est["decode_speed_ratio"].value == pytest.approx(0.5)
    assert all(e.n == 4 and e.half_width == pytest.approx(0.0, abs=1e-12) for e in est.values())
    # Unpaired medians would have carried the drift: the ratio of medians is not exact.
    res, warns = metrics.config_result(started("q", "int8"), ConfigFinished(1, "q", True), ws, None, "fp", 0.03)
    assert res.figures["prefill_energy_ratio"] == pytest.approx(2.0)
    assert res.figures["prefill_energy_ratio_low"] == pytest.approx(2.0)
    assert res.figures["rounds"] == 4
    assert not warns
    base, _ = metrics.config_result(started("fp", "fp16"), ConfigFinished(1, "fp", True), ws, None, "fp", 0.03)
    assert base.figures["prefill_energy_ratio"] == 1.0 and math.isnan(base.figures["prefill_energy_ratio_low"])


def test_a_ratio_missing_its_target_is_warned_with_its_interval() -> None:
    rng = random.Random(1)
    ws = []
    for k in range(1, 4):
        ws.append(rwin("fp", "prefill", k, 10 * k, 100.0, 10))
        ws.append(rwin("q", "prefill", k, 10 * k + 2, 200.0 * rng.uniform(0.7, 1.3), 10))
        ws.append(rwin("fp", "decode", k, 10 * k + 4, 50.0, 2))
        ws.append(rwin("q", "decode", k, 10 * k + 6, 100.0, 2))
    res, warns = metrics.config_result(started("q", "nf4"), ConfigFinished(1, "q", True), ws, None, "fp", 0.03)
    text = " ".join(w.message for w in warns)
    assert "prefill energy ratio: 95% interval +-" in text and "after 3 rounds (target +-3%)" in text
    assert "decode energy ratio" not in text
    assert res.figures["prefill_energy_ratio_low"] < res.figures["prefill_energy_ratio"] < res.figures["prefill_energy_ratio_high"]


def test_interval_covers_the_true_ratio_over_many_seeds() -> None:
    """Windows with a shared slow drift, host jitter per window and a hot first round:
    the paired 95% interval holds the true ratio (1.8) in close to 95% of 1000 runs."""
    true, trials, hits = 1.8, 1000, 0
    for seed in range(trials):
        rng = random.Random(seed)
        ws = []
        phase0 = rng.uniform(0, 6.28)
        for k in range(1, 7):
            drift = 1.0 + 0.2 * math.sin(phase0 + 0.3 * k)
            hot = 1.3 if k == 1 else 1.0  # hits both rows of the round alike
            for cid, scale in (("fp", 1.0), ("q", true)):
                j = 100.0 * scale * drift * hot * math.exp(rng.gauss(0, 0.04))
                ws.append(rwin(cid, "prefill", k, 10 * k + (2 if cid == "q" else 0), j, 10))
        e = metrics.paired_ratios(ws, "q", "fp", None)["prefill_energy_ratio"]
        hits += e.low <= true <= e.high
    assert 0.93 <= hits / trials <= 0.97


def test_idle_power_prefers_the_groups_own_baseline() -> None:
    cold = Window(1, None, "idle", "idle", 1, 0, int(1e9), 0.0, 70.0, 0, 0, 0)
    mine = Window(2, None, "idle", "idle", 1, 0, int(1e9), 0.0, 115.0, 0, 0, 0, group=GROUP)
    other = Window(3, None, "idle", "idle", 1, 0, int(1e9), 0.0, 120.0, 0, 0, 0, group="N/b8")
    assert metrics.idle_power_w([cold, mine, other], GROUP) == pytest.approx(115.0)
    assert metrics.idle_power_w([cold], GROUP) == pytest.approx(70.0)  # older recordings


# --------------------------------------------------------------- reload fallback


class OutOfMemoryError(RuntimeError):
    """Named as torch's is: the protocol tells an out-of-memory error by its type's name."""


def _reload_run(monkeypatch, fits: int, fails_alone: str = ""):
    """A three-precision group on the fake clock whose build raises OutOfMemoryError when
    ``fits`` workloads are already open (and always for ``fails_alone``). Returns the
    events, every workload built, and the most that were ever open at once after the
    first failed load."""
    from dataclasses import replace

    from test_protocol import SWEEP, ClockedStop, Counter, FakeClock, FakeWorkload, _sweep

    from wattscope.bench import protocol
    from wattscope.telemetry import counter as counter_mod

    clock = FakeClock()
    monkeypatch.setattr(protocol, "now_ns", clock)
    monkeypatch.setattr(counter_mod, "now_ns", clock)
    sw = _sweep(SWEEP.replace('"fp16", "bf16"', '"fp16", "int8", "nf4"'), min_rounds=4, max_rounds=4)
    sw = replace(sw, protocol=replace(sw.protocol, seed=5))
    counter = Counter()
    built: list[tuple[str, FakeWorkload]] = []
    state = {"after_oom": False, "most_open": 0}

    def open_now() -> int:
        return sum(not w.closed for _, w in built)

    def build(rc, info):
        if open_now() >= fits or rc.precision == fails_alone:
            state["after_oom"] = True
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        # Each precision draws its own energy per call, so the ratios are known: 2x, 1.5x.
        scale = {"fp16": 1.0, "int8": 2.0, "nf4": 1.5}[rc.precision]
        w = FakeWorkload(counter, clock=clock, prefill_j=lambda n: 2.0 * scale, decode_j=lambda n: 3.0 * scale)
        counter.log = w.log
        built.append((rc.precision, w))
        if state["after_oom"]:
            state["most_open"] = max(state["most_open"], open_now())
        info["built"] = rc.config_id
        return w

    events: list = []
    assert protocol.run_protocol(sw, build, counter, events.append, ClockedStop(clock))
    return sw, events, built, state["most_open"]


def test_precisions_that_do_not_fit_together_are_reloaded_per_round(monkeypatch, tmp_path) -> None:
    from synthetic_run import record
    from test_protocol import windows

    from wattscope import analysis
    from wattscope.events import RunEnded, RunStarted

    from wattscope.events import ConfigResult, PhaseStarted, RunWarning
    from wattscope.render import line_of, table_note
    from wattscope.state import RunState

    sw, events, built, most_open = _reload_run(monkeypatch, fits=2)
    ids = {rc.precision: rc.config_id for rc in sw.configs}
    # fp16 and int8 loaded, nf4 ran out of memory: every row then loaded alone.
    warn = [e for e in events if isinstance(e, RunWarning) and metrics.RELOADED in e.message]
    assert len(warn) == 1 and "nf4 ran out of memory with fp16, int8 loaded" in warn[0].message
    assert most_open == 1
    assert all(w.closed for _, w in built)
    fin = {e.config_id: e for e in events if isinstance(e, ConfigFinished)}
    assert all(f.ok and f.info["loading"] == metrics.RELOADED for f in fin.values())
    measured = windows(events, role="measure")
    assert sorted({w.round for w in measured}) == [1, 2, 3, 4]
    orders = []
    for k in range(1, 5):
        in_round = [w for w in measured if w.round == k]
        # Both phases of every precision, and a precision's two windows back to back
        # (loaded, measured, unloaded).
        assert sorted((w.config_id, w.phase) for w in in_round) == sorted(
            (cid, ph) for cid in ids.values() for ph in ("prefill", "decode"))
        cids = [w.config_id for w in in_round]
        assert all(cids[i] == cids[i + 1] for i in range(0, 6, 2))
        orders.append(tuple(cids[::2]))
    assert len(set(orders)) > 1  # shuffled per round
    # Each load warmed the precision up again before its windows: every workload built
    # in reload mode made its warm-up calls before any window read the counter.
    reloads = [w for p, w in built[2:]]
    assert len(reloads) >= 3 * (4 + 2)  # measured and warm-up rounds, three loads each
    for w in reloads:
        assert w.log[:2] == ["prefill", "prefill"] and w.log.count("prepare_decode") == 1
    loads = [e for e in events if isinstance(e, PhaseStarted) and e.phase == "load"]
    assert len(loads) == 3 + len(reloads)  # the first attempt of each, then every reload
    # The ratios still pair the rounds; the result, the recording and the table say
    # the rows were reloaded.
    started = [e for e in events if isinstance(e, ConfigStarted)]
    state = RunState()
    state.apply_all(events)
    results = []
    for f in fin.values():
        res, _ = metrics.group_result(next(s for s in started if s.config_id == f.config_id), f, started,
                                      windows(events), 0.03)
        assert res.reloaded and res.to_dict()["reloaded"] is True
        assert ConfigResult.from_dict(res.to_dict()) == res
        state.apply(res)
        results.append(res)
    snap = state.snapshot(clock_end(events))
    path = record([RunStarted(0, {}), *events, *results, RunEnded(clock_end(events), "completed")],
                  tmp_path / "reload.wattscope")
    notes = analysis.analyze(path).notes
    assert [n["loading"] for n in notes.values() if "loading" in n] == [f"{metrics.RELOADED}: synthetic:Qwen2-1.5B b2"]
    rows = {r.precision: r for r in snap.results}
    assert rows["int8"].ratios["prefill_energy_ratio"].value == pytest.approx(2.0)
    assert rows["nf4"].ratios["decode_energy_ratio"].value == pytest.approx(1.5)
    assert all(r.reloaded for r in rows.values())
    assert line_of(rows["nf4"]).note == metrics.RELOADED
    assert f"Qwen2-1.5B b2: {metrics.RELOADED}" in table_note(snap)


def clock_end(events: list) -> int:
    return max(e.t_ns for e in events)


def test_a_precision_that_does_not_fit_even_alone_fails_and_the_rest_go_on(monkeypatch) -> None:
    from test_protocol import windows

    sw, events, built, most_open = _reload_run(monkeypatch, fits=2, fails_alone="nf4")
    fin = {e.config_id: e for e in events if isinstance(e, ConfigFinished)}
    ids = {rc.precision: rc.config_id for rc in sw.configs}
    assert not fin[ids["nf4"]].ok and fin[ids["nf4"]].reason.startswith("CUDA out of memory")
    assert fin[ids["fp16"]].ok and fin[ids["int8"]].ok and most_open == 1
    assert not windows(events, ids["nf4"], role="measure")
    assert sorted({w.round for w in windows(events, ids["int8"], role="measure")}) == [1, 2, 3, 4]


def test_out_of_memory_with_nothing_else_loaded_is_a_failed_row_not_a_reload(monkeypatch) -> None:
    from wattscope.events import RunWarning

    sw, events, built, _ = _reload_run(monkeypatch, fits=99, fails_alone="fp16")
    fin = {e.config_id: e for e in events if isinstance(e, ConfigFinished)}
    assert not fin[sw.configs[0].config_id].ok
    assert all("loading" not in f.info for f in fin.values())
    assert not [e for e in events if isinstance(e, RunWarning) and metrics.RELOADED in e.message]
    assert [p for p, _ in built] == ["int8", "nf4"]  # each loaded once, together


def test_out_of_memory_is_told_by_type_name() -> None:
    from wattscope.bench.protocol import out_of_memory

    assert out_of_memory(OutOfMemoryError("x")) and out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("CUDA out of memory"))  # a message alone does not switch modes


# ------------------------------------------------------ stopping rule and its coverage


def _coverage_script():
    import benchmark_script

    return benchmark_script.load("stopping_coverage")


def test_rounds_enough_waits_for_min_rounds_then_for_every_interval() -> None:
    from wattscope.bench.protocol import rounds_enough, widest_interval
    from wattscope.config import Protocol
    from wattscope.stats import paired_ratio

    p = Protocol(min_rounds=3, max_rounds=6, ci_target=0.03)
    exact, noisy = [2.0] * 5, [2.0, 2.4, 1.7, 2.2, 1.9]
    assert not rounds_enough([exact[:2]], 2, p)  # before min_rounds, however tight
    assert rounds_enough([exact[:3]], 3, p)
    assert widest_interval([exact, noisy]) == pytest.approx(paired_ratio(noisy).half_width)
    assert not rounds_enough([exact, noisy], 5, p)  # one ratio still wide: go on
    assert rounds_enough([exact + [2.0], noisy + [2.0]], 6, p)  # max_rounds ends it
    assert rounds_enough([], 3, p)  # nothing to compare: min_rounds are enough
    assert widest_interval([[2.0]]) == math.inf  # no interval yet


def test_stopping_at_the_target_under_covers_with_three_rounds_and_eight_restore_it() -> None:
    """The protocol's own stopping rule on simulated rounds (2000 seeds each): with
    min_rounds 3 and a per-round CV of 4% the stopped 95% intervals hold the true ratio
    clearly less often than 95%; with the default min_rounds (8) close to 95% at every CV."""
    from dataclasses import replace

    from wattscope.config import Protocol

    sim = _coverage_script().simulate
    old = sim(0.04, replace(Protocol(), min_rounds=3), 2000)
    assert old["coverage_ci"][1] < 0.93
    assert Protocol().min_rounds == 8
    for cv in (0.003, 0.02, 0.04, 0.08):
        r = sim(cv, Protocol(), 2000)
        low, high = r["coverage_ci"]
        assert r["coverage"] >= 0.93 and high > 0.94, (cv, r)
        assert low < r["coverage"] < high
    assert sim(0.003, Protocol(), 200)["mean_rounds"] == 8  # a quiet ratio stops at min_rounds
