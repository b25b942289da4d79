"""scripts/window_start_probe.py: a window's choice between two spellings, as its start moves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.media import read_audio, speech, write_wav

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "window_start_probe.py"


def _run(*args, timeout=240):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)  # fmt: skip


@pytest.fixture(scope="module")
def sentence(tmp_path_factory, real_tiny_dir):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    d = tmp_path_factory.mktemp("probe")
    said = read_audio(speech(d / "said.wav", "The quick brown fox jumps over the lazy dog."))
    # a second of silence first: the moved starts below cut no word
    return write_wav(d / "s.wav", np.concatenate([np.zeros(16000, np.float32), said]))


def test_reports_each_start_and_the_token_it_took(sentence):
    r = _run(sentence, "--at", 2.0, "--spellings", " lazy", " crazy", "--shifts=-0.25,0.25")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert re.match(r"window [\d.]+-[\d.]+ s; ", lines[0]), r.stdout
    rows = lines[1:]
    assert [ln.split(":")[0].strip() for ln in rows] == ["planned", "start -0.25 s", "start +0.25 s"]
    for ln in rows:
        # tiny.en hears "lazy": its first token is the likelier one, and it is what it took
        m = re.search(r"took ' lazy' +log-p +(-?[\d.]+) vs +(-?[\d.]+)", ln)
        assert m, ln
        assert float(m[1]) > float(m[2]), ln


def test_spellings_with_the_same_first_token_are_refused(sentence):
    r = _run(sentence, "--at", 2.0, "--spellings", " lazy", " lazy dog")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: the spellings") and len(r.stderr.strip().splitlines()) == 1


def test_a_second_outside_the_audio_is_refused(sentence):
    r = _run(sentence, "--at", 999, "--spellings", " lazy", " crazy")
    assert r.returncode == 2 and "not inside" in r.stderr


def test_an_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"junk" * 100)
    r = _run(bad, "--at", 1, "--spellings", " lazy", " crazy")
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"error: cannot read {bad}") and len(r.stderr.strip().splitlines()) == 1


def test_a_model_that_cannot_load_is_one_line(sentence, tmp_path):
    r = _run(sentence, "--at", 2.0, "--spellings", " lazy", " crazy", "--model", tmp_path / "no-such-model")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: model ") and len(r.stderr.strip().splitlines()) == 1
