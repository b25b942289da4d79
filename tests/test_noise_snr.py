"""scripts/noise_snr.py: the noise it mixes and the cases it takes (the model runs are a
measurement, not a test: README, Accuracy)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("noise_snr", ROOT / "scripts" / "noise_snr.py")
noise_snr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(noise_snr)


@pytest.mark.parametrize("kind, slope_db", [("white", 0.0), ("pink", -3.0), ("brown", -6.0)])
def test_noise_has_unit_power_its_slope_and_nothing_below_20_hz(kind, slope_db):
    x = noise_snr.noise(kind, 160000, np.random.default_rng(0))
    assert np.mean(x**2) == pytest.approx(1.0)
    power = np.abs(np.fft.rfft(x)) ** 2
    hz = np.fft.rfftfreq(len(x), 1 / 16000)

    def band(lo, hi):  # mean power density in [lo, hi)
        return power[(hz >= lo) & (hz < hi)].mean()

    if kind != "white":
        assert band(1, 19) < 1e-9 * band(100, 200)
    per_octave = 10 * np.log10(band(800, 1600) / band(400, 800))  # density, an octave up
    assert per_octave == pytest.approx(slope_db, abs=0.5)


def test_a_bad_case_is_refused_in_one_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "noise_snr.py"), "--cases", "blue:3"],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode == 2 and "noise kind 'blue' is not one of white, pink, brown" in r.stderr
