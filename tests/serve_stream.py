"""A serve-bench event stream made in process, with known per-token energies.

The requests are the driver's own schedule (``driver.schedule``) for the config; each
request's first token comes ``TTFT_S`` after it was sent and the rest every ``TPOT_S``.
The energy counter (read every ``READ_S``) integrates idle power plus ``prefill_j`` per
prompt token (spread from sending to the first token, as the attribution assumes) plus
``decode_j`` per later token, with a seeded jitter, so a fit recovers the two costs. Sample
rows go out in batches as the sampler sends them; every event is stamped as the live
session stamps it (a request when it ends, a phase when it ends)."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pandas as pd

from wattscope import events as ev
from wattscope.replay import MemoryRecording
from wattscope.serve.config import Lengths, Serve
from wattscope.serve.driver import schedule

S = 1_000_000_000
T0 = 10 * S
IDLE_W = 80.0
PREFILL_J = 0.01
DECODE_J = 0.2
TTFT_S = 0.08
TPOT_S = 0.03
READ_S = 0.05  # energy counter reads
BATCH_S = 0.1  # sample batches

SERVE = Serve(engine="sim", model="synthetic:Qwen2.5-3B", precisions=("fp16", "nf4"), rates=(4.0, 12.0),
              duration_s=6.0, idle_s=2.0, min_interval_s=0.1, seed=3,
              prompt_tokens=Lengths("uniform", min=64, max=512), output_tokens=Lengths("uniform", min=4, max=24))


def meta(serve: Serve = SERVE) -> dict[str, Any]:
    return {
        "schema_version": ev.SCHEMA_VERSION, "kind": "serve", "simulated": True, "weights": "synthetic",
        "gpu": {"index": 0, "name": "Simulated H100", "power_limit_default_w": 700.0},
        "gpus": [{"index": 0, "name": "Simulated H100", "power_limit_default_w": 700.0}],
        "sampler": {"signal": "power_w", "rate_hz": 20.0, "energy_hz": 1 / READ_S, "gpus": [0]},
        "serve": {"name": "synthetic", "serve": dataclasses.asdict(serve), "run_precisions": list(serve.precisions)},
    }


def event_stream(serve: Serve = SERVE, seed: int = 0) -> list[ev.Event]:
    """The whole run, in time order."""
    rng = random.Random(seed)
    out: list[ev.Event] = [ev.RunStarted(T0, meta(serve))]
    power: list[tuple[float, float, float, float]] = []  # (start s, end s, watts above idle)
    t = 0.5  # engine start
    requests: list[ev.Request] = []
    for p in serve.precisions:
        idle_start = t
        t += serve.idle_s
        out.append(ev.ServePhase(T0 + round(t * S), "idle", -1, 0.0, T0 + round(idle_start * S),
                                 T0 + round(t * S), p))
        for i, rate in enumerate(serve.rates):
            start = t
            last = start
            arrivals = schedule(serve, i, p)
            for a in arrivals:
                sent = start + a.offset_s
                first = sent + TTFT_S
                tokens = [first + k * TPOT_S for k in range(a.max_tokens)]
                power.append((sent, first, a.prompt_tokens * PREFILL_J / TTFT_S, 0.0))
                for tk in tokens[1:]:
                    power.append((tk - TPOT_S / 2, tk, DECODE_J / (TPOT_S / 2), 0.0))
                requests.append(ev.Request(T0 + round(tokens[-1] * S), a.request_id, i, T0 + round(sent * S),
                                           T0 + round(sent * S), a.prompt_tokens, a.max_tokens,
                                           [T0 + round(x * S) for x in tokens], True, "", p))
                last = max(last, tokens[-1])
            t = max(start + serve.duration_s, last) + 0.01
            out.append(ev.ServePhase(T0 + round(t * S), "load", i, rate, T0 + round(start * S), T0 + round(t * S),
                                     p, len(arrivals)))
        t += 0.5  # engine stop and the next one's start
    out.extend(requests)
    out.extend(_samples(power, t, rng))
    out.append(ev.RunEnded(T0 + round((t + 0.2) * S), "completed"))
    return sorted(out, key=lambda e: e.t_ns)


def _samples(power: list[tuple[float, float, float, float]], end_s: float, rng: random.Random) -> list[ev.Event]:
    """The counter read every READ_S and instant power with it, in batches of BATCH_S."""
    dt = 0.001
    grid = np.arange(0.0, end_s + READ_S, dt)
    watts = np.full(len(grid), IDLE_W)
    for a, b, w, _ in power:
        i, j = int(a / dt), max(int(a / dt) + 1, int(b / dt))
        watts[i:j] += w * (b - a) / ((j - i) * dt)
    energy = np.concatenate(([0.0], np.cumsum(watts[:-1] * dt)))
    rows = []
    for k in range(0, len(grid), int(READ_S / dt)):
        jitter = rng.gauss(0.0, 0.02)
        rows.append((T0 + round(grid[k] * S), 0, float(watts[k]), float(watts[k]), float(energy[k] + jitter),
                     500.0, 50.0, 40.0, 1000.0, 7))
    out: list[ev.Event] = []
    per = int(BATCH_S / READ_S)
    for k in range(0, len(rows), per):
        batch = rows[k:k + per]
        out.append(ev.Samples(batch[-1][0], batch))
    return out


class StreamRecording(MemoryRecording):
    """What ``serve.analysis.analyse`` reads of a recording (its samples too), from the stream."""

    def __init__(self, events: list[ev.Event]) -> None:
        super().__init__(events, path="synthetic")
        assert isinstance(events[0], ev.RunStarted)
        rows = [r for e in events if isinstance(e, ev.Samples) for r in e.rows]
        self.samples = pd.DataFrame(rows, columns=list(ev.SAMPLE_COLUMNS))
