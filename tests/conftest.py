"""The two layers of the suite.

Every test that starts a process (a subprocess, a multiprocessing child, a tmux
session) carries ``@pytest.mark.process``; ``pytest -m "not process"`` is the fast,
in-process layer. A test without the mark that starts a process anyway fails, naming
what it started, so the fast layer stays free of processes as tests are added.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Generator
from typing import Any

import _posixsubprocess
import pytest

# Every way a process is started from Python on Linux ends in one of these:
# subprocess goes through its own binding of fork_exec (or posix_spawn),
# multiprocessing's spawn and forkserver through _posixsubprocess.fork_exec, its fork
# context through os.fork.
_SPAWNERS: tuple[tuple[Any, str], ...] = (
    (subprocess, "_fork_exec"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
)


def _is_resource_tracker(args: tuple[Any, ...]) -> bool:
    """multiprocessing's resource tracker: the interpreter starts it once, on the first
    shared-memory segment (the simulated GPU's), whichever test that happens in. It is
    the one process the fast layer allows."""
    argv = args[0] if args and isinstance(args[0], (list, tuple)) else ()
    return any("multiprocessing.resource_tracker" in str(a) for a in argv)


def _watching(started: list[str]) -> list[tuple[Any, str, Callable[..., Any]]]:
    saved = []
    for owner, name in _SPAWNERS:
        real = getattr(owner, name, None)
        if real is None:
            continue

        def spy(*args: Any, _real: Callable[..., Any] = real, _name: str = name, **kw: Any) -> Any:
            if not _is_resource_tracker(args):
                started.append(_name)
            return _real(*args, **kw)

        saved.append((owner, name, real))
        setattr(owner, name, spy)
    return saved


def _guard(item: pytest.Item, when: str) -> Generator[None, object, object]:
    if item.get_closest_marker("process") is not None:
        return (yield)
    started: list[str] = []
    saved = _watching(started)
    try:
        result = yield
    finally:
        for owner, name, real in saved:
            setattr(owner, name, real)
    if started:
        pytest.fail(
            f"{item.nodeid} started a process in its {when} ({', '.join(sorted(set(started)))}) "
            "but is not marked @pytest.mark.process",
            pytrace=False,
        )
    return result


# Setup too: a module-scoped fixture that starts a process runs in the setup of the
# first test asking for it.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guard(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    return (yield from _guard(item, "call"))


@pytest.fixture(scope="session")
def serve_recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Small serve-bench recordings on the simulated GPU (tests/serve_sim.py), made once;
    tests asking for them start processes and carry the process mark."""
    import serve_sim

    return serve_sim.make(tmp_path_factory.mktemp("serve"))
