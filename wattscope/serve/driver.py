"""The open-loop load driver: Poisson arrivals at an offered rate, every response streamed.

Open loop: each request goes out at its scheduled arrival whether or not earlier ones
have finished (a closed loop would slow its own arrivals down as the server saturates and
never show the queue). Arrivals, prompt and output lengths come from one seeded
``random.Random`` per rate, so the same config offers the same load every time.

Every engine sits behind ``Backend``: ``generate`` yields the number of tokens that arrived
with each chunk of the stream, and the driver stamps them; a failure is a
``BackendError`` with the reason, recorded on the request, and the run goes on.

A request the drain limit cuts off is cancelled in the engine, and the phase ends only
when its thread has stopped (``CANCEL_WAIT_S`` at most; those still running then are
counted in ``LoadOutcome.lingering``, which the session warns of): left running, its work
would be counted in the next phase's energy. The first H100 run left hundreds of requests
queued in the engine from one offered rate into the next. An engine drops a cancelled
request at its next step, so the step under way when the phase ends still runs.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from wattscope.errors import EXIT_FAILED, WattscopeError
from wattscope.events import Event, Request, now_ns
from wattscope.serve.config import Serve


CANCEL_WAIT_S = 10.0  # for cancelled requests' threads to end, after the drain limit


class BackendError(Exception):
    """A request failed; the message is the reason recorded with it."""


class ServeError(WattscopeError):
    """The engine or server could not be brought up, or died: the run ends with exit 1."""

    exit_code = EXIT_FAILED


class Backend(Protocol):
    def start(self) -> None:
        """Bring the engine up (load a model, start and wait for a server); ServeError if not."""

    def generate(self, request_id: str, prompt_tokens: int, max_tokens: int) -> Iterator[int]:
        """Send one request and yield the tokens that arrived with each streamed chunk."""
        ...

    def cancel(self, request_id: str) -> None:
        """Stop a request still in flight: the engine drops its work and its ``generate``
        ends with a BackendError. Unknown or finished ids are ignored."""

    def failure(self) -> str | None:
        """None while the engine runs; otherwise why it is gone."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Arrival:
    request_id: str
    offset_s: float  # after the start of the load phase
    prompt_tokens: int
    max_tokens: int


def schedule(serve: Serve, rate_index: int, precision: str = "") -> list[Arrival]:
    """The arrivals of one offered rate: exponential gaps (a Poisson process) over
    ``duration_s``, lengths drawn from the config's distributions."""
    rate = serve.rates[rate_index]
    rng = random.Random(f"{serve.seed}/{rate_index}")
    out: list[Arrival] = []
    t = rng.expovariate(rate)
    while t < serve.duration_s:
        rid = f"{precision or 'run'}-r{rate_index}-{len(out)}"
        out.append(Arrival(rid, t, serve.prompt_tokens.draw(rng), serve.output_tokens.draw(rng)))
        t += rng.expovariate(rate)
    return out


class _Flight:
    """A request in flight; ``record`` emits its event once, whoever finishes it first
    (the request's own thread, or the drain limit cutting it off)."""

    def __init__(self, arrival: Arrival, arrival_ns: int, rate_index: int, precision: str) -> None:
        self.arrival = arrival
        self.arrival_ns = arrival_ns
        self.rate_index = rate_index
        self.precision = precision
        self.sent_ns = arrival_ns
        self.tokens: list[int] = []
        self.done = False
        self.lock = threading.Lock()

    def record(self, emit: Callable[[Event], None], ok: bool, reason: str = "") -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            tokens = list(self.tokens)
        a = self.arrival
        emit(Request(now_ns(), a.request_id, self.rate_index, self.arrival_ns, self.sent_ns, a.prompt_tokens,
                     a.max_tokens, tokens, ok, reason, self.precision))


def _send(backend: Backend, flight: _Flight, emit: Callable[[Event], None]) -> None:
    a = flight.arrival
    flight.sent_ns = now_ns()
    try:
        for n in backend.generate(a.request_id, a.prompt_tokens, a.max_tokens):
            t = now_ns()
            with flight.lock:
                flight.tokens.extend([t] * n)
    except BackendError as e:
        flight.record(emit, False, str(e))
        return
    except Exception as e:  # an engine bug must not take the run down; say what it was
        flight.record(emit, False, f"{type(e).__name__}: {e}")
        return
    if not flight.tokens:
        flight.record(emit, False, "the stream ended without a token")
    else:
        flight.record(emit, True)


@dataclass(frozen=True)
class LoadOutcome:
    start_ns: int
    end_ns: int
    sent: int
    cut_off: int  # still in flight when the drain limit passed
    failure: str | None  # the engine died: the run must end
    lingering: int = 0  # cancelled requests whose threads had not ended CANCEL_WAIT_S later


def run_load(
    backend: Backend,
    arrivals: list[Arrival],
    rate_index: int,
    emit: Callable[[Event], None],
    *,
    drain_s: float,
    precision: str = "",
    stop: threading.Event | None = None,
    duration_s: float = 0.0,
) -> LoadOutcome:
    """Send ``arrivals`` on their schedule, each from a thread of its own, hold until the
    offered window of ``duration_s`` has passed (an open-loop phase lasts its window
    however few requests it happened to draw: at a low rate, none), then wait up to
    ``drain_s`` for those in flight; record the rest as cut off. Stops sending early when
    ``stop`` is set or the backend reports a failure."""
    stop = stop or threading.Event()
    start = now_ns()
    flights: list[_Flight] = []
    threads: list[threading.Thread] = []
    failure: str | None = None
    for a in arrivals:
        due = start + round(a.offset_s * 1e9)
        while True:
            failure = backend.failure()
            wait = (due - now_ns()) / 1e9
            if failure or stop.is_set() or wait <= 0:
                break
            stop.wait(min(wait, 0.2))
        if failure or stop.is_set():
            break
        f = _Flight(a, due, rate_index, precision)
        th = threading.Thread(target=_send, args=(backend, f, emit), name=f"request-{a.request_id}", daemon=True)
        flights.append(f)
        threads.append(th)
        th.start()
    window_end = start + round(duration_s * 1e9)
    while not (failure or stop.is_set()) and now_ns() < window_end:
        stop.wait(min((window_end - now_ns()) / 1e9, 0.2))
        failure = failure or backend.failure()
    deadline = time.monotonic() + drain_s
    for th in threads:
        while th.is_alive() and time.monotonic() < deadline and not stop.is_set():
            th.join(0.1)
            failure = failure or backend.failure()
    cut = 0
    for f in flights:
        if not f.done:
            cut += 1
            f.record(emit, False, failure or ("stopped" if stop.is_set() else f"still running {drain_s:g} s after the last arrival (serve.drain_s)"))
            backend.cancel(f.arrival.request_id)
    deadline = time.monotonic() + CANCEL_WAIT_S
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    lingering = sum(th.is_alive() for th in threads)
    return LoadOutcome(start, now_ns(), len(flights), cut, failure or backend.failure(), lingering)
