"""The graphs engine. Without a GPU: its refusal off CUDA, and the static-cache prefill
and decode it captures, run eagerly on the CPU with a tiny synthetic model (the same
transformers StaticCache code paths). With a GPU: capture, replay and restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from wattscope import config
from wattscope.bench import engines, models
from wattscope.bench.graphs import GraphsWorkload, StaticDecode, StaticPrefill, _check_logits, _counters, _first_error
from wattscope.bench.workload import WorkloadError

torch = pytest.importorskip("torch")

DATA = Path(__file__).parent / "data"
HAS_CUDA = torch.cuda.is_available()
PROMPT, STEPS = 8, 5


def _sweep(prompt: int = PROMPT) -> config.Sweep:
    text = f"""
name = "g"
[protocol]
prompt_tokens = {prompt}
decode_steps = {STEPS}
[[matrix]]
models = ["synthetic:tiny_qwen2.json"]
batches = [2]
precisions = ["fp16"]
"""
    return config.parse(text, str(DATA / "sweep.toml"))


def _eager(tmp_path: Path, device: str = "cpu") -> models.ModelWorkload:
    sw = _sweep()
    return engines.build_workload(sw.configs[0], sw, device, models.WeightCache(tmp_path), {})


def _eager_logits(w: models.ModelWorkload, steps: int) -> list:
    """Logits of each step of the eager engine's decode_run, tapped by a forward hook."""
    seen: list = []
    hook = w.model.register_forward_hook(lambda m, a, out: seen.append(out.logits[:, -1].float().clone()))
    try:
        w.decode_run(steps)
    finally:
        hook.remove()
    return seen


def _static(w: models.ModelWorkload, max_steps: int = STEPS) -> StaticDecode:
    """A StaticDecode over the eager engine's freshly prefilled cache (what prepare_decode builds)."""
    w.prepare_decode()
    return StaticDecode(w._forward, w.model.config, w._cache, w._first, max_steps)


def _close(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.allclose(x, y, rtol=0, atol=1e-5) for x, y in zip(a, b))


@pytest.mark.process
def test_graphs_module_does_not_import_torch():
    code = (
        "import sys\n"
        "import wattscope.bench.graphs\n"
        "heavy = [m for m in ('torch', 'transformers', 'bitsandbytes') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_graphs_engine_needs_cuda(tmp_path, monkeypatch, device):
    w = _eager(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(WorkloadError, match="^graphs engine needs CUDA$"):
        GraphsWorkload(w.model, w.ids.tolist(), device)


def test_static_decode_gives_the_eager_engines_logits_on_every_run(tmp_path):
    w = _eager(tmp_path)
    d = _static(w)
    assert d.positions() == [PROMPT, PROMPT]  # one counter per layer, at the prompt's end
    eager = _eager_logits(w, STEPS)
    assert len(eager) == STEPS
    # Six runs write 30 positions into a cache of 13: each run must start from the prompt.
    runs = [d.trace(STEPS) for _ in range(6)]
    for run in runs:
        assert _close(run, eager)
        assert all(torch.equal(x, y) for x, y in zip(run, runs[0]))
        assert d.positions() == [PROMPT + STEPS] * 2
    # The token buffer holds the last greedy token, as the eager engine's loop ends with.
    assert torch.equal(d.token, eager[-1].argmax(-1, keepdim=True))


def test_static_prefill_gives_the_eager_prefills_logits_on_every_run(tmp_path):
    w = _eager(tmp_path)
    eager = w._forward(input_ids=w.ids, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    p = StaticPrefill(w._forward, w.model.config, w.ids)
    assert p.positions() == []  # the layers make their counters at their first write
    runs = []
    for _ in range(4):  # the cache holds one prompt: each run must start from position 0
        p.run()
        runs.append(p.logits.float().clone())
        assert p.positions() == [PROMPT, PROMPT]
    for r in runs:
        assert torch.allclose(r, eager, rtol=0, atol=1e-5)
    _check_logits("prefill", eager, runs[-1])
    # What the prompt left in the cache is the eager prefill's own keys and values.
    w.prepare_decode()
    for mine, theirs in zip(p.cache.layers, w._cache.layers):
        assert torch.allclose(mine.keys, theirs.keys, atol=1e-5)


def test_a_replay_that_disagrees_with_eager_is_refused():
    eager = torch.tensor([[0.0, 1.0, 5.0]])
    assert _check_logits("prefill", eager, eager + 0.01)  # within fp16 rounding of the scale
    with pytest.raises(WorkloadError, match="^graph replay disagrees with eager prefill: max"):
        _check_logits("prefill", eager, eager + 1.0)
    with pytest.raises(WorkloadError, match="disagrees"):
        _check_logits("prefill", eager, eager * float("nan"))


def test_other_tokens_are_refused_unless_at_a_near_tie():
    """Seen on an H100 with synthetic Yi-1.5-6B NF4: replay and eager picked different
    tokens at step 3 of a batch-8 decode, their logits within rounding of each other."""
    # Row 2 is a near tie (eager's two best 0.005 apart, tolerance 0.05): paths part there.
    eager = torch.tensor([[0.0, 1.0, 5.0], [0.0, 4.995, 5.0]])
    replayed = torch.tensor([[0.0, 1.0, 5.0], [0.0, 5.0, 4.995]])
    assert _check_logits("decode at step 3", eager, replayed) is False
    # Logits each within the tolerance (scale 5: 0.05) can still swap two tokens whose eager
    # logits are up to twice that apart; 0.07 apart is a real disagreement.
    eager = torch.tensor([[0.0, 4.93, 5.0]])
    with pytest.raises(WorkloadError, match=r"^graph replay picks other tokens than eager decode at step 2 \(eager logits 0.07 apart"):
        _check_logits("decode at step 2", eager, torch.tensor([[0.0, 4.97, 4.96]]))


def test_keys_left_by_an_earlier_run_are_masked(tmp_path):
    w = _eager(tmp_path)
    d = _static(w)
    clean = d.trace(STEPS)
    # Poison every position past the prompt: a run must not see them before writing them.
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for layer in d.cache.layers:
            for t in (layer.keys, layer.values):
                t[:, :, PROMPT:] = torch.randn(t[:, :, PROMPT:].shape, generator=gen) * 100
    assert _close(d.trace(STEPS), clean)


def test_a_shorter_run_restarts_from_the_prompt_too(tmp_path):
    w = _eager(tmp_path)
    d = _static(w)
    full = d.trace(STEPS)
    assert _close(d.trace(2), full[:2])
    assert d.positions() == [PROMPT + 2] * 2
    assert _close(d.trace(STEPS), full)


def test_without_rewinding_the_counters_the_cache_overflows(tmp_path):
    """The earlier attempt's failure: a write index that only ever advances runs past
    max_cache_len (on the GPU, index_copy_ out of bounds on a later replay)."""
    w = _eager(tmp_path)
    d = _static(w)
    d._counters = []  # reset() now only restores the input token
    d.trace(STEPS)
    with pytest.raises((RuntimeError, IndexError), match="out of (bounds|range)"):
        d.trace(STEPS)


def test_step_limits(tmp_path):
    w = _eager(tmp_path)
    d = _static(w, max_steps=3)
    with pytest.raises(WorkloadError, match="4 decode steps asked for, the static cache holds 3"):
        d.trace(4)
    assert len(d.trace(3)) == 3
    with pytest.raises(WorkloadError, match="max_steps must be >= 1, got 0"):
        StaticDecode(w._forward, w.model.config, w._cache, w._first, 0)


def test_a_cache_without_position_counters_is_refused():
    with pytest.raises(WorkloadError, match="StaticCache layers have no position counter"):
        _counters(SimpleNamespace(layers=[SimpleNamespace()]))
    with pytest.raises(WorkloadError, match="no position counter"):
        _counters(SimpleNamespace(layers=[]))


def test_a_failed_capture_is_reported_by_its_first_error():
    # What torch.cuda.graph's exit raises while a failure inside the capture propagates.
    def capture():
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        finally:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    with pytest.raises(RuntimeError) as info:
        capture()
    assert str(_first_error(info.value)) == "CUDA error: operation not permitted when stream is capturing"
    plain = ValueError("x")
    assert _first_error(plain) is plain


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_replayed_decode_matches_eager_and_restarts(tmp_path):
    eager = _eager(tmp_path, "cuda")
    g = GraphsWorkload(eager.model, eager.ids.tolist(), "cuda", max_steps=STEPS)
    g.prefill()  # captures the prefill and checks two replays against the eager prefill
    assert g._prefill is not None and g._prefill.positions() == [PROMPT] * 2
    g.prefill()
    g.prepare_decode()
    first, second = g.trace(STEPS), g.trace(STEPS)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    eager.prepare_decode()
    reference = _eager_logits(eager, STEPS)
    assert [x.argmax(-1).tolist() for x in first] == [x.argmax(-1).tolist() for x in reference]
    g.decode_run(STEPS)
    g.synchronize()
    info = g.run_info()
    assert info["static_cache_len"] == PROMPT + STEPS and info["peak_memory_bytes"] > 0
    with pytest.raises(WorkloadError, match="6 decode steps asked for"):
        g.decode_run(STEPS + 1)
    g.close()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_decode_before_prepare_is_an_error_on_the_gpu(tmp_path):
    eager = _eager(tmp_path, "cuda")
    g = GraphsWorkload(eager.model, eager.ids.tolist(), "cuda")
    with pytest.raises(WorkloadError, match="prepare_decode"):
        g.decode_run(1)
