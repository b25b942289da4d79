"""Errors that cross process boundaries as data (PyTorch's ExceptionWrapper idea).

A stage never lets an exception escape into multiprocessing's own reporting: it sends
``(stage, one-line message, formatted traceback)`` to the driver, which logs the
traceback and raises one of these with a message fit for a user.
"""

from __future__ import annotations

import re
import signal
import traceback


class PipelineError(Exception):
    """A job failed. ``str()`` is one line for the user; ``traceback`` is for the log."""

    def __init__(self, message: str, stage: str | None = None, traceback: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.traceback = traceback


class JobError(PipelineError):
    """This job failed (bad input, a stage raised); the pipeline itself is still usable.
    ``resource``: the machine ran short (``ResourceError``), not the input or the code."""

    def __init__(self, message: str, stage: str | None = None, traceback: str | None = None,
                 resource: bool = False):  # fmt: skip
        super().__init__(message, stage, traceback)
        self.resource = resource


class StageDied(PipelineError):
    """A stage process ended or failed to start: the pipeline must be rebuilt."""


TOKEN_MAX = 160  # characters of one word (a URL, a host name) a message may echo


def clip_tokens(text: str, limit: int = TOKEN_MAX) -> str:
    """``text`` with every run of non-blank characters longer than ``limit`` cut in the
    middle: messages name hosts and URLs from requests, and one such name was 170,811
    characters long (issue 10)."""
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return re.sub(
        r"\S{%d,}" % (limit + 1), lambda m: m.group(0)[:keep] + "..." + m.group(0)[-keep:], text
    )


class UserError(Exception):
    """Marks an exception whose message is already a clean one-liner for the user
    (bad input, a failed download): its traceback is not worth logging at error level.
    Over-long words in the message (a host name from a request) are cut."""

    def __init__(self, *args):
        super().__init__(*(clip_tokens(a) if isinstance(a, str) else a for a in args))


class ResourceError(UserError):
    """The machine, not the input, is short of something (no disk space for a spool file):
    one clean line and no traceback, like a bad input's, but a server answers it 503
    (try again later), not 400 (your audio is bad)."""


class UnsupportedOptions(UserError, ValueError):
    """Options the loaded model cannot honour (translation or a non-English language on an
    English-only model): the request's fault, not the stage's, so a job fails with this one
    line and no traceback (a server answers 400). A ValueError too, as callers catch it."""


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


_VERBS = ("cannot download ", "cannot decode ", "cannot read ", "invalid URL ", "refusing to download ")


def input_message(label: str, message: str) -> str:
    """``<input>: <what>``, the one style of every failure message about an input (issue
    10): the input named once, first. Stage messages name their input in several places
    ("cannot decode X: why", "no such file: X", "X is empty"); each is brought to that form.
    """
    if not label:
        return message
    for verb in _VERBS:
        lead = f"{verb}{label}: "
        if message.startswith(lead):
            return f"{label}: {verb.strip()}: {message[len(lead):]}"
    if message.startswith(f"{label}: "):
        return message
    if message.startswith(f"{label} "):
        return f"{label}: {message[len(label) + 1:]}"
    if message.endswith(f": {label}"):
        return f"{label}: {message[: -len(label) - 2]}"
    return f"{label}: {message}"
