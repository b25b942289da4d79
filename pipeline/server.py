"""``python -m pipeline.server``: an OpenAI-compatible transcription server (aiohttp).

Routes (OpenAI's shapes, so the ``openai`` client works with ``base_url``):

- ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``: multipart fields
  ``file``, ``model``, ``language`` (on translations: the language spoken), ``prompt``, ``response_format``
  (json, text, srt, vtt, verbose_json), ``temperature``, ``timestamp_granularities[]``
  (segment, word), ``stream`` (server-sent events: ``transcript.text.delta`` as segments
  become final, then ``transcript.text.done``; with response_format json or text only);
  and our ``max_line_chars`` (srt/vtt only: cues cut between words, at most this many
  characters, 10-1000; word granularity with srt/vtt alone cuts at 42).
- ``GET /v1/models`` (and ``/v1/models/{id}``), ``GET /health`` (no key needed).

One Pipeline is started with the server (the model loads at once) and shared by every
request: concurrent requests' windows share the decoder's slots. An upload is streamed
part by part to a temporary file (never held whole in memory; counted as it comes, 413 as
soon as it passes ``--max-upload-mb``), handed to the pipeline as ``Job(source=path)`` and
deleted when the request ends. A client that goes away cancels its job.

Errors are OpenAI's JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for a
bad field or audio that cannot be decoded (the stages mark such failures as the input's,
``pipeline.errors.UserError``), 401 for a missing or wrong key, 404 for an unknown route,
413 for an upload over the limit, 503 while a broken pipeline is rebuilt; 500 only for our
own faults.

The ``model`` field: the served model's id, its short name (the last part of a hub id or
path) and ``whisper-1`` (what OpenAI's examples send) are accepted, no field means the
served model; any other name is a 400 ``model_not_found``: a client asking for a model
this server does not have should learn that, not silently get another one.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from aiohttp import web

from pipeline import logs
from pipeline.config import Job, PipelineConfig, env_batch_size, env_model
from pipeline.errors import JobError, PipelineError, input_message
from pipeline.languages import clip, language_code
from pipeline.types import MAX_PROMPT_CHARS, DecodeOptions

log = logging.getLogger("pipeline.server")  # also when run as __main__

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")  # what stream=true can answer: the events carry text
GRANULARITIES = ("segment", "word")
ALIASES = ("whisper-1",)
CHUNK = 256 * 1024  # bytes read from the upload at a time
FIELD_MAX = 64 * 1024  # bytes of a form field other than the file (a prompt is far shorter)
FORM_SLACK = 1024 * 1024  # a body may pass the file limit by this much (the other fields)
DEFAULT_MAX_UPLOAD_MB = 200.0
DEFAULT_MAX_LINE_CHARS = 42  # subtitle line length (word granularity with srt/vtt)
DEFAULT_SHUTDOWN_S = 8.0  # SIGTERM: how long requests in flight may still finish
POLL_S = 0.05  # how often a waiting request looks at its job and its connection


class ApiError(Exception):
    """A request that cannot be served: becomes OpenAI's error body with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


class ClientGone(Exception):
    """The client closed its connection: nothing more can be sent to it."""


def error_body(status: int, message: str, type: str, param=None, code=None) -> web.Response:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.json_response(body, status=status)


@dataclass(frozen=True)
class ServerConfig:
    model_id: str  # as served: what /v1/models lists and responses name
    api_key: str | None = None
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    english_only: bool | None = None
    upload_dir: str | None = None  # None: the system's temporary folder
    upload_stall_s: float = 30.0  # an upload that sends nothing for this long: 408


@dataclass
class Form:
    """A parsed request: the upload on disk and the fields, validated."""

    path: str
    filename: str
    size: int
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    granularities: tuple = ("segment",)
    stream: bool = False
    max_line_chars: int | None = None


class Server:
    """The app's state: the shared pipeline (rebuilt once if a stage dies) and settings."""

    def __init__(self, pipeline_config: PipelineConfig, cfg: ServerConfig, pipeline=None):
        self.pipeline_config = pipeline_config
        self.cfg = cfg
        self.pipeline = pipeline
        self._own_pipeline = pipeline is None
        self._lock = threading.Lock()
        self.created = int(time.time())
        self.names = _accepted_names(cfg.model_id)
        self.cancelled = 0  # jobs cancelled because their client went away
        self.requests: set[asyncio.Task] = set()  # handlers running (cancel_requests)

    # -- life cycle -------------------------------------------------------------------------

    def start(self):
        if self.pipeline is None:
            from pipeline.runtime import Pipeline

            self.pipeline = Pipeline(self.pipeline_config).start()  # the model loads now
        threading.Thread(target=self._ready, name="wsp-ready", daemon=True).start()

    def _ready(self):
        try:
            info = self.pipeline.wait_ready()
            log.info("model ready: %s on %s", info.get("model"), info.get("device"))
        except Exception as exc:  # noqa: BLE001 - /health reports it
            log.error("the model did not load: %s", exc)

    def close(self):
        if self._own_pipeline and self.pipeline is not None:
            self.pipeline.close()

    def cancel_requests(self) -> None:
        """Cancel every request being handled (a second SIGTERM): each cancels its job."""
        for task in list(self.requests):
            task.cancel()

    def _restart(self, failed):
        with self._lock:
            if self.pipeline is not failed or not self._own_pipeline:
                return
            try:
                failed.close()
            except Exception:
                log.exception("closing the failed pipeline")
            from pipeline.runtime import Pipeline

            self.pipeline = Pipeline(self.pipeline_config).start()
            threading.Thread(target=self._ready, name="wsp-ready", daemon=True).start()

    # -- routes -----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        p = self.pipeline
        broken = p is None or not p.usable
        if broken:
            return web.json_response({"status": "unavailable", "model": self.cfg.model_id}, status=503)
        if p.model_info is None:
            return web.json_response({"status": "loading", "model": self.cfg.model_id}, status=503)
        return web.json_response({
            "status": "ok", "model": self.cfg.model_id, "device": p.model_info.get("device"),
            "jobs_running": p.jobs_in_flight, "jobs_cancelled": self.cancelled,
        })  # fmt: skip

    @property
    def english_only(self) -> bool | None:
        """True for an English-only model: from the model check at start-up where it could
        tell, else from the loaded model (None while it loads)."""
        if self.cfg.english_only is not None:
            return self.cfg.english_only
        info = getattr(self.pipeline, "model_info", None) or {}
        multilingual = info.get("multilingual")
        return None if multilingual is None else not multilingual

    def _model_obj(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "whisper-pipeline"}

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_obj(n) for n in self.names]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.names:
            raise ApiError(404, f"The model '{clip(name, 80)}' does not exist", code="model_not_found")
        return web.json_response(self._model_obj(name))

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._audio(request, "transcribe")

    async def translations(self, request: web.Request) -> web.StreamResponse:
        if self.english_only:
            raise ApiError(
                400,
                f"model {self.cfg.model_id} is English-only: it cannot translate (serve a "
                "multilingual model, e.g. --model base)",
                param="model",
                code="unsupported_task",
            )
        return await self._audio(request, "translate")

    async def _audio(self, request: web.Request, task: str) -> web.StreamResponse:
        rid = "req_" + secrets.token_hex(8)
        declared = request.content_length
        if declared is not None and declared > self.cfg.max_upload_bytes + FORM_SLACK:
            raise _too_large(self.cfg.max_upload_bytes)
        form = None
        try:
            form = await self._read_form(request)
            options = self._options(form, task)
            label = form.filename
            job = Job(form.path, options, label=label, job_id=rid)
            log.info("%s: %s, %d bytes, %s, %s", rid, task, form.size, form.response_format, options)
            if form.stream:
                return await self._stream(request, job, label)
            outcome = await self._run(request, job, label)
            return self._respond(outcome, form, task)
        finally:
            if form is not None:
                _unlink(form.path)

    # -- the request's form --------------------------------------------------------------------

    async def _read_form(self, request: web.Request) -> Form:
        ctype = request.content_type
        if ctype != "multipart/form-data":
            raise ApiError(400, f"the body must be multipart/form-data, not {clip(ctype or 'nothing', 60)}")
        fields: dict[str, list[str]] = {}
        upload = None
        try:
            try:
                reader = await request.multipart()
            except (ValueError, AssertionError, KeyError) as exc:
                raise ApiError(400, f"cannot read the multipart body: {clip(str(exc) or type(exc).__name__, 120)}") from None
            while True:
                part = await self._stalled(reader.next())
                if part is None:
                    break
                if not isinstance(part, _BodyPartReader):
                    raise ApiError(400, "nested multipart bodies are not accepted")
                name = part.name
                if name == "file":
                    if upload is not None:
                        raise ApiError(400, "file: given twice", param="file")
                    upload = await self._save(part)
                elif name:
                    fields.setdefault(name, []).append(await self._stalled(_field_text(part, name)))
                else:
                    await part.release()
        except ApiError:
            if upload is not None:
                _unlink(upload[0])
            raise
        except asyncio.CancelledError:
            if upload is not None:
                _unlink(upload[0])
            raise
        except ConnectionResetError:  # the client hung up mid-upload: not our fault, no 500
            if upload is not None:
                _unlink(upload[0])
            raise ClientGone() from None
        except Exception as exc:  # noqa: BLE001 - anything else here is a malformed body
            if upload is not None:
                _unlink(upload[0])
            if _closing(request):
                raise ClientGone() from None
            raise ApiError(400, f"cannot read the multipart body: {clip(str(exc) or type(exc).__name__, 120)}") from None
        if upload is None:
            raise ApiError(400, "file: an audio file is required (multipart field 'file')", param="file")
        path, filename, size = upload
        try:
            return self._fields(Form(path, filename, size), fields)
        except BaseException:
            _unlink(path)
            raise

    async def _stalled(self, awaitable):
        """One read of the body: 408 when the client sends nothing for ``upload_stall_s``
        (a client that opens a request and goes quiet must not hold it open for ever)."""
        try:
            return await asyncio.wait_for(awaitable, self.cfg.upload_stall_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the upload sent nothing for {self.cfg.upload_stall_s:g} s",
                           code="upload_timeout") from None

    async def _save(self, part) -> tuple[str, str, int]:
        """Stream the file part to a temporary file, counting bytes: 413 past the limit."""
        limit = self.cfg.max_upload_bytes
        filename = _safe_name(part.filename)
        try:
            fd, path = tempfile.mkstemp(prefix="wsp-upload-", dir=self.cfg.upload_dir)
        except OSError as exc:
            raise _no_room(exc) from None
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while True:
                    chunk = await self._stalled(part.read_chunk(CHUNK))
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    try:
                        f.write(chunk)
                    except OSError as exc:  # the disk, not the request: 503, not 400
                        raise _no_room(exc) from None
                try:
                    f.flush()  # here, not in close(): a full disk must raise where it is caught
                except OSError as exc:
                    raise _no_room(exc) from None
        except BaseException:
            _unlink(path)
            raise
        if size == 0:
            _unlink(path)
            raise ApiError(400, "file: is empty", param="file", code="invalid_audio")
        return path, filename, size

    def _fields(self, form: Form, fields: dict) -> Form:
        known = {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
                 "timestamp_granularities", "stream", "max_line_chars", "include[]", "chunking_strategy"}  # fmt: skip

        def one(name):
            values = fields.get(name)
            if not values:
                return None
            if len(values) > 1:
                raise ApiError(400, f"{name}: given {len(values)} times", param=name)
            return values[0].strip()

        unknown = sorted(set(fields) - known)
        if unknown:
            raise ApiError(400, f"unknown field {clip(unknown[0], 40)!r}", param=clip(unknown[0], 40))
        model = one("model")
        if model:
            if model not in self.names:
                raise ApiError(
                    400,
                    f"model: this server serves {self.cfg.model_id} (also named "
                    f"{', '.join(n for n in self.names if n != self.cfg.model_id)}), not {clip(model, 60)!r}",
                    param="model",
                    code="model_not_found",
                )
        form.model = model
        fmt = one("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format: must be one of {', '.join(RESPONSE_FORMATS)}, not {clip(fmt, 40)!r}",
                           param="response_format")  # fmt: skip
        form.response_format = fmt
        lang = one("language")
        if lang:
            try:
                form.language = language_code(lang)
            except ValueError as exc:
                raise ApiError(400, f"language: {exc} (use an ISO-639-1 code such as 'en')", param="language") from None
            if self.english_only and form.language not in (None, "en"):
                raise ApiError(
                    400,
                    f"language: model {self.cfg.model_id} is English-only; it cannot transcribe {clip(lang, 20)!r}",
                    param="language",
                )
        prompt = fields.get("prompt")
        if prompt:
            if len(prompt) > 1:
                raise ApiError(400, "prompt: given twice", param="prompt")
            # Whisper uses only a prompt's last 223 tokens (OpenAI accepts longer ones): a
            # prompt past MAX_PROMPT_CHARS (several times that) loses its start, not the request.
            form.prompt = prompt[0][-MAX_PROMPT_CHARS:] if prompt[0].strip() else None
        temp = one("temperature")
        if temp:
            try:
                form.temperature = float(temp)
            except ValueError:
                form.temperature = -1.0
            if not 0.0 <= form.temperature <= 1.0:
                raise ApiError(400, f"temperature: must be a number from 0 to 1, not {clip(temp, 20)!r}", param="temperature")
        grans = fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", [])
        grans = [g.strip() for g in grans if g.strip()]
        bad = [g for g in grans if g not in GRANULARITIES]
        if bad:
            raise ApiError(400, f"timestamp_granularities[]: must be segment or word, not {clip(bad[0], 20)!r}",
                           param="timestamp_granularities[]")  # fmt: skip
        if grans:
            form.granularities = tuple(g for g in GRANULARITIES if g in grans)
        if "word" in form.granularities and form.response_format in ("json", "text"):
            # OpenAI answers json with word granularity with a 400: the body has no place
            # for words, and taking the field silently would hide the client's mistake.
            raise ApiError(400, f"timestamp_granularities[]: word timestamps need response_format verbose_json "
                                f"(or srt/vtt, for cues cut between words), not {form.response_format}",
                           param="timestamp_granularities[]")  # fmt: skip
        stream = one("stream")
        if stream:
            if stream.lower() not in ("true", "false", "1", "0"):
                raise ApiError(400, f"stream: must be true or false, not {clip(stream, 20)!r}", param="stream")
            form.stream = stream.lower() in ("true", "1")
        if form.stream and form.response_format not in STREAM_FORMATS:
            # The events carry text only (OpenAI's transcript.text.delta/done); answering
            # SRT, VTT or segments with them would silently drop what was asked for.
            raise ApiError(400, f"stream: gives text events; response_format {form.response_format} needs "
                                f"stream=false (with stream, use {' or '.join(STREAM_FORMATS)})",
                           param="stream")  # fmt: skip
        mlc = one("max_line_chars")
        if mlc:
            from pipeline.formats import MAX_LINE_CHARS

            lo, hi = MAX_LINE_CHARS
            if not mlc.isdigit() or not lo <= int(mlc) <= hi:
                raise ApiError(400, f"max_line_chars: must be an integer from {lo} to {hi}, not {clip(mlc, 20)!r}",
                               param="max_line_chars")  # fmt: skip
            if form.response_format not in ("srt", "vtt"):
                # As the CLI and the worker answer: cues are cut only in subtitles, and a
                # field that silently does nothing would hide the client's mistake.
                raise ApiError(400, f"max_line_chars: cuts srt or vtt cues between words; response_format "
                                    f"{form.response_format} has no cues", param="max_line_chars")  # fmt: skip
            form.max_line_chars = int(mlc)
        return form

    def _options(self, form: Form, task: str) -> DecodeOptions:
        words = ("word" in form.granularities and form.response_format in ("verbose_json", "srt", "vtt")) or (
            form.max_line_chars is not None  # srt or vtt (_form checked): cues cut between words need words
        )
        try:
            return DecodeOptions(
                # On a translation: the language spoken (detection skipped), as the CLI's
                # --language and the worker's language are; OpenAI's translations take none.
                language=form.language,
                task=task,
                word_timestamps=words,
                prompt=form.prompt,
                temperature=form.temperature,
            )
        except ValueError as exc:
            field = str(exc).split(" ", 1)[0]
            raise ApiError(400, str(exc), param=field if field in ("prompt", "temperature", "language") else None) from None

    # -- running a job --------------------------------------------------------------------------

    def _submit(self, job: Job, on_window=None):
        pipeline = self.pipeline
        try:
            return pipeline, pipeline.submit(job, on_window=on_window)
        except PipelineError as exc:
            self._restart_later(pipeline, exc)
            raise ApiError(503, f"the pipeline is restarting: {exc}", type="server_error", code="unavailable") from None

    def _restart_later(self, pipeline, exc):
        log.error("pipeline failed: %s; restarting it", exc)
        threading.Thread(target=self._restart, args=(pipeline,), daemon=True).start()

    async def _wait(self, request: web.Request, pipeline, run, check=None):
        """Until the job ends; cancels it when the client goes away (or this is cancelled)."""
        try:
            while not run.finished.is_set():
                if _closing(request):
                    self._cancel(pipeline, run, "the client went away")
                    raise ClientGone()
                if check is not None:
                    await check()
                else:
                    await asyncio.sleep(POLL_S)
        except asyncio.CancelledError:
            self._cancel(pipeline, run, "the request was cancelled")
            raise

    def _cancel(self, pipeline, run, why: str) -> None:
        if not run.finished.is_set():
            pipeline.cancel(run, why)
            self.cancelled += 1
            log.info("%s: job cancelled", why)

    def _outcome(self, pipeline, run, label: str):
        try:
            return pipeline.wait(run)
        except JobError as exc:
            message = input_message(label, str(exc))
            if getattr(exc, "resource", False):  # the machine's (no disk space): try later
                log.error("job failed: %s", message)
                raise ApiError(503, clip(message, 300), type="server_error", code="insufficient_storage") from None
            if exc.stage is not None and exc.traceback is None:  # the input's fault (UserError)
                raise ApiError(400, clip(message, 300), param="file", code="invalid_audio") from None
            log.error("job failed: %s\n%s", message, exc.traceback or "")
            raise ApiError(500, clip(message, 300), type="server_error") from None
        except PipelineError as exc:
            self._restart_later(pipeline, exc)
            raise ApiError(503, f"the pipeline failed and is restarting: {clip(str(exc), 200)}",
                           type="server_error", code="unavailable") from None  # fmt: skip

    async def _run(self, request, job, label):
        pipeline, run = self._submit(job)
        await self._wait(request, pipeline, run)
        return self._outcome(pipeline, run, label)

    def _respond(self, outcome, form: Form, task: str) -> web.Response:
        from pipeline.formats import format_transcript, verbose_json
        from pipeline.languages import LANGUAGES

        t = outcome.transcript
        fmt = form.response_format
        if fmt == "json":
            return web.json_response({"text": t.text})
        if fmt == "verbose_json":
            body = verbose_json(
                t, task, outcome.windows, words="word" in form.granularities, segments="segment" in form.granularities
            )
            if not body["language"]:  # nothing was spoken, so nothing was detected
                if form.language:
                    body["language"] = LANGUAGES.get(form.language, form.language)
                elif self.english_only:
                    body["language"] = "english"
            return web.json_response(body)
        if fmt == "text":
            return web.Response(text=t.text + "\n", content_type="text/plain")
        mlc = form.max_line_chars
        if mlc is None and "word" in form.granularities:
            mlc = DEFAULT_MAX_LINE_CHARS
        body = format_transcript(t, fmt, max_line_chars=mlc)
        return web.Response(text=body, content_type="text/vtt" if fmt == "vtt" else "text/plain")

    async def _stream(self, request: web.Request, job: Job, label: str) -> web.StreamResponse:
        """Server-sent events: a ``transcript.text.delta`` per segment as it becomes final
        (windows arrive in any order; StreamStitcher releases segments in order), then
        ``transcript.text.done`` with the whole text (= the deltas joined)."""
        from pipeline.stitch import StreamStitcher

        loop = asyncio.get_running_loop()
        windows: asyncio.Queue = asyncio.Queue()

        def on_window(w):  # the dispatcher thread: hand it over, quickly
            loop.call_soon_threadsafe(windows.put_nowait, w)

        pipeline, run = self._submit(job, on_window)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        stitcher = StreamStitcher()
        seen: set[int] = set()
        state = {"text": "", "held": ""}  # sent so far; whitespace held back from the last delta

        async def send(event: dict):
            # The status goes out with the first event: a job that fails before any text
            # (audio that cannot be decoded) still gets its plain 400.
            try:
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write(b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n")
            except (ConnectionResetError, ConnectionError, RuntimeError):
                self._cancel(pipeline, run, "the client went away")
                raise ClientGone() from None

        async def feed(w):
            if w.index in seen:
                return
            seen.add(w.index)
            for seg in stitcher.add(w):
                piece = state["held"] + seg.text
                if not state["text"]:
                    piece = piece.lstrip()
                delta = piece.rstrip()
                state["held"] = piece[len(delta):]
                if delta:
                    state["text"] += delta
                    await send({"type": "transcript.text.delta", "delta": delta})

        async def pump():
            try:
                w = await asyncio.wait_for(windows.get(), POLL_S)
            except TimeoutError:
                return
            await feed(w)

        try:
            await self._wait(request, pipeline, run, check=pump)
            try:
                outcome = self._outcome(pipeline, run, label)
            except ApiError as exc:
                if not resp.prepared:
                    raise
                await send({"type": "error", "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}})
                return resp
            for w in sorted(outcome.windows, key=lambda w: w.index):  # any not yet handed over
                await feed(w)
            await send({"type": "transcript.text.done", "text": state["text"]})
            await resp.write_eof()
        except ClientGone:
            if not resp.prepared:
                raise
        return resp


try:  # aiohttp's class of a non-nested part
    from aiohttp import BodyPartReader as _BodyPartReader
except ImportError:  # pragma: no cover
    from aiohttp.multipart import BodyPartReader as _BodyPartReader


async def _field_text(part, name: str) -> str:
    data = bytearray()
    while True:
        chunk = await part.read_chunk(8192)
        if not chunk:
            break
        data += chunk
        if len(data) > FIELD_MAX:
            raise ApiError(400, f"{clip(name, 40)}: longer than {FIELD_MAX // 1024} KiB", param=clip(name, 40))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{clip(name, 40)}: not UTF-8 text", param=clip(name, 40)) from None


def _closing(request: web.Request) -> bool:
    t = request.transport
    return t is None or t.is_closing()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"file: larger than this server's limit of {limit / 2**20:g} MB (--max-upload-mb)",
                    param="file", code="file_too_large")  # fmt: skip


def _no_room(exc: OSError) -> ApiError:
    log.error("cannot store an upload: %s", exc)
    return ApiError(503, f"the server cannot store the upload now ({exc.strerror or exc}); try again later",
                    type="server_error", code="insufficient_storage")  # fmt: skip


def _safe_name(name) -> str:
    """The client's file name as a label for messages: printable, at most 80 characters."""
    name = os.path.basename(str(name or "")).strip() or "upload"
    name = "".join(c if c.isprintable() else "?" for c in name)
    return clip(name, 80)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _accepted_names(model_id: str) -> tuple[str, ...]:
    names = [model_id]
    short = model_id.rstrip("/").rsplit("/", 1)[-1]
    if short and short not in names:
        names.append(short)
    for a in ALIASES:
        if a not in names:
            names.append(a)
    return tuple(names)


# ----------------------------------------------------------------------------- the app


def make_app(server: Server) -> web.Application:
    """The aiohttp application; its startup starts ``server``'s pipeline, cleanup closes it."""

    @web.middleware
    async def errors(request: web.Request, handler):
        task = asyncio.current_task()
        server.requests.add(task)
        try:
            if request.path != "/health" and server.cfg.api_key is not None:
                _check_key(request, server.cfg.api_key)
            return await handler(request)
        except ApiError as exc:
            if exc.status >= 500:
                log.warning("%s %s: %s", request.method, request.path, exc.message)
            return error_body(exc.status, exc.message, exc.type, exc.param, exc.code)
        except ClientGone:
            return web.Response(status=499)  # nobody reads it
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}.get(exc.status)
            message = exc.reason if exc.status != 404 else f"no route {request.method} {clip(request.path, 100)}"
            response = error_body(exc.status, message, "invalid_request_error", None, kind)
            if "Allow" in exc.headers:  # a 405 names the methods the route takes (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our fault: logged, one line to the client
            log.exception("internal error on %s %s", request.method, request.path)
            return error_body(500, f"internal error: {type(exc).__name__}", "server_error")
        finally:
            server.requests.discard(task)

    app = web.Application(middlewares=[errors], client_max_size=FIELD_MAX)
    app.router.add_get("/health", server.health)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/v1/models/{name:.+}", server.model)
    app.router.add_post("/v1/audio/transcriptions", server.transcriptions)
    app.router.add_post("/v1/audio/translations", server.translations)

    async def lifecycle(app):
        await asyncio.get_running_loop().run_in_executor(None, server.start)
        yield
        await asyncio.get_running_loop().run_in_executor(None, server.close)

    app.cleanup_ctx.append(lifecycle)
    return app


def _check_key(request: web.Request, key: str) -> None:
    auth = request.headers.get("Authorization", "")
    scheme, _, given = auth.partition(" ")
    if not auth:
        raise ApiError(401, "no API key: send the header Authorization: Bearer KEY", type="invalid_request_error",
                       code="invalid_api_key")  # fmt: skip
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "incorrect API key", type="invalid_request_error", code="invalid_api_key")


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.server",
        description="OpenAI-compatible transcription server (POST /v1/audio/transcriptions, "
        "/v1/audio/translations; GET /v1/models, /health).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--model", default=None,
                   help="as for the CLI: tiny.en, base, small, a checkpoint directory or a hub id "
                        "(default: $MODEL_ID, else openai/whisper-large-v3-turbo)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None,
                   help="decoder slots shared by all requests (default: $MODEL_BATCH_SIZE, else 16)")
    p.add_argument("--concurrent-jobs", type=int, default=8,
                   help="requests the pipeline's stages work on at once, taking turns (1-64, default 8); "
                        "later ones wait in order")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"))
    p.add_argument("--api-key", default=None,
                   help="require Authorization: Bearer KEY on every route but /health (default: $API_KEY; none: open)")
    p.add_argument("--max-upload-mb", type=float, default=None,
                   help=f"largest upload accepted, MB (default: $MAX_UPLOAD_MB, else {DEFAULT_MAX_UPLOAD_MB:g})")
    p.add_argument("--upload-dir", default=None, help="where uploads are spooled (default: the temporary folder)")
    p.add_argument("--upload-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="an upload that sends nothing for this long gets 408 (default 30)")
    p.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_S, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, requests in flight get this long to finish, then are "
                        f"cancelled; a second signal cancels them at once (default {DEFAULT_SHUTDOWN_S:g}: "
                        "under Docker's 10 s before SIGKILL)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    level = ("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)]
    logs.setup(level, role="server")
    from pipeline.weights import ModelResolveError, check_model

    model = args.model or env_model()
    try:
        pcfg = PipelineConfig(
            model=model,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size if args.batch_size is not None else env_batch_size(),
            concurrent_jobs=args.concurrent_jobs,
            log_level=level,
        )
        english_only = check_model(model).english_only
        mb = args.max_upload_mb if args.max_upload_mb is not None else float(os.environ.get("MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB)
        if not mb > 0:
            raise ValueError(f"--max-upload-mb must be positive, not {mb:g}")
        if not args.upload_timeout > 0:
            raise ValueError(f"--upload-timeout must be positive, not {args.upload_timeout:g}")
        if not 0 <= args.shutdown_timeout < float("inf"):
            raise ValueError(f"--shutdown-timeout must be a number of seconds, not {args.shutdown_timeout:g}")
    except (ValueError, ModelResolveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    key = args.api_key if args.api_key is not None else (os.environ.get("API_KEY") or None)
    cfg = ServerConfig(model_id=model, api_key=key, max_upload_bytes=int(mb * 2**20), english_only=english_only,
                       upload_dir=args.upload_dir, upload_stall_s=args.upload_timeout)  # fmt: skip
    server = Server(pcfg, cfg)
    return asyncio.run(_serve(server, args.host, args.port, args.shutdown_timeout))


async def _serve(server: Server, host: str, port: int, shutdown_timeout: float = DEFAULT_SHUTDOWN_S) -> int:
    import signal

    # aiohttp's default drain is 60 s: a long transcription held a SIGTERMed server that
    # long, past any container's grace period (then SIGKILL, and nothing cleaned up).
    runner = web.AppRunner(make_app(server), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        await runner.cleanup()
        return 2
    h, p = site._server.sockets[0].getsockname()[:2]
    print(f"listening on http://{h}:{p} (model {server.cfg.model_id}; loading)", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal():
        if stop.is_set():  # a second signal: stop waiting for requests in flight
            server.cancel_requests()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    print(f"shutting down: requests in flight get up to {shutdown_timeout:g} s (a second signal stops them now)",
          file=sys.stderr, flush=True)  # fmt: skip
    await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
