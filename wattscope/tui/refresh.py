"""How often the app redraws: the one rule ``--fps`` is checked against.

Kept apart from ``app.py`` so the CLI can check the flag (and refuse it in one line)
without importing Textual before anything is started."""

from __future__ import annotations

import math

from wattscope.errors import UsageError

DEFAULT_FPS = 4.0
# Below one frame every two seconds the screen looks frozen; above 30 a frame costs more
# than it shows (the graph's columns are ~0.1 s of samples at the default window).
MIN_FPS = 0.5
MAX_FPS = 30.0


def frame_seconds(fps: float) -> float:
    """Seconds between frames for ``--fps``; a ``UsageError`` naming the allowed range
    for anything outside it (NaN included)."""
    if not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise UsageError(f"--fps {fps:g} is not allowed; expected a refresh rate from {MIN_FPS:g} "
                         f"to {MAX_FPS:g} frames per second (default {DEFAULT_FPS:g})")
    return 1.0 / fps
