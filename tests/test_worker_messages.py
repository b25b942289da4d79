"""The worker's messages and limits as a client meets them (issue 10): a data: URI without
a comma is an input error, no message or log line echoes more than ~200 characters of a
request value, one message style (``<input>: <what>``), MAX_AUDIO_S, and the runpod
SDK's log level follows ours."""

from __future__ import annotations

import base64
import logging
import re
import struct

import pytest

from pipeline.config import PipelineConfig
from pipeline.worker import RequestError, Worker, parse_request
from tests import media

HUGE = "x" * 170_811  # the length one message once echoed whole
URL = "https://example.com/a.mp3"


def wav_header(rate: int, seconds: float, data: bytes = b"") -> bytes:
    size = int(rate * seconds) * 2
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", size) + data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def worker():
    cfg = PipelineConfig(model="tone", backend="tests.tone_backend:ToneBackend", batch_size=4,
                         allow_private_urls=False, max_audio_s=20.0)
    with Worker(cfg, max_batch=4) as w:
        yield w


def test_data_uri_without_a_comma_is_an_input_error(worker):
    out = worker.handle({"id": "j1", "input": {"audio_base64": "data:audio/wav;base64"}})
    assert out == {"error": "audio_base64: a data: URI needs a comma before the base64 data "
                            "(data:audio/wav;base64,UklGR...)"}
    with pytest.raises(RequestError, match="comma"):
        parse_request({"audio_base64": "data:audio/wav;base64" + "A" * 1000})


@pytest.mark.parametrize("inp", [
    {"audio_url": URL, "language": HUGE},
    {"audio_url": URL, "task": HUGE},
    {"audio_url": URL, "transcription": HUGE},
    {"audio_url": URL, "batch_size": HUGE},
    {"audio_url": URL, "profile": HUGE},
    {"audio_url": URL, "translate": HUGE},
    {"audio_url": URL, HUGE: 1},
    {"audio_url": "http://127.0.0.1/" + HUGE},
    {"audio_url": "http://" + HUGE + ".example/a.mp3"},
    {"audio": "ftp://" + HUGE},
    {"audio_base64": "data:" + HUGE},
    {"audio_base64": HUGE + "!"},
])
def test_no_message_or_log_line_echoes_a_long_value(worker, inp, caplog):
    caplog.set_level(logging.DEBUG)
    out = worker.handle({"id": "j2", "input": inp})
    assert set(out) == {"error"}, out
    assert len(out["error"]) < 400, out["error"][:500]
    assert re.match(r"^(input|audio_url|audio|audio_base64|language|task|transcription|batch_size"
                    r"|profile|translate|https?://\S+): ", out["error"]), out["error"][:300]
    for rec in caplog.records:
        assert len(rec.getMessage()) < 600, rec.getMessage()[:300]


def test_a_long_url_is_clipped_in_job_errors(worker):
    """A URL that passes the checks but fails to download: its label (in the message and
    in every stage's log lines) is cut to ~200 characters."""
    from stages.source import source_label

    long_url = "https://example.invalid/" + "a" * 5000 + ".mp3"
    assert len(source_label(long_url)) <= 150
    out = worker.handle({"id": "j3", "input": {"audio_url": long_url}})
    assert len(out["error"]) < 400, out["error"][:500]
    assert out["error"].startswith("https://example.invalid/aaa"), out["error"]


def test_one_message_style_for_job_errors(worker):
    out = worker.handle({"id": "j4", "input": {"audio_base64": b64(b"<html>not audio</html>" * 20)}})
    assert out["error"].startswith("audio_base64: cannot decode: "), out["error"]
    out = worker.handle({"id": "j5", "input": {"audio_url": "http://0.0.0.0/a.wav"}})
    assert "an unspecified address" in out["error"] and "a unspecified" not in out["error"], out


def test_header_declaring_too_long_is_refused_before_decoding(worker):
    out = worker.handle({"id": "j6", "input": {"audio_base64": b64(wav_header(3, 3 * 3600, bytes(600)))}})
    assert out == {"error": "audio_base64: its header declares 3:00:00 of audio, more than the "
                            "limit of 0:00:20 (MAX_AUDIO_S)"}


def test_audio_running_past_the_cap_is_stopped(worker, tmp_path):
    ogg = media.convert(media.write_wav(tmp_path / "n.wav", media.babble(45.0)), tmp_path / "n.ogg")
    out = worker.handle({"id": "j7", "input": {"audio_base64": b64(ogg.read_bytes())}})
    assert out == {"error": "audio_base64: longer than the limit of 0:00:20 (MAX_AUDIO_S); stopped there"}
    ok = worker.handle({"id": "j8", "input": {"audio_base64": b64(
        media.write_wav(tmp_path / "s.wav", media.tone(440, 5.0)).read_bytes())}})
    assert "error" not in ok, ok  # the worker goes on


def test_default_cap_is_twelve_hours(monkeypatch):
    monkeypatch.delenv("MAX_AUDIO_S", raising=False)
    assert Worker.config_from_env().max_audio_s == 12 * 3600


def test_every_request_a_worker_takes_moves_through_the_stages_at_once(monkeypatch):
    monkeypatch.delenv("WORKER_CONCURRENCY", raising=False)
    assert Worker.config_from_env().concurrent_jobs == 4
    monkeypatch.setenv("WORKER_CONCURRENCY", "12")
    assert Worker.config_from_env().concurrent_jobs == 12


def test_runpod_sdk_level_follows_ours():
    import runpod_entry

    assert runpod_entry.sdk_log_level("INFO") == "INFO"
    assert runpod_entry.sdk_log_level("warning") == "WARN"
    assert runpod_entry.sdk_log_level("DEBUG") == "DEBUG"


def test_worker_concurrency_setting(monkeypatch):
    import runpod_entry

    monkeypatch.delenv("WORKER_CONCURRENCY", raising=False)
    assert runpod_entry.worker_concurrency() == 1
    monkeypatch.setenv("WORKER_CONCURRENCY", "4")
    assert runpod_entry.worker_concurrency() == 4
    for bad in ("0", "65", "two"):
        monkeypatch.setenv("WORKER_CONCURRENCY", bad)
        with pytest.raises(SystemExit, match="WORKER_CONCURRENCY"):
            runpod_entry.worker_concurrency()


def test_async_handler_runs_requests_in_threads_at_once():
    """The SDK awaits the handler; several requests run at once, each in its own thread,
    and each gets its own result."""
    import asyncio
    import threading

    import runpod_entry

    # 40: more than asyncio's default pool holds on a small machine (cpu_count + 4, at
    # most 32), which capped WORKER_CONCURRENCY there while the SDK counted every request
    # as running.
    n = 40
    inside = threading.Barrier(n)

    class Fake:
        def handle(self, job, stop=None):
            inside.wait(10)  # would time out (BrokenBarrierError) if requests ran one by one
            return {"id": job["id"], "thread": threading.get_ident()}

    handler = runpod_entry.async_handler(Fake(), n)

    async def all_at_once():
        return await asyncio.gather(*(handler({"id": i}) for i in range(n)))

    out = asyncio.run(all_at_once())
    assert [o["id"] for o in out] == list(range(n))
    assert len({o["thread"] for o in out}) == n


def test_values_of_the_wrong_type_are_shown_as_sent():
    # "not false" for the string "false" read as a contradiction; quoted, it says what was wrong.
    for key, value, shown in (("translate", "false", "'false'"), ("batch_size", "8", "'8'"),
                              ("batch_size", 8.5, "8.5"), ("temperature", "0.2", "'0.2'"),
                              ("word_timestamps", "yes", "'yes'"), ("profile", 1, "1")):  # fmt: skip
        with pytest.raises(RequestError) as e:
            parse_request({"audio": "https://example.com/a.mp3", key: value}, max_batch=16)
        assert str(e.value).endswith(f"not {shown}"), str(e.value)


def test_a_bad_setting_stops_the_worker_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MODEL_ID="tiny.en", MODEL_BATCH_SIZE="abc")
    r = subprocess.run([sys.executable, str(repo / "runpod_entry.py"), "--test_input", '{"input": {}}'],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1, r
    assert r.stderr.strip().splitlines()[-1] == "error: MODEL_BATCH_SIZE must be an integer, not 'abc'", r.stderr
    assert "Traceback" not in r.stderr


def test_a_whole_number_written_as_a_float_is_an_integer(monkeypatch):
    # What a number field of RunPod's hub form may send.
    from pipeline.config import env_int

    monkeypatch.setenv("MODEL_BATCH_SIZE", "64.0")
    assert env_int("MODEL_BATCH_SIZE", 16) == 64
    monkeypatch.setenv("MODEL_BATCH_SIZE", "64.5")
    with pytest.raises(ValueError, match="must be an integer, not '64.5'"):
        env_int("MODEL_BATCH_SIZE", 16)


def test_logs_show_a_prompt_by_its_size_not_its_words():
    from pipeline.types import DecodeOptions

    shown = repr(DecodeOptions(prompt="my secret spellings " * 100, language="en"))
    assert "secret" not in shown and "prompt=<2000 characters>" in shown and "language='en'" in shown


def test_each_input_named_once_in_download_errors():
    """``<input>: <what>``: a refused or stalled download names its URL once, first."""
    from pipeline.errors import input_message

    url = "ftp://127.0.0.1/x.mp3"
    assert input_message(url, f"unsupported URL scheme 'ftp' (only http and https are allowed): {url}") == \
        f"{url}: unsupported URL scheme 'ftp' (only http and https are allowed)"
    url = "http://10.0.0.1/a.wav"
    assert input_message(url, f"refusing to download {url}: 10.0.0.1 is a private address") == \
        f"{url}: refusing to download: 10.0.0.1 is a private address"
    assert input_message(url, f"cannot download {url}: stalled, no data for 30 s") == \
        f"{url}: cannot download: stalled, no data for 30 s"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -5, True])
def test_timeouts_must_be_finite_positive_seconds(value):
    """nan compares false with everything: a stall limit of nan passed the check and then
    failed a download that was sending data at once."""
    with pytest.raises(ValueError, match=r"^stall_timeout_s must be a positive number of seconds"):
        PipelineConfig(model="m", stall_timeout_s=value)
    PipelineConfig(model="m", stall_timeout_s=0.5, connect_timeout_s=3)
