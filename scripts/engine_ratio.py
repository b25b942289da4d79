"""SlotEngine against per-batch ``generate`` (``WhisperBackend.transcribe``) on the same windows.

    python scripts/make_testsets.py --only espeak_short
    python scripts/engine_ratio.py [--set espeak_short] [--model tiny.en] [--windows 20]
                                   [--batch 8] [--slots 8] [--repeats 2] [--threads N]

The windows are the chunker's windows (``stages.chunk.plan_windows``) of the reading; a
3-minute reading has only 7, so windows are also planned from 10 s and 20 s into the audio
(real windows of the same speech, other cut points) until ``--windows`` are had. Both
sides decode every window once per repeat, alternating (A B A B) in one process, so the
machine's noise hits both; the ratio is of the best times. Utilisation: engine
``row_steps_used / row_steps_computed``; per-batch generate: tokens generated over batch
size x the batch's longest window, summed over batches; engine occupancy: slot-steps
holding a window over steps x slots. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import wave
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.constants import N_SAMPLES, SAMPLE_RATE  # noqa: E402
from pipeline.types import DecodeOptions  # noqa: E402
from stages.chunk import plan_windows  # noqa: E402
from stages.engine import SlotEngine  # noqa: E402
from stages.infer import WhisperBackend  # noqa: E402


def windows_of(pcm: np.ndarray, want: int) -> list[np.ndarray]:
    out = []
    for offset_s in (0, 10, 20, 5, 15, 25):
        part = pcm[offset_s * SAMPLE_RATE :]
        for start, end, _ in plan_windows(part):
            w = np.zeros(N_SAMPLES, np.float32)
            w[: end - start] = part[start:end]
            out.append(w)
            if len(out) == want:
                return out
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="espeak_short")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with wave.open(str(ROOT / "testsets" / f"{args.set}.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    backend = WhisperBackend(args.model, device="cpu", dtype="float32")
    feats = [backend.prepare(x) for x in windows_of(pcm, args.windows)]
    opts = DecodeOptions()
    backend.transcribe(feats[:1], opts)  # warm-up (first-call costs on both paths)
    warm = SlotEngine(backend, slots=1)
    warm.submit(0, feats[0], opts)
    warm.run()

    def per_batch():
        t = time.perf_counter()
        results = []
        for i in range(0, len(feats), args.batch):
            results.extend(backend.transcribe(feats[i : i + args.batch], opts))
        wall = time.perf_counter() - t
        n = [r.n_tokens for r in results]
        batches = [n[i : i + args.batch] for i in range(0, len(n), args.batch)]
        computed = sum(len(b) * max(b) for b in batches)
        return wall, results, sum(n) / computed

    def engine():
        eng = SlotEngine(backend, slots=args.slots)
        t = time.perf_counter()
        for i, f in enumerate(feats):
            eng.submit(i, f, opts)
        results = dict(eng.run())
        wall = time.perf_counter() - t
        return wall, [results[i] for i in range(len(feats))], eng.stats

    def encoder_only():  # the work both sides share: the encoder over the same batches
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(feats), args.batch):
                backend.model.get_encoder()(torch.stack(feats[i : i + args.batch]))
        return time.perf_counter() - t

    runs = {"generate": [], "engine": [], "encoder": []}
    for _ in range(args.repeats):
        g_wall, g_res, g_util = per_batch()
        e_wall, e_res, stats = engine()
        runs["generate"].append(g_wall)
        runs["engine"].append(e_wall)
        runs["encoder"].append(encoder_only())
    same = sum((a.segments, a.n_tokens) == (b.segments, b.n_tokens) for a, b in zip(g_res, e_res))
    print(json.dumps({
        "set": args.set, "model": args.model, "windows": len(feats),
        "threads": torch.get_num_threads(),
        "batch": args.batch, "slots": args.slots,
        "generate_s": [round(x, 2) for x in runs["generate"]],
        "engine_s": [round(x, 2) for x in runs["engine"]],
        "encoder_s": [round(x, 2) for x in runs["encoder"]],
        "ratio_best": round(min(runs["generate"]) / min(runs["engine"]), 3),
        # Each repeat's generate over the engine run right after it (noise hits both alike
        # when it lasts longer than a pair).
        "ratio_paired": [round(g / e, 3) for g, e in zip(runs["generate"], runs["engine"])],
        # The same without the encoder's share (its best time, subtracted from both).
        "decode_ratio_best": round(
            (min(runs["generate"]) - min(runs["encoder"]))
            / (min(runs["engine"]) - min(runs["encoder"])), 3
        ),
        "utilisation_engine": round(stats["row_steps_used"] / stats["row_steps_computed"], 3),
        "utilisation_generate": round(g_util, 3),
        # Slot-steps holding a window, of all steps x slots (empty slots at the end of a
        # run are not computed on CPU, so they do not lower the utilisation above).
        "occupancy_engine": round(
            (stats["row_steps_used"]) / (stats["steps"] * args.slots), 3
        ),
        "identical_windows": f"{same}/{len(feats)}",
        "tokens": stats["tokens"], "mean_tokens": round(stats["tokens"] / len(feats), 1),
        "engine_stats": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in stats.items()},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
