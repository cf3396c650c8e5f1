"""Does the graphs decode engine work, and does it steady the energy windows?
Synthetic Qwen2-1.5B (random fp16 weights built on the GPU, as the tool builds them),
prompt 128, 32 greedy decode steps, one GPU:

1. tokens: eager engine vs graphs engine, FP16 batch 1 and 8 (two graph runs must be
   identical; graph replay vs the same static-cache steps run eagerly; vs the eager engine,
   with the logit margin where they part);
2. bitsandbytes: INT8 (threshold 6.0 and 0.0) and NF4, each loaded from the saved fp16
   weights in a child process (a failed capture must not poison the next): captured or
   the reason;
3. FP16 batch-1 decode energy per run: eager and graphs windows interleaved (3 warm-up
   pairs, then 12), each ~2 s of back-to-back runs with both edges on an energy-counter
   update; window-to-window CV of J/run and tok/s per window. Process pinned to one
   core, garbage collector off inside windows. ``--unpinned-pairs N`` repeats this
   afterwards with the launching thread free to move between cores.

    PYTHONUNBUFFERED=1 python benchmarks/graphs_probe.py --unpinned-pairs 8   # writes $OUT/graphs_probe.json

Writes the JSON after every section, so a run cut short still leaves what it measured;
prints a short table last.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wattscope import config  # noqa: E402
from wattscope.bench import models  # noqa: E402
from wattscope.bench.graphs import GraphsWorkload  # noqa: E402
from wattscope.bench.workload import describe_exception, prompt_ids  # noqa: E402

MODEL = "synthetic:Qwen2-1.5B"
PROMPT, STEPS, SEED = 128, 32, 0
QUANT_CASES = (("int8", {"llm_int8_threshold": 6.0}), ("int8", {"llm_int8_threshold": 0.0}), ("nf4", {}))


def _sweep(precision: str = "fp16", **bnb: Any) -> config.Sweep:
    text = f"""
name = "graphs-probe"
[protocol]
prompt_tokens = {PROMPT}
decode_steps = {STEPS}
seed = {SEED}
[[matrix]]
models = ["{MODEL}"]
batches = [1]
precisions = ["{precision}"]
"""
    sw = config.parse(text, str(ROOT / "graphs_probe.toml"))
    if bnb:
        from dataclasses import replace

        sw = replace(sw, bitsandbytes=replace(sw.bitsandbytes, **bnb))
    return sw


def _ids(model: Any, batch: int) -> list[list[int]]:
    return prompt_ids(SEED, batch, PROMPT, int(model.config.get_text_config().vocab_size))


def eager_trace(w: models.ModelWorkload, steps: int) -> list[Any]:
    """Logits of each step of the eager engine's decode_run, tapped by a forward hook."""
    seen: list[Any] = []
    hook = w.model.register_forward_hook(lambda m, a, out: seen.append(out.logits[:, -1].float().clone()))
    try:
        w.decode_run(steps)
    finally:
        hook.remove()
    return seen


def compare(a: list[Any], b: list[Any]) -> dict[str, Any]:
    """Tokens of two traces (lists of [batch, vocab] logits): where they part, and by how much
    the logits differed at the first step (same inputs there) and at the parting step."""
    import torch

    ta = torch.stack([x.argmax(-1) for x in a], 1)  # [batch, steps]
    tb = torch.stack([x.argmax(-1) for x in b], 1)
    same = ta == tb
    rows = []
    for r in range(ta.shape[0]):
        bad = (~same[r]).nonzero()
        first = int(bad[0]) if len(bad) else None
        row: dict[str, Any] = {"first_divergent_step": first}
        if first is not None:
            top2 = a[first][r].topk(2).values
            row["margin_at_divergence"] = float(top2[0] - top2[1])  # a's own top-1 minus top-2
            row["other_token_gap"] = float(a[first][r].max() - a[first][r][tb[r, first]])
        rows.append(row)
    return {
        "identical_tokens": bool(same.all()),
        "tokens_equal_fraction": float(same.float().mean()),
        "max_abs_logit_diff_step1": float((a[0] - b[0]).abs().max()),
        "logit_scale_step1": float(a[0].abs().max()),
        "bitwise_equal_logits": all(torch.equal(x, y) for x, y in zip(a, b)),
        "rows": rows,
    }


def token_check(model: Any, batch: int, device: str) -> dict[str, Any]:
    eager = models.ModelWorkload(model, _ids(model, batch), device)
    eager.prepare_decode()
    ref = eager_trace(eager, STEPS)
    eager.close()
    g = GraphsWorkload(model, _ids(model, batch), device, max_steps=STEPS)
    t0 = time.perf_counter()
    g.prepare_decode()
    prepare_s = time.perf_counter() - t0
    first, second = g.trace(STEPS), g.trace(STEPS)
    static = g._decode.trace(STEPS) if g._decode is not None else []  # same steps, not captured
    third = g.trace(STEPS)  # replay still right after eager steps touched the buffers
    out = {
        "batch": batch,
        "prepare_decode_s": round(prepare_s, 3),
        "run_info": g.run_info(),
        "graph_run1_vs_run2": compare(first, second),
        "graph_run1_vs_run3_after_eager_static": compare(first, third),
        "graph_vs_static_eager": compare(static, first),
        "graph_vs_eager_engine": compare(ref, first),
        "static_eager_vs_eager_engine": compare(ref, static),
        "tokens_eager": [[int(x[r].argmax()) for x in ref] for r in range(batch)][:2],
        "tokens_graph": [[int(x[r].argmax()) for x in first] for r in range(batch)][:2],
    }
    g.close()
    return out


# --- energy windows ---------------------------------------------------------------------


class Counter:
    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nv = pynvml
        self.h = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.name = pynvml.nvmlDeviceGetName(self.h)

    def edge(self) -> tuple[int, float]:
        """Wait for the energy counter (mJ) to change; its new value and the host time."""
        e0 = self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)
        while True:
            e = self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)
            if e != e0:
                return e, time.perf_counter()

    def state(self) -> dict[str, int]:
        nv = self.nv
        return {
            "sm_mhz": nv.nvmlDeviceGetClockInfo(self.h, nv.NVML_CLOCK_SM),
            "temp_c": nv.nvmlDeviceGetTemperature(self.h, nv.NVML_TEMPERATURE_GPU),
        }


def window(w: Any, runs: int, counter: Counter) -> dict[str, Any]:
    import torch

    gc.collect()
    torch.cuda.synchronize()
    gc.disable()
    try:
        e0, t0 = counter.edge()
        for _ in range(runs):
            w.decode_run(STEPS)
        torch.cuda.synchronize()
        t_done = time.perf_counter()
        e1, t1 = counter.edge()
    finally:
        gc.enable()
    j = (e1 - e0) / 1000.0
    return {
        "runs": runs,
        "energy_j": j,
        "j_per_run": j / runs,
        "work_s": t_done - t0,
        "tail_s": t1 - t_done,
        "tok_s": w.batch * STEPS * runs / (t_done - t0),
        **counter.state(),
    }


def idle_power(counter: Counter, seconds: float) -> float:
    import torch

    torch.cuda.synchronize()
    e0, t0 = counter.edge()
    time.sleep(seconds)
    e1, t1 = counter.edge()
    return (e1 - e0) / 1000.0 / (t1 - t0)


def cv(xs: list[float]) -> float:
    return statistics.stdev(xs) / statistics.mean(xs) if len(xs) > 1 else float("nan")


def energy_windows(model: Any, device: str, args: argparse.Namespace, warmup: int, pairs: int) -> dict[str, Any]:
    import torch

    counter = Counter(args.gpu)
    engines = {"eager": models.ModelWorkload(model, _ids(model, 1), device)}
    engines["graphs"] = GraphsWorkload(model, _ids(model, 1), device, max_steps=STEPS)
    runs: dict[str, int] = {}
    for name, w in engines.items():
        w.prepare_decode()
        for _ in range(3):
            w.decode_run(STEPS)
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            w.decode_run(STEPS)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        runs[name] = max(1, round(args.window_s / statistics.median(times)))
    idle_before = idle_power(counter, 2.0)
    windows: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    for i in range(warmup + pairs):
        for name, w in engines.items():
            rec = window(w, runs[name], counter)
            rec["warmup"] = i < warmup
            windows[name].append(rec)
        e, g = windows["eager"][-1], windows["graphs"][-1]
        print(f"pair {i + 1:2d}{' (warm-up)' if i < warmup else ''}: eager {e['j_per_run']:7.2f} J/run "
              f"{e['tok_s']:7.1f} tok/s | graphs {g['j_per_run']:7.2f} J/run {g['tok_s']:7.1f} tok/s", flush=True)
    idle_after = idle_power(counter, 2.0)
    idle = (idle_before + idle_after) / 2
    summary: dict[str, Any] = {}
    for name, ws in windows.items():
        kept = [x for x in ws if not x["warmup"]]
        jpr = [x["j_per_run"] for x in kept]
        # The window ends on the first counter update after the work: take that tail out at idle power.
        jpr_tail = [(x["energy_j"] - idle * x["tail_s"]) / x["runs"] for x in kept]
        tok = [x["tok_s"] for x in kept]
        summary[name] = {
            "runs_per_window": runs[name],
            "windows": len(kept),
            "j_per_run_median": statistics.median(jpr),
            "j_per_run_cv": cv(jpr),
            "j_per_run_tail_removed_cv": cv(jpr_tail),
            "j_per_token_median": statistics.median(jpr) / STEPS,
            "tok_s_median": statistics.median(tok),
            "tok_s_cv": cv(tok),
            "work_s_median": statistics.median(x["work_s"] for x in kept),
            "tail_s_median": statistics.median(x["tail_s"] for x in kept),
        }
    for w in engines.values():
        w.close()
    return {
        "nvml_name": counter.name,
        "pinned_cpus": sorted(os.sched_getaffinity(0)),
        "idle_w_with_context": {"before": idle_before, "after": idle_after},
        "summary": summary,
        "windows": windows,
    }


# --- bitsandbytes, one child process per case ----------------------------------------------


def quant_child(precision: str, weights: str, bnb: dict[str, Any], device: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    sw = _sweep(precision, **bnb)
    out: dict[str, Any] = {"precision": precision, "bitsandbytes": models.bnb_settings(precision, sw.bitsandbytes)}
    try:
        import bitsandbytes

        out["bitsandbytes_version"] = bitsandbytes.__version__
        model = AutoModelForCausalLM.from_pretrained(
            weights, dtype=torch.float16, device_map={"": torch.device(device)},
            quantization_config=models._quantization_config(precision, sw.bitsandbytes),
        ).eval()
    except Exception as e:
        return {**out, "loaded": False, "reason": describe_exception(e)}
    out["loaded"] = True
    g = GraphsWorkload(model, _ids(model, 1), device, max_steps=STEPS)
    try:
        g.prepare_decode()
    except Exception as e:
        chain = []
        err: BaseException | None = e
        while err is not None:
            chain.append(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:300])
            err = err.__context__
        g.close()
        return {**out, "captured": False, "reason": describe_exception(e), "error_chain": chain,
                "process_usable_after": still_usable(model, device)}
    out["captured"] = True
    first, second = g.trace(STEPS), g.trace(STEPS)
    out["graph_run1_vs_run2"] = compare(first, second)
    eager = models.ModelWorkload(model, _ids(model, 1), device)
    eager.prepare_decode()
    out["graph_vs_eager_engine"] = compare(eager_trace(eager, STEPS), first)
    for name, w in (("eager", eager), ("graphs", g)):
        w.decode_run(STEPS)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            w.decode_run(STEPS)
        torch.cuda.synchronize()
        out[f"{name}_tok_s"] = 3 * STEPS / (time.perf_counter() - t0)
    return out


def still_usable(model: Any, device: str) -> str:
    """After a failed capture, can this process still decode (the runner runs every row of
    a sweep in one process)? "yes" or the error."""
    import torch

    try:
        w = models.ModelWorkload(model, _ids(model, 1), device)
        w.prepare_decode()
        w.decode_run(4)
        x = torch.ones(256, 256, device=device, dtype=torch.float16)
        float((x @ x).sum())
        w.close()
        return "yes"
    except Exception as e:
        return f"no: {type(e).__name__}: {e}"[:300]


def quant_cases(weights: Path, device: str) -> list[dict[str, Any]]:
    results = []
    for precision, bnb in QUANT_CASES:
        cmd = [sys.executable, __file__, "--child", precision, "--weights", str(weights),
               "--bnb", json.dumps(bnb), "--device", device]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
            last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
            res = json.loads(last) if last.startswith("{") else {
                "precision": precision, "captured": False, "reason": f"child exited {p.returncode}",
                "stderr_tail": p.stderr[-1500:]}
        except subprocess.TimeoutExpired:
            res = {"precision": precision, "captured": False, "reason": "child timed out after 150 s"}
        res["case"] = {"precision": precision, **bnb}
        res["child_s"] = round(time.perf_counter() - t0, 1)
        print(f"{precision} {bnb}: captured={res.get('captured')} {res.get('reason', '')}", flush=True)
        results.append(res)
    return results


# --- main --------------------------------------------------------------------------------


def _pin(cpu: int) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu if cpu in allowed else allowed[-1]})
    return sorted(os.sched_getaffinity(0))


def _table(result: dict[str, Any]) -> str:
    lines = ["", f"graphs probe on {result.get('device_name')} ({result['date']})", "tokens (FP16):"]
    for t in result.get("tokens", []):
        ge = t["graph_vs_eager_engine"]
        lines.append(
            f"  b{t['batch']}: graph run1==run2 {t['graph_run1_vs_run2']['identical_tokens']}, "
            f"graph==static-eager {t['graph_vs_static_eager']['identical_tokens']}, "
            f"graph==eager engine {ge['identical_tokens']} ({ge['tokens_equal_fraction']:.3f} of tokens, "
            f"step-1 max|dlogit| {ge['max_abs_logit_diff_step1']:.3g})")
    if "token_error" in result:
        lines.append(f"  error: {result['token_error']}")
    lines.append("bitsandbytes:")
    for q in result.get("quant", []):
        lines.append(f"  {q['case']}: {'captured' if q.get('captured') else 'not captured: ' + str(q.get('reason'))}"
                     + (f" (process usable after: {q['process_usable_after']})" if "process_usable_after" in q else "")
                     + (f", run1==run2 {q['graph_run1_vs_run2']['identical_tokens']}, "
                        f"tok/s eager {q['eager_tok_s']:.1f} graphs {q['graphs_tok_s']:.1f}" if q.get("captured") else ""))
    for key, label in (("energy", "pinned"), ("energy_unpinned", "main thread free")):
        e = result.get(key, {}).get("summary", {})
        if not e:
            continue
        lines.append(f"FP16 b1 decode, 32-step runs, windows after warm-up ({label}):")
        lines.append("  engine  runs/win  J/run med  CV J/run  CV (tail out)  tok/s med  CV tok/s")
        for name, s in e.items():
            lines.append(f"  {name:7s} {s['runs_per_window']:8d} {s['j_per_run_median']:10.2f} {s['j_per_run_cv']:9.2%}"
                         f" {s['j_per_run_tail_removed_cv']:14.2%} {s['tok_s_median']:10.1f} {s['tok_s_cv']:9.2%}")
    if "energy_error" in result:
        lines.append(f"  energy error: {result['energy_error']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--gpu", type=int, default=0, help="NVML index of that device")
    ap.add_argument("--cpu", type=int, default=2, help="core the process is pinned to")
    ap.add_argument("--window-s", type=float, default=2.0)
    ap.add_argument("--warmup", type=int, default=3, help="warm-up window pairs")
    ap.add_argument("--pairs", type=int, default=12, help="measured window pairs")
    ap.add_argument("--unpinned-pairs", type=int, default=0,
                    help="then this many more pairs (after 1 warm-up pair) with the main thread free to move")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: tokens,energy,quant")
    ap.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", ".")) / "graphs_probe.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--bnb", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(quant_child(args.child, args.weights, json.loads(args.bnb), args.device)))
        return 0

    all_cpus = os.sched_getaffinity(0)
    pinned = _pin(args.cpu)  # before torch starts its threads, so they inherit it
    import torch
    import transformers

    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {
        "benchmark": "graphs_probe",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "model": MODEL, "prompt_tokens": PROMPT, "decode_steps": STEPS, "seed": SEED,
        "pinned_cpus": pinned,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "window_s": args.window_s, "warmup_pairs": args.warmup, "pairs": args.pairs,
    }

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))

    sweep = _sweep()
    cache = models.WeightCache(tempfile.mkdtemp(prefix="wattscope-graphs-"))
    info: dict[str, Any] = {}
    try:
        model = models.load_model(sweep.configs[0], sweep, args.device, cache, info)
        result["device_name"] = info.get("device_name")
        result["load_info"] = info
        print(f"model built and loaded on {info.get('device_name')}: {info.get('synthetic_build_s')} s build, "
              f"{info.get('load_s')} s load", flush=True)
        if "tokens" not in skip:
            try:
                result["tokens"] = [token_check(model, b, args.device) for b in (1, 8)]
            except Exception as e:
                result["token_error"] = f"{type(e).__name__}: {e}"[:1000]
            save()
        if "energy" not in skip:
            try:
                result["energy"] = energy_windows(model, args.device, args, args.warmup, args.pairs)
            except Exception as e:
                result["energy_error"] = f"{type(e).__name__}: {e}"[:1000]
            save()
        if "energy" not in skip and args.unpinned_pairs:
            # Threads torch started while pinned stay on that core; the launching thread moves.
            os.sched_setaffinity(0, all_cpus)
            try:
                result["energy_unpinned"] = energy_windows(model, args.device, args, 1, args.unpinned_pairs)
            except Exception as e:
                result["energy_unpinned_error"] = f"{type(e).__name__}: {e}"[:1000]
            save()
        del model
        models.release_memory()
        if "quant" not in skip:
            result["quant"] = quant_cases(cache.path_for(MODEL, sweep, args.device)[0], args.device)
            save()
    finally:
        cache.cleanup()
        save()
    print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
