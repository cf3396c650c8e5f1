"""The sampler: a process of its own that reads the sensors on a fixed clock.

The loop keeps absolute deadlines (tick k is due at start + k * period, so lateness never
accumulates), sleeps until shortly before each deadline and spins the rest only when
``spin_s`` > 0. A tick that overran by more than a period skips the ticks it missed and
counts them as drops. The energy counter (~3 ms a read on an H100, p99 ~17 ms) is read
on a second thread at ``energy_hz``, started half a sample period after a tick: the NVML
call releases the GIL, so a slow counter read never makes a tick late. Its value goes on
the next row; rows where the counter was not read carry NaN.

Rows go to the queue as ``events.Samples`` every ``batch_interval_s`` and health as
``events.SamplerStats`` every ``stats_interval_s``. The process exits by itself when its
parent dies (checked every tick), so a ``kill -9`` of the session never leaves it running.
"""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing as mp
import os
import threading
import time
from typing import Any

from wattscope.child import ChildProcess
from wattscope.events import (
    FRESH_ENERGY,
    FRESH_POWER,
    FRESH_POWER_AVG,
    RunWarning,
    Samples,
    SamplerStats,
    now_ns,
)
from wattscope.telemetry.open import SensorSpec, open_sensor
from wattscope.telemetry.sensor import READ_SIGNALS, SIGNALS

EXIT_OK = 0
EXIT_ERROR = 1  # a sensor failed to open or read; a RunWarning says why
EXIT_ORPHANED = 3  # the parent died

_PR_SET_TIMERSLACK = 29


def _tighten_timer_slack() -> None:
    """Ask Linux to wake us within 1 us of a sleep's end instead of its default 50 us."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _realtime() -> str | None:
    """Put the calling thread (and the threads it starts later) on SCHED_FIFO at the
    lowest real-time priority. On a loaded 2-core VM this took the 1 kHz tick lateness p99
    from 2 ms to 0.04 ms and drops from 2% to 0.03% (nice -10 did not help). The loop
    sleeps between ticks, and the kernel's RT throttling keeps 5% of each core for the
    rest regardless. The energy thread inherits it on purpose: at normal priority it was
    preempted while holding the GIL and stalled the tick thread for up to 9 ms.
    Returns None, or why it was refused (it needs CAP_SYS_NICE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return None
    except (OSError, AttributeError) as e:
        return str(e)


class SamplerProcess(ChildProcess):
    """Parent-side handle of the sampler process.

    ``queue`` receives the events (a spawn-context queue is made when None is given; it is
    ``self.queue``). After ``start()``, ``is_alive()``, ``exitcode`` and ``failure()`` tell
    whether the sampler is still running and, if not, why it stopped.
    """

    def __init__(
        self,
        specs: list[SensorSpec],
        rate_hz: float = 100.0,
        energy_hz: float = 10.0,
        queue: Any = None,
        batch_interval_s: float = 0.1,
        stats_interval_s: float = 1.0,
        spin_s: float = 0.0,
        realtime: bool = True,
    ) -> None:
        if not specs:
            raise ValueError("SamplerProcess needs at least one SensorSpec")
        for name, v, lo, hi in (
            ("rate_hz", rate_hz, 1.0, 1000.0),
            ("energy_hz", energy_hz, 0.1, 100.0),
            ("batch_interval_s", batch_interval_s, 0.001, 10.0),
            ("stats_interval_s", stats_interval_s, 0.1, 60.0),
            ("spin_s", spin_s, 0.0, 0.002),
        ):
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise ValueError(f"SamplerProcess {name} = {v!r} is not allowed; expected {lo} to {hi}")
        self.queue = queue if queue is not None else mp.get_context("spawn").Queue()
        self.rate_hz = float(rate_hz)
        self.energy_hz = float(energy_hz)
        self._stopping = False
        super().__init__(
            run_sampler,
            "wattscope-sampler",
            (
                list(specs),
                self.rate_hz,
                self.energy_hz,
                self.queue,
                batch_interval_s,
                stats_interval_s,
                spin_s,
                realtime,
                os.getpid(),
            ),
            daemon=True,
        )

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the sampler to flush its last batch and exit; kill it if it does not
        within ``timeout``. Keep draining the queue meanwhile: a full queue blocks its flush."""
        self._stopping = True
        self._end(timeout, grace=1.0)

    def failure(self) -> str | None:
        """None while the sampler runs or after a clean stop; otherwise why it is gone."""
        if self._proc.pid is None or self._proc.is_alive():
            return None
        code = self._proc.exitcode
        if code == EXIT_OK and self._stopping:
            return None
        if code is not None and code < 0:
            return f"sampler process (pid {self._proc.pid}) was killed by signal {-code}"
        if code == EXIT_ERROR:
            return f"sampler process (pid {self._proc.pid}) stopped on a sensor error (exit code {code}); see its warning"
        return f"sampler process (pid {self._proc.pid}) exited unexpectedly (exit code {code})"


def run_sampler(
    specs: list[SensorSpec],
    rate_hz: float,
    energy_hz: float,
    queue: Any,
    batch_interval_s: float,
    stats_interval_s: float,
    spin_s: float,
    realtime: bool,
    parent_pid: int,
    stop: Any,
) -> None:
    """The sampler process's body (a module-level function so 'spawn' can find it)."""
    _tighten_timer_slack()
    try:
        sensors = [open_sensor(s) for s in specs]
    except Exception as e:  # the user sees this as a warning, the parent as exit code 1
        queue.put(RunWarning(now_ns(), "sampler", f"sampler could not open its sensors: {e}"))
        queue.close()
        queue.join_thread()
        os._exit(EXIT_ERROR)
    rt_refused = _realtime() if realtime else None
    loop = _Loop(sensors, [s.index for s in specs], rate_hz, energy_hz, queue, stop, batch_interval_s, stats_interval_s, spin_s, parent_pid)
    loop.rt_refused = rt_refused
    code = loop.run()
    for s in sensors:
        s.close()
    if code == EXIT_ORPHANED:
        # Nobody is left to drain the queue: don't wait for its feeder thread.
        queue.cancel_join_thread()
    else:
        queue.close()
        queue.join_thread()
    os._exit(code)


class _Loop:
    def __init__(
        self,
        sensors: list[Any],
        gpu_ids: list[int],
        rate_hz: float,
        energy_hz: float,
        queue: Any,
        stop: Any,
        batch_interval_s: float,
        stats_interval_s: float,
        spin_s: float,
        parent_pid: int,
    ) -> None:
        self.sensors = sensors
        self.gpu_ids = gpu_ids
        self.rate_hz = rate_hz
        self.period_ns = round(1e9 / rate_hz)
        self.energy_period_ns = round(1e9 / energy_hz)
        self.queue = queue
        self.stop = stop
        self.batch_ns = round(batch_interval_s * 1e9)
        self.stats_ns = round(stats_interval_s * 1e9)
        self.spin_ns = round(spin_s * 1e9)
        self.parent_pid = parent_pid
        n = len(sensors)
        self.has_energy = [s.signals().get("energy_j") is None for s in sensors]
        # Written by the energy thread, taken by the main loop; a list slot store is atomic.
        self.pending_energy: list[float | None] = [None] * n
        self.energy_error: str | None = None
        # Why real-time priority was refused, if it was; said once if the clock suffers.
        self.rt_refused: str | None = None

    def _energy_loop(self, start_ns: int, done: threading.Event) -> None:
        offset = self.period_ns // 2
        m = 0
        while True:
            due = start_ns + offset + m * self.energy_period_ns
            wait = (due - now_ns()) / 1e9
            if done.wait(wait if wait > 0 else 0):
                return
            for i, s in enumerate(self.sensors):
                if self.has_energy[i]:
                    try:
                        self.pending_energy[i] = s.energy_j()
                    except Exception as e:
                        self.energy_error = f"energy counter read failed: {e!r}"
                        return
            m = max(m + 1, (now_ns() - start_ns - offset) // self.energy_period_ns + 1)

    def run(self) -> int:
        sensors, gpu_ids, queue = self.sensors, self.gpu_ids, self.queue
        n = len(sensors)
        period, spin = self.period_ns, self.spin_ns
        nan = math.nan
        n_sig = len(SIGNALS)
        i_energy = SIGNALS.index("energy_j")
        n_read = len(READ_SIGNALS)
        prev = [[nan] * n_read for _ in range(n)]
        prev_energy = [nan] * n
        change_counts = [[0] * n_sig for _ in range(n)]
        # SIGNALS positions of the READ_SIGNALS values, for the change counts
        read_pos = [SIGNALS.index(s) for s in READ_SIGNALS]
        sleep, clock = time.sleep, now_ns
        getppid, parent = os.getppid, self.parent_pid
        stop_is_set = self.stop.is_set

        gc.collect()
        gc.freeze()  # setup objects need no more scanning; keeps collections short
        start = clock() + period
        done = threading.Event()
        energy_thread = threading.Thread(target=self._energy_loop, args=(start, done), name="energy", daemon=True)
        energy_thread.start()

        rows: list[tuple] = []
        lateness: list[int] = []
        drops = 0
        ticks = 0
        # The first window opens one period before the first tick, so it holds whole periods.
        stats_t0, cpu0 = start - period, time.process_time()
        next_batch, next_stats = start + self.batch_ns, start + self.stats_ns
        k = 0
        code = EXIT_OK
        try:
            while True:
                due = start + k * period
                rem = due - clock()
                if rem > spin:
                    sleep((rem - spin) / 1e9)
                if spin:
                    while clock() < due:
                        pass
                t = clock()
                lateness.append(t - due)
                ticks += 1
                for i in range(n):
                    vals = sensors[i].read()
                    p = prev[i]
                    cc = change_counts[i]
                    fresh = 0
                    for j in range(n_read):
                        v = vals[j]
                        if v == v and v != p[j]:
                            cc[read_pos[j]] += 1
                            p[j] = v
                            if j == 0:
                                fresh |= FRESH_POWER
                            elif j == 1:
                                fresh |= FRESH_POWER_AVG
                    e = self.pending_energy[i]
                    if e is None:
                        e = nan
                    else:
                        self.pending_energy[i] = None
                        if e == e and e != prev_energy[i]:
                            fresh |= FRESH_ENERGY
                            cc[i_energy] += 1
                            prev_energy[i] = e
                    rows.append((t, gpu_ids[i], vals[0], vals[1], e, vals[2], vals[3], vals[4], vals[5], fresh))

                if stop_is_set():
                    break
                if getppid() != parent:
                    code = EXIT_ORPHANED
                    break
                if self.energy_error is not None:
                    queue.put(RunWarning(clock(), "sampler", self.energy_error))
                    self.energy_error = None
                if t >= next_batch:
                    queue.put(Samples(clock(), rows))
                    rows = []
                    next_batch += self.batch_ns
                    if next_batch <= t:
                        next_batch = t + self.batch_ns
                if t >= next_stats:
                    cpu = time.process_time()
                    stats = self._stats(t, stats_t0, ticks, lateness, drops, change_counts, cpu - cpu0)
                    queue.put(stats)
                    if self.rt_refused and (stats.jitter_p99_ms > 2.0 or drops > 0.01 * ticks):
                        queue.put(
                            RunWarning(
                                clock(),
                                "sampler",
                                f"sampler clock is slipping (p99 lateness {stats.jitter_p99_ms:.1f} ms, {drops} ticks "
                                f"dropped in {(t - stats_t0) / 1e9:.1f} s) and real-time priority was refused "
                                f"({self.rt_refused}); other load on the CPU is delaying it",
                            )
                        )
                        self.rt_refused = None
                    stats_t0, cpu0 = t, cpu
                    ticks, drops, lateness = 0, 0, []
                    change_counts = [[0] * n_sig for _ in range(n)]
                    next_stats += self.stats_ns
                    if next_stats <= t:
                        next_stats = t + self.stats_ns

                # The next tick is k+1, unless we are already past later deadlines:
                # then run the latest one due now and count the ones skipped.
                k += 1
                behind = (clock() - start) // period
                if behind > k:
                    drops += behind - k
                    k = behind
        except Exception as e:
            queue.put(RunWarning(clock(), "sampler", f"sampler stopped: sensor read failed: {e!r}"))
            code = EXIT_ERROR
        finally:
            done.set()
            energy_thread.join(1.0)
        if code != EXIT_ORPHANED and rows:
            queue.put(Samples(clock(), rows))
        return code

    def _stats(
        self, t: int, t0: int, ticks: int, lateness: list[int], drops: int, change_counts: list[list[int]], cpu_s: float
    ) -> SamplerStats:
        dt = max(t - t0, 1) / 1e9
        late = sorted(lateness)
        p99 = late[min(len(late) - 1, math.ceil(0.99 * len(late)) - 1)] / 1e6 if late else math.nan
        n = len(change_counts)
        distinct = {sig: sum(cc[j] for cc in change_counts) / n / dt for j, sig in enumerate(SIGNALS)}
        return SamplerStats(
            t_ns=now_ns(),
            target_hz=self.rate_hz,
            achieved_hz=ticks / dt,
            jitter_p99_ms=p99,
            drops=drops,
            distinct_per_s=distinct,
            cpu_pct=100.0 * cpu_s / dt,
        )
