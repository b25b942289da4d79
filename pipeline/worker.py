"""The RunPod worker's logic, kept apart from the SDK so it can be tested directly.

``runpod_entry.py`` builds one ``Worker`` at start-up (which starts the pipeline, so the
model loads while the worker waits for its first job and while that job downloads and
decodes) and hands ``Worker.handle`` to ``runpod.serverless.start``.

Request: ``job["input"]`` with exactly one of ``audio_url`` (the seed project's name),
``audio`` (RunPod's faster-whisper worker's name) or ``audio_base64``, and options
``language``, ``task`` / ``translate``, ``transcription``, ``batch_size``, ``profile``,
``word_timestamps``, ``initial_prompt``, ``temperature`` (the faster-whisper worker's
names) and ``max_line_chars`` (srt/vtt cues of whole words, at most this many characters).
Everything is validated before any download; an error names the key at fault. An option
given as ``null`` counts as not given.

Output: the CLI's JSON transcript (``text``, ``segments``, ``language``, ``duration``,
``model``, ``timings``) plus ``transcription`` (formatted as asked), ``detected_language``,
``device`` and ``translation`` (the text when the task is translate, else null). Errors
come back as ``{"error": "one line"}``; the worker survives every request.

Settings (environment): ``MODEL_ID``, ``MODEL_BATCH_SIZE``, ``MAX_BATCH_SIZE`` (the
largest ``batch_size`` a request may ask for; default ``MODEL_BATCH_SIZE``),
``MAX_DOWNLOAD_BYTES``, ``MAX_BASE64_BYTES``, ``LOG_LEVEL`` and
``RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS`` (the runpod SDK's own switch; off by default).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass

from pipeline import logs
from pipeline.config import MAX_BATCH_SIZE, Job, PipelineConfig, env_batch_size, env_int, env_model
from pipeline.errors import JobError, PipelineError, input_message
from pipeline.languages import LANGUAGES, TO_LANGUAGE_CODE, clip, language_code  # noqa: F401 (re-exported)
from pipeline.types import MAX_PROMPT_CHARS, TASKS, DecodeOptions

log = logging.getLogger(__name__)

SOURCE_KEYS = ("audio_url", "audio", "audio_base64")
TRANSCRIPTIONS = ("plain_text", "formatted_text", "srt", "vtt")
OPTION_KEYS = (
    "language", "task", "translate", "transcription", "batch_size", "profile",
    "word_timestamps", "initial_prompt", "temperature", "max_line_chars",
)  # fmt: skip
ALLOW_PRIVATE_ENV = "RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS"  # the runpod SDK's own switch
MAX_DOWNLOAD_ENV = "MAX_DOWNLOAD_BYTES"
MAX_BASE64_ENV = "MAX_BASE64_BYTES"
MAX_BATCH_ENV = "MAX_BATCH_SIZE"
DEFAULT_MAX_DOWNLOAD = 5 * 1024**3  # the runpod SDK's own download cap (5 GiB)
# Decoded bytes. /runsync caps the whole request body at 20 MB (/run at 10 MB), so base64
# audio cannot exceed ~15 MB there anyway; the cap bounds the worker's memory elsewhere.
DEFAULT_MAX_BASE64 = 15 * 1024**2
PROGRESS_INTERVAL_S = 1.0


class RequestError(ValueError):
    """A request that cannot be served as given; the message names the key at fault."""


def allow_private() -> bool:
    """``RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS`` is set to true (as the runpod SDK reads it)."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


def max_base64_bytes() -> int:
    return env_int(MAX_BASE64_ENV, DEFAULT_MAX_BASE64)


def max_batch_size() -> int:
    """The largest ``batch_size`` a request may ask for: MAX_BATCH_SIZE, else MODEL_BATCH_SIZE
    (the operator sized that one to the GPU)."""
    return min(env_int(MAX_BATCH_ENV, env_batch_size()), MAX_BATCH_SIZE)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _language_code(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"language: must be a string such as 'en', not {type(value).__name__}")
    try:
        return language_code(value)
    except ValueError as exc:
        raise RequestError(f"language: {exc} (use a code such as 'en' or 'de')") from None


def _shown(value) -> str:
    """A request's value in a message: a string quoted ("not '8'" is a string, "not 8" a
    number), anything else as JSON would show it, clipped."""
    return repr(clip(value, 40)) if isinstance(value, str) else clip(value, 40)


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class Request:
    source: str | bytes
    source_key: str
    options: DecodeOptions
    transcription: str = "plain_text"
    batch_size: int | None = None
    profile: bool = False
    max_line_chars: int | None = None


def parse_request(
    inp,
    *,
    allow_private_urls: bool | None = None,
    max_batch: int | None = None,
    max_base64: int | None = None,
    english_only: bool | None = None,
) -> Request:
    """Validate ``job["input"]``; raise RequestError naming the key at fault.
    ``english_only``: True for an English-only model (translation and languages other than
    English are then refused here, before any download); None where not known.

    Nothing is downloaded here. URLs are checked for scheme and host, and (without
    ``allow_private_urls``) for a literal private/loopback/metadata address; host names
    are checked again on every address DNS gives, when the source stage connects.
    The limits default to the environment's (see the module docstring).
    """
    from stages.source import SourceError, check_url

    if allow_private_urls is None:
        allow_private_urls = allow_private()
    if not isinstance(inp, dict):
        raise RequestError(f"input: must be a JSON object, not {_type_name(inp)}")
    unknown = sorted(set(inp) - set(SOURCE_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise RequestError(
            f"input: unknown key {clip(unknown[0], 40)!r} (accepted: {', '.join(SOURCE_KEYS + OPTION_KEYS)})"
        )
    given = [k for k in SOURCE_KEYS if inp.get(k) is not None]
    if len(given) != 1:
        raise RequestError(
            "input: give exactly one of audio_url, audio or audio_base64"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    key = given[0]
    value = inp[key]
    if not isinstance(value, str):
        raise RequestError(f"{key}: must be a string, not {_type_name(value)}")
    if not value.strip():
        raise RequestError(f"{key}: is empty")
    if key == "audio_base64":
        cap = max_base64 if max_base64 is not None else max_base64_bytes()
        if value.startswith("data:"):
            if "," not in value[:256]:
                raise RequestError(
                    "audio_base64: a data: URI needs a comma before the base64 data "
                    "(data:audio/wav;base64,UklGR...)"
                )
            payload = value.split(",", 1)[1]
        else:
            payload = value
        payload = "".join(payload.split())  # clients often wrap base64 at 76 columns
        if len(payload) > (cap + 2) // 3 * 4:  # cheap: before decoding anything
            raise RequestError(
                f"audio_base64: larger than the limit of {_size(cap)} ({MAX_BASE64_ENV})"
            )
        try:
            source: str | bytes = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("audio_base64: not valid base64") from None
        if not source:
            raise RequestError("audio_base64: is empty")
        if len(source) > cap:
            raise RequestError(
                f"audio_base64: larger than the limit of {_size(cap)} ({MAX_BASE64_ENV})"
            )
    else:
        value = value.strip()
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in ("http", "https"):
            raise RequestError(f"{key}: must be an http or https URL")
        try:
            check_url(value, allow_private=allow_private_urls)
        except SourceError as exc:
            raise RequestError(f"{key}: {exc}") from None
        source = value

    def opt(name, default=None):
        v = inp.get(name)
        return default if v is None else v

    task = opt("task")
    if task is not None and (not isinstance(task, str) or task not in TASKS):
        raise RequestError(f"task: must be one of {', '.join(TASKS)}, not {clip(task, 40)!r}")
    translate = opt("translate")
    if translate is not None and not isinstance(translate, bool):
        raise RequestError(f"translate: must be true or false, not {_shown(translate)}")
    if translate is not None and task is not None and (task == "translate") != translate:
        raise RequestError(f"translate: {str(translate).lower()} contradicts task {task!r}")
    task = task or ("translate" if translate else "transcribe")

    transcription = opt("transcription", "plain_text")
    if not isinstance(transcription, str) or transcription not in TRANSCRIPTIONS:
        raise RequestError(
            f"transcription: must be one of {', '.join(TRANSCRIPTIONS)}, not {clip(transcription, 40)!r}"
        )

    batch_size = opt("batch_size")
    if batch_size is not None:
        top = max_batch if max_batch is not None else max_batch_size()
        # bool is an int in Python (and passes runpod's own validator): refuse it here.
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= top
        ):
            raise RequestError(
                f"batch_size: must be an integer from 1 to {top} ({MAX_BATCH_ENV}), not {_shown(batch_size)}"
            )

    profile = opt("profile", False)
    if not isinstance(profile, bool):
        raise RequestError(f"profile: must be true or false, not {_shown(profile)}")

    words = opt("word_timestamps", False)
    if not isinstance(words, bool):
        raise RequestError(f"word_timestamps: must be true or false, not {_shown(words)}")
    prompt = opt("initial_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise RequestError(f"initial_prompt: must be a string, not {_type_name(prompt)}")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"initial_prompt: longer than {MAX_PROMPT_CHARS} characters")
    temperature = opt("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 1:
        raise RequestError(f"temperature: must be a number from 0 to 1, not {_shown(temperature)}")
    max_line_chars = opt("max_line_chars")
    if max_line_chars is not None:
        from pipeline.formats import MAX_LINE_CHARS

        lo, hi = MAX_LINE_CHARS
        if isinstance(max_line_chars, bool) or not isinstance(max_line_chars, int) or not lo <= max_line_chars <= hi:
            raise RequestError(f"max_line_chars: must be an integer from {lo} to {hi}, not {_shown(max_line_chars)}")
        if transcription not in ("srt", "vtt"):
            raise RequestError("max_line_chars: needs transcription srt or vtt")
        words = True

    language = _language_code(inp.get("language"))
    if english_only and task == "translate":
        key = "translate" if translate is not None else "task"
        raise RequestError(f"{key}: the model is English-only: it cannot translate (serve a multilingual model)")
    if english_only and language not in (None, "en"):
        raise RequestError(f"language: the model is English-only: it cannot transcribe {clip(inp.get('language'), 20)!r}")
    options = DecodeOptions(
        language=language,
        task=task,
        word_timestamps=words,
        prompt=prompt,
        temperature=float(temperature),
    )
    return Request(source, key, options, transcription, batch_size, profile, max_line_chars)


def formatted(transcript, transcription: str, max_line_chars: int | None = None) -> str:
    """The ``transcription`` field, in the faster-whisper worker's four styles:
    plain_text (the whole text), formatted_text (one segment per line), srt, vtt."""
    from pipeline.formats import format_transcript

    if transcription == "plain_text":
        return transcript.text
    if transcription == "formatted_text":
        return "\n".join(t for t in (s.text.strip() for s in transcript.segments) if t)
    if transcription in ("srt", "vtt"):
        return format_transcript(transcript, transcription, max_line_chars=max_line_chars)
    raise ValueError(f"transcription must be one of {', '.join(TRANSCRIPTIONS)}")


def local_model_error(model: str) -> str | None:
    """Why ``model`` cannot load, where that shows without the hub: a path that is no model
    folder, a short name whose pip package is missing. None otherwise (a hub id is checked
    when the model loads: a round trip to the hub would lengthen every cold start). The
    worker stops at start-up with it, in one line, rather than fail every job."""
    from pipeline.weights import PACKAGED, ModelResolveError, check_model

    looks_local = model in PACKAGED or model.startswith(("/", "./", "../", "~")) or os.path.exists(model)
    if not looks_local:
        return None
    try:
        check_model(model)
    except ModelResolveError as exc:
        return str(exc)
    return None


def english_only_hint(model: str) -> bool | None:
    """Whether ``model`` is English-only, where that is known without loading it or asking
    the hub (the worker must not add a hub round trip to its cold start): a local
    directory's files (``weights.check_model``), a packaged short name, a hub id ending in
    ``.en``; else None (the loaded model says it)."""
    from pipeline.weights import PACKAGED, ModelResolveError, check_model

    if model in PACKAGED:
        return model.endswith(".en")
    if os.path.isdir(os.path.expanduser(model)):
        try:
            return check_model(model).english_only
        except ModelResolveError:
            return None  # the infer stage will say why it cannot load
    return True if model.endswith(".en") else None


class ProgressReporter:
    """Turns the pipeline's progress calls into throttled updates for RunPod.

    ``send(update)`` gets ``{"share": 0..1 or None, "transcribed_s", "decoded_s",
    "decode_finished"}`` at most once per ``interval`` seconds; the update that reaches
    share 1.0 is always sent (so the last one says "done"). ``share`` is the part of the
    decoded audio already transcribed, None until decoding has finished (decode runs far
    ahead of inference, so that is early in any long job). A failing ``send`` is logged
    and never fails the job.
    """

    def __init__(self, send, interval: float = PROGRESS_INTERVAL_S, clock=time.monotonic):
        self.send = send
        self.interval = interval
        self.clock = clock
        self._last: float | None = None
        self._last_share: float | None = None
        self.sent = 0

    def __call__(self, done_s: float, decoded_s: float | None, decode_finished: bool) -> None:
        share = None
        if decode_finished and decoded_s:
            share = round(min(1.0, done_s / decoded_s), 3)
        now = self.clock()
        finishing = share == 1.0 and self._last_share != 1.0
        if not finishing and self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        self._last_share = share
        update = {
            "share": share,
            "transcribed_s": round(done_s, 1),
            "decoded_s": None if decoded_s is None else round(decoded_s, 1),
            "decode_finished": bool(decode_finished),
        }
        try:
            self.send(update)
            self.sent += 1
        except Exception:  # noqa: BLE001 - progress is a courtesy, never a failure
            log.warning("progress update failed", exc_info=True)


def _warm_imports() -> None:
    try:
        importlib.import_module("stages.source")
    except Exception:  # noqa: BLE001 - the first request will report it
        pass


class Worker:
    """One long-lived pipeline serving jobs, several at once when called from several
    threads (RunPod's concurrency above one: their windows share the decoder's slots);
    rebuilt once if a stage dies, whichever request noticed.

    ``progress_sender(job, update)``: called (throttled, see ProgressReporter) during a job.
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        progress_sender=None,
        *,
        max_batch: int | None = None,
        max_base64: int | None = None,
        progress_interval: float = PROGRESS_INTERVAL_S,
    ):
        self.config = config or self.config_from_env()
        self.max_batch = max_batch if max_batch is not None else max_batch_size()
        self.max_base64 = max_base64 if max_base64 is not None else max_base64_bytes()
        self.progress_sender = progress_sender
        self.progress_interval = progress_interval
        self._lock = threading.Lock()
        self._closed = False
        self._english_only = english_only_hint(self.config.model)
        self.pipeline = None
        self._start_pipeline()  # the model starts loading now, in the infer stage
        # parse_request needs stages.source (aiohttp: a second or so to import); import it
        # now, alongside the model load, rather than in front of the first job.
        threading.Thread(target=_warm_imports, name="warm-imports", daemon=True).start()

    @staticmethod
    def config_from_env() -> PipelineConfig:
        return PipelineConfig(
            model=env_model(),
            batch_size=env_batch_size(),
            allow_private_urls=allow_private(),
            max_download_bytes=env_int(MAX_DOWNLOAD_ENV, DEFAULT_MAX_DOWNLOAD),
            log_level=os.environ.get("LOG_LEVEL", "INFO").upper(),
            # Every request the worker takes at once moves through the stages at once
            # (runpod_entry checks WORKER_CONCURRENCY's bounds, 1-64).
            concurrent_jobs=min(64, max(4, env_int("WORKER_CONCURRENCY", 1))),
        )

    @property
    def english_only(self) -> bool | None:
        """True for an English-only model: from the model's name or files where they tell
        (``english_only_hint``), else from the loaded model; None while that loads."""
        if self._english_only is not None:
            return self._english_only
        info = getattr(self.pipeline, "model_info", None) or {}
        multilingual = info.get("multilingual")
        return None if multilingual is None else not multilingual

    def _start_pipeline(self):
        from pipeline.runtime import Pipeline

        self.pipeline = Pipeline(self.config).start()

    def close(self):
        with self._lock:  # a request failing now (its pipeline closed) restarts nothing
            self._closed = True
        if self.pipeline is not None:
            self.pipeline.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def handle(self, job: dict, stop: threading.Event | None = None) -> dict:
        """The RunPod handler: never raises; errors come back as {"error": "one line"}.
        ``stop``: set by another thread when RunPod gives up on the job (a cancel, its
        execution timeout, its expiry): the job is cancelled in the pipeline at once."""
        job_id = job.get("id") if isinstance(job, dict) else None
        with logs.thread_job(job_id):
            return self._handle_logged(job, job_id, stop)

    def _handle_logged(self, job: dict, job_id, stop=None) -> dict:
        pipeline = self.pipeline
        why = pipeline.unusable_reason if pipeline is not None else None
        if why and not self._closed:
            # A stage died while the worker was idle (killed for memory, say): this job
            # gets a fresh pipeline rather than the old one's error.
            log.warning("%s between jobs; restarting the pipeline", clip(why, 300))
            self._restart(pipeline)
            pipeline = self.pipeline
        try:
            return self._handle(job, job_id, pipeline, stop)
        except RequestError as exc:
            log.info("bad request: %s", clip(str(exc), 300))
            return {"error": clip(str(exc), 300)}
        except JobError as exc:
            if stop is not None and stop.is_set():
                log.info("job cancelled: RunPod stopped it (a cancel, a timeout or its expiry)")
                return {"error": "the job was cancelled"}
            if exc.traceback:
                log.error("job failed: %s\n%s", clip(str(exc), 300), exc.traceback)
            else:
                log.info("job failed: %s", clip(str(exc), 300))
            return {"error": clip(str(exc), 300)}
        except PipelineError as exc:  # a stage died (StageDied) or the pipeline is unusable
            if self._closed:  # closed under it (SIGTERM): the worker is stopping, not failing
                log.info("job stopped: the worker is shutting down")
                return {"error": "the worker is shutting down; the job was not finished"}
            log.error("pipeline failed: %s; restarting it", clip(str(exc), 300))
            self._restart(pipeline)
            return {"error": clip(str(exc), 300)}
        except Exception as exc:  # noqa: BLE001 - the worker must survive any request
            log.exception("unexpected error")
            return {"error": clip(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])}

    def _restart(self, failed):
        """A fresh pipeline in place of ``failed``, once: requests that ran on the same
        failed pipeline at the same time restart it only once."""
        with self._lock:
            if self.pipeline is not failed or self._closed:
                return
            try:
                failed.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the failed pipeline")
            self._start_pipeline()

    def _handle(self, job: dict, job_id, pipeline, stop=None) -> dict:
        t0 = time.monotonic()
        req = parse_request(
            job.get("input") if isinstance(job, dict) else None,
            allow_private_urls=self.config.allow_private_urls,
            max_batch=self.max_batch,
            max_base64=self.max_base64,
            english_only=self.english_only,
        )
        if req.source_key == "audio_base64":
            label = "audio_base64"
        else:
            from stages.source import source_label

            label = source_label(req.source)  # at most 150 characters (LABEL_MAX)
        progress = None
        if self.progress_sender is not None:
            sender = self.progress_sender
            progress = ProgressReporter(lambda update: sender(job, update), self.progress_interval)
        log.info("job: %s, %s", req.source_key, req.options)  # a prompt by its size (DecodeOptions.__repr__)
        try:
            outcome = pipeline.run_job(
                Job(
                    req.source,
                    req.options,
                    batch_size=req.batch_size,
                    label=label,
                    job_id=None if job_id is None else str(job_id),
                    profile=req.profile,
                ),
                progress=progress,
                stop=stop,
            )
        except JobError as exc:
            raise JobError(
                input_message(label, str(exc)), stage=exc.stage, traceback=exc.traceback
            ) from None
        t = outcome.transcript
        out = t.to_dict()
        out["transcription"] = formatted(t, req.transcription, req.max_line_chars)
        out["detected_language"] = t.language
        out["device"] = outcome.model.get("device")
        out["translation"] = t.text if req.options.task == "translate" else None
        if req.profile:
            from pipeline.profile import profile_from_outcome

            out["profile"] = profile_from_outcome(outcome)
        log.info(
            "transcribed %.1f s of audio in %.2f s (handler %.2f s)",
            t.duration,
            t.timings.get("total_s") or 0,
            time.monotonic() - t0,
        )
        return out
