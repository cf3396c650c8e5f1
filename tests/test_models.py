"""Model building and the transformers workload, on CPU with tiny synthetic models
(CUDA + bitsandbytes paths are skipped without a GPU)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from wattscope import config
from wattscope.bench import engines, models
from wattscope.architectures import ARCHITECTURES, SyntheticModelError, parameter_count, synthetic_config
from wattscope.bench.workload import WorkloadError, prompt_ids

DATA = Path(__file__).parent / "data"
HAS_CUDA = False
try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is in the dev environment
    torch = None


def _sweep(precisions=("fp16",), model="synthetic:tiny_qwen2.json", **bnb) -> config.Sweep:
    text = f"""
name = "m"
[protocol]
prompt_tokens = 8
decode_steps = 5
[[matrix]]
models = ["{model}"]
batches = [2]
precisions = {json.dumps(list(precisions))}
"""
    sw = config.parse(text, str(DATA / "sweep.toml"))
    return replace(sw, bitsandbytes=replace(sw.bitsandbytes, **bnb)) if bnb else sw


def test_bnb_settings_are_exact():
    bnb = config.BitsAndBytes(llm_int8_threshold=0.0, nf4_compute_dtype="bfloat16", nf4_double_quant=True)
    assert models.bnb_settings("int8", bnb) == {"load_in_8bit": True, "llm_int8_threshold": 0.0}
    assert models.bnb_settings("nf4", bnb) == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_use_double_quant": True,
    }
    assert models.bnb_settings("fp16", bnb) is None and models.bnb_settings("bf16", bnb) is None


def test_quantization_config_carries_the_settings():
    qc = models._quantization_config("nf4", config.BitsAndBytes(nf4_compute_dtype="float16"))
    assert qc.load_in_4bit and qc.bnb_4bit_quant_type == "nf4"
    assert qc.bnb_4bit_compute_dtype == torch.float16 and not qc.bnb_4bit_use_double_quant
    qc8 = models._quantization_config("int8", config.BitsAndBytes(llm_int8_threshold=0.0))
    assert qc8.load_in_8bit and qc8.llm_int8_threshold == 0.0
    assert models._quantization_config("fp16", config.BitsAndBytes()) is None


@pytest.mark.parametrize("name,published", [("Qwen2-1.5B", 1.54e9), ("Qwen2.5-3B", 3.09e9), ("Yi-1.5-6B", 6.06e9),
                                            ("Llama-3-70B", 70.6e9)])
def test_architectures_build_the_published_sizes(name, published):
    from transformers import AutoModelForCausalLM

    cfg = ARCHITECTURES[name]
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(models._hf_config(cfg))
    assert type(m).__name__ == cfg["architectures"][0]
    assert m.num_parameters() == parameter_count(cfg)
    assert parameter_count(cfg) == pytest.approx(published, rel=0.005)


def test_synthetic_config_resolution():
    assert synthetic_config("synthetic:Qwen2-1.5B")["hidden_size"] == 1536
    assert synthetic_config("synthetic:tiny_qwen2.json", DATA)["vocab_size"] == 1000
    with pytest.raises(SyntheticModelError, match="unknown synthetic model 'Nope'"):
        synthetic_config("synthetic:Nope")
    with pytest.raises(SyntheticModelError, match="cannot read synthetic model config"):
        synthetic_config("synthetic:missing.json", DATA)


@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_quantized_precisions_need_cuda(precision, tmp_path):
    sw = _sweep([precision])
    info: dict = {}
    with pytest.raises(WorkloadError, match="needs CUDA \\+ bitsandbytes"):
        models.load_model(sw.configs[0], sw, "cpu", models.WeightCache(tmp_path), info)
    # What was known before failing is kept for the failed row.
    assert info["bitsandbytes"] == models.bnb_settings(precision, sw.bitsandbytes)
    assert info["versions"]["torch"] == torch.__version__


def test_cpu_dtypes_and_info(tmp_path):
    import transformers

    sw = _sweep(["fp16", "bf16"])
    cache = models.WeightCache(tmp_path)
    cfg = synthetic_config("synthetic:tiny_qwen2.json", DATA)
    for rc, dtype, width in zip(sw.configs, (torch.float32, torch.bfloat16), (4, 2)):
        info: dict = {}
        w = engines.build_workload(rc, sw, "cpu", cache, info)
        assert next(w.model.parameters()).dtype == dtype
        assert info["dtype"] == str(dtype).removeprefix("torch.")
        assert info["params"] == parameter_count(cfg)
        # parameters at this width, plus small buffers (rotary frequencies)
        assert 0 <= info["memory_footprint_bytes"] - parameter_count(cfg) * width < 1024
        assert info["synthetic"] is True and info["bitsandbytes"] is None
        assert info["versions"]["transformers"] == transformers.__version__
        assert info["load_s"] >= 0 and info["device_name"] == "cpu"
        assert info["prompt_tokens"] == 8
        w.close()
    cache.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_weight_cache_builds_each_model_once(tmp_path, monkeypatch):
    built: list[str] = []
    real = models._build_synthetic
    monkeypatch.setattr(models, "_build_synthetic", lambda m, s, d, o: (built.append(m), real(m, s, d, o)))
    sw = _sweep(["fp16", "bf16"])
    cache = models.WeightCache(tmp_path)
    a, _ = cache.path_for(sw.configs[0].model, sw, "cpu")
    b, _ = cache.path_for(sw.configs[1].model, sw, "cpu")
    assert a == b and built == ["synthetic:tiny_qwen2.json"]
    assert (a / "config.json").is_file() and list(a.glob("*.safetensors"))
    cache.forget(sw.configs[0].model)
    assert not a.exists()


def test_a_synthetic_model_that_cannot_be_built_fails_once(tmp_path, monkeypatch):
    sw = _sweep(model="synthetic:unknown_arch.json")
    cache = models.WeightCache(tmp_path)
    calls: list[int] = []
    real = models._hf_config
    monkeypatch.setattr(models, "_hf_config", lambda cfg: (calls.append(1), real(cfg))[1])
    for _ in range(2):
        with pytest.raises(WorkloadError, match="cannot build the synthetic model: Unrecognized model identifier"):
            cache.path_for(sw.configs[0].model, sw, "cpu")
    assert calls == [1]


def test_missing_local_model_path_fails_clearly(tmp_path):
    # The config refuses a missing path; one removed after the config was read fails at load.
    gone = tmp_path / "model"
    gone.mkdir()
    sw = _sweep(model=str(gone))
    gone.rmdir()
    with pytest.raises(WorkloadError, match=f"model path {gone} does not exist"):
        models.load_model(sw.configs[0], sw, "cpu", models.WeightCache(tmp_path), {})


def _tiny_workload(tmp_path, decode_steps=5):
    sw = _sweep()
    w = engines.build_workload(sw.configs[0], sw, "cpu", models.WeightCache(tmp_path), {})
    return sw, w


def test_greedy_decode_matches_generate_and_restarts_from_the_prompt(tmp_path):
    sw, w = _tiny_workload(tmp_path)
    steps = sw.protocol.decode_steps
    fed: list[tuple] = []
    real = w._forward

    def spy(**kw):
        cache = kw.get("past_key_values")
        fed.append((tuple(kw["input_ids"].shape), cache.get_seq_length() if cache is not None else None, kw["input_ids"].clone()))
        return real(**kw)

    w.prepare_decode()
    w._forward = spy
    w.decode_run(steps)
    first = fed[:]
    fed.clear()
    w.decode_run(steps)
    # Exactly `steps` one-token forwards per run, each run starting at the prompt's cache length.
    for run in (first, fed):
        assert len(run) == steps
        assert [shape for shape, _, _ in run] == [(2, 1)] * steps
        assert [length for _, length, _ in run] == [sw.protocol.prompt_tokens + i for i in range(steps)]
    assert w._cache.get_seq_length() == sw.protocol.prompt_tokens + steps
    tokens = torch.cat([ids for _, _, ids in first], dim=1)
    assert torch.equal(tokens, torch.cat([ids for _, _, ids in fed], dim=1))
    # The same tokens generate() picks greedily, with no EOS stop.
    out = w.model.generate(
        w.ids, attention_mask=torch.ones_like(w.ids), do_sample=False, max_new_tokens=steps,
        min_new_tokens=steps, eos_token_id=None, pad_token_id=0,
    )
    assert torch.equal(out[:, sw.protocol.prompt_tokens :], tokens)


def test_prefill_is_one_forward_over_the_whole_prompt(tmp_path):
    sw, w = _tiny_workload(tmp_path)
    seen: list = []
    real = w._forward
    w._forward = lambda **kw: (seen.append(tuple(kw["input_ids"].shape)), real(**kw))[1]
    w.prefill()
    assert seen == [(2, sw.protocol.prompt_tokens)]
    assert w.ids.tolist() == prompt_ids(sw.protocol.seed, 2, sw.protocol.prompt_tokens, 1000)


def test_decode_before_prepare_is_an_error(tmp_path):
    _, w = _tiny_workload(tmp_path)
    with pytest.raises(WorkloadError, match="prepare_decode"):
        w.decode_run(3)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_synthetic_model_is_built_on_the_gpu(tmp_path):
    sw = _sweep()
    info: dict = {}
    w = engines.build_workload(sw.configs[0], sw, "cuda", models.WeightCache(tmp_path), info)
    assert next(w.model.parameters()).device.type == "cuda"
    assert next(w.model.parameters()).dtype == torch.float16
    assert info["compute_capability"] and info["device_name"]
    w.prepare_decode()
    w.decode_run(3)
    w.synchronize()
    assert w.run_info()["peak_memory_bytes"] > 0


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and bitsandbytes")
@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_bitsandbytes_precisions_on_the_gpu(precision, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    sw = _sweep([precision], llm_int8_threshold=0.0, nf4_compute_dtype="float16")
    info: dict = {}
    w = engines.build_workload(sw.configs[0], sw, "cuda", models.WeightCache(tmp_path), info)
    layer = w.model.model.layers[0].mlp.up_proj
    if precision == "int8":
        assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.state.threshold == 0.0
    else:
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.compute_dtype == torch.float16
        assert layer.weight.quant_type == "nf4"
    assert info["versions"]["bitsandbytes"] == bnb.__version__
    w.prefill()
    w.prepare_decode()
    w.decode_run(3)
    w.synchronize()
