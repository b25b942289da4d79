"""How much a reading's WER depends on where the windows are cut (issue 8): the pipeline
with the default ``WindowPlan`` and with its neighbours (pause margin, quiet tolerance,
the start of the cut's search range), each scored against the reference.

    python scripts/plan_sensitivity.py testsets/piper_joe_pauses.wav testsets/piper_joe_pauses.txt \
        [--model tiny.en] [--language en] [--batch-size 32]

A cell of the accuracy table that sits just above or below sequential decoding may be the
luck of one window's cut; if its WER barely moves across these plans, the gap is not
where the cuts fell. The tokens do not depend on the batch size (the slot engine gives
each window what ``generate`` gives it alone), so the default of 32 only makes it faster.
Prints one line per plan and the median, mean, min and max; exit status 0 always (a
measurement, not a test).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.accuracy import score  # noqa: E402
from pipeline.config import Job, PipelineConfig  # noqa: E402
from pipeline.runtime import Pipeline  # noqa: E402
from pipeline.types import DecodeOptions  # noqa: E402
from stages.chunk import WindowPlan  # noqa: E402

# The default, then one knob moved at a time, then two together.
PLANS = [
    {},
    {"margin_s": 0.3},
    {"margin_s": 0.5},
    {"tolerance_db": 2.0},
    {"tolerance_db": 4.0},
    {"min_s": 18.0},
    {"min_s": 22.0},
    {"min_s": 19.0, "margin_s": 0.35},
    {"min_s": 21.0, "tolerance_db": 3.5},
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("audio")
    p.add_argument("reference", help="plain text of what is spoken")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--language", default="en")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    reference = Path(args.reference).read_text(encoding="utf-8")
    opts = DecodeOptions(language=args.language)
    wers = []
    for kw in PLANS:
        cfg = PipelineConfig(model=args.model, batch_size=args.batch_size, window_plan=WindowPlan(**kw))
        with Pipeline(cfg) as pipe:
            pipe.wait_ready()
            result = pipe.transcribe(Job(args.audio, opts))
        s = score(reference, result.text)
        wers.append(100 * s.wer)
        plan = ", ".join(f"{k}={v:g}" for k, v in kw.items()) or "default"
        print(f"{plan:32s} WER {100 * s.wer:5.1f}%  {s.substitutions}/{s.deletions}/{s.insertions}  "
              f"longest lost run {s.longest_lost_run}", flush=True)  # fmt: skip
    print(f"{Path(args.audio).name}: median {statistics.median(wers):.1f}, mean {statistics.mean(wers):.1f}, "
          f"min {min(wers):.1f}, max {max(wers):.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
