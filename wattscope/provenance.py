"""What a recording says about where it was made: host, packages, wattscope itself.

Package versions come from installed metadata, never by importing the package, so
recording the torch version does not cost a torch import in the parent process.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from wattscope.events import now_ns
from wattscope.version import __version__

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
    # The code that runs, not what an installer last recorded: a source tree on PYTHONPATH
    # has no metadata, and an editable install keeps the version it was installed at.
    out["wattscope"] = __version__
    return out


def source() -> dict[str, Any]:
    """Which wattscope code made a recording: its version and, when it runs from a git
    checkout, the commit and whether the tree had uncommitted changes (None from a wheel,
    or where git cannot say), so a figure can be traced to the code that measured it."""
    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"version": __version__, "git_commit": None, "git_dirty": None}
    if not (root / ".git").exists():
        return out
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return out
    if commit.returncode == 0:
        out["git_commit"] = commit.stdout.strip()
    if status.returncode == 0:
        out["git_dirty"] = bool(status.stdout.strip())
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
