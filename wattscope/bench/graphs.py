"""The "graphs" engine: prefill and greedy decode on static KV caches, each captured in
a CUDA graph and replayed, so the host launches one graph per call or token instead of
hundreds of kernels, and batch-1 work is no longer paced by the Python process.

Measured on an H100 (benchmarks/switch_probe.py, 2026-11-27): with the eager engine,
windows of batch-1 prefill and decode varied 9-14% from round to round even with the
process pinned, and the first window after a switch was not the cause (it was 0.92-1.06
times the later ones); the host launching kernels was. Batch-8 prefill varied 1-2%.

Why an earlier attempt failed (``index_copy_(): index out of bounds`` on replay 27 of 32):
in transformers 5.x each StaticCache layer writes at its own device counter
(``cumulative_length``), advanced in place by every forward, warm-ups and replays
included, and Qwen2 takes positions from that counter, ignoring ``cache_position``; so
refilling a ``cache_position`` tensor rewound nothing and the write index ran into
``max_cache_len`` (192 = 128 prompt + 32 eager steps + warm-ups + replays). Here every
run rewinds the counters themselves.

Each run replays a small reset graph (counters back to the prompt length, first token
back in the input buffer), then one step graph per token. The step graph writes the
next token into the buffer it reads, and the counters advance inside it, so nothing is
read back to the host. Keys and values left beyond the prompt by an earlier run are
masked by the static cache's causal mask until they are overwritten.

One step is captured, not a whole run, so any ``steps`` up to ``max_steps`` replays the
same graph and capture costs one step of memory. The cache holds exactly
``prompt_len + max_steps`` positions: attention covers the whole static length (masked),
so a larger cache would add work the eager engine does not do.

torch is imported inside the functions that need it, as in models.py.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from wattscope.bench.models import ModelWorkload
from wattscope.bench.workload import WorkloadError, describe_exception
from wattscope.config import Protocol

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS handles, workspaces)
CHECK_STEPS = 4  # replays compared against eager steps when the graph is made
# A replayed step must give the eager step's logits up to fp16 rounding; a capture that
# froze a host-side decision (e.g. which columns are outliers) is off by far more.
CHECK_RTOL = 1e-2


def _counters(cache: Any) -> list[Any]:
    """The per-layer write-position tensors of a StaticCache (transformers 5.x)."""
    import torch
    import transformers

    found = [getattr(layer, "cumulative_length", None) for layer in cache.layers]
    if not found or not all(isinstance(c, torch.Tensor) for c in found):
        raise WorkloadError(
            f"graphs engine: transformers {transformers.__version__} StaticCache layers have no position "
            "counter (cumulative_length); supported: transformers 5.x"
        )
    return found


def _first_error(e: BaseException) -> BaseException:
    """The error that started it: a failure inside a capture surfaces as the capture's own
    "operation failed due to a previous error during capture", raised while handling it."""
    while e.__context__ is not None:
        e = e.__context__
    return e


class StaticDecode:
    """Greedy decode on a StaticCache filled with the eager engine's prefilled cache.

    Every tensor a step touches keeps its address: the input token buffer, the cache and
    its position counters, so ``step()`` can be captured once and replayed. Works the same
    on the CPU (eagerly), which is how its logic is tested without a GPU.
    """

    def __init__(self, forward: Callable[..., Any], config: Any, prefilled: Any, first: Any, max_steps: int) -> None:
        import torch
        from transformers import StaticCache

        if max_steps < 1:
            raise WorkloadError(f"graphs engine: max_steps must be >= 1, got {max_steps}")
        self._forward = forward
        self.prompt_len = int(prefilled.get_seq_length())
        self.max_steps = max_steps
        self.cache = StaticCache(config=config, max_cache_len=self.prompt_len + max_steps)
        with torch.inference_mode():
            # The prompt's keys and values exactly as the eager prefill computed them.
            for i, layer in enumerate(prefilled.layers):
                self.cache.update(layer.keys, layer.values, i)
        self._counters = _counters(self.cache)
        self.first = first
        self.token = first.clone()
        self.logits: Any = None

    def reset(self) -> None:
        """Back to the prefilled prompt: counters rewound, first token in the input buffer."""
        import torch

        with torch.inference_mode():
            for c in self._counters:
                c.fill_(self.prompt_len)
            self.token.copy_(self.first)

    def step(self) -> None:
        """One greedy step: the next token replaces the input token, on the device."""
        out = self._forward(input_ids=self.token, past_key_values=self.cache, use_cache=True)
        self.logits = out.logits[:, -1]
        self.token.copy_(self.logits.argmax(-1, keepdim=True))

    def positions(self) -> list[int]:
        """Each layer's next write position (reads back; for checks)."""
        return [int(c) for c in self._counters]

    def check_steps(self, steps: int) -> None:
        if steps > self.max_steps:
            raise WorkloadError(f"graphs engine: {steps} decode steps asked for, the static cache holds {self.max_steps}")

    def trace(self, steps: int) -> list[Any]:
        """Logits of each step of one eager run from the prompt (float32 copies; for checks)."""
        self.check_steps(steps)
        self.reset()
        out = []
        for _ in range(steps):
            self.step()
            out.append(self.logits.float().clone())
        return out


def _check_logits(what: str, eager: Any, replayed: Any) -> bool:
    """A replay must compute what the eager call computes, up to fp16 rounding, and pick
    the same tokens, except at a near tie: where the eager logits of the two picks are
    within that rounding of each other the computations agree, but the greedy paths part
    there. Returns False at such a tie (later steps then follow different tokens and
    cannot be compared). Random (synthetic) weights make near ties common."""
    import torch

    scale = float(eager.abs().max()) or 1.0
    tolerance = CHECK_RTOL * scale
    err = float((eager - replayed).abs().max())
    if not err <= tolerance:  # also catches NaN
        raise WorkloadError(f"graph replay disagrees with eager {what}: max |logit diff| {err:.3g} (scale {scale:.3g})")
    mine, theirs = eager.argmax(-1, keepdim=True), replayed.argmax(-1, keepdim=True)
    if torch.equal(mine, theirs):
        return True
    gap = float((eager.gather(-1, mine) - eager.gather(-1, theirs)).max())
    if gap > tolerance:
        raise WorkloadError(
            f"graph replay picks other tokens than eager {what} (eager logits {gap:.3g} apart, more than the tolerance {tolerance:.3g})"
        )
    return False


class StaticPrefill:
    """One prefill of the whole batch into a StaticCache of exactly the prompt's length,
    its position counters rewound to 0 first, so the same call can be captured once and
    replayed. The eager engine's prefill writes the prompt's keys and values too (into a
    new dynamic cache per call); attention covers the prompt in both. Works the same on
    the CPU (eagerly), which is how it is tested without a GPU."""

    def __init__(self, forward: Callable[..., Any], config: Any, ids: Any) -> None:
        from transformers import StaticCache

        self._forward = forward
        self.ids = ids
        self.cache = StaticCache(config=config, max_cache_len=int(ids.shape[1]))
        # The layers make their counters at their first write (lazy initialisation).
        self._counters: list[Any] | None = None
        self.logits: Any = None

    def run(self) -> None:
        import torch

        if self._counters is not None:
            with torch.inference_mode():
                for c in self._counters:
                    c.zero_()
        out = self._forward(input_ids=self.ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1]
        if self._counters is None:
            self._counters = _counters(self.cache)

    def positions(self) -> list[int]:
        """Each layer's next write position (reads back; for checks)."""
        return [int(c) for c in (self._counters or [])]


def _capture_reason(model: Any, e: BaseException) -> str:
    reason = describe_exception(_first_error(e))
    if getattr(model, "is_loaded_in_8bit", False):
        # Measured on the H100: LLM.int8's outlier decomposition (threshold > 0)
        # synchronises with the host inside a step. Threshold 0.0 captures, but INT8's
        # row-wise input quantisation grows the replay's rounding-level differences past
        # the replay check (7% of the logits' scale on Qwen2-1.5B, 2026-11-28;
        # benchmarks/int8_graph_probe.py), so naming it here would send users to another
        # failed row.
        reason += " (LLM.int8 with llm_int8_threshold > 0 cannot be captured; INT8 needs engine = \"eager\")"
    return reason


class GraphsWorkload(ModelWorkload):
    """The Workload protocol with both phases replayed from CUDA graphs. The first
    prefill() captures the prefill (StaticPrefill) and checks its replay against the eager
    prefill's logits; prepare_decode() prefills as the eager engine does, moves that cache
    into a StaticCache, captures one step and checks replays against eager steps. A model
    whose call cannot be captured, or whose replay disagrees, fails there with a
    WorkloadError."""

    def __init__(self, model: Any, ids: list[list[int]], device: str, max_steps: int | None = None) -> None:
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise WorkloadError("graphs engine needs CUDA")
        super().__init__(model, ids, device)
        self.max_steps = Protocol().decode_steps if max_steps is None else max_steps
        self._decode: StaticDecode | None = None
        self._step_graph: Any = None
        self._reset_graph: Any = None
        self._logits: Any = None  # the step graph's output, rewritten by every replay
        self._capture_s = 0.0
        self._prefill_graph: Any = None
        self._prefill: StaticPrefill | None = None
        self._checked_steps = 0  # replayed decode steps compared with eager ones

    def prefill(self) -> None:
        if self._prefill_graph is None:
            self._capture_prefill()
        self._prefill_graph.replay()

    def _capture_prefill(self) -> None:
        import torch

        t0 = time.perf_counter()
        eager = self._forward(input_ids=self.ids, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        static = StaticPrefill(self._forward, self.model.config, self.ids)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    static.run()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode():
                with torch.cuda.graph(graph):
                    static.run()
        except Exception as e:  # capture refuses host syncs, pageable copies, ...
            raise WorkloadError(f"prefill cannot be captured in a CUDA graph: {_capture_reason(self.model, e)}") from e
        for _ in range(2):  # twice: a replay must not depend on what the one before left
            graph.replay()
            torch.cuda.synchronize(self.device)
            _check_logits("prefill", eager, static.logits.float())
        self._prefill, self._prefill_graph = static, graph
        self._capture_s += time.perf_counter() - t0

    def prepare_decode(self) -> None:
        import torch

        super().prepare_decode()
        decode = StaticDecode(self._forward, self.model.config, self._cache, self._first, self.max_steps)
        self._cache = None  # the dynamic cache's job ends here
        t0 = time.perf_counter()
        try:
            self._step_graph, self._reset_graph, self._logits = self._capture(decode)
        except Exception as e:  # capture refuses host syncs, pageable copies, ...
            raise WorkloadError(f"decode step cannot be captured in a CUDA graph: {_capture_reason(self.model, e)}") from e
        self._decode = decode
        self._check_replay(decode)
        torch.cuda.synchronize(self.device)
        self._capture_s += time.perf_counter() - t0

    def _capture(self, decode: StaticDecode) -> tuple[Any, Any, Any]:
        import torch

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            decode.reset()
            for _ in range(WARMUP_STEPS):
                decode.step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        step, reset = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.inference_mode():
            with torch.cuda.graph(step):
                decode.step()
            with torch.cuda.graph(reset, pool=step.pool()):
                decode.reset()
        return step, reset, decode.logits

    def _check_replay(self, decode: StaticDecode) -> None:
        """Replays must compute what eager steps compute, and advance the counters."""
        steps = min(CHECK_STEPS, self.max_steps)
        eager = decode.trace(steps)
        replayed = self.trace(steps)
        self._checked_steps = 0
        for i, (e, r) in enumerate(zip(eager, replayed)):
            self._checked_steps = i + 1
            if not _check_logits(f"decode at step {i + 1}", e, r):
                break  # a near tie: the two greedy paths part here
        expected = [decode.prompt_len + steps] * len(decode.positions())
        if decode.positions() != expected:
            raise WorkloadError(f"graph replay left cache positions at {sorted(set(decode.positions()))}, expected {expected[0]}")

    def _ready(self, steps: int) -> tuple[Any, Any]:
        if self._decode is None:
            raise WorkloadError("decode_run before prepare_decode")
        self._decode.check_steps(steps)
        return self._step_graph, self._reset_graph

    def decode_run(self, steps: int) -> None:
        step, reset = self._ready(steps)
        reset.replay()
        for _ in range(steps):
            step.replay()

    def trace(self, steps: int) -> list[Any]:
        """Logits of each replayed step of one run from the prompt (float32 copies; for checks)."""
        step, reset = self._ready(steps)
        reset.replay()
        out = []
        for _ in range(steps):
            step.replay()
            out.append(self._logits.float().clone())
        return out

    def run_info(self) -> dict[str, Any]:
        info = super().run_info()
        if self._decode is not None:
            info["static_cache_len"] = self._decode.prompt_len + self._decode.max_steps
            info["graph_capture_s"] = round(self._capture_s, 3)
            info["graph_checked_steps"] = self._checked_steps
        return info

    def close(self) -> None:
        self._step_graph = self._reset_graph = self._logits = self._decode = None
        self._prefill_graph = self._prefill = None
        super().close()
