"""The workload of ``--sim``: no model, a simulated GPU whose power it sets per call.

It runs under the same protocol as a real model (same windows, counter reads and
events); only the calls differ: each call sets the simulated GPU's true power and
lasts the call's simulated duration. Timing is compressed (PREFILL_TIME_SCALE,
DECODE_TIME_SCALE) so that a whole sweep takes seconds; figures from it are a demo, not
measurements: ratios between precisions keep the seed study's shape, absolute joules
and tok/s do not.

The shape follows the seed study: decode at batch 1 is host-launch bound (time per
step grows with the number of layers, ~32 tok/s for Qwen2-1.5B in FP16 before scaling),
LLM.int8 is much slower at low power, NF4 slower than FP16, BF16 close to FP16, batch
8 draws more power, bigger models spend more energy, and the first windows on a cold
card run high. The host is noisy as a shared VM is: every call's duration carries a
seeded random factor (HOST_JITTER) and a slow drift common to every precision
(DRIFT_AMPLITUDE over DRIFT_PERIOD_S of busy time), which interleaved rounds must cancel.
Variation is seeded, so a sweep's sequence of calls is reproducible.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wattscope.architectures import ARCHITECTURES, SyntheticModelError, parameter_count, synthetic_config
from wattscope.bench.models import bnb_settings
from wattscope.bench.workload import WorkloadError, prompt_digest, prompt_ids
from wattscope.config import RunConfig, Sweep

# Simulated seconds per real second of the modelled GPU. Decode: the slowest run of the
# seed matrix (Yi-1.5-6B, batch 8, LLM.int8) lasts ~20 ms instead of ~6 s, so a 0.15 s
# window holds several and its warm-up calls cost little. Prefill: a call lasts >= ~1 ms, so Python's per-call overhead
# (tens of microseconds) stays small next to it.
PREFILL_TIME_SCALE = 0.04
DECODE_TIME_SCALE = 0.003
LAUNCH_S_PER_LAYER_DECODE = 1.1e-3  # ~31 ms a step for 28 layers: host-launch bound
LAUNCH_S_PER_LAYER_PREFILL = 1.0e-3
MEMORY_BW_BYTES_S = 3.0e12
TENSOR_FLOPS = 3.5e14
COLD_EXTRA = 0.25  # the first windows on a cold card run ~25% high...
COLD_TAU_S = 0.1  # ...fading over this much simulated busy time
HOST_JITTER = 0.03  # log-sd of a call's duration (scheduling of the launching thread)
DRIFT_AMPLITUDE = 0.10  # slow common drift of call durations...
DRIFT_PERIOD_S = 20.0  # ...over this much simulated busy time (minutes on a real card)


@dataclass(frozen=True)
class PrecisionShape:
    prefill_time: float
    decode_time: float
    prefill_power: float  # scales the power above idle
    decode_power: float
    weight_bytes: float  # per parameter


SHAPES: dict[str, PrecisionShape] = {
    "fp16": PrecisionShape(1.0, 1.0, 1.0, 1.0, 2.0),
    "bf16": PrecisionShape(1.02, 1.01, 1.0, 1.0, 2.0),
    "int8": PrecisionShape(3.4, 4.6, 0.55, 0.7, 1.0),  # outlier decomposition, threshold 6.0
    "nf4": PrecisionShape(1.5, 1.9, 0.8, 0.9, 0.55),
}


class LoadSetter(Protocol):
    def set_load_w(self, w: float) -> None: ...


def _architecture(rc: RunConfig, sweep: Sweep) -> dict[str, Any]:
    if rc.synthetic:
        try:
            return synthetic_config(rc.model, Path(sweep.source).parent)
        except SyntheticModelError as e:
            raise WorkloadError(str(e)) from None
    # A hub id or path is not loaded in simulation: take the known architecture of the
    # same name, else the smallest seed model's.
    return dict(ARCHITECTURES.get(rc.model_label, ARCHITECTURES["Qwen2-1.5B"]))


class SimClock:
    """Busy time of the simulated card over the whole sweep (its warm-up state) and the
    simulated host's noise (seeded)."""

    def __init__(self, seed: int = 0) -> None:
        self.busy_s = 0.0
        self._rng = random.Random(f"wattscope-sim-host/{seed}")

    def cold_factor(self) -> float:
        return 1.0 + COLD_EXTRA * math.exp(-self.busy_s / COLD_TAU_S)

    def host_factor(self) -> float:
        """How much longer than nominal the next call takes on this host."""
        drift = 1.0 + DRIFT_AMPLITUDE * math.sin(2 * math.pi * self.busy_s / DRIFT_PERIOD_S)
        return drift * math.exp(self._rng.gauss(0.0, HOST_JITTER))


class SimWorkload:
    """Calls queue on the simulated card like kernels on a GPU: a call returns once the
    previous one is done (queue depth 1), and synchronize() waits for the last one."""

    def __init__(self, rc: RunConfig, sweep: Sweep, gpu: LoadSetter, idle_w: float, tdp_w: float, clock: SimClock) -> None:
        arch = _architecture(rc, sweep)
        p = sweep.protocol
        shape = SHAPES[rc.precision]
        params = parameter_count(arch)
        layers = int(arch["num_hidden_layers"])
        rng = random.Random(f"wattscope-sim/{sweep.sim.seed}/{rc.config_id}")
        self.batch = rc.batch
        self.prompt_len = p.prompt_tokens
        self._gpu, self._idle_w, self._clock = gpu, idle_w, clock
        self._rng = rng
        span = tdp_w - idle_w
        size = params / 1.5e9
        b = rc.batch

        step = LAUNCH_S_PER_LAYER_DECODE * layers + params * shape.weight_bytes / MEMORY_BW_BYTES_S
        step *= shape.decode_time * (1 + 0.015 * (b - 1)) * rng.uniform(0.97, 1.03)
        self._decode_step_s = step * DECODE_TIME_SCALE
        self._decode_w = idle_w + span * min(0.9, (0.14 + 0.02 * size) * (1 + 0.06 * (b - 1)) * shape.decode_power) * rng.uniform(0.97, 1.03)

        compute = 2.0 * params * b * p.prompt_tokens / TENSOR_FLOPS
        prefill = (LAUNCH_S_PER_LAYER_PREFILL * layers + compute) * shape.prefill_time * rng.uniform(0.97, 1.03)
        self._prefill_s = prefill * PREFILL_TIME_SCALE
        busy = compute / (LAUNCH_S_PER_LAYER_PREFILL * layers + compute)
        self._prefill_w = idle_w + span * min(0.95, (0.2 + 0.7 * busy) * shape.prefill_power) * rng.uniform(0.97, 1.03)
        self._deadline = time.monotonic()
        self.ids = prompt_ids(p.seed, b, p.prompt_tokens, int(arch["vocab_size"]))
        self.info: dict[str, Any] = {
            "model": rc.model,
            "precision": rc.precision,
            "synthetic": rc.synthetic,
            "simulated": True,
            "device": "sim",
            "device_name": "simulated GPU",
            "bitsandbytes": bnb_settings(rc.precision, sweep.bitsandbytes),
            "params": params,
            "sim_time_scale": {"prefill": PREFILL_TIME_SCALE, "decode": DECODE_TIME_SCALE},
            "load_s": 0.0,
            "prompt_sha1": prompt_digest(self.ids),
            "prompt_tokens": p.prompt_tokens,
        }

    def _run(self, seconds: float, watts: float) -> None:
        now = time.monotonic()
        if self._deadline > now:
            time.sleep(self._deadline - now)
        else:
            self._deadline = now  # the card was idle
        jitter = self._rng.uniform(0.99, 1.01)
        self._gpu.set_load_w(self._idle_w + (watts - self._idle_w) * jitter * self._clock.cold_factor())
        seconds *= self._clock.host_factor()
        self._deadline += seconds
        self._clock.busy_s += seconds

    def prefill(self) -> None:
        self._run(self._prefill_s, self._prefill_w)

    def prepare_decode(self) -> None:
        self.prefill()

    def decode_run(self, steps: int) -> None:
        self._run(self._decode_step_s * steps, self._decode_w)

    def synchronize(self) -> None:
        now = time.monotonic()
        if self._deadline > now:
            time.sleep(self._deadline - now)
        self._gpu.set_load_w(self._idle_w)

    def run_info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.synchronize()


def sim_builder(sweep: Sweep, gpu: LoadSetter, idle_w: float, tdp_w: float):
    """The Build function of a simulated sweep (one cold card for the whole sweep)."""
    clock = SimClock(sweep.sim.seed)

    def build(rc: RunConfig, info: dict[str, Any]) -> SimWorkload:
        w = SimWorkload(rc, sweep, gpu, idle_w, tdp_w, clock)
        info.update(w.info)
        return w

    return build
