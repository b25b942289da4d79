"""RunPod serverless entry point: ``python -u runpod_entry.py``.

The pipeline (and with it the model load) starts before the SDK begins taking jobs, so a
cold start costs about the larger of (model load, first download + decode), not their sum.
Settings come from the environment: MODEL_ID, MODEL_BATCH_SIZE, MAX_BATCH_SIZE,
MAX_DOWNLOAD_BYTES, MAX_BASE64_BYTES, MAX_AUDIO_S, LOG_LEVEL (also the runpod SDK's level,
unless RUNPOD_LOG_LEVEL is set) and RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS
(see pipeline/worker.py and README, "Deploying on RunPod").

Local testing with the SDK's own API server:
``python runpod_entry.py --rp_serve_api --rp_api_port 8000 --rp_api_host 127.0.0.1``
then POST ``{"input": {...}}`` to ``/runsync``.

Everything happens under ``__main__``, imports included: stage processes are spawned, and
a spawned child imports this file again as ``__mp_main__``; it must neither build a
worker of its own nor pay for importing the runpod SDK (seconds, in each of four stages).
"""

import logging
import os
import signal
import sys


def _progress(job, update):
    import runpod

    # Only on the platform: locally the SDK has no URL to post progress to.
    if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        runpod.serverless.progress_update(job, update)


# Our LOG_LEVEL -> the runpod SDK's level names. The SDK reads its level once, when it is
# imported, and defaults to DEBUG, at which it prints every job's input and result (the
# transcript, twice): at our default (INFO) a worker's log never holds a transcript.
_SDK_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "WARN": "WARN",
               "ERROR": "ERROR", "CRITICAL": "ERROR"}


CONCURRENCY_ENV = "WORKER_CONCURRENCY"


def worker_concurrency() -> int:
    """Requests one worker takes at once (``WORKER_CONCURRENCY``, default 1, at most 64).
    Above one, concurrent requests share the pipeline: their windows are decoded in the same
    decoder slots, so a GPU stays busy across requests."""
    raw = os.environ.get(CONCURRENCY_ENV, "1").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise SystemExit(f"error: {CONCURRENCY_ENV} must be an integer from 1 to 64, not {raw[:40]!r}") from None
    if not 1 <= n <= 64:
        raise SystemExit(f"error: {CONCURRENCY_ENV} must be an integer from 1 to 64, not {n}")
    return n


CANCEL_WAIT_S = 5.0  # how long a cancelled request waits for its job to leave the pipeline


def async_handler(worker, concurrency: int = 1):
    """The RunPod handler as a coroutine: each request runs ``worker.handle`` in a thread
    of its own (a pool of ``concurrency`` threads: asyncio's default pool holds at most
    cpu_count + 4, which would queue requests the SDK counts as running), so the SDK can
    hand the worker several requests at once.

    The SDK cancels a request's task on /cancel, on the job's execution timeout and on its
    expiry, then takes the next job; a thread does not stop with its task, so the job is
    told (``stop``) and leaves the pipeline, rather than decoding on for nobody beside the
    next job."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="request")

    async def handler(job):
        stop = threading.Event()
        done = asyncio.get_running_loop().run_in_executor(pool, worker.handle, job, stop)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait([done], timeout=CANCEL_WAIT_S)
            raise

    return handler


def sdk_log_level(ours: str) -> str:
    return _SDK_LEVELS.get(ours.strip().upper(), "INFO")


def log_level() -> str:
    """``LOG_LEVEL`` (default INFO), upper-cased; an unknown name stops the worker in one line."""
    raw = os.environ.get("LOG_LEVEL", "INFO").strip() or "INFO"
    level = raw.upper()
    if level not in _SDK_LEVELS:
        raise SystemExit(f"error: LOG_LEVEL must be one of {', '.join(_SDK_LEVELS)}, not {raw[:40]!r}")
    return level


def main():
    level = log_level()
    if not os.environ.get("RUNPOD_LOG_LEVEL"):  # an explicit SDK level wins
        os.environ["RUNPOD_LOG_LEVEL"] = sdk_log_level(level)

    import runpod  # noqa: F401 - imported first: its import installs a root log handler

    from pipeline import logs
    from pipeline.worker import Worker

    # runpod.serverless.utils.rp_upload calls logging.basicConfig at import; its handler
    # would print every one of our records a second time, without the job id. Ours only.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not getattr(handler, "_wsp", False):
            root.removeHandler(handler)
    logs.setup(level, role="worker")
    log = logging.getLogger("runpod_entry")

    concurrency = worker_concurrency()  # a bad value stops here, in one line
    from pipeline.config import env_model
    from pipeline.worker import local_model_error

    from pipeline.errors import PipelineError

    try:
        why = local_model_error(env_model())
        if why:  # a missing folder or package: the operator's to fix, not each job's to fail
            raise SystemExit(f"error: {why}")
        worker = Worker(progress_sender=_progress)  # the model starts loading now
    except (ValueError, PipelineError) as exc:  # a bad setting (MODEL_BATCH_SIZE=abc), no room in /dev/shm
        raise SystemExit(f"error: {exc}") from None

    def on_sigterm(signum, frame):
        # Until the SDK installs its own handlers (it stops taking jobs, then returns).
        worker.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    log.info("worker started: model %s loading in the background", worker.config.model)
    log.info("taking up to %d request(s) at once (%s)", concurrency, CONCURRENCY_ENV)
    try:
        runpod.serverless.start(
            {"handler": async_handler(worker, concurrency), "concurrency_modifier": lambda current: concurrency}
        )
    finally:
        worker.close()


if __name__ == "__main__":
    main()
