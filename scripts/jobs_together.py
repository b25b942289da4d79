"""Jobs submitted together vs one after the other, in one pipeline and one run (issue 9).

    python scripts/jobs_together.py testsets/espeak_short.wav testsets/piper_joe_pauses.wav \
        [--model tiny.en] [--batch-size 8] [--rounds 2]

One pipeline, warmed up. Each round times the inputs one after the other (``run_job`` for
each in turn) and all of them together (``run_jobs``: their windows share the decoder's
slots), alternating which goes first, and checks that every transcript is the same both
ways. Prints both medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import Job, PipelineConfig  # noqa: E402
from pipeline.runtime import Pipeline  # noqa: E402
from pipeline.types import DecodeOptions  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--language", default="en")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    opts = DecodeOptions(language=args.language)
    jobs = lambda: [Job(s, opts) for s in args.sources]  # noqa: E731
    times: dict[str, list[float]] = {"one after the other": [], "together": []}
    with Pipeline(PipelineConfig(model=args.model, batch_size=args.batch_size)) as pipe:
        pipe.wait_ready()
        pipe.transcribe(Job(args.sources[0], opts))  # warm
        texts = None
        for r in range(args.rounds):
            for way in ("one after the other", "together") if r % 2 == 0 else ("together", "one after the other"):
                t0 = time.monotonic()
                if way == "together":
                    outs = [o.transcript for o in pipe.run_jobs(jobs())]
                else:
                    outs = [pipe.transcribe(j) for j in jobs()]
                times[way].append(round(time.monotonic() - t0, 3))
                got = [t.text for t in outs]
                if texts is None:
                    texts = got
                elif got != texts:
                    print("error: transcripts differ between the two ways", file=sys.stderr)
                    return 1
    seq, tog = statistics.median(times["one after the other"]), statistics.median(times["together"])
    print(f"{len(args.sources)} jobs: {times}")
    print(f"median one after the other {seq:.2f} s, together {tog:.2f} s: together is {seq / tog:.2f}x sooner; "
          "transcripts identical")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
