"""The source, decode and chunk stages' loops: each runs its stage core (stages/) on one
job after another, reading slots from the ring upstream and filling the ring downstream."""

from __future__ import annotations

import logging
import time

import numpy as np

from pipeline import logs
from pipeline.constants import N_SAMPLES, PCM_DTYPE
from pipeline.ring import Ring, Stopped, wait_get
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
