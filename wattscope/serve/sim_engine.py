"""A continuously batching engine on the simulated GPU, with known per-token energies.

One thread runs steps like a real engine: admit waiting requests (their whole prompt is
prefilled in the step that admits them) while fewer than ``max_batch`` run, then one
decode token for every sequence admitted earlier. A step lasts ``step_s +
prefill_s_per_token * P + decode_s_per_seq * D`` and costs ``prefill_j_per_token * P +
decode_j_per_token * D + step_j`` above idle, which the engine puts on the simulated GPU as power.
Sleeps overrun on a busy host, so the power of each step is set from the energy still
owed (all steps' cost so far minus what was delivered), which keeps the counter's total
on the known costs to within one step (``StepPower``, which also puts the steps of a real
in-process engine on the simulated GPU under ``serve-bench --sim``). Every step is logged
(``EngineSteps``) as the ground truth the attribution is checked against. Demo and tests
only: not a measurement.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from wattscope.events import EngineSteps, Event, now_ns
from wattscope.serve.config import SimEngine as SimCosts
from wattscope.serve.driver import BackendError, ServeError
from wattscope.telemetry.sim import SimGPU

STEPS_BATCH_S = 0.5  # logged steps go out in batches this far apart
_DONE = -1
_CANCELLED = -3


@dataclass
class _Seq:
    prompt: int
    remaining: int
    out: queue.Queue[int] = field(default_factory=queue.Queue)
    cancelled: bool = False


class StepPower:
    """Engine steps as power on the simulated GPU, at known energies per token.

    ``begin`` sets the power for a step from the energy still owed over the step's
    expected length, ``end`` counts what was delivered and drops back to idle, so the
    counter's total stays on the known cost of the steps so far to within one step,
    however long the steps really last."""

    def __init__(self, costs: SimCosts, gpu: SimGPU) -> None:
        self.costs = costs
        self.gpu = gpu
        self._owed_j = 0.0
        self._extra_w = 0.0
        self._start = 0

    def begin(self, prefill_tokens: int, decode_tokens: int, expected_s: float, t_ns: int) -> None:
        c = self.costs
        self._owed_j += c.prefill_j_per_token * prefill_tokens + c.decode_j_per_token * decode_tokens + c.step_j
        self._extra_w = max(0.0, self._owed_j / max(expected_s, 1e-4))
        self._start = t_ns
        self.gpu.set_load_w(self.gpu.spec.idle_w + self._extra_w, t_ns)

    def end(self, t_ns: int) -> None:
        self._owed_j -= self._extra_w * (t_ns - self._start) / 1e9
        self._extra_w = 0.0
        self.idle(t_ns)

    def reset(self) -> None:
        """Forget what is owed or was delivered beyond it (a warm-up's steps are not part
        of the run, and their misjudged lengths must not move energy into it)."""
        self._owed_j = 0.0
        self.idle()

    def idle(self, t_ns: int | None = None) -> None:
        try:
            self.gpu.set_load_w(self.gpu.spec.idle_w, t_ns)
        except ValueError:
            pass  # the GPU was closed under us at the end of the run


class SimServeEngine:
    def __init__(self, costs: SimCosts, gpu: SimGPU, max_batch: int, emit: Callable[[Event], None]) -> None:
        self.costs = costs
        self.gpu = gpu
        self.max_batch = max_batch
        self.emit = emit
        self._waiting: deque[_Seq] = deque()
        self._open: dict[str, _Seq] = {}
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise ServeError("the simulated engine is already running")
        self._thread = threading.Thread(target=self._loop, name="sim-engine", daemon=True)
        self._thread.start()

    def failure(self) -> str | None:
        return self._error

    def cancel(self, request_id: str) -> None:
        with self._wake:
            seq = self._open.get(request_id)
            if seq is not None:
                seq.cancelled = True  # the loop drops it before its next step
                seq.out.put(_CANCELLED)

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(5)

    def generate(self, request_id: str, prompt_tokens: int, max_tokens: int) -> Iterator[int]:
        seq = _Seq(prompt_tokens, max_tokens)
        with self._wake:
            if self._stop or self._error:
                raise BackendError(self._error or "the engine is stopped")
            self._waiting.append(seq)
            self._open[request_id] = seq
            self._wake.notify()
        try:
            while True:
                n = seq.out.get()
                if n == _DONE:
                    return
                if n == _CANCELLED:
                    raise BackendError("cancelled")
                if n < 0:
                    raise BackendError(self._error or "the engine stopped")
                yield n
        finally:
            with self._wake:
                self._open.pop(request_id, None)

    def _loop(self) -> None:
        c = self.costs
        power = StepPower(c, self.gpu)
        running: list[_Seq] = []
        steps: list[list[int]] = []
        last_batch = now_ns()
        try:
            while True:
                with self._wake:
                    while not running and not self._waiting and not self._stop:
                        power.idle()
                        self._flush(steps)
                        self._wake.wait(0.5)
                    if self._stop:
                        break
                    running = [s for s in running if not s.cancelled]
                    self._waiting = deque(s for s in self._waiting if not s.cancelled)
                    admitted: list[_Seq] = []
                    while self._waiting and len(running) + len(admitted) < self.max_batch:
                        admitted.append(self._waiting.popleft())
                if not running and not admitted:
                    continue  # everything left was cancelled
                p = sum(s.prompt for s in admitted)
                d = len(running)
                planned = c.step_s + c.prefill_s_per_token * p + c.decode_s_per_seq * d
                start = now_ns()
                power.begin(p, d, planned, start)
                time.sleep(planned)
                end = now_ns()
                power.end(end)
                steps.append([start, end, p, d])
                for s in running:
                    s.remaining -= 1
                    s.out.put(1)
                for s in admitted:  # the prefill's token
                    s.remaining -= 1
                    s.out.put(1)
                running += admitted
                for s in [s for s in running if s.remaining <= 0]:
                    s.out.put(_DONE)
                running = [s for s in running if s.remaining > 0]
                if end - last_batch >= STEPS_BATCH_S * 1e9:
                    self._flush(steps)
                    last_batch = end
        except Exception as e:  # said on every request still waiting, and as the engine's failure
            self._error = f"simulated engine failed: {type(e).__name__}: {e}"
        finally:
            self._flush(steps)
            power.idle()
            for s in [*running, *self._waiting]:
                s.out.put(-2)

    def _flush(self, steps: list[list[int]]) -> None:
        if steps:
            self.emit(EngineSteps(now_ns(), list(steps)))
            steps.clear()
