"""Several inputs in one run vs one run per input (issue 10, item 3).

    python scripts/multi_input_speed.py [--inputs 4] [--model tiny.en] [--seconds 20]

Makes N short English readings (espeak-ng, offline), then transcribes them (a) with one
``python -m pipeline`` per input and (b) with one ``python -m pipeline A B ... --output-dir``,
alternating the order over ``--rounds``, and prints both wall times and their ratio. One
run pays interpreter start, stage start-up and the model load once instead of N times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "Rain is expected in the north, with clearer skies later in the week.",
    "She packed her bags, locked the door and walked slowly to the station.",
    "Engineers tested the bridge for three days before it opened to traffic.",
    "A small boat drifted past the harbour as the sun went down.",
    "The library will extend its opening hours during the exam period.",
]


def main() -> int:
    from tests import media

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0, help="about this long each")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = []
        for i in range(args.inputs):
            words, text = 0, []
            while words < args.seconds * 2.5:  # espeak reads ~2.5 words a second
                s = SENTENCES[(i + len(text)) % len(SENTENCES)]
                text.append(s)
                words += len(s.split())
            inputs.append(media.speech(tmp / f"reading{i}.wav", " ".join(text)))
        audio = sum(media.duration_of(p) for p in inputs)
        base = [sys.executable, "-m", "pipeline", "--model", args.model, "--format", "srt", "-q"]
        separate, together = [], []
        for r in range(args.rounds):
            for order in (("separate", "together") if r % 2 == 0 else ("together", "separate")):
                t0 = time.monotonic()
                if order == "separate":
                    for p in inputs:
                        subprocess.run([*base, str(p), "-o", str(tmp / f"{p.stem}.sep.srt")],
                                       env=env, cwd=ROOT, check=True)
                    separate.append(time.monotonic() - t0)
                else:
                    subprocess.run([*base, *map(str, inputs), "--output-dir", str(tmp / "together")],
                                   env=env, cwd=ROOT, check=True)
                    together.append(time.monotonic() - t0)
        for p in inputs:  # same transcripts either way
            a = (tmp / f"{p.stem}.sep.srt").read_text()
            b = (tmp / "together" / f"{p.stem}.srt").read_text()
            if a != b:
                print(f"note: {p.name}: transcripts differ between the two ways", file=sys.stderr)
        s, t = statistics.median(separate), statistics.median(together)
        print(f"{args.inputs} inputs, {audio:.1f} s of audio in all, model {args.model}, "
              f"{args.rounds} round(s), medians:")
        print(f"  one run per input: {s:.2f} s   ({', '.join(f'{x:.2f}' for x in separate)})")
        print(f"  one run, all inputs: {t:.2f} s   ({', '.join(f'{x:.2f}' for x in together)})")
        print(f"  ratio: {s / t:.2f}x faster in one run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
