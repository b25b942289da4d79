"""Sentences around long pauses inside one window (issue 8): WER of this pipeline and of
sequential decoding, same weights, on two generated readings built for it.

    python scripts/pause_readings.py [--model tiny.en] [--keep DIR]

Each reading is 20 pairs of sentences: sentence A, a pause of 8-17 s, sentence B, a pause
of 6-10 s (seeded), so that a window (its cut is searched from 20 s on) often holds A, the
pause and B. Voices alternate between espeak-ng en-us and piper's joe, from sentence to
sentence; ``pauses_floor`` lies on a white noise floor at -48 dBFS. About 9.5 minutes
each. Whisper sometimes stamps A across the pause to the window's end and stops, and B is
never written (``stages.review.WindowReview._inner_pause``). Prints a Markdown table
(WER, substitutions/deletions/insertions, longest run of reference words lost); exit
status 0 always (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

SENTENCES = """The old lighthouse keeper climbed the stairs every evening before sunset.
Our train was delayed by forty minutes because of a signal failure near the bridge.
She planted tomatoes, peppers and a row of sunflowers along the garden fence.
Please remember to bring your passport and a printed copy of the ticket.
The museum will be closed on Monday while the new exhibition is installed.
He spent the whole afternoon fixing the bicycle chain in the shed.
A strong wind from the north brought heavy rain to the coastal towns.
The committee agreed to meet again next Thursday to review the budget.
Children were playing football in the park until it became too dark to see.
The recipe calls for two cups of flour, one egg and a pinch of salt.
After the concert, the musicians packed their instruments into the van.
The library offers free computer classes for adults every Wednesday morning.
Scientists discovered a new species of frog in the mountain forest.
My neighbour painted his front door a bright shade of yellow.
The ferry leaves the harbour at seven and returns shortly after noon.
Several volunteers helped clean the beach after the summer festival.
The software update fixed the problem with the printer driver.
We watched the eclipse through special glasses on the school roof.
The baker opens his shop at five o'clock to prepare fresh bread.
Traffic on the main road was diverted because of the marathon.
The students presented their research on renewable energy to the class.
A small boat drifted slowly across the calm surface of the lake.
The hotel room had a wonderful view of the snowy mountains.
Grandmother told us stories about her childhood on the farm.
The city council approved plans for a new bicycle lane downtown.
Remember to water the plants while we are away on holiday.
The detective examined the footprints leading away from the house.
Fresh oranges were piled high on the stall at the market.
The pilot announced that we would land twenty minutes early.
Birds gathered on the telephone wires before flying south for winter.
The carpenter measured the window frame twice before cutting the wood.
Everyone laughed when the dog stole a sausage from the barbecue.
The exam results will be published online at the end of the month.
A thick fog covered the valley until the middle of the morning.
The orchestra rehearsed the final movement of the symphony again.
Please switch off your phones before the film begins.
The farmer repaired the fence after the storm knocked it down.
Our team finally won the championship after ten difficult years.
The astronaut described the view of the earth from the space station.
Lunch will be served in the main hall at half past twelve.""".splitlines()

READINGS = {  # name: (seed, first voice, white noise floor in dBFS or None)
    "pauses_clean": (5, 0, None),
    "pauses_floor": (6, 1, -48.0),
}


def build(seed: int, first: int, floor_dbfs: float | None) -> tuple[np.ndarray, str]:
    """(16 kHz float32 audio, reference text) of one reading."""
    import make_testsets as mt

    rng = random.Random(seed)
    voices, piper = (mt.EN_US, mt.JOE), None
    parts, said = [np.zeros(mt.SAMPLE_RATE, np.int16)], []
    for i in range(20):
        for k, pause in ((2 * i, rng.uniform(8, 17)), (2 * i + 1, rng.uniform(6, 10))):
            voice = voices[(first + k) % 2]
            if voice.engine == "piper":
                piper = piper or mt.PiperSynth(seed=seed)
                pcm = piper(SENTENCES[k])
            else:
                pcm = mt.espeak(SENTENCES[k], voice)
            parts += [mt.trim(pcm), np.zeros(int(pause * mt.SAMPLE_RATE), np.int16)]
            said.append(SENTENCES[k])
    audio = np.concatenate(parts).astype(np.float64) / 32768.0
    if floor_dbfs is not None:
        audio += np.random.RandomState(seed).standard_normal(len(audio)) * 10 ** (floor_dbfs / 20)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), " ".join(said)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--keep", metavar="DIR", help="also save the readings here (WAV and reference)")
    args = ap.parse_args(argv)

    from pipeline.accuracy import score
    from pipeline.baselines import load_baseline_backend, quiet_transformers, sequential_generate_kwargs
    from pipeline.baselines import sequential_transcriber
    from pipeline.config import Job, PipelineConfig
    from pipeline.runtime import Pipeline
    from pipeline.types import DecodeOptions
    from pipeline.weights import resolve_model
    from tests import media

    quiet_transformers(argparse.Namespace(verbose=0))
    opts = DecodeOptions(language="en")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for name, (seed, first, floor) in READINGS.items():
            audio, reference = build(seed, first, floor)
            sets[name] = (media.write_wav(Path(tmp) / f"{name}.wav", audio), reference)
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(sets[name][0], Path(args.keep) / f"{name}.wav")
                (Path(args.keep) / f"{name}.txt").write_text(reference + "\n", encoding="utf-8")
        ours = {}
        with Pipeline(PipelineConfig(model=args.model, batch_size=8)) as pipe:
            pipe.wait_ready()
            for name, (path, _) in sets.items():
                ours[name] = pipe.transcribe(Job(str(path), opts), timeout=1800).text
        backend, _ = load_baseline_backend(resolve_model(args.model), "cpu", "float32")
        transcribe = sequential_transcriber(backend, sequential_generate_kwargs(backend, opts), "cpu")
        seq = {name: transcribe(media.read_audio(path)) for name, (path, _) in sets.items()}

    print(f"| {args.model} | ours WER % (S/D/I, lost run) | sequential WER % (S/D/I, lost run) |")
    print("|---|---|---|")
    for name, (_, reference) in sets.items():
        cells = []
        for text in (ours[name], seq[name]):
            s = score(reference, text)
            cells.append(f"{100 * s.wer:.2f} ({s.substitutions}/{s.deletions}/{s.insertions}, {s.longest_lost_run})")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
