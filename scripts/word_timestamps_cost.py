"""Word timestamps (issue 11): what they cost through the whole pipeline, and how many
words land in silence.

    python scripts/word_timestamps_cost.py [--model tiny.en] [--batch-size 8] [--rounds 2]

1. testsets/espeak_short.wav, jobs alternating without / with word timestamps in one
   pipeline (the model loaded once): wall seconds per job, and the slot engine's
   alignment seconds.
2. testsets/espeak_gb_pauses.wav with word timestamps: the fraction of words (and of word
   seconds) inside silences longer than 1 s: those listed in its .json and those found by
   level (50 ms frames 30 dB below the loudest 1% of frames), 0.25 s at each edge left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parents[1]


def testset(name: str) -> Path:
    for root in (HERE / "testsets", HERE.parent / "main" / "testsets"):
        if (root / name).is_file():
            return root / name
    raise SystemExit(f"{name} not found: python scripts/make_testsets.py")


def pcm(path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1",
                          "-ar", "16000", "-"], capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.float32)


def quiet_spans(x: np.ndarray, min_s=1.0, below_db=30.0) -> list[tuple[float, float]]:
    frame = 800
    n = len(x) // frame
    lv = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    quiet = lv < np.percentile(lv, 99) - below_db
    spans, start = [], None
    for i, q in enumerate(np.append(quiet, False)):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if (i - start) * 0.05 >= min_s:
                spans.append((start * 0.05, i * 0.05))
            start = None
    return spans


def inside(words, spans, margin=0.25):
    """(words overlapping a span's inner part, seconds of words there, those words)."""
    hit, secs = [], 0.0
    for w in words:
        o = sum(max(0.0, min(w.end, b - margin) - max(w.start, a + margin)) for a, b in spans)
        if o > 0:
            hit.append(w)
        secs += o
    return len(hit), secs, hit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="0: only the silence figure")
    args = ap.parse_args()
    from pipeline.config import Job, PipelineConfig
    from pipeline.runtime import Pipeline
    from pipeline.types import DecodeOptions

    short, pauses = testset("espeak_short.wav"), testset("espeak_gb_pauses.wav")
    with Pipeline(PipelineConfig(model=args.model, batch_size=args.batch_size)) as p:
        times = {False: [], True: []}
        if args.rounds:
            p.transcribe(Job(str(short), DecodeOptions(tokens_per_window=2)), timeout=600)  # warm-up
        for r in range(args.rounds):
            for words in (False, True) if r % 2 == 0 else (True, False):
                t0 = time.monotonic()
                out = p.run_job(Job(str(short), DecodeOptions(word_timestamps=words)), timeout=900)
                wall = time.monotonic() - t0
                dec = out.stages["infer"]["decode"]
                times[words].append(wall)
                n = sum(len(s.words) for s in out.transcript.segments)
                print(f"espeak_short words={words}: {wall:.2f} s wall, decoder {dec['decoder_s']:.2f} s, "
                      f"align {dec.get('align_s', 0):.2f} s over {dec.get('aligned', 0)} windows, {n} words",
                      flush=True)  # fmt: skip
        if args.rounds:
            off, on = statistics.median(times[False]), statistics.median(times[True])
            print(f"median wall: without {off:.2f} s, with {on:.2f} s: ratio {on / off:.3f}")

        out = p.run_job(Job(str(pauses), DecodeOptions(word_timestamps=True)), timeout=1800)
    words = [w for s in out.transcript.segments for w in s.words]
    meta = json.loads(Path(pauses).with_suffix(".json").read_text())
    listed = [(s["start"], s["end"]) for s in meta.get("silences", []) if s["end"] - s["start"] > 1.0]
    found = quiet_spans(pcm(pauses))
    for name, spans in (("listed in .json", listed), ("found by level", found)):
        hit, secs, which = inside(words, spans)
        total = sum(w.end - w.start for w in words)
        print(f"espeak_gb_pauses, silences > 1 s {name} ({len(spans)}, {sum(b - a for a, b in spans):.1f} s): "
              f"{hit} of {len(words)} words ({hit / len(words):.2%}) reach inside, "
              f"{secs:.2f} of {total:.1f} word-seconds ({secs / total:.2%})")  # fmt: skip
        for w in which:
            span = next((a, b) for a, b in spans if w.end > a and w.start < b)
            print(f"    {w.word!r} {w.start:.2f}-{w.end:.2f} s, silence {span[0]:.2f}-{span[1]:.2f} s")


if __name__ == "__main__":
    main()
