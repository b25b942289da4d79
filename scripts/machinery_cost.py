"""What the accuracy machinery costs in throughput (issue 8), measured as a ratio in one run.

    python scripts/machinery_cost.py testsets/mixed_voices.wav [--model tiny.en] [--runs 4]

Two pipelines are alive side by side with the same model and batch size: ours, and the
same with the accuracy machinery off (``QualityConfig(enabled=False)``, what ``--plain``
and bench's ``plain`` baseline run). Each is warmed up, then timed jobs alternate between
them (ours first on even rounds, plain first on odd ones), so a machine that gets busier or
quieter during the run slows both alike, which separate runs in sequence (bench.py
--baselines plain) cannot promise. Prints both medians and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Job, PipelineConfig  # noqa: E402
from pipeline.runtime import Pipeline  # noqa: E402
from pipeline.types import DecodeOptions  # noqa: E402
from stages.quality import QualityConfig  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--language", default="en")
    p.add_argument("--runs", type=int, default=4, help="timed jobs of each (default 4)")
    args = p.parse_args(argv)
    opts = DecodeOptions(language=args.language)
    # Both infer stages forked from the fork server: by default the first pipeline of a
    # process spawns its own and the second forks it, and the two would not start alike.
    cfg = PipelineConfig(model=args.model, batch_size=args.batch_size, infer_start="forkserver")
    pipes = {"ours": Pipeline(cfg), "plain": Pipeline(dataclasses.replace(cfg, quality=QualityConfig(enabled=False)))}
    try:
        for pipe in pipes.values():
            pipe.start()
        for pipe in pipes.values():
            pipe.wait_ready()
            pipe.transcribe(Job(args.source, opts))  # warm: every code path once
        times: dict[str, list[float]] = {"ours": [], "plain": []}
        for i in range(args.runs):
            for name in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
                t0 = time.monotonic()
                pipes[name].transcribe(Job(args.source, opts))
                times[name].append(round(time.monotonic() - t0, 3))
    finally:
        for pipe in pipes.values():
            pipe.close()
    mo, mp = statistics.median(times["ours"]), statistics.median(times["plain"])
    print(f"{args.source}: wall s ours {times['ours']}, plain {times['plain']}")
    print(f"median ours {mo:.2f} s, plain {mp:.2f} s: throughput with the machinery is "
          f"{mp / mo:.3f} of without (cost {100 * (mo / mp - 1):.1f}%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
