"""What the protocol drives: a model (real or simulated) behind four calls.

The protocol never touches torch; it only calls a Workload, so the same windows,
counter reads and events are produced for a real GPU and for the simulated one.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Protocol

from wattscope.errors import EXIT_FAILED, WattscopeError


class Workload(Protocol):
    batch: int
    prompt_len: int

    def prefill(self) -> None:
        """One forward pass over the prompt for the whole batch (work queued, maybe not done)."""

    def prepare_decode(self) -> None:
        """Prefill once and keep the KV cache; not part of any measured call."""

    def decode_run(self, steps: int) -> None:
        """Exactly ``steps`` greedy decode steps from the prefilled cache (no EOS stop);
        every run restarts from the same prefilled cache."""

    def synchronize(self) -> None:
        """Wait until all queued work is done."""

    def run_info(self) -> dict[str, Any]:
        """What was learned while running (e.g. peak memory), merged into the row's info."""

    def close(self) -> None:
        """Free what the workload holds (model, cache, GPU memory)."""


class WorkloadError(WattscopeError, RuntimeError):
    """A configuration cannot run; the message is the short reason shown in its row."""

    exit_code = EXIT_FAILED


def prompt_ids(seed: int, batch: int, prompt_tokens: int, vocab_size: int) -> list[list[int]]:
    """The prompt token ids of a (model, batch): seeded only by the protocol seed and the
    shapes, so every precision of a model and batch sees exactly the same prompt."""
    if vocab_size < 1:
        raise WorkloadError(f"vocab_size must be >= 1, got {vocab_size}")
    rng = random.Random(f"wattscope-prompt/{seed}/{batch}/{prompt_tokens}/{vocab_size}")
    return [[rng.randrange(vocab_size) for _ in range(prompt_tokens)] for _ in range(batch)]


def prompt_digest(ids: list[list[int]]) -> str:
    """Short fingerprint of a prompt, kept in each configuration's info."""
    return hashlib.sha1(repr(ids).encode()).hexdigest()[:16]


REASON_CHARS = 200


def short_reason(text: str) -> str:
    """First line, first sentence where one ends early, at most REASON_CHARS."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    cut = line.find(". ")
    if 0 < cut < REASON_CHARS:
        line = line[: cut + 1]
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 1] + "…"


def describe_exception(e: BaseException) -> str:
    """A short reason for a failed row: out of memory, bitsandbytes missing... named as such."""
    text = short_reason(str(e))
    name = type(e).__name__
    if "OutOfMemory" in name or "out of memory" in text.lower():
        return short_reason("CUDA out of memory" + (f": {text}" if text else ""))
    if isinstance(e, WorkloadError):
        return text or name
    if isinstance(e, ImportError):
        return short_reason(f"missing package: {text}")
    return short_reason(f"{name}: {text}") if text else name
