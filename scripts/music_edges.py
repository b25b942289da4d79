"""Music before and after speech (a podcast's jingles; issue 8): the words this pipeline,
the same pipeline with its accuracy machinery off (``--plain``) and sequential decoding
(same weights) write over the music, and their WER on the speech.

    python scripts/music_edges.py [--model tiny.en] [--seeds 1,3,7] [--music-db=-3,-12]

Each case is ``--intro-s`` seconds of chords (``tests.media.chords``, seeded), 1 s of
silence, an espeak-ng (en) reading of five sentences (about 25 s), 1 s of silence and
``--intro-s`` seconds of other chords; the music's level is the speech's (its sound, pauses
left out) plus ``--music-db``. "Over music" counts the words written before the first
word of the speech or after its last (the transcript's leading and trailing insertions,
once aligned with the reading; segment times are not used: sequential decoding stamps
the first sentence from 0 s, over the intro). Prints a Markdown table; exit status 0
always (a measurement, not a test), 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.constants import SAMPLE_RATE  # noqa: E402

TEXT = (
    "The licenses for most software are designed to take away your freedom to share and change it. "
    "By contrast, the public license is intended to guarantee your freedom to share and change free "
    "software, to make sure the software is free for all its users. When we speak of free software, "
    "we are referring to freedom, not price. You must make sure that they, too, receive or can get "
    "the source code. And you must show them these terms so they know their rights."
)


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None

    return parse


def mix(speech: np.ndarray, seed: int, music_db: float, intro_s: float) -> tuple[np.ndarray, tuple[float, float]]:
    """(audio float32, (speech start, speech end) in seconds): chords, speech, chords."""
    from tests import media

    speech = np.asarray(speech, dtype=np.float64)
    loud = np.flatnonzero(np.abs(speech) > 1e-3)
    speech = speech[loud[0] : loud[-1] + 1]
    speech *= 0.7 / np.abs(speech).max()
    level = np.sqrt(np.mean(speech[np.abs(speech) > 1e-3] ** 2)) * 10 ** (music_db / 20)
    pad = np.zeros(SAMPLE_RATE)
    parts = [media.chords(intro_s, seed) * level, pad, speech, pad, media.chords(intro_s, seed + 1) * level]
    audio = np.concatenate(parts)
    start = intro_s + 1.0
    return (audio * 0.8 / np.abs(audio).max()).astype(np.float32), (start, start + len(speech) / SAMPLE_RATE)


def over_music(reference: str, hypothesis: str) -> int:
    """Words of ``hypothesis`` before the first word it shares a place with in
    ``reference`` (said or misheard) and after the last: the words written over music
    around the speech (English normaliser, as WER is scored)."""
    import jiwer

    from pipeline.accuracy import normalize

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not hyp.split():
        return 0
    if not ref.split():
        return len(hyp.split())
    chunks = jiwer.process_words(ref, hyp).alignments[0]
    ends = [c for c in (chunks[0], chunks[-1]) if c.type == "insert"]
    if len(ends) == 2 and ends[0] is ends[1]:
        ends = ends[:1]
    return sum(c.hyp_end_idx - c.hyp_start_idx for c in ends)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--seeds", default=[1, 3, 7], type=_numbers(int), help="chord seeds, comma-separated")
    ap.add_argument("--music-db", default=[-3.0, -12.0], type=_numbers(float),
                    help="music level against the speech's, dB, comma-separated (a leading minus needs =)")  # fmt: skip
    ap.add_argument("--intro-s", type=float, default=20.0, help="seconds of music before and after the speech")
    args = ap.parse_args(argv)
    if not args.seeds or not args.music_db or not 1.0 <= args.intro_s <= 600.0:
        ap.error("give at least one seed and one music level, and --intro-s from 1 to 600")

    from pipeline.accuracy import score
    from pipeline.baselines import load_baseline_backend, quiet_transformers, sequential_generate_kwargs
    from pipeline.baselines import sequential_transcriber
    from pipeline.config import Job, PipelineConfig
    from pipeline.runtime import Pipeline
    from pipeline.types import DecodeOptions
    from pipeline.weights import resolve_model
    from stages.quality import QualityConfig
    from tests import media

    quiet_transformers(argparse.Namespace(verbose=0))
    opts = DecodeOptions(language="en")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            speech = media.read_audio(media.speech(tmp / "speech.wav", TEXT))
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"error: espeak-ng and ffmpeg are needed: {exc}", file=sys.stderr)
            return 0
        cases = []
        for db in args.music_db:
            for seed in args.seeds:
                audio, _ = mix(speech, seed, db, args.intro_s)
                cases.append((f"{db:g} dB, seed {seed}", media.write_wav(tmp / f"m{seed}_{db:g}.wav", audio)))
        out = {}
        for label, quality in (("ours", QualityConfig()), ("plain", QualityConfig(enabled=False))):
            with Pipeline(PipelineConfig(model=args.model, batch_size=8, quality=quality)) as pipe:
                pipe.wait_ready()
                for name, path in cases:
                    out[label, name] = pipe.transcribe(Job(str(path), opts), timeout=600).text
        backend, _ = load_baseline_backend(resolve_model(args.model), "cpu", "float32")
        transcribe = sequential_transcriber(backend, sequential_generate_kwargs(backend, opts), "cpu")
        for name, path in cases:
            out["sequential", name] = transcribe(media.read_audio(path))

    print(f"| {args.model}, music | ours: WER % (S/D/I), words over music | plain | sequential |")
    print("|---|---|---|---|")
    for name, _ in cases:
        cells = []
        for label in ("ours", "plain", "sequential"):
            text = out[label, name]
            s = score(TEXT, text)
            cells.append(f"{100 * s.wer:.1f} ({s.substitutions}/{s.deletions}/{s.insertions}), {over_music(TEXT, text)}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
