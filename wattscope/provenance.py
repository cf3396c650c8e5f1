"""What a recording says about where it was made: host, packages, wattscope itself.

Package versions come from installed metadata, never by importing the package, so
recording the torch version does not cost a torch import in the parent process.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from wattscope.events import now_ns

PACKAGES = (
    "wattscope",
    "torch",
    "transformers",
    "accelerate",
    "bitsandbytes",
    "nvidia-ml-py",
    "numpy",
    "pandas",
    "textual",
    "rich",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def host() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def clock_anchor() -> dict[str, int]:
    """Unix time and the run's clock (CLOCK_MONOTONIC, ``events.now_ns``) read back to
    back, so any timestamp of the run can be placed in wall time (``timeline.WallClock``)."""
    mono = now_ns()
    unix = time.time_ns()
    # The midpoint of two monotonic reads around the Unix read halves the error.
    return {"unix_ns": unix, "monotonic_ns": (mono + now_ns()) // 2}


def wall_clock() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
