"""The RunPod worker (issue 3): request validation and formatting as plain functions, then
the real worker started with the runpod SDK's own local API server, answering HTTP POSTs
to /runsync, and stopped without leaving a process or a shared-memory segment.

What /runsync returns (runpod 1.12, rp_fastapi.WorkerAPI._sim_runsync, read from the SDK):
HTTP 200 with ``{"id", "status": "COMPLETED", "output": {...}}`` on success and
``{"id", "status": "FAILED", "error": "..."}`` when the handler returned ``{"error": ...}``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from pipeline.formats import Transcript
from pipeline.types import Segment
from pipeline.worker import (
    LANGUAGES,
    TO_LANGUAGE_CODE,
    ProgressReporter,
    RequestError,
    formatted,
    parse_request,
)
from tests import media, procs
from tests.httpserver import LoopbackServer

REPO = Path(__file__).resolve().parents[1]
URL = "https://example.com/a.mp3"


# ------------------------------------------------------------------ parse_request: errors


def _err(inp, **kw) -> str:
    with pytest.raises(RequestError) as info:
        parse_request(inp, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "inp, key",
    [
        ({"audio_url": URL, "model": "tiny"}, "'model'"),
        ({"audio_url": URL, "Language": "en"}, "'Language'"),
        ({}, "audio_url, audio or audio_base64"),
        ({"language": "en"}, "audio_url, audio or audio_base64"),
        ({"audio_url": URL, "audio": URL}, "audio_url and audio"),
        ({"audio": URL, "audio_base64": "AAAA"}, "audio and audio_base64"),
        ({"audio_url": 5}, "audio_url"),
        ({"audio": ["http://x/a.mp3"]}, "audio"),
        ({"audio_url": ""}, "audio_url"),
        ({"audio_url": "file:///etc/passwd"}, "audio_url"),
        ({"audio": "/etc/passwd"}, "audio"),
        ({"audio": "ftp://example.com/a.mp3"}, "audio"),
        ({"audio_url": "http:///nohost.mp3"}, "audio_url"),
        ({"audio_base64": "not base64!"}, "audio_base64"),
        ({"audio_base64": 12}, "audio_base64"),
        ({"audio_url": URL, "language": "klingon"}, "language"),
        ({"audio_url": URL, "language": 7}, "language"),
        ({"audio_url": URL, "task": "summarize"}, "task"),
        ({"audio_url": URL, "task": ["translate"]}, "task"),
        ({"audio_url": URL, "translate": "yes"}, "translate"),
        ({"audio_url": URL, "translate": 1}, "translate"),
        ({"audio_url": URL, "translate": True, "task": "transcribe"}, "translate"),
        ({"audio_url": URL, "translate": False, "task": "translate"}, "translate"),
        ({"audio_url": URL, "transcription": "json"}, "transcription"),
        ({"audio_url": URL, "transcription": 1}, "transcription"),
        ({"audio_url": URL, "batch_size": 0}, "batch_size"),
        ({"audio_url": URL, "batch_size": -3}, "batch_size"),
        ({"audio_url": URL, "batch_size": 2.5}, "batch_size"),
        ({"audio_url": URL, "batch_size": "8"}, "batch_size"),
        ({"audio_url": URL, "batch_size": True}, "batch_size"),
        ({"audio_url": URL, "batch_size": 17}, "batch_size"),
        ({"audio_url": URL, "profile": "true"}, "profile"),
    ],
)
def test_bad_requests_name_the_key(inp, key):
    assert key in _err(inp, max_batch=16)


@pytest.mark.parametrize("inp", [None, [], "http://x/a.mp3", 3])
def test_input_must_be_an_object(inp):
    assert "input: must be a JSON object" in _err(inp)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/a.wav",
        "http://[::1]/a.wav",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/a.wav",
        "http://192.168.1.1/a.wav",
        "http://[::ffff:127.0.0.1]/a.wav",
    ],
)
def test_private_literal_addresses_refused_unless_allowed(url):
    msg = _err({"audio_url": url}, allow_private_urls=False)
    assert msg.startswith("audio_url: refusing to download")
    assert parse_request({"audio_url": url}, allow_private_urls=True).source == url


def test_private_switch_is_read_from_the_environment(monkeypatch):
    url = "http://127.0.0.1:1/a.wav"
    monkeypatch.delenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", raising=False)
    _err({"audio": url})
    for on in ("true", "TRUE", "1"):
        monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", on)
        assert parse_request({"audio": url}).source == url
    monkeypatch.setenv("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "false")
    _err({"audio": url})


def test_base64_size_cap(monkeypatch):
    data = bytes(range(256)) * 4  # 1024 bytes
    b64 = base64.b64encode(data).decode()
    assert parse_request({"audio_base64": b64}, max_base64=1024).source == data
    assert "limit of 1023 bytes" in _err({"audio_base64": b64}, max_base64=1023)
    monkeypatch.setenv("MAX_BASE64_BYTES", "100")
    msg = _err({"audio_base64": b64})
    assert "audio_base64" in msg and "MAX_BASE64_BYTES" in msg
    monkeypatch.setenv("MAX_BASE64_BYTES", "lots")
    with pytest.raises(ValueError, match="MAX_BASE64_BYTES"):
        parse_request({"audio_base64": b64})


def test_base64_forms():
    data = b"RIFF\x00\x01fake wav bytes" * 10
    b64 = base64.b64encode(data).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    for value in (b64, wrapped, "data:audio/wav;base64," + b64):
        req = parse_request({"audio_base64": value})
        assert req.source == data and req.source_key == "audio_base64"
    assert "empty" in _err({"audio_base64": "   "})


def test_batch_size_bounds(monkeypatch):
    assert parse_request({"audio": URL, "batch_size": 1}, max_batch=4).batch_size == 1
    assert parse_request({"audio": URL, "batch_size": 4}, max_batch=4).batch_size == 4
    assert "from 1 to 4" in _err({"audio": URL, "batch_size": 5}, max_batch=4)
    monkeypatch.setenv("MODEL_BATCH_SIZE", "8")
    monkeypatch.delenv("MAX_BATCH_SIZE", raising=False)
    assert parse_request({"audio": URL, "batch_size": 8}).batch_size == 8
    assert "MAX_BATCH_SIZE" in _err({"audio": URL, "batch_size": 9})
    monkeypatch.setenv("MAX_BATCH_SIZE", "64")
    assert parse_request({"audio": URL, "batch_size": 64}).batch_size == 64
    _err({"audio": URL, "batch_size": 65})


# --------------------------------------------------------------- parse_request: accepted


def test_defaults_and_each_source_key():
    for key in ("audio_url", "audio"):
        req = parse_request({key: URL})
        assert (req.source, req.source_key) == (URL, key)
        assert req.options.language is None and req.options.task == "transcribe"
        assert (req.transcription, req.batch_size, req.profile) == ("plain_text", None, False)


def test_null_options_count_as_absent():
    req = parse_request(
        {
            "audio": URL,
            "audio_url": None,
            "language": None,
            "task": None,
            "translate": None,
            "transcription": None,
            "batch_size": None,
            "profile": None,
        }
    )
    assert req.source_key == "audio" and req.transcription == "plain_text"


@pytest.mark.parametrize(
    "value, code",
    [
        ("en", "en"),
        ("EN", "en"),
        ("english", "en"),
        ("English", "en"),
        (" de ", "de"),
        ("German", "de"),
        ("mandarin", "zh"),
        ("castilian", "es"),
        ("yue", "yue"),
        ("auto", None),
        ("", None),
    ],
)
def test_language_names_and_codes(value, code):
    assert parse_request({"audio": URL, "language": value}).options.language == code


def test_language_table_is_whispers():
    from transformers.models.whisper.tokenization_whisper import LANGUAGES as L
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE as T

    assert LANGUAGES == L and TO_LANGUAGE_CODE == T


@pytest.mark.parametrize(
    "extra, task",
    [
        ({}, "transcribe"),
        ({"translate": True}, "translate"),
        ({"translate": False}, "transcribe"),
        ({"task": "translate"}, "translate"),
        ({"task": "translate", "translate": True}, "translate"),
        ({"task": "transcribe", "translate": False}, "transcribe"),
    ],
)
def test_task_and_translate(extra, task):
    assert parse_request({"audio": URL, **extra}).options.task == task


@pytest.mark.parametrize(
    "extra, key",
    [({"translate": True}, "translate"), ({"task": "translate"}, "task"), ({"language": "German"}, "language")],
)
def test_an_english_only_model_refuses_before_any_download(extra, key):
    """Named by the key at fault, at parse time (it was the infer stage's error, after the
    whole download, with a traceback in the log)."""
    with pytest.raises(RequestError) as e:
        parse_request({"audio": URL, **extra}, english_only=True)
    assert str(e.value).startswith(f"{key}: the model is English-only"), str(e.value)
    assert parse_request({"audio": URL, "language": "en"}, english_only=True).options.language == "en"
    assert parse_request({"audio": URL, **extra}, english_only=None).options  # unknown: the model decides


def test_english_only_hint(tmp_path):
    """Known without loading the model or asking the hub (the cold start must not wait)."""
    from pipeline.worker import english_only_hint

    assert english_only_hint("tiny.en") is True and english_only_hint("base") is False
    assert english_only_hint("distil-whisper/distil-large-v3") is None  # the loaded model says
    assert english_only_hint("openai/whisper-small.en") is True
    ct2 = tmp_path / "model"  # a CTranslate2 folder named like the pip package's tiny.en
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"")
    (ct2 / "config.json").write_text("{}")
    (ct2 / "vocabulary.txt").write_text("t\n" * 51864)
    assert english_only_hint(str(ct2)) is True
    (ct2 / "vocabulary.txt").write_text("t\n" * 51865)
    assert english_only_hint(str(ct2)) is False


def test_a_local_model_that_cannot_load_is_known_at_start(tmp_path):
    from pipeline.worker import local_model_error

    assert "no such directory" in local_model_error(str(tmp_path / "nope"))
    assert "neither a transformers checkpoint" in local_model_error(str(tmp_path))
    assert local_model_error("tiny.en") is None  # installed by setup.sh
    assert local_model_error("openai/whisper-large-v3-turbo") is None  # the hub: checked when it loads


def test_unknown_log_level_stops_the_worker_in_one_line(monkeypatch):
    import runpod_entry

    monkeypatch.setenv("LOG_LEVEL", "bogus")
    with pytest.raises(SystemExit) as e:
        runpod_entry.log_level()
    assert str(e.value).startswith("error: LOG_LEVEL must be one of DEBUG, INFO") and "'bogus'" in str(e.value)
    monkeypatch.setenv("LOG_LEVEL", " warning ")
    assert runpod_entry.log_level() == "WARNING"


# ---------------------------------------------------------------------------- formatted


def _transcript():
    segs = (
        Segment(0.0, 2.5, " Hello there."),
        Segment(2.5, 5.0, " A <b> & c --> d"),
        Segment(5.0, 5.0, "   "),
        Segment(3661.2, 3662.0, " late"),
    )
    return Transcript(
        text="Hello there. A <b> & c --> d late",
        language="en",
        duration=3662.0,
        model="m",
        segments=segs,
    )


def test_formatted_styles():
    import srt
    import webvtt

    t = _transcript()
    assert formatted(t, "plain_text") == t.text
    assert formatted(t, "formatted_text") == "Hello there.\nA <b> & c --> d\nlate"
    subs = list(srt.parse(formatted(t, "srt")))
    assert [s.content for s in subs] == ["Hello there.", "A <b> & c -> d", "late"]
    assert subs[2].start.total_seconds() == pytest.approx(3661.2)
    captions = webvtt.from_string(formatted(t, "vtt")).captions
    # webvtt-py leaves character references as written
    assert [html.unescape(c.text) for c in captions] == ["Hello there.", "A <b> & c -> d", "late"]
    assert captions[2].start == "01:01:01.200"
    with pytest.raises(ValueError):
        formatted(t, "json")


# --------------------------------------------------------------------- ProgressReporter


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_is_throttled_and_ends_at_one():
    clock, sent = FakeClock(), []
    p = ProgressReporter(sent.append, interval=1.0, clock=clock)
    p(10.0, None, False)  # first: always sent; decode not finished: no share yet
    clock.t += 0.3
    p(20.0, None, False)  # too soon
    clock.t += 0.8
    p(30.0, 100.0, True)
    for done in (40.0, 50.0, 60.0):
        clock.t += 0.2
        p(done, 100.0, True)  # all too soon
    clock.t += 0.2
    p(100.0, 100.0, True)  # done: sent although only 0.6 s passed
    clock.t += 0.1
    p(100.0, 100.0, True)  # nothing new, too soon
    assert [u["share"] for u in sent] == [None, 0.3, 1.0]
    assert sent[0] == {
        "share": None,
        "transcribed_s": 10.0,
        "decoded_s": None,
        "decode_finished": False,
    }
    assert sent[-1]["transcribed_s"] == 100.0 and sent[-1]["decoded_s"] == 100.0
    assert p.sent == 3


def test_progress_sender_failure_is_not_fatal():
    def boom(update):
        raise ConnectionError("no route")

    p = ProgressReporter(boom)
    p(1.0, 2.0, True)  # logged, not raised
    assert p.sent == 0


# ------------------------------------------------------------- the worker, over HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python runpod_entry.py --rp_serve_api`` in a subprocess, stderr kept in a file."""

    def __init__(self, model_dir, log_path: Path, env: dict):
        self.port = _free_port()
        self.log_path = log_path
        e = dict(
            os.environ,
            MODEL_ID=str(model_dir),
            HF_HUB_OFFLINE="1",
            PYTHONPATH=str(REPO),
            LOG_LEVEL="INFO",
            UVICORN_LOG_LEVEL="warning",
        )
        e.update(env)
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "runpod_entry.py",
                "--rp_serve_api",
                "--rp_api_port",
                str(self.port),
                "--rp_api_host",
                "127.0.0.1",
            ],
            cwd=REPO,
            env=e,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.tree: list[psutil.Process] = []

    def wait_up(self, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise TimeoutError(f"worker did not listen within {timeout} s:\n{self.stderr()}")
        self.tree = psutil.Process(self.proc.pid).children(recursive=True)
        assert len(self.tree) >= 4, self.tree  # four stage processes (+ resource tracker)

    def runsync(self, inp, timeout=120.0) -> dict:
        body = json.dumps({"input": inp}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/runsync",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            assert r.status == 200
            return json.loads(r.read())

    def stderr(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout=30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for p in [psutil.Process(self.proc.pid)] + self.tree:
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                self.proc.wait(10)
                raise
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    media.speech(d / "speech.wav", "The quick brown fox jumps over the lazy dog.")
    media.convert(d / "speech.wav", d / "speech.mp3", "-b:a", "64k")
    (d / "notaudio.mp3").write_bytes(b"<html><body>This is not audio at all.</body></html>\n" * 50)
    return d


@pytest.fixture(scope="module")
def files(audio_dir):
    with LoopbackServer(audio_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(real_tiny_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    s = Server(real_tiny_dir, log, {"RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS": "true"})
    try:
        s.wait_up()
        yield s
    finally:
        s.stop()


def _ok(r: dict, duration: float) -> dict:
    assert r.get("status") == "COMPLETED", r
    out = r["output"]
    for key in (
        "text",
        "segments",
        "language",
        "duration",
        "model",
        "transcription",
        "detected_language",
        "device",
        "timings",
    ):
        assert key in out, key
    assert out["device"] == "cpu"
    assert out["duration"] == pytest.approx(duration, abs=0.1)
    for key in ("download_s", "decode_s", "inference_s", "total_s", "rtfx"):
        assert isinstance(out["timings"][key], (int, float)), (key, out["timings"])
    assert out["segments"] and out["text"]
    return out


def _failed(r: dict) -> str:
    assert r.get("status") == "FAILED", r
    assert "output" not in r
    err = r["error"]
    assert isinstance(err, str) and err and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def dur(audio_dir):
    return media.duration_of(audio_dir / "speech.wav")


def test_audio_url_transcribes(server, files, dur, real_tiny_dir):
    r = server.runsync({"audio_url": files.url("speech.wav")})
    out = _ok(r, dur)
    assert out["transcription"] == out["text"]
    assert out["model"] == str(real_tiny_dir)
    assert out["translation"] is None


def test_audio_and_base64_give_the_same_transcript(server, files, audio_dir, dur):
    a = _ok(server.runsync({"audio": files.url("speech.mp3")}), dur)
    b64 = base64.b64encode((audio_dir / "speech.mp3").read_bytes()).decode()
    b = _ok(server.runsync({"audio_base64": b64}), dur)
    assert a["text"] == b["text"] and a["segments"] == b["segments"]


def test_srt_and_vtt_parse(server, files, dur):
    import srt
    import webvtt

    out = _ok(
        server.runsync(
            {
                "audio_url": files.url("speech.wav"),
                "transcription": "srt",
                "language": "English",
                "batch_size": 2,
            }
        ),
        dur,
    )
    subs = list(srt.parse(out["transcription"]))
    assert subs and all(s.end >= s.start for s in subs)
    assert out["language"] == out["detected_language"] == "en"

    out = _ok(
        server.runsync(
            {"audio": files.url("speech.wav"), "transcription": "vtt", "language": "en"}
        ),
        dur,
    )
    captions = webvtt.from_string(out["transcription"]).captions
    assert captions and captions[0].start.startswith("00:00:")
    assert len(captions) == len(subs)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("no audio", "input: give exactly one of audio_url, audio or audio_base64"),
        ("file url", "audio_url: must be an http or https URL"),
        ("404", "HTTP 404"),
        ("not audio", "notaudio.mp3"),
        ("unknown option", "input: unknown key 'beam_size'"),
        ("bad base64", "audio_base64: not valid base64"),
        ("bad batch", "batch_size"),
    ],
)
def test_errors_are_one_clear_line(server, files, case, expect):
    inp = {
        "no audio": {"language": "en"},
        "file url": {"audio_url": "file:///etc/passwd"},
        "404": {"audio_url": files.url("missing.wav")},
        "not audio": {"audio": files.url("notaudio.mp3")},
        "unknown option": {"audio": files.url("speech.wav"), "beam_size": 5},
        "bad base64": {"audio_base64": "@@@@"},
        "bad batch": {"audio": files.url("speech.wav"), "batch_size": True},
    }[case]
    n = len(files.requests)
    err = _failed(server.runsync(inp))
    assert expect in err, err
    if case in ("no audio", "file url", "unknown option", "bad base64", "bad batch"):
        assert len(files.requests) == n  # refused before any download


def test_good_request_after_the_errors(server, files, dur):
    out = _ok(
        server.runsync({"audio_url": files.url("speech.wav"), "transcription": "formatted_text"}),
        dur,
    )
    assert out["transcription"] == "\n".join(s["text"] for s in out["segments"] if s["text"])


def test_log_lines_carry_the_job_id(server, files):
    ok = server.runsync({"audio_url": files.url("speech.wav")})
    bad = server.runsync({"audio_url": files.url("missing2.wav")})
    text = server.stderr()
    ours = [
        ln for ln in text.splitlines() if re.match(r"^\d{4}-\d\d-\d\d [\d:,]+ \w+ \[\w+ job=", ln)
    ]
    assert ours
    for job, roles in ((ok["id"], ("worker", "decode")), (bad["id"], ("worker", "source"))):
        tagged = [ln for ln in ours if f"job={job}]" in ln]
        for role in roles:
            assert any(f"[{role} job={job}]" in ln for ln in tagged), (role, tagged)
    # Our records are printed once, by our handler: not again by the one runpod's import
    # installs on the root logger (rp_upload's basicConfig, "file.py :line time message").
    assert not re.search(r"^\w+\.py\s*:\d+\s+\d{4}-", text, re.M)
    # Every line of ours that names a request's URL is stamped with some job.
    for ln in ours:
        if "missing2.wav" in ln:
            assert f"job={bad['id']}]" in ln, ln


def test_default_log_level_never_logs_a_transcript(server, files):
    """The runpod SDK printed every job's result (the transcript, twice) at its own
    default level, DEBUG; the worker now sets the SDK's level from LOG_LEVEL (INFO)."""
    out = server.runsync({"audio_url": files.url("speech.wav")})["output"]
    text = server.stderr()
    assert len(out["text"].strip()) > 20
    assert out["text"].strip() not in text
    assert out["transcription"].strip() not in text
    assert "Handler output" not in text and "DEBUG" not in text
    # The SDK's own lines about a job carry its id.
    sdk = [ln for ln in text.splitlines() if re.match(r"^(INFO|WARN|ERROR)\s*\| ", ln)]
    for ln in sdk:
        if re.search(r"\b(Started|Finished|job|Job)\b", ln) and "Jobs in progress" not in ln:
            assert re.match(r"^\w+\s*\| (test-|[0-9a-f-]{8,})", ln), ln


def test_stopping_leaves_no_process_and_no_shared_memory(server):
    pid = server.proc.pid
    tree = list(server.tree)
    assert any(n.startswith(f"wsp{pid}_") for n in os.listdir("/dev/shm"))
    code = server.stop()
    assert code == 0, server.stderr()[-3000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(procs.alive(p) for p in tree):
        time.sleep(0.1)
    alive = [p for p in tree if procs.alive(p)]
    assert not alive, alive
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"wsp{pid}_")]


# ------------------------------------------ parse_request: words, prompt, temperature (issue 11)


def test_word_prompt_temperature_options():
    req = parse_request(
        {"audio": URL, "word_timestamps": True, "initial_prompt": "Kubernetes, kubectl.", "temperature": 0.4}
    )
    o = req.options
    assert (o.word_timestamps, o.prompt, o.temperature) == (True, "Kubernetes, kubectl.", 0.4)
    req = parse_request({"audio": URL, "transcription": "srt", "max_line_chars": 42})
    assert req.max_line_chars == 42 and req.options.word_timestamps  # cues by words need words
    default = parse_request({"audio": URL}).options
    assert (default.word_timestamps, default.prompt, default.temperature) == (False, None, 0.0)


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"word_timestamps": "yes"}, "word_timestamps"),
        ({"initial_prompt": 3}, "initial_prompt"),
        ({"initial_prompt": "x" * 5000}, "initial_prompt"),
        ({"temperature": 1.5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": "0.2"}, "temperature"),
        ({"max_line_chars": 42}, "max_line_chars"),  # plain_text: no cues to cut
        ({"transcription": "srt", "max_line_chars": 5}, "max_line_chars"),
        ({"transcription": "vtt", "max_line_chars": 4.5}, "max_line_chars"),
    ],
)
def test_word_prompt_temperature_refused(extra, key):
    assert _err({"audio": URL, **extra}).startswith(f"{key}:")
