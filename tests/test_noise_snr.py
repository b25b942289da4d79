"""scripts/noise_snr.py: the noise it mixes (``tests.media.colored_noise`` and
``speech_over_noise``, which tests/test_accuracy_real.py mixes with too) and the cases it
takes (the model runs are a measurement, not a test: README, Accuracy)."""

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
_spec = importlib.util.spec_from_file_location("noise_snr", ROOT / "scripts" / "noise_snr.py")
noise_snr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(noise_snr)


@pytest.mark.parametrize("kind, slope_db", [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_noise_has_unit_power_its_slope_and_nothing_below_20_hz(kind, slope_db):
    x = media.colored_noise(kind, 160000, np.random.default_rng(0))
    assert np.mean(x**2) == pytest.approx(1.0)
    power = np.abs(np.fft.rfft(x)) ** 2
    hz = np.fft.rfftfreq(len(x), 1 / 16000)

    def band(lo, hi):  # mean power density in [lo, hi)
        return power[(hz >= lo) & (hz < hi)].mean()

    if kind != "white":
        assert band(1, 19) < 1e-9 * band(100, 200)
    per_octave = 10 * np.log10(band(800, 1600) / band(400, 800))  # density, an octave up
    assert per_octave == pytest.approx(slope_db, abs=0.5)


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_speech_over_noise_is_padded_and_at_its_snr(kind):
    rng = np.random.default_rng(1)
    speech = np.concatenate([np.zeros(8000), 0.3 * np.sin(np.arange(32000) / 5.0 + 1.0), np.zeros(4000)])
    mix = media.speech_over_noise(speech, kind, 6.0, rng, pad_s=1.0)
    assert mix.dtype == np.float32 and len(mix) == 32000 + 2 * 16000  # its silence cut, 1 s each side
    alone = np.concatenate([mix[:16000], mix[-16000:]]).astype(np.float64)
    voiced = mix[16000:-16000].astype(np.float64)
    snr = 10 * np.log10((np.mean(voiced**2) - np.mean(alone**2)) / np.mean(alone**2))
    assert snr == pytest.approx(6.0, abs=0.5)
    assert np.abs(mix).max() <= 0.9 + 1e-6


def test_a_bad_case_is_refused_in_one_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "noise_snr.py"), "--cases", "blue:3"],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode == 2 and "noise kind 'blue' is not one of white, pink, brown" in r.stderr
