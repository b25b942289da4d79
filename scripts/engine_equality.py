"""How many windows the slot engine decodes to other tokens than per-batch ``generate``,
in a given dtype (issue 9: "a faster engine must give the same tokens").

    python scripts/engine_equality.py testsets/espeak_us.wav [--model tiny.en] \
        [--dtype bfloat16] [--device cpu] [--slots 8] [--modes dynamic,static,together]

The audio is cut into 30 s windows every 28 s; ``generate`` decodes them in batches of
``--slots`` (the reference), then the engine decodes them once per mode:

- ``dynamic``: in flight, ``--slots`` slots, attending over the cache positions in use
  (the CPU default): slots at different positions mask each other's extra positions;
- ``static``: the same, attending over all 448 positions under the mask (the CUDA path;
  on CUDA also captured as a graph);
- ``together``: the first ``--slots`` windows only, admitted together (every slot at the
  same position: nothing masked but the unused positions' absence);
- ``alone``: not the engine but ``generate`` itself, each window in a batch of its own:
  how far the reference's own tokens depend on what shares its batch (other matrix
  shapes, other rounding). In half precision that is the yardstick for the modes above.

In float32 every mode gives generate's tokens (tests/test_engine.py proves it on real
weights). In half precision the rounding of attention over masked positions differs from
attention over exactly a row's own positions, and a different argmax now and then takes a
window another way: this script counts how often, and prints each differing window's text
both ways. Exit status 0 always (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("audio")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--device", default=None)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--language", default="en")
    p.add_argument("--modes", default="dynamic,static,together")
    p.add_argument("--quiet", action="store_true", help="counts only, not the differing texts")
    args = p.parse_args(argv)

    from pipeline.constants import N_SAMPLES, SAMPLE_RATE
    from pipeline.types import DecodeOptions
    from pipeline.weights import resolve_model
    from stages.engine import SlotEngine
    from stages.infer import WhisperBackend
    from tests.media import read_audio

    b = WhisperBackend(resolve_model(args.model), device=args.device, dtype=args.dtype)
    audio = read_audio(args.audio)
    step = 28 * SAMPLE_RATE
    windows = [audio[i : i + N_SAMPLES] for i in range(0, max(1, len(audio) - N_SAMPLES + 1), step)]
    windows = [w for w in windows if len(w) == N_SAMPLES]
    if not windows:
        print(f"{args.audio}: shorter than one 30 s window", file=sys.stderr)
        return 2
    opts = DecodeOptions(language=args.language)
    feats = [b.prepare(w) for w in windows]
    t0 = time.perf_counter()
    ref = []
    for i in range(0, len(feats), args.slots):
        ref += b.transcribe(feats[i : i + args.slots], opts)
    print(f"{args.model} {b.dtype} on {b.device}: {len(feats)} windows; generate {time.perf_counter() - t0:.1f} s")
    text = lambda r: " | ".join(s.text.strip() for s in r.segments)  # noqa: E731
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        n = min(args.slots, len(feats)) if mode == "together" else len(feats)
        static = {"dynamic": False, "static": True, "together": None}.get(mode)  # None: the device's default
        if mode not in ("dynamic", "static", "together", "alone"):
            print(f"unknown mode {mode!r}", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        if mode == "alone":
            got = {i: b.transcribe([f], opts)[0] for i, f in enumerate(feats)}
        else:
            engine = SlotEngine(b, slots=args.slots, static=static)
            for i in range(n):
                engine.submit(i, feats[i], opts)
            got = dict(engine.run())
        wall = time.perf_counter() - t0
        differ = [i for i in range(n) if got[i].n_tokens != ref[i].n_tokens or text(got[i]) != text(ref[i])]
        what = "generate alone" if mode == "alone" else mode
        print(f"{what}: {len(differ)} of {n} windows differ from generate in batches of {args.slots} ({wall:.1f} s)")
        if not args.quiet:
            for i in differ:
                print(f"  window {i} ({ref[i].n_tokens} vs {got[i].n_tokens} tokens)")
                print(f"    generate: {text(ref[i])[:400]}")
                print(f"    engine:   {text(got[i])[:400]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
