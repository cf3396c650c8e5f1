"""A serve-bench event stream made in process, with known energies.

The requests are the driver's own schedule (``driver.schedule``) for the config, served
by a continuously batching engine in simulated time: each step admits the requests sent
before it began (their whole prompt is prefilled in it), lasts ``STEP_S`` plus
``PREFILL_S`` per prompt token, and ends with one token for every running request, the
tokens 0.1 ms apart. A step costs ``PREFILL_J`` per prompt token, ``DECODE_J`` per
request that was already decoding and ``step_j`` for the step itself above ``IDLE_W``,
spread evenly over it. The energy counter refreshes every ``refresh_s`` on its own phase
and is read every ``READ_S``, with a seeded jitter on each refresh, so a fit recovers the
costs. ``steps_truth`` gives the all-in J per token the fit's figures
estimate. Sample rows go out in batches as the sampler sends them; every event is stamped
as the live session stamps it (a request when it ends, a phase when it ends)."""

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
STEP_S = 0.02
PREFILL_S = 2e-5
READ_S = 0.05  # energy counter reads
# The energy counter's refresh period: off the reads' period, so the two drift apart as
# on a card. An H100's is ~0.1 s; the default is shorter so that short synthetic phases fit
# well (tests of the method pass an H100's).
REFRESH_S = 0.0113
REFRESH_PHASE_S = 0.0037
BATCH_S = 0.1  # sample batches

SERVE = Serve(engine="sim", model="synthetic:Qwen2.5-3B", precisions=("fp16", "nf4"), rates=(4.0, 12.0),
              duration_s=8.0, idle_s=2.0, min_interval_s=0.25, seed=3,
              prompt_tokens=Lengths("uniform", min=64, max=512), output_tokens=Lengths("uniform", min=4, max=24))


def meta(serve: Serve = SERVE, refresh_s: float = REFRESH_S) -> dict[str, Any]:
    gpu = {"index": 0, "name": "Simulated H100", "power_limit_default_w": 700.0, "refresh_s": {"energy_j": refresh_s}}
    return {
        "schema_version": ev.SCHEMA_VERSION, "kind": "serve", "simulated": True, "weights": "synthetic",
        "gpu": gpu, "gpus": [gpu],
        "sampler": {"signal": "power_w", "rate_hz": 20.0, "energy_hz": 1 / READ_S, "gpus": [0]},
        "serve": {"name": "synthetic", "serve": dataclasses.asdict(serve), "run_precisions": list(serve.precisions)},
    }


@dataclasses.dataclass
class _Running:
    index: int
    tokens: list[float]
    max_tokens: int


def _serve(sent: list[float], prompts: list[int], max_tokens: list[int], step_j: float,
           power: list[tuple[float, float, float]], steps: list[tuple[float, float, int, int]]) -> list[list[float]]:
    """The engine over one phase's requests (sent times in s, in order): each request's
    token arrival times; every step's power and composition appended to ``power`` and
    ``steps``."""
    tokens: list[list[float]] = [[] for _ in sent]
    waiting = list(range(len(sent)))
    running: list[_Running] = []
    t = sent[0] if sent else 0.0
    while waiting or running:
        if not running and sent[waiting[0]] > t:
            t = sent[waiting[0]]  # idle until the next request
        admitted = [i for i in waiting if sent[i] <= t]
        waiting = [i for i in waiting if sent[i] > t]
        p, d = sum(prompts[i] for i in admitted), len(running)
        end = t + STEP_S + PREFILL_S * p
        power.append((t, end, (PREFILL_J * p + DECODE_J * d + step_j) / (end - t)))
        steps.append((t, end, p, d))
        running += [_Running(i, tokens[i], max_tokens[i]) for i in admitted]
        for k, r in enumerate(running):
            r.tokens.append(end + k * 1e-4)
        running = [r for r in running if len(r.tokens) < r.max_tokens]
        t = end + len(running) * 1e-4
    return tokens


def all_in_truth(prefill: np.ndarray, decode: np.ndarray, costs: tuple[float, float, float]) -> tuple[float, float]:
    """J per prefill and per decode token all in, from each step's prompt and decode
    tokens and the true costs (per prefill token, per decode token, per step): each step's
    own cost shared by its prefill and decode tokens in proportion to their energies (half
    each where it has neither), what the report's all-in figures estimate."""
    a, b, c = costs
    pa, db = a * np.asarray(prefill, dtype=float), b * np.asarray(decode, dtype=float)
    tok = pa + db
    to_prefill = np.divide(pa, tok, out=np.full_like(tok, 0.5), where=tok > 0)
    return (pa + c * to_prefill).sum() / np.sum(prefill), (db + c * (1 - to_prefill)).sum() / np.sum(decode)


def steps_truth(steps: list[tuple[float, float, int, int]], step_j: float) -> tuple[float, float]:
    """``all_in_truth`` of this stream's engine steps (start, end, prompt tokens, decode
    tokens) at its costs and ``step_j``."""
    rows = np.asarray(steps, dtype=float).reshape(-1, 4)
    return all_in_truth(rows[:, 2], rows[:, 3], (PREFILL_J, DECODE_J, step_j))


def event_stream(serve: Serve = SERVE, seed: int = 0, step_j: float = 0.0, refresh_s: float = REFRESH_S,
                 steps_out: dict[tuple[str, int], list[tuple[float, float, int, int]]] | None = None) -> list[ev.Event]:
    """The whole run, in time order. ``steps_out``, where given, receives each load
    phase's engine steps (start s, end s, prefill tokens, decode sequences) by
    (precision, rate index)."""
    rng = random.Random(seed)
    out: list[ev.Event] = [ev.RunStarted(T0, meta(serve, refresh_s))]
    power: list[tuple[float, float, float]] = []  # (start s, end s, watts above idle)
    t = 0.5  # engine start
    requests: list[ev.Request] = []
    for p in serve.precisions:
        idle_start = t
        t += serve.idle_s
        out.append(ev.ServePhase(T0 + round(t * S), "idle", -1, 0.0, T0 + round(idle_start * S),
                                 T0 + round(t * S), p))
        for i, rate in enumerate(serve.rates):
            start = t
            arrivals = schedule(serve, i, p)
            sent = [start + a.offset_s for a in arrivals]
            steps: list[tuple[float, float, int, int]] = []
            tokens = _serve(sent, [a.prompt_tokens for a in arrivals], [a.max_tokens for a in arrivals], step_j,
                            power, steps)
            if steps_out is not None:
                steps_out[(p, i)] = steps
            for a, s_at, tk in zip(arrivals, sent, tokens):
                requests.append(ev.Request(T0 + round(tk[-1] * S), a.request_id, i, T0 + round(s_at * S),
                                           T0 + round(s_at * S), a.prompt_tokens, a.max_tokens,
                                           [T0 + round(x * S) for x in tk], True, "", p))
            last = max((tk[-1] for tk in tokens), default=start)
            t = max(start + serve.duration_s, last) + 0.01
            out.append(ev.ServePhase(T0 + round(t * S), "load", i, rate, T0 + round(start * S), T0 + round(t * S),
                                     p, len(arrivals)))
        t += 0.5  # engine stop and the next one's start
    out.extend(requests)
    out.extend(_samples(power, t, rng, refresh_s))
    out.append(ev.RunEnded(T0 + round((t + 0.2) * S), "completed"))
    return sorted(out, key=lambda e: e.t_ns)


def _samples(power: list[tuple[float, float, float]], end_s: float, rng: random.Random,
             refresh_s: float) -> list[ev.Event]:
    """Instant power and the counter, read every READ_S, in batches of BATCH_S; the
    counter holds its value from the last refresh, with a jitter of its own each refresh."""
    dt = 0.001
    grid = np.arange(0.0, end_s + READ_S, dt)
    watts = np.full(len(grid), IDLE_W)
    for a, b, w in power:
        i, j = int(a / dt), max(int(a / dt) + 1, int(b / dt))
        watts[i:j] += w * (b - a) / ((j - i) * dt)
    energy = np.concatenate(([0.0], np.cumsum(watts[:-1] * dt)))
    refreshes = np.arange(REFRESH_PHASE_S, end_s + READ_S, refresh_s)
    counter = energy[np.round(refreshes / dt).astype(int)] + np.array([rng.gauss(0.0, 0.02) for _ in refreshes])
    rows = []
    for k in range(0, len(grid), int(READ_S / dt)):
        seen = np.searchsorted(refreshes, grid[k] + 1e-9, side="right") - 1
        value = float(counter[seen]) if seen >= 0 else 0.0
        rows.append((T0 + round(grid[k] * S), 0, float(watts[k]), float(watts[k]), value,
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
