"""scripts/music_edges.py: the mixes it builds (``tests.media.chords`` around the speech),
what it counts as words over the music, and its arguments (the model runs are a
measurement, not a test: README, Accuracy)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import media

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("music_edges", ROOT / "scripts" / "music_edges.py")
music_edges = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(music_edges)


def test_chords_are_seeded_loud_throughout_and_of_unit_power():
    a, b = media.chords(10, seed=1), media.chords(10, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, media.chords(10, seed=2))
    assert len(a) == 160000 and np.mean(a**2) == pytest.approx(1.0)
    # A chord struck every 2 s: no 2 s stretch without sound, as music beds are.
    rms = np.sqrt(np.mean(a.reshape(5, -1) ** 2, axis=1))
    assert rms.min() > 0.5


def test_the_mix_puts_the_speech_between_the_music_at_its_level():
    speech = np.concatenate([np.zeros(8000), media.tone(300, 5.0, amp=0.3), np.zeros(8000)])
    audio, spoken = music_edges.mix(speech, seed=3, music_db=-12.0, intro_s=4.0)
    assert audio.dtype == np.float32 and np.abs(audio).max() == pytest.approx(0.8, abs=1e-6)
    assert spoken == pytest.approx((5.0, 10.0), abs=1e-3)  # 4 s of music, 1 s of silence
    assert len(audio) == pytest.approx((4 + 1 + 5 + 1 + 4) * 16000, abs=2)

    def db(a, b):
        return 10 * np.log10(np.mean(audio[int(a * 16000) : int(b * 16000)].astype(np.float64) ** 2) + 1e-20)

    assert db(0.0, 4.0) - db(5.5, 9.5) == pytest.approx(-12.0, abs=0.5)
    assert db(4.2, 4.8) < -90  # the silence between
    assert db(11.0, 15.0) - db(5.5, 9.5) == pytest.approx(-12.0, abs=0.5)


def test_words_over_music_are_those_written_before_and_after_the_speech():
    said = "The words that were said. The last ones."
    assert music_edges.over_music(said, " Thank you. The words that were said. The last ones. Music") == 3
    assert music_edges.over_music(said, "The words that were set. The last one.") == 0  # misheard: not over music
    assert music_edges.over_music(said, "So the words that were said.") == 1
    assert music_edges.over_music(said, " ") == 0


@pytest.mark.parametrize("args", [["--seeds", "a,b"], ["--music-db", ""], ["--intro-s", "0"]])
def test_bad_arguments_are_one_line_and_exit_2(args):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "music_edges.py"), *args],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=60)  # fmt: skip
    assert p.returncode == 2 and "error" in p.stderr and "Traceback" not in p.stderr
