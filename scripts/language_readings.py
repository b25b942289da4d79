"""Readings in other languages and in several (issue 8): WER of this pipeline with the
language detected (no language given) and with it given, and of sequential decoding with
the language detected, same multilingual weights, in one run.

    python scripts/language_readings.py [--model base] [--only de_long,fr_long] [--keep DIR]

The readings are espeak-ng (150 words a minute) of the paragraphs in
``scripts/language_texts/`` (prose written for these tests), 0.8 s apart, with longer
pauses after some paragraphs: ``de_long`` (German, 3.4 min), ``fr_long`` (French, 2.7
min), ``mixed_en_de_es`` (paragraphs of English, German and Spanish in turn, 3 min). A
synthetic voice in another language is where Whisper's per-window language detection is
least sure (``stages/language.py``). Scored with transformers' ``BasicTextNormalizer``
(the English one would rewrite other languages). Prints a Markdown table with each run's
WER (substitutions/deletions/insertions, longest run of reference words lost) and the
languages our windows were decoded in; exit status 0 always (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = ROOT / "scripts" / "language_texts"
VOICES = {"de": "de", "fr": "fr", "es": "es", "en": "en-us"}
# name: (language given to the second run of ours or None, [(language, paragraph, pause after)])
READINGS = {
    "de_long": ("de", [("de", i, {1: 8.0, 3: 12.0, 4: 6.0, 7: 10.0}.get(i, 0.8)) for i in range(10)]),
    "fr_long": ("fr", [("fr", i, {1: 10.0, 3: 6.0, 5: 14.0, 8: 7.0}.get(i, 0.8)) for i in range(10)]),
    "mixed_en_de_es": (None, [("en", 0, 0.8), ("en", 1, 0.8), ("de", 0, 0.8), ("de", 1, 0.8), ("es", 0, 0.8),
                              ("es", 1, 0.8), ("en", 2, 0.8), ("de", 2, 0.8), ("de", 3, 0.8), ("es", 2, 0.8),
                              ("de", 4, 0.8)]),  # fmt: skip
}


def paragraphs(lang: str) -> list[str]:
    return [p.strip() for p in (TEXTS / f"{lang}.txt").read_text(encoding="utf-8").splitlines() if p.strip()]


def build(plan, tmp: Path) -> tuple[np.ndarray, str]:
    """(16 kHz float32 audio, reference text) of one reading."""
    from tests import media

    parts, said = [], []
    for k, (lang, i, pause) in enumerate(plan):
        text = paragraphs(lang)[i]
        parts += [media.read_audio(media.speech(tmp / f"p{k}.wav", text, voice=VOICES[lang], speed=150)),
                  np.zeros(int(pause * 16000), np.float32)]  # fmt: skip
        said.append(text)
    return np.concatenate(parts), " ".join(said)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base", help="a multilingual model (default: base)")
    ap.add_argument("--only", type=lambda v: [n for n in v.split(",") if n], default=list(READINGS),
                    help=f"comma-separated readings (default: {','.join(READINGS)})")  # fmt: skip
    ap.add_argument("--keep", metavar="DIR", help="also save the readings here (WAV and reference)")
    args = ap.parse_args(argv)
    unknown = [n for n in args.only if n not in READINGS]
    if unknown:
        ap.error(f"unknown reading(s) {', '.join(unknown)}: choose from {', '.join(READINGS)}")
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng is needed", file=sys.stderr)
        return 0

    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    from pipeline.accuracy import score
    from pipeline.baselines import load_baseline_backend, quiet_transformers, sequential_generate_kwargs
    from pipeline.baselines import sequential_transcriber
    from pipeline.config import Job, PipelineConfig
    from pipeline.runtime import Pipeline
    from pipeline.types import DecodeOptions
    from pipeline.weights import resolve_model
    from tests import media

    quiet_transformers(argparse.Namespace(verbose=0))
    basic = BasicTextNormalizer()

    def norm(text):
        return " ".join(basic(text or "").split())

    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for name in args.only:
            given, plan = READINGS[name]
            (Path(tmp) / name).mkdir()
            audio, reference = build(plan, Path(tmp) / name)
            sets[name] = (media.write_wav(Path(tmp) / f"{name}.wav", audio), reference, given)
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(sets[name][0], Path(args.keep) / f"{name}.wav")
                (Path(args.keep) / f"{name}.txt").write_text(reference + "\n", encoding="utf-8")
        ours, langs = {}, {}
        with Pipeline(PipelineConfig(model=args.model, batch_size=8)) as pipe:
            pipe.wait_ready()
            for name, (path, _, given) in sets.items():
                for lang in (None, given) if given else (None,):
                    out = pipe.run_job(Job(str(path), DecodeOptions(language=lang)), timeout=1800)
                    ours[name, lang] = out.transcript.text
                    langs[name, lang] = ",".join(w.result.language or "-" for w in out.windows)
        backend, _ = load_baseline_backend(resolve_model(args.model), "cpu", "float32")
        transcribe = sequential_transcriber(backend, sequential_generate_kwargs(backend, DecodeOptions()), "cpu")
        seq = {name: transcribe(media.read_audio(path)) for name, (path, _, _) in sets.items()}

    def cell(reference, text):
        s = score(reference, text, normalizer=norm)
        return f"{100 * s.wer:.1f} ({s.substitutions}/{s.deletions}/{s.insertions}, {s.longest_lost_run})"

    print(f"| {args.model} | ours, detected | our windows' languages | ours, language given | sequential, detected |")
    print("|---|---|---|---|---|")
    for name, (_, reference, given) in sets.items():
        with_given = cell(reference, ours[name, given]) + f" ({given})" if given else "-"
        print(f"| {name} | {cell(reference, ours[name, None])} | {langs[name, None]} | {with_given} "
              f"| {cell(reference, seq[name])} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
