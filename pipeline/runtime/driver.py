"""The driver: ``Pipeline`` starts the stage processes and their rings, submits jobs, routes
results to them, and follows the shutdown protocol (see pipeline/runtime/__init__.py)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import queue
import secrets
import threading
import time
import weakref
from dataclasses import dataclass

from pipeline import logs
from pipeline.config import Job, PipelineConfig
from pipeline.constants import N_SAMPLES, PCM_DTYPE, SAMPLE_RATE
from pipeline.errors import JobError, PipelineError, StageDied, describe_exit
from pipeline.ring import Ring
from pipeline.runtime.context import (
    CANCEL_SLOTS,
    JOIN_TIMEOUT_S,
    STAGES,
    StageContext,
)
from pipeline.runtime.process import _InheritFd, _stage_entry
from pipeline.types import TimedWindow

log = logging.getLogger(__name__)

_starts = itertools.count()  # pipelines started in this process (next() is atomic)
PRELOAD = ["pipeline.preload"]  # what the fork server imports once (pipeline/preload.py)


def _infer_context(spawn, how: str = "auto"):
    """The multiprocessing context that starts a pipeline's infer stage.

    The first pipeline of a process spawns it, like every stage: its imports (torch,
    transformers: ~8 s of CPU on 2 cores) are needed once either way, and a spawned stage
    imports them while start() has already returned and the first job downloads and
    decodes. Every later pipeline of the process (a server's restart after a stage died,
    scripts/machinery_cost.py, a test suite) forks its infer stage from multiprocessing's fork
    server, which imports ``pipeline.preload`` once, when the second pipeline starts
    (that start waits for it), and is then ready in a fraction of a second: on 2 cores
    a tiny model's pipeline was ready in ~0.5 s instead of ~9 s. The forked stage runs
    the same code on the same weights (the same words; it also holds less private memory:
    the imported code is shared with the server). The fork server is a child of this
    process and exits after it (``StageContext.adopt_driver`` says how a forked stage
    watches the driver). The other stages import little (numpy) and are always spawned.
    ``how``: ``PipelineConfig.infer_start`` ("spawn" or "forkserver": always that)."""
    first = next(_starts) == 0
    if how == "spawn" or (how == "auto" and first):
        return spawn
    fs = mp.get_context("forkserver")
    fs.set_forkserver_preload(PRELOAD)  # takes effect when the server starts: once
    return fs


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

    def __init__(self, seq: int, job: Job, t_submit: float, progress=None, on_window=None):
        self.seq, self.job, self.t_submit, self.progress = seq, job, t_submit, progress
        self.on_window = on_window
        self.finished = threading.Event()  # set once: outcome or error is final
        self.stats_until: float | None = None  # done: wait for the stages' stats until then
        self.windows: list[TimedWindow] = []
        self.stages: dict = {}
        self.decoded_samples: int | None = None
        self.done_s = 0.0  # seconds of audio transcribed: each window's new audio, counted once
        self.done_info: dict | None = None
        self.t_first: float | None = None
        self.error: BaseException | None = None
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
        self._lock = threading.Lock()  # starting the processes and the dispatcher
        # Jobs in flight, by job number; jobs not yet handed to the source stage. Only the
        # dispatcher thread reads the stages' output queue and routes it to these.
        self._runs: dict[int, _JobRun] = {}
        self._unsent: collections.deque = collections.deque()
        self._runs_lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._close_done = threading.Event()

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
            infer_ctx = _infer_context(ctx, cfg.infer_start)
            for name in ("infer", "source", "decode", "chunk"):
                sctx = StageContext(name, cfg, self._stop, self._cancel, self._out, os.getpid())
                sctx.stderr = _InheritFd(2)  # where the driver's stderr is now (process.py)
                p = (infer_ctx if name == "infer" else ctx).Process(
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
            # Closing already (the dispatcher closes on a dead stage): return once it is
            # done, so that nothing outlives a close() that returned.
            if threading.current_thread() is not self._dispatcher:
                self._close_done.wait(30.0)
            return
        self._closed = True
        try:
            d = self._dispatcher
            if d is not None and d is not threading.current_thread():
                d.join(2.0)  # it polls at most 0.25 s between looks at _closed
            if join_timeout is not None:
                self._state["join_timeout"] = join_timeout
            if self._finalizer is not None:
                self._finalizer()
            else:
                Pipeline._cleanup(
                    self._procs, self._rings, self._queues, getattr(self, "_stop", None),
                    getattr(self, "_inputs", {}), self._state,
                )  # fmt: skip
        finally:
            # Waiters wake only now: every process and segment is gone by then.
            self._abort_all(self._broken or PipelineError("the pipeline was closed"))
            self._close_done.set()

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
        self._close_done.set()  # a close() after this has nothing left to wait for

    def wait_ready(self, timeout: float | None = None) -> dict:
        """Block until the model is loaded (or raise if a stage failed). Returns model info."""
        with self._lock:
            self._check_usable()
            self._start_dispatcher()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.model_info is None:
            if self._broken is not None:
                raise self._broken
            if self._closed:
                raise PipelineError("the pipeline is closed")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("the model did not load in time")
            time.sleep(0.05)
        return self.model_info

    # -- jobs -----------------------------------------------------------------------------

    def transcribe(self, job: Job | str, progress=None, timeout: float | None = None):
        """Run one job to the end and return its Transcript (see ``run_job``)."""
        return self.run_job(job, progress=progress, timeout=timeout).transcript

    def run_job(self, job: Job | str, progress=None, timeout: float | None = None, stop=None) -> JobOutcome:
        """Run one job. ``progress(done_s, decoded_s, decode_finished)`` is called (from the
        pipeline's dispatcher thread) as window results arrive. Raises JobError for a failed
        job (the pipeline stays usable) and StageDied when a stage is gone (the pipeline is
        then closed). Thread-safe: jobs run from several threads at once share the decoder.
        On KeyboardInterrupt the job is cancelled and the exception carries
        ``partial_windows``, the windows finished so far. ``stop``: see ``wait``."""
        return self.wait(self.submit(job, progress), timeout, stop)

    def run_jobs(self, jobs: list, progress=None, timeout: float | None = None, interrupt=None) -> list:
        """Run several jobs at once: all are submitted together and flow through the
        stages one after another, while the infer stage decodes the windows of all of
        them in the same decoder slots (a job's first windows fill the slots the last
        one's tail leaves free). Returns, per job and in order, its JobOutcome or the
        JobError it failed with: one job's failure never touches another's result.
        ``progress(i, done_s, decoded_s, decode_finished)`` for job ``i``. Raises
        StageDied when a stage is gone (the pipeline is then closed). ``interrupt``: see
        ``wait``."""
        runs = []
        try:
            for i, job in enumerate(jobs):
                prog = None if progress is None else (lambda *a, i=i: progress(i, *a))
                runs.append(self.submit(job, prog))
            out = []
            for r in runs:
                try:
                    out.append(self.wait(r, timeout, interrupt=interrupt))
                except JobError as exc:
                    out.append(exc)
            return out
        except BaseException as exc:
            for r in runs:
                self._end_run(r, exc if isinstance(exc, PipelineError) else PipelineError("cancelled"), cancel=True)
            if isinstance(exc, KeyboardInterrupt):  # the CLI writes what was finished
                exc.partial_runs = [sorted(r.windows, key=lambda w: w.index) for r in runs]
            raise

    def submit(self, job: Job | str, progress=None, on_window=None) -> "_JobRun":
        """Hand a job to the pipeline and return at once; ``wait`` gives its outcome.
        ``on_window(TimedWindow)`` is called (from the dispatcher thread, so it must be
        quick) for each window result as it arrives, in any order: what streaming builds
        on (``pipeline.stitch.StreamStitcher`` puts them in order). An exception from
        ``progress`` or ``on_window`` fails the job with it."""
        job = Job(job) if isinstance(job, str) else job
        if job.options.word_timestamps and self.config.engine != "slots":
            from pipeline.runtime.infer_loop import WORDS_NEED_SLOTS

            raise ValueError(WORDS_NEED_SLOTS)
        with self._lock:
            self._check_usable()
            self._start_dispatcher()
        run = _JobRun(next(self._seq), job, time.monotonic(), progress, on_window)
        with self._runs_lock:
            if self._broken is not None:
                raise self._broken
            self._runs[run.seq] = run
            self._unsent.append(run)
        return run

    def wait(self, run: "_JobRun", timeout: float | None = None, stop=None, interrupt=None) -> JobOutcome:
        """The outcome of a submitted job: raises its JobError (or StageDied). Ctrl-C, a
        timeout or ``stop`` (a threading.Event another thread sets: the caller gave up on
        the job) cancels the job (the stages drop what is left of it; JobError "cancelled").

        ``interrupt``: a threading.Event that a signal handler sets before it raises
        KeyboardInterrupt. Once set, the wait raises KeyboardInterrupt itself (within
        0.1 s), as Ctrl-C does. A handler runs in whatever Python code the main thread is
        in when the signal arrives, and an exception raised while that is a finalizer (a
        ``__del__``, a generator being closed, a weakref callback, run by the garbage
        collector) is printed as "ignored" and lost: without this the run would go on as
        if no Ctrl-C had come."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not run.finished.wait(0.1):
                if interrupt is not None and interrupt.is_set():
                    raise KeyboardInterrupt()
                if stop is not None and stop.is_set():
                    self._end_run(run, JobError("cancelled", stage=None), cancel=True)
                elif deadline is not None and time.monotonic() >= deadline:
                    label = run.job.label or "the job"
                    self._end_run(run, JobError(f"{label} timed out after {timeout:.0f} s", stage=None), cancel=True)
        except BaseException as exc:
            self._end_run(run, PipelineError("cancelled"), cancel=True)
            if isinstance(exc, KeyboardInterrupt):  # the CLI writes what was finished
                exc.partial_windows = sorted(list(run.windows), key=lambda w: w.index)
            raise
        if run.error is not None:
            raise run.error
        return run.outcome

    @property
    def usable(self) -> bool:
        """False once closed, or once a stage died (a new Pipeline is needed)."""
        return self.unusable_reason is None

    @property
    def unusable_reason(self) -> str | None:
        """Why this pipeline can take no job (a stage died, it was closed), else None. A
        stage that has exited counts at once, before the dispatcher's next look at it (a
        job submitted then would only fail)."""
        if self._broken is not None:
            return str(self._broken)
        if self._closed:
            return "the pipeline is closed"
        gone = self._exited_stage()
        return str(gone) if gone else None

    def _exited_stage(self) -> "StageDied | None":
        """A StageDied for the first stage process that has exited, else None."""
        for name, p in self._procs.items():
            if p.exitcode is not None:
                return StageDied(f"the {name} stage (pid {p.pid}) {describe_exit(p.exitcode)}", stage=name)
        return None

    @property
    def jobs_in_flight(self) -> int:
        with self._runs_lock:
            return len(self._runs)

    def cancel(self, run: "_JobRun", reason: str = "cancelled") -> None:
        """Cancel a submitted job (its client went away): its waiter gets a JobError and
        the stages drop what is left of it; other jobs go on. No-op once it has ended."""
        self._end_run(run, JobError(reason, stage=None), cancel=True)

    # -- the dispatcher thread --------------------------------------------------------------

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(target=self._dispatch, name="wsp-dispatcher", daemon=True)
            self._dispatcher.start()

    def _dispatch(self) -> None:
        """The one reader of the stages' output queue: hands jobs to the source stage
        (never blocking on a full job queue, so results keep flowing), routes every
        message to its job, completes jobs, and fails them all when a stage is gone."""
        try:
            while not self._closed:
                self._send_unsent()
                with self._runs_lock:
                    closing = [r for r in self._runs.values() if r.stats_until is not None]
                wait_until = min((r.stats_until for r in closing), default=None)
                msg = self._get(wait_until)
                if msg is not None:
                    self._route(msg)
                for r in closing:
                    if len(r.stages) >= len(STAGES) or time.monotonic() >= r.stats_until:
                        with logs.thread_job(r.job.job_id or r.seq):  # its lines carry its id
                            self._complete(r)
        except PipelineError as err:  # a stage is gone (_fail closed the pipeline)
            self._abort_all(err)
        except BaseException as exc:  # noqa: BLE001 - never leave a waiter hanging
            log.exception("driver dispatcher failed")
            self._abort_all(PipelineError(f"internal error in the driver: {exc!r}"))

    def _send_unsent(self) -> None:
        while True:
            with self._runs_lock:
                if not self._unsent:
                    return
                r = self._unsent[0]
                try:
                    self._inputs["source"].put_nowait(("job", r.seq, r.job, r.t_submit))
                except queue.Full:
                    return
                self._unsent.popleft()

    def _route(self, msg) -> None:
        kind = msg[0]
        if kind in ("ready", "fatal"):
            self._handle_control(msg)
            return
        with self._runs_lock:
            r = self._runs.get(msg[1])
        if r is None:
            return  # a message of a job that was cancelled, failed or is complete
        if kind == "stats":
            r.stages[msg[2]] = msg[3]
        elif kind == "meta":
            # Before the "done" check: the decode stage reports the samples it decoded
            # after passing its end downstream, so infer's "done" (two stages later, from
            # another process) can arrive first, and a job with no windows was then left
            # with a duration of 0. Decode's stats leave after this, from the same queue:
            # a job that completes on its stages' stats has its duration.
            if msg[2] == "decode":
                r.decoded_samples = msg[3]["samples"]
        if r.stats_until is not None:
            return  # done: only its stats (and the decode stage's samples) still count
        if kind == "result":
            _, _, index, start_s, valid_s, covered_s, res = msg
            if r.t_first is None:
                r.t_first = time.monotonic()
            window = TimedWindow(index=index, start=start_s, valid=valid_s, result=res)
            r.windows.append(window)
            if r.on_window is not None:
                try:
                    r.on_window(window)
                except Exception as exc:  # noqa: BLE001 - the caller's callback: its job fails with it
                    self._end_run(r, exc, cancel=True)
                    return
            # Each window's share: its audio and the quiet stretch before it.
            r.done_s += start_s + valid_s - covered_s
            dec = r.decoded_samples / SAMPLE_RATE if r.decoded_samples is not None else None
            self._progress(r, r.done_s, dec, r.decoded_samples is not None)
        elif kind == "error":
            _, _, stage, message, tb, user = msg
            if not user:
                message = f"{stage} stage failed: {message}"
            self._end_run(r, JobError(message, stage=stage, traceback=None if user else tb,
                                      resource=user == "resource"), cancel=True)  # fmt: skip
        elif kind == "done":
            r.done_info = msg[2]
            # The other stages' stats left before infer's "done" was possible; give the
            # queue a moment to deliver them.
            r.stats_until = time.monotonic() + 1.0

    def _progress(self, r: "_JobRun", *args) -> None:
        if r.progress is None:
            return
        try:
            r.progress(*args)
        except Exception as exc:  # noqa: BLE001 - the caller's callback: its job fails with it
            self._end_run(r, exc, cancel=True)

    def _complete(self, r: "_JobRun") -> None:
        expected = r.done_info.get("windows", len(r.windows))
        if len(r.windows) != expected:
            self._end_run(r, JobError(f"internal error: {expected} windows sent but {len(r.windows)} came back"))
            return
        if r.decoded_samples is not None:
            # Quiet audio after the last window was never a window's share: the job is done.
            total_s = r.decoded_samples / SAMPLE_RATE
            self._progress(r, total_s, total_s, True)
        if r.finished.is_set():
            return
        r.outcome = self._outcome(r)
        self._end_run(r, None)

    def _end_run(self, r: "_JobRun", error: BaseException | None, cancel: bool = False) -> None:
        """A job's end, once: its outcome (``error`` None) or error is final; ``cancel``
        tells the stages to drop what is left of it."""
        with self._runs_lock:
            if r.finished.is_set():
                return
            self._runs.pop(r.seq, None)
            with contextlib.suppress(ValueError):
                self._unsent.remove(r)
            r.error = error
            if cancel and hasattr(self, "_cancel"):
                self._cancel[r.seq % CANCEL_SLOTS] = r.seq
            r.finished.set()

    def _abort_all(self, err: BaseException) -> None:
        with self._runs_lock:
            runs = list(self._runs.values())
        for r in runs:
            self._end_run(r, err, cancel=True)

    def _outcome(self, r: "_JobRun") -> JobOutcome:
        from pipeline.formats import Transcript
        from pipeline.stitch import majority_language, stitch, transcript_text

        t_end = time.monotonic()
        duration = (r.decoded_samples or 0) / SAMPLE_RATE
        windows = sorted(r.windows, key=lambda w: w.index)
        segments = stitch(windows, duration=duration)
        language = r.job.options.language or majority_language(windows)
        if language is None and (self.model_info or {}).get("multilingual") is False:
            language = "en"  # an English-only model: nothing was spoken, but it is English
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
        if self._broken is not None:  # why it is closed, when a stage died
            raise self._broken
        if self._closed:
            raise PipelineError("the pipeline is closed")
        gone = self._exited_stage()  # gone, and the dispatcher has not looked yet
        if gone is not None:
            raise gone
        if not self._procs:
            self.start()

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
        gone = self._exited_stage()
        if gone is not None:
            # Prefer the stage's own account of what went wrong, if it sent one.
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                try:
                    msg = self._out.get(timeout=0.1)
                except queue.Empty:
                    continue
                if msg[0] in ("fatal", "ready"):
                    self._handle_control(msg)
            self._fail(gone)

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
