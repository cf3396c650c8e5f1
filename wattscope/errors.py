"""The one base of every error whose message is meant for the user.

Each module raises its own subclass (``ConfigError``, ``RecordingError``, ...) with a
message that names the file, the key and what is allowed; the class says which exit code
the command ends with. The CLI turns any ``WattscopeError`` into ``wattscope: error:
<message>`` and that code in one place, so a new error class needs no CLI change.
"""

from __future__ import annotations

EXIT_FAILED = 1  # the run (or the machine under it) failed
EXIT_BAD_INPUT = 2  # the user's input is wrong; nothing was written
EXIT_INTERRUPTED = 130  # stopped with Ctrl-C; the recording is finalised


class WattscopeError(Exception):
    """An error phrased for the user; ``exit_code`` is what the command exits with."""

    exit_code: int = EXIT_BAD_INPUT

    @property
    def message(self) -> str:
        """The message on one line (a wrapped library message would break a log line)."""
        return " ".join(str(self).split())


class UsageError(WattscopeError):
    """Bad command-line input: the message names the argument or file and what is allowed."""
