"""The parent's handle on a wattscope child process (runner, sampler).

Children are started with 'spawn' (CUDA cannot survive a fork) and stop cooperatively:
the parent sets a flag, waits, and only then terminates and finally kills, because a
CUDA kernel or a model load cannot be interrupted from Python.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


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
