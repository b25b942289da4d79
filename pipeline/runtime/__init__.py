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
Messages of different jobs interleave (up to ``PipelineConfig.concurrent_jobs`` jobs move
through the stages at once, a thread each: loops.py); each job's own messages stay in order.
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
     the stages see it gone and exit (their waits look; so does a thread in each stage,
     every 0.5 s, for a stage blocked in a call that polls nothing, such as loading a
     model), and multiprocessing's resource tracker unlinks the segments it still has
     registered. A spawned stage looks at its parent's pid; an infer stage forked from the
     fork server (every pipeline after a process's first: driver.py, ``_infer_context``)
     watches a pidfd of the driver, and the fork server leaves once it has.

Layout (split along the seams the data already has):
    context.py     the stage side of the protocol: StageContext, StageStats, JobInput
    loops.py       the source, decode and chunk stage loops
    infer_loop.py  the infer stage: reader thread, slot engine / generate batches, review
    process.py     a stage process's entry point and process-wide settings
    driver.py      Pipeline: processes, rings, jobs in and results out, shutdown
"""

from pipeline.runtime.context import (  # noqa: F401
    CANCEL_SLOTS,
    FAULT_ENV,
    JOIN_TIMEOUT_S,
    POLL_S,
    STAGES,
    JobCancelled,
    JobInput,
    StageContext,
    StageStats,
)
from pipeline.runtime.driver import JobOutcome, Pipeline  # noqa: F401
from pipeline.runtime.infer_loop import _Item, _transcribe_batch  # noqa: F401
