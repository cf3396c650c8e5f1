"""Does measuring slow the model down? Decode tok/s of FP16 batch 1 (synthetic
Qwen2-1.5B) in a bare loop, with wattscope's sampler process running at 100 Hz, and
(``--live``) with the sampler and the live app drawing on a terminal beside it.
``--engine graphs`` decodes from captured CUDA graphs: eager batch-1 legs spread more
than the effect looked for (a 1% slow-down cannot be seen under 10% noise).

    python benchmarks/observer_effect.py --json out/observer_effect.json          # GPU machine
    python benchmarks/observer_effect.py --device cpu --sim \\
        --model synthetic:tests/data/tiny_qwen2.json --seconds 2                    # smoke test

Target: the 95% interval of sampled / bare (and live / bare) lies at or above 0.99. Each
round runs one leg of each kind in an order shuffled per round (seeded), so drift in
clocks, temperature or host load falls on all; each ratio and its interval come from the
rounds (wattscope.stats.paired_ratio). As in a real run, this process (the model's) is
pinned to one core and the sampler to another when the machine has enough cores; the app
of the live leg (``wattscope demo`` in a pseudo-terminal of 160x45, drawing at its default
rate: the same app a live run shows, fed by a recording instead of the sampler) keeps the
other cores, as a run's parent process does. It needs Textual on the machine.
On CUDA it also counts host synchronisations inside one prefill and one decode run
(torch.cuda.set_sync_debug_mode): the protocol needs 0, so a window's calls queue freely.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue as queue_mod
import pty
import random
import statistics
import subprocess
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


class _LiveApp:
    """The live app drawing on a pseudo-terminal, its output read and dropped as a
    terminal would."""

    def __init__(self, cpus: tuple[int, ...] | None) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "45"}
        self.proc = subprocess.Popen([sys.executable, "-m", "wattscope", "demo"], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, cwd=ROOT, start_new_session=True)
        os.close(slave)
        if cpus:
            host.pin_set(self.proc.pid, cpus)
        self.master, self.bytes = master, 0
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.bytes += len(chunk)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        self._t.join(5)


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
    ap.add_argument("--live", action="store_true", help="also a leg with the sampler and the live app drawing")
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
        legs: dict[str, list[float]] = {"bare": [], "sampled": []}
        if args.live:
            legs["live"] = []
        sampler_events = app_bytes = 0
        for i in range(args.pairs):
            order = list(legs)
            rng.shuffle(order)
            for leg in order:
                if leg == "bare":
                    time.sleep(args.settle)  # the same pause as the other legs' settle
                    legs["bare"].append(_leg(w, args.steps, args.seconds))
                    continue
                sp = SamplerProcess([spec], rate_hz=args.rate_hz, energy_hz=2.0)
                drain = _Drain(sp.queue)
                sp.start()
                if sp.pid is not None:
                    host.pin(sp.pid, plan.sampler_cpu)
                app = _LiveApp(plan.parent_cpus) if leg == "live" else None
                try:
                    time.sleep(args.settle)
                    legs[leg].append(_leg(w, args.steps, args.seconds))
                finally:  # the app and the sampler never outlive their leg
                    if app is not None:
                        app.close()
                        app_bytes += app.bytes
                    sp.stop()
                    drain.close()
                sampler_events += drain.events
            print(f"round {i + 1} ({' then '.join(order)}): "
                  + ", ".join(f"{k} {v[-1]:.2f} tok/s" for k, v in legs.items()), flush=True)
        w.close()
    finally:
        cache.cleanup()
        if sim_gpu is not None:
            sim_gpu.close()
    bare, sampled = legs["bare"], legs["sampled"]
    est = paired_ratio([s_ / b for s_, b in zip(sampled, bare)])
    live = paired_ratio([x / b for x, b in zip(legs["live"], bare)]) if args.live else None
    passed = est.low >= 0.99 and (live is None or live.low >= 0.99)
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
        "live_tok_s": legs.get("live"),
        "live_ratio": live.value if live else None,
        "live_ratio_ci95": [live.low, live.high] if live else None,
        "live_app_output_bytes": app_bytes if live else None,
        "target": "95% interval lower bound >= 0.99 (each ratio)",
        "pass": passed,
        "host_isolation": plan.to_meta(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "sampler_events": sampler_events,
        "host_syncs_in_calls": syncs,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "sweep_protocol": asdict(sweep.protocol),
    }
    print(f"decode tok/s bare {statistics.mean(bare):.2f}, with sampler {statistics.mean(sampled):.2f}: "
          f"ratio {est.value:.4f} [{est.low:.4f}, {est.high:.4f}] over {est.n} rounds"
          + (f"; with the live app {statistics.mean(legs['live']):.2f}: ratio {live.value:.4f} "
             f"[{live.low:.4f}, {live.high:.4f}]" if live else "")
          + f" (target: lower bound >= 0.99) {'PASS' if passed else 'FAIL'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
