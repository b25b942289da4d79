"""The source, decode and chunk stages' loops. Each runs its stage core (stages/) on every
job in flight at once, one thread per job, reading slots from the ring upstream and
filling the ring downstream.

Why a thread per job (issue 9, fairness): with one job at a time, a 3-hour file ahead of
a 10-second request held every later request in the source, decode and chunk stages
until its last window was cut; the short request's first window could not exist before
then. Now every job in flight moves through each stage at once: the threads of different
jobs take turns for the downstream ring's free slots, so a short job's windows reach the
decoder after a few of the long job's (bounded by the ring sizes, not by the long job's
length), and the infer stage admits windows round-robin across jobs. The work in these
stages is I/O and ffmpeg (a child process per job) or numpy, which release the GIL.

Messages of different jobs interleave on a stage's input queue; each job's own messages
stay in order (one thread produces all of them). A stage's dispatcher (its main thread)
routes each message to its job's thread and never blocks doing so, so the ring slots a
message holds always reach the thread that frees them. The source stage admits at most
``PipelineConfig.concurrent_jobs`` jobs at once (later ones wait in the job queue); the
stages after it take every job the one before sends, since holding one back would hold its
ring slots too and could stall the jobs ahead of it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

import numpy as np

from pipeline import logs
from pipeline.constants import N_SAMPLES, PCM_DTYPE
from pipeline.ring import Ring, Stopped
from pipeline.runtime.context import (
    POLL_S,
    JobCancelled,
    JobInput,
    StageContext,
    StageStats,
    _forward,
    _profiling,
    _send_stats,
)

log = logging.getLogger(__name__)


class JobThreads:
    """The jobs a stage is working on, a thread each. An exception that escapes a job's own
    handling (a defect, not a job's failure: those are reported per job) is kept and
    raised in the stage's main thread by ``check``, which ends the stage as before."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self._threads: dict[int, threading.Thread] = {}
        self._crash: BaseException | None = None
        self._changed = threading.Condition()

    def start(self, seq: int, job_id, target, *args) -> None:
        def run():
            try:
                with logs.thread_job(job_id or seq):
                    target(*args)
            except Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._crash = self._crash or exc
            finally:
                with self._changed:
                    self._threads.pop(seq, None)
                    self._changed.notify_all()

        t = threading.Thread(target=run, name=f"wsp-{self.ctx.name}-{seq}", daemon=True)
        with self._changed:
            self._threads[seq] = t
        t.start()

    def check(self) -> None:
        if self._crash is not None:
            raise self._crash

    @property
    def running(self) -> int:
        return len(self._threads)

    def wait_below(self, limit: int) -> None:
        """Until fewer than ``limit`` jobs run (polling the stop event and crashes)."""
        with self._changed:
            while len(self._threads) >= limit:
                self.check()
                if not self.ctx.alive():
                    raise Stopped()
                self._changed.wait(POLL_S)


@contextlib.contextmanager
def _job_ends(ctx: StageContext, seq: int, stats: StageStats, q_out, src: JobInput | None = None):
    """A job's life in a stage: the body forwards its own "end" when it gets through; a
    cancellation, or a failure (reported once, with this stage's name and the traceback),
    forwards an aborted "end" instead, after draining what is left of the job's input.
    The stage's figures for the job follow either way; ``Stopped`` (shutdown) goes on up."""
    try:
        yield
        if src is not None:
            # What the stage core left unread (nothing, normally): its slots go back, never
            # stranded in this job's queue once its thread is gone.
            src.drain()
    except Stopped:
        raise
    except JobCancelled:
        if src is not None:
            src.drain()
        _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
    except Exception as exc:  # noqa: BLE001 - reported to the driver, with traceback
        ctx.fail_job(seq, exc)
        if src is not None:
            src.drain()
        _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
    _send_stats(ctx, seq, stats)


def _get(ctx: StageContext, q, jobs: JobThreads):
    """The next message of a stage's input queue, checking for crashed job threads and
    the stop event between polls."""
    while True:
        jobs.check()
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if not ctx.alive():
                raise Stopped() from None


def _run_source(ctx: StageContext, q_jobs, ring_out: Ring, q_out, stdin_fd):
    jobs = JobThreads(ctx)
    stdin_lock = threading.Lock()  # standard input is one stream: its jobs take turns
    while True:
        jobs.wait_below(ctx.config.concurrent_jobs)
        msg = _get(ctx, q_jobs, jobs)
        if msg is None:
            return
        _, seq, job, _t0 = msg
        jobs.start(seq, job.job_id, _source_job, ctx, seq, job, ring_out, q_out, stdin_fd, stdin_lock)


def _source_job(ctx: StageContext, seq, job, ring_out: Ring, q_out, stdin_fd, stdin_lock) -> None:
    from stages.source import iter_source, source_label

    cfg = ctx.config
    stats = StageStats(t_start=time.monotonic(), profile=job.profile)
    label = job.label or source_label(job.source)
    info = {"label": label, "options": job.options, "batch_size": job.batch_size,
            "profile": job.profile, "job_id": job.job_id}  # fmt: skip
    _forward(ctx, q_out, ("start", seq, info), stats)
    total = 0
    stdin = job.source == "-"
    with _job_ends(ctx, seq, stats, q_out):
        if stdin:
            with stats.wait("starved"):
                while not stdin_lock.acquire(timeout=POLL_S):
                    if not ctx.alive():
                        raise Stopped()
        try:
            blocks = iter_source(
                job.source,
                block_size=ring_out.slot_bytes,
                connect_timeout=cfg.connect_timeout_s,
                stall_timeout=cfg.stall_timeout_s,
                max_redirects=cfg.max_redirects,
                max_bytes=cfg.max_download_bytes,
                allow_private=cfg.allow_private_urls,
                stdin_fd=stdin_fd,
            )
            try:
                while True:
                    # Time inside the generator is the download itself: busy, not starved.
                    block = next(blocks, None)
                    if block is None:
                        break
                    if ctx.cancelled(seq):
                        raise JobCancelled()
                    ctx.maybe_fault(stats.items)
                    with stats.wait("blocked"):
                        slot = ring_out.acquire(ctx.alive, POLL_S)
                    ring_out.view(slot, np.uint8, len(block))[:] = np.frombuffer(block, np.uint8)
                    _forward(ctx, q_out, ("data", seq, slot, len(block)), stats)
                    total += len(block)
                    stats.produced(len(block), ring_out)
            finally:
                blocks.close()
        finally:
            if stdin:
                stdin_lock.release()
        _forward(ctx, q_out, ("end", seq, {"bytes": total}), stats)


def _demux(ctx: StageContext, q_in, job_main, *args) -> None:
    """A stage's main thread after the source: routes each message to its job's thread
    (started at the job's "start" with ``job_main(ctx, start_msg, job_queue, *args)``)."""
    jobs = JobThreads(ctx)
    inputs: dict[int, queue.Queue] = {}
    while True:
        msg = _get(ctx, q_in, jobs)
        if msg is None:
            return
        kind, seq = msg[0], msg[1]
        if kind == "start":
            if seq in inputs:
                raise RuntimeError(f"{ctx.name}: job {seq} started twice")
            inputs[seq] = queue.Queue()  # unbounded: what it holds is bounded by ring slots
            jobs.start(seq, msg[2].get("job_id"), job_main, ctx, msg, inputs[seq], *args)
            continue
        q = inputs.get(seq)
        if q is None:
            raise RuntimeError(f"{ctx.name}: {kind!r} message for job {seq}, which never started")
        q.put(msg)
        if kind == "end":
            del inputs[seq]


def _run_decode(ctx: StageContext, ring_in: Ring, q_in, ring_out: Ring, q_out):
    _demux(ctx, q_in, _decode_job, ring_in, ring_out, q_out)


def _decode_job(ctx: StageContext, start, q_job, ring_in: Ring, ring_out: Ring, q_out) -> None:
    from stages.decode import decode_stream

    cfg = ctx.config
    seq, info = start[1], start[2]
    stats = StageStats(t_start=time.monotonic(), profile=_profiling(info))
    _forward(ctx, q_out, start, stats)
    src = JobInput(ctx, q_job, ring_in, seq, np.uint8, bytes, stats)
    total = 0
    with _job_ends(ctx, seq, stats, q_out, src):
        for pcm in decode_stream(src, name=info["label"], block_samples=cfg.pcm_block_samples,
                                 max_seconds=cfg.max_audio_s):  # fmt: skip
            if ctx.cancelled(seq):
                raise JobCancelled()
            ctx.maybe_fault(stats.items)
            with stats.wait("blocked"):
                slot = ring_out.acquire(ctx.alive, POLL_S)
            ring_out.view(slot, PCM_DTYPE, len(pcm))[:] = pcm
            _forward(ctx, q_out, ("data", seq, slot, len(pcm)), stats)
            total += len(pcm)
            stats.produced(len(pcm), ring_out)
        _forward(ctx, q_out, ("end", seq, {"samples": total}), stats)
        ctx.report("meta", seq, "decode", {"samples": total})


def _run_chunk(ctx: StageContext, ring_in: Ring, q_in, ring_out: Ring, q_out):
    _demux(ctx, q_in, _chunk_job, ring_in, ring_out, q_out)


def _chunk_job(ctx: StageContext, start, q_job, ring_in: Ring, ring_out: Ring, q_out) -> None:
    from stages.chunk import iter_windows

    seq, info = start[1], start[2]
    stats = StageStats(t_start=time.monotonic(), profile=_profiling(info))
    _forward(ctx, q_out, start, stats)
    src = JobInput(ctx, q_job, ring_in, seq, PCM_DTYPE, np.array, stats)
    n = 0
    with _job_ends(ctx, seq, stats, q_out, src):
        for w in iter_windows(src, ctx.config.window_plan):
            if ctx.cancelled(seq):
                raise JobCancelled()
            ctx.maybe_fault(stats.items)
            with stats.wait("blocked"):
                slot = ring_out.acquire(ctx.alive, POLL_S)
            ring_out.view(slot, PCM_DTYPE, N_SAMPLES)[:] = w.audio
            meta = (w.index, w.start, w.valid, w.covered_from, w.final)
            _forward(ctx, q_out, ("data", seq, slot, N_SAMPLES, *meta), stats)
            n += 1
            stats.produced(1, ring_out)
        _forward(ctx, q_out, ("end", seq, {"windows": n}), stats)
