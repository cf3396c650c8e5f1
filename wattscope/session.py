"""A live run: runner and sampler processes, the recorder, and one RunState.

The session's thread is the only reader of the children's queue. Every event goes
through ``_emit``: into the recording first, then into the RunState that the display
(TUI or headless printer) pulls snapshots from. Per-configuration results are derived
here from the recorded windows with the same function the replay uses, so a replay
reproduces the live numbers exactly.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import sys
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any, Iterator, Protocol

from wattscope import host, metrics, provenance
from wattscope.child import Inbox, Pump
from wattscope.config import Sweep
from wattscope.events import (
    RUN_ENDINGS,
    SCHEMA_VERSION,
    ConfigFinished,
    ConfigStarted,
    Event,
    PhaseStarted,
    RunEnded,
    RunStarted,
    RunWarning,
    Samples,
    Window,
    now_ns,
)
from wattscope.recording import Recorder, RecordingWriteError
from wattscope.state import RunState
from wattscope.telemetry import SensorSpec, measure_refresh_periods, open_sensor
from wattscope.telemetry.gpu_map import (
    SIM_MACHINE_GPUS,
    VISIBLE_ENV,
    GpuBinding,
    other_process_warning,
    other_processes,
    resolve,
    resolve_machine,
    simulated_gpus,
)

ENERGY_SIGNAL = (
    "NVML total energy counter; after a GPU synchronize each window edge waits for the next counter update"
)
POLL_S = 0.1
PUMP_FINISH_S = 2.0  # for a child's last events to come through once it has exited
REFRESH_MEASURE_S = 1.0
MAX_RUNNER_RESTARTS = 3


def default_output(sweep: Sweep, sim: bool, directory: Path = Path("recordings")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return directory / f"{sweep.name}-{stamp}{'-sim' if sim else ''}.wattscope"


# The signals that stop a run, and the ending each gives it (events.RUN_ENDINGS). A
# terminal's Ctrl-C or hangup reaches the whole process group; the children ignore them
# all, and the parent stops them in order and finalises the recording.
STOP_SIGNALS: dict[int, tuple[str, str]] = {
    signal.SIGINT: ("interrupted", "stopped by the user"),
    signal.SIGTERM: ("terminated", "stopped by SIGTERM"),
    signal.SIGHUP: ("hangup", "stopped by SIGHUP (the terminal went away)"),
}


@contextmanager
def _children_ignore_stop_signals() -> Iterator[None]:
    """Children started inside inherit SIG_IGN for the STOP_SIGNALS (it survives exec)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def display_ending(error: BaseException) -> tuple[str, str]:
    """The ending (status, reason) of a run whose display stopped with ``error``."""
    if isinstance(error, KeyboardInterrupt):
        return STOP_SIGNALS[signal.SIGINT]
    if isinstance(error, OSError) and error.errno in (errno.EPIPE, errno.EIO):
        # A pipe's reader left (`| head`), or the terminal went away.
        return "output-closed", f"the output closed ({error.strerror or error})"
    return "display-failed", f"the display failed ({type(error).__name__}: {error})"


def _silence_stdout() -> None:
    """Point a closed stdout at /dev/null so the interpreter's last flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no file (a test's buffer)
        pass


class Watchable(Protocol):
    """What ``watched`` needs of a live run: a sweep's ``Session`` or a serving run's
    ``serve.source.LiveServe``. ``status`` reads "starting" until the run records."""

    @property
    def status(self) -> str: ...

    def stop(self, status: str = ..., reason: str = ...) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class LiveRun(Watchable, Protocol):
    """A live run a display starts: ``Watchable`` and ``start``."""

    def start(self) -> None: ...


@contextmanager
def watched(session: Watchable, on_signal: Callable[[], None] | None = None) -> Iterator[None]:
    """Around a live run's display, so the measurement never outlives it: SIGTERM and
    SIGHUP stop the run as Ctrl-C does (the status names the signal) and call
    ``on_signal`` (an app leaves); a display that raises stops the run as
    'output-closed' (a broken pipe, a lost terminal) or 'display-failed', and the error
    goes no further (``session.reason`` says it). On leaving, a run still going is
    stopped ('interrupted') and its recording finalised before this returns. The
    session may be started inside: an error while it starts goes on to the caller (the
    start undid itself), and a signal during the start stops the run as soon as it runs."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        session.stop(*STOP_SIGNALS[signum])
        if on_signal is not None:
            on_signal()

    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if sig != signal.SIGINT}
    try:
        yield
    except BaseException as e:
        if session.status == "starting":
            raise
        status, reason = display_ending(e)
        session.stop(status, reason)
        if status == "output-closed":
            _silence_stdout()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if session.status != "starting":
            session.stop()
            while True:
                try:  # a second Ctrl-C must not leave the recording half-finalised
                    if session.wait(1.0):
                        break
                except KeyboardInterrupt:
                    continue


class Session:
    """``gpus_from`` names where ``sweep.run.gpus`` came from, for error messages (default:
    the config's ``run.gpus`` key)."""

    def __init__(
        self, sweep: Sweep, output: Path, *, sim: bool = False, state: RunState | None = None,
        on_event: Callable[[Event], None] | None = None, gpus_from: str | None = None,
    ) -> None:
        self.sweep = sweep.for_simulation() if sim else sweep
        # Called with every event, right after it is recorded (``run --jsonl``).
        self._on_event = on_event
        self._gpus_from = gpus_from or f"{sweep.source}: 'run.gpus'"
        self.output = Path(output)
        self.sim = sim
        self.state = state if state is not None else RunState()
        self.status = "starting"
        self.error: str | None = None  # an error inside the session itself
        self.reason = ""  # how the run ended, in words (RunEnded.reason)
        self._stop_request: tuple[str, str] | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._inbox = Inbox()
        self._pumps: dict[str, Pump] = {}  # the live children's: "runner", "sampler"
        self._recorder: Recorder | None = None
        self._sim_gpus: list[Any] = []
        self._bindings: tuple[GpuBinding, ...] = ()
        self._others: dict[int, list[tuple[int, int]]] = {}
        self._thread: threading.Thread | None = None
        self._windows: dict[str | None, list[Window]] = defaultdict(list)
        self._started: dict[str, ConfigStarted] = {}
        self._finished: set[str] = set()
        self._sampler_dead_reported = False
        # Sampler health: one GPU's sample times since the oldest measured window not yet
        # checked against them (metrics.sampler_stall), and those windows.
        self._health_gpu: int | None = None
        self._sample_times: list[int] = []
        self._unchecked: list[Window] = []

    # -- control ---------------------------------------------------------------------

    def start(self) -> None:
        """Prepare everything that can fail fast (sensor, output file, children) in the
        caller's thread, then hand the event loop to a background thread."""
        try:
            with _children_ignore_stop_signals():
                # The tracker of shared memory and semaphores is a child too; made here,
                # before anything needs it, it outlives a hangup and cleans up after us.
                resource_tracker.ensure_running()
            self._host = host.plan(self.sweep.host, host.available_cpus(), self.sweep.source)
            self._bindings = self._bind_gpus()
            specs = self._specs = self._sensor_specs()
            meta = self._describe(specs)
            self._health_gpu = meta["gpu"]["index"]
            self._recorder = Recorder(self.output)
            started = RunStarted(now_ns(), meta)
            self._recorder.write(started)  # a write error here ends the start: nothing is kept
            self.state.apply(started)
            if self._on_event is not None:
                self._on_event(started)
            for b in self._bindings:
                message = other_process_warning(b, self._others.get(b.nvml_index, []))
                if message:
                    self._emit(RunWarning(now_ns(), "session", message))
            with _children_ignore_stop_signals():
                self._sampler = self._start_sampler(specs)
                self._runner = self._start_runner(start_index=0)
            if self._host.parent_cpus is not None:
                host.pin_set(0, self._host.parent_cpus)
        except BaseException:
            self._abandon()
            raise
        self.status = "running"
        self._thread = threading.Thread(target=self._loop, name="wattscope-session", daemon=True)
        self._thread.start()

    def _abandon(self) -> None:
        """Undo a start that failed before the run began: no child left running, no
        half-written recording, no shared memory left behind."""
        for name in ("_runner", "_sampler"):
            child = getattr(self, name, None)
            if child is not None:
                child.stop()
        for pump in self._pumps.values():
            pump.finish(PUMP_FINISH_S)
        if self._recorder is not None:
            self._recorder.discard()
        for gpu in self._sim_gpus:
            gpu.close()

    def stop(self, status: str = "interrupted", reason: str = "stopped by the user") -> None:
        """Ask for a clean stop: the runner ends at its next window edge, the recording
        is finalised with ``status`` (events.RUN_ENDINGS) and ``reason``. The first
        request wins; safe to call from a signal handler or any thread."""
        if self._stop_request is None:
            self._stop_request = (status, reason)
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    # -- setup -----------------------------------------------------------------------

    def _bind_gpus(self) -> tuple[GpuBinding, ...]:
        """The run's GPUs (``run.gpus``, CUDA ordinals) bound to NVML cards; a simulated
        machine's cards go through the same binding. Other processes already on a card
        are noted for the meta and a warning."""
        ordinals = self.sweep.run.gpus
        if self.sim:
            machine = simulated_gpus(SIM_MACHINE_GPUS, self.sweep.sim.seed)
            return resolve(ordinals, machine, where=self._gpus_from)
        bindings = resolve_machine(ordinals, where=self._gpus_from)
        self._others = {b.nvml_index: other_processes(b.nvml_index) for b in bindings}
        return bindings

    def _sensor_specs(self) -> list[SensorSpec]:
        if self.sim:
            from wattscope.telemetry.sim import SimGPU, SimSpec

            for b in self._bindings:
                spec = SimSpec(seed=self.sweep.sim.seed + b.nvml_index, refresh_s=self.sweep.sim.refresh_s)
                self._sim_gpus.append(SimGPU.create(spec))
            return [SensorSpec.simulated(g, b.nvml_index) for g, b in zip(self._sim_gpus, self._bindings)]
        return [SensorSpec.nvml(b.nvml_index) for b in self._bindings]

    def _describe(self, specs: list[SensorSpec]) -> dict[str, Any]:
        gpus = []
        for spec, binding in zip(specs, self._bindings):
            sensor = open_sensor(spec)
            try:
                info = dict(sensor.info())
                info["signals_absent"] = {k: v for k, v in sensor.signals().items() if v is not None}
                info["refresh_s"] = measure_refresh_periods(sensor, 0.3 if self.sim else REFRESH_MEASURE_S)
            finally:
                sensor.close()
            info["binding"] = binding.to_meta()
            info["other_processes"] = [{"pid": pid, "used_mib": round(used / 2**20)}
                                       for pid, used in self._others.get(binding.nvml_index, [])]
            gpus.append(info)
        synthetic = {c.synthetic for c in self.sweep.configs}
        return {
            "schema_version": SCHEMA_VERSION,
            "created": provenance.wall_clock(),
            "clock_anchor": provenance.clock_anchor(),
            "clock": "CLOCK_MONOTONIC ns",
            "host": provenance.host(),
            "packages": provenance.package_versions(),
            "wattscope": provenance.source(),
            "simulated": self.sim,
            "weights": "synthetic" if synthetic == {True} else "real" if synthetic == {False} else "mixed",
            "gpu": gpus[0],
            "gpus": gpus,
            # The user's numbering as the run saw it; each gpus[i]["binding"] pairs it with NVML.
            "cuda_visible_devices": None if self.sim else os.environ.get(VISIBLE_ENV),
            "energy_signal": ("simulated " if self.sim else "") + ENERGY_SIGNAL,
            "sampler": {
                "signal": "power_w",  # what the live graph and the cross-check integrate
                "rate_hz": self.sweep.sampler.rate_hz,
                "energy_hz": self.sweep.sampler.energy_hz,
                "gpus": [g["index"] for g in gpus],
            },
            "sweep": self.sweep.to_dict(),
            "host_isolation": self._host.to_meta(),
        }

    def _start_sampler(self, specs: list[SensorSpec]) -> Any:
        from wattscope.telemetry.sampler import SamplerProcess

        q, self._pumps["sampler"] = self._inbox.channel("sampler")
        s = SamplerProcess(specs, rate_hz=self.sweep.sampler.rate_hz, energy_hz=self.sweep.sampler.energy_hz, queue=q)
        s.start()
        if s.pid is not None:
            host.pin(s.pid, self._host.sampler_cpu)
        return s

    def _start_runner(self, start_index: int) -> Any:
        from wattscope.bench.runner import RunnerProcess

        devices = tuple(b.device for b in self._bindings)
        q, self._pumps["runner"] = self._inbox.channel("runner")  # a new runner, a new queue
        r = RunnerProcess(self.sweep, self._specs, q, sim=self.sim, devices=devices,
                          start_index=start_index, cpu=self._host.runner_cpu)
        r.start()
        return r

    # -- event loop ------------------------------------------------------------------

    def _loop(self) -> None:
        status, reason = "completed", ""
        restarts = 0
        stopping = False
        try:
            while True:
                self._drain(POLL_S)
                if self._stop.is_set() and not stopping:
                    stopping = True
                    self._runner.stop()
                    self._drain(0)
                    status, reason = self._stop_request or STOP_SIGNALS[signal.SIGINT]
                if not self._sampler.is_alive() and not self._sampler_dead_reported:
                    self._sampler_dead_reported = True
                    self._pumps["sampler"].finish(PUMP_FINISH_S)
                    self._emit(RunWarning(now_ns(), "session",
                        f"sampler process died (exit code {self._sampler.exitcode}); the live graph stops, "
                        "window energies still come from the counter"))
                if self._runner.is_alive():
                    continue
                self._pumps["runner"].finish(PUMP_FINISH_S)
                self._drain(0)
                code = self._runner.exitcode
                if code == 0 or stopping:
                    break
                next_index = self._fail_current(f"runner process died (exit code {code})")
                if next_index >= len(self.sweep.configs):
                    break
                restarts += 1
                if restarts > MAX_RUNNER_RESTARTS:
                    status, reason = "failed", f"runner process died {restarts} times"
                    break
                self._emit(RunWarning(now_ns(), "session", f"restarting the runner at configuration {next_index + 1}"))
                with _children_ignore_stop_signals():
                    self._runner = self._start_runner(next_index)
        except Exception as e:  # the recording must still be finalised
            status, reason = "failed", f"{type(e).__name__}: {e}"
            self.error = reason
        finally:
            self._shutdown(status, reason)

    def _drain(self, timeout: float) -> None:
        try:
            ev = self._inbox.get(timeout)
            while True:
                self._emit(ev)
                ev = self._inbox.get(0)
        except queue.Empty:
            pass
        if self._recorder is not None:
            try:
                self._recorder.maybe_commit()
            except RecordingWriteError as e:
                self.stop("write-error", e.message)

    def _fail_current(self, reason: str) -> int:
        """Mark the configurations in progress (the group the runner was measuring)
        failed; return the index the next runner starts at (the next group)."""
        open_ = [s for cid, s in self._started.items() if cid not in self._finished]
        for s in open_:
            self._emit(ConfigFinished(now_ns(), s.config_id, ok=False, reason=reason))
        if open_:
            return max(s.index for s in open_) + 1
        return len(self._finished)


    def _windows_of(self, started: ConfigStarted) -> list[Window]:
        """The windows of ``started``'s group and the idle windows (``group_result`` picks)."""
        ids = {s.config_id for s in self._started.values() if s.group == started.group} | {started.config_id}
        return [w for cid in (*ids, None) for w in self._windows.get(cid, [])]

    def _emit(self, ev: Event) -> None:
        assert self._recorder is not None
        try:
            self._recorder.write(ev)
        except RecordingWriteError as e:
            # Nothing more can be kept: stop the run; the display still sees the events.
            self.stop("write-error", e.message)
        self.state.apply(ev)
        if self._on_event is not None:
            self._on_event(ev)
        if isinstance(ev, ConfigStarted):
            self._started[ev.config_id] = ev
        elif isinstance(ev, Window):
            self._windows[ev.config_id].append(ev)
            if ev.role == "measure":
                self._unchecked.append(ev)
        elif isinstance(ev, Samples):
            self._sample_times.extend(int(r[0]) for r in ev.rows if r[1] == self._health_gpu)
            self._check_windows()
        elif isinstance(ev, PhaseStarted) and not self._unchecked:
            # No window that starts before this phase is left to check.
            del self._sample_times[: max(0, bisect_left(self._sample_times, ev.t_ns) - 1)]
        elif isinstance(ev, ConfigFinished):
            self._finished.add(ev.config_id)
            started = self._started.get(ev.config_id)
            if started is not None:
                result, warnings = metrics.group_result(
                    started, ev, self._started.values(), self._windows_of(started), self.sweep.protocol.ci_target
                )
                self._emit(result)
                for w in warnings:
                    self._emit(w)

    def _check_windows(self, final: bool = False) -> None:
        """Check each measured window against the samples once samples past its end
        have arrived (``final``: with whatever arrived); a stall is a warning on its row."""
        times = self._sample_times
        while self._unchecked:
            w = self._unchecked[0]
            if not final and (not times or times[-1] < w.end_ns):
                return
            self._unchecked.pop(0)
            why = metrics.sampler_stall(times, w.start_ns, w.end_ns, self.sweep.sampler.rate_hz)
            if why is not None:
                self._emit(RunWarning(now_ns(), "sampler", f"{w.config_id}: {why} in a measured {w.phase} "
                                      "window; the row's cross-check is flagged", w.config_id))
            # Keep the last sample before the window's end: the next window's leading edge.
            del times[: max(0, bisect_left(times, w.end_ns) - 1)]

    def _shutdown(self, status: str, reason: str) -> None:
        """Stop both children, take what they sent, and finalise the recording; whatever
        fails on the way, the session ends (``done``) and says how."""
        try:
            # _loop only runs after start() made both children.
            for child in (self._runner, self._sampler):
                child.stop()
            for pump in self._pumps.values():
                pump.finish(PUMP_FINISH_S)
            self._drain(0)
            self._check_windows(final=True)
        except Exception as e:
            if status == "completed":
                status, reason = "failed", f"{type(e).__name__}: {e}"
        finally:
            self._finalise(status, reason)

    def _finalise(self, status: str, reason: str) -> None:
        try:
            ended = RunEnded(now_ns(), status, reason)
            recorder = self._recorder
            if recorder is not None:
                try:
                    recorder.write(ended)
                except RecordingWriteError:
                    pass  # close() stores the ending as a write error
                recorder.close()
                if recorder.error is not None:
                    ended = RunEnded(ended.t_ns, "write-error", recorder.error)
            self.state.apply(ended)
            self.status, self.reason = ended.status, ended.reason
            if self._on_event is not None:
                self._on_event(ended)
        finally:
            for gpu in self._sim_gpus:
                gpu.close()
            if self.status not in RUN_ENDINGS:
                self.status = "failed"
            self.done.set()
