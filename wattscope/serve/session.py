"""A serving run: the sampler process, one engine, the load driver, one recording.

For each precision: bring the engine up (start the server, or load the model), measure
an idle window (the idle power the attribution holds fixed), then each offered rate in
turn. Every event, the sampler's and the driver's, goes through ``_emit`` into the
recording; the recording is finalised whatever happens (status "failed" with the reason
when the engine could not start or died, "interrupted" on Ctrl-C).

The engine runs in this process (an HTTP server in its own), the sampler in its own, as
in sweeps. The live app (``serve-bench`` on a terminal) runs in this process too, on the
main thread, with this run on another: it reads a state fed through ``on_event`` and
stops the run with ``halt`` (a status and a reason), which ends it at the next request or
phase edge.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wattscope import provenance
from wattscope.errors import WattscopeError
from wattscope.events import SCHEMA_VERSION, Event, Request, RunEnded, RunStarted, RunWarning, ServePhase, now_ns
from wattscope.recording import Recorder
from wattscope.serve.config import ServeBench
from wattscope.serve.driver import CANCEL_WAIT_S, Backend, ServeError, run_load, schedule
from wattscope.telemetry import SensorSpec, measure_refresh_periods, open_sensor
from wattscope.telemetry.gpu_map import SIM_MACHINE_GPUS, GpuBinding, resolve, resolve_machine, simulated_gpus

ENERGY_SIGNAL = "NVML total energy counter, read by the sampler at sampler.energy_hz"


def server_log_path(output: Path) -> Path:
    """Where a started server's output is kept: beside the recording."""
    return output.with_name(output.name + ".server.log")


class ServeSession:
    def __init__(
        self, bench: ServeBench, output: Path, *, sim: bool = False, precisions: tuple[str, ...] | None = None,
        progress: Callable[[str], None] = lambda line: None, on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.bench = bench
        self.output = Path(output)
        self.sim = sim or bench.serve.engine == "sim"
        self.precisions = precisions or bench.serve.precisions
        self.progress = progress
        # Called with every event right after it is recorded (the live app's state).
        self._on_event = on_event
        self.stop = threading.Event()
        self._halt = ("interrupted", "stopped by the user")  # how a stop ends the run (``halt``)
        self.reason = ""  # how the run ended, in words (RunEnded.reason), once it has
        self._lock = threading.Lock()
        self._recorder: Recorder | None = None
        self._sim_gpu: Any = None
        self._binding: GpuBinding | None = None
        self._sampler: Any = None
        self._drainer: threading.Thread | None = None
        self._counts: dict[tuple[str, int], list[int]] = {}

    def halt(self, status: str = "interrupted", reason: str = "stopped by the user") -> None:
        """Stop the run from another thread; it ends with ``status`` (events.RUN_ENDINGS)
        and ``reason`` at the next request or phase edge. The first ending asked for stands."""
        if not self.stop.is_set():
            self._halt = (status, reason)
        self.stop.set()

    # -- recording ----------------------------------------------------------------------

    def _emit(self, ev: Event) -> None:
        with self._lock:
            assert self._recorder is not None
            self._recorder.write(ev)
            if self._on_event is not None:
                try:
                    self._on_event(ev)
                except Exception as e:  # the measurement outlives its display: record on, stop the run
                    self._on_event = None
                    self.halt("display-failed", f"the display failed ({type(e).__name__}: {e})")
            if isinstance(ev, Request):
                c = self._counts.setdefault((ev.precision, ev.rate_index), [0, 0])
                c[0 if ev.ok else 1] += 1

    def _drain_sampler(self, q: Any, done: threading.Event) -> None:
        while not done.is_set() or not q.empty():
            try:
                self._emit(q.get(timeout=0.1))
            except queue.Empty:
                with self._lock:
                    if self._recorder is not None:
                        self._recorder.maybe_commit()

    # -- setup --------------------------------------------------------------------------

    def _specs(self) -> list[SensorSpec]:
        """The run's GPU bound as a sweep's is (``telemetry.gpu_map``): the engine runs on
        that CUDA device and the sampler reads that card; a simulated machine's cards go
        through the same binding."""
        where = f"{self.bench.source}: 'run.gpus'"
        if self.sim:
            from wattscope.telemetry.sim import SimGPU, SimSpec

            machine = simulated_gpus(SIM_MACHINE_GPUS, self.bench.sim.seed)
            (self._binding,) = resolve(self.bench.run.gpus, machine, where=where)
            # Card i of the simulated machine is the SimSpec of seed + i (its UUID says so).
            seed = self.bench.sim.seed + self._binding.nvml_index
            self._sim_gpu = SimGPU.create(SimSpec(seed=seed, refresh_s=self.bench.sim.refresh_s))
            return [SensorSpec.simulated(self._sim_gpu, self._binding.nvml_index)]
        (self._binding,) = resolve_machine(self.bench.run.gpus, where=where)
        return [SensorSpec.nvml(self._binding.nvml_index)]

    def _describe(self, specs: list[SensorSpec]) -> dict[str, Any]:
        gpus = []
        for spec in specs:
            sensor = open_sensor(spec)
            try:
                info = dict(sensor.info())
                info["signals_absent"] = {k: v for k, v in sensor.signals().items() if v is not None}
                info["refresh_s"] = measure_refresh_periods(sensor, 0.3 if self.sim else 1.0)
            finally:
                sensor.close()
            if self._binding is not None:
                info["binding"] = self._binding.to_meta()
            gpus.append(info)
        model = self.bench.serve.model
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "serve",
            "created": provenance.wall_clock(),
            "clock": "CLOCK_MONOTONIC ns",
            "host": provenance.host(),
            "packages": provenance.package_versions(),
            "wattscope": provenance.source(),
            "simulated": self.sim,
            "weights": "synthetic" if model.startswith("synthetic:") or self.bench.serve.engine == "sim" else "real",
            "gpu": gpus[0],
            "gpus": gpus,
            "energy_signal": ("simulated " if self.sim else "") + ENERGY_SIGNAL,
            "sampler": {
                "signal": "power_w",
                "rate_hz": self.bench.sampler.rate_hz,
                "energy_hz": self.bench.sampler.energy_hz,
                "gpus": [g["index"] for g in gpus],
            },
            "serve": {**self.bench.to_dict(), "run_precisions": list(self.precisions)},
        }

    def _backend(self, precision: str) -> Backend:
        serve = self.bench.serve
        if serve.engine == "http":
            from wattscope.serve.http_backend import HttpBackend

            return HttpBackend(serve, server_log_path(self.output))
        if serve.engine == "sim":
            from wattscope.serve.sim_engine import SimServeEngine

            return SimServeEngine(self.bench.sim, self._sim_gpu, serve.max_batch, self._emit)
        from wattscope.serve.transformers_engine import TransformersEngine

        assert self._binding is not None  # _specs ran first
        if self.sim:
            # No real card behind a simulated one: the engine runs on the CPU and its steps
            # are what the simulated GPU draws (sim_engine.StepPower).
            from wattscope.serve.sim_engine import StepPower

            self._emit(RunWarning(now_ns(), "serve", f"{precision}: simulated GPU: the {serve.engine} engine runs "
                                  "on the CPU and its logged steps set the power at the [sim] costs; not a measurement"))
            return TransformersEngine(serve, precision, self.bench.bitsandbytes, self._emit, self.bench.source,
                                      device="cpu", power=StepPower(self.bench.sim, self._sim_gpu))
        return TransformersEngine(serve, precision, self.bench.bitsandbytes, self._emit, self.bench.source,
                                  device=self._binding.device)

    # -- the run ------------------------------------------------------------------------

    def run(self) -> str:
        """Run every precision and rate; return the status the recording ends with."""
        from wattscope.telemetry.sampler import SamplerProcess

        specs = self._specs()
        try:
            meta = self._describe(specs)
            self._recorder = Recorder(self.output)
        except BaseException:
            if self._sim_gpu is not None:
                self._sim_gpu.close()
            raise
        self._emit(RunStarted(now_ns(), meta))
        q: Any = None
        done = threading.Event()
        status, reason = "completed", ""
        try:
            self._sampler = SamplerProcess(specs, rate_hz=self.bench.sampler.rate_hz,
                                           energy_hz=self.bench.sampler.energy_hz)
            q = self._sampler.queue
            self._sampler.start()
            self._drainer = threading.Thread(target=self._drain_sampler, args=(q, done), daemon=True)
            self._drainer.start()
            for precision in self.precisions:
                if self.stop.is_set():
                    status, reason = self._halt
                    break
                status, reason = self._run_precision(precision)
                if status != "completed":
                    break
        except KeyboardInterrupt:
            self.stop.set()
            status, reason = "interrupted", "stopped by the user"
        except Exception as e:  # the recording must still be finalised
            status, reason = "failed", f"{type(e).__name__}: {e}"
        finally:
            if self._sampler is not None:
                self._sampler.stop()
            done.set()
            if self._drainer is not None:
                self._drainer.join(5)
            self.reason = reason
            try:
                self._emit(RunEnded(now_ns(), status, reason))
            finally:
                assert self._recorder is not None
                self._recorder.close()
                if self._sim_gpu is not None:
                    self._sim_gpu.close()
        return status

    def _run_precision(self, precision: str) -> tuple[str, str]:
        serve = self.bench.serve
        backend = self._backend(precision)
        self.progress(f"{precision}: starting the {serve.engine} engine")
        try:
            try:
                backend.start()
            except (ServeError, WattscopeError) as e:
                self._emit(RunWarning(now_ns(), "serve", f"{precision}: {e.message}"))
                return "failed", e.message
            start = now_ns()
            self.stop.wait(serve.idle_s)
            self._emit(ServePhase(now_ns(), "idle", -1, 0.0, start, now_ns(), precision))
            self.progress(f"{precision}: idle window {serve.idle_s:g} s")
            for i, rate in enumerate(serve.rates):
                if self.stop.is_set():
                    return self._halt
                arrivals = schedule(serve, i, precision)
                self.progress(f"{precision}: rate {rate:g}/s, {len(arrivals)} requests over {serve.duration_s:g} s")
                out = run_load(backend, arrivals, i, self._emit, drain_s=serve.drain_s, precision=precision,
                               stop=self.stop, duration_s=serve.duration_s)
                self._emit(ServePhase(out.end_ns, "load", i, rate, out.start_ns, out.end_ns, precision, out.sent))
                ok, failed = self._counts.get((precision, i), [0, 0])
                self.progress(f"{precision}: rate {rate:g}/s done: {ok} ok, {failed} failed"
                              + (f" ({out.cut_off} cut off by serve.drain_s)" if out.cut_off else ""))
                if out.lingering:
                    self._emit(RunWarning(now_ns(), "serve", (
                        f"{precision}: {out.lingering} cancelled request(s) still running {CANCEL_WAIT_S:g} s "
                        f"after rate {rate:g}/s ended; their work may count in what follows")))
                if out.failure:
                    self._emit(RunWarning(now_ns(), "serve", f"{precision}: {out.failure}"))
                    return "failed", out.failure
                if self.stop.is_set():
                    return self._halt
            return "completed", ""
        finally:
            backend.close()
