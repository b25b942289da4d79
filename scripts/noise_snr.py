"""Speech over steady broadband noise (issue 8): WER of this pipeline and of sequential
decoding, same weights, at several signal-to-noise ratios, and the words each gives for
the noise alone.

    python scripts/noise_snr.py [--model tiny.en] [--cases white:3,white:0,pink:0] [--alone-s 90]

The speech is an espeak-ng (en) reading of four sentences, with 3 s of noise alone before
and after it; the SNR is the reading's mean power (its pauses included) over the noise's.
Noise is white, pink (1/f power) or brown (1/f^2) from 20 Hz up, seeded, so every run mixes the same
audio. ``--alone-s`` seconds of each noise kind alone, at -20 and -40 dBFS, must give no
words. Prints a Markdown table; exit status 0 always (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.constants import SAMPLE_RATE  # noqa: E402

TEXT = (
    "The committee met on Tuesday morning to discuss the new budget. Several members asked why "
    "the library had closed early last winter. The chairman promised a full report before the "
    "end of the month, and the meeting ended shortly after eleven o'clock."
)
KINDS = ("white", "pink", "brown")


def _case(text: str) -> tuple[str, float]:
    kind, _, snr = text.partition(":")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"noise kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        return kind, float(snr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not KIND:SNR_DB: {text!r}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--cases", default="white:3,white:0,white:-3,pink:3,pink:0,pink:-3",
                    type=lambda v: [_case(c) for c in v.split(",") if c.strip()],
                    help="comma-separated KIND:SNR_DB, KIND one of white, pink, brown")  # fmt: skip
    ap.add_argument("--alone-s", type=float, default=90.0, help="seconds of noise alone (0: none)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", metavar="DIR", help="also save the mixes here as WAV")
    args = ap.parse_args(argv)

    from pipeline.accuracy import count_words, score
    from pipeline.baselines import quiet_transformers
    from pipeline.baselines import load_baseline_backend, sequential_generate_kwargs, sequential_transcriber
    from pipeline.config import Job, PipelineConfig
    from pipeline.runtime import Pipeline
    from pipeline.types import DecodeOptions
    from pipeline.weights import resolve_model
    from tests import media

    quiet_transformers(argparse.Namespace(verbose=0))
    rng = np.random.default_rng(args.seed)
    opts = DecodeOptions(language="en")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            speech = media.read_audio(media.speech(tmp / "speech.wav", TEXT))
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"error: espeak-ng and ffmpeg are needed: {exc}", file=sys.stderr)
            return 0
        files = []
        for kind, snr in args.cases:
            mix = media.speech_over_noise(speech, kind, snr, rng)
            files.append((f"{kind}, {snr:g} dB", media.write_wav(tmp / f"{kind}_{snr:g}.wav", mix)))
        alone = []
        for kind in KINDS if args.alone_s > 0 else ():
            x = media.colored_noise(kind, int(args.alone_s * SAMPLE_RATE), rng)
            for dbfs in (-20, -40):
                y = (x * 10 ** (dbfs / 20)).astype(np.float32)
                alone.append((f"{kind} alone, {dbfs} dBFS", media.write_wav(tmp / f"alone_{kind}{dbfs}.wav", y)))

        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for _, path in files + alone:
                shutil.copy(path, Path(args.keep) / path.name)
        ours = {}
        with Pipeline(PipelineConfig(model=args.model, batch_size=8)) as pipe:
            pipe.wait_ready()
            for name, path in files + alone:
                ours[name] = pipe.transcribe(Job(str(path), opts), timeout=600).text
        backend, _ = load_baseline_backend(resolve_model(args.model), "cpu", "float32")
        transcribe = sequential_transcriber(backend, sequential_generate_kwargs(backend, opts), "cpu")
        seq = {name: transcribe(media.read_audio(path)) for name, path in files + alone}

    print(f"| {args.model} | ours WER % (S/D/I) | sequential WER % (S/D/I) |")
    print("|---|---|---|")
    for name, _ in files:
        cells = []
        for text in (ours[name], seq[name]):
            s = score(TEXT, text)
            cells.append("empty" if not text.strip() else
                         f"{100 * s.wer:.1f} ({s.substitutions}/{s.deletions}/{s.insertions})")  # fmt: skip
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    for name, _ in alone:
        print(f"| {name} | {count_words(ours[name])} words | {count_words(seq[name])} words |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
