"""The stage side of the runtime: the job protocol's constants, a stage's context
(stop event, cancellations, reports to the driver), its figures, and a job's input
read from an upstream ring."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field

from pipeline.errors import ResourceError, UserError, wrap
from pipeline.ring import Ring, Stopped, wait_get, wait_put

log = logging.getLogger(__name__)


STAGES = ("source", "decode", "chunk", "infer")
JOIN_TIMEOUT_S = 5.0
POLL_S = 0.1
CANCEL_SLOTS = 256  # recent job numbers remembered as cancelled
FAULT_ENV = "WSP_FAULT"  # testing aid: "stage" or "stage:N" raises in that stage's Nth item;
# "engine:N": the infer stage's Nth decoder step raises, once


class JobCancelled(Exception):
    """The job was cancelled (it failed elsewhere, or the driver gave up on it)."""


# --------------------------------------------------------------------------- stage side


@dataclass
class StageStats:
    """Where one stage's time went during one job (issue 4's profile).

    busy = life - starved - blocked; starved: waiting for input; blocked: waiting for a
    free slot or queue space downstream.
    """

    t_start: float
    profile: bool = False
    starved_s: float = 0.0
    blocked_s: float = 0.0
    items: int = 0
    units: float = 0.0  # bytes, samples or windows, as fits the stage
    t_first: float | None = None  # first output
    spans: list = field(default_factory=list)  # (t0, t1, "starved"|"blocked") when profiling
    occupancy: list = field(default_factory=list)  # (t, slots in use) of the output ring

    @contextlib.contextmanager
    def wait(self, kind: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            t1 = time.monotonic()
            if kind == "starved":
                self.starved_s += t1 - t0
            else:
                self.blocked_s += t1 - t0
            if self.profile:
                self.spans.append((t0, t1, kind))

    def produced(self, units: float = 1.0, ring: Ring | None = None) -> None:
        now = time.monotonic()
        if self.t_first is None:
            self.t_first = now
        self.items += 1
        self.units += units
        if self.profile and ring is not None:
            self.occupancy.append((now, ring.occupancy()))

    def finish(self) -> dict:
        t_end = time.monotonic()
        life = t_end - self.t_start
        return {
            "t_start": self.t_start,
            "t_end": t_end,
            "t_first": self.t_first,
            "life_s": life,
            "busy_s": max(0.0, life - self.starved_s - self.blocked_s),
            "starved_s": self.starved_s,
            "blocked_s": self.blocked_s,
            "items": self.items,
            "units": self.units,
            "spans": self.spans,
            "occupancy": self.occupancy,
        }


class StageContext:
    """What every stage process shares with the driver. Pickled once, at Process start."""

    def __init__(self, name, config, stop, cancel, out_q, driver_pid):
        self.name = name
        self.config = config
        self.stop = stop
        self.cancel_arr = cancel
        self.out_q = out_q
        self.driver_pid = driver_pid
        # The driver's environment when it started the stage. A spawned stage has it
        # anyway; one forked from the fork server would otherwise have the server's, as it
        # was when the server started.
        self.environ = dict(os.environ)
        self.fault_at = None
        self.step_fault_at = None  # infer: the engine's Nth decoder step raises, once
        self._driver_fd: int | None = None  # a forked stage's pidfd of the driver
        self.stderr = None  # the driver's stderr, passed at Process start (_InheritFd)

    def adopt_driver(self) -> bool:
        """In the stage, at its start: take the driver's environment and learn how to tell
        that the driver is gone. False: it is gone already.

        A spawned stage's parent is the driver: its pid changes (to a subreaper or init)
        when the driver dies. One forked from multiprocessing's fork server (a later
        pipeline's infer stage, ``pipeline.runtime.driver._infer_context``) has the server
        as its parent, and the server is no stand-in for the driver: every process it
        forks holds the server's "alive" pipe open, so the server outlives a killed driver
        for as long as this stage lives. Such a stage watches the driver itself, through a
        pidfd, which becomes readable when the driver exits (Linux 5.3+; older kernels: a
        signal-0 probe of its pid)."""
        os.environ.clear()
        os.environ.update(self.environ)
        if os.getppid() == self.driver_pid:
            return True
        try:
            self._driver_fd = os.pidfd_open(self.driver_pid)
        except ProcessLookupError:
            return False
        except (AttributeError, OSError):  # no pidfd here: probe the pid
            self._driver_fd = -1
        return self.driver_alive()

    def driver_alive(self) -> bool:
        fd = self._driver_fd
        if fd is None:  # spawned: the driver is the parent
            return os.getppid() == self.driver_pid
        if fd >= 0:
            return not select.select([fd], [], [], 0)[0]
        try:
            os.kill(self.driver_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: the driver's pid, reused
            return False
        return True

    def alive(self) -> bool:
        return not self.stop.is_set() and self.driver_alive()

    def cancelled(self, seq: int) -> bool:
        return self.cancel_arr[seq % CANCEL_SLOTS] == seq

    def cancel(self, seq: int) -> None:
        self.cancel_arr[seq % CANCEL_SLOTS] = seq

    def report(self, *msg) -> None:
        wait_put(self.out_q, msg, self.alive)

    def fail_job(self, seq: int, exc: BaseException) -> None:
        """Report a job's failure once, with this stage's name, and cancel the job."""
        message, tb = wrap(exc)
        user = isinstance(exc, UserError)
        if user:  # bad input: the one-line message says it all
            log.info("job failed in %s: %s", self.name, message)
        else:
            log.error("job failed in %s stage:\n%s", self.name, tb)
        self.cancel(seq)
        # user: True for the input's fault, "resource" for the machine's (ResourceError)
        self.report("error", seq, self.name, message, tb, "resource" if isinstance(exc, ResourceError) else user)

    def maybe_fault(self, item_no: int) -> None:
        if self.fault_at is not None and item_no >= self.fault_at:
            raise RuntimeError(f"injected fault in the {self.name} stage ({FAULT_ENV})")

    def maybe_step_fault(self, step_no: int) -> None:
        if self.step_fault_at is not None and step_no >= self.step_fault_at:
            self.step_fault_at = None
            raise RuntimeError(f"injected fault in a decoder step ({FAULT_ENV})")


class JobInput:
    """The data messages of one job, read from its own queue (``loops._demux`` routes a
    stage's input there), as an iterator.

    Thread-safe (decode's ffmpeg feeder thread iterates it). ``convert(view)`` must copy
    what it needs: the slot goes back to the producer as soon as it returns.
    """

    def __init__(self, ctx: StageContext, q_in, ring: Ring, seq: int, dtype, convert, stats):
        self.ctx, self.q_in, self.ring, self.seq = ctx, q_in, ring, seq
        self.dtype, self.convert, self.stats = dtype, convert, stats
        self.done = False
        self._lock = threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            while not self.done:
                with self.stats.wait("starved"):
                    msg = wait_get(self.q_in, self.ctx.alive, POLL_S)
                if msg is None:
                    raise Stopped()
                kind, seq = msg[0], msg[1]
                if seq != self.seq:  # cannot happen: a job's queue holds its messages only
                    raise RuntimeError(f"{self.ctx.name}: message for job {seq} inside job {self.seq}")
                if kind == "data":
                    slot, n = msg[2], msg[3]
                    try:
                        if self.ctx.cancelled(seq):
                            continue
                        return self.convert(self.ring.view(slot, self.dtype, n))
                    finally:
                        self.ring.release(slot)
                if kind == "end":
                    self.done = True
                    if msg[2].get("aborted") or self.ctx.cancelled(seq):
                        raise JobCancelled()
            raise StopIteration

    def drain(self) -> None:
        """Consume (and free the slots of) whatever is left of this job."""
        try:
            for _ in self:
                pass
        except JobCancelled:
            pass


def _forward(ctx, q_out, msg, stats) -> None:
    with stats.wait("blocked"):
        wait_put(q_out, msg, ctx.alive, POLL_S)


def _send_stats(ctx, seq, stats) -> None:
    ctx.report("stats", seq, ctx.name, stats.finish())


def _profiling(info: dict) -> bool:
    return bool(info.get("profile"))
