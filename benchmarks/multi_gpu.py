"""Helpers of benchmarks/multi_gpu.sh, on a lent 2-GPU machine (issue 9).

  poll FILE            read every card's energy counter and power through NVML, by NVML
                       index and independently of wattscope, both cards then a 20 ms sleep
                       (about 35 rounds a second on the H100 pair) until killed:
                       CSV t_ns (CLOCK_MONOTONIC, wattscope's clock), nvml_index, energy_j,
                       power_w (nvmlDeviceGetPowerUsage), and FILE.uuids.json
  check-visible REC POLL JSON   step (a): the run under CUDA_VISIBLE_DEVICES=1 measured
                       NVML card 1: its meta binds cuda:0 to card 1, its window energies
                       equal card 1's counter deltas over the same spans, card 0 stayed idle
  summary JSON REC...  steps (b), (c): per recording, the GPUs, each row's figures, per
                       row the 95% intervals over its rounds' windows of energy per call
                       and decode tok/s, and how its windows' energy splits between the cards
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import wattscope  # noqa: E402
from wattscope.events import Window, now_ns  # noqa: E402
from wattscope.stats import t_quantile  # noqa: E402


def poll(path: str, period_s: float = 0.02) -> None:
    import pynvml

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    uuids = [pynvml.nvmlDeviceGetUUID(h) for h in handles]
    Path(path + ".uuids.json").write_text(json.dumps([u.decode() if isinstance(u, bytes) else u for u in uuids]))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(path, "w") as f:
        f.write("t_ns,nvml_index,energy_j,power_w\n")
        while not stop:
            for i, h in enumerate(handles):
                t_a = now_ns()
                e = pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
                t = (t_a + now_ns()) // 2
                p = pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0
                f.write(f"{t},{i},{e:.3f},{p:.3f}\n")
            f.flush()
            time.sleep(period_s)
    pynvml.nvmlShutdown()


def _delta(card: pd.DataFrame, start_ns: int, end_ns: int) -> float:
    """The card's counter change between two times, from the poller's reads (the
    counter steps every ~100 ms; the read nearest each edge)."""
    t = card["t_ns"].to_numpy()
    e = card["energy_j"].to_numpy()
    i0 = int(np.clip(np.searchsorted(t, start_ns), 0, len(t) - 1))
    i1 = int(np.clip(np.searchsorted(t, end_ns), 0, len(t) - 1))
    return float(e[i1] - e[i0])


def check_visible(rec_path: str, poll_path: str, out: str) -> int:
    rec = wattscope.load(rec_path)
    polled = pd.read_csv(poll_path)
    gpus = rec.meta["gpus"]
    binding = [g["binding"] for g in gpus]
    windows = [e for e in rec.events() if isinstance(e, Window) and e.role == "measure"]
    # Plain ints: numpy's as dict keys stop json (the first H100 x2 run lost its check so).
    cards = {int(i): polled[polled["nvml_index"] == i].sort_values("t_ns") for i in sorted(polled["nvml_index"].unique())}
    rows = []
    for w in windows:
        rows.append({
            "config_id": w.config_id, "phase": w.phase, "duration_s": w.duration_s, "window_j": w.energy_j,
            **{f"nvml{i}_delta_j": _delta(c, w.start_ns, w.end_ns) for i, c in cards.items()},
            **{f"nvml{i}_mean_w": float(c[(c["t_ns"] >= w.start_ns) & (c["t_ns"] <= w.end_ns)]["power_w"].mean())
               for i, c in cards.items()},
        })
    df = pd.DataFrame(rows)
    total = df["window_j"].sum()
    rel = {i: float((df[f"nvml{i}_delta_j"].sum() - total) / total) for i in cards}
    per_window = (df["nvml1_delta_j"] - df["window_j"]).abs() / df["window_j"]
    result = {
        "recording": rec_path,
        "status": rec.meta["status"],
        "cuda_visible_devices": rec.meta.get("cuda_visible_devices"),
        "binding": binding,
        "nvml_uuids": json.loads(Path(poll_path + ".uuids.json").read_text()),
        "windows": len(df),
        "window_energy_total_j": total,
        "counter_delta_total_j": {int(i): float(df[f"nvml{i}_delta_j"].sum()) for i in cards},
        "relative_difference_of_totals": rel,
        "per_window_abs_rel_diff_nvml1": {"median": float(per_window.median()), "max": float(per_window.max())},
        "mean_power_w_during_windows": {int(i): float(df[f"nvml{i}_mean_w"].mean()) for i in cards},
        "rows": rows,
    }
    ok = (
        rec.meta["status"] == "completed"
        and binding == [dict(binding[0], cuda_ordinal=0, nvml_index=1, uuid=result["nvml_uuids"][1])]
        and abs(rel[1]) < 0.02
        and result["mean_power_w_during_windows"][0] < 0.5 * result["mean_power_w_during_windows"][1]
    )
    result["verdict"] = "ok" if ok else "FAILED"
    Path(out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1, default=str))
    return 0 if ok else 1


def _interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% t-interval of a few values."""
    v = np.asarray(values, dtype=float)
    half = float(t_quantile(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": float(v.mean()), "half_width": half, "relative_half_width": half / float(v.mean()), "n": len(v)}


def summary(out: str, paths: list[str]) -> int:
    runs = []
    for p in paths:
        rec = wattscope.load(p)
        windows = [e for e in rec.events() if isinstance(e, Window) and e.role == "measure"]
        split = {}
        for phase in ("prefill", "decode"):
            parts = [w.energy_parts_j for w in windows if w.phase == phase and w.energy_parts_j]
            if parts:
                tot = np.sum(parts, axis=0)
                split[phase] = [float(x) for x in tot / tot.sum()]
        res = rec.results
        # Per row, over its measured windows (one a round; one precision has no ratios):
        # counter energy per call (tail included) and decode tokens per second of work.
        per_row: dict[str, dict[str, dict[str, float]]] = {}
        for cid in sorted({w.config_id for w in windows}):
            mine = [w for w in windows if w.config_id == cid]
            figures = {
                "prefill_j_per_call": [w.energy_j / w.calls for w in mine if w.phase == "prefill" and w.calls],
                "decode_j_per_call": [w.energy_j / w.calls for w in mine if w.phase == "decode" and w.calls],
                "decode_tok_s": [w.tokens / ((w.work_end_ns - w.start_ns) / 1e9) for w in mine
                                 if w.phase == "decode" and w.work_end_ns > w.start_ns],
            }
            per_row[cid] = {name: _interval(v) for name, v in figures.items() if len(v) >= 2}
        runs.append({
            "recording": p,
            "status": rec.meta["status"],
            "gpus": [g["binding"] for g in rec.meta["gpus"]],
            "tdp_w_sum": sum(g["tdp_w"] for g in rec.meta["gpus"]),
            "results": json.loads(res.to_json(orient="records")),
            "intervals_per_row": per_row,
            "energy_share_per_gpu": split,
            "parts_sum_to_energy": all(math.isclose(sum(w.energy_parts_j), w.energy_j, rel_tol=1e-9)
                                       for w in windows if w.energy_parts_j),
            "warnings": rec.warnings["message"].tolist(),
        })
    Path(out).write_text(json.dumps(runs, indent=1, default=str))
    print(json.dumps(runs, indent=1, default=str)[:6000])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("poll")
    p.add_argument("file")
    c = sub.add_parser("check-visible")
    c.add_argument("recording")
    c.add_argument("poll")
    c.add_argument("json")
    s = sub.add_parser("summary")
    s.add_argument("json")
    s.add_argument("recordings", nargs="+")
    a = ap.parse_args()
    if a.cmd == "poll":
        poll(a.file)
        return 0
    if a.cmd == "check-visible":
        return check_visible(a.recording, a.poll, a.json)
    return summary(a.json, a.recordings)


if __name__ == "__main__":
    sys.exit(main())
