"""The infer stage's loop: a reader thread that turns windows into features and decode
requests (the quality review opens here), and the main thread that runs them through the
slot engine (stages/engine.py) or, with ``engine='generate'``, one generate call per batch."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import threading
import time

import numpy as np

from pipeline import logs
from pipeline.constants import HOP_LENGTH, PCM_DTYPE, SAMPLE_RATE
from pipeline.ring import Ring, Stopped, wait_put
from pipeline.runtime.context import POLL_S, StageContext, StageStats, _profiling

log = logging.getLogger(__name__)


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
    (``stages.review.WindowReview``: the energy gate and the first decode request),
    prepares its features (log-mel) and frees the ring slot at once, and groups the
    decodes into batches for the main thread. It runs while the main thread is inside
    generate, so features for batch n+1 are ready when batch n finishes and the upstream
    stages never wait on the GPU for a free slot.

    Work-conserving batching (issue 4's profile showed infer starved for the first full
    batch, then busy long after decode had finished): a partial batch goes to the main
    thread as soon as that thread is idle (``idle`` set, nothing queued) instead of
    waiting to fill up. Batches grow by themselves while the model is the bottleneck."""
    from stages.language import is_sure
    from stages.pace import Pace
    from stages.review import WindowReview

    def unsure(result) -> bool:  # a window the job's language vote decides (stages/language.py)
        return not is_sure(result)

    def put(item):
        wait_put(local, item, ctx.alive, POLL_S)

    def get(poll):
        try:
            return q_in.get(timeout=poll)
        except queue.Empty:
            if not ctx.alive():
                raise Stopped() from None
            return _TIMEOUT

    # A partial batch per job (jobs' windows arrive interleaved: pipeline/runtime/loops.py);
    # the dict's order is the order to hand partial batches over in (round-robin).
    batches: dict[int, _Batch] = {}
    flush_at = 0.0

    def hand_over(seq: int) -> None:
        put(("batch", batches.pop(seq)))
        batches[seq] = _Batch(seq)  # to the back of the line

    try:
        while True:
            pending = [seq for seq, b in batches.items() if b.items]
            if pending:
                if (idle.is_set() and local.empty()) or time.monotonic() >= flush_at:
                    hand_over(pending[0])  # the model would otherwise sit idle
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
                batches[seq] = _Batch(seq)
                put(("start", seq))
            elif kind == "data":
                _, _, slot, n, index, start, valid, covered_from, final = msg
                try:
                    if ctx.cancelled(seq) or jobs[seq]["failed"]:
                        continue
                    audio = np.array(ring_in.view(slot, PCM_DTYPE, n)[:valid])  # own copy
                finally:
                    ring_in.release(slot)
                try:
                    options, review_on = jobs[seq]["info"]["options"], jobs[seq]["quality"].enabled
                    review = WindowReview(index, audio, jobs[seq]["quality"], jobs[seq]["pace"],
                                          temperature=options.temperature, final=final,
                                          # Not with the review off (--plain): each window decoded once.
                                          hold_if=unsure if options.language is None and review_on else None)  # fmt: skip
                    review.place = (start, valid, covered_from)
                    items = _prepare_items(backend, seq, review, review.requests(), review.cfg.enabled)
                except Exception as exc:  # noqa: BLE001
                    jobs[seq]["failed"] = True
                    with logs.thread_job(jobs[seq]["info"].get("job_id") or seq):
                        ctx.fail_job(seq, exc)
                    continue
                batches[seq].items.extend(items)
                flush_at = time.monotonic() + cfg.batch_wait_s  # no window for this long: flush
                if len(batches[seq].items) >= jobs[seq]["batch_size"]:
                    hand_over(seq)
            elif kind == "end":
                batch = batches.pop(seq, None)
                if batch is not None and batch.items:
                    put(("batch", batch))
                put(("end", seq, msg[2]))
    except Stopped:
        put_nowait_quiet(local, None)
    except BaseException as exc:  # noqa: BLE001 - hand it to the main thread
        put_nowait_quiet(local, ("crash", exc))


_TIMEOUT = object()
# The per-batch generate path (engine='generate', and backends without a model of their
# own) has no word alignment: only the slot engine aligns (stages/engine.py, stages/words.py).
WORDS_NEED_SLOTS = "word timestamps need the slot engine (engine='slots' with a Whisper model)"
IDLE_POLL_S = 0.005  # the reader's poll while it holds a partial batch


def put_nowait_quiet(q, item):
    with contextlib.suppress(queue.Full):
        q.put_nowait(item)


def request_options(options, request):
    """The options one decode runs with: the job's, and for a re-decode of part of a window
    (a tail, a split, a fallback) where the job set no language, the language the window's
    own decode found (``Request.language``): a few seconds decoded alone may be taken for
    another language, a stray "呀" at the end of a German transcript."""
    if request is not None and request.language and options.language is None:
        return dataclasses.replace(options, language=request.language)
    return options


def _transcribe_batch(backend, items: list, options) -> list:
    """backend.transcribe on items' features (each row with its request's temperature,
    seed and end-of-text veto profile), halving the batch on CUDA out-of-memory instead of
    failing. Rows whose options differ (a re-decode in the language its window's decode
    found, ``request_options``) go in one call per set of options, results in item order:
    one ``generate`` call takes one language."""
    by_options: dict = {}
    for i, it in enumerate(items):
        by_options.setdefault(request_options(options, it.request), []).append(i)
    if len(by_options) > 1:
        out: list = [None] * len(items)
        for opts, rows in by_options.items():
            for i, res in zip(rows, _transcribe_batch(backend, [items[i] for i in rows], opts)):
                out[i] = res
        return out
    options = next(iter(by_options), options)
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


def _about_job(fn):
    """``fn(job, ...)``'s log lines carry that job's id. Jobs share this stage, so a
    process-wide id named whichever job had started (or ended) last."""

    @functools.wraps(fn)
    def tagged(job, *args, **kwargs):
        with logs.thread_job(job.log_id):
            return fn(job, *args, **kwargs)

    return tagged


class _InferJob:
    """The main thread's view of one job: reviews not yet decided, whether the reader has
    sent everything, figures for the profile."""

    def __init__(self, seq, info, stats):
        self.seq, self.info, self.stats = seq, info, stats
        self.log_id = info.get("job_id") or seq  # on its log lines
        self.open = 0  # reviews whose window result has not gone out
        self.ended: dict | None = None  # the reader's "end" info, once it came
        self.failed = False
        from stages.review import KINDS

        self.decodes = dict.fromkeys(KINDS, 0)
        # Language detection (no language asked, a multilingual model: stages/language.py):
        # each window's first decode, for the job's vote; reviews unsure of their window's
        # language, held after that decode (counted in ``open``) until every other window
        # of the job is decided or held (``resolve_languages``).
        self.detections: dict = {}
        self.held: dict = {}
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
        # Slots holding a window over all slots at each step: what idles at a run's end,
        # which the engine does not compute (it moves windows down to the first slots).
        full = d["steps"] * (d.get("slots") or 0)
        d["occupancy"] = round(d["row_steps_used"] / full, 4) if full else None
        for k in ("encoder_s", "decoder_s", "align_s"):
            if k in d:
                d[k] = round(d[k], 4)
        return d


def _run_infer(ctx: StageContext, ring_in: Ring, q_in):
    from stages.infer import load_backend
    from stages.language import job_languages, redecode_language, settled_early, sure_languages
    from stages.review import WindowReview

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
        # Known only once loaded for some specs (a CTranslate2 directory of any name):
        # the server checks translation and languages against it.
        "multilingual": getattr(backend, "multilingual", None),
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

    @_about_job
    def finish_if_done(job: _InferJob) -> None:
        if job.ended is None:
            return
        dead = job.failed or ctx.cancelled(job.seq)
        busy = in_engine[job.seq] or any(it.seq == job.seq for it in work)
        if not dead and job.held and job.open == len(job.held) and not busy:
            try:
                if resolve_languages(job):
                    return
            except Exception as exc:  # noqa: BLE001 - this job's fault alone
                fail(job, exc)
                dead = True
        if not dead and (job.open or busy):
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

    @_about_job
    def fail(job: _InferJob, exc: BaseException) -> None:
        job.failed = True
        if job.seq in jobs:
            jobs[job.seq]["failed"] = True
        ctx.fail_job(job.seq, exc)

    @_about_job
    def report(job: _InferJob, review) -> None:
        result = review.result()
        if review.language is None and result.language_probs is not None:
            job.detections.setdefault(review.index, result)  # for the vote
        start, valid, covered_from = review.place
        with job.stats.wait("blocked"):
            ctx.report(
                "result", job.seq, review.index, start / SAMPLE_RATE, valid / SAMPLE_RATE,
                covered_from / SAMPLE_RATE, result,
            )
        job.open -= 1

    @_about_job
    def resolve_languages(job: _InferJob) -> bool:
        """Every window of the job is decided or held (unsure of its language, after its
        first decode): a held window whose language is not the job's is decoded again in
        it (a new review of the window), the others go on from their first decode (their
        fallbacks and re-decodes). True if any decode was queued."""
        votes = job_languages(job.detections[i] for i in sorted(job.detections))
        held, job.held = job.held, {}
        again: list = []
        for index in sorted(held):
            review = held[index]
            result = review.held
            target = redecode_language(result, votes)
            if target is None:
                go_on(job, review, again)
                continue
            log.info(
                "window %d: language %s (%.2f) is not the job's (%s): decoding it again in %s",
                index, result.language, result.language_probs[0][1], ",".join(sorted(votes.accepted)), target,
            )  # fmt: skip
            redo = WindowReview(index, review.audio, review.cfg, review.pace, temperature=review.temperature,
                                final=review.final, language=target)  # fmt: skip
            redo.place = review.place
            items = _prepare_items(backend, job.seq, redo, redo.requests(), redo.cfg.enabled)
            if items[0].request is None:  # cannot happen (its audio was decoded): report it
                report(job, redo)
                continue
            again.extend(items)
        work.extendleft(reversed(again))
        return bool(again)

    @_about_job
    def go_on(job: _InferJob, review, again: list) -> None:
        """A held window keeps its language: it goes on from its first decode."""
        follow = review.resume()
        if follow:
            again.extend(_prepare_items(backend, job.seq, review, follow, review.cfg.enabled))
        elif review.done:
            report(job, review)
        else:  # nothing to decode and not done: it would wait forever
            raise RuntimeError(f"window {review.index}: resumed with nothing to decode, yet not done")

    @_about_job
    def resume_settled(job: _InferJob, again: list) -> None:
        """Held windows whose vote is known before the job's end (``settled_early``: a
        sure window found their language) go on now, once every earlier window was
        decided (then they decode as they would at the job's end), so the stream waits
        on them for a batch or two, not for the whole job."""
        if not job.held or job.failed:
            return
        found = sure_languages(job.detections.values())
        for index in sorted(job.held):
            review = job.held[index]
            if review.earlier_decided and settled_early(review.held, found):
                del job.held[index]
                log.info("window %d: language %s is one the job's sure windows found: it goes on", index, review.held.language)
                try:
                    go_on(job, review, again)
                except Exception as exc:  # noqa: BLE001 - this job's fault alone
                    fail(job, exc)
                    return

    @_about_job
    def take_result(job: _InferJob, it: _Item, res, again: list) -> None:
        """A decode's result goes to its window's review; follow-up decodes (fallback,
        split, tail) are prepared at once and go to the front of the work queue."""
        job.decodes[it.request.kind] += 1
        follow = it.review.feed(it.request, res)
        if it.review.held is not None:  # unsure of its language: waits for the job's vote
            job.held[it.review.index] = it.review
            job.detections[it.review.index] = it.review.held
            top, p = it.review.held.language_probs[0]
            log.info("window %d: unsure of its language (%s %.2f): it waits for the job's vote", it.review.index, top, p)
        if follow:
            again.extend(_prepare_items(backend, job.seq, it.review, follow, it.review.cfg.enabled))
        if it.review.done:
            report(job, it.review)
        settle(job, it.review.pace, again)
        resume_settled(job, again)

    @_about_job
    def settle(job: _InferJob, pace, again: list, release: bool = False) -> None:
        """Later windows that waited for an earlier one to be decided (stages.pace.Pace):
        their split re-decodes join ``again``; those now done are reported."""
        if pace is None:
            return
        for review, follow in (pace.release() if release else []) + pace.take_released():
            if follow:
                again.extend(_prepare_items(backend, job.seq, review, follow, review.cfg.enabled))
            if review.done:
                report(job, review)

    @_about_job
    def run_batch(job: _InferJob) -> None:
        """--engine generate: one generate call on a batch of the job's decodes (the
        first in ``work``)."""
        seq = job.seq
        size = jobs[seq]["batch_size"] if seq in jobs else cfg.batch_size
        items = []
        while work and work[0].seq == seq and len(items) < size:
            items.append(work.popleft())
        if job.failed or ctx.cancelled(seq):
            return
        try:
            if job.info["options"].word_timestamps:
                raise ValueError(WORDS_NEED_SLOTS)
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
        so a re-decode made now still goes in ahead of windows that came later. Jobs take
        turns (``next_for_engine``: the job with the fewest windows in the engine goes
        next), and a job's ``batch_size`` (a request's own) caps how many of its windows
        are in the engine at once; a job's windows go in in order."""
        while work and engine.waiting < engine.slots:
            dead = {it.seq for it in work if it.seq not in running or running[it.seq].failed
                    or ctx.cancelled(it.seq)}  # fmt: skip
            if dead:
                for it in [it for it in work if it.seq in dead]:
                    work.remove(it)
                for seq in dead:
                    if seq in running:
                        finish_if_done(running[seq])
            at = next_for_engine(work, in_engine, lambda seq: (jobs.get(seq) or {}).get("batch_size") or engine.slots)
            if at is None:
                return
            it = work[at]
            del work[at]
            job = running[it.seq]
            try:
                ctx.maybe_fault(job.stats.items)
                engine.submit(it, it.features, request_options(job.info["options"], it.request),
                              temperature=it.request.temperature,
                              seed=it.request.seed, sound=it.sound,
                              valid_frames=(it.request.end - it.request.start) // HOP_LENGTH)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - this job's fault alone
                fail(job, exc)
                finish_if_done(job)
                continue
            in_engine[it.seq] += 1

    def engine_step() -> None:
        """One decoder step of every live slot; finished windows go to their reviews."""
        try:
            ctx.maybe_step_fault(engine.stats["steps"])
            finished = engine.step()
        except torch_oom() as exc:
            raise RuntimeError(
                f"out of GPU memory in the decoder with {engine.slots} slots: lower the batch size"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - see _device_broken
            if _device_broken(exc):
                raise
            # A step computes every live slot at once, so the fault cannot be pinned on
            # one window: the jobs with windows in the engine fail, the engine is emptied,
            # and the stage (its model loaded) goes on with the jobs that had none there.
            seqs = [seq for seq, n in in_engine.items() if n]
            engine.cancel(lambda it: True)
            in_engine.clear()
            log.error("decoder step failed; failing %d job(s) with windows in it", len(seqs), exc_info=True)
            for seq in seqs:
                job = running.get(seq)
                if job is not None and not job.failed:
                    fail(job, RuntimeError(f"decoder step failed: {exc}"))
            for seq in seqs:
                if seq in running:
                    finish_if_done(running[seq])
            return
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
        if msg is None:  # the reader stopped (shutdown): it may come between steps too
            raise Stopped()
        if msg[0] == "crash":
            raise msg[1]
        kind = msg[0]
        if kind == "start":
            seq = msg[1]
            info = jobs[seq]["info"]
            job = _InferJob(seq, info, StageStats(t_start=time.monotonic(), profile=_profiling(info)))
            job.engine_at = dict(engine.stats) if engine is not None else None
            running[seq] = job
        elif kind == "batch":
            batch = msg[1]
            job = running.get(batch.seq)
            if job is None or job.failed or ctx.cancelled(batch.seq):
                return
            gated = []
            for it in batch.items:
                job.open += 1
                if it.request is None:  # nothing to decode: the gate decided
                    gated.append(it.review)
                else:
                    work.append(it)
            if gated:  # reported once every earlier window was decided (Pace)
                again: list = []
                settle(job, gated[0].pace, again, release=True)
                for review in gated:
                    if review.pace is None and review.done:
                        report(job, review)
                resume_settled(job, again)
                work.extendleft(reversed(again))
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
        # Between decoder steps too, not only when waiting for work: with windows in hand
        # (slots, the work queue, the ring behind them: minutes of audio) the stage once
        # went on decoding for minutes after a close() or after its driver was killed.
        if not ctx.alive():
            raise Stopped()
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
                # Messages that came during the step, without waiting, while little work
                # waits: features held here stay at about two slot-loads whatever the
                # audio's length (the reader, and the window ring behind it, wait).
                while len(work) < engine.slots:
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
                run_batch(job)
                finish_if_done(job)
                continue
        wait_for_message()


def next_for_engine(work, in_engine, cap) -> int | None:
    """Where in ``work`` (decodes in order, each job's re-decodes first) the next decode
    for the engine is: each job's first one is a candidate; the job with the fewest
    windows in the engine wins (round-robin while they are even), the earlier in ``work``
    on a tie; a job at its cap (``cap(seq)``) waits. None: nothing may go in now."""
    best = None  # (windows in the engine, index)
    seen = set()
    for i, it in enumerate(work):
        if it.seq in seen:
            continue
        seen.add(it.seq)
        n = in_engine.get(it.seq, 0)
        if n < cap(it.seq) and (best is None or n < best[0]):
            best = (n, i)
    return None if best is None else best[1]


def _make_engine(backend, cfg):
    """The slot engine for a Whisper backend (``cfg.engine == "slots"``), else None: the
    per-batch generate path (``--engine generate``, and test doubles without a model)."""
    from stages.infer import WhisperBackend

    if cfg.engine != "slots" or not isinstance(backend, WhisperBackend):
        return None
    from stages.engine import SlotEngine

    return SlotEngine(backend, slots=cfg.batch_size)


def _device_broken(exc: BaseException) -> bool:
    """A CUDA error poisons the device context: every later step would fail too, so the
    stage ends (the driver or the worker starts a fresh one) rather than failing each job."""
    return "CUDA error" in str(exc) or "CUBLAS_STATUS" in str(exc) or "device-side assert" in str(exc)


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
