"""Does measuring slow the model down? Decode tok/s of FP16 batch 1 (synthetic
Qwen2-1.5B) in a bare loop, and with wattscope's sampler process running at 100 Hz.
``--engine graphs`` decodes from captured CUDA graphs: eager batch-1 legs spread more
than the effect looked for (a 1% slow-down cannot be seen under 10% noise).

    python benchmarks/observer_effect.py --json out/observer_effect.json          # GPU machine
    python benchmarks/observer_effect.py --device cpu --sim \\
        --model synthetic:tests/data/tiny_qwen2.json --seconds 2                    # smoke test

Target: the 95% interval of sampled / bare lies at or above 0.99. Each pair runs a bare and
a sampled leg in an order shuffled per pair (seeded), so drift in clocks, temperature or
host load falls on both; the ratio and its interval come from the pairs
(wattscope.stats.paired_ratio). As in a real run, this process (the model's) is pinned
to one core and the sampler to another when the machine has enough cores.
On CUDA it also counts host synchronisations inside one prefill and one decode run
(torch.cuda.set_sync_debug_mode): the protocol needs 0, so a window's calls queue freely.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue as queue_mod
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wattscope import config, host  # noqa: E402
from wattscope.bench import engines, models  # noqa: E402
from wattscope.stats import paired_ratio  # noqa: E402
from wattscope.telemetry import SamplerProcess, SensorSpec, SimGPU, SimSpec  # noqa: E402


def _sweep(model: str, batch: int, steps: int, engine: str) -> config.Sweep:
    text = f"""
name = "observer-effect"
[protocol]
decode_steps = {steps}
engine = "{engine}"
[[matrix]]
models = ["{model}"]
batches = [{batch}]
precisions = ["fp16"]
"""
    return config.parse(text, str(ROOT / "observer_effect.toml"))


def _host_syncs(w: models.ModelWorkload, steps: int) -> int | None:
    """Synchronising CUDA calls made inside prefill() and decode_run() (None off CUDA)."""
    import warnings

    import torch

    if not w.device.startswith("cuda"):
        return None
    w.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            w.prefill()
            w.decode_run(steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    w.synchronize()
    return sum("synchroniz" in str(c.message) for c in caught)


def _leg(w: models.ModelWorkload, steps: int, seconds: float) -> float:
    """Decode tok/s over about ``seconds`` of back-to-back runs (one sync at the end)."""
    w.synchronize()
    t0 = time.perf_counter()
    runs = 0
    while time.perf_counter() - t0 < seconds:
        w.decode_run(steps)
        runs += 1
    w.synchronize()
    return w.batch * steps * runs / (time.perf_counter() - t0)


class _Drain:
    """Keeps the sampler's queue empty, as the session's reader thread does."""

    def __init__(self, q: Any) -> None:
        self.q, self.events, self._stop = q, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.q.get(timeout=0.1)
                self.events += 1
            except queue_mod.Empty:
                pass

    def close(self) -> None:
        self._stop.set()
        self._t.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="synthetic:Qwen2-1.5B")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--engine", default="eager", choices=config.ENGINES)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--gpu", type=int, default=0, help="NVML index the sampler reads")
    ap.add_argument("--rate-hz", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of one leg")
    ap.add_argument("--pairs", type=int, default=8, help="bare/sampled leg pairs")
    ap.add_argument("--seed", type=int, default=0, help="seeds the order within each pair")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after starting the sampler")
    ap.add_argument("--sim", action="store_true", help="sampler reads a simulated GPU (smoke test)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    import transformers

    sweep = _sweep(args.model, args.batch, args.steps, args.engine)
    cache = models.WeightCache(tempfile.mkdtemp(prefix="wattscope-observer-"))
    info: dict[str, Any] = {}
    sim_gpu = SimGPU.create(SimSpec()) if args.sim else None
    spec = SensorSpec.simulated(sim_gpu) if sim_gpu else SensorSpec.nvml(args.gpu)
    plan = host.plan(config.Host(), host.available_cpus())
    host.pin(0, plan.runner_cpu)
    if plan.runner_cpu is not None:
        torch.set_num_threads(1)
    rng = random.Random(f"observer-effect/{args.seed}")
    try:
        w = engines.build_workload(sweep.configs[0], sweep, args.device, cache, info)
        w.prefill()  # the graphs engine captures its prefill at the first call
        w.prepare_decode()
        for _ in range(5):
            w.decode_run(args.steps)
        _leg(w, args.steps, min(args.seconds, 5.0))  # clocks up, caches warm
        syncs = _host_syncs(w, args.steps)
        if syncs:
            print(f"warning: {syncs} host synchronisation(s) inside prefill/decode calls", flush=True)
        bare: list[float] = []
        sampled: list[float] = []
        sampler_events = 0
        for i in range(args.pairs):
            order = ["bare", "sampled"]
            rng.shuffle(order)
            for leg in order:
                if leg == "bare":
                    time.sleep(args.settle)  # the same pause as the sampled leg's settle
                    bare.append(_leg(w, args.steps, args.seconds))
                    continue
                sp = SamplerProcess([spec], rate_hz=args.rate_hz, energy_hz=2.0)
                drain = _Drain(sp.queue)
                sp.start()
                if sp.pid is not None:
                    host.pin(sp.pid, plan.sampler_cpu)
                time.sleep(args.settle)
                sampled.append(_leg(w, args.steps, args.seconds))
                sp.stop()
                drain.close()
                sampler_events += drain.events
            print(f"pair {i + 1} ({' then '.join(order)}): bare {bare[-1]:.2f} tok/s, sampled {sampled[-1]:.2f} tok/s",
                  flush=True)
        w.close()
    finally:
        cache.cleanup()
        if sim_gpu is not None:
            sim_gpu.close()
    est = paired_ratio([s_ / b for s_, b in zip(sampled, bare)])
    passed = est.low >= 0.99
    result = {
        "benchmark": "observer_effect",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "device_name": info.get("device_name"),
        "model": args.model,
        "batch": args.batch,
        "engine": args.engine,
        "weights": "synthetic" if args.model.startswith("synthetic:") else "checkpoint",
        "steps": args.steps,
        "rate_hz": args.rate_hz,
        "leg_s": args.seconds,
        "bare_tok_s": bare,
        "sampled_tok_s": sampled,
        "ratio": est.value,
        "ratio_ci95": [est.low, est.high],
        "pairs": est.n,
        "target": "95% interval lower bound >= 0.99",
        "pass": passed,
        "host_isolation": plan.to_meta(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "sampler_events": sampler_events,
        "host_syncs_in_calls": syncs,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "sweep_protocol": asdict(sweep.protocol),
    }
    print(f"decode tok/s bare {statistics.mean(bare):.2f}, with sampler {statistics.mean(sampled):.2f}: "
          f"ratio {est.value:.4f} [{est.low:.4f}, {est.high:.4f}] over {est.n} pairs "
          f"(target: lower bound >= 0.99) {'PASS' if passed else 'FAIL'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
