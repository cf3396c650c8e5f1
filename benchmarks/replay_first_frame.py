"""Time to the first frame of a replay of a one-hour 100 Hz recording (target <= 1 s),
and the cost of seeking in it.

The recording is built once with the real writer (recording.Recorder) from a synthetic
run (tests/synthetic_run.py) of the seed's 15 configurations stretched to an hour
(about 360 000 sample rows) and kept at PATH. Then, in a fresh process state: load -> ReplayController -> first snapshot,
and the same through the Textual app (headless) until its first frame is drawn.

    python benchmarks/replay_first_frame.py [PATH]
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from pathlib import Path

from wattscope.recording import Recorder, load
from wattscope.replay import ReplayController

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic_run import SEED_CALLS, event_stream  # noqa: E402  (test data, not part of the package)

# 5 groups x (3 loads, idle, warm-up, 3 rounds of 6 windows of >= PHASE_S, half a
# cool-down), slow decode windows running longer: about one hour.
PHASE_S = 30.4


def build(path: Path) -> None:
    t = time.perf_counter()
    events = event_stream(configs=list(SEED_CALLS), phase_s=PHASE_S, rate_hz=100.0)
    rec = Recorder(path)
    for e in events:
        rec.write(e)
    rec.close()
    n = sum(len(e.rows) for e in events if e.kind == "samples")
    span = (events[-1].t_ns - events[0].t_ns) / 3.6e12
    print(f"built {path}: {n} sample rows over {span:.2f} h, {len(events)} events, "
          f"{path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s")


async def first_app_frame(path: Path) -> float:
    from wattscope.tui.app import make_app

    t = time.perf_counter()
    app = make_app(ReplayController(load(path)))
    async with app.run_test(size=(80, 24)) as pilot:
        while app.snap is None:
            await pilot.pause(0.01)
        await pilot.pause()  # the frame is composed
        return time.perf_counter() - t


def main(path: Path) -> None:
    if not path.exists():
        build(path)
    t = time.perf_counter()
    rec = load(path)
    t_load = time.perf_counter() - t
    rc = ReplayController(rec)
    snap = rc.snapshot()
    t_first = time.perf_counter() - t
    assert snap.status == "running", snap.status
    t = time.perf_counter()
    rc.seek_to(rc.start_ns + (rc.end_ns - rc.start_ns) // 2)
    t_mid = time.perf_counter() - t
    mid = rc.snapshot()
    t = time.perf_counter()
    rc.seek_to(rc.start_ns + 60 * 10**9)
    t_back = time.perf_counter() - t
    t = time.perf_counter()
    rc.to_end()
    t_end = time.perf_counter() - t
    end = rc.snapshot()
    t_app = asyncio.run(first_app_frame(path))
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"load: {t_load * 1e3:.0f} ms; first snapshot (load + controller + fold): {t_first * 1e3:.0f} ms")
    print(f"first frame through the app (headless, 80x24, incl. Textual start-up): {t_app * 1e3:.0f} ms "
          f"(target <= 1000 ms)")
    print(f"seek to the middle: {t_mid * 1e3:.0f} ms ({mid.configs_done} configs done there); "
          f"back to 1 min: {t_back * 1e3:.0f} ms; to the end: {t_end * 1e3:.0f} ms "
          f"({len(end.results)} results, status {end.status})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/wattscope-1h-100hz.wattscope"))
