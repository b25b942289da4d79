"""Errors that cross process boundaries as data (PyTorch's ExceptionWrapper idea).

A stage never lets an exception escape into multiprocessing's own reporting: it sends
``(stage, one-line message, formatted traceback)`` to the driver, which logs the
traceback and raises one of these with a message fit for a user.
"""

from __future__ import annotations

import signal
import traceback


class PipelineError(Exception):
    """A job failed. ``str()`` is one line for the user; ``traceback`` is for the log."""

    def __init__(self, message: str, stage: str | None = None, traceback: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.traceback = traceback


class JobError(PipelineError):
    """This job failed (bad input, a stage raised); the pipeline itself is still usable."""


class StageDied(PipelineError):
    """A stage process ended or failed to start: the pipeline must be rebuilt."""


class UserError(Exception):
    """Marks an exception whose message is already a clean one-liner for the user
    (bad input, a failed download): its traceback is not worth logging at error level."""


def one_line(exc: BaseException) -> str:
    """A single line describing ``exc``: its message (first line), else its type."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if not line:
        return type(exc).__name__
    return line


def wrap(exc: BaseException) -> tuple[str, str]:
    """(one-line message, formatted traceback) of ``exc``: both plain strings, so they pickle."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return one_line(exc), tb


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, in words ("killed by SIGKILL (probably out of memory)")."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        why = " (probably out of memory)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{why}"
    return f"exited with code {exitcode}"
