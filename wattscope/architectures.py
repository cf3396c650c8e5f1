"""Published architecture configs of the models the seed study measured.

Light on purpose (no transformers import): the config validator checks synthetic model
names against this table. Values are the published config.json of each model
(Qwen/Qwen2-1.5B, Qwen/Qwen2.5-3B, 01-ai/Yi-1.5-6B), checked 2026-11-27 against copies
of those files, and meta-llama/Meta-Llama-3-70B (a model too big for one 80 GB card in
FP16: 70.6 B parameters, 141 GB; its shape as Meta's model card and config publish it); fields that only matter for training (dropout, initializer range,
torch_dtype) are left at transformers' defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wattscope.errors import WattscopeError

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "Qwen2-1.5B": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 131072,
        "max_window_layers": 28,
        "use_sliding_window": False,
        "sliding_window": 131072,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    "Qwen2.5-3B": {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "max_window_layers": 36,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
    "Yi-1.5-6B": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 64000,
        "max_position_embeddings": 4096,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": 5000000.0,
        "rms_norm_eps": 1e-06,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    "Llama-3-70B": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    },
}


class SyntheticModelError(WattscopeError, ValueError):
    """A synthetic:<name> model that is neither a known architecture nor a readable config.json."""


def synthetic_config(model: str, base: Path | str = ".") -> dict[str, Any]:
    """The architecture config of ``synthetic:<name>`` or ``synthetic:path/config.json``
    (a relative path is taken from ``base``, the directory of the sweep file)."""
    name = model.removeprefix("synthetic:")
    if name in ARCHITECTURES:
        return dict(ARCHITECTURES[name])
    if not name.endswith(".json"):
        raise SyntheticModelError(
            f"unknown synthetic model '{name}'; allowed: {', '.join(ARCHITECTURES)}, or synthetic:path/to/config.json"
        )
    path = Path(name) if Path(name).is_absolute() else Path(base) / name
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SyntheticModelError(f"{path}: cannot read synthetic model config: {e}") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise SyntheticModelError(f"{path}: 'model_type' is missing; expected a Hugging Face config.json")
    return cfg


def parameter_count(cfg: dict[str, Any]) -> int:
    """Parameters of a decoder-only transformer config (Llama/Qwen2 layout), without
    building it: embeddings, attention (grouped KV heads), gated MLP, norms, LM head."""
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    inter = int(cfg["intermediate_size"])
    vocab = int(cfg["vocab_size"])
    attn = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2
    if cfg.get("model_type") == "qwen2":  # Qwen2 has biases on q, k, v
        attn += heads * head_dim + 2 * kv_heads * head_dim
    per_layer = attn + 3 * h * inter + 2 * h
    head = 0 if cfg.get("tie_word_embeddings", False) else vocab * h
    return vocab * h + layers * per_layer + h + head


def known_config(model: str, base: Path | str = ".") -> dict[str, Any] | None:
    """The architecture of a sweep's model where it is known without loading anything:
    a synthetic one, or a local checkpoint's config.json; None for a hub id."""
    if model.startswith("synthetic:"):
        return synthetic_config(model, base)
    path = Path(model).expanduser() / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


# Bytes per weight of the linear layers on the card; bitsandbytes quantises only those
# (embeddings and an untied LM head stay 16-bit). NF4 adds a 4-byte scale per 64 weights.
_LINEAR_BYTES = {"fp16": 2.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5 + 4 / 64}
_KV_BYTES = 2  # the cache is kept in the 16-bit compute dtype


def memory_bytes(cfg: dict[str, Any], precision: str, batch: int, tokens: int) -> tuple[int, int]:
    """(weights, KV cache) bytes of a model in ``precision`` holding ``batch`` sequences
    of ``tokens`` tokens: a lower bound on what loading and running it takes on the card
    (activations and the allocator's slack come on top)."""
    h = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    layers = int(cfg["num_hidden_layers"])
    embed = int(cfg["vocab_size"]) * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    linear = parameter_count(cfg) - embed
    weights = int(linear * _LINEAR_BYTES[precision] + embed * 2)
    kv = 2 * layers * kv_heads * head_dim * _KV_BYTES * batch * tokens
    return weights, kv
