"""The server (pipeline/server.py) over a scripted pipeline: no model, no stages.

What the real-model tests (tests/test_server.py) cannot reach on demand: segments with
words (word timestamps come from another branch), windows arriving out of order while
streaming, a job that fails after its stream began, a stage's own fault (500) and a dead
pipeline (503). The app runs in a thread on a free port; the client is the real ``openai``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from pipeline.config import PipelineConfig
from pipeline.errors import JobError, StageDied
from pipeline.formats import Transcript
from pipeline.runtime.driver import JobOutcome
from pipeline.server import Server, ServerConfig, make_app
from pipeline.stitch import stitch, transcript_text
from pipeline.types import Segment, TimedWindow, WindowResult, Word
from tests.httpserver import stop_loop_thread

openai = pytest.importorskip("openai")
from aiohttp import web


def _words(start: float, text: str, step: float = 0.5):
    return tuple(Word(start + i * step, start + (i + 1) * step, " " + w, 0.9) for i, w in enumerate(text.split()))


W0 = TimedWindow(0, 0.0, 10.0, WindowResult((Segment(0.0, 3.0, " And so my fellow Americans", words=_words(0.0, "And so my fellow Americans")),), "en", avg_logprob=-0.1))  # fmt: skip
W1 = TimedWindow(1, 10.0, 10.0, WindowResult((Segment(0.0, 4.0, " ask not what your country can do for you", words=_words(0.0, "ask not what your country can do for you")),), "en"))  # fmt: skip
TEXT = "And so my fellow Americans ask not what your country can do for you"


class Run:
    def __init__(self, job, on_window):
        self.job, self.on_window = job, on_window
        self.finished = threading.Event()
        self.outcome = None
        self.error = None


class ScriptedPipeline:
    """Pipeline's interface as the server uses it; each job plays ``script``: a list of
    ("window", TimedWindow) / ("sleep", s) / ("fail", exc) steps, then its outcome."""

    def __init__(self):
        self.model_info = {"model": "fake", "device": "cpu"}
        self.language = "en"  # the transcripts' language (None: nothing was detected)
        self._broken = None
        self.jobs_in_flight = 0
        self.script = [("window", W1), ("sleep", 0.2), ("window", W0)]
        self.jobs = []

    @property
    def usable(self):
        return self._broken is None

    def wait_ready(self, timeout=None):
        return self.model_info

    def submit(self, job, progress=None, on_window=None):
        if self._broken is not None:
            raise self._broken
        run = Run(job, on_window)
        self.jobs.append(job)
        threading.Thread(target=self._play, args=(run, list(self.script)), daemon=True).start()
        return run

    def _play(self, run, script):
        windows = []
        for kind, arg in script:
            if run.finished.is_set():
                return
            if kind == "sleep":
                time.sleep(arg)
            elif kind == "fail":
                run.error = arg
                run.finished.set()
                return
            else:
                windows.append(arg)
                if run.on_window:
                    run.on_window(arg)
        segs = stitch(windows, duration=20.0)
        t = Transcript(transcript_text(segs), self.language, 20.0, "fake", tuple(segs))
        run.outcome = JobOutcome(t, {}, {}, 0.0, None, sorted(windows, key=lambda w: w.index))
        run.finished.set()

    def wait(self, run, timeout=None):
        run.finished.wait(timeout)
        if run.error is not None:
            raise run.error
        return run.outcome

    def cancel(self, run, reason="cancelled"):
        if not run.finished.is_set():
            run.error = JobError(reason)
            run.finished.set()

    def close(self):
        pass


@pytest.fixture()
def fake():
    return ScriptedPipeline()


@contextlib.contextmanager
def _serving(fake, cfg: ServerConfig):
    """The app on a free loopback port, in a thread of its own; yields the port."""
    server = Server(PipelineConfig(model="fake"), cfg, pipeline=fake)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(server))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        yield port
    finally:
        stop_loop_thread(loop, t, runner.cleanup)


@pytest.fixture()
def client(fake):
    with _serving(fake, ServerConfig(model_id="org/fake-model")) as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)


def create(client, **kw):
    return client.audio.transcriptions.create(model=kw.pop("model", "fake-model"), file=("a.wav", b"RIFF...."), **kw)


def test_words_in_verbose_json_and_word_options_reach_the_job(client, fake):
    v = create(client, response_format="verbose_json", timestamp_granularities=["word"], prompt="Americans",
               temperature=0.4)  # fmt: skip
    assert v.text == TEXT and v.language == "english" and v.duration == 20.0
    assert [w.word for w in v.words] == TEXT.split()
    assert (v.words[5].start, v.words[5].end) == (10.0, 10.5)
    assert v.words[0].model_extra["probability"] == 0.9
    assert not v.segments  # only word granularity asked
    opts = fake.jobs[-1].options
    assert (opts.word_timestamps, opts.prompt, opts.temperature, opts.task) == (True, "Americans", 0.4, "transcribe")
    v = create(client, response_format="verbose_json")
    assert [s.id for s in v.segments] == [0, 1] and v.segments[1].seek == 1000 and not v.words
    assert fake.jobs[-1].options.word_timestamps is False  # no words unless asked


def test_srt_with_word_granularity_cuts_cues_by_words(client, fake):
    import srt

    cues = list(srt.parse(create(client, response_format="srt", timestamp_granularities=["word"],
                                 extra_body={"max_line_chars": "16"})))  # fmt: skip
    assert [c.content for c in cues] == ["And so my fellow", "Americans", "ask not what", "your country can", "do for you"]
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in cues][:2] == [(0.0, 2.0), (2.0, 2.5)]
    assert fake.jobs[-1].options.word_timestamps is True


def test_max_line_chars_alone_asks_for_word_cues_and_only_in_subtitles(client, fake):
    import srt

    # As the CLI's --max-line-chars and the worker's max_line_chars: the limit alone asks
    # for words (it used to be ignored without timestamp_granularities[]=word).
    cues = list(srt.parse(create(client, response_format="srt", extra_body={"max_line_chars": "16"})))
    assert [c.content for c in cues][:2] == ["And so my fellow", "Americans"]
    assert fake.jobs[-1].options.word_timestamps is True
    asked = len(fake.jobs)
    for fmt, mlc in (("json", "16"), ("verbose_json", "16"), ("text", "16"), ("srt", "9"), ("vtt", "1001")):
        with pytest.raises(openai.BadRequestError) as e:
            create(client, response_format=fmt, extra_body={"max_line_chars": mlc})
        assert e.value.body["param"] == "max_line_chars", (fmt, mlc)
    assert len(fake.jobs) == asked  # refused before any job


def test_word_granularity_with_a_body_that_has_no_words_is_a_400(client, fake):
    # As OpenAI answers json with timestamp_granularities[]=word (it was accepted silently).
    for fmt in ("json", "text"):
        with pytest.raises(openai.BadRequestError) as e:
            create(client, response_format=fmt, timestamp_granularities=["word"])
        assert e.value.body["param"] == "timestamp_granularities[]" and "verbose_json" in e.value.body["message"]
    assert not fake.jobs  # refused before any job
    assert create(client, response_format="json", timestamp_granularities=["segment"]).text == TEXT


def test_stream_puts_windows_that_arrive_out_of_order_in_order(client):
    events = list(create(client, stream=True))
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.delta", "transcript.text.done"]
    assert [e.delta for e in events[:2]] == ["And so my fellow Americans", " ask not what your country can do for you"]
    assert events[-1].text == TEXT


def test_stream_with_a_format_events_cannot_carry_is_a_400(client, fake):
    for fmt in ("srt", "vtt", "verbose_json"):
        with pytest.raises(openai.BadRequestError) as e:
            list(create(client, stream=True, response_format=fmt))
        assert e.value.body["param"] == "stream" and fmt in e.value.body["message"]
    assert not fake.jobs  # refused before any job
    events = list(create(client, stream=True, response_format="text"))
    assert events[-1].type == "transcript.text.done" and events[-1].text == TEXT


def test_a_job_that_fails_after_its_stream_began_ends_with_an_error_event(client, fake):
    fake.script = [("window", W0), ("sleep", 0.2), ("fail", JobError("cannot decode: truncated", stage="decode"))]
    got = []
    with pytest.raises(openai.APIError, match="cannot decode: truncated"):
        for e in create(client, stream=True):
            got.append(e)
    assert [e.type for e in got] == ["transcript.text.delta"]


def test_a_stage_fault_is_500_and_a_dead_pipeline_503(client, fake):
    fake.script = [("fail", JobError("infer stage failed: boom", stage="infer", traceback="Traceback ..."))]
    with pytest.raises(openai.InternalServerError) as e:
        create(client)
    assert e.value.status_code == 500 and e.value.body["type"] == "server_error"
    fake.script = [("fail", JobError("cannot decode: Invalid data", stage="decode"))]
    with pytest.raises(openai.BadRequestError) as e:
        create(client)
    assert e.value.body["message"] == "a.wav: cannot decode: Invalid data"
    fake._broken = StageDied("the infer stage (pid 1) was killed by SIGKILL", stage="infer")
    with pytest.raises(openai.APIStatusError) as e:
        create(client)
    assert e.value.status_code == 503


def test_model_names(client):
    assert [m.id for m in client.models.list()] == ["org/fake-model", "fake-model", "whisper-1"]  # all it accepts
    assert create(client, model="fake-model").text == TEXT
    assert create(client, model="org/fake-model").text == TEXT
    assert create(client, model="whisper-1").text == TEXT
    with pytest.raises(openai.BadRequestError) as e:
        create(client, model="whisper-large")
    assert e.value.body["code"] == "model_not_found" and "org/fake-model" in e.value.message


def test_an_upload_that_goes_quiet_gets_408(fake):
    """A client that starts an upload and then sends nothing is answered 408 after the
    stall time, not held open for ever."""
    import json
    import socket

    with _serving(fake, ServerConfig(model_id="org/fake-model", upload_stall_s=0.5)) as port:
        body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF")
        head = ("POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                "boundary=b\r\nContent-Length: 100000\r\n\r\n").encode()  # fmt: skip
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + body)  # ... and nothing more
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        status = reply.split(b"\r\n", 1)[0]
        assert b" 408 " in status, reply[:300]
        err = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
        assert err["code"] == "upload_timeout" and "sent nothing for 0.5 s" in err["message"]
        assert not fake.jobs  # nothing reached the pipeline


def test_bad_concurrent_jobs_is_one_line_and_exit_2(capsys, tiny_model_dir):
    from pipeline.server import main

    assert main(["--model", str(tiny_model_dir), "--concurrent-jobs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: concurrent_jobs must be an integer from 1 to 64") and "\n" not in err


def test_verbose_json_language(client, fake):
    """A translation's language is its output's, always english (OpenAI's TranslationVerbose);
    where nothing was detected (silence), the language the request gave, else nothing on a
    model that may speak any."""
    fake.language = "de"
    v = client.audio.translations.create(model="whisper-1", file=("a.wav", b"RIFF...."), response_format="verbose_json")
    assert v.language == "english" and fake.jobs[-1].options.task == "translate"
    client.audio.translations.create(model="whisper-1", file=("a.wav", b"RIFF...."), extra_body={"language": "de"})
    assert fake.jobs[-1].options.language == "de"  # the language spoken: a hint, as the CLI's --language
    assert create(client, response_format="verbose_json").language == "german"
    fake.language, fake.script = None, []  # silence: no window has text
    assert create(client, response_format="verbose_json", language="de").language == "german"
    assert create(client, response_format="verbose_json").language == ""


def test_an_english_only_model_is_known_from_the_loaded_model(client, fake):
    """A model the start-up check could not classify (a CTranslate2 folder of any name):
    once loaded, it says it is English-only, and translation or another language is a 400
    before any job, not a stage failure (500)."""
    fake.model_info["multilingual"] = False
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.translations.create(model="whisper-1", file=("a.wav", b"RIFF...."))
    assert e.value.body["code"] == "unsupported_task"
    with pytest.raises(openai.BadRequestError) as e:
        create(client, language="de")
    assert e.value.body["param"] == "language" and "English-only" in e.value.message
    assert not fake.jobs
    fake.language, fake.script = None, []
    assert create(client, response_format="verbose_json").language == "english"


def test_a_long_prompt_keeps_its_end(client, fake):
    """Whisper uses a prompt's last 223 tokens; a longer prompt loses its start, as OpenAI's
    does, rather than failing the request."""
    from pipeline.types import MAX_PROMPT_CHARS

    create(client, prompt="x " * 5000 + "Americans")
    prompt = fake.jobs[-1].options.prompt
    assert prompt.endswith(" Americans") and len(prompt) == MAX_PROMPT_CHARS


def test_a_wrong_method_is_405_naming_the_allowed_ones(fake):
    import json
    import urllib.error
    import urllib.request

    with _serving(fake, ServerConfig(model_id="org/fake-model")) as port:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/audio/transcriptions", method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405 and "POST" in e.value.headers.get("Allow", "")
    assert json.loads(e.value.read())["error"]["code"] == "method_not_allowed"


def test_a_client_that_hangs_up_mid_upload_is_not_a_server_error(fake, tmp_path, caplog):
    """The upload is dropped and its file deleted; nothing is logged as our fault (it was
    a 500 with a traceback: aiohttp's ConnectionResetError reached the catch-all)."""
    import logging
    import socket

    caplog.set_level(logging.INFO)
    with _serving(fake, ServerConfig(model_id="org/fake-model", upload_dir=str(tmp_path))) as port:
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"R" * 300_000
        head = ("POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                "boundary=b\r\nContent-Length: 10000000\r\n\r\n").encode()  # fmt: skip
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + body)
            deadline = time.monotonic() + 10
            while not any(tmp_path.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert any(tmp_path.iterdir())  # the upload is being spooled ... and the client goes
        deadline = time.monotonic() + 10
        while any(tmp_path.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # let the handler finish its logging
    assert not any(tmp_path.iterdir())
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not fake.jobs


def test_a_full_disk_is_503_not_a_bad_request(client, fake, tmp_path):
    """No room to spool (the decode stage's ResourceError) or to store the upload: the
    server's trouble, so 503 (a client may retry), never 400 invalid_audio."""
    fake.script = [("fail", JobError("cannot decode a.wav: cannot spool to a temporary file: No space left on device",
                                     stage="decode", resource=True))]  # fmt: skip
    with pytest.raises(openai.APIStatusError) as e:
        create(client)
    assert e.value.status_code == 503 and e.value.body["code"] == "insufficient_storage", e.value.body
    with _serving(fake, ServerConfig(model_id="org/fake-model", upload_dir=str(tmp_path / "gone"))) as port:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as e:
            create(c)
    assert e.value.status_code == 503 and "cannot store the upload" in e.value.message
