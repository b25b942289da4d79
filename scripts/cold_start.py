"""Measure the worker's cold start: is it max(model load, first download) or their sum?

    python scripts/cold_start.py [--model DIR | --synthetic ARCH] [--seconds 60] [--rate 400]

Three measurements, each on fresh processes:
  (a) model load alone: Pipeline.start() until wait_ready() returns (stage start-up
      included), no job;
  (b) the first job's download + decode alone: on a warm pipeline, the time from handing
      the job over until the decode stage has finished, for a file served from a loopback
      server throttled to RATE kB/s (so the download takes seconds, like a real one);
      the same warm run gives the inference tail (total - download/decode);
  (c) a cold worker's first request end to end: ``Worker(config)`` (what runpod_entry.py
      builds at start) then ``handle(job)`` at once, timed from before the Worker exists.
If the overlap works, c ~ max(a, b) + tail, well under a + b + tail.
``--process`` also times ``python runpod_entry.py --test_input ...`` from launch to exit
(interpreter and runpod SDK import included).

With no --model, a random-weight checkpoint of ``--synthetic`` (default ``tiny``: the
size of whisper-tiny) is built in a temporary directory. No network is used.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_audio(path: Path, seconds: float) -> Path:
    """Speech-like test audio: tone bursts over noise, 16 kHz mono 16-bit WAV."""
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    x = 0.05 * rng.standard_normal(t.size)
    env = (np.sin(2 * np.pi * 0.7 * t) > 0).astype(float)
    x += 0.4 * env * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.1 * t)) * t)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


class ThrottledServer:
    """Serves one folder from 127.0.0.1 at about ``rate`` bytes per second."""

    def __init__(self, root: Path, rate: float):
        root_, rate_ = root, rate

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                f = root_ / self.path.lstrip("/")
                if not f.is_file():
                    self.send_error(404)
                    return
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                chunk = 16 * 1024
                t0 = time.monotonic()
                for i in range(0, len(data), chunk):
                    due = t0 + i / rate_
                    if due > time.monotonic():
                        time.sleep(due - time.monotonic())
                    self.wfile.write(data[i : i + chunk])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint directory (default: build a synthetic one)")
    ap.add_argument("--synthetic", default="tiny", help="architecture to build when no --model")
    ap.add_argument("--seconds", type=float, default=60.0, help="audio length")
    ap.add_argument("--rate", type=float, default=400.0, help="download speed, kB/s")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--process", action="store_true", help="also time runpod_entry.py as a process")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()

    from pipeline import logs
    from pipeline.config import Job, PipelineConfig
    from pipeline.runtime import Pipeline
    from pipeline.worker import Worker

    logs.setup("WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="cold-start-"))
    model = args.model
    if model is None:
        from pipeline.synthetic import build_checkpoint

        model = str(build_checkpoint(tmp / "model", args.synthetic))
    audio = make_audio(tmp / "audio.wav", args.seconds)
    size = audio.stat().st_size
    server = ThrottledServer(tmp, args.rate * 1000)
    url = server.url("audio.wav")
    cfg = PipelineConfig(model=model, batch_size=args.batch_size, allow_private_urls=True)
    print(
        f"model {model}; audio {args.seconds:.0f} s, {size / 1e6:.2f} MB at {args.rate:.0f} kB/s "
        f"(download alone ~{size / args.rate / 1000:.1f} s); {os.cpu_count()} CPUs"
    )

    # (a) model load alone, and (b) download + decode alone on the warm pipeline.
    t0 = time.monotonic()
    p = Pipeline(cfg).start()
    info = p.wait_ready()
    a = time.monotonic() - t0
    out = p.run_job(Job(url))
    p.close()
    tm = out.transcript.timings
    b = tm["decode_s"]
    warm_total = tm["total_s"]
    tail = warm_total - b
    print(
        f"(a) model load alone (start -> ready): {a:6.2f} s  (inside the infer stage: {info['load_s']:.2f} s)"
    )
    print(f"(b) download + decode alone (warm):    {b:6.2f} s  (download {tm['download_s']:.2f} s)")
    print(f"    warm job total {warm_total:.2f} s, so inference after decode ends: {tail:.2f} s")

    # (c) a cold worker's first request, end to end.
    t0 = time.monotonic()
    with Worker(cfg) as w:
        res = w.handle({"id": "cold-start", "input": {"audio_url": url}})
    c = time.monotonic() - t0
    if "error" in res:
        print("cold job failed:", res["error"])
        return 1
    print(
        f"(c) cold worker, first request:         {c:6.2f} s  (job timings: {json.dumps(res['timings'])})"
    )
    print(
        f"    max(a, b) + tail = {max(a, b) + tail:6.2f} s;  a + b + tail = {a + b + tail:6.2f} s"
    )
    print(
        f"    overlap saved {a + b + tail - c:.2f} s of the {min(a, b):.2f} s the shorter of (a, b) could save"
    )

    figures = {
        "a_model_load_s": round(a, 2),
        "b_download_decode_s": round(b, 2),
        "inference_tail_s": round(tail, 2),
        "c_cold_first_request_s": round(c, 2),
        "max_a_b_plus_tail_s": round(max(a, b) + tail, 2),
        "sum_a_b_plus_tail_s": round(a + b + tail, 2),
    }
    if args.process:
        env = dict(
            os.environ,
            MODEL_ID=model,
            MODEL_BATCH_SIZE=str(args.batch_size),
            PYTHONPATH=str(REPO),
            RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS="true",
            LOG_LEVEL="WARNING",
        )
        env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
        t0 = time.monotonic()
        r = subprocess.run(
            [
                sys.executable,
                "-u",
                "runpod_entry.py",
                "--test_input",
                json.dumps({"input": {"audio_url": url}}),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        d = time.monotonic() - t0
        ok = r.returncode == 0 and '"error"' not in r.stdout.split("Job result:")[-1][:200]
        print(
            f"(c') runpod_entry.py --test_input, launch to exit: {d:6.2f} s ({'ok' if ok else 'FAILED'})"
        )
        figures["c_process_launch_to_exit_s"] = round(d, 2)
        if not ok:
            print(r.stdout[-2000:], r.stderr[-2000:])
    server.close()
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
