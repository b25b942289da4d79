"""Logging set-up shared by the driver and the stage processes.

Every record carries the process role (``driver`` or a stage name) and the id of the job
being worked on, so the lines of one request can be picked out of a worker's log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

_state = {"role": "driver"}
# A job id for this thread alone (``thread_job``): every process serves several jobs at
# once (a worker's requests, the stages' job threads, the infer stage's shared loop), so
# there is no process-wide one; outside a block lines say "job=-".
_thread = threading.local()

FORMAT = "%(asctime)s %(levelname)s [%(role)s job=%(job)s] %(name)s: %(message)s"


# transformers warnings that say nothing a user can act on (issue 10: the first job printed
# four of them). They are about how we call generate, which is ours to get right; -vv
# (debug) shows them again.
POINTLESS = (
    ("transformers", "`generation_config` default values have been modified"),
    ("transformers", "The attention mask is not set and cannot be inferred"),
    ("transformers", "A custom logits processor of type"),
    ("transformers", "Due to a bug fix in https://github.com/huggingface/transformers/pull/28687"),
    ("transformers", "Passing a tuple of `past_key_values` is deprecated"),
    ("transformers", "You have passed task=transcribe, but also have set `forced_decoder_ids`"),
    ("transformers", "Whisper did not predict an ending timestamp"),
)


class _QuietLibraries(logging.Filter):
    """Drops the library warnings in ``POINTLESS`` unless the root logger is at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            return True
        for prefix, start in POINTLESS:
            if record.name.startswith(prefix) and str(record.msg).lstrip().startswith(start):
                return False
        return True


class _NoTracebacks(logging.Filter):
    """Below info (the CLI's default, WARNING), records that carry a traceback are dropped:
    the failure reaches the user as the driver's one ``error: ...`` line, and a traceback
    (printed twice, by the stage and by the driver) buried it (issue 10). -v shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().getEffectiveLevel() <= logging.INFO:
            return True
        if record.exc_info or "Traceback (most recent call last)" in record.getMessage():
            return False
        return True


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _state["role"]
        record.job = getattr(_thread, "job", None) or "-"
        return True


def set_role(role: str) -> None:
    _state["role"] = role


@contextlib.contextmanager
def thread_job(job_id):
    """Stamp ``job_id`` on the log lines of this thread (only) inside the block."""
    before = getattr(_thread, "job", None)
    _thread.job = "-" if job_id is None else str(job_id)
    try:
        yield
    finally:
        _thread.job = before


def setup(level: str | int = "WARNING", role: str | None = None) -> None:
    """Log to stderr (never stdout: the transcript goes there) with role and job id."""
    if role is not None:
        set_role(role)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_wsp", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._wsp = True
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_ContextFilter())
    handler.addFilter(_QuietLibraries())
    handler.addFilter(_NoTracebacks())
    root.addHandler(handler)
    root.setLevel(level)
