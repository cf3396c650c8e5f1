"""A ``RunSource`` of frozen snapshots, for tests of the displays (as memray's MockReader).

It shows one snapshot (``show`` switches to another), runs nothing and records what the
display asked of it, so a test states exactly what the screen gets."""

from __future__ import annotations

from wattscope import events as ev
from wattscope.serve.state import ServeSnapshot
from wattscope.source import ReplayControls
from wattscope.state import RunState, Snapshot


def snapshot_at(events: list[ev.Event], t_ns: int) -> Snapshot:
    """What a display shows at ``t_ns`` of a stream: the events up to then, folded."""
    state = RunState()
    state.apply_all(e for e in events if e.t_ns <= t_ns)
    return state.snapshot(t_ns)


class MockSource:
    """``running``: the source says a run is in progress (so quitting asks first) until
    ``stop`` is called, which makes it done."""

    controls: ReplayControls | None = None

    def __init__(self, snap: Snapshot, path: str | None = None, running: bool = False) -> None:
        self.snap = snap
        self.path = path
        self._running = running
        self.stopped = False
        self.snapshots_taken = 0

    def show(self, snap: Snapshot) -> None:
        self.snap = snap

    def snapshot(self) -> Snapshot:
        self.snapshots_taken += 1
        return self.snap

    @property
    def running(self) -> bool:
        return self._running and not self.stopped

    @property
    def done(self) -> bool:
        return self.stopped or (not self._running and self.snap.ended)

    @property
    def status(self) -> str:
        return "interrupted" if self.stopped else self.snap.status

    def stop(self) -> None:
        self.stopped = True

    def wait(self, timeout: float | None = None) -> bool:
        return self.done


class MockServeSource(MockSource):
    """One frozen serving snapshot (the serving screen's ``ServeSource``)."""

    def __init__(self, snap: ServeSnapshot, running: bool = False) -> None:
        super().__init__(snap.power, running=running)
        self.serve_snap = snap

    def serving(self) -> ServeSnapshot:
        return self.serve_snap

    @property
    def done(self) -> bool:
        return self.stopped or not self._running

    @property
    def status(self) -> str:
        return "interrupted" if self.stopped else self.serve_snap.status
