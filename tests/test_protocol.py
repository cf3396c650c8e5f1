"""The measurement protocol with a fake workload and a fake energy counter (no torch).

The fake counter advances by a known number of joules per call, so every window's
energy, calls, tokens and per-call figure can be checked exactly."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from wattscope import config
from wattscope.bench import protocol
from wattscope.telemetry import counter
from wattscope.bench.protocol import agree, calls_for, run_protocol
from wattscope.bench.workload import WorkloadError, describe_exception, prompt_digest, prompt_ids, short_reason
from wattscope.events import ConfigFinished, ConfigStarted, PhaseStarted, RunWarning, Window

SWEEP = """
name = "t"
[protocol]
prompt_tokens = 16
decode_steps = 4
warmup_calls = 2
min_window_s = 0.02
min_calls = 5
max_warmup_rounds = 4
steady_tolerance = 0.5
min_rounds = 3
ci_target = 0.5
max_row_s = 60
cooldown_s = 0
idle_s = 0.01
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [2]
precisions = ["fp16", "bf16"]
"""


class Counter:
    """An energy counter that only moves when the fake workload says so."""

    counter_steps = False  # exact at every read: window edges need not wait for an update

    def __init__(self) -> None:
        self.joules = 0.0
        self.reads = 0
        self.log: list[str] = []  # shared with the current workload's log

    def energy_j(self) -> float:
        self.reads += 1
        self.log.append("read")
        return self.joules


class FakeClock:
    """The protocol's clock (ns), moved only by the fake calls and the idle wait, so the
    window sizes follow from ``call_s`` alone, not from how busy the machine is."""

    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += round(seconds * 1e9)


class ClockedStop:
    """A stop flag that is never set and whose waits pass on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.advance(timeout or 0.0)
        return False


class FakeWorkload:
    """Each prefill adds prefill_j(n) joules and each decode run decode_j(n), where n
    counts that kind of call so far; a call busy-waits ``call_s`` seconds, or moves a
    ``clock`` on by ``call_s``."""

    def __init__(self, counter: Counter, batch: int = 2, prompt_len: int = 16, call_s: float = 0.001,
                 prefill_j=lambda n: 2.0, decode_j=lambda n: 3.0, clock: FakeClock | None = None) -> None:
        self.counter, self.batch, self.prompt_len, self.call_s = counter, batch, prompt_len, call_s
        self.prefill_j, self.decode_j = prefill_j, decode_j
        self.clock = clock
        self.log: list[str] = []
        self.decode_steps: list[int] = []
        self.n_prefill = self.n_decode = 0
        self.closed = False

    def _busy(self) -> None:
        if self.clock is not None:
            self.clock.advance(self.call_s)
            return
        from wattscope.events import now_ns

        end = now_ns() + int(self.call_s * 1e9)
        while now_ns() < end:
            pass

    def prefill(self) -> None:
        self._busy()
        self.counter.joules += self.prefill_j(self.n_prefill)
        self.n_prefill += 1
        self.log.append("prefill")

    def prepare_decode(self) -> None:
        self.log.append("prepare_decode")

    def decode_run(self, steps: int) -> None:
        self._busy()
        self.counter.joules += self.decode_j(self.n_decode)
        self.n_decode += 1
        self.decode_steps.append(steps)
        self.log.append("decode")

    def synchronize(self) -> None:
        self.log.append("sync")

    def run_info(self) -> dict:
        return {"ran": True}

    def close(self) -> None:
        self.closed = True


def _sweep(text: str = SWEEP, **protocol_changes) -> config.Sweep:
    sw = config.parse(text, "t.toml")
    return replace(sw, protocol=replace(sw.protocol, **protocol_changes))


def _run(sw, make=None, stop=None, start_index=0, release=lambda: None):
    counter = Counter()
    events: list = []
    workloads: list[FakeWorkload] = []

    def build(rc, info):
        w = (make or FakeWorkload)(counter)
        counter.log = w.log
        workloads.append(w)
        info["built"] = rc.config_id
        return w

    done = run_protocol(sw, build, counter, events.append, stop or threading.Event(), start_index, release)
    return done, events, workloads, counter


def windows(events, config_id=None, phase=None, role=None) -> list[Window]:
    return [
        e for e in events
        if isinstance(e, Window)
        and (config_id is None or e.config_id == config_id)
        and (phase is None or e.phase == phase)
        and (role is None or e.role == role)
    ]


def test_rounds_rotate_every_precision_and_phase_with_exact_energy(monkeypatch):
    # On the fake clock every call takes exactly call_s (1 ms) whatever the machine is
    # doing, so window sizes are exact and, the speed ratios being exact too, the
    # intervals close at min_rounds.
    clock = FakeClock()
    monkeypatch.setattr(protocol, "now_ns", clock)
    monkeypatch.setattr(counter, "now_ns", clock)  # the window edges' clock
    sw = _sweep()
    done, events, workloads, _ = _run(sw, lambda c: FakeWorkload(c, clock=clock), ClockedStop(clock))
    assert done
    group = sw.configs[0].group
    idle = windows(events, phase="idle")
    # One idle baseline per group, taken with its models loaded (after the builds).
    assert len(idle) == 1 and idle[0].role == "idle" and idle[0].config_id is None and idle[0].group == group
    assert idle[0].duration_s >= 0.01 and idle[0].calls == 0
    first_idle = events.index(idle[0])
    assert all(events.index(e) < first_idle for e in events if isinstance(e, PhaseStarted) and e.phase == "load")
    measured = windows(events, role="measure")
    rounds = sorted({w.round for w in measured})
    assert rounds == [1, 2, 3]
    for k in rounds:
        in_round = [w for w in measured if w.round == k]
        # Every precision and phase exactly once per round.
        assert sorted((w.config_id, w.phase) for w in in_round) == sorted(
            (rc.config_id, ph) for rc in sw.configs for ph in ("prefill", "decode"))
        assert all(w.group == group for w in in_round)
    for rc in sw.configs:
        for phase, per_call, tokens_per_call, steps in (("prefill", 2.0, 2 * 16, 0), ("decode", 3.0, 2 * 4, 4)):
            for w in windows(events, rc.config_id, phase):
                assert w.energy_j == pytest.approx(per_call * w.calls)
                assert w.tokens == tokens_per_call * w.calls
                assert w.steps == steps
                assert w.t_ns == w.end_ns > w.start_ns
        assert all(w.calls >= sw.protocol.min_calls for w in windows(events, rc.config_id, "prefill"))
        for phase in ("prefill", "decode"):
            # Every window holds the calls that make 1 ms calls last min_window_s: none is topped up.
            min_calls = sw.protocol.min_calls if phase == "prefill" else 1
            meas = windows(events, rc.config_id, phase, "measure")
            assert [w.calls for w in meas] == [calls_for(0.001, sw.protocol, min_calls)] * 3
            for w in meas:
                assert w.work_s == pytest.approx(w.calls * 0.001)
                assert w.work_s >= sw.protocol.min_window_s
    for w in workloads:
        assert set(w.decode_steps) == {4}
        assert w.log.count("prepare_decode") == 1
        assert w.closed


def test_round_orders_are_shuffled_and_seeded():
    sw = _sweep(min_rounds=6, max_rounds=6, min_window_s=0.002, max_warmup_rounds=2)

    def orders(events):
        out = []
        for k in range(1, 7):
            out.append(tuple((w.config_id, w.phase) for w in windows(events, role="measure") if w.round == k))
        return out

    a = orders(_run(sw)[1])
    assert len(set(a)) > 1  # not the same order every round
    assert a == orders(_run(sw)[1])  # the seed fixes the shuffles
    assert a != orders(_run(replace(sw, protocol=replace(sw.protocol, seed=1)))[1])


def test_event_order_of_a_group():
    sw = _sweep(min_rounds=2, max_rounds=2)
    _, events, _, _ = _run(sw)
    kinds = [e.kind for e in events if not isinstance(e, (Window, PhaseStarted))]
    assert kinds[:2] == ["config_started", "config_started"]
    assert kinds[-2:] == ["config_finished", "config_finished"]
    started = [e for e in events if isinstance(e, ConfigStarted)]
    assert [(e.index, e.total, e.precision, e.batch, e.repeats, e.group) for e in started] == [
        (0, 2, "fp16", 2, 2, "Qwen2-1.5B/b2"), (1, 2, "bf16", 2, 2, "Qwen2-1.5B/b2")
    ]
    finished = [e for e in events if isinstance(e, ConfigFinished)]
    assert [f.config_id for f in finished][0] == sw.configs[0].config_id  # the FP16 baseline first
    assert all(f.ok and f.reason == "" for f in finished)
    assert finished[0].info["built"] == sw.configs[0].config_id and finished[0].info["ran"] is True
    phases = [(e.phase, e.repeat) for e in events if isinstance(e, PhaseStarted)]
    assert phases[:3] == [("load", None), ("load", None), ("idle", None)]
    assert phases[3] == ("warmup", None)
    assert phases[-1] == ("cooldown", None)
    # Each measured window is announced with its row, phase and round.
    for e in events:
        if isinstance(e, Window) and e.role == "measure":
            announce = events[events.index(e) - 1]
            assert isinstance(announce, PhaseStarted)
            assert (announce.config_id, announce.phase, announce.repeat) == (e.config_id, e.phase, e.round)


def test_warmup_rounds_run_until_two_agree_in_power():
    # A cold card: energy per call starts 2x high and fades with the calls made, while
    # the time per call stays the same, so a round's power falls until it settles.
    sw = _sweep(steady_tolerance=0.1, max_warmup_rounds=8)
    make = lambda c: FakeWorkload(c, call_s=0.002, prefill_j=lambda n: 2.0 * (1 + 1.0 * 0.8 ** n),
                                  decode_j=lambda n: 3.0 * (1 + 1.0 * 0.8 ** n))
    _, events, _, _ = _run(sw, make)
    warm = windows(events, role="warmup")
    rounds = sorted({w.round for w in warm})
    assert 2 <= len(rounds) <= 8
    power = []
    for k in rounds:
        ws = [w for w in warm if w.round == k]
        power.append(sum(w.energy_j for w in ws) / sum(w.duration_s for w in ws))
    assert power[0] > power[-1]
    if len(rounds) < 8:
        assert agree(power[-1], power[-2], 0.1)
        assert not [e for e in events if isinstance(e, RunWarning)]


def test_never_steady_warns_and_still_measures():
    sw = _sweep(max_warmup_rounds=3, steady_tolerance=0.01)
    # Energy per call doubles every other call: no two rounds agree within 1%.
    make = lambda c: FakeWorkload(c, decode_j=lambda n: 3.0 * 3.0 ** (n // 4), call_s=0.002)
    _, events, _, _ = _run(sw, make)
    warnings = [e for e in events if isinstance(e, RunWarning) and "not steady" in e.message]
    assert len(warnings) == 1 and sw.configs[0].group in warnings[0].message
    assert sorted({w.round for w in windows(events, role="warmup")}) == [1, 2, 3]
    assert windows(events, role="measure")


def test_rounds_go_on_until_the_interval_is_tight_or_the_budget_is_spent():
    import random

    rng = random.Random(3)
    noise = [rng.uniform(0.7, 1.3) for _ in range(10000)]
    # bf16's prefill energy is noisy round to round: its ratio's interval stays wide.
    def make(c):
        w = FakeWorkload(c)
        if len(made) % 2:
            w.prefill_j = lambda n: 2.0 * noise[n]
        made.append(w)
        return w

    made: list = []
    sw = _sweep(min_rounds=3, max_rounds=7, ci_target=0.01, max_row_s=600)
    _, events, _, _ = _run(sw, make)
    assert max(w.round for w in windows(events, role="measure")) == 7  # max_rounds ended it
    made.clear()
    sw = _sweep(min_rounds=3, max_rounds=1000, ci_target=0.01, max_row_s=0.5)
    t0 = time.monotonic()
    _, events, _, _ = _run(sw, make)
    n = max(w.round for w in windows(events, role="measure"))
    assert 3 <= n < 1000  # the budget ended it
    assert time.monotonic() - t0 < 5


def test_a_precision_that_fails_to_build_becomes_a_failed_row_and_the_group_goes_on():
    sw = _sweep()
    counter = Counter()
    events: list = []
    released: list[str] = []

    def build(rc, info):
        info["bitsandbytes"] = {"load_in_8bit": True}
        if rc.precision == "bf16":
            raise WorkloadError("bf16 is not supported by this card")
        return FakeWorkload(counter)

    assert run_protocol(sw, build, counter, events.append, threading.Event(), 0, lambda: released.append("x"))
    fin = {e.config_id: e for e in events if isinstance(e, ConfigFinished)}
    bf16, fp16 = sw.configs[1].config_id, sw.configs[0].config_id
    assert fin[fp16].ok and not fin[bf16].ok
    assert fin[bf16].reason == "bf16 is not supported by this card"
    assert fin[bf16].info["bitsandbytes"] == {"load_in_8bit": True}  # what was learned before failing
    assert not windows(events, bf16)
    assert windows(events, fp16, role="measure")
    assert released == ["x"]  # memory freed after every group


def test_a_failure_mid_round_closes_that_row_only():
    class OOM(RuntimeError):
        pass

    made: list = []

    def make(c):
        class Flaky(FakeWorkload):
            def decode_run(self, steps: int) -> None:
                if self.n_decode >= 4:
                    raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB")
                super().decode_run(steps)

        w = (Flaky if made else FakeWorkload)(c)
        made.append(w)
        return w

    sw = _sweep()
    _, events, workloads, _ = _run(sw, make)
    fin = {e.config_id: e for e in events if isinstance(e, ConfigFinished)}
    fp16, bf16 = (rc.config_id for rc in sw.configs)
    assert fin[fp16].ok and not fin[bf16].ok
    assert fin[bf16].reason.startswith("CUDA out of memory") and "OOM" in fin[bf16].info["error"]
    assert all(w.closed for w in made)
    assert max(w.round for w in windows(events, fp16, role="measure")) == sw.protocol.min_rounds


def test_stop_flag_ends_the_sweep_between_calls():
    sw = _sweep()
    stop = threading.Event()

    calls: list[int] = []

    class Stopping(FakeWorkload):
        def decode_run(self, steps: int) -> None:
            super().decode_run(steps)
            calls.append(steps)
            if len(calls) == 12:
                stop.set()

    done, events, workloads, _ = _run(sw, Stopping, stop=stop)
    assert not done
    assert len(calls) == 12  # no call after the flag was seen
    fin = [e for e in events if isinstance(e, ConfigFinished)]
    assert len(fin) == 2 and not any(f.ok for f in fin) and all("stopped" in f.reason for f in fin)
    assert all(w.closed for w in workloads)


def test_start_index_skips_the_groups_before_it():
    text = SWEEP.replace("batches = [2]", "batches = [2, 4]")
    sw = _sweep(text)
    _, events, _, _ = _run(sw, start_index=2)
    assert [e.index for e in events if isinstance(e, ConfigStarted)] == [2, 3]
    assert {w.group for w in windows(events, phase="idle")} == {"Qwen2-1.5B/b4"}


def test_calls_for_sizes_windows():
    p = config.Protocol(min_window_s=2.0, min_calls=5)
    assert calls_for(0.030, p, 5) == 67  # 67 * 30 ms >= 2 s
    assert calls_for(1.0, p, 5) == 5  # min_calls wins
    assert calls_for(1.0, p, 1) == 2
    assert calls_for(3.0, p, 1) == 1


def test_agree():
    assert agree(100.0, 102.9, 0.03)
    assert not agree(100.0, 103.2, 0.03)
    assert agree(0.0, 0.0, 0.03)


def test_window_edges_read_the_counter_after_synchronize():
    import time as _t

    from wattscope.bench.protocol import PhaseSpec, _window

    log: list[str] = []
    counter = Counter()
    counter.log = log

    class W:
        def synchronize(self) -> None:
            log.append("sync")

    def call() -> None:
        log.append("call")
        _t.sleep(0.001)

    _window(PhaseSpec("prefill", call, 1, 0, 16), 5, "measure", 1, "c", W(), counter, threading.Event(), 0.004)
    reads = [i for i, x in enumerate(log) if x == "read"]
    assert len(reads) == 2
    assert log[reads[0] - 1] == "sync" and log[reads[1] - 1] == "sync"
    inside = log[reads[0] + 1 : reads[1] - 1]
    assert inside and "read" not in inside and inside[:5] == ["call"] * 5  # no host sync inside the sized batch


def test_garbage_collection_stays_out_of_windows():
    import gc

    from wattscope.bench.protocol import PhaseSpec, _window

    seen: list[bool] = []

    class W:
        def synchronize(self) -> None:
            pass

    _window(PhaseSpec("prefill", lambda: seen.append(gc.isenabled()), 1, 0, 1), 3, "measure", 1, "c", W(),
            Counter(), threading.Event(), 0.0)
    assert seen and not any(seen)
    assert gc.isenabled()


def test_prompt_ids_are_seeded_and_within_vocab():
    a = prompt_ids(0, 8, 128, 151936)
    assert a == prompt_ids(0, 8, 128, 151936)
    assert len(a) == 8 and all(len(r) == 128 for r in a)
    assert all(0 <= t < 151936 for r in a for t in r)
    assert a != prompt_ids(1, 8, 128, 151936)
    assert len({tuple(r) for r in a}) == 8  # the rows differ
    assert prompt_digest(a) == prompt_digest(prompt_ids(0, 8, 128, 151936))
    with pytest.raises(WorkloadError):
        prompt_ids(0, 1, 4, 0)


def test_reasons_are_short_and_named():
    class OutOfMemoryError(RuntimeError):
        pass

    assert describe_exception(OutOfMemoryError("Tried to allocate 20 GiB")).startswith("CUDA out of memory")
    assert describe_exception(ImportError("No module named 'bitsandbytes'")) == "missing package: No module named 'bitsandbytes'"
    assert describe_exception(ValueError("x" * 1000)).endswith("…")
    assert len(describe_exception(ValueError("x" * 1000))) == 200
    assert short_reason("Unrecognized model. Should contain one of a, b, c\nmore") == "Unrecognized model."


class SteppedCounter:
    """Like an H100's: the value moves only every ``period`` reads."""

    def __init__(self, period: int) -> None:
        self.period, self.reads = period, 0

    def energy_j(self) -> float:
        self.reads += 1
        return float(self.reads // self.period)


def test_an_edge_waits_for_the_counter_to_move():
    from wattscope.telemetry.counter import counter_edge

    c = SteppedCounter(period=5)
    c.reads = 2  # mid-period: the next update comes at the 5th read
    e = counter_edge(c).energy_j
    assert c.reads == 5 and e == 1.0
    e = counter_edge(c).energy_j  # reads 6..10: lands on the next update, not the stale value
    assert c.reads == 10 and e == 2.0


def test_a_stalled_counter_gives_up_after_the_timeout():
    import time

    from wattscope.telemetry.counter import EDGE_TIMEOUT_NS, counter_edge

    class Stalled:
        def energy_j(self) -> float:
            return 7.0

    t0 = time.monotonic()
    e = counter_edge(Stalled()).energy_j
    elapsed = time.monotonic() - t0
    assert e == 7.0
    assert EDGE_TIMEOUT_NS / 1e9 <= elapsed < EDGE_TIMEOUT_NS / 1e9 + 0.2


def test_a_window_that_ran_fast_is_topped_up_to_the_minimum():
    """Sized for 10 ms calls, the card now does them in 2 ms: the window adds calls
    (after one sync) until it lasts min_window_s, and counts every call it ran."""
    import time

    from wattscope.bench.protocol import PhaseSpec, _window

    log: list[str] = []

    class Fast:
        def synchronize(self) -> None:
            log.append("sync")

    def call() -> None:
        log.append("call")
        time.sleep(0.002)

    spec = PhaseSpec("prefill", call, 1, 0, 16)
    w = _window(spec, 10, "measure", 1, "c", Fast(), Counter(), threading.Event(), 0.2)
    assert w.work_s >= 0.2
    assert w.calls == log.count("call") > 10
    assert w.tokens == 16 * w.calls
    assert log[:11] == ["sync"] + ["call"] * 10  # the sized batch runs with no sync inside
