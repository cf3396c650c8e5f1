"""Building and loading the model of one configuration, and the workload that runs it.

torch, transformers and bitsandbytes are imported only inside the functions that run a
real model, so nothing the CLI, replay or the light tests import pulls them in.

Synthetic models (``synthetic:<name>`` from ARCHITECTURES, or ``synthetic:path/config.json``)
get random weights: the fp16 model is built once per sweep directly on the device (no
CPU copy on CUDA), saved as safetensors into a cache directory, and every precision is
loaded from that cache, so INT8 and NF4 are quantised from the very weights FP16 runs.

A model may span several GPUs (``devices`` of more than one ``cuda:N``): transformers
places it with ``device_map="auto"`` limited (``max_memory``) to exactly those cards. A
synthetic model in FP16 or BF16 is then built in place, already split (its weights may
not fit one card, nor the disk), and every precision's layer placement is recorded in
``info["device_map"]``; a quantised synthetic row is quantised from the cached FP16
weights, which are built on the first card.

On CPU (tests, no GPU) "fp16" runs in float32, because CPU half-precision matmuls are
slow and partly unsupported, and "bf16" in bfloat16; INT8 and NF4 need CUDA and
bitsandbytes and fail with a clear reason.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from wattscope.architectures import synthetic_config
from wattscope.bench.workload import WorkloadError, prompt_digest, prompt_ids, short_reason
from wattscope.config import QUANTISED, BitsAndBytes, RunConfig, Sweep


def bnb_settings(precision: str, bnb: BitsAndBytes) -> dict[str, Any] | None:
    """The exact bitsandbytes settings a precision loads with (None for fp16/bf16)."""
    if precision == "int8":
        return {"load_in_8bit": True, "llm_int8_threshold": bnb.llm_int8_threshold}
    if precision == "nf4":
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": bnb.nf4_compute_dtype,
            "bnb_4bit_use_double_quant": bnb.nf4_double_quant,
        }
    return None


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _dtype(precision: str, device: str):
    import torch

    if precision == "bf16":
        return torch.bfloat16
    # fp16, and the unquantised parts (embeddings, norms, LM head) of int8/nf4
    return torch.float16 if _is_cuda(device) else torch.float32


def _check_device(precision: str, device: str) -> None:
    import torch

    if _is_cuda(device) and not torch.cuda.is_available():
        raise WorkloadError(f"device {device} asked for, but CUDA is not available to torch {torch.__version__}")
    if precision in QUANTISED:
        label = "int8 (LLM.int8)" if precision == "int8" else "nf4"
        if not _is_cuda(device):
            raise WorkloadError(f"{label} needs CUDA + bitsandbytes; this run is on {device}")
        try:
            import bitsandbytes  # noqa: F401
        except Exception as e:  # a broken install raises more than ImportError
            raise WorkloadError(f"{label} needs CUDA + bitsandbytes: bitsandbytes cannot be imported ({e})") from None
    if precision == "bf16" and _is_cuda(device) and not torch.cuda.is_bf16_supported():
        raise WorkloadError(f"bf16 is not supported by {torch.cuda.get_device_name(device)}")


def _quantization_config(precision: str, bnb: BitsAndBytes):
    from transformers import BitsAndBytesConfig
    import torch

    settings = bnb_settings(precision, bnb)
    if settings is None:
        return None
    if precision == "nf4":
        settings = dict(settings, bnb_4bit_compute_dtype=getattr(torch, bnb.nf4_compute_dtype))
    return BitsAndBytesConfig(**settings)


class WeightCache:
    """Synthetic fp16 weights of a sweep, saved once per model and loaded per precision."""

    def __init__(self, root: str | Path | None = None) -> None:
        self._root = Path(root) if root is not None else None
        self._dir: Path | None = None
        self._saved: dict[str, tuple[Path, float]] = {}
        self._failed: dict[str, WorkloadError] = {}

    def path_for(self, model: str, sweep: Sweep, device: str) -> tuple[Path, float]:
        """Directory holding the model's synthetic weights, and the seconds it took to make them."""
        if model in self._failed:
            raise self._failed[model]
        if model not in self._saved:
            if self._dir is None:
                if self._root is not None:
                    self._root.mkdir(parents=True, exist_ok=True)
                self._dir = Path(tempfile.mkdtemp(prefix="wattscope-weights-", dir=self._root))
            out = self._dir / f"m{len(self._saved) + len(self._failed)}"
            t0 = time.perf_counter()
            try:
                _build_synthetic(model, sweep, device, out)
            except WorkloadError as e:
                # Every precision of this model would fail the same way: fail them fast.
                self._failed[model] = e
                raise
            self._saved[model] = (out, time.perf_counter() - t0)
        return self._saved[model]

    def forget(self, model: str) -> None:
        """Delete one model's weights once no later configuration needs them (disk)."""
        entry = self._saved.pop(model, None)
        if entry is not None:
            shutil.rmtree(entry[0], ignore_errors=True)

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._saved.clear()
        self._failed.clear()


def _hf_config(cfg: dict[str, Any]):
    from transformers import AutoConfig

    d = dict(cfg)
    model_type = d.pop("model_type")
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype", "quantization_config"):
        d.pop(key, None)
    return AutoConfig.for_model(model_type, **d)


def _build_synthetic(model: str, sweep: Sweep, device: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        cfg = _hf_config(synthetic_config(model, Path(sweep.source).parent))
    except (ValueError, KeyError, TypeError) as e:
        raise WorkloadError(short_reason(f"{model}: cannot build the synthetic model: {e}")) from None
    torch.manual_seed(sweep.protocol.seed)
    # Parameters are created and initialised on the device itself: a 6B model never
    # passes through host memory.
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=_dtype("fp16", device))
    m.save_pretrained(out)
    del m
    release_memory()


# Share of a card's free memory the weights may take when a model spans several cards;
# the rest holds activations and the KV cache.
WEIGHT_SHARE = 0.92


def device_list(device: str | Sequence[str]) -> tuple[str, ...]:
    """One device or several, as a tuple; several must be CUDA devices (a split model)."""
    devices = (device,) if isinstance(device, str) else tuple(device)
    if not devices:
        raise WorkloadError("no device to run the model on")
    if len(devices) > 1 and not all(d.startswith("cuda:") for d in devices):
        raise WorkloadError(f"a model split over several devices needs cuda:N devices, got {', '.join(devices)}")
    return devices


def _max_memory(devices: tuple[str, ...]) -> dict[int | str, int]:
    """What device_map="auto" may put on each listed card: nothing on any other card,
    nothing on the CPU (an offloaded layer would measure the PCIe bus, not the GPUs)."""
    import torch

    budget: dict[int | str, int] = {}
    for d in devices:
        free, _ = torch.cuda.mem_get_info(torch.device(d))
        budget[torch.device(d).index or 0] = int(free * WEIGHT_SHARE)
    budget["cpu"] = 0
    return budget


def _placement(model: Any) -> dict[str, str]:
    """Module -> device of a split model, as transformers/accelerate placed it."""
    return {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}


def _build_split(rc: RunConfig, sweep: Sweep, devices: tuple[str, ...], dtype: Any) -> Any:
    """A synthetic model built in place over several cards: empty on the meta device,
    placed by device_map="auto" within ``_max_memory``, each weight then drawn on its own
    card (seeded), and dispatched so activations move between the cards."""
    import torch
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, set_module_tensor_to_device
    from transformers import AutoModelForCausalLM

    try:
        cfg = _hf_config(synthetic_config(rc.model, Path(sweep.source).parent))
    except (ValueError, KeyError, TypeError) as e:
        raise WorkloadError(short_reason(f"{rc.model}: cannot build the synthetic model: {e}")) from None
    # Buffers (rotary frequencies) are computed for real; only the weights start empty.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    no_split = getattr(model, "_no_split_modules", None) or []
    budget = _max_memory(devices)
    balanced = get_balanced_memory(model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype)
    device_map = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=no_split, dtype=dtype)
    if any(v in ("cpu", "disk") for v in device_map.values()):
        # Balancing keeps a margin per card; a model that fills the cards needs them whole.
        device_map = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype)
    if any(v in ("cpu", "disk") for v in device_map.values()):
        raise WorkloadError(f"{rc.model} does not fit on {', '.join(devices)} in {rc.precision}")
    std = float(getattr(cfg, "initializer_range", 0.02))
    generator: dict[int, Any] = {}
    for name, param in list(model.named_parameters()):
        where = next(v for k, v in sorted(device_map.items(), key=lambda kv: -len(kv[0]))
                     if k == "" or name == k or name.startswith(k + "."))
        dev = torch.device("cuda", where) if isinstance(where, int) else torch.device(where)
        gen = generator.setdefault(dev.index or 0, torch.Generator(dev).manual_seed(sweep.protocol.seed))
        value = torch.empty(param.shape, dtype=dtype, device=dev)
        if param.dim() >= 2:
            value.normal_(0.0, std, generator=gen)
        else:  # norms' scales start at 1, biases at 0, as transformers initialises them
            value.fill_(1.0 if name.endswith("weight") else 0.0)
        set_module_tensor_to_device(model, name, dev, value=value)
    model.tie_weights()
    model = dispatch_model(model, device_map=device_map)
    model.hf_device_map = device_map
    return model


def load_model(rc: RunConfig, sweep: Sweep, device: str | Sequence[str], cache: WeightCache,
               info: dict[str, Any]) -> Any:
    """The model of one configuration, in its precision, on the device (or split over
    the devices). What is learned on the way (versions, device, settings, load time,
    size) goes into ``info``, also when loading fails with a WorkloadError (short
    reason) or another exception."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    devices = device_list(device)
    device = devices[0]
    info.update(
        model=rc.model,
        precision=rc.precision,
        synthetic=rc.synthetic,
        device=device if len(devices) == 1 else list(devices),
        bitsandbytes=bnb_settings(rc.precision, sweep.bitsandbytes),
        versions={"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__},
    )
    if _is_cuda(device) and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        info["compute_capability"] = f"{major}.{minor}"
        info["device_name"] = torch.cuda.get_device_name(device)
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
    elif not _is_cuda(device):
        info["device_name"] = device
    _check_device(rc.precision, device)
    if rc.precision in QUANTISED:
        import bitsandbytes

        info["versions"]["bitsandbytes"] = bitsandbytes.__version__

    source: str | Path = rc.model
    local = Path(rc.model).expanduser()
    if not rc.synthetic and rc.model.startswith(("/", ".", "~")) and not local.exists():
        raise WorkloadError(f"model path {rc.model} does not exist")
    if not rc.synthetic and local.exists():
        source = local
    dtype = _dtype(rc.precision, device)
    split = len(devices) > 1
    if split and rc.synthetic and rc.precision not in QUANTISED:
        t0 = time.perf_counter()
        model = _build_split(rc, sweep, devices, dtype)
        info["synthetic_build_s"] = round(time.perf_counter() - t0, 3)
    else:
        if rc.synthetic:
            source, build_s = cache.path_for(rc.model, sweep, device)
            info["synthetic_build_s"] = round(build_s, 3)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if split:
            kwargs["device_map"] = "auto"
            kwargs["max_memory"] = _max_memory(devices)
        elif _is_cuda(device):
            kwargs["device_map"] = {"": torch.device(device)}
        qc = _quantization_config(rc.precision, sweep.bitsandbytes)
        if qc is not None:
            kwargs["quantization_config"] = qc
        t0 = time.perf_counter()
        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as e:
            raise WorkloadError(short_reason(f"model {rc.model} failed to load: {e}")) from e
    if not _is_cuda(device):
        # transformers types .to() for a PreTrainedModel receiver its stubs cannot see here.
        cast(Any, model).to(device)
    model.eval()
    for d in devices:
        if _is_cuda(d):
            torch.cuda.synchronize(d)
    info["load_s"] = round(time.perf_counter() - t0, 3)
    if split:
        info["device_map"] = _placement(model)
    info["dtype"] = str(dtype).removeprefix("torch.")
    info["params"] = int(model.num_parameters())
    info["memory_footprint_bytes"] = int(model.get_memory_footprint())
    info["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    return model


class ModelWorkload:
    """A transformers causal LM behind the Workload calls. Nothing inside prefill() or
    decode_run() reads a value back to the host, so a window's calls queue on the GPU
    without a synchronisation until the window's edge."""

    def __init__(self, model: Any, ids: list[list[int]], device: str, devices: Sequence[str] = ()) -> None:
        """``device`` holds the inputs (the first card); ``devices`` every card the model
        spans (default: ``device`` alone), which synchronize() waits for."""
        import torch

        self.model = model
        self.device = device
        self.devices = tuple(devices) or (device,)
        self.batch = len(ids)
        self.prompt_len = len(ids[0])
        self.ids: Any = torch.tensor(ids, dtype=torch.long, device=device)
        self._cache: Any = None
        self._first: Any = None

    def _forward(self, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(**kwargs)

    def prefill(self) -> None:
        # Only the last position's logits, as generate() does (logits_to_keep=1): the
        # prompt's other logits are never used in inference.
        self._forward(input_ids=self.ids, use_cache=True, logits_to_keep=1)

    def prepare_decode(self) -> None:
        from transformers import DynamicCache

        self._cache = DynamicCache(config=self.model.config)
        out = self._forward(input_ids=self.ids, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        self._first = out.logits[:, -1:].argmax(-1)

    def decode_run(self, steps: int) -> None:
        if self._cache is None:
            raise WorkloadError("decode_run before prepare_decode")
        extra = self._cache.get_seq_length() - self.prompt_len
        if extra > 0:
            # A negative count removes that many tokens (the positive, absolute form is
            # deprecated in transformers 5.17): back to exactly the prefilled prompt.
            self._cache.crop(-extra)
        token = self._first
        for _ in range(steps):
            out = self._forward(input_ids=token, past_key_values=self._cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)  # greedy, stays on the device

    def synchronize(self) -> None:
        if _is_cuda(self.device):
            import torch

            for d in self.devices:
                torch.cuda.synchronize(d)

    def run_info(self) -> dict[str, Any]:
        if not _is_cuda(self.device):
            return {}
        import torch

        peaks = [int(torch.cuda.max_memory_allocated(d)) for d in self.devices]
        out: dict[str, Any] = {"peak_memory_bytes": sum(peaks)}
        if len(peaks) > 1:
            out["peak_memory_bytes_per_device"] = peaks
        return out

    def close(self) -> None:
        self._cache = self._first = self.ids = None
        self.model = None


def single_cpu_thread() -> None:
    """One CPU thread for torch: on a process pinned to one core, its thread pool would
    only compete with the thread that launches the kernels."""
    import torch

    torch.set_num_threads(1)


def release_memory() -> None:
    """Give freed GPU memory back between configurations (after an OOM above all)."""
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_and_prompt(
    rc: RunConfig, sweep: Sweep, device: str | Sequence[str], cache: WeightCache, info: dict[str, Any]
) -> tuple[Any, list[list[int]]]:
    """The configuration's model and its seeded prompt (the same for every precision)."""
    model = load_model(rc, sweep, device, cache, info)
    p = sweep.protocol
    vocab = int(model.config.get_text_config().vocab_size)
    ids = prompt_ids(p.seed, rc.batch, p.prompt_tokens, vocab)
    info["prompt_sha1"] = prompt_digest(ids)
    info["prompt_tokens"] = p.prompt_tokens
    return model, ids
