"""Optional parts of the install: each sits behind a pip extra, and using one without it
is a one-line message with the exact command to run, not an ImportError.

The core install carries what monitoring, replay and the text exports (Markdown, CSV,
JSON, LaTeX tables) need; Parquet and raw traces need pyarrow, plots matplotlib.
"""

from __future__ import annotations

import importlib

from wattscope.errors import EXIT_FAILED, WattscopeError

# extra -> the module it installs
EXTRAS = {"parquet": "pyarrow", "plot": "matplotlib"}


class MissingExtra(WattscopeError):
    """A feature of an extra that is not installed (exit 1: the input was fine)."""

    exit_code = EXIT_FAILED


def require(extra: str, what: str) -> None:
    """Raise MissingExtra naming ``what`` and the pip command unless ``extra``'s module imports."""
    module = EXTRAS[extra]
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {module}, which this install lacks: pip install 'wattscope[{extra}]'") from None
