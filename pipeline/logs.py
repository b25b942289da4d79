"""Logging set-up shared by the driver and the stage processes.

Every record carries the process role (``driver`` or a stage name) and the id of the job
being worked on, so the lines of one request can be picked out of a worker's log.
"""

from __future__ import annotations

import logging
import sys

_state = {"role": "driver", "job": "-"}

FORMAT = "%(asctime)s %(levelname)s [%(role)s job=%(job)s] %(name)s: %(message)s"


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _state["role"]
        record.job = _state["job"]
        return True


def set_role(role: str) -> None:
    _state["role"] = role


def set_job(job_id) -> None:
    """The job id stamped on every following log line of this process ("-" for none)."""
    _state["job"] = "-" if job_id is None else str(job_id)


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
    root.addHandler(handler)
    root.setLevel(level)
