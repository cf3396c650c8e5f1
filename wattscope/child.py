"""The parent's handle on a wattscope child process (runner, sampler).

Children are started with 'spawn' (CUDA cannot survive a fork) and stop cooperatively:
the parent sets a flag, waits, and only then terminates and finally kills, because a
CUDA kernel or a model load cannot be interrupted from Python.

Each child sends its events on a queue of its own (``Inbox.channel``), never one shared
with another child. A multiprocessing queue's writers share one lock, held while a message
goes into the pipe; a child killed in that moment (a runner that dies, SIGKILL) leaves the
lock taken and may leave half a message in the pipe. Any other writer of that queue would
then block forever (a shared queue once hung a replacement runner at its exit, and the
sampler with it), and its reader would wait forever for the rest of the message. So a
pump thread per channel moves its events into the parent's one in-process queue, and a
pump stuck on a dead child's half message is left behind, never waited on.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections.abc import Callable
from typing import Any

PUMP_POLL_S = 0.1  # how often a pump checks whether its child has finished


class Pump:
    """Moves one child's events from its multiprocessing queue into the inbox."""

    def __init__(self, source: Any, sink: queue.Queue[Any], name: str) -> None:
        self._source = source
        self._sink = sink
        self._finishing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pump-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                event = self._source.get(timeout=PUMP_POLL_S)
            except queue.Empty:
                if self._finishing.is_set():
                    return
                continue
            except (EOFError, OSError, ValueError):  # the queue was closed under it
                return
            self._sink.put(event)

    def finish(self, timeout: float) -> bool:
        """The child has exited: take what is left in its queue, then stop. False if the
        pump is still stuck ``timeout`` later (a half message from a killed child); it is
        then abandoned (a daemon thread), with whatever it had already passed on."""
        self._finishing.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Inbox:
    """The parent's events from all its children, in one in-process queue."""

    def __init__(self) -> None:
        self._events: queue.Queue[Any] = queue.Queue()

    def channel(self, name: str) -> tuple[Any, Pump]:
        """A fresh queue for one child to send on, and the pump that empties it here."""
        source = mp.get_context("spawn").Queue()
        return source, Pump(source, self._events, name)

    def get(self, timeout: float | None) -> Any:
        """The next event; ``queue.Empty`` if none came within ``timeout`` (0: now)."""
        return self._events.get(timeout=timeout) if timeout else self._events.get_nowait()


class ChildProcess:
    def __init__(self, target: Callable[..., Any], name: str, args: tuple, daemon: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        # The stop flag is the child's last argument.
        self._proc = ctx.Process(target=target, name=name, args=(*args, self._stop), daemon=daemon)

    def start(self) -> None:
        self._proc.start()

    def _end(self, timeout: float, grace: float) -> None:
        """Set the stop flag, wait ``timeout``, then terminate, then kill."""
        self._stop.set()
        if self._proc.pid is None:
            return
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(grace)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(grace)

    def join(self, timeout: float | None = None) -> None:
        self._proc.join(timeout)

    def is_alive(self) -> bool:
        return self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode
