"""The runner on CPU: a tiny synthetic model through the real runner code (transformers
on CPU, fake energy counter), and the runner child process end to end on the
simulated GPU."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import threading
import time
from pathlib import Path

import pytest

from wattscope import config
from wattscope.bench import models, runner
from wattscope.architectures import parameter_count, synthetic_config
from wattscope.events import ConfigFinished, ConfigStarted, Event, RunWarning, Window, now_ns
from wattscope.telemetry.open import SensorSpec
from wattscope.telemetry.sim import SimGPU, SimSpec

DATA = Path(__file__).parent / "data"

CPU_SWEEP = f"""
name = "cpu"
[protocol]
prompt_tokens = 8
decode_steps = 3
warmup_calls = 1
min_window_s = 0.03
min_calls = 2
max_warmup_rounds = 2
min_rounds = 2
max_rounds = 2
cooldown_s = 0
idle_s = 0.01
[[matrix]]
models = ["synthetic:tiny_qwen2.json"]
batches = [2]
precisions = ["fp16", "bf16", "int8"]
[[matrix]]
models = ["synthetic:unknown_arch.json", "{DATA / 'not_a_checkpoint'}"]
batches = [1]
precisions = ["fp16"]
[[matrix]]
models = ["synthetic:tiny_llama.json"]
batches = [1]
precisions = ["fp16"]
"""

POWER_W = 50.0


class ConstantPower:
    """An energy counter of a card drawing POWER_W all the time."""

    def __init__(self) -> None:
        self.t0 = now_ns()

    def energy_j(self) -> float:
        return POWER_W * (now_ns() - self.t0) / 1e9


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One run of the CPU sweep, with every model forward recorded."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: threads only add contention on 2 cores
    sweep = config.parse(CPU_SWEEP, str(DATA / "cpu_sweep.toml"))
    cache_dir = tmp_path_factory.mktemp("weights")
    forwards: list[tuple[str, tuple, int | None]] = []  # (what, input shape, cache length)
    decode_runs: list[int] = []
    prompts: dict[str, list] = {}
    built: list[str] = []
    mp_ = pytest.MonkeyPatch()
    real_forward = models.ModelWorkload._forward
    real_decode = models.ModelWorkload.decode_run
    real_init = models.ModelWorkload.__init__
    real_build = models._build_synthetic

    def forward(self, **kw):
        cache = kw.get("past_key_values")
        forwards.append((self._what, tuple(kw["input_ids"].shape), cache.get_seq_length() if cache is not None else None))
        return real_forward(self, **kw)

    def decode_run(self, steps):
        before = len(forwards)
        self._what = "decode"
        real_decode(self, steps)
        self._what = "prefill"
        decode_runs.append(len(forwards) - before)

    def init(self, model, ids, device, *devices):
        real_init(self, model, ids, device, *devices)
        self._what = "prefill"
        prompts[f"{model.config.model_type}/{len(prompts)}"] = ids

    mp_.setattr(models.ModelWorkload, "_forward", forward)
    mp_.setattr(models.ModelWorkload, "decode_run", decode_run)
    mp_.setattr(models.ModelWorkload, "__init__", init)
    mp_.setattr(models, "_build_synthetic", lambda m, s, d, o: (built.append(m), real_build(m, s, d, o)))
    events: list[Event] = []
    try:
        done = runner.run_sweep(sweep, ConstantPower(), events.append, sim=False, device="cpu", cache_dir=str(cache_dir))
    finally:
        mp_.undo()
        torch.set_num_threads(threads)
    return dict(sweep=sweep, events=events, done=done, forwards=forwards, decode_runs=decode_runs,
                prompts=prompts, built=built, cache_dir=cache_dir)


def _windows(events, cid=None, phase=None, role=None):
    return [e for e in events if isinstance(e, Window) and (cid is None or e.config_id == cid)
            and (phase is None or e.phase == phase) and (role is None or e.role == role)]


def _finished(events) -> dict[str, ConfigFinished]:
    return {e.config_id: e for e in events if isinstance(e, ConfigFinished)}


def test_rows_ok_and_failed_and_the_sweep_goes_on(cpu_run):
    fin = _finished(cpu_run["events"])
    assert cpu_run["done"]
    assert [c.config_id for c in cpu_run["sweep"].configs] == list(fin)  # every row finished, in order
    assert {cid: f.ok for cid, f in fin.items()} == {
        "tiny_qwen2/b2/fp16": True,
        "tiny_qwen2/b2/bf16": True,
        "tiny_qwen2/b2/int8": False,
        "unknown_arch/b1/fp16": False,
        "not_a_checkpoint/b1/fp16": False,
        "tiny_llama/b1/fp16": True,
    }
    assert fin["tiny_qwen2/b2/int8"].reason == "int8 (LLM.int8) needs CUDA + bitsandbytes; this run is on cpu"
    assert "cannot build the synthetic model" in fin["unknown_arch/b1/fp16"].reason
    # A folder that is no checkpoint passes the config (it exists) and fails at load.
    assert fin["not_a_checkpoint/b1/fp16"].reason.startswith(f"model {DATA / 'not_a_checkpoint'} failed to load: ")
    for f in fin.values():
        if not f.ok:
            assert not _windows(cpu_run["events"], f.config_id)
            assert len(f.reason) <= 200


def test_windows_per_phase_and_role(cpu_run):
    events, p = cpu_run["events"], cpu_run["sweep"].protocol
    # One idle baseline per group with a model loaded; groups whose every row failed have none.
    assert [w.group for w in _windows(events, phase="idle", role="idle")] == ["tiny_qwen2/b2", "tiny_llama/b1"]
    for cid in ("tiny_qwen2/b2/fp16", "tiny_qwen2/b2/bf16", "tiny_llama/b1/fp16"):
        for phase in ("prefill", "decode"):
            assert 2 <= len(_windows(events, cid, phase, "warmup")) <= p.max_warmup_rounds
            assert [w.round for w in _windows(events, cid, phase, "measure")] == [1, 2]


def test_per_call_arithmetic_and_tokens(cpu_run):
    events, p = cpu_run["events"], cpu_run["sweep"].protocol
    for w in _windows(events):
        # The counter read at both edges: a constant 50 W card gives 50 W over every window.
        # Edges are stamped mid-read, microseconds from the instant the fake counter reads;
        # on a loaded 2-core CI machine a read can be preempted (13 us seen on a 10 ms idle
        # window), so each edge may be off by up to 100 us (5 mJ at 50 W).
        assert w.energy_j == pytest.approx(POWER_W * w.duration_s, rel=1e-3, abs=2 * POWER_W * 100e-6)
        if w.phase == "idle":
            continue
        batch = int(w.config_id.split("/b")[1].split("/")[0])
        if w.phase == "prefill":
            assert w.steps == 0 and w.tokens == batch * p.prompt_tokens * w.calls
            assert w.calls >= p.min_calls
        else:
            assert w.steps == p.decode_steps and w.tokens == batch * p.decode_steps * w.calls


def test_decode_is_forced_to_exactly_decode_steps(cpu_run):
    p = cpu_run["sweep"].protocol
    assert cpu_run["decode_runs"] and set(cpu_run["decode_runs"]) == {p.decode_steps}
    decode = [f for f in cpu_run["forwards"] if f[0] == "decode"]
    assert len(decode) == p.decode_steps * len(cpu_run["decode_runs"])
    # Every decode step feeds one token per sequence on top of prompt + earlier steps.
    lengths = [length for _, _, length in decode]
    for i in range(0, len(lengths), p.decode_steps):
        assert lengths[i : i + p.decode_steps] == [p.prompt_tokens + k for k in range(p.decode_steps)]
    assert all(shape[1] == 1 for _, shape, _ in decode)
    # Prefill calls are one forward over the whole prompt.
    assert all(shape[1] == p.prompt_tokens for what, shape, _ in cpu_run["forwards"] if what == "prefill")


def test_calls_in_windows_match_the_forwards_made(cpu_run):
    events, p = cpu_run["events"], cpu_run["sweep"].protocol
    runs_in_windows = sum(w.calls for w in _windows(events, phase="decode"))
    # Decode runs outside windows: warm-up calls and calibration only.
    outside = len(cpu_run["decode_runs"]) - runs_in_windows
    ok_configs = 3
    assert ok_configs * p.warmup_calls <= outside <= ok_configs * (p.warmup_calls + 10)


def test_same_prompt_for_every_precision(cpu_run):
    fin = _finished(cpu_run["events"])
    assert fin["tiny_qwen2/b2/fp16"].info["prompt_sha1"] == fin["tiny_qwen2/b2/bf16"].info["prompt_sha1"]
    qwen = [ids for key, ids in cpu_run["prompts"].items() if key.startswith("qwen2/")]
    assert len(qwen) == 2 and qwen[0] == qwen[1]
    assert len(qwen[0]) == 2 and {len(r) for r in qwen[0]} == {cpu_run["sweep"].protocol.prompt_tokens}


def test_info_metadata(cpu_run):
    import torch
    import transformers

    fin = _finished(cpu_run["events"])
    fp16, bf16 = fin["tiny_qwen2/b2/fp16"].info, fin["tiny_qwen2/b2/bf16"].info
    assert fp16["dtype"] == "float32" and bf16["dtype"] == "bfloat16"  # CPU stand-ins for fp16
    assert fp16["params"] == parameter_count(synthetic_config("synthetic:tiny_qwen2.json", DATA))
    assert fp16["synthetic"] is True and fp16["bitsandbytes"] is None and fp16["device"] == "cpu"
    assert fp16["versions"] == {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}
    assert fp16["load_s"] >= 0 and fp16["synthetic_build_s"] > 0
    int8 = fin["tiny_qwen2/b2/int8"].info
    assert int8["bitsandbytes"] == {"load_in_8bit": True, "llm_int8_threshold": 6.0}
    assert "WorkloadError" in int8["error"]


def test_synthetic_weights_built_once_per_model_and_cleaned_up(cpu_run):
    assert sorted(cpu_run["built"]) == ["synthetic:tiny_llama.json", "synthetic:tiny_qwen2.json", "synthetic:unknown_arch.json"]
    assert list(cpu_run["cache_dir"].iterdir()) == []


def test_stop_flag_ends_a_cpu_sweep(tmp_path):
    sweep = config.parse(CPU_SWEEP, str(DATA / "cpu_sweep.toml"))
    stop = threading.Event()
    events: list[Event] = []

    def emit(e):
        events.append(e)
        if isinstance(e, Window) and e.role == "measure":
            stop.set()

    assert runner.run_sweep(sweep, ConstantPower(), emit, stop, device="cpu", cache_dir=str(tmp_path)) is False
    fin = _finished(events)
    # The first group's three rows: none finished; the two that were loaded say they were stopped.
    assert list(fin) == ["tiny_qwen2/b2/fp16", "tiny_qwen2/b2/bf16", "tiny_qwen2/b2/int8"]
    assert not any(f.ok for f in fin.values())
    assert "stopped" in fin["tiny_qwen2/b2/fp16"].reason and "stopped" in fin["tiny_qwen2/b2/bf16"].reason
    assert len([e for e in events if isinstance(e, ConfigStarted)]) == 3
    assert len(_windows(events, role="measure")) == 1
    assert list(tmp_path.iterdir()) == []


SIM_SWEEP = """
name = "sim"
[protocol]
min_rounds = 2
max_rounds = 2
max_warmup_rounds = 3
[sim]
min_window_s = 0.06
cooldown_s = 0.01
idle_s = 0.1
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [1]
precisions = ["fp16", "int8", "nf4"]
"""


def _drain(q, into: list, until) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            into.append(q.get(timeout=0.1))
        except queue_mod.Empty:
            pass
        # Checked after every event too: a busy runner may never leave the queue empty.
        if until():
            while True:  # what is already queued still belongs to the run
                try:
                    into.append(q.get_nowait())
                except queue_mod.Empty:
                    return


@pytest.mark.process
def test_runner_process_end_to_end_on_the_simulated_gpu():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    sweep = config.parse(SIM_SWEEP, "sim.toml").for_simulation()
    spec = SimSpec(refresh_s=0.002)
    with SimGPU.create(spec) as gpu:
        proc = runner.RunnerProcess(sweep, [SensorSpec.simulated(gpu)], q, sim=True)
        proc.start()
        events: list[Event] = []
        _drain(q, events, lambda: not proc.is_alive())
        proc.join(10)
        total_j = gpu.energy_j()
        assert gpu.load_w == spec.idle_w  # the card is left idle
    assert proc.exitcode == 0
    assert not [e for e in events if isinstance(e, RunWarning) and "failed" in e.message]
    fin = _finished(events)
    assert list(fin) == [c.config_id for c in sweep.configs] and all(f.ok for f in fin.values())
    assert all(f.info["simulated"] for f in fin.values())
    assert len({f.info["prompt_sha1"] for f in fin.values()}) == 1
    assert len(_windows(events, phase="idle")) == 1
    measured = _windows(events, role="measure")
    assert len(measured) == 3 * 2 * 2
    assert sum(w.energy_j for w in _windows(events)) <= total_j
    t = [e.t_ns for e in events]
    assert t == sorted(t)

    def per_token(cid, phase):
        ws = _windows(events, cid, phase, "measure")
        return sum(w.energy_j for w in ws) / sum(w.tokens for w in ws)

    def tok_s(cid):
        ws = _windows(events, cid, "decode", "measure")
        return sum(w.tokens for w in ws) / sum(w.work_s for w in ws)

    # The seed study's shape: INT8 much slower and costlier per token, NF4 in between.
    assert tok_s("Qwen2-1.5B/b1/fp16") > tok_s("Qwen2-1.5B/b1/nf4") > tok_s("Qwen2-1.5B/b1/int8")
    assert tok_s("Qwen2-1.5B/b1/fp16") > 3 * tok_s("Qwen2-1.5B/b1/int8")
    assert per_token("Qwen2-1.5B/b1/int8", "decode") > per_token("Qwen2-1.5B/b1/nf4", "decode") > per_token("Qwen2-1.5B/b1/fp16", "decode")


@pytest.mark.process
def test_runner_process_stops_promptly():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    # A long first group (many rounds), so the stop surely lands inside it.
    text = SIM_SWEEP.replace('batches = [1]', 'batches = [1, 8]').replace(
        "max_rounds = 2", "max_rounds = 500\nci_target = 0.0001").replace("[sim]", "[sim]\nmax_row_s = 60")
    sweep = config.parse(text, "sim.toml").for_simulation()
    with SimGPU.create(SimSpec(refresh_s=0.002)) as gpu:
        proc = runner.RunnerProcess(sweep, [SensorSpec.simulated(gpu)], q, sim=True)
        proc.start()
        events: list[Event] = []
        _drain(q, events, lambda: any(isinstance(e, Window) and e.role == "measure" for e in events))
        t0 = time.monotonic()
        drained = threading.Thread(target=_drain, args=(q, events, lambda: not proc.is_alive()))
        drained.start()
        proc.stop(timeout=10)
        stopped_in = time.monotonic() - t0
        drained.join()
    assert stopped_in < 3.0
    assert not proc.is_alive() and proc.exitcode == 0  # exited by itself, not terminated
    fin = [e for e in events if isinstance(e, ConfigFinished)]
    started = [e for e in events if isinstance(e, ConfigStarted)]
    # Every started row is closed, none started after the stop; the rows of the group
    # running when the flag was seen say so.
    assert len(started) == len(fin) == 3 < len(sweep.configs)
    assert all("stopped" in f.reason and not f.ok for f in fin)


@pytest.mark.process
def test_runner_process_restarts_from_an_index():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    sweep = config.parse(SIM_SWEEP.replace("batches = [1]", "batches = [1, 8]"), "sim.toml").for_simulation()
    with SimGPU.create(SimSpec(refresh_s=0.002)) as gpu:
        proc = runner.RunnerProcess(sweep, [SensorSpec.simulated(gpu)], q, sim=True, start_index=3)
        proc.start()
        events: list[Event] = []
        _drain(q, events, lambda: not proc.is_alive())
        proc.join(10)
    assert proc.exitcode == 0
    # The batch-8 group only: a restart redoes whole groups.
    assert [e.index for e in events if isinstance(e, ConfigStarted)] == [3, 4, 5]
    assert [w.group for w in _windows(events, phase="idle")] == ["Qwen2-1.5B/b8"]


def test_sim_workload_shape_follows_the_seed_study():
    from wattscope.bench.sim_workload import SimClock, SimWorkload

    text = SIM_SWEEP.replace('models = ["synthetic:Qwen2-1.5B"]', 'models = ["synthetic:Qwen2-1.5B", "synthetic:Yi-1.5-6B"]')
    sweep = config.parse(text.replace("batches = [1]", "batches = [1, 8]"), "sim.toml")

    class Card:
        def set_load_w(self, w: float) -> None:
            pass

    def shape(cid):
        rc = next(c for c in sweep.configs if c.config_id == cid)
        w = SimWorkload(rc, sweep, Card(), 72.0, 700.0, SimClock())
        return {"decode_j": w._decode_w * w._decode_step_s, "decode_w": w._decode_w, "step_s": w._decode_step_s,
                "prefill_j": w._prefill_w * w._prefill_s, "prefill_w": w._prefill_w}

    q1, q8, yi8 = shape("Qwen2-1.5B/b1/fp16"), shape("Qwen2-1.5B/b8/fp16"), shape("Yi-1.5-6B/b8/fp16")
    i8, n4 = shape("Qwen2-1.5B/b1/int8"), shape("Qwen2-1.5B/b1/nf4")
    assert q8["decode_w"] > q1["decode_w"] and q8["prefill_w"] > q1["prefill_w"]  # batch 8 draws more
    assert yi8["decode_j"] > q8["decode_j"] and yi8["prefill_j"] > q8["prefill_j"]  # bigger model, more energy
    assert i8["step_s"] > 3 * q1["step_s"] and i8["decode_w"] < q1["decode_w"]  # LLM.int8: slow, low power
    assert q1["step_s"] < n4["step_s"] < i8["step_s"]
    again = shape("Qwen2-1.5B/b1/int8")
    assert again == i8  # seeded: the same configuration always gets the same card
