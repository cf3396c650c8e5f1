"""The runner: the process that owns the model and runs the sweep's protocol.

``RunnerProcess`` starts a 'spawn' child (a fresh interpreter: no CUDA state or threads
inherited from the parent; its environment, CUDA_VISIBLE_DEVICES included, is the
parent's, so the parent's CUDA ordinals name the same cards here) that opens its own
sensors from picklable specs (one per GPU the model runs on), runs
``run_sweep`` and puts every event on the queue (Event objects: frozen dataclasses that
pickle as they are). The model never shares its process with the sampler
or the UI. ``run_sweep`` is the same code in-process, for tests.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wattscope.architectures import known_config, memory_bytes
from wattscope.bench.protocol import Build, Emit, StopFlag, run_protocol
from wattscope.bench.workload import Workload, WorkloadError
from wattscope.child import ChildProcess
from wattscope.config import RunConfig, Sweep
from wattscope.events import Event, RunWarning, now_ns

PARENT_POLL_S = 0.5
EXIT_PARENT_DIED = 3


def _model_builder(sweep: Sweep, devices: tuple[str, ...], cache_dir: str | None) -> tuple[Build, Callable[[], None], Callable[[], None]]:
    """Build, release-after-each-config and end-of-sweep cleanup for real models."""
    from wattscope.bench import engines, models

    cache = models.WeightCache(cache_dir)
    done: list[RunConfig] = []

    def build(rc: RunConfig, info: dict[str, Any]) -> Workload:
        done.append(rc)
        return engines.build_workload(rc, sweep, devices, cache, info)

    def release() -> None:
        models.release_memory()
        if done:
            later = sweep.configs[sweep.configs.index(done[-1]) + 1 :]
            if all(c.model != done[-1].model for c in later):
                cache.forget(done[-1].model)

    return build, release, cache.cleanup


_GIB = 2**30


def memory_guard(sweep: Sweep, build: Build, card_mib: float | None) -> Build:
    """``build`` behind a check made before anything is loaded: a row whose model
    architecture is known fails at once, with the sizes in its reason, when its prompt and
    decode steps exceed the model's positions, or when its weights and KV cache (batch x
    (prompt_tokens + decode_steps)), with those of its group's rows already loaded, exceed
    the card's memory. Rows of unknown architecture (hub ids) go straight to ``build``."""
    p = sweep.protocol
    tokens = p.prompt_tokens + p.decode_steps
    base = Path(sweep.source).parent
    held: dict[str, int] = {}  # group -> estimated bytes of its rows loaded so far

    def guarded(rc: RunConfig, info: dict[str, Any]) -> Workload:
        cfg = known_config(rc.model, base)
        if cfg is not None:
            positions = cfg.get("max_position_embeddings")
            if isinstance(positions, int) and tokens > positions:
                raise WorkloadError(f"prompt_tokens + decode_steps = {tokens} exceed {rc.model_label}'s {positions} positions")
            try:
                weights, kv = memory_bytes(cfg, rc.precision, rc.batch, tokens)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                weights = kv = 0  # an architecture this estimate does not know: no check
            before = held.get(rc.group, 0)
            if card_mib and before + weights + kv > card_mib * 2**20:
                beside = f" beside {before / _GIB:.1f} GiB of the group's other rows" if before else ""
                raise WorkloadError(
                    f"does not fit the card: {weights / _GIB:.1f} GiB of {rc.precision} weights + {kv / _GIB:.1f} GiB of "
                    f"KV cache (batch {rc.batch} x {tokens} tokens){beside} > {card_mib / 1024:.1f} GiB"
                )
            held[rc.group] = before + weights + kv
        return build(rc, info)

    return guarded


def run_sweep(
    sweep: Sweep,
    sensor: Any,
    emit: Emit,
    stop: StopFlag | None = None,
    *,
    sim: bool = False,
    device: str | Sequence[str] = "cuda:0",
    start_index: int = 0,
    cache_dir: str | None = None,
) -> bool:
    """Run the sweep in this process; returns False if it was stopped. ``device`` is
    where the model runs: one device, or several (CUDA) that the model is split over,
    whose summed counter ``sensor`` reads. With ``sim`` the sensor must be a simulated
    one (it has ``.gpu`` with ``set_load_w``; a ``SensorGroup`` of simulated cards spreads
    the load) and the sweep runs unchanged (pass ``sweep.for_simulation()`` for the fast
    timing)."""
    stop = stop if stop is not None else threading.Event()
    if not 0 <= start_index <= len(sweep.configs):
        raise ValueError(f"start_index = {start_index} is not allowed; expected 0..{len(sweep.configs)}")
    card_mib = _memory_mib(sensor)
    if sim:
        from wattscope.bench.sim_workload import sim_builder

        gpu = getattr(sensor, "gpu", None)
        if gpu is None or not hasattr(gpu, "set_load_w"):
            raise ValueError("run_sweep(sim=True) needs a simulated sensor (open_sensor of a 'sim' spec)")
        infos = sensor.infos() if hasattr(sensor, "infos") else [sensor.info()]
        idle_w = sum(float(i.get("sim_spec", {}).get("idle_w", 72.0)) for i in infos)
        build = sim_builder(sweep, gpu, idle_w, sum(float(i["tdp_w"]) for i in infos))
        release: Callable[[], None] = lambda: None
        cleanup: Callable[[], None] = lambda: None
    else:
        devices = (device,) if isinstance(device, str) else tuple(device)
        build, release, cleanup = _model_builder(sweep, devices, cache_dir)
    build = memory_guard(sweep, build, card_mib)
    try:
        return run_protocol(sweep, build, sensor, emit, stop, start_index, release)
    finally:
        cleanup()


def _memory_mib(sensor: Any) -> float | None:
    """The memory a row may fill: that of every card the model may be split over (None
    when a sensor does not say)."""
    if hasattr(sensor, "infos"):
        infos = sensor.infos()
    elif hasattr(sensor, "info"):
        infos = [sensor.info()]
    else:
        return None
    sizes = [i.get("memory_total_mib") for i in infos]
    return float(sum(sizes)) if sizes and all(isinstance(m, (int, float)) for m in sizes) else None


def _exit_with_parent(parent_pid: int) -> None:
    """An orphaned runner would keep the GPU busy for the rest of the sweep with nobody
    recording: leave at once when the parent is gone (the driver frees the GPU at exit)."""
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(EXIT_PARENT_DIED)


def _isolate(cpu: int | None, sim: bool) -> None:
    """Pin this process to its core before anything else runs; with one core, torch's
    CPU thread pool would only fight the launching thread for it."""
    if cpu is None:
        return
    from wattscope.host import pin

    pin(0, cpu)
    if not sim:
        from wattscope.bench import models

        models.single_cpu_thread()


def _child_main(sweep: Sweep, sensor_specs: list[Any], queue: Any, sim: bool, devices: tuple[str, ...],
                start_index: int, cpu: int | None, stop: Any) -> None:
    # Ctrl-C reaches the whole process group; the parent decides and sets the stop flag.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _isolate(cpu, sim)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    from wattscope.telemetry.open import open_energy_sensor

    def emit(event: Event) -> None:
        queue.put(event)

    sensor = None
    try:
        sensor = open_energy_sensor(sensor_specs)
        run_sweep(sweep, sensor, emit, stop, sim=sim, device=devices, start_index=start_index)
    except BaseException as e:
        emit(RunWarning(now_ns(), "runner", f"runner failed: {type(e).__name__}: {e}"))
        raise
    finally:
        if sensor is not None:
            sensor.close()


class RunnerProcess(ChildProcess):
    """The runner child. ``start_index`` lets a session restart it after a hard crash
    for the configurations that remain (the idle baseline is only measured from 0)."""

    def __init__(self, sweep: Sweep, sensor_specs: Sequence[Any], queue: Any, sim: bool,
                 devices: Sequence[str] = ("cuda:0",), start_index: int = 0, cpu: int | None = None) -> None:
        super().__init__(_child_main, "wattscope-runner",
                         (sweep, list(sensor_specs), queue, sim, tuple(devices), start_index, cpu))

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the child to stop between two calls; terminate it if it does not exit in time."""
        self._end(timeout, grace=5.0)
