"""The event stream as JSON lines (``wattscope run --jsonl``), for pipelines and CI.

One line per event, exactly as the recording serialises it (``recording.event_json``:
the event's fields, its ``kind``, NaN as null), so ``Event.from_dict(json.loads(line))``
reads each line back and a consumer needs only the vocabulary of ``wattscope.events``.
Sample batches come as ``samples`` events whose ``rows`` follow ``SAMPLE_COLUMNS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from wattscope.events import Event
from wattscope.recording import event_json


class JsonLines:
    """Writes each event it is called with as one flushed line. When the reader goes away
    (a closed pipe) it stops writing and calls ``on_closed`` once, so the run can end
    cleanly with its recording finalised instead of dying on SIGPIPE."""

    def __init__(self, out: IO[str], on_closed: Callable[[], None] | None = None) -> None:
        self.out = out
        self.on_closed = on_closed
        self.closed = False

    def __call__(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self.out.write(event_json(event) + "\n")
            self.out.flush()
        except BrokenPipeError:
            self.closed = True
            if self.on_closed is not None:
                self.on_closed()
