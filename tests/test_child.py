"""A child killed in the middle of sending cannot stall the parent or the other children.

The faults are the two a SIGKILL can leave in a multiprocessing queue: its writers' lock
taken for good, and half a message in its pipe. Each child has a channel of its own, so
both stay inside the dead child's channel."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import struct
import time

import pytest

from wattscope.child import Inbox

pytestmark = pytest.mark.process


def _send(q: mp.Queue, values: list[int]) -> None:
    for v in values:
        q.put(v)
    q.close()
    q.join_thread()


def _die_holding_the_lock(q: mp.Queue) -> None:
    q._wlock.acquire()  # as the feeder thread does around every message
    os.kill(os.getpid(), signal.SIGKILL)


def _die_mid_message(q: mp.Queue) -> None:
    # The length of a message, then only part of it: what a kill inside send_bytes leaves.
    os.write(q._writer.fileno(), struct.pack("!i", 1000) + b"x" * 10)
    os.kill(os.getpid(), signal.SIGKILL)


def _drain(inbox: Inbox, n: int, timeout: float = 20.0) -> list[int]:
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(inbox.get(0.1))
        except queue.Empty:
            pass
    return got


@pytest.mark.parametrize("fault", [_die_holding_the_lock, _die_mid_message])
def test_a_child_killed_while_sending_spoils_only_its_own_channel(fault) -> None:
    ctx = mp.get_context("spawn")
    inbox = Inbox()
    dead_q, dead_pump = inbox.channel("dead")
    dead = ctx.Process(target=fault, args=(dead_q,))
    dead.start()
    dead.join(30)
    assert dead.exitcode == -signal.SIGKILL
    # A child started afterwards, as a replacement runner is, sends and exits normally.
    live_q, live_pump = inbox.channel("live")
    live = ctx.Process(target=_send, args=(live_q, list(range(50))))
    live.start()
    live.join(30)
    assert live.exitcode == 0, "a sender blocked on a lock it shares with the dead child"
    assert live_pump.finish(5.0)
    assert _drain(inbox, 50) == list(range(50))
    # The dead child's pump is not waited on for long: a half message keeps it stuck, and
    # it is abandoned.
    t0 = time.monotonic()
    finished = dead_pump.finish(0.5)
    assert time.monotonic() - t0 < 2.0
    assert finished == (fault is _die_holding_the_lock)


def test_a_finished_childs_last_events_all_come_through() -> None:
    ctx = mp.get_context("spawn")
    inbox = Inbox()
    q, pump = inbox.channel("runner")
    p = ctx.Process(target=_send, args=(q, list(range(2000))))
    p.start()
    p.join(30)
    assert pump.finish(5.0)
    got = []
    while True:
        try:
            got.append(inbox.get(0))
        except queue.Empty:
            break
    assert got == list(range(2000))


def test_the_hazard_is_real_a_shared_queue_blocks_the_next_sender() -> None:
    """Why channels are per child: on one queue, a sender killed holding the writers' lock
    leaves the next sender unable to finish (its exit waits on its feeder, which waits on
    the lock), as a replacement runner once hung at its exit in CI."""
    ctx = mp.get_context("spawn")
    shared = ctx.Queue()
    dead = ctx.Process(target=_die_holding_the_lock, args=(shared,))
    dead.start()
    dead.join(30)
    nxt = ctx.Process(target=_send, args=(shared, [1, 2, 3]))
    nxt.start()
    nxt.join(3)
    try:
        assert nxt.is_alive() and nxt.exitcode is None
    finally:
        nxt.kill()
        nxt.join(5)
