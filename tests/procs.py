"""Looking at processes from a test without racing them.

A process a test sees in a listing can be gone by the time the test asks its name or
status: a short-lived helper (an ffmpeg, a process forked just before it execs), or a
stage that is just leaving. psutil then raises NoSuchProcess, and a test that asked in two steps
("exists?", then "status?") failed now and then. These helpers ask once and read a
vanished process as what it is: not alive, not a child any more.
"""

from __future__ import annotations

import psutil


def alive(proc: int | psutil.Process) -> bool:
    """True while the process runs: neither gone nor a zombie waiting to be reaped. A
    psutil.Process also checks that its pid was not reused by another process."""
    try:
        p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children(pid: int | None = None, recursive: bool = True) -> dict[int, str]:
    """The live descendants of `pid` (this process when None), pid -> name. One that
    leaves while it is looked at is left out; so is a zombie."""
    out = {}
    for k in psutil.Process(pid).children(recursive=recursive):
        try:
            if k.status() != psutil.STATUS_ZOMBIE:
                out[k.pid] = k.name()
        except psutil.NoSuchProcess:
            pass
    return out
