"""What a display reads: one narrow source per run, live or replayed.

The app and the headless printer depend on ``RunSource`` alone: frozen snapshots, whether
the run is still going, its verdict, and a way to stop it. A replay adds
``ReplayControls`` (play, seek, speed), reached through ``source.controls``; a live run
has none. ``LiveSource`` (here) and ``replay.ReplayController`` implement it; tests
implement it with a source of frozen snapshots.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from wattscope import events as ev
from wattscope.state import ENDED, RunState, Snapshot

WAIT_POLL_S = 0.05  # how often a source without a session checks whether its stream ended


class ReplayControls(Protocol):
    """The replay part of a source: a clock over a recording that the user steers.
    ``advance`` applies what the clock has reached; whoever shows the replay calls it."""

    @property
    def playing(self) -> bool: ...
    @property
    def speed(self) -> float: ...
    @property
    def position_ns(self) -> int: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...

    def advance(self) -> None: ...
    def toggle(self) -> None: ...
    def seek(self, delta_s: float) -> None: ...
    def faster(self) -> None: ...
    def slower(self) -> None: ...
    def to_start(self) -> None: ...
    def to_end(self) -> None: ...

    def run_fast(self, on_event: Callable[[ev.Event, RunState], None] | None = None) -> Snapshot:
        """Play everything left at once; ``on_event`` sees each non-sample event."""
        ...


class RunSource(Protocol):
    """One run as every display sees it."""

    @property
    def path(self) -> str | None:
        """The recording file, if there is one (what ``export`` reads)."""
        ...

    @property
    def controls(self) -> ReplayControls | None:
        """The replay controls; None for a live run."""
        ...

    @property
    def done(self) -> bool:
        """Nothing more will change: the live run ended (its recording is final), or the
        replay reached the end of the recording."""
        ...

    @property
    def running(self) -> bool:
        """A run is in progress that ``stop`` would end (a replay never is)."""
        ...

    @property
    def status(self) -> str:
        """The run's verdict so far: waiting, running, completed, interrupted or failed."""
        ...

    def snapshot(self) -> Snapshot: ...

    def stop(self) -> None:
        """Ask the run to stop; returns at once (``wait`` for it to be done)."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Until ``done``, at most ``timeout`` seconds; whether it is done."""
        ...


class LiveSession(Protocol):
    """What a live source needs of a session (``session.Session`` has it)."""

    @property
    def state(self) -> RunState: ...
    @property
    def done(self) -> threading.Event: ...
    @property
    def error(self) -> str | None: ...
    @property
    def status(self) -> str: ...

    def stop(self) -> None: ...


class LiveSource:
    """A live run: a RunState fed by a session's reader thread (or, without a session,
    by whoever holds the state, as tests and benchmarks do), read on ``clock``."""

    controls: ReplayControls | None = None

    def __init__(self, session_or_state: LiveSession | RunState, clock: Callable[[], int] = ev.now_ns,
                 path: str | None = None) -> None:
        self.session: LiveSession | None
        if isinstance(session_or_state, RunState):
            self.session, self.state = None, session_or_state
        else:
            self.session, self.state = session_or_state, session_or_state.state
        self.clock = clock
        self.path = path

    def snapshot(self) -> Snapshot:
        self._note_crash()
        return self.state.snapshot(self.clock())

    @property
    def error(self) -> str:
        err = self.session.error if self.session is not None else None
        return err or ""

    @property
    def done(self) -> bool:
        if self.session is not None:
            return self.session.done.is_set()
        return self.state.snapshot(self.clock()).ended

    @property
    def running(self) -> bool:
        return self.session is not None and not self.session.done.is_set()

    def _note_crash(self) -> None:
        """A session that died without saying so in the stream still shows as failed."""
        if self.session is not None and self.error and self.done:
            self.state.apply(ev.RunEnded(self.clock(), "failed", self.error))

    def stop(self) -> None:
        if self.session is not None:
            self.session.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Until the session is done (its recording finalised); without a session, until
        the stream says the run ended."""
        if self.session is not None:
            return self.session.done.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_POLL_S)
        return True

    @property
    def status(self) -> str:
        """The run's verdict: the session's if it has one, else the stream's."""
        if self.session is not None and self.session.status in ENDED:
            return self.session.status
        return self.state.snapshot(self.clock()).status
