"""Fuzz the server: malformed and hostile requests must never get a 5xx (issue 11).

    python scripts/server_fuzz.py [--model tiny.en] [--requests 200] [--seed 0]

Starts ``python -m pipeline.server`` (key, 2 MB upload limit) on a free port and sends
``--requests`` fuzzed requests, drawn at random from these kinds: broken multipart bodies
(no boundary, wrong boundary, truncated, not multipart, nested), wrong fields (unknown,
repeated, bad values, huge, not UTF-8, no file, two files), garbage audio (random bytes,
truncated FLAC, a WAV header declaring hours, empty), huge declared sizes (a Content-Length
of 100 GB, then a little or nothing, and the connection dropped), uploads over the limit,
wrong keys, methods and routes, and clients that hang up mid-body. Counts status codes;
fails if any is 5xx. Then checks /health and a real transcription, and prints the
server's RSS (alone and with its stage processes) before and after.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_common import JFK, Server, health

KEY = "sk-fuzz"
PATH = "/v1/audio/transcriptions"


def multipart(fields, boundary="fuzzb") -> bytes:
    """fields: (name, filename or None, bytes, content type or None)."""
    out = bytearray()
    for name, filename, data, ctype in fields:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def raw(url: str, head: bytes, body: bytes = b"", hang_up: bool = False, timeout: float = 60) -> int:
    """Send a raw HTTP request; the status code, or 0 when none came (hung up / reset)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(head + body)
            if hang_up:
                return 0
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            return 0
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def request(url, body: bytes, ctype="multipart/form-data; boundary=fuzzb", key=KEY, method="POST", path=PATH,
            length: int | None = None, hang_up=False, extra=b"") -> int:  # fmt: skip
    head = f"{method} {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n".encode()
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n".encode()
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n".encode()
    head += f"Content-Length: {len(body) if length is None else length}\r\n".encode() + extra + b"\r\n"
    return raw(url, head, body, hang_up=hang_up)


def cases(rng: random.Random, jfk: bytes, limit: int):
    """(kind, callable(url) -> status) pairs, one drawn per request."""
    good_file = ("file", "jfk.flac", jfk, "audio/flac")

    def junk(n):
        return bytes(rng.getrandbits(8) for _ in range(n))

    def wav_declaring_hours():
        hdr = b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 3, 6, 2, 16)
        return hdr + b"data" + struct.pack("<I", 0xFFFFFFE0) + junk(2000)

    field_values = {
        "model": ["", "gpt-9", "x" * 5000, "whisper-1\x00", "../../etc/passwd"],
        "language": ["", "xx", "de", "English", "e" * 300, "\ud800".encode("utf-8", "surrogatepass").decode("latin-1")],
        "response_format": ["xml", "", "JSON", "verbose_json", "srt\r\n"],
        "temperature": ["-1", "nan", "inf", "1e309", "0.5", "abc", ""],
        "timestamp_granularities[]": ["char", "word", "", "segment,word"],
        "stream": ["maybe", "true", "TRUE", "2"],
        "prompt": ["", "hello", "p" * 70000],
        "max_line_chars": ["0", "-3", "x", "99999999999999999999"],
        "colour": ["red"],
    }

    kinds = {}

    def k(name):
        def deco(fn):
            kinds[name] = fn
            return fn

        return deco

    @k("no boundary")
    def _(url):
        return request(url, multipart([good_file]), ctype="multipart/form-data")

    @k("wrong boundary")
    def _(url):
        return request(url, multipart([good_file], "other"))

    @k("truncated body")
    def _(url):
        body = multipart([good_file, ("model", None, b"whisper-1", None)])
        return request(url, body[: rng.randrange(1, len(body))], length=len(body), hang_up=True)

    @k("body shorter than declared, then silence")
    def _(url):
        body = multipart([("model", None, b"whisper-1", None)])
        return request(url, body[:-5], length=len(body) + 1000, hang_up=True)

    @k("not multipart")
    def _(url):
        ctype = rng.choice(["application/json", "application/x-www-form-urlencoded", "text/plain", None, "multipart/mixed; boundary=fuzzb"])
        return request(url, b'{"file": "x", "model": "whisper-1"}', ctype=ctype)

    @k("garbage multipart")
    def _(url):
        return request(url, junk(rng.randrange(0, 5000)))

    @k("nested multipart")
    def _(url):
        inner = multipart([good_file], "inner")
        return request(url, multipart([("file", None, inner, "multipart/mixed; boundary=inner")]))

    @k("bad field value")
    def _(url):
        name = rng.choice(list(field_values))
        value = rng.choice(field_values[name])
        return request(url, multipart([("file", "a.flac", jfk[:4000], None), (name, None, value.encode("utf-8", "surrogatepass"), None)]))

    @k("repeated field")
    def _(url):
        return request(url, multipart([good_file, ("model", None, b"whisper-1", None), ("model", None, b"whisper-1", None)]))

    @k("not utf-8 field")
    def _(url):
        return request(url, multipart([good_file, ("prompt", None, b"\xff\xfe\xfa", None)]))

    @k("no file")
    def _(url):
        return request(url, multipart([("model", None, b"whisper-1", None)]))

    @k("two files")
    def _(url):
        return request(url, multipart([("file", "a.mp3", junk(100), None), ("file", "b.mp3", junk(100), None)]))

    @k("garbage audio")
    def _(url):
        data = rng.choice([junk(rng.randrange(1, 20000)), jfk[: rng.randrange(1, 3000)], wav_declaring_hours(),
                           b"ID3" + junk(500), b"OggS" + junk(500), b"fLaC" + junk(500)])  # fmt: skip
        name = rng.choice(["a.mp3", "a.wav", "a.flac", "../../x", "\u00e9\u00e8.ogg", ""])
        return request(url, multipart([("file", name or "x", data, rng.choice([None, "audio/mpeg"]))]))

    @k("empty file")
    def _(url):
        return request(url, multipart([("file", "e.wav", b"", None)]))

    @k("huge declared size")
    def _(url):
        return request(url, multipart([("model", None, b"whisper-1", None)])[:50], length=10**11, hang_up=rng.random() < 0.5)

    @k("upload over the limit")
    def _(url):
        return request(url, multipart([("file", "big.wav", b"\0" * (limit + 4096), None)]))

    @k("wrong key")
    def _(url):
        return request(url, multipart([good_file]), key=rng.choice([None, "", "sk-wrong", "x" * 10000]))

    @k("wrong method or route")
    def _(url):
        method, path = rng.choice([("GET", PATH), ("PUT", PATH), ("POST", "/v1/models"), ("POST", "/v2/x"),
                                   ("GET", "/" + "a" * 5000), ("DELETE", "/health"), ("POST", "/v1/audio/translations")])  # fmt: skip
        return request(url, multipart([good_file]), method=method, path=path)

    @k("hang up at once")
    def _(url):
        return request(url, multipart([good_file]), hang_up=True)

    names = sorted(kinds)
    while True:
        name = rng.choice(names)
        yield name, kinds[name]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not JFK.is_file():
        raise SystemExit(f"{JFK} is needed (a real recording to fuzz around)")
    jfk = JFK.read_bytes()
    limit_mb = 2
    uploads = tempfile.mkdtemp(prefix="server-fuzz-uploads-")
    srv = Server("--model", args.model, "--batch-size", "4", "--api-key", KEY, "--max-upload-mb", str(limit_mb),
                 "--upload-dir", uploads)  # fmt: skip
    try:
        srv.wait_ready()
        import openai

        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=300)

        def real() -> str:
            with open(JFK, "rb") as f:
                return client.audio.transcriptions.create(model="whisper-1", file=f).text

        first = real()
        before = srv.rss_mib()
        rng = random.Random(args.seed)
        codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        t0 = time.monotonic()
        gen = cases(rng, jfk, limit_mb << 20)
        for _ in range(args.requests):
            kind, fn = next(gen)
            codes[kind][fn(srv.url)] += 1
        wall = time.monotonic() - t0
        time.sleep(1.0)
        status, h = health(srv.url)
        after_text = real()
        after = srv.rss_mib()
        server_errors = 0
        for kind in sorted(codes):
            c = codes[kind]
            server_errors += sum(n for code, n in c.items() if code >= 500)
            print(f"{kind:42s} " + ", ".join(f"{code or 'no answer'}: {n}" for code, n in sorted(c.items())))
        print(f"{args.requests} requests in {wall:.1f} s; 5xx: {server_errors}; /health after: {status} {h}")
        print(f"a real request after: {'same transcript' if after_text == first else 'DIFFERENT: ' + after_text}")
        print(f"server RSS before {before[0]:.0f} MiB, after {after[0]:.0f} MiB; "
              f"with its stages {before[1]:.0f} -> {after[1]:.0f} MiB")  # fmt: skip
        leftover = os.listdir(uploads)
        print(f"upload files left in the upload folder: {len(leftover)}")
        ok = server_errors == 0 and status == 200 and after_text == first and not leftover
        return 0 if ok else 1
    finally:
        rc = srv.stop()
        print(f"server exit code {rc}")
        shutil.rmtree(uploads, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
