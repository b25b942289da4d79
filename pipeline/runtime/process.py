"""A stage process's life: its entry point, process-wide settings (name, malloc arena,
library locks), and how a file descriptor reaches it."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from multiprocessing import reduction

from pipeline import logs
from pipeline.errors import wrap
from pipeline.ring import Ring, Stopped
from pipeline.runtime.context import FAULT_ENV, StageContext
from pipeline.runtime.infer_loop import _run_infer
from pipeline.runtime.loops import _run_chunk, _run_decode, _run_source

log = logging.getLogger(__name__)


_STAGE_MAIN = {"source": _run_source, "decode": _run_decode, "chunk": _run_chunk, "infer": _run_infer}


def _set_process_name(name: str) -> None:
    """Name the process (``/proc/PID/comm``) so ps, psutil and tests can tell stages apart."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(15, name.encode()[:15])  # PR_SET_NAME


def _one_malloc_arena() -> None:
    """One glibc malloc arena per stage process.

    The infer stage allocates ~1 MB feature buffers in its reader thread and frees them in
    its main thread; with glibc's per-thread arenas that fragmented the heap and the
    stage's memory crept upward with the audio's length (482 -> 542 MiB from 5 to 60 min).
    A single arena keeps it flat at the same speed. (A fixed mmap threshold also kept it
    flat but made generate ~60% slower: every large tensor became an mmap and page faults.)
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX


def _no_library_semaphores() -> None:
    """Give tqdm (transformers' progress bars) a thread lock instead of the multiprocessing
    lock it would create. A stage shares the driver's resource tracker; a semaphore made in
    a stage that is then killed, or that leaves through ``os._exit``, is never unregistered
    and the tracker prints a "leaked semaphore" warning on the user's terminal."""
    with contextlib.suppress(ImportError):
        import tqdm

        tqdm.tqdm.set_lock(threading.RLock())


ORPHAN_POLL_S = 0.5


def _leave_when_orphaned(name: str, driver_alive, poll_s: float = ORPHAN_POLL_S) -> threading.Thread:
    """Exit this stage process, from a daemon thread, once ``driver_alive()`` says its
    driver is gone (``StageContext.driver_alive``).

    A stage's own loops notice a dead driver within ``POLL_S`` (every wait checks), but
    only while they wait: the infer stage loading or converting a model, a long CPU
    decoder step or a library call blocked on a slow disk polls nothing, and an orphan
    would hold its memory (a GPU's, for a large model) until that call returned, however
    long. PR_SET_PDEATHSIG is no answer for a stage: it fires when the *thread* that
    started the process exits, and a server starts its pipeline from a worker thread that
    ends long before the pipeline does (and restarts it from another). The check is cheap
    and exact (the parent's pid, or a pidfd of the driver). ``os._exit`` is how every
    stage leaves anyway; the driver made every shared-memory segment, and with it gone,
    multiprocessing's resource tracker unlinks them."""

    def watch():
        while driver_alive():
            time.sleep(poll_s)
        log.warning("%s stage: the driver is gone; leaving", name)
        os._exit(1)

    t = threading.Thread(target=watch, name="orphan-watch", daemon=True)
    t.start()
    return t


def _stage_entry(name: str, ctx: StageContext, *args):
    """Entry point of every stage process."""
    _one_malloc_arena()  # first: before any thread of this process could make an arena
    if not ctx.adopt_driver():
        os._exit(1)  # the driver died before this stage started: nobody to work for
    _leave_when_orphaned(name, ctx.driver_alive)
    _no_library_semaphores()
    if ctx.stderr is not None:
        # The driver's stderr as it is now. A spawned stage has it as fd 2 already; one
        # forked from the fork server has the server's, the driver's fd 2 when the server
        # started (a caller that redirected it since, as pytest's capfd does, would miss
        # the infer stage's log).
        fd = _detach(ctx.stderr)
        if fd != 2:
            os.dup2(fd, 2)
            os.close(fd)
    os.dup2(2, 1)  # stray prints from libraries go to stderr: stdout is the transcript's
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _set_process_name(f"wsp-{name}")
    logs.setup(ctx.config.log_level, role=name)
    fault = os.environ.get(FAULT_ENV, "")
    if fault.split(":")[0] == name:
        ctx.fault_at = int(fault.split(":")[1]) if ":" in fault else 0
    elif name == "infer" and fault.split(":")[0] == "engine":  # one decoder step, once
        ctx.step_fault_at = int(fault.split(":")[1]) if ":" in fault else 0
    rings = [a for a in args if isinstance(a, Ring)]
    code = 0
    fatal = False
    try:
        if name == "source" and args[-1] is not None:
            args = args[:-1] + (_detach(args[-1]),)
        _STAGE_MAIN[name](ctx, *args)
    except Stopped:
        pass
    except BaseException as exc:  # noqa: BLE001 - travels to the driver as data
        message, tb = wrap(exc)
        log.error("%s stage failed:\n%s", name, tb)
        with contextlib.suppress(Exception):
            ctx.out_q.put(("fatal", name, message, tb), timeout=1.0)
            fatal = True
        code = 1
    finally:
        for r in rings:
            r.close()
        with contextlib.suppress(Exception):
            if not fatal:  # nothing we still owe the driver: never wait on the pipe
                ctx.out_q.cancel_join_thread()
            ctx.out_q.close()
            ctx.out_q.join_thread()  # a fatal message (small) must leave before we exit
    os._exit(code)


class _InheritFd:
    """Hands a file descriptor to a spawned stage (pickled at Process start only)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return (_identity, (reduction.DupFd(self.fd),))


def _identity(x):
    return x


def _detach(fd) -> int:
    """The file descriptor an ``_InheritFd`` became in this stage: a number under spawn,
    a handle to detach under the fork server."""
    return fd.detach() if hasattr(fd, "detach") else fd
