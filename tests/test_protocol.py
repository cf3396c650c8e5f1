"""The measurement protocol with a fake workload and a fake energy counter (no torch).

The fake counter advances by a known number of joules per call, so every window's
energy, calls, tokens and per-call figure can be checked exactly."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from wattscope import config
from wattscope.bench import protocol
from wattscope.bench.protocol import agree, calls_for, run_protocol
from wattscope.bench.workload import WorkloadError, describe_exception, prompt_digest, prompt_ids, short_reason
from wattscope.events import ConfigFinished, ConfigStarted, PhaseStarted, RunWarning, Window

SWEEP = """
name = "t"
[protocol]
prompt_tokens = 16
decode_steps = 4
repeats = 3
warmup_calls = 2
min_window_s = 0.02
min_calls = 5
max_warmup_windows = 4
steady_tolerance = 0.03
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


def test_windows_per_phase_and_role_and_exact_per_call_energy(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(protocol, "now_ns", clock)
    sw = _sweep()
    done, events, workloads, _ = _run(sw, lambda c: FakeWorkload(c, clock=clock), ClockedStop(clock))
    assert done
    idle = windows(events, phase="idle")
    assert len(idle) == 1 and idle[0].role == "idle" and idle[0].config_id is None
    assert idle[0].duration_s >= 0.01 and idle[0].calls == 0
    for rc in sw.configs:
        for phase, per_call, tokens_per_call, steps in (("prefill", 2.0, 2 * 16, 0), ("decode", 3.0, 2 * 4, 4)):
            warm = windows(events, rc.config_id, phase, "warmup")
            meas = windows(events, rc.config_id, phase, "measure")
            # Constant energy per call: steady after exactly two warm-up windows.
            assert len(warm) == 2
            assert [w.repeat for w in warm] == [1, 2]
            assert [w.repeat for w in meas] == [1, 2, 3]
            for w in warm + meas:
                assert w.energy_j == pytest.approx(per_call * w.calls)
                assert w.energy_j / w.calls == pytest.approx(per_call)
                assert w.tokens == tokens_per_call * w.calls
                assert w.steps == steps
                assert w.t_ns == w.end_ns > w.start_ns
            # Measured windows hold the calls that make the last warm-up window's pace
            # last min_window_s; on the fake clock every call takes exactly call_s, so
            # no window needs topping up.
            min_calls = sw.protocol.min_calls if phase == "prefill" else 1
            pace = warm[-1].work_s / warm[-1].calls
            assert pace == pytest.approx(0.001)
            assert [w.calls for w in meas] == [calls_for(pace, sw.protocol, min_calls)] * 3
            for w in meas:
                assert w.work_s == pytest.approx(w.calls * 0.001)
                assert w.work_s >= sw.protocol.min_window_s
        prefill_meas = windows(events, rc.config_id, "prefill", "measure")
        assert all(w.calls >= sw.protocol.min_calls for w in prefill_meas)
    assert not [e for e in events if isinstance(e, RunWarning)]
    for w in workloads:
        assert set(w.decode_steps) == {4}
        # prepare_decode once, after every prefill and before any decode run.
        assert w.log.count("prepare_decode") == 1
        i = w.log.index("prepare_decode")
        assert "decode" not in w.log[:i] and "prefill" not in w.log[i:]
        assert w.closed


def test_event_order_of_a_configuration():
    sw = _sweep(repeats=2)
    _, events, _, _ = _run(sw)
    first = sw.configs[0].config_id
    seq = []
    for e in events:
        if getattr(e, "config_id", None) != first:
            continue
        if isinstance(e, Window):
            seq.append(f"W:{e.phase}:{e.role}")
        elif isinstance(e, PhaseStarted):
            seq.append(f"P:{e.phase}" + (f":{e.repeat}" if e.repeat else ""))
        else:
            seq.append(e.kind)
    assert seq == [
        "config_started", "P:load",
        "P:warmup", "W:prefill:warmup", "W:prefill:warmup",
        "P:prefill:1", "W:prefill:measure", "P:prefill:2", "W:prefill:measure",
        "P:warmup", "W:decode:warmup", "W:decode:warmup",
        "P:decode:1", "W:decode:measure", "P:decode:2", "W:decode:measure",
        "P:cooldown", "config_finished",
    ]
    started = [e for e in events if isinstance(e, ConfigStarted)]
    assert [(e.index, e.total, e.precision, e.batch, e.repeats) for e in started] == [
        (0, 2, "fp16", 2, 2), (1, 2, "bf16", 2, 2)
    ]
    finished = [e for e in events if isinstance(e, ConfigFinished)]
    assert all(f.ok and f.reason == "" for f in finished)
    assert finished[0].info["built"] == first and finished[0].info["ran"] is True


def test_warmup_runs_until_consecutive_windows_agree():
    # A cold card: energy per call starts 30% high and fades with the calls made.
    sw = _sweep()
    make = lambda c: FakeWorkload(c, prefill_j=lambda n: 2.0 * (1 + 0.3 * 0.9 ** n))
    _, events, _, _ = _run(sw, make)
    cid = sw.configs[0].config_id
    warm = windows(events, cid, "prefill", "warmup")
    per_call = [w.energy_j / w.calls for w in warm]
    assert 2 < len(warm) <= sw.protocol.max_warmup_windows
    assert agree(per_call[-1], per_call[-2], 0.03)
    assert not any(agree(a, b, 0.03) for a, b in zip(per_call[:-2], per_call[1:-1]))
    assert per_call[0] > per_call[-1] * 1.03


def test_never_steady_warns_and_still_measures():
    sw = _sweep(max_warmup_windows=3)
    make_alt = lambda c: FakeWorkload(c, decode_j=lambda n: 3.0 + 2.0 * (n % 2), call_s=0.003)
    _, events, _, _ = _run(sw, make_alt)
    cid = sw.configs[0].config_id
    warnings = [e for e in events if isinstance(e, RunWarning) and e.config_id == cid]
    assert len(warnings) == 1 and "decode" in warnings[0].message and "not steady" in warnings[0].message
    assert len(windows(events, cid, "decode", "warmup")) == 3
    assert len(windows(events, cid, "decode", "measure")) == 3


def test_a_single_warmup_window_is_not_a_steadiness_check():
    sw = _sweep(max_warmup_windows=1)
    make = lambda c: FakeWorkload(c, decode_j=lambda n: 3.0 + 2.0 * (n % 2))
    _, events, _, _ = _run(sw, make)
    assert not [e for e in events if isinstance(e, RunWarning)]
    assert len(windows(events, sw.configs[0].config_id, "decode", "warmup")) == 1


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


def test_failed_build_becomes_a_failed_row_and_the_sweep_goes_on():
    sw = _sweep()
    counter = Counter()
    events: list = []
    released: list[str] = []

    def build(rc, info):
        info["bitsandbytes"] = {"load_in_8bit": True}
        if rc.precision == "fp16":
            raise WorkloadError("int8 (LLM.int8) needs CUDA + bitsandbytes; this run is on cpu")
        return FakeWorkload(counter)

    assert run_protocol(sw, build, counter, events.append, threading.Event(), 0, lambda: released.append("x"))
    fin = [e for e in events if isinstance(e, ConfigFinished)]
    assert [f.ok for f in fin] == [False, True]
    assert fin[0].reason == "int8 (LLM.int8) needs CUDA + bitsandbytes; this run is on cpu"
    assert fin[0].info["bitsandbytes"] == {"load_in_8bit": True}  # what was learned before failing
    assert not windows(events, sw.configs[0].config_id)
    assert len(windows(events, sw.configs[1].config_id, role="measure")) == 6
    assert released == ["x", "x"]  # memory freed after every configuration


def test_failure_mid_phase_closes_the_workload():
    class OOM(RuntimeError):
        pass

    class Flaky(FakeWorkload):
        def decode_run(self, steps: int) -> None:
            raise OOM("CUDA out of memory. Tried to allocate 2.00 GiB")

    sw = _sweep()
    _, events, workloads, _ = _run(sw, Flaky)
    fin = [e for e in events if isinstance(e, ConfigFinished)]
    assert [f.ok for f in fin] == [False, False]
    assert fin[0].reason.startswith("CUDA out of memory")
    assert "OOM" in fin[0].info["error"]
    assert all(w.closed for w in workloads)
    # Prefill was measured before decode failed.
    assert len(windows(events, sw.configs[0].config_id, "prefill", "measure")) == 3


def test_stop_flag_ends_the_sweep_between_calls():
    sw = _sweep()
    stop = threading.Event()

    class Stopping(FakeWorkload):
        def decode_run(self, steps: int) -> None:
            super().decode_run(steps)
            if self.n_decode == 5:
                stop.set()

    done, events, workloads, _ = _run(sw, Stopping, stop=stop)
    assert not done
    assert workloads[0].n_decode == 5  # no call after the flag was seen
    started = [e for e in events if isinstance(e, ConfigStarted)]
    fin = [e for e in events if isinstance(e, ConfigFinished)]
    assert len(started) == 1 and len(fin) == 1
    assert not fin[0].ok and "stopped" in fin[0].reason
    assert workloads[0].closed


def test_start_index_skips_idle_and_earlier_configs():
    sw = _sweep()
    _, events, _, _ = _run(sw, start_index=1)
    assert not windows(events, phase="idle")
    assert [e.index for e in events if isinstance(e, ConfigStarted)] == [1]


def test_window_edges_read_the_counter_after_synchronize():
    sw = _sweep(repeats=1, max_warmup_windows=0)
    _, events, workloads, counter = _run(sw)
    log = workloads[0].log
    # Every counter read comes right after a synchronize (the opening read of a window)
    # or right after the closing synchronize's read pair: sync, read, calls..., sync, read.
    reads = [i for i, x in enumerate(log) if x == "read"]
    assert len(reads) == 2 * 2  # 2 phases x 1 measured window x 2 edges
    assert all(log[i - 1] == "sync" for i in reads)
    for start, end in zip(reads[::2], reads[1::2]):
        inside = log[start + 1 : end - 1]
        assert inside and "sync" not in inside and "read" not in inside  # no host sync inside
    assert counter.reads == 2 + 4 * len(sw.configs)  # plus the idle window's two
    assert not [e for e in events if isinstance(e, RunWarning)]  # no warm-up windows, no check


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
    from wattscope.bench.protocol import _counter_edge

    c = SteppedCounter(period=5)
    c.reads = 2  # mid-period: the next update comes at the 5th read
    _, e = _counter_edge(c)
    assert c.reads == 5 and e == 1.0
    _, e = _counter_edge(c)  # reads 6..10: lands on the next update, not the stale value
    assert c.reads == 10 and e == 2.0


def test_a_stalled_counter_gives_up_after_the_timeout():
    import time

    from wattscope.bench.protocol import EDGE_TIMEOUT_NS, _counter_edge

    class Stalled:
        def energy_j(self) -> float:
            return 7.0

    t0 = time.monotonic()
    _, e = _counter_edge(Stalled())
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
