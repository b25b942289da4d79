"""N concurrent requests against one by one, through the server, in one run (issue 11).

    python scripts/server_load.py [--model tiny.en] [--requests 4] [--batch-size 8] [--rounds 1]

Starts ``python -m pipeline.server`` on a free port, makes a minute of speech (jfk.flac
looped, else espeak-ng), warms the server with one request, then per round times N
requests one after another and N at once (``openai`` client, one thread each; the order
alternates between rounds) and checks that every transcript is the same. Prints both
wall times, the ratio and the server's memory.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_common import Server, minute_of_speech


def main(argv=None) -> int:
    import openai

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0, help="audio per request")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--audio", type=Path, default=None,
                   help="take each request's speech from the start of this file (default: jfk.flac looped)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="server-load-"))
    audio = minute_of_speech(tmp / "speech.flac", args.seconds, args.audio)
    srv = Server("--model", args.model, "--batch-size", str(args.batch_size))
    try:
        srv.wait_ready()
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=1800)

        def one() -> str:
            with open(audio, "rb") as f:
                return client.audio.transcriptions.create(model="whisper-1", file=f, language="en").text

        reference = one()  # warm
        print(f"{args.requests} requests of {args.seconds:.0f} s of speech, model {args.model}, "
              f"batch size {args.batch_size}; warm-up transcript {len(reference.split())} words")  # fmt: skip
        times: dict[str, list[float]] = {"one by one": [], "concurrent": []}
        texts: list[str] = []

        def serial():
            t0 = time.monotonic()
            for _ in range(args.requests):
                texts.append(one())
            return time.monotonic() - t0

        def together():
            out = [None] * args.requests

            def run(i):
                out[i] = one()

            t0 = time.monotonic()
            threads = [threading.Thread(target=run, args=(i,)) for i in range(args.requests)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            texts.extend(out)
            return time.monotonic() - t0

        for r in range(args.rounds):
            order = [("one by one", serial), ("concurrent", together)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                times[name].append(fn())
                print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
        same = all(t == reference for t in texts)
        if not same:
            import difflib

            for i, t in enumerate(texts):
                if t != reference:
                    a, b = reference.split(), t.split()
                    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
                    diffs = [(" ".join(a[i1:i2]), " ".join(b[j1:j2])) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal"]
                    print(f"transcript {i + 1} differs from the warm-up's in {len(diffs)} places: {diffs[:4]}")
        s, c = statistics.median(times["one by one"]), statistics.median(times["concurrent"])
        own, total = srv.rss_mib()
        print(f"one by one {s:.2f} s, concurrent {c:.2f} s: concurrent is {s / c:.2f}x "
              f"({args.requests * args.seconds / c:.1f} s of audio per second)")  # fmt: skip
        print(f"transcripts identical: {same} ({len(texts)} + warm-up)")
        print(f"server RSS {own:.0f} MiB, with its stages {total:.0f} MiB")
        return 0 if same else 1
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
