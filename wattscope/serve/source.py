"""What the serving app reads: a live serve-bench run or a replayed serving recording,
both folding the stream into one ``ServeState``.

``ServeSource`` is the narrow surface (a ``RunSource`` whose frames are
``ServeSnapshot``s): ``LiveServe`` runs a ``ServeSession`` on a thread of its own while
the app holds the main one; ``ServeReplay`` is the sweep replay's controller over a
``ServeState`` (same play, seek and speed controls); tests give frozen snapshots.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

from wattscope import events as ev
from wattscope.replay import ReplayController
from wattscope.serve.session import ServeSession
from wattscope.serve.state import ServeSnapshot, ServeState
from wattscope.source import ReplayControls
from wattscope.state import Snapshot

STARTED_POLL_S = 0.05


class ServeSource(Protocol):
    @property
    def path(self) -> str | None: ...
    @property
    def controls(self) -> ReplayControls | None: ...
    @property
    def done(self) -> bool: ...
    @property
    def running(self) -> bool: ...
    @property
    def status(self) -> str: ...

    def serving(self) -> ServeSnapshot: ...
    def snapshot(self) -> Snapshot: ...
    def stop(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class LiveServe:
    """A ``ServeSession`` run on its own thread, its events folded into ``state``."""

    controls: ReplayControls | None = None

    def __init__(self, make_session: Callable[[Callable[[ev.Event], None]], ServeSession],
                 clock: Callable[[], int] = ev.now_ns) -> None:
        self.state = ServeState()
        self.session = make_session(self.state.apply)
        self.path: str | None = str(self.session.output)
        self.clock = clock
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = ""
        self._started = False  # until start() returns, the status reads "starting"
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start the run and return once it is recording; an error before that (a GPU
        that cannot be bound, an output that cannot be written) is raised here, with
        nothing shown yet."""
        self._thread = threading.Thread(target=self._run, name="serve-session", daemon=True)
        self._thread.start()
        while not self._done.wait(STARTED_POLL_S):
            if self.state.snapshot(self.clock()).status != "waiting":
                self._started = True
                return
        if self._error is not None:
            raise self._error
        self._started = True

    def _run(self) -> None:
        try:
            self._status = self.session.run()
        except BaseException as e:  # raised by start() when it happened before the recording began
            self._error = e
            self._status = "failed"
        finally:
            self._done.set()

    def serving(self) -> ServeSnapshot:
        return self.state.serving(self.clock())

    def snapshot(self) -> Snapshot:
        return self.state.snapshot(self.clock())

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    @property
    def status(self) -> str:
        if not self._started:
            return "starting"
        return self._status if self._done.is_set() else self.state.snapshot(self.clock()).status

    def stop(self, status: str = "interrupted", reason: str = "stopped by the user") -> None:
        """Stop the run with this ending (the user's, a signal's, a failed display's);
        the first ending asked for stands."""
        self.session.halt(status, reason)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class ServeReplay(ReplayController):
    """A serving recording replayed into a ``ServeState`` on a clock."""

    def __init__(self, recording: Any, clock: Callable[[], int] = ev.now_ns, speed: float = 1.0) -> None:
        super().__init__(recording, clock, speed=speed, new_state=ServeState, refold_all=True)

    def serving(self) -> ServeSnapshot:
        with self._lock:
            state, position = self.state, self._applied_to
        assert isinstance(state, ServeState)
        return state.serving(position)
