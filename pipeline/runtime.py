"""The process runtime: four stage processes joined by shared-memory rings, and the driver.

::

    driver --job--> source --bytes ring--> decode --PCM ring--> chunk --window ring--> infer
      ^                                                                                 |
      +------------------- results, errors, stats (one bounded queue) -----------------+

Each stage's core is a plain generator from ``stages/`` (iter_source, decode_stream,
iter_windows, a backend's prepare/transcribe); this module is the only place that knows
about processes, queues and shared memory.

Messages on a stage's input queue (small tuples; bulk data stays in ring slots):
    ("start", seq, info)          a job begins; info carries its options
    ("data", seq, slot, n, ...)   n items in ``slot`` of the upstream ring
    ("end", seq, info)            the job's data is complete (info["aborted"] if it failed)
    None                          shutdown sentinel
Messages to the driver: ("ready", stage, info), ("result", seq, index, start_s, valid_s,
WindowResult), ("meta", seq, stage, info), ("stats", seq, stage, stats), ("done", seq, info),
("error", seq, stage, message, traceback) for a failed job, ("fatal", stage, message,
traceback) for a stage that cannot go on.

Errors. A job's failure inside a stage (bad input, a failed download, an exception while
working on it) is reported once to the driver with the stage name and traceback; the stage
marks the job cancelled in a shared array, forwards an aborted "end", drains what is left
of the job's input and carries on with the next job, so one bad request never takes the
pipeline down. A stage that cannot go on (its model does not load, it raised outside any
job, it was killed) ends the pipeline: the driver notices through a "fatal" message or the
process's exit code within a fraction of a second and names the stage.

SHUTDOWN PROTOCOL (written once, followed by ``Pipeline.close``; PyTorch DataLoader's
shutdown note is the model):
  1. The driver sets the stop event. Every wait in every stage (queue get, queue put, ring
     slot acquire) is a poll of at most 0.1 s that checks the stop event and whether the
     driver is still its parent, so each stage leaves its loop within ~0.1 s wherever it is.
  2. The driver puts one ``None`` sentinel on every stage input queue (best effort, never
     blocking) so an idle stage wakes at once.
  3. The infer stage, while still loading its model (it cannot poll then, and holds
     nothing that needs an orderly exit), is terminated at once. The driver joins the
     other stages against one deadline (``JOIN_TIMEOUT_S``), then
     ``terminate()``s survivors, joins briefly, then ``kill()``s and joins again.
     ffmpeg, the decode stage's child, is killed in that stage's ``finally`` and also has
     PR_SET_PDEATHSIG=SIGKILL, so it dies with its stage however the stage ends.
  4. Every queue gets ``cancel_join_thread()`` and ``close()``: the driver's exit never
     waits on a feeder thread flushing into a pipe nobody reads.
  5. The driver closes its mappings and unlinks every shared-memory segment exactly once
     (it created them all; stages only attach and close, never unlink).
  6. ``close()`` is idempotent and is also registered with ``weakref.finalize`` (so it runs
     at interpreter exit) and called from ``__exit__``. If the driver itself is SIGKILLed,
     the stages see their parent change and exit, and multiprocessing's resource tracker
     unlinks the segments it still has registered.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import queue
import secrets
import signal
import threading
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing import reduction

import numpy as np

from pipeline import logs
from pipeline.config import Job, PipelineConfig
from pipeline.constants import N_SAMPLES, PCM_DTYPE, SAMPLE_RATE
from pipeline.errors import JobError, PipelineError, StageDied, UserError, describe_exit, wrap
from pipeline.ring import Ring, Stopped, wait_get, wait_put
from pipeline.types import TimedWindow

log = logging.getLogger(__name__)

STAGES = ("source", "decode", "chunk", "infer")
JOIN_TIMEOUT_S = 5.0
POLL_S = 0.1
CANCEL_SLOTS = 256  # recent job numbers remembered as cancelled
FAULT_ENV = "WSP_FAULT"  # testing aid: "stage" or "stage:N" raises in that stage's Nth item


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

    def __init__(self, name, config, stop, cancel, out_q, parent_pid):
        self.name = name
        self.config = config
        self.stop = stop
        self.cancel_arr = cancel
        self.out_q = out_q
        self.parent_pid = parent_pid
        self.fault_at = None

    def alive(self) -> bool:
        return not self.stop.is_set() and os.getppid() == self.parent_pid

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
        self.report("error", seq, self.name, message, tb, user)

    def maybe_fault(self, item_no: int) -> None:
        if self.fault_at is not None and item_no >= self.fault_at:
            raise RuntimeError(f"injected fault in the {self.name} stage ({FAULT_ENV})")


class JobInput:
    """The data messages of one job, read from an upstream queue, as an iterator.

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
                if seq != self.seq:  # cannot happen: jobs travel in order
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


def _run_source(ctx: StageContext, q_jobs, ring_out: Ring, q_out, stdin_fd):
    from stages.source import iter_source, source_label

    cfg = ctx.config
    while True:
        msg = wait_get(q_jobs, ctx.alive, POLL_S)
        if msg is None:
            return
        _, seq, job, t0 = msg
        logs.set_job(job.job_id or seq)
        stats = StageStats(t_start=time.monotonic(), profile=job.profile)
        label = job.label or source_label(job.source)
        info = {"label": label, "options": job.options, "batch_size": job.batch_size,
                "profile": job.profile, "job_id": job.job_id}
        _forward(ctx, q_out, ("start", seq, info), stats)
        total = 0
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
            _forward(ctx, q_out, ("end", seq, {"bytes": total}), stats)
        except Stopped:
            raise
        except JobCancelled:
            _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, with traceback
            ctx.fail_job(seq, exc)
            _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
        _send_stats(ctx, seq, stats)
        logs.set_job(None)


def _run_decode(ctx: StageContext, ring_in: Ring, q_in, ring_out: Ring, q_out):
    from stages.decode import decode_stream

    cfg = ctx.config
    while True:
        msg = wait_get(q_in, ctx.alive, POLL_S)
        if msg is None:
            return
        if msg[0] != "start":
            raise RuntimeError(f"decode: unexpected {msg[0]!r} message outside a job")
        seq, info = msg[1], msg[2]
        logs.set_job(info.get("job_id") or seq)
        stats = StageStats(t_start=time.monotonic(), profile=_profiling(info))
        _forward(ctx, q_out, msg, stats)
        src = JobInput(ctx, q_in, ring_in, seq, np.uint8, bytes, stats)
        total = 0
        try:
            for pcm in decode_stream(src, name=info["label"], block_samples=cfg.pcm_block_samples,
                                     max_seconds=cfg.max_audio_s):
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
        except Stopped:
            raise
        except JobCancelled:
            src.drain()
            _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
        except Exception as exc:  # noqa: BLE001
            ctx.fail_job(seq, exc)
            src.drain()
            _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
        _send_stats(ctx, seq, stats)
        logs.set_job(None)


def _run_chunk(ctx: StageContext, ring_in: Ring, q_in, ring_out: Ring, q_out):
    from stages.chunk import iter_windows

    plan = ctx.config.window_plan
    while True:
        msg = wait_get(q_in, ctx.alive, POLL_S)
        if msg is None:
            return
        if msg[0] != "start":
            raise RuntimeError(f"chunk: unexpected {msg[0]!r} message outside a job")
        seq, info = msg[1], msg[2]
        logs.set_job(info.get("job_id") or seq)
        stats = StageStats(t_start=time.monotonic(), profile=_profiling(info))
        _forward(ctx, q_out, msg, stats)
        src = JobInput(ctx, q_in, ring_in, seq, PCM_DTYPE, np.array, stats)
        n = 0
        try:
            for w in iter_windows(src, plan):
                if ctx.cancelled(seq):
                    raise JobCancelled()
                ctx.maybe_fault(stats.items)
                with stats.wait("blocked"):
                    slot = ring_out.acquire(ctx.alive, POLL_S)
                ring_out.view(slot, PCM_DTYPE, N_SAMPLES)[:] = w.audio
                meta = (w.index, w.start, w.valid, w.covered_from)
                _forward(ctx, q_out, ("data", seq, slot, N_SAMPLES, *meta), stats)
                n += 1
                stats.produced(1, ring_out)
            _forward(ctx, q_out, ("end", seq, {"windows": n}), stats)
        except Stopped:
            raise
        except JobCancelled:
            src.drain()
            _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
        except Exception as exc:  # noqa: BLE001
            ctx.fail_job(seq, exc)
            src.drain()
            _forward(ctx, q_out, ("end", seq, {"aborted": True}), stats)
        _send_stats(ctx, seq, stats)
        logs.set_job(None)


def _profiling(info: dict) -> bool:
    return bool(info.get("profile"))


class _Batch:
    __slots__ = ("seq", "items")

    def __init__(self, seq):
        self.seq = seq
        self.items = []  # _Item, in window order


class _Item:
    """One decode for the main thread: a window review's request and its features, or a
    review that needs no decode at all (the energy gate passed over it: ``request`` None)."""

    __slots__ = ("seq", "review", "request", "features", "sound")

    def __init__(self, seq, review, request=None, features=None, sound=None):
        self.seq, self.review, self.request = seq, review, request
        self.features, self.sound = features, sound


def _prepare_items(backend, seq, review, requests, veto: bool) -> list:
    """Features (and the end-of-text veto's sound profile) for a review's requests."""
    if not requests:
        return [_Item(seq, review)]
    return [
        _Item(seq, review, r, backend.prepare(review.window_audio(r)), review.sound(r) if veto else None)
        for r in requests
    ]


def _infer_reader(ctx, backend, ring_in: Ring, q_in, local: queue.Queue, jobs: dict, cfg, idle):
    """Thread: drains the window ring, opens a review for each window as it arrives
    (``stages.quality.WindowReview``: the energy gate and the first decode request),
    prepares its features (log-mel) and frees the ring slot at once, and groups the
    decodes into batches for the main thread. It runs while the main thread is inside
    generate, so features for batch n+1 are ready when batch n finishes and the upstream
    stages never wait on the GPU for a free slot.

    Work-conserving batching (issue 4's profile showed infer starved for the first full
    batch, then busy long after decode had finished): a partial batch goes to the main
    thread as soon as that thread is idle (``idle`` set, nothing queued) instead of
    waiting to fill up. Batches grow by themselves while the model is the bottleneck."""
    from stages.quality import Pace, WindowReview

    def put(item):
        wait_put(local, item, ctx.alive, POLL_S)

    def get(poll):
        try:
            return q_in.get(timeout=poll)
        except queue.Empty:
            if not ctx.alive():
                raise Stopped() from None
            return _TIMEOUT

    batch = None
    flush_at = 0.0
    try:
        while True:
            if batch is not None and batch.items:
                if (idle.is_set() and local.empty()) or time.monotonic() >= flush_at:
                    put(("batch", batch))  # the model would otherwise sit idle
                    batch = _Batch(batch.seq)
                    continue
                msg = get(IDLE_POLL_S)  # short: notice the main thread going idle
            else:
                msg = get(POLL_S)
            if msg is _TIMEOUT:
                continue
            if msg is None:
                put(None)
                return
            kind, seq = msg[0], msg[1]
            if kind == "start":
                info = msg[2]
                size = info.get("batch_size") or cfg.batch_size  # Job checks its bounds
                quality = cfg.quality
                if info["options"].tokens_per_window is not None:
                    # A forced decode length (benchmarks with random weights) leaves nothing
                    # for the review to judge: every window is decoded once, as it comes.
                    quality = dataclasses.replace(quality, enabled=False)
                jobs[seq] = {"info": info, "batch_size": size, "failed": False, "pace": Pace(),
                             "quality": quality}
                batch = _Batch(seq)
                put(("start", seq))
            elif kind == "data":
                _, _, slot, n, index, start, valid, covered_from = msg
                try:
                    if ctx.cancelled(seq) or jobs[seq]["failed"]:
                        continue
                    audio = np.array(ring_in.view(slot, PCM_DTYPE, n)[:valid])  # own copy
                finally:
                    ring_in.release(slot)
                try:
                    review = WindowReview(index, audio, jobs[seq]["quality"], jobs[seq]["pace"])
                    review.place = (start, valid, covered_from)
                    items = _prepare_items(backend, seq, review, review.requests(), review.cfg.enabled)
                except Exception as exc:  # noqa: BLE001
                    jobs[seq]["failed"] = True
                    ctx.fail_job(seq, exc)
                    continue
                batch.items.extend(items)
                flush_at = time.monotonic() + cfg.batch_wait_s  # no window for this long: flush
                if len(batch.items) >= jobs[seq]["batch_size"]:
                    put(("batch", batch))
                    batch = _Batch(seq)
            elif kind == "end":
                if batch is not None and batch.items:
                    put(("batch", batch))
                batch = None
                put(("end", seq, msg[2]))
    except Stopped:
        put_nowait_quiet(local, None)
    except BaseException as exc:  # noqa: BLE001 - hand it to the main thread
        put_nowait_quiet(local, ("crash", exc))


_TIMEOUT = object()
IDLE_POLL_S = 0.005  # the reader's poll while it holds a partial batch


def put_nowait_quiet(q, item):
    with contextlib.suppress(queue.Full):
        q.put_nowait(item)


def _transcribe_batch(backend, items: list, options) -> list:
    """backend.transcribe on items' features (each row with its request's temperature,
    seed and end-of-text veto profile), halving the batch on CUDA out-of-memory instead of
    failing."""
    import torch

    try:
        sound = [it.sound for it in items]
        return backend.transcribe(
            [it.features for it in items],
            options,
            temperatures=[it.request.temperature for it in items],
            seeds=[it.request.seed for it in items],
            sound=sound if any(x is not None for x in sound) else None,
        )
    except torch.cuda.OutOfMemoryError:
        if len(items) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(items) // 2
        log.warning("out of GPU memory at batch %d: retrying as %d + %d", len(items), half, len(items) - half)
        return _transcribe_batch(backend, items[:half], options) + _transcribe_batch(
            backend, items[half:], options
        )


class _InferJob:
    """The main thread's view of one job: reviews not yet decided, whether the reader has
    sent everything, figures for the profile."""

    def __init__(self, seq, info, stats):
        self.seq, self.info, self.stats = seq, info, stats
        self.open = 0  # reviews whose window result has not gone out
        self.ended: dict | None = None  # the reader's "end" info, once it came
        self.failed = False
        self.decodes = dict.fromkeys(("window", "fallback", "tail", "split"), 0)
        self.engine_at: dict | None = None  # the engine's counters when the job started
        # The per-batch generate path's figures (the engine keeps its own).
        self.batches = dict(steps=0, row_steps_used=0, row_steps_computed=0, encoder_s=0.0,
                            decoder_s=0.0, tokens=0, windows=0)  # fmt: skip

    def count_batch(self, results, timing) -> None:
        """One generate call's figures: every row runs until the longest ends (its steps
        are the longest row's tokens, plus the first step); a row's own steps are used."""
        steps = max((r.n_tokens for r in results), default=0) + 1
        b = self.batches
        b["steps"] += steps
        b["row_steps_computed"] += steps * len(results)
        b["row_steps_used"] += sum(r.n_tokens + 1 for r in results)
        b["tokens"] += sum(r.n_tokens for r in results)
        b["windows"] += len(results)
        if timing is not None:
            b["encoder_s"] += timing[0]
            b["decoder_s"] += timing[1]

    def decode_figures(self, engine) -> dict:
        """The decoder's figures over this job's life (issue 9): slots (or batch size),
        steps, row steps used and computed, encoder and decoder seconds, tokens per second
        of decoder time. With jobs sharing the engine, each job's figures are the engine's
        over its lifetime (shared steps are counted in each)."""
        if engine is not None and self.engine_at is not None:
            d = {k: engine.stats[k] - self.engine_at.get(k, 0) for k in engine.stats if k != "slots"}
            d["slots"] = engine.slots
            d["engine"] = "slots"
        else:
            d = dict(self.batches, slots=self.info.get("batch_size") or None, engine="generate")
        d["tokens_per_s"] = round(d["tokens"] / d["decoder_s"], 1) if d.get("decoder_s") else None
        d["utilisation"] = round(d["row_steps_used"] / d["row_steps_computed"], 4) if d["row_steps_computed"] else None
        for k in ("encoder_s", "decoder_s"):
            d[k] = round(d[k], 4)
        return d


def _run_infer(ctx: StageContext, ring_in: Ring, q_in):
    from stages.infer import load_backend

    cfg = ctx.config
    import transformers

    # transformers logs through a handler of its own: send its records (and warnings)
    # through ours instead, so every line carries the stage and job id.
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    logging.captureWarnings(True)
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # Library chatter (deprecations, generation-config notices) is not for a user's
        # terminal, where a failure must read as one line; -v brings it back.
        import warnings

        transformers.utils.logging.set_verbosity_error()
        warnings.simplefilter("ignore")
    t0 = time.monotonic()
    backend = load_backend(cfg.backend, cfg.model, device=cfg.device, dtype=cfg.dtype)
    load_s = time.monotonic() - t0
    info = {
        "model": _model_name(backend.model_id),
        "device": str(backend.device),
        "dtype": str(backend.dtype),
        "load_s": load_s,
        "t_ready": time.monotonic(),
    }
    log.info("model %s ready on %s in %.1f s", backend.model_id, backend.device, load_s)
    ctx.report("ready", "infer", info)

    # One prepared batch waits while the model works on another: enough to keep the GPU fed,
    # and feature memory stays at about three batches whatever the audio's length.
    local: queue.Queue = queue.Queue(maxsize=1)
    jobs: dict = {}
    idle = threading.Event()  # set while the main thread waits for a batch
    reader = threading.Thread(
        target=_infer_reader, args=(ctx, backend, ring_in, q_in, local, jobs, cfg, idle), daemon=True
    )
    reader.start()
    running: dict[int, _InferJob] = {}
    work: collections.deque = collections.deque()  # _Items to decode: re-decodes first
    engine = _make_engine(backend, cfg)
    in_engine: dict[int, int] = collections.Counter()  # seq -> windows inside the engine

    def finish_if_done(job: _InferJob) -> None:
        if job.ended is None:
            return
        dead = job.failed or ctx.cancelled(job.seq)
        if not dead and (job.open or in_engine[job.seq] or any(it.seq == job.seq for it in work)):
            return
        for it in [it for it in work if it.seq == job.seq]:
            work.remove(it)
        if engine is not None and in_engine.pop(job.seq, 0):
            engine.cancel(lambda it: it.seq == job.seq)  # its windows free their slots now
        running.pop(job.seq, None)
        jobs.pop(job.seq, None)
        if not job.failed and not job.ended.get("aborted") and not ctx.cancelled(job.seq):
            ctx.report("done", job.seq, {**job.ended, "decodes": dict(job.decodes)})
        stats = job.stats.finish()
        stats["decodes"] = dict(job.decodes)
        stats["decode"] = job.decode_figures(engine)
        ctx.report("stats", job.seq, "infer", stats)
        logs.set_job(None)

    def fail(job: _InferJob, exc: BaseException) -> None:
        job.failed = True
        if job.seq in jobs:
            jobs[job.seq]["failed"] = True
        ctx.fail_job(job.seq, exc)

    def report(job: _InferJob, review) -> None:
        start, valid, covered_from = review.place
        with job.stats.wait("blocked"):
            ctx.report(
                "result", job.seq, review.index, start / SAMPLE_RATE, valid / SAMPLE_RATE,
                covered_from / SAMPLE_RATE, review.result(),
            )
        job.open -= 1

    def take_result(job: _InferJob, it: _Item, res, again: list) -> None:
        """A decode's result goes to its window's review; follow-up decodes (fallback,
        split, tail) are prepared at once and go to the front of the work queue."""
        job.decodes[it.request.kind] += 1
        follow = it.review.feed(it.request, res)
        if follow:
            again.extend(_prepare_items(backend, job.seq, it.review, follow, it.review.cfg.enabled))
        if it.review.done:
            report(job, it.review)

    def run_batch() -> None:
        """--engine generate: one generate call on a batch of one job's decodes."""
        seq = work[0].seq
        job = running[seq]
        size = jobs[seq]["batch_size"] if seq in jobs else cfg.batch_size
        items = []
        while work and work[0].seq == seq and len(items) < size:
            items.append(work.popleft())
        if job.failed or ctx.cancelled(seq):
            return
        try:
            ctx.maybe_fault(job.stats.items)
            t0 = time.monotonic()
            results = _transcribe_batch(backend, items, job.info["options"])
            job.count_batch(results, getattr(backend, "last_timing", None))
            log.debug(
                "decoded %d (%s) in %.2f s, tokens up to %d", len(items),
                ",".join(it.request.kind for it in items), time.monotonic() - t0,
                max((r.n_tokens for r in results), default=0),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            fail(job, exc)
            return
        again = []
        for it, res in zip(items, results):
            take_result(job, it, res, again)
        job.stats.produced(len(results))
        work.extendleft(reversed(again))  # re-decodes ride in the next batch, first

    def feed_engine() -> None:
        """Work into the engine while it has room: it holds at most one slot-load waiting,
        so a re-decode made now still goes in ahead of windows that came later."""
        while work and engine.waiting < engine.slots:
            it = work.popleft()
            job = running.get(it.seq)
            if job is None or job.failed or ctx.cancelled(it.seq):
                if job is not None:
                    finish_if_done(job)
                continue
            try:
                ctx.maybe_fault(job.stats.items)
                engine.submit(it, it.features, job.info["options"], temperature=it.request.temperature,
                              seed=it.request.seed, sound=it.sound)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - this job's fault alone
                fail(job, exc)
                finish_if_done(job)
                continue
            in_engine[it.seq] += 1

    def engine_step() -> None:
        """One decoder step of every live slot; finished windows go to their reviews."""
        try:
            finished = engine.step()
        except torch_oom() as exc:
            raise RuntimeError(
                f"out of GPU memory in the decoder with {engine.slots} slots: lower the batch size"
            ) from exc
        again_by_seq: dict[int, list] = {}
        for it, res in finished:
            in_engine[it.seq] -= 1
            job = running.get(it.seq)
            if job is None or job.failed or ctx.cancelled(it.seq):
                continue
            again = again_by_seq.setdefault(it.seq, [])
            try:
                take_result(job, it, res, again)
            except Exception as exc:  # noqa: BLE001
                fail(job, exc)
            job.stats.produced(1)
        for seq, again in again_by_seq.items():
            work.extendleft(reversed(again))
            if seq in running:
                finish_if_done(running[seq])

    def handle(msg) -> None:
        if msg[0] == "crash":
            raise msg[1]
        kind = msg[0]
        if kind == "start":
            seq = msg[1]
            info = jobs[seq]["info"]
            logs.set_job(info.get("job_id") or seq)
            job = _InferJob(seq, info, StageStats(t_start=time.monotonic(), profile=_profiling(info)))
            job.engine_at = dict(engine.stats) if engine is not None else None
            running[seq] = job
        elif kind == "batch":
            batch = msg[1]
            job = running.get(batch.seq)
            if job is None or job.failed or ctx.cancelled(batch.seq):
                return
            for it in batch.items:
                job.open += 1
                if it.request is None:  # nothing to decode: the gate decided
                    report(job, it.review)
                else:
                    work.append(it)
        elif kind == "end":
            seq, end_info = msg[1], msg[2]
            job = running.get(seq)
            if job is None:
                return
            job.ended = end_info
            if jobs.get(seq, {}).get("failed"):
                job.failed = True
            finish_if_done(job)

    def wait_for_message() -> None:
        msg = None
        st = next(iter(running.values())).stats if running else None
        with st.wait("starved") if st else contextlib.nullcontext():
            idle.set()
            while msg is None:
                try:
                    msg = local.get(timeout=POLL_S)
                except queue.Empty:
                    if not ctx.alive() or not reader.is_alive():
                        raise Stopped() from None
            idle.clear()
        handle(msg)

    while True:
        if engine is not None:
            feed_engine()
            if not engine.idle:
                # Hungry for windows while a slot is free: the reader hands over a partial
                # batch at once instead of waiting for it to fill.
                if engine.waiting == 0 and engine.free_slots:
                    idle.set()
                else:
                    idle.clear()
                engine_step()
                for job in [j for j in running.values() if j.failed or ctx.cancelled(j.seq)]:
                    finish_if_done(job)
                while True:  # messages that came during the step, without waiting
                    try:
                        msg = local.get_nowait()
                    except queue.Empty:
                        break
                    handle(msg)
                continue
        elif work:
            job = running.get(work[0].seq)
            if job is None or job.failed or ctx.cancelled(work[0].seq):
                work.popleft()
                if job is not None:
                    finish_if_done(job)
                continue
            if len(work) >= (jobs.get(job.seq) or {}).get("batch_size", cfg.batch_size) or local.empty():
                run_batch()
                finish_if_done(job)
                continue
        wait_for_message()


def _make_engine(backend, cfg):
    """The slot engine for a Whisper backend (``cfg.engine == "slots"``), else None: the
    per-batch generate path (``--engine generate``, and test doubles without a model)."""
    from stages.infer import WhisperBackend

    if cfg.engine != "slots" or not isinstance(backend, WhisperBackend):
        return None
    from stages.engine import SlotEngine

    return SlotEngine(backend, slots=cfg.batch_size)


def torch_oom():
    import torch

    return torch.cuda.OutOfMemoryError


def _model_name(model_id: str) -> str:
    """The name a transcript reports: a baked copy (``pipeline.bake``) names its source."""
    import json

    with contextlib.suppress(OSError, ValueError, TypeError):
        with open(os.path.join(model_id, "bake.json"), encoding="utf-8") as f:
            return str(json.load(f)["source"])
    return model_id


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


def _stage_entry(name: str, ctx: StageContext, *args):
    """Entry point of every stage process."""
    _one_malloc_arena()
    _no_library_semaphores()
    os.dup2(2, 1)  # stray prints from libraries go to stderr: stdout is the transcript's
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _set_process_name(f"wsp-{name}")
    logs.setup(ctx.config.log_level, role=name)
    fault = os.environ.get(FAULT_ENV, "")
    if fault.split(":")[0] == name:
        ctx.fault_at = int(fault.split(":")[1]) if ":" in fault else 0
    rings = [a for a in args if isinstance(a, Ring)]
    code = 0
    fatal = False
    try:
        if name == "source" and args[-1] is not None:
            args = args[:-1] + (args[-1].detach() if hasattr(args[-1], "detach") else args[-1],)
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


# -------------------------------------------------------------------------- driver side


@dataclass
class JobOutcome:
    """What one job produced: the transcript plus where the time went."""

    transcript: object  # pipeline.formats.Transcript
    stages: dict  # stage -> stats dict (see StageStats.finish)
    model: dict  # model id, device, dtype, load_s
    t_submit: float  # monotonic time the job was handed to the pipeline
    t_first_result: float | None
    windows: list  # TimedWindow, in order


class _JobRun:
    """The driver's view of one job in flight: the window results so far, the stages'
    figures, and how it ended (``done_info``, or ``error``)."""

    def __init__(self, seq: int, index: int, job: Job, t_submit: float):
        self.seq, self.index, self.job, self.t_submit = seq, index, job, t_submit
        self.windows: list[TimedWindow] = []
        self.stages: dict = {}
        self.decoded_samples: int | None = None
        self.done_s = 0.0  # seconds of audio transcribed: each window's new audio, counted once
        self.done_info: dict | None = None
        self.t_first: float | None = None
        self.error: JobError | None = None
        self.outcome: JobOutcome | None = None


class Pipeline:
    """The stage processes, their rings, and the driver's end of the queues.

    ``with Pipeline(cfg) as p: p.transcribe(Job("talk.mp3"))``. Start it early: the model
    loads in the infer stage while the first job is still downloading and decoding. One
    pipeline runs any number of jobs in a row; each job's results stay apart (every message
    carries its job number).
    """

    def __init__(self, config: PipelineConfig | None = None):
        self.config = config or PipelineConfig()
        self._procs: dict[str, mp.Process] = {}
        self._rings: list[Ring] = []
        self._queues: list = []
        self._seq = itertools.count(1)
        self._closed = False
        self._broken: PipelineError | None = None
        self.model_info: dict | None = None
        self._finalizer = None
        self._state = {"loading": True}  # shared with the finalizer: no reference to self
        self._lock = threading.Lock()  # one job at a time

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> "Pipeline":
        if self._procs:
            return self
        cfg = self.config
        _check_shm_space(cfg.shm_bytes)
        ctx = mp.get_context("spawn")
        prefix = f"wsp{os.getpid()}_{secrets.token_hex(3)}"
        self.shm_prefix = prefix
        self._stop = ctx.Event()
        self._cancel = ctx.Array("q", [0] * CANCEL_SLOTS, lock=False)
        self._out = ctx.Queue(maxsize=4096)
        q_jobs = ctx.Queue(maxsize=4)
        try:
            r_bytes = Ring(ctx, f"{prefix}_bytes", cfg.byte_slots, cfg.byte_block)
            self._rings.append(r_bytes)
            r_pcm = Ring(ctx, f"{prefix}_pcm", cfg.pcm_slots, cfg.pcm_block_samples * PCM_DTYPE.itemsize)
            self._rings.append(r_pcm)
            r_win = Ring(ctx, f"{prefix}_win", cfg.window_slots, N_SAMPLES * PCM_DTYPE.itemsize)
            self._rings.append(r_win)
            q_bytes = ctx.Queue(maxsize=cfg.byte_slots + 8)
            q_pcm = ctx.Queue(maxsize=cfg.pcm_slots + 8)
            q_win = ctx.Queue(maxsize=cfg.window_slots + 8)
            self._queues = [self._out, q_jobs, q_bytes, q_pcm, q_win] + [r._free for r in self._rings]
            self._inputs = {"source": q_jobs, "decode": q_bytes, "chunk": q_pcm, "infer": q_win}
            stdin = _InheritFd(0) if cfg.inherit_stdin else None
            args = {
                "source": (q_jobs, r_bytes, q_bytes, stdin),
                "decode": (r_bytes, q_bytes, r_pcm, q_pcm),
                "chunk": (r_pcm, q_pcm, r_win, q_win),
                "infer": (r_win, q_win),
            }
            # The infer stage starts first: its model load is the long pole of a cold start.
            for name in ("infer", "source", "decode", "chunk"):
                sctx = StageContext(name, cfg, self._stop, self._cancel, self._out, os.getpid())
                p = ctx.Process(
                    target=_stage_entry, args=(name, sctx, *args[name]), name=f"wsp-{name}", daemon=True
                )
                p.start()
                self._procs[name] = p
                log.debug("stage %s started, pid %d", name, p.pid)
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(
            self, Pipeline._cleanup, self._procs, self._rings, self._queues, self._stop, self._inputs, self._state
        )
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items()}

    def close(self, join_timeout: float | None = None) -> None:
        """Stop every stage and free every segment (the shutdown protocol above).
        ``join_timeout``: how long stages get to leave on their own before they are
        terminated (default JOIN_TIMEOUT_S; the CLI uses less after a Ctrl-C)."""
        if self._closed:
            return
        self._closed = True
        if join_timeout is not None:
            self._state["join_timeout"] = join_timeout
        if self._finalizer is not None:
            self._finalizer()
        else:
            Pipeline._cleanup(
                self._procs, self._rings, self._queues, getattr(self, "_stop", None), getattr(self, "_inputs", {}), self._state
            )

    @staticmethod
    def _cleanup(procs, rings, queues, stop, inputs, state) -> None:
        if stop is not None:
            stop.set()  # 1
        for q in inputs.values():  # 2
            with contextlib.suppress(Exception):
                q.put_nowait(None)
        infer = procs.get("infer")  # 3
        if state.get("loading") and infer is not None and infer.is_alive():
            infer.terminate()
        deadline = time.monotonic() + state.get("join_timeout", JOIN_TIMEOUT_S)  # 3
        for p in procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs.values():
            if p.is_alive():
                log.info("stage %s did not stop in time: terminating it", p.name)
                p.terminate()
        for p in procs.values():
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
        for q in queues:  # 4
            with contextlib.suppress(Exception):
                q.cancel_join_thread()
                q.close()
        for r in rings:  # 5
            r.close()
            r.unlink()

    def kill(self) -> None:
        """Tear down at once, for a second Ctrl-C: SIGKILL every stage (ffmpeg dies with
        its stage), let no queue wait on its feeder, unlink every segment. No joins."""
        self._closed = True
        for p in self._procs.values():
            with contextlib.suppress(Exception):
                p.kill()
        for q in self._queues:
            with contextlib.suppress(Exception):
                q.cancel_join_thread()
        for r in self._rings:
            with contextlib.suppress(Exception):
                r.unlink()

    def wait_ready(self, timeout: float | None = None) -> dict:
        """Block until the model is loaded (or raise if a stage failed). Returns model info."""
        self._check_usable()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.model_info is None:
            msg = self._get(deadline)
            if msg is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("the model did not load in time")
                continue
            self._handle_control(msg)
        return self.model_info

    # -- jobs -----------------------------------------------------------------------------

    def transcribe(self, job: Job | str, progress=None, timeout: float | None = None):
        """Run one job to the end and return its Transcript (see ``run_job``)."""
        return self.run_job(job, progress=progress, timeout=timeout).transcript

    def run_job(self, job: Job | str, progress=None, timeout: float | None = None) -> JobOutcome:
        """Run one job. ``progress(done_s, decoded_s, decode_finished)`` is called as window
        results arrive. Raises JobError for a failed job (the pipeline stays usable) and
        StageDied when a stage is gone (the pipeline is then closed)."""
        if isinstance(job, str):
            job = Job(job)
        with self._lock:
            self._check_usable()
            return self._run(job, progress, timeout)

    def run_jobs(self, jobs: list, progress=None, timeout: float | None = None) -> list:
        """Run several jobs at once: all are submitted together and flow through the
        stages one after another, while the infer stage decodes the windows of all of
        them in the same decoder slots (a job's first windows fill the slots the last
        one's tail leaves free). Returns, per job and in order, its JobOutcome or the
        JobError it failed with: one job's failure never touches another's result.
        ``progress(i, done_s, decoded_s, decode_finished)`` for job ``i``. Raises
        StageDied when a stage is gone (the pipeline is then closed)."""
        jobs = [Job(j) if isinstance(j, str) else j for j in jobs]
        with self._lock:
            self._check_usable()
            runs = self._run_many(jobs, progress, timeout)
        return [r.error if r.error is not None else r.outcome for r in runs]

    def _run(self, job: Job, progress, timeout) -> JobOutcome:
        prog = None if progress is None else (lambda _i, *a: progress(*a))
        (run,) = self._run_many([job], prog, timeout)
        if run.error is not None:
            raise run.error
        return run.outcome

    def _run_many(self, jobs: list, progress, timeout) -> list:
        t_submit = time.monotonic()
        deadline = None if timeout is None else t_submit + timeout
        runs = [_JobRun(next(self._seq), i, job, t_submit) for i, job in enumerate(jobs)]
        by_seq = {r.seq: r for r in runs}
        unsent = collections.deque(runs)  # a full job queue never blocks the reading of results
        open_ = set(by_seq)
        try:
            while open_:
                while unsent:
                    r = unsent[0]
                    try:
                        self._inputs["source"].put_nowait(("job", r.seq, r.job, r.t_submit))
                    except queue.Full:
                        break
                    unsent.popleft()
                msg = self._get(deadline)
                if msg is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        for seq in list(open_):
                            r = by_seq[seq]
                            r.error = JobError(f"{r.job.label or 'the job'} timed out after {timeout:.0f} s", stage=None)
                            self._cancel[seq % CANCEL_SLOTS] = seq
                        open_.clear()
                    continue
                kind = msg[0]
                if kind in ("ready", "fatal"):
                    self._handle_control(msg)
                    continue
                r = by_seq.get(msg[1])
                if r is None:
                    continue  # a message of an earlier, abandoned job
                if kind == "stats":
                    r.stages[msg[2]] = msg[3]
                if r.seq not in open_:
                    continue  # done or failed: only its stats still count
                if kind == "result":
                    _, _, index, start_s, valid_s, covered_s, res = msg
                    if r.t_first is None:
                        r.t_first = time.monotonic()
                    r.windows.append(TimedWindow(index=index, start=start_s, valid=valid_s, result=res))
                    # Each window's share: its audio and the quiet stretch before it.
                    r.done_s += start_s + valid_s - covered_s
                    if progress is not None:
                        dec = r.decoded_samples / SAMPLE_RATE if r.decoded_samples is not None else None
                        progress(r.index, r.done_s, dec, r.decoded_samples is not None)
                elif kind == "meta":
                    if msg[2] == "decode":
                        r.decoded_samples = msg[3]["samples"]
                elif kind == "error":
                    _, _, stage, message, tb, user = msg
                    if not user:
                        message = f"{stage} stage failed: {message}"
                    r.error = JobError(message, stage=stage, traceback=None if user else tb)
                    self._cancel[r.seq % CANCEL_SLOTS] = r.seq  # the stages drop what is left of it
                    open_.discard(r.seq)
                elif kind == "done":
                    r.done_info = msg[2]
                    open_.discard(r.seq)
        except BaseException as exc:
            for seq in open_:
                self._cancel[seq % CANCEL_SLOTS] = seq  # the stages drop what is left of them
            if isinstance(exc, KeyboardInterrupt):  # the CLI writes what was finished
                exc.partial_runs = [sorted(r.windows, key=lambda w: w.index) for r in runs]
                exc.partial_windows = exc.partial_runs[0] if len(runs) == 1 else None
            raise
        ok = [r for r in runs if r.error is None]
        for r in ok:
            expected = r.done_info.get("windows", len(r.windows))
            if len(r.windows) != expected:
                r.error = JobError(f"internal error: {expected} windows sent but {len(r.windows)} came back")
            elif progress is not None and r.decoded_samples is not None:
                # Quiet audio after the last window was never a window's share: done.
                total_s = r.decoded_samples / SAMPLE_RATE
                progress(r.index, total_s, total_s, True)
        # The other stages' stats left before infer's "done" was possible; give the queue a
        # moment to deliver them.
        grace = time.monotonic() + 1.0
        while any(len(r.stages) < len(STAGES) for r in ok) and time.monotonic() < grace:
            msg = self._get(grace)
            if msg is not None and msg[0] == "stats" and msg[1] in by_seq:
                by_seq[msg[1]].stages[msg[2]] = msg[3]
            elif msg is not None and msg[0] in ("ready", "fatal"):
                self._handle_control(msg)
        for r in runs:
            if r.error is None:
                r.outcome = self._outcome(r)
        return runs

    def _outcome(self, r: "_JobRun") -> JobOutcome:
        from pipeline.formats import Transcript
        from pipeline.stitch import majority_language, stitch, transcript_text

        t_end = time.monotonic()
        duration = (r.decoded_samples or 0) / SAMPLE_RATE
        windows = sorted(r.windows, key=lambda w: w.index)
        segments = stitch(windows, duration=duration)
        language = r.job.options.language or majority_language(windows)
        wall = t_end - r.t_submit
        timings = _timings(r.stages, self.model_info, r.t_submit, t_end, duration)
        transcript = Transcript(
            text=transcript_text(segments),
            language=language,
            duration=round(duration, 3),
            model=(self.model_info or {}).get("model", self.config.model),
            segments=tuple(segments),
            timings=timings,
        )
        log.info("job done: %.1f s of audio in %.2f s (%.1fx real time)", duration, wall, duration / wall if wall else 0)
        return JobOutcome(transcript, r.stages, dict(self.model_info or {}), r.t_submit, r.t_first, windows)

    # -- plumbing -------------------------------------------------------------------------

    def _check_usable(self):
        if self._closed:
            raise PipelineError("the pipeline is closed")
        if self._broken is not None:
            raise self._broken
        if not self._procs:
            self.start()

    def _put_job(self, msg):
        q = self._inputs["source"]
        while True:
            try:
                q.put(msg, timeout=POLL_S)
                return
            except queue.Full:
                self._check_stages()

    def _get(self, deadline):
        """One message from the stages, or None after a short poll. Checks stage health."""
        wait = 0.25
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        try:
            return self._out.get(timeout=wait)
        except queue.Empty:
            self._check_stages()
            return None

    def _handle_control(self, msg):
        if msg[0] == "ready":
            self.model_info = msg[2]
            self._state["loading"] = False
        elif msg[0] == "fatal":
            _, stage, message, tb = msg
            self._fail(StageDied(f"{stage} stage failed: {message}", stage=stage, traceback=tb))

    def _check_stages(self):
        for name, p in self._procs.items():
            if p.exitcode is not None:
                # Prefer the stage's own account of what went wrong, if it sent one.
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    try:
                        msg = self._out.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if msg[0] in ("fatal", "ready"):
                        self._handle_control(msg)
                self._fail(StageDied(f"the {name} stage (pid {p.pid}) {describe_exit(p.exitcode)}", stage=name))

    def _fail(self, err: PipelineError):
        if err.traceback:
            log.error("%s\n%s", err, err.traceback)
        self._broken = err
        self.close()
        raise err


def _timings(stages: dict, model: dict | None, t_submit: float, t_end: float, duration: float) -> dict:
    """The figures a user sees: seconds spent downloading, decoding, inferring; wall time."""

    def end_of(stage):
        s = stages.get(stage)
        return round(s["t_end"] - t_submit, 3) if s else None

    wall = t_end - t_submit
    infer = stages.get("infer")
    out = {
        "download_s": end_of("source"),
        "decode_s": end_of("decode"),
        "inference_s": round(infer["busy_s"], 3) if infer else None,
        "total_s": round(wall, 3),
        "rtfx": round(duration / wall, 2) if wall > 0 else None,
    }
    if model and model.get("t_ready", 0) > t_submit:  # this job waited for the model
        out["model_load_s"] = round(model["load_s"], 3)
    return out


def _check_shm_space(needed: int) -> None:
    """Fail early and clearly where /dev/shm is too small (Docker's default is 64 MB):
    writing past its size would kill a stage with SIGBUS mid-job instead."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise PipelineError(
            f"/dev/shm has {free / 2**20:.0f} MiB free but the pipeline's rings need "
            f"{needed / 2**20:.0f} MiB: give the container more (docker run --shm-size=1g) "
            "or use fewer window slots"
        )
