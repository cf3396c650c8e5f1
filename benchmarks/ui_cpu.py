"""UI process CPU while the TUI shows a 1 kHz sample stream.

A feeder thread plays the session's reader: every 100 ms it applies a batch of 100
sample rows (1 kHz), a phase change every 2 s and sampler stats every second, into a
RunState. The Textual app runs headless on it (the same code as on a terminal, minus
the terminal writes) for DURATION_S. Reported: process CPU (all threads: UI, feeder,
Textual) and the feeder's own share, as % of one core. Target: <= 10 % of one core.

    python benchmarks/ui_cpu.py [seconds] [WIDTHxHEIGHT]
"""

from __future__ import annotations

import asyncio
import math
import platform
import sys
import threading
import time

from wattscope import events as ev
from wattscope.source import LiveSource
from wattscope.state import RunState
from wattscope.tui.app import make_app

RATE_HZ = 1000
BATCH_S = 0.1
SIZE = (120, 40)


def feed(state: RunState, stop: threading.Event, cpu: list[float]) -> None:
    t_thread = time.thread_time()
    n = 0
    phases = ("prefill", "decode")
    next_send = time.monotonic()
    last_t = ev.now_ns()
    while not stop.is_set():
        now = ev.now_ns()
        k = int((now - last_t) * RATE_HZ / 1e9)
        rows = [
            (last_t + int(i * 1e9 / RATE_HZ), 0, 300.0 + 100.0 * math.sin(n / 7), 290.0, math.nan,
             1755.0, 90.0, 60.0, 20000.0, ev.FRESH_POWER)
            for i in range(k)
        ]
        last_t += int(k * 1e9 / RATE_HZ)
        state.apply(ev.Samples(now, rows))
        if n % 10 == 0:
            state.apply(ev.SamplerStats(now, RATE_HZ, RATE_HZ * 0.999, 0.2, 0, {"power_w": 10.0}, 4.0))
        if n % 20 == 0:
            state.apply(ev.PhaseStarted(now, "bench/b1/fp16", phases[(n // 20) % 2], 1))
        n += 1
        next_send += BATCH_S
        time.sleep(max(0.0, next_send - time.monotonic()))
    cpu.append(time.thread_time() - t_thread)


async def measure(duration_s: float) -> None:
    state = RunState()
    t0 = ev.now_ns()
    state.apply(ev.RunStarted(t0, {"gpu": {"name": "bench GPU", "tdp_w": 700.0, "index": 0,
                                           "refresh_s": {"power_w": 0.001}},
                                   "sweep": {"name": "ui-cpu", "configs": [{}]}}))
    state.apply(ev.ConfigStarted(t0, "bench/b1/fp16", 0, 1, "synthetic:Qwen2-1.5B", 1, "fp16", True, 3))
    app = make_app(LiveSource(state))
    stop = threading.Event()
    feeder_cpu: list[float] = []
    feeder = threading.Thread(target=feed, args=(state, stop, feeder_cpu))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(1.0)  # past start-up
        feeder.start()
        await asyncio.sleep(1.0)
        c0, w0 = time.process_time(), time.monotonic()
        await asyncio.sleep(duration_s)
        c1, w1 = time.process_time(), time.monotonic()
        rows = len(app.snap.gpu.t_s)
        stop.set()
        feeder.join()
    wall = w1 - w0
    total = 100 * (c1 - c0) / wall
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"terminal {SIZE[0]}x{SIZE[1]}; stream: {RATE_HZ} Hz in {int(RATE_HZ * BATCH_S)}-row batches; frames at 4 Hz; "
          f"graph window held {rows} samples")
    print(f"process CPU over {wall:.1f} s: {total:.1f} % of one core (target <= 10 %)")
    print(f"  of which the feeder (the session's reader, folding samples): "
          f"{100 * feeder_cpu[0] / (wall + 1.0):.1f} %")


if __name__ == "__main__":
    if len(sys.argv) > 2:
        SIZE = tuple(int(v) for v in sys.argv[2].split("x"))
    asyncio.run(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0))
