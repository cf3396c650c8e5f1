"""Why does LLM.int8 at threshold 0.0 replay from a CUDA graph with other logits than the
eager call? Each bitsandbytes step of one Linear8bitLt forward (vector-wise quantisation of
the input, the int8 matmul, the dequantisation) and the whole layer, captured alone in a
CUDA graph and replayed on the inputs it was captured with and on fresh ones, against the
same op called eagerly. Int8 products accumulate in int32, so a correct replay is equal to
the eager result bit for bit.

``--model ID`` asks the question of a whole model instead, with no graph at all: the
last-position prefill logits of the eager engine's call (dynamic KV cache) against the
graphs engine's call run eagerly (StaticPrefill: a static cache, whose attention is masked
rather than causal by construction), each twice, for FP16 and INT8 at threshold 0.0; then
that call captured as the engine captures it, and the hidden states of its replay against
the eager call's, layer by layer: where the two start to part, and how fast they grow.

    python benchmarks/int8_graph_probe.py --json out.json        # a CUDA machine with bitsandbytes
    python benchmarks/int8_graph_probe.py --model synthetic:Qwen2-1.5B --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _layers(w: Any) -> list[float]:
    """The graphs engine's prefill captured as the engine captures it, with the hidden
    states among its outputs (the embeddings, then each layer's output): for each,
    max |replay - eager| over the eager state's max |value|."""
    import torch

    from wattscope.bench.graphs import StaticPrefill  # wattscope is on sys.path by now (_model_paths)

    held: dict[str, Any] = {}

    def forward(**kw: Any) -> Any:
        out = w._forward(**kw, output_hidden_states=True)
        held["hidden"] = out.hidden_states
        return out

    static = StaticPrefill(forward, w.model.config, w.ids)
    static.run()
    eager = [h.float().clone() for h in held["hidden"]]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            static.run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode():
        with torch.cuda.graph(graph):
            static.run()
    graph.replay()
    torch.cuda.synchronize()
    return [((h.float() - e).abs().max() / e.abs().max()).item() for h, e in zip(held["hidden"], eager)]


def _model_paths(args: argparse.Namespace) -> None:
    import sys
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from wattscope import config
    from wattscope.bench import engines, models
    from wattscope.bench.graphs import StaticPrefill

    sweep = config.parse(f"""
name = "int8-graph-probe"
[protocol]
prompt_tokens = {args.tokens}
[bitsandbytes]
llm_int8_threshold = 0.0
[[matrix]]
models = ["{args.model}"]
batches = [{args.batch or 1}]
precisions = ["fp16", "int8"]
""", "int8_graph_probe.toml")
    cache = models.WeightCache(tempfile.mkdtemp(prefix="wattscope-int8-probe-"))
    out: dict[str, Any] = {"model": args.model, "tokens": args.tokens, "batch": args.batch or 1,
                           "device": torch.cuda.get_device_name(), "weights": "synthetic", "precisions": {}}
    for rc in sweep.configs:
        w = engines.build_workload(rc, sweep, "cuda:0", cache, {})
        dynamic = [w._forward(input_ids=w.ids, use_cache=True, logits_to_keep=1).logits[:, -1].float() for _ in range(2)]
        static = StaticPrefill(w._forward, w.model.config, w.ids)
        runs = []
        for _ in range(2):
            static.run()
            runs.append(static.logits.float().clone())
        scale = dynamic[0].abs().max().item()
        r = {"scale": scale,
             "dynamic_vs_dynamic": (dynamic[0] - dynamic[1]).abs().max().item(),
             "static_vs_static": (runs[0] - runs[1]).abs().max().item(),
             "static_vs_dynamic": (runs[0] - dynamic[0]).abs().max().item()}
        r["layers_replay_vs_eager"] = _layers(w)
        out["precisions"][rc.precision] = r
        print(rc.precision, {k: f"{v:.4g}" for k, v in r.items() if not isinstance(v, list)})
        print("  hidden states (embeddings, then each layer's output), replay vs eager, max |diff| / scale:",
              " ".join(f"{d:.2g}" for d in r["layers_replay_vs_eager"]))
        del w, static
        models.release_memory()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--features", type=int, default=2048, help="the layer's input features")
    ap.add_argument("--out-features", type=int, help="its output features (default: --features)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, help="a 3-D input (batch, tokens, features), as a model passes")
    ap.add_argument("--model", help="compare a whole model's two eager prefill paths instead")
    args = ap.parse_args()
    if args.model:
        return _model_paths(args)

    import bitsandbytes as bnb
    import torch

    torch.manual_seed(0)
    dev = "cuda"
    n, k = args.tokens, args.features
    m = args.out_features or k
    layer = bnb.nn.Linear8bitLt(k, m, bias=False, has_fp16_weights=False, threshold=0.0)
    layer.load_state_dict({"weight": torch.randn(m, k, dtype=torch.float16) * 0.02})
    layer = layer.to(dev)
    x = torch.randn(n, k, device=dev, dtype=torch.float16)
    layer(x)  # the first call moves the quantised weight into the layer's state
    cb, scb = layer.state.CB, layer.state.SCB
    ca, sca, _ = bnb.functional.int8_vectorwise_quant(x)
    acc = torch.ops.bitsandbytes.int8_linear_matmul.default(ca, cb)

    steps: dict[str, tuple[Callable[[Any], Any], Any]] = {
        "int8_vectorwise_quant": (lambda a: bnb.functional.int8_vectorwise_quant(a)[0], x),
        "int8_linear_matmul": (lambda a: torch.ops.bitsandbytes.int8_linear_matmul.default(a, cb), ca),
        "int8_mm_dequant": (lambda a: torch.ops.bitsandbytes.int8_mm_dequant.default(a, sca, scb), acc),
        "layer": (layer, x if args.batch is None else torch.randn(args.batch, n, k, device=dev, dtype=torch.float16)),
    }
    out: dict[str, Any] = {"bitsandbytes": bnb.__version__, "torch": torch.__version__,
                           "device": torch.cuda.get_device_name(), "tokens": n, "features": k, "out_features": m,
                           "batch": args.batch, "steps": {}}
    for name, (fn, inp) in steps.items():
        static = inp.clone()
        eager = fn(static).float()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn(static)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                captured = fn(static)
        except Exception as e:  # noqa: BLE001 - the probe reports what capture raised
            out["steps"][name] = {"capture": f"{type(e).__name__}: {e}"}
            print(name, "capture failed:", e)
            continue
        g.replay()
        torch.cuda.synchronize()
        same_input = (captured.float() - eager).abs().max().item()
        fresh = (torch.randn_like(inp.float()) * inp.float().std()).to(inp.dtype) if inp.is_floating_point() \
            else torch.randint_like(inp, -127, 128)
        static.copy_(fresh)
        g.replay()
        torch.cuda.synchronize()
        want = fn(fresh.clone()).float()
        new_input = (captured.float() - want).abs().max().item()
        out["steps"][name] = {"max_abs_diff_same_input": same_input, "max_abs_diff_new_input": new_input,
                              "scale": eager.abs().max().item()}
        print(f"{name}: replay vs eager, max |diff| {same_input:.4g} (same input), {new_input:.4g} (new input); "
              f"scale {eager.abs().max().item():.4g}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
