"""Helpers for the server scripts: start ``python -m pipeline.server`` on a free port, wait
for its model, read its memory, make a minute of speech."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JFK = REPO.parent / "shared" / "audio" / "jfk.flac"


class Server:
    """``python -m pipeline.server ARGS --port 0`` in a child; ``url`` once it listens."""

    def __init__(self, *args: str, env: dict | None = None):
        e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        e.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.server", "--port", "0", *args],
            cwd=REPO, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.url = None
        seen = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    seen.set()
            seen.set()

        threading.Thread(target=read, daemon=True).start()
        if not seen.wait(120) or not self.url:
            self.stop()
            raise SystemExit("the server did not start:\n" + "".join(self.lines[-20:]))

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if health(self.url)[0] == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit("the server's model did not load:\n" + "".join(self.lines[-20:]))

    def rss_mib(self) -> tuple[float, float]:
        """(the server process's RSS, with its children's) in MiB."""
        import psutil

        p = psutil.Process(self.proc.pid)
        own = p.memory_info().rss
        kids = 0
        for c in p.children(recursive=True):
            try:
                kids += c.memory_info().rss
            except psutil.Error:
                pass
        return own / 2**20, (own + kids) / 2**20

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


def minute_of_speech(dst: Path, seconds: float = 60.0, source: Path | None = None) -> Path:
    """``seconds`` of speech as 16 kHz mono FLAC: the start of ``source`` (a long reading,
    such as testsets/espeak_us.wav) when given, else jfk.flac looped where ../shared/audio
    has it (the same sentence over and over: its repeated text trips the compression-ratio
    fallback, so it also tests that sampled re-decodes stay the same), else espeak-ng."""
    dst = Path(dst)
    if source is not None:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), "-t", str(seconds),
                        "-ac", "1", "-ar", "16000", str(dst)], check=True)  # fmt: skip
        return dst
    if JFK.is_file():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(JFK),
                        "-t", str(seconds), "-ac", "1", "-ar", "16000", str(dst)], check=True)  # fmt: skip
        return dst
    text = " ".join(
        "The pipeline reads audio in windows of at most thirty seconds and decodes them in "
        "batches, so that many requests share the same decoder slots." for _ in range(12)
    )
    raw = dst.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(raw), "-t", str(seconds),
                    "-ac", "1", "-ar", "16000", str(dst)], check=True)  # fmt: skip
    raw.unlink()
    return dst
