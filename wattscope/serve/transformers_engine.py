"""transformers' continuous batching in this process, behind the serve driver's Backend.

For the GPU machines, which have no network and no vLLM: the model is loaded as in
sweeps (``bench.models.load_model``: synthetic weights, fp16/bf16/int8/nf4), handed to
``model.init_continuous_batching`` (a ``ContinuousBatchingManager`` with its own
generation thread), and each request is ``add_request(..., streaming=True)``. One router
thread takes the manager's outputs and hands each to its request's queue (the manager's
``request_id_iter`` requeues what is not its own, which stalls under many concurrent
requests). EOS is disabled (``eos_token_id=-1``) so every request runs to its
``max_tokens``, as ``ignore_eos`` asks of a server.

Each engine step's composition is logged as ``EngineSteps``: the scheduler's
``schedule_batch`` is wrapped to count, per scheduled request, one decode token if it was
decoding before the step was scheduled, else its query tokens as prefill (the scheduler
already marks a request decoding when its last prefill chunk is scheduled), and
``update_batch`` marks the step's end. These are internals of transformers' continuous batching: where they differ (another
version), the steps are not logged, a warning says so, and serving goes on.

Under ``serve-bench --sim`` the engine runs on the CPU and its logged steps drive the
simulated GPU's power at the ``[sim]`` costs (``sim_engine.StepPower``, each step's
length guessed by ``StepPace``), so the whole real-engine path can be checked on a
machine without a GPU against known per-token energies; not a measurement.

torch and transformers are imported only inside the methods that run the model.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from wattscope.bench.workload import WorkloadError
from wattscope.config import BitsAndBytes, Protocol, RunConfig, Sampler, Sim, Sweep
from wattscope.events import EngineSteps, Event, RunWarning, now_ns
from wattscope.serve.config import Serve
from wattscope.serve.driver import BackendError, ServeError

if TYPE_CHECKING:
    from wattscope.serve.sim_engine import StepPower

STEPS_BATCH = 200  # logged steps per EngineSteps event
VOCAB_IDS = 1000
_END = object()
_CANCELLED = object()


class StepPace:
    """How long the next step will take, from the steps so far: a running mean of the
    decode-only steps' length and of the extra time per prefill token. ``StepPower``
    spreads a step's energy over this expected length; a step that runs longer or
    shorter moves energy into the next one, so the closer the guess, the closer the
    simulated power follows the steps."""

    ALPHA = 0.2  # weight of the newest step in the running means

    def __init__(self) -> None:
        self.decode_s = 0.01
        self.per_prefill_token_s = 1e-4

    def expected_s(self, prefill_tokens: int) -> float:
        return self.decode_s + self.per_prefill_token_s * prefill_tokens

    def update(self, prefill_tokens: int, took_s: float) -> None:
        a = self.ALPHA
        if prefill_tokens == 0:
            self.decode_s += a * (took_s - self.decode_s)
        else:
            per_token = max(0.0, took_s - self.decode_s) / prefill_tokens
            self.per_prefill_token_s += a * (per_token - self.per_prefill_token_s)


class TransformersEngine:
    def __init__(self, serve: Serve, precision: str, bnb: BitsAndBytes, emit: Callable[[Event], None],
                 source: str = "serve.toml", device: str | None = None, power: StepPower | None = None) -> None:
        self.serve = serve
        self.source = source  # the config file: synthetic:path.json models resolve beside it
        self.precision = precision
        self.bnb = bnb
        self.emit = emit
        self.device = device
        self.power = power  # serve-bench --sim: the logged steps drive the simulated GPU
        self._pace = StepPace()
        self.info: dict[str, Any] = {}
        self._manager: Any = None
        self._queues: dict[str, queue.Queue[Any]] = {}
        self._lock = threading.Lock()
        self._router: threading.Thread | None = None
        self._closing = threading.Event()
        self._steps: list[list[int]] = []
        self._open_step: list[int] | None = None
        self._steps_off = False  # set when this transformers' internals cannot be read
        self._cache: Any = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        import torch
        from transformers import GenerationConfig

        from wattscope.bench.models import WeightCache, load_model

        device = self.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        rc = RunConfig(f"{self.serve.model}/{self.precision}", self.serve.model, 1, self.precision)
        sweep = Sweep("serve", self.source, "", Protocol(seed=self.serve.seed), Sampler(), self.bnb, Sim(), (rc,))
        self._cache = WeightCache()
        try:
            model = load_model(rc, sweep, device, self._cache, self.info)
        except WorkloadError as e:
            raise ServeError(f"{self.serve.model} ({self.precision}): {e}") from None
        gen = GenerationConfig(max_new_tokens=self.serve.output_tokens.longest,
                               do_sample=False, eos_token_id=-1)
        self._manager = self._init_batching(model, gen, on_cpu=device == "cpu")
        self._hook_steps()
        self._manager.start()
        self._router = threading.Thread(target=self._route, name="cb-router", daemon=True)
        self._router.start()
        self.emit(RunWarning(now_ns(), "serve", f"{self.precision}: model loaded: "
                             f"{ {k: self.info.get(k) for k in ('dtype', 'load_s', 'device_name', 'attn_implementation', 'continuous_batching')} }"))
        # One request first, so allocation and kernel selection are not in the idle window.
        for _ in self.generate("warmup", 64, 8):
            pass
        # Its last token comes out inside the step's update, before the step is logged.
        deadline = time.monotonic() + 5
        while self._open_step is not None and time.monotonic() < deadline:
            time.sleep(0.005)
        self._steps.clear()
        if self.power is not None:
            self.power.reset()

    def _init_batching(self, model: Any, gen: Any, on_cpu: bool) -> Any:
        """The manager with at most ``serve.max_batch`` requests per step. On the CPU the
        paged cache is also bounded to what the load can hold at once (by default it takes
        most of the free memory, which on a host means zeroing tens of GiB). The limits go
        through ``ContinuousBatchingConfig`` where this transformers has one, else onto the
        generation config, which older versions read them from; the "model loaded" warning
        says which."""
        import inspect

        limits: dict[str, Any] = {"max_requests_per_batch": self.serve.max_batch}
        if on_cpu:
            per_request = self.serve.prompt_tokens.longest + self.serve.output_tokens.longest
            limits["num_blocks"] = -(-self.serve.max_batch * per_request // 256) + 1
            limits["max_batch_tokens"] = min(8192, max(256, self.serve.prompt_tokens.longest))
        params = inspect.signature(model.init_continuous_batching).parameters
        if "continuous_batching_config" in params:
            import transformers

            cls = transformers.ContinuousBatchingConfig
            known = getattr(cls, "__dataclass_fields__", {})
            applied = {k: v for k, v in limits.items() if k in known}
            self.info["continuous_batching"] = {"via": "continuous_batching_config", **applied}
            return model.init_continuous_batching(generation_config=gen, continuous_batching_config=cls(**applied))
        for k, v in limits.items():
            setattr(gen, k, v)
        self.info["continuous_batching"] = {"via": "generation_config", **limits}
        return model.init_continuous_batching(generation_config=gen)

    def failure(self) -> str | None:
        m = self._manager
        if m is None:
            return None
        err = getattr(getattr(m, "background_thread_status", None), "fatal_error", None)
        if err is not None:
            return f"the continuous batching loop failed: {err}"
        if not m.is_running() and not self._closing.is_set():
            return "the continuous batching loop stopped"
        return None

    def cancel(self, request_id: str) -> None:
        with self._lock:
            q = self._queues.get(request_id)
        if q is not None:
            q.put(_CANCELLED)  # its generate ends, and cancels it in the engine

    def close(self) -> None:
        # Requests still open are cancelled first: the manager's stop waits for its loop,
        # which otherwise works through them (and restores the model's attention while
        # the loop still runs if the wait times out).
        with self._lock:
            open_ids = list(self._queues)
        for rid in open_ids:
            if self._manager is not None:
                self._manager.cancel_request(rid)
            self.cancel(rid)
        self._closing.set()
        if self._manager is not None:
            self._manager.stop(block=True, timeout=30)
        if self._router is not None:
            self._router.join(5)
        self._flush()
        for q in list(self._queues.values()):
            q.put(_END)
        if self._cache is not None:
            self._cache.cleanup()
        from wattscope.bench.models import release_memory

        self._manager = None
        release_memory()

    # -- requests -----------------------------------------------------------------------

    def _route(self) -> None:
        while not self._closing.is_set():
            out = self._manager.get_result(timeout=0.1)
            if out is None:
                continue
            with self._lock:
                q = self._queues.get(out.request_id)
            if q is not None:
                q.put(out)

    def generate(self, request_id: str, prompt_tokens: int, max_tokens: int) -> Iterator[int]:
        rng = random.Random(request_id)
        ids = [rng.randrange(VOCAB_IDS) for _ in range(prompt_tokens)]
        q: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._queues[request_id] = q
        finished = False
        try:
            rid = self._manager.add_request(ids, request_id=request_id, max_new_tokens=max_tokens, streaming=True,
                                            eos_token_id=-1)
            if rid is None:
                raise BackendError("the engine refused the request")
            seen = 0
            while True:
                try:
                    out = q.get(timeout=self.serve.request_timeout_s)
                except queue.Empty:
                    raise BackendError(f"no token for {self.serve.request_timeout_s:g} s") from None
                if out is _END:
                    raise BackendError("the engine stopped")
                if out is _CANCELLED:
                    raise BackendError("cancelled")
                if out.error:
                    raise BackendError(f"engine error: {out.error}")
                n = len(out.generated_tokens) - seen
                if n > 0:
                    seen += n
                    yield n
                if out.is_finished():
                    finished = True
                    return
        finally:
            with self._lock:
                self._queues.pop(request_id, None)
            # Cancelled, timed out or abandoned: the engine must not go on computing it.
            manager = self._manager  # close() may clear it meanwhile
            if not finished and manager is not None:
                manager.cancel_request(request_id)

    # -- step log -----------------------------------------------------------------------

    def _hook_steps(self) -> None:
        m = self._manager
        create = getattr(m, "_create_batch_processor", None)
        if create is None:
            self._no_steps("no _create_batch_processor")
            return

        def create_and_hook() -> Any:
            bp = create()
            try:
                self._wrap(bp)
            except AttributeError as e:
                self._no_steps(str(e))
            return bp

        m._create_batch_processor = create_and_hook

    def _wrap(self, bp: Any) -> None:
        schedule, update = bp.scheduler.schedule_batch, bp.update_batch
        if getattr(schedule, "_wattscope", False):
            return

        scheduler = bp.scheduler
        scheduler.active_requests  # noqa: B018 -- raises AttributeError here, not in the loop, where it is missing

        def schedule_batch(*args: Any, **kw: Any) -> Any:
            if self._steps_off:
                return schedule(*args, **kw)
            # The scheduler marks a request DECODING as soon as its last prefill chunk is
            # scheduled, so the status after the call cannot tell prefill from decode: a
            # request decodes in this step only if it was decoding before it.
            decoding = {rid for rid, st in scheduler.active_requests.items()
                        if getattr(st.status, "name", "") == "DECODING"}
            result = schedule(*args, **kw)
            batch = result[0] if isinstance(result, tuple) else result
            if batch:
                p = d = 0
                try:
                    for fs in batch:
                        if fs.state.request_id in decoding:
                            d += 1
                        else:
                            p += int(fs.query_length)
                except (AttributeError, TypeError, ValueError) as e:
                    # Never let the log break the engine's loop: stop logging, say why.
                    self._steps_off = True
                    self._no_steps(f"a scheduled request has no {e}")
                    return result
                self._open_step = [now_ns(), 0, p, d]
                if self.power is not None:
                    self.power.begin(p, d, self._pace.expected_s(p), self._open_step[0])
            return result

        def update_batch(*args: Any, **kw: Any) -> Any:
            out = update(*args, **kw)
            step = self._open_step
            if step is not None:
                step[1] = now_ns()
                if self.power is not None:
                    self.power.end(step[1])
                    self._pace.update(step[2], (step[1] - step[0]) / 1e9)
                self._steps.append(step)
                self._open_step = None
                if len(self._steps) >= STEPS_BATCH:
                    self._flush()
            return out

        schedule_batch._wattscope = True  # type: ignore[attr-defined]
        scheduler.schedule_batch = schedule_batch
        bp.update_batch = update_batch

    def _flush(self) -> None:
        if self._steps:
            steps, self._steps = self._steps, []
            self.emit(EngineSteps(now_ns(), steps))

    def _no_steps(self, why: str) -> None:
        self.emit(RunWarning(now_ns(), "serve", f"engine steps are not logged ({why}); "
                             "the attribution runs on the streamed timestamps alone"))
