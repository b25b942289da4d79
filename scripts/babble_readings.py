"""Readings under babble or music (issue 8): the first minutes of a test reading with four
other readings talking under it, or chords under it, for checking what a window cut
mid-sentence loses.

    python scripts/babble_readings.py OUT_DIR [--testsets testsets]

Writes, from the test readings (``scripts/make_testsets.py``), for each case a WAV and the
reference text of what the reading says in it:

- ``us_babble{10,15,20}``: espeak_us's first eight paragraphs (160 s), with espeak_gb_pauses,
  mixed_voices, piper_joe_pauses and espeak_short (each from a point of its own, at equal
  power) summed under it, 10, 15 or 20 dB under the reading's power;
- ``gb_babble{10,12}``: espeak_gb_pauses's paragraphs to 113 s, with espeak_us, mixed_voices,
  piper_joe_pauses and espeak_short under it, 10 or 12 dB under;
- ``us_nopause``: espeak_us's first eight paragraphs with every pause over 150 ms cut to
  50 ms (150 s of speech with no pause for the chunker to cut at);
- ``us_chords{10,20}_{1,2}``: espeak_us's first eight paragraphs with chords
  (``tests.media.chords``, seed 1 or 2) under all of it, 10 or 20 dB under the speech's
  level (its sound, pauses left out): a music bed, which leaves no pause to cut at either.

Deterministic: the same readings give the same files. Exit status 0, 2 on a bad argument
or a missing reading.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.io import wavfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.media's chords

RATE = 16000
OTHERS = {  # reading -> [(another reading, from this second)]
    "espeak_us": [("espeak_gb_pauses", 60), ("mixed_voices", 100), ("piper_joe_pauses", 300), ("espeak_short", 0)],
    "espeak_gb_pauses": [("espeak_us", 200), ("mixed_voices", 300), ("piper_joe_pauses", 100), ("espeak_short", 10)],
}


def read(testsets: Path, name: str) -> np.ndarray:
    rate, a = wavfile.read(testsets / f"{name}.wav")
    if rate != RATE or a.dtype != np.int16:
        raise SystemExit(f"error: {name}.wav: expected 16 kHz 16-bit PCM")
    return a.astype(np.float32) / 32768


def paragraphs_until(testsets: Path, name: str, t: float) -> tuple[str, float]:
    """The reference text of the paragraphs that end by ``t`` s, and where the last ends."""
    meta = json.loads((testsets / f"{name}.json").read_text())
    paras = [p for p in (testsets / f"{name}.txt").read_text().split("\n") if p.strip()]
    kept = [(p, m["end"]) for p, m in zip(paras, meta["paragraphs"]) if m["end"] <= t]
    return "\n".join(p for p, _ in kept) + "\n", kept[-1][1]


def babble(testsets: Path, name: str, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for other, from_s in OTHERS[name]:
        x = read(testsets, other)[from_s * RATE :][:n]
        x = np.pad(x, (0, n - len(x)))
        out += x / (np.sqrt(np.mean(x**2)) + 1e-9)
    return out


def write(out: Path, case: str, audio: np.ndarray, text: str) -> None:
    audio = audio * min(1.0, 0.9 / np.abs(audio).max())
    wavfile.write(out / f"{case}.wav", RATE, (audio * 32767).astype(np.int16))
    (out / f"{case}.txt").write_text(text)
    print(f"{case}: {len(audio) / RATE:.1f} s", flush=True)


def without_pauses(audio: np.ndarray, frame: int = RATE // 100, under_db: float = -50.0) -> np.ndarray:
    """Every run of 10 ms frames under ``under_db`` dBFS longer than 150 ms cut to 50 ms."""
    n = len(audio) // frame
    frames = audio[: n * frame].reshape(n, frame)
    quiet = np.sqrt(np.mean(frames**2, axis=1)) < 10 ** (under_db / 20)
    keep = np.ones(n, bool)
    i = 0
    while i < n:
        j = i
        while j < n and quiet[j]:
            j += 1
        if j - i > 15:
            keep[i + 5 : j] = False
        i = max(j, i + 1)
    return frames[keep].reshape(-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--testsets", type=Path, default=Path("testsets"))
    args = ap.parse_args(argv)
    for name in OTHERS:
        for ext in ("wav", "txt", "json"):
            if not (args.testsets / f"{name}.{ext}").exists():
                print(f"error: {args.testsets / f'{name}.{ext}'} missing (scripts/make_testsets.py)", file=sys.stderr)
                return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # (reading, case, paragraphs ending by, audio cut at (None: 0.5 s after them), SNRs)
    for name, case, until, cut_s, snrs in (("espeak_us", "us_babble", 160.1, 160.1, (10, 15, 20)),
                                           ("espeak_gb_pauses", "gb_babble", 170.0, None, (10, 12))):  # fmt: skip
        text, end = paragraphs_until(args.testsets, name, until)
        speech = read(args.testsets, name)[: int((cut_s or end + 0.5) * RATE)]
        noise = babble(args.testsets, name, len(speech))
        for snr in snrs:
            gain = np.sqrt(np.mean(speech**2) / np.mean(noise**2) / 10 ** (snr / 10))
            write(args.out, f"{case}{snr}", speech + gain * noise, text)
    text, end = paragraphs_until(args.testsets, "espeak_us", 160.1)
    write(args.out, "us_nopause", without_pauses(read(args.testsets, "espeak_us")[: int((end + 0.3) * RATE)]), text)
    from tests import media

    speech = read(args.testsets, "espeak_us")[: int(160.1 * RATE)].astype(np.float64)
    level = np.sqrt(np.mean(speech[np.abs(speech) > 1e-3] ** 2))
    for db in (10, 20):
        for seed in (1, 2):
            music = media.chords(len(speech) / RATE + 1, seed)[: len(speech)]
            music = music / np.sqrt(np.mean(music**2)) * level * 10 ** (-db / 20)
            write(args.out, f"us_chords{db}_{seed}", (speech + music).astype(np.float32), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
