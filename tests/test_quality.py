"""stages/quality.py, stages/pace.py and stages/review.py: the rules alone, with crafted
inputs and exact expectations, and the ``WindowReview`` protocol end to end against a
scripted fake decoder (no model, no torch).

Audio here is built frame by frame (50 ms frames, the module's ``FRAME``): each frame is
seeded Gaussian noise at a chosen amplitude, or exact zeros, so levels, loud frames and the
quietest point of a span are known in advance.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from pipeline.constants import N_SAMPLES, SAMPLE_RATE
from pipeline.types import Segment, WindowResult
from stages.levels import (
    FRAME,
    frame_levels,
    gate,
    heard_frames,
    loud_frames,
    loud_seconds,
    quiet_level,
    sound_profile,
    voice_levels,
    window_levels,
)
from stages.pace import Pace, too_slow
from stages.quality import (
    QualityConfig,
    best_attempt,
    plain_words,
    repeats,
    is_junk,
    is_no_speech,
    needs_fallback,
    text_units,
    too_fast,
)
from stages.review import Request, WindowReview

CFG = QualityConfig()
FPS = SAMPLE_RATE // FRAME  # 20 frames a second

LOUD_AMP = 0.1  # about -20 dBFS
FLOOR_AMP = 1e-3  # about -60 dBFS: the pauses between "syllables"


# ------------------------------------------------------------------------------ helpers


def from_frames(amps, seed: int = 0) -> np.ndarray:
    """(len(amps) * FRAME,) float32: frame i is Gaussian noise of RMS amps[i] (0: zeros)."""
    amps = np.asarray(amps, dtype=np.float64)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(len(amps) * FRAME) * np.repeat(amps, FRAME)
    return x.astype(np.float32)


def speech_like_amps(seconds: float, on: int = 8, off: int = 2) -> np.ndarray:
    """Per-frame amplitudes: ``on`` loud frames, ``off`` quiet ones, repeated."""
    n = int(round(seconds * FPS))
    period = np.r_[np.full(on, LOUD_AMP), np.full(off, FLOOR_AMP)]
    return np.resize(period, n)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    return from_frames(speech_like_amps(seconds), seed)


def hum(seconds: float, amp: float = 0.05) -> np.ndarray:
    """Mains hum: 60 Hz and two harmonics (whole cycles in every 50 ms frame)."""
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    x = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((60, 1.0), (120, 0.5), (180, 0.25)))
    return (amp * x).astype(np.float32)


def pinkish(seconds: float, amp: float = 0.05, seed: int = 3) -> np.ndarray:
    """Noise with a 1/f power spectrum above 100 Hz (fan or hiss), RMS ``amp``."""
    n = int(round(seconds * SAMPLE_RATE))
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spec *= np.where(f >= 100, 1 / np.sqrt(np.maximum(f, 1.0)), 0.0)
    x = np.fft.irfft(spec, n)
    return (amp * x / np.sqrt(np.mean(x * x))).astype(np.float32)


def loud_mask(seconds: float, *spans) -> np.ndarray:
    """(seconds * 20,) bool: True on the frames of each (t0, t1) span (frame indices)."""
    m = np.zeros(int(round(seconds * FPS)), dtype=bool)
    for t0, t1 in spans:
        m[int(round(t0 * FPS)) : int(round(t1 * FPS))] = True
    return m


def seg(start, end, text, open_end=False) -> Segment:
    return Segment(start=start, end=end, text=text, open_end=open_end)


def res(*segments, T=0.0, cr=1.3, lp=-0.3, ns=0.01, n=24, lang="en") -> WindowResult:
    """A WindowResult as a decoder would give it (temperature as asked)."""
    return WindowResult(
        segments=tuple(segments),
        language=lang,
        n_tokens=n,
        avg_logprob=lp,
        no_speech_prob=ns,
        compression_ratio=cr,
        temperature=T,
    )


def words(n: int, word: str = "word") -> str:
    return " " + " ".join([word] * n)


class FakeDecoder:
    """Stands in for the backend: ``script(request) -> WindowResult`` (times from the
    request's start, as the backend gives them); it records every request it saw."""

    def __init__(self, script):
        self.script = script
        self.seen: list[Request] = []

    def __call__(self, request: Request) -> WindowResult:
        self.seen.append(request)
        out = self.script(request)
        # The backend reports the temperature it decoded at.
        return replace(out, temperature=request.temperature)


def drive(review: WindowReview, decoder: FakeDecoder, limit: int = 50) -> WindowResult:
    """The infer stage's loop for one window: decode what the review asks for, feed it back,
    until nothing is pending; then its result."""
    queue = list(review.requests())
    while queue:
        assert limit > 0, "the review keeps asking for decodes"
        limit -= 1
        req = queue.pop(0)
        assert not review.done
        queue.extend(review.feed(req, decoder(req)))
    assert review.done
    return review.result()


# ------------------------------------------------------------------------------ config


def test_config_validation():
    with pytest.raises(ValueError, match="rise"):
        QualityConfig(temperatures=(0.4, 0.2))
    with pytest.raises(ValueError, match="rise"):
        QualityConfig(temperatures=(0.0, 0.2))
    with pytest.raises(ValueError, match="rise"):
        QualityConfig(temperatures=(0.2, 2.5))
    with pytest.raises(ValueError):
        QualityConfig(tail_min_s=0)
    with pytest.raises(ValueError):
        QualityConfig(max_tail_redecodes=-1)
    with pytest.raises(ValueError, match="end_tail_min_s"):
        QualityConfig(end_tail_min_s=0)
    with pytest.raises(ValueError, match="end_tail_min_s"):
        QualityConfig(end_tail_min_s=2.0)  # past tail_min_s: the ordinary tail covers it
    QualityConfig(temperatures=())  # greedy only: allowed
    QualityConfig(temperatures=(2.0,))


# ------------------------------------------------------------------------------ levels


def test_frame_levels_known_values():
    full_sine = np.sin(2 * np.pi * 1000 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    lv = frame_levels(full_sine)
    assert lv.shape == (20,)
    np.testing.assert_allclose(lv, -3.0103, atol=0.01)
    assert np.all(frame_levels(np.zeros(SAMPLE_RATE, np.float32)) == -120.0)
    # A trailing partial frame is ignored; less than a frame is one silent frame.
    assert frame_levels(np.ones(FRAME + 10, np.float32)).shape == (1,)
    np.testing.assert_array_equal(frame_levels(np.ones(FRAME - 1, np.float32)), [-120.0])


def test_gate_digital_silence():
    assert gate(frame_levels(np.zeros(10 * SAMPLE_RATE, np.float32)), CFG) == "silent"
    # Dither far below -60 dBFS is still silence.
    quiet = from_frames(np.full(200, 1e-5))
    assert gate(frame_levels(quiet), CFG) == "silent"


@pytest.mark.parametrize("make", [hum, pinkish, lambda s: from_frames(np.full(int(s * FPS), 0.05))])
def test_gate_steady_background(make):
    levels = frame_levels(make(20.0))
    assert levels.max() > CFG.silence_dbfs  # audible: not "silent"
    assert gate(levels, CFG) == "steady"


def test_gate_speech_like_bursts():
    assert gate(frame_levels(speech_like(20.0)), CFG) is None
    # Bursts over a loud hum are still a level contrast.
    mix = hum(20.0, amp=0.01) + speech_like(20.0)
    assert gate(frame_levels(mix), CFG) is None
    # A short burst in silence: little spread, but its peak stands far above the median.
    amps = np.full(200, FLOOR_AMP)
    amps[100:106] = LOUD_AMP
    lv = frame_levels(from_frames(amps))
    p10, p95 = np.percentile(lv, (10, 95))
    assert p95 - p10 < CFG.steady_spread_db
    assert gate(lv, CFG) is None


def voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """Vowel-like bursts (a 140 Hz buzz, harmonics up to 3.5 kHz falling 6 dB an
    octave), 0.3 s on and 0.15 s off, RMS 0.1 over the on parts."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * 140 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 26))
    on = (t % 0.45) < 0.3
    x = x * on
    return (x * 0.1 / np.sqrt(np.mean(x[on] ** 2))).astype(np.float32)


def test_speech_as_loud_as_broadband_noise_is_heard_in_the_voice_band():
    """Vowels 3 dB over white noise, or 6 dB over pink noise (from 20 Hz), move the whole
    band's level only 5-8 dB: the gate called such windows steady and they were never
    decoded (espeak-ng 3 dB over white noise: an empty transcript where sequential
    decoding got 55% of the words right). In the voice band they stand out; the noise
    alone does not, and a window with contrast in the whole band keeps those levels."""
    speech = voiced(20.0).astype(np.float64)
    rng = np.random.default_rng(3)
    spectrum = np.fft.rfft(rng.standard_normal(len(speech)))
    hz = np.fft.rfftfreq(len(speech), 1.0 / SAMPLE_RATE)
    pink = np.fft.irfft(spectrum * np.where(hz >= 20.0, 1.0 / np.sqrt(np.maximum(hz, 20.0)), 0.0), len(speech))
    for name, noise, snr_db in (("white", rng.standard_normal(len(speech)), 3.0), ("pink", pink, 6.0)):
        noise = noise * 0.1 / np.sqrt(np.mean(noise**2)) / 10 ** (snr_db / 20)
        alone = noise.astype(np.float32)
        assert gate(frame_levels(alone), CFG) == "steady", name
        assert window_levels(alone, CFG)[1:] == ("steady", False), name  # nothing to hear in either
        mix = (speech + noise).astype(np.float32)
        assert gate(frame_levels(mix), CFG) == "steady", name
        levels, why, noisy = window_levels(mix, CFG)
        assert why is None and noisy, name
        np.testing.assert_array_equal(levels, voice_levels(mix))
        on = ((np.arange(len(levels)) * FRAME / SAMPLE_RATE + 0.025) % 0.45) < 0.3
        loud = loud_frames(levels, CFG, noisy)
        assert loud[on].mean() > 0.6 and loud[~on].mean() < 0.2, name
    clean = speech_like(20.0)
    levels, why, noisy = window_levels(clean, CFG)
    assert why is None and not noisy
    np.testing.assert_array_equal(levels, frame_levels(clean))


def test_speech_over_a_background_is_not_taken_for_words_said_over_silence():
    """Speech 6 dB over white noise is not steady: the whole band's levels are kept, and
    its weaker syllables rise less than half the spread over the floor. They did not count
    as sound, and ``too_fast`` dropped real sentences as words said over silence (the
    first of three 6 dB over white noise, tiny.en; sequential decoding kept it). The check
    that drops words reads the voice band too (``heard``, and ``audible``, which holds it);
    the checks that decode more where sound is left (the end-of-text veto, tails) still
    read ``loud``."""
    x = voiced(12.0).astype(np.float64)
    t = np.arange(len(x)) / SAMPLE_RATE
    speech = x * np.array([1.0, 0.5, 0.25, 0.7, 0.35])[(t // 0.45).astype(int) % 5]  # syllables 0 to -12 dB
    noise = np.random.default_rng(3).standard_normal(len(speech))
    noise *= np.sqrt(np.mean(speech[speech != 0] ** 2) / np.mean(noise**2)) / 10 ** (6 / 20)
    mix = (speech + noise).astype(np.float32)
    levels, why, noisy = window_levels(mix, CFG)
    assert why is None and not noisy  # not steady: the whole band's levels
    loud = loud_frames(levels, CFG, noisy)
    heard = heard_frames(mix, levels, loud, CFG, noisy)
    on = ((np.arange(len(levels)) * FRAME / SAMPLE_RATE + 0.025) % 0.45) < 0.3
    assert loud[on].mean() < 0.7  # the weaker syllables missed
    assert heard[on].mean() > 0.95 and heard[~on].mean() < 0.05 and np.all(heard[loud])

    # 36 words over the first 6 s (6 a second): more than ``loud`` holds at 10 a second.
    said = seg(0.0, 6.0, " " + " ".join(["budget"] * 36) + ".")
    rest = seg(6.0, 11.8, " The chairman promised a full report before the end of the month.")
    assert too_fast(said, loud, CFG) and not too_fast(said, heard, CFG)
    review = WindowReview(0, mix)
    out = drive(review, FakeDecoder(lambda r: res(said, rest)))
    assert [s.text for s in out.segments] == [said.text, rest.text]
    req = Request(0, 0, len(mix), 0.0, 0, "window")
    np.testing.assert_array_equal(review.sound(req)[1], sound_profile(review.loud))  # the veto: ``loud``

    # Clean speech (no background): nothing changes.
    clean = speech.astype(np.float32)
    lv, _, nz = window_levels(clean, CFG)
    lo = loud_frames(lv, CFG, nz)
    np.testing.assert_array_equal(heard_frames(clean, lv, lo, CFG, nz), lo)


def test_the_pace_weighs_a_segment_against_the_sound_heard_under_it():
    """A segment saying far too little over speech on a background: the skip check needs
    ``skip_min_sound_s`` of sound under it, and counted over the whole band alone the
    weaker syllables are not sound (quiet speech over hiss: 5.5 s of a 13 s segment that
    held 5 of some 40 words, which were lost). The pace reads ``heard``, as ``too_fast``
    does: the segment is decoded again in halves, which say more and replace it."""
    x = voiced(14.0).astype(np.float64)
    t = np.arange(len(x)) / SAMPLE_RATE
    speech = x * np.array([1.0, 0.5, 0.25, 0.7, 0.35])[(t // 0.45).astype(int) % 5]
    noise = np.random.default_rng(3).standard_normal(len(speech))
    noise *= np.sqrt(np.mean(speech[speech != 0] ** 2) / np.mean(noise**2)) / 10 ** (6 / 20)
    mix = (speech + noise).astype(np.float32)
    review = WindowReview(0, mix, pace=_warm_pace(15.0))
    slow = seg(0.0, 13.8, " Hello there.")  # 10 letters where the pace says some 140
    assert loud_seconds(review.loud, 0.0, 13.8) < CFG.skip_min_sound_s <= loud_seconds(review.heard, 0.0, 13.8)
    half = words(12, "spoken")
    dec = FakeDecoder(lambda r: res(slow) if r.kind == "window" else res(seg(0.0, 5.0, half)))
    out = drive(review, dec)
    assert [r.kind for r in dec.seen] == ["window", "split", "split"]
    assert [s.text for s in out.segments] == [half, half]
    assert review.pace.rate() == 15.0  # the job's median: the slow segment is one note of six


def test_a_far_voice_next_to_a_near_one_is_not_taken_for_words_said_over_silence():
    """A call's far participant, 44 dB under the near one and 6 dB over the room's floor:
    no frame of his rises 10 dB over the floor, none is over -60 dBFS, so ``loud`` and
    ``heard`` hold none of them, and ``too_fast`` dropped his sentences, which the model
    transcribes. ``audible`` (the voice band, 10 dB over its floor) holds them; words
    written over the floor alone are still dropped."""
    near = voiced(6.0, seed=1)  # -20 dBFS over its bursts
    far = voiced(12.0, seed=2) * 10 ** (-44 / 20)
    x = np.concatenate([near, np.zeros(2 * SAMPLE_RATE), far, np.zeros(8 * SAMPLE_RATE)])
    mix = (x + np.random.default_rng(5).standard_normal(len(x)) * 10 ** (-70 / 20)).astype(np.float32)
    review = WindowReview(0, mix)
    assert loud_seconds(review.heard, 8.0, 20.0) == 0.0 and loud_seconds(review.audible, 8.0, 20.0) > 7.5
    assert loud_seconds(review.audible, 20.5, 27.5) == 0.0  # the floor alone
    said = [seg(0.0, 6.0, words(15, "near")), seg(8.0, 20.0, words(30, "distant"))]
    invented = seg(20.5, 27.5, words(12, "invented"))
    out = drive(review, FakeDecoder(lambda r: res(*said, invented)))
    assert [s.text for s in out.segments] == [s.text for s in said]
    # Measured only where ``heard`` finds a segment too fast, or a tail may hold quiet
    # speech (an FFT a frame otherwise spent on every window): not for a window whose
    # words all have sound under them and whose end is the room's floor alone.
    alone = np.concatenate([near, np.zeros(22 * SAMPLE_RATE)])
    alone = (alone + np.random.default_rng(5).standard_normal(len(alone)) * 10 ** (-70 / 20)).astype(np.float32)
    clean = WindowReview(0, alone)
    drive(clean, FakeDecoder(lambda r: res(said[0])))
    assert clean._audible is None


def test_gate_edges_are_strict():
    # Loudest frame exactly at the silence level is not silent (strictly below is).
    lv = np.full(100, -100.0)
    lv[0] = CFG.silence_dbfs
    assert gate(lv, CFG) != "silent"
    lv[0] = CFG.silence_dbfs - 0.001
    assert gate(lv, CFG) == "silent"
    # A steady level with one frame 12 dB up: not steady (the peak test is strict).
    lv = np.full(100, -40.0)
    lv[50] = -28.0
    assert gate(lv, CFG) is None
    lv[50] = -28.01
    assert gate(lv, CFG) == "steady"


def test_loud_frames_and_sound_profile():
    amps = speech_like_amps(2.0)  # 40 frames: 8 loud, 2 quiet
    loud = loud_frames(frame_levels(from_frames(amps)), CFG)
    np.testing.assert_array_equal(loud, amps == LOUD_AMP)
    prof = sound_profile(loud)
    assert prof.shape == (41,) and prof.dtype == np.float32
    assert prof[0] == 0 and prof[-1] == pytest.approx(32 * 0.05)
    assert np.all(np.diff(prof) >= 0)
    assert prof[8] == pytest.approx(0.4) and prof[10] == pytest.approx(0.4)
    # Above the floor but below the silence level: not sound.
    quiet = frame_levels(from_frames(np.r_[np.full(30, 1e-7), np.full(10, 10 ** ((CFG.silence_dbfs - 3) / 20))]))
    assert not loud_frames(quiet, CFG).any()
    # Digital silence everywhere: no sound, no crash.
    assert not loud_frames(frame_levels(np.zeros(SAMPLE_RATE, np.float32)), CFG).any()


def test_loud_frames_over_a_steady_background():
    """Over a background 8 dB under the speech the rise is half the spread (4 dB), not
    10 dB: the speech frames are sound. A quiet room's floor keeps the 10 dB rise."""
    lv = np.full(100, -30.0)
    lv[20:60] = -22.0  # speech, 8 dB over the noise
    assert loud_frames(lv, CFG).sum() == 40
    lv[20:60] = -28.0  # 2 dB: under the 3 dB least rise
    assert not loud_frames(lv, CFG).any()
    lv = np.full(100, -80.0)
    lv[20:60] = -25.0
    lv[60:70] = -75.0  # breath 5 dB over a silent floor: not sound (the rise is 10 dB)
    assert loud_frames(lv, CFG).sum() == 40


def test_loud_seconds():
    loud = loud_mask(10.0, (2.0, 3.0), (5.0, 5.5))
    assert loud_seconds(loud, 0.0, 10.0) == pytest.approx(1.5)
    assert loud_seconds(loud, 2.5, 5.25) == pytest.approx(0.75)
    assert loud_seconds(loud, 6.0, 40.0) == 0.0
    assert loud_seconds(loud, -1.0, 2.1) == pytest.approx(0.1)


# ---------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    "text, junk",
    [(".", True), ("...", True), (" - ", True), ("", True), (" ♪ ♪", True), ("?!", True),
     (" Hi.", False), ("1", False), (" 三", False), (" é", False), (" Ok...", False)],
)  # fmt: skip
def test_is_junk(text, junk):
    assert is_junk(text) is junk


def test_too_fast():
    loud = loud_mask(30.0, (10.0, 10.3))  # 0.3 s of sound
    fourteen = words(14)
    assert too_fast(seg(10.0, 12.0, fourteen), loud, CFG)
    assert too_fast(seg(9.0, 13.0, fourteen), loud, CFG)
    # The same words over plenty of sound: a normal segment.
    speech = loud_mask(30.0, (8.0, 14.0))
    assert not too_fast(seg(10.0, 12.0, fourteen), speech, CFG)
    # 3 words in 0.3 s is 10 a second: the limit itself is allowed, one more word is not.
    assert not too_fast(seg(10.0, 10.3, words(3)), loud, CFG)
    assert too_fast(seg(10.0, 10.3, words(4)), loud, CFG)
    # One word never counts (a lone "Okay." in a short sound).
    assert not too_fast(seg(20.0, 21.0, " Okay."), loud, CFG)
    # Two words in pure silence are too fast.
    assert too_fast(seg(20.0, 21.0, " Thank you."), loud, CFG)


def test_too_fast_timing_slack():
    # The sound lies just before the segment's start (timestamps a little late).
    loud = loud_mask(30.0, (9.8, 10.0))  # 0.2 s
    s = seg(10.0, 11.0, " Thank you.")
    assert not too_fast(s, loud, CFG)  # slack 0.3 s reaches it: 2 words <= 10 * 0.2
    assert too_fast(s, loud, replace(CFG, timing_slack_s=0.0))
    # ... and just after its end.
    loud = loud_mask(30.0, (11.0, 11.2))
    assert not too_fast(s, loud, CFG)
    assert too_fast(s, loud, replace(CFG, timing_slack_s=0.0))
    # Beyond the slack it does not count.
    loud = loud_mask(30.0, (11.4, 11.6))
    assert too_fast(s, loud, CFG)
    # A segment at the window's start: the slack does not wrap to the end.
    loud = loud_mask(30.0, (29.0, 30.0))
    assert too_fast(seg(0.0, 0.5, " Thank you."), loud, CFG)


def test_needs_fallback():
    said = seg(0.0, 5.0, " Some words were said.")
    assert not needs_fallback(res(said), CFG)
    assert needs_fallback(res(said, cr=2.41), CFG)
    assert not needs_fallback(res(said, cr=2.4), CFG)  # strictly above the threshold
    assert needs_fallback(res(said, lp=-1.2, n=16), CFG)
    assert not needs_fallback(res(said, lp=-1.2, n=15), CFG)  # too few tokens to judge
    assert not needs_fallback(res(said, lp=-1.0, n=100), CFG)  # strictly below
    assert needs_fallback(res(said, lp=-1.0001, n=100), CFG)
    # A decode with no word is never retried, loop or not (nothing to sample words from).
    dots = [seg(float(i), i + 1.0, " .") for i in range(19)]
    assert not needs_fallback(res(*dots, cr=3.15, lp=-0.19, n=40), CFG)
    assert not needs_fallback(res(cr=3.0, lp=-1.5, n=40), CFG)
    # Signals a backend does not give never ask for a fallback.
    assert not needs_fallback(WindowResult((), n_tokens=100), CFG)
    assert needs_fallback(res(said, cr=3.0, lp=None), CFG)
    assert needs_fallback(res(said, cr=None, lp=-3.0, n=20), CFG)
    assert not needs_fallback(res(said, lp=-1.2, n=20), replace(CFG, logprob_min_tokens=21))


def test_is_no_speech():
    assert is_no_speech(res(ns=0.9, lp=-1.5), CFG)
    assert not is_no_speech(res(ns=0.9, lp=-0.5), CFG)  # a confident transcript wins
    assert is_no_speech(res(ns=0.9, lp=None), CFG)
    assert not is_no_speech(res(ns=0.6, lp=-3.0), CFG)  # strictly above the threshold
    assert is_no_speech(res(ns=0.6001, lp=-3.0), CFG)
    assert not is_no_speech(res(ns=None, lp=-3.0), CFG)
    assert not is_no_speech(res(ns=0.9, lp=-1.0), CFG)  # strictly below the log-prob line
    # Unlike the fallback test, the token count plays no part.
    assert is_no_speech(res(ns=0.9, lp=-1.5, n=2), CFG)


def test_best_attempt():
    a = res(T=0.0, cr=3.0, lp=-0.1)  # a loop, however likely
    b = res(T=0.2, cr=1.5, lp=-1.6)
    c = res(T=0.4, cr=1.5, lp=-1.2)
    d = res(T=0.6, cr=2.4, lp=-1.4)  # at the threshold: not a loop
    e = res(T=0.8, cr=2.9, lp=-0.2)
    assert best_attempt([a, b, c, d, e], CFG) is c
    assert best_attempt([a, e], CFG) is e  # every attempt loops: the last
    assert best_attempt([a, d], CFG) is d
    # Unknown log-probability ranks last among attempts that did not loop; unknown
    # compression counts as no loop.
    f = res(T=1.0, cr=None, lp=None)
    assert best_attempt([f, b], CFG) is b
    assert best_attempt([a, f], CFG) is f
    assert best_attempt([res(cr=None, lp=-2.0), res(cr=None, lp=-1.9)], CFG).avg_logprob == -1.9


# -------------------------------------------------------------------------------- pace


def test_text_units():
    assert text_units(" Hello, world!") == 10
    assert text_units("...") == 0
    assert text_units(" It's 42.") == 5
    assert text_units("こんにちは") == 5


def test_pace_median_and_warm_up():
    p = Pace()
    assert p.rate() is None
    for units, sound_s in ((30, 2.0), (45, 3.0)):
        p.note(units, sound_s)
    assert p.rate() is None  # 2 segments: not yet
    p.note(200, 10.0)
    assert p.rate() == 15.0  # median of 15, 15, 20
    for units, sound_s in ((150, 10.0), (100, 10.0)):
        p.note(units, sound_s)
    assert p.rate() == 15.0  # median of 15, 15, 20, 15, 10
    assert Pace(warm=5).rate() is None
    p.note(1000, 2.0)  # one odd segment does not move the median much
    assert p.rate() == 15.0
    # Too little sound or no letters: not noted at all.
    q = Pace()
    for _ in range(10):
        q.note(50, 1.99)
        q.note(0, 10.0)
    assert q.rate() is None


def test_pace_keeps_the_last_window():
    p = Pace(window=5)
    for _ in range(5):
        p.note(10, 10.0)  # rate 1
    assert p.rate() == 1.0
    for _ in range(3):
        p.note(100, 10.0)  # rate 10
    assert p.rate() == 10.0  # the last 5: 1, 1, 10, 10, 10


def _warm_pace(rate: float = 15.0, n: int = 5) -> Pace:
    p = Pace()
    for _ in range(n):
        p.note(int(rate * 10), 10.0)
    return p


def test_too_slow():
    loud = loud_mask(30.0, (0.0, 20.0))
    pace = _warm_pace(15.0)
    few = seg(0.0, 20.0, " Hello there.")  # 10 letters where the pace says 300
    assert too_slow(few, loud, pace, CFG)
    normal = seg(0.0, 20.0, words(56, "words"))  # 280 letters
    assert not too_slow(normal, loud, pace, CFG)
    # Just under skip_ratio: 0.65 * 300 = 195 letters.
    assert too_slow(seg(0.0, 20.0, " " + "a" * 194), loud, pace, CFG)
    assert not too_slow(seg(0.0, 20.0, " " + "a" * 195), loud, pace, CFG)
    # Not enough sound under the segment (8 s needed), whatever its length.
    quiet = loud_mask(30.0, (0.0, 7.9))
    assert not too_slow(few, quiet, pace, CFG)
    # No pace: no judgement. One not yet warmed up: the prior rate judges (6 letters a
    # second of sound: 120 here), so "Hello there." is still too slow, and slow speech
    # (8 letters a second) is not; with no prior, no judgement.
    assert not too_slow(few, loud, None, CFG)
    for cold in (Pace(), _warm_pace(15.0, n=2)):
        assert too_slow(few, loud, cold, CFG)
        assert not too_slow(seg(0.0, 20.0, words(32, "slow")), loud, cold, CFG)  # 128 letters
        assert not too_slow(few, loud, cold, QualityConfig(skip_prior_rate=0))
    with pytest.raises(ValueError, match="skip_prior_rate"):
        QualityConfig(skip_prior_rate=-1)
    # A slow job: short of the ratio but fewer than skip_min_units letters short.
    slow = _warm_pace(2.0)  # 8 s of sound -> 16 expected
    assert not too_slow(seg(0.0, 8.0, " Hi"), loud, slow, CFG)


# ------------------------------------------------------------------------------ review


def test_review_rejects_more_than_a_window():
    with pytest.raises(ValueError, match=str(N_SAMPLES)):
        WindowReview(0, np.zeros(N_SAMPLES + 1, np.float32))


def test_gated_window_needs_no_request():
    for audio, why in ((np.zeros(20 * SAMPLE_RATE, np.float32), "silent"), (hum(20.0), "steady")):
        review = WindowReview(3, audio)
        assert review.gated == why
        assert review.requests() == []
        assert review.done
        out = review.result()
        assert out.segments == () and out.n_tokens == 0
    empty = WindowReview(0, np.zeros(0, np.float32), QualityConfig(enabled=False))
    assert empty.requests() == [] and empty.result().segments == ()


def test_clean_window_one_request():
    audio = speech_like(12.0)
    review = WindowReview(2, audio)
    assert review.gated is None
    dec = FakeDecoder(
        lambda r: res(seg(0.0, 5.0, " Hello there, how are you?"), seg(5.0, 11.6, " Fine."))
    )
    out = drive(review, dec)
    (req,) = dec.seen
    assert req == Request(2, 0, len(audio), 0.0, req.seed, "window")
    assert [s.text for s in out.segments] == [" Hello there, how are you?", " Fine."]
    assert out.language == "en" and out.n_tokens == 24
    assert review.counts == {"window": 1, "fallback": 0, "tail": 0, "split": 0, "language": 0}


def test_window_audio_and_sound():
    audio = speech_like(12.0)
    review = WindowReview(0, audio)
    (req,) = review.requests()
    x = review.window_audio(req)
    assert x.shape == (N_SAMPLES,) and x.dtype == np.float32
    np.testing.assert_array_equal(x[: len(audio)], audio)
    assert not x[len(audio) :].any()  # padded with zeros in the audio domain
    valid_s, prof = review.sound(req)
    assert valid_s == 12.0
    np.testing.assert_array_equal(prof, sound_profile(review.loud))
    # A request for part of the window: its own samples first, its own sound profile.
    part = Request(0, 4 * SAMPLE_RATE, 10 * SAMPLE_RATE)
    x = review.window_audio(part)
    np.testing.assert_array_equal(x[: 6 * SAMPLE_RATE], audio[4 * SAMPLE_RATE : 10 * SAMPLE_RATE])
    assert not x[6 * SAMPLE_RATE :].any()
    valid_s, prof = review.sound(part)
    assert valid_s == 6.0 and prof.shape == (121,)
    np.testing.assert_allclose(prof[-1], np.count_nonzero(review.loud[80:200]) * 0.05, rtol=1e-6)


def _loop(T=0.0):
    return res(seg(0.0, 19.6, " to benefit," * 30), T=T, cr=3.5, lp=-0.2, n=120)


def test_fallback_chain_stops_at_first_acceptable():
    audio = speech_like(20.0)
    good = res(seg(0.0, 19.6, " To benefit the people of the town."), lp=-0.5, n=30)

    def script(r):
        return good if r.temperature >= 0.6 else _loop()

    dec = FakeDecoder(script)
    review = WindowReview(7, audio)
    out = drive(review, dec)
    assert [(r.kind, r.temperature) for r in dec.seen] == [
        ("window", 0.0), ("fallback", 0.2), ("fallback", 0.4), ("fallback", 0.6)
    ]  # fmt: skip
    assert all((r.start, r.end) == (0, len(audio)) for r in dec.seen)
    assert [s.text for s in out.segments] == [" To benefit the people of the town."]
    assert review.counts["fallback"] == 3
    assert out.n_tokens == 3 * 120 + 30  # every attempt's tokens count
    # Seeds: one per temperature, and the same for the same window every time.
    seeds = [r.seed for r in dec.seen]
    assert len(set(seeds)) == 4
    dec2 = FakeDecoder(script)
    drive(WindowReview(7, audio), dec2)
    assert [r.seed for r in dec2.seen] == seeds
    # Another window's seeds are its own.
    dec3 = FakeDecoder(script)
    drive(WindowReview(8, audio), dec3)
    assert not set(r.seed for r in dec3.seen) & set(seeds)


def test_fallback_on_low_logprob():
    audio = speech_like(20.0)
    dec = FakeDecoder(
        lambda r: res(seg(0.0, 19.6, " Words."), lp=-1.5 if r.temperature < 0.4 else -0.6, n=20)
    )
    drive(WindowReview(0, audio), dec)
    assert [r.temperature for r in dec.seen] == [0.0, 0.2, 0.4]
    # Too few tokens to judge: no fallback.
    dec = FakeDecoder(lambda r: res(seg(0.0, 19.6, " Words."), lp=-1.5, n=8))
    out = drive(WindowReview(0, audio), dec)
    assert len(dec.seen) == 1 and [s.text for s in out.segments] == [" Words."]


def test_best_attempt_keeps_speech_that_really_repeats():
    """A sentence said twice compresses past the line at every temperature; only the
    hottest sample "breaks the loop", into text the model finds unlikely. The attempts
    that say the same words (punctuation aside) are the speech."""
    twice = " And so my fellow Americans ask not what your country can do for you." * 2
    t0 = res(seg(0.0, 15.0, twice), T=0.0, cr=2.51, lp=-0.31)
    t2 = res(seg(0.0, 15.0, twice.replace(" ask", ", ask")), T=0.2, cr=2.48, lp=-0.19)
    t4 = res(seg(0.0, 15.0, " And so my fellow Americans ask not."), T=0.4, cr=2.47, lp=-0.33)
    hot = res(seg(0.0, 7.0, " so milen"), seg(7.0, 15.0, " and so my fellow Americans"), T=1.0, cr=0.85, lp=-3.3)
    assert best_attempt([t0, t2, t4, hot], CFG) is t2  # t0 and t2 agree; t2 the likelier
    # No two likely attempts agree (a loop of the model's own changes under sampling):
    # the best that did not loop, as before.
    assert best_attempt([t0, t4, hot], CFG) is hot
    # Agreement among unlikely attempts counts for nothing.
    u0, u2 = replace(t0, avg_logprob=-1.5), replace(t2, avg_logprob=-1.4)
    assert best_attempt([u0, u2, hot], CFG) is hot


def test_a_short_unlikely_fallback_does_not_beat_speech_that_repeats():
    """The hottest sample passes only because it is too short to judge by log-probability:
    it is weighed against the attempts before it, and the words they agree on are kept."""
    audio = speech_like(15.0)
    twice = " And so my fellow Americans ask not what your country can do for you." * 2

    def script(r):
        if r.temperature < 1.0:
            return res(seg(0.0, 14.5, twice), cr=2.5, lp=-0.3 - r.temperature / 10, n=44)
        return res(seg(0.0, 7.0, " so milen"), cr=0.85, lp=-3.3, n=CFG.logprob_min_tokens - 1)

    dec = FakeDecoder(script)
    out = drive(WindowReview(0, audio), dec)
    assert [r.temperature for r in dec.seen] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert [s.text for s in out.segments] == [twice] and out.temperature == 0.0


def test_all_temperatures_fail_keeps_best_attempt():
    audio = speech_like(20.0)
    by_t = {
        0.0: _loop(),
        0.2: res(seg(0.0, 19.6, " attempt at 0.2"), cr=1.5, lp=-1.6, n=40),
        0.4: res(seg(0.0, 19.6, " attempt at 0.4"), cr=1.5, lp=-1.2, n=40),
        0.6: res(seg(0.0, 19.6, " attempt at 0.6"), cr=2.6, lp=-0.1, n=40),
        0.8: res(seg(0.0, 19.6, " attempt at 0.8"), cr=1.5, lp=-1.9, n=40),
        1.0: res(seg(0.0, 19.6, " attempt at 1.0"), cr=1.5, lp=-1.4, n=40),
    }
    dec = FakeDecoder(lambda r: by_t[r.temperature])
    review = WindowReview(1, audio)
    out = drive(review, dec)
    assert [r.temperature for r in dec.seen] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert [s.text for s in out.segments] == [" attempt at 0.4"]
    # The window's signals are those of the attempt kept (see WindowReview.result).
    assert out.temperature == 0.4 and out.compression_ratio == 1.5
    # No temperatures to fall back to: the greedy result is judged as it is.
    dec = FakeDecoder(lambda r: by_t[0.2])
    out = drive(WindowReview(1, audio, QualityConfig(temperatures=())), dec)
    assert len(dec.seen) == 1 and [s.text for s in out.segments] == [" attempt at 0.2"]
    # Every attempt loops: the last is kept.
    dec = FakeDecoder(lambda r: _loop())
    out = drive(WindowReview(1, audio, QualityConfig(temperatures=(0.5,))), dec)
    assert [r.temperature for r in dec.seen] == [0.0, 0.5]
    assert out.segments and out.segments[0].text.startswith(" to benefit")


def test_job_temperature_starts_the_ladder():
    """A job's temperature (OpenAI's request field): the first decode is sampled at it, the
    fallback takes the rungs above it; seeds stay reproducible; 0 is the greedy start."""
    audio = speech_like(20.0)

    def script(r):
        return _loop(r.temperature)

    dec = FakeDecoder(script)
    out = drive(WindowReview(3, audio, temperature=0.3), dec)
    assert [(r.kind, r.temperature) for r in dec.seen] == [
        ("window", 0.3), ("fallback", 0.4), ("fallback", 0.6), ("fallback", 0.8), ("fallback", 1.0)
    ]  # fmt: skip
    # Every attempt said the same (likely) words: the first of them is kept (best_attempt).
    assert out.temperature == 0.3
    dec2 = FakeDecoder(script)
    drive(WindowReview(3, audio, temperature=0.3), dec2)
    assert [r.seed for r in dec2.seen] == [r.seed for r in dec.seen]
    # At the top of the ladder: one sampled decode, judged as it is.
    dec = FakeDecoder(script)
    drive(WindowReview(3, audio, temperature=1.0), dec)
    assert [r.temperature for r in dec.seen] == [1.0]
    # A good first decode at the job's temperature is kept; 0 is greedy, as before.
    good = res(seg(0.0, 19.6, " Words of a sentence."), lp=-0.4, n=20)
    for t in (0.0, 0.6):
        dec = FakeDecoder(lambda r: good)
        out = drive(WindowReview(3, audio, temperature=t), dec)
        assert [r.temperature for r in dec.seen] == [t] and out.temperature == t
    # The review without a job's temperature is the greedy start of before.
    assert WindowReview(3, audio).requests()[0].temperature == 0.0
    # Quality off: the one decode is still at the job's temperature.
    off = WindowReview(3, audio, QualityConfig(enabled=False), temperature=0.4)
    assert [r.temperature for r in off.requests()] == [0.4]


def test_no_speech_gives_no_segments():
    audio = speech_like(20.0)
    # Unlikely text and a high no-speech probability: no segments and no fallback, even
    # though the log-probability alone would ask for one.
    dec = FakeDecoder(
        lambda r: res(seg(0.0, 19.6, " Thank you for watching."), ns=0.9, lp=-1.5, n=40)
    )
    review = WindowReview(0, audio)
    out = drive(review, dec)
    assert len(dec.seen) == 1
    assert out.segments == () and out.no_speech_prob == 0.9
    # ... and no tail re-decode for a window that heard nothing.
    assert review.counts["tail"] == 0
    # A confident transcript overrides the no-speech probability.
    dec = FakeDecoder(lambda r: res(seg(0.0, 19.6, " Thank you for watching."), ns=0.9, lp=-0.4))
    assert [s.text for s in drive(WindowReview(0, audio), dec).segments] == [
        " Thank you for watching."
    ]


def test_a_short_confident_decode_is_kept_whatever_its_no_speech_probability():
    """openai's rule for a whole window: no-speech over 0.6 *and* a mean log-probability
    under -1. A rule that judged decodes of under 16 tokens by their no-speech
    probability alone (as tails are) dropped real quiet one-word answers ("Right." 40 dB
    down, tiny.en: 5 tokens, no-speech 0.65) that ``--plain`` and the code before wrote."""
    audio = speech_like(1.2)
    right = res(seg(0.0, 1.1, " Right."), ns=0.65, lp=-0.6, n=5)
    assert [s.text for s in drive(WindowReview(0, audio), FakeDecoder(lambda r: right)).segments] == [" Right."]
    unlikely = res(seg(0.0, 1.1, " Right."), ns=0.65, lp=-1.2, n=5)
    assert drive(WindowReview(0, audio), FakeDecoder(lambda r: unlikely)).segments == ()


def test_a_quiet_recording_is_sound():
    """Speech turned down 50 dB (its loudest frame at -70 dBFS) is sound: Whisper writes
    jfk.flac turned down 60 dB word for word. A fixed -60 dBFS line called such a window
    silent, or (turned down less) counted under half a second of its speech as sound,
    and every word was dropped as said over silence: an empty transcript, exit code 0."""
    loud_audio = speech_like(10.0)
    quiet = (loud_audio * 10 ** (-50 / 20)).astype(np.float32)
    levels, why, noisy = window_levels(quiet, CFG)
    assert why is None and levels.max() == pytest.approx(-70.0, abs=1.0)
    on = np.resize(np.r_[np.ones(8, bool), np.zeros(2, bool)], len(levels))
    np.testing.assert_array_equal(loud_frames(levels, CFG, noisy), on)
    review = WindowReview(0, quiet)
    out = drive(review, FakeDecoder(lambda r: res(seg(0.0, 9.8, " " + words(30)))))
    assert len(out.segments) == 1  # 30 words over 8 s of sound
    # A window at everyday levels: frames under -60 dBFS are no sound, as before.
    assert quiet_level(frame_levels(loud_audio), CFG) == CFG.quiet_dbfs == -60.0
    # Digital silence, and 16-bit dither, stay silent.
    assert gate(frame_levels(np.zeros(16000, np.float32)), CFG) == "silent"
    dither = (np.random.default_rng(0).uniform(-1, 1, (2, 16000)).sum(axis=0) / 32768).astype(np.float32)
    assert gate(frame_levels(dither), CFG) == "silent"


def test_junk_and_too_fast_segments_are_dropped():
    amps = np.full(200, FLOOR_AMP)  # 10 s, one 0.3 s burst at 2.0 s
    amps[40:46] = LOUD_AMP
    audio = from_frames(amps)
    review = WindowReview(0, audio)
    assert review.gated is None
    dec = FakeDecoder(
        lambda r: res(
            seg(0.0, 1.0, " ..."),
            seg(1.0, 2.5, " Hi there."),
            seg(2.5, 9.0, words(14)),  # 14 words, 0.3 s of sound within the slack at most
        )
    )
    out = drive(review, dec)
    assert [s.text for s in out.segments] == [" Hi there."]
    assert len(dec.seen) == 1  # no tail: the window has no sound after 2.5 s


def _loud_then_quiet(quiet_amp: float):
    """12 s of speech-like audio peaking near -20 dBFS, 2 s of digital silence, then 10 s of
    speech-like audio at ``quiet_amp`` (0: more silence)."""
    quiet = np.zeros(10 * SAMPLE_RATE)
    if quiet_amp:
        quiet = from_frames(speech_like_amps(10.0) * (quiet_amp / LOUD_AMP), seed=5)
    return np.concatenate([speech_like(12.0), np.zeros(2 * SAMPLE_RATE), quiet]).astype(np.float32)


def test_a_quiet_tail_after_loud_speech_is_decoded_alone():
    """Sentences 40 dB and more under the ones before them are no sound to the window's
    ``loud`` frames (within 40 dB of its loudest), so its end went untranscribed. The
    voice band hears them: that end is decoded again alone, from just before their sound
    (with the loud sentences as context, Whisper's scaling to the loudest hid them again),
    and its words are kept. Digital silence there, or a quiet tail that is no speech,
    gives nothing."""
    audio = _loud_then_quiet(LOUD_AMP / 200)  # some 46 dB under
    review = WindowReview(0, audio, pace=_warm_pace(15.0))
    assert loud_seconds(review.loud, 12.3, 24.0) < CFG.tail_speech_s
    assert loud_seconds(review.audible, 12.3, 24.0) > 5.0
    loud_words, quiet_words = seg(0.0, 12.0, words(30, "alpha")), seg(0.4, 9.8, words(25, "beta"))

    def script(r):
        return res(loud_words) if r.kind == "window" else res(quiet_words, n=30)

    dec = FakeDecoder(script)
    out = drive(review, dec)
    assert [r.kind for r in dec.seen] == ["window", "tail"]
    assert 13.5 * SAMPLE_RATE <= dec.seen[1].start <= 14.0 * SAMPLE_RATE and dec.seen[1].end == len(audio)
    assert [s.text for s in out.segments] == [loud_words.text, quiet_words.text]
    assert out.segments[1].start == pytest.approx(dec.seen[1].start / SAMPLE_RATE + 0.4, abs=1e-3)

    silent = res(seg(0.0, 2.0, " Thank you."), ns=0.8, lp=-0.8, n=5)
    for audio, tail, seen in ((_loud_then_quiet(0.0), None, ["window"]), (audio, silent, ["window", "tail"])):
        dec = FakeDecoder(lambda r, tail=tail: res(loud_words) if r.kind == "window" else tail)
        out = drive(WindowReview(0, audio, pace=_warm_pace(15.0)), dec)
        assert [r.kind for r in dec.seen] == seen
        assert [s.text for s in out.segments] == [loud_words.text]
    off = QualityConfig(quiet_tail_sound_s=0)
    dec = FakeDecoder(lambda r: res(loud_words))
    drive(WindowReview(0, _loud_then_quiet(LOUD_AMP / 200), cfg=off, pace=_warm_pace(15.0)), dec)
    assert [r.kind for r in dec.seen] == ["window"]
    with pytest.raises(ValueError, match="quiet_tail_sound_s"):
        QualityConfig(quiet_tail_sound_s=-1)


def _loud_quiet_loud(quiet_amp: float):
    """8 s of speech-like audio near -20 dBFS, 2 s of digital silence, 6 s at ``quiet_amp``
    (0: silence), 0.5 s of silence, 8 s near -20 dBFS again."""
    quiet = np.zeros(6 * SAMPLE_RATE)
    if quiet_amp:
        quiet = from_frames(speech_like_amps(6.0) * (quiet_amp / LOUD_AMP), seed=5)
    gap = np.zeros(SAMPLE_RATE // 2)
    parts = [speech_like(8.0), np.zeros(2 * SAMPLE_RATE), quiet, gap, speech_like(8.0, seed=7)]
    return np.concatenate(parts).astype(np.float32)


def test_quiet_speech_between_loud_sentences_is_decoded_alone():
    """Sentences 40 dB and more under the ones around them: the model wrote the loud ones
    and stamped the first over the quiet ones, which were lost (an audit's probe, 18 words
    in a row). The segments say no more than the pace predicts for their loud sound, so
    the quiet stretch between them, which the voice band hears, is decoded alone; the
    segment stamped over it ends where its loud sound does. A segment whose words are
    too many for its loud sound may say the quiet ones: nothing is decoded; nor over
    silence, nor with the rule off."""
    audio = _loud_quiet_loud(LOUD_AMP / 200)  # some 46 dB under
    review = WindowReview(0, audio, pace=_warm_pace(15.0))
    assert loud_seconds(review.heard, 10.0, 16.0) == 0 and loud_seconds(review.audible, 10.0, 16.0) > 4.0
    alpha, gamma, beta = words(24, "alpha"), words(24, "gamma"), words(15, "beta")  # 120 letters over 6.4 s

    def script(r):
        if r.kind == "window":
            return res(seg(0.0, 13.0, alpha), seg(13.0, 24.5, gamma))
        return res(seg(1.9, 7.8, beta), n=20)

    dec = FakeDecoder(script)
    out = drive(review, dec)
    assert [(r.kind, r.start, r.end) for r in dec.seen] == [
        ("window", 0, len(audio)), ("tail", int(8.2 * SAMPLE_RATE), int(16.5 * SAMPLE_RATE))]
    assert [(s.start, s.end, s.text) for s in out.segments] == [
        (0.0, 8.2, alpha), (10.1, 16.0, beta), (16.5, 24.5, gamma)]

    # 200 letters: more than 1.5 times the pace over the loud sound, not over all it heard.
    many, more = words(40, "alpha"), words(40, "gamma")
    quiet, silent, off = _loud_quiet_loud(LOUD_AMP / 200), _loud_quiet_loud(0.0), replace(CFG, quiet_gap_sound_s=0)
    heard = _loud_quiet_loud(LOUD_AMP / 56)  # 35 dB under: heard, not within 30 dB of the loudest
    assert loud_seconds(WindowReview(0, heard).heard, 10.0, 16.0) > 4.0
    for audio, said, cfg in ((quiet, (seg(0.0, 16.0, many), seg(16.0, 24.5, gamma)), CFG),
                             (heard, (seg(0.0, 8.0, alpha), seg(8.0, 24.5, more)), CFG),
                             (silent, (seg(0.0, 13.0, alpha), seg(16.0, 24.5, gamma)), CFG),
                             (quiet, (seg(0.0, 13.0, alpha), seg(16.0, 24.5, gamma)), off)):
        dec = FakeDecoder(lambda r, said=said: res(*said))
        out = drive(WindowReview(0, audio, cfg=cfg, pace=_warm_pace(15.0)), dec)
        assert [r.kind for r in dec.seen] == ["window"]
        assert [s.text for s in out.segments] == [s.text for s in said]
    with pytest.raises(ValueError, match="quiet_gap_sound_s"):
        QualityConfig(quiet_gap_sound_s=-1)


def test_tail_backstop():
    """A window that stopped early: what follows its last segment is decoded again with
    the segments of the last 5 s before it (here the one starting at 5 s), which stand as
    they were; the re-decode's words after their last words are added with its segments."""
    audio = speech_like(20.0)  # sound to the end
    first = res(seg(0.0, 5.0, " Hello world, this is a test."), seg(5.0, 8.0, " More words here."))
    tail = res(seg(0.0, 3.0, " Many words here."), seg(3.0, 9.0, " The tail says this."),
               seg(9.0, 16.0, " And this, to the end."))  # fmt: skip
    dec = FakeDecoder(lambda r: first if r.kind == "window" else tail)
    review = WindowReview(4, audio)
    out = drive(review, dec)
    assert [(r.kind, r.start, r.end, r.temperature) for r in dec.seen] == [
        ("window", 0, 320000, 0.0),
        ("tail", 5 * SAMPLE_RATE, 320000, 0.0),  # from the start of the segment before the cut
    ]
    # Window seconds; the tail's last end (5 + 16 = 21 s) is clamped to the audio's end.
    assert [(s.start, s.end, s.text) for s in out.segments] == [
        (0.0, 5.0, " Hello world, this is a test."),
        (5.0, 8.0, " More words here."),  # as the window's own decode heard it
        (8.0, 14.0, " The tail says this."),
        (14.0, 20.0, " And this, to the end."),
    ]
    assert review.counts["tail"] == 1
    assert out.n_tokens == 48
    # With no context asked for, the tail is decoded alone, from the last segment's end.
    dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 6.0, " The tail says this.")))
    out = drive(WindowReview(4, audio, QualityConfig(tail_context_s=0)), dec)
    assert [(r.kind, r.start) for r in dec.seen] == [("window", 0), ("tail", 8 * SAMPLE_RATE)]
    assert [s.text for s in out.segments][-1] == " The tail says this."


def test_a_tail_of_applause_adds_nothing():
    """Decoded alone, 3.4 s of applause after a window's last sentence came back as
    "Thank you. Thank you." (tiny.en, no-speech 0.59, an audit's clip; sequential decoding
    wrote nothing there). Decoded with the sentences before it, the model says them again
    and nothing after; or, hotter after a loop, says them with "the work" early and noise
    after: words found after that early "the work" are not new."""
    audio = speech_like(25.0)
    first = res(seg(0.0, 8.0, " For the developers' protection."),
                seg(8.0, 13.5, " The source code for the work means the preferred form of the work."),
                seg(13.5, 16.0, " Object code means any non-source form of the work."))  # fmt: skip

    def run(tail_text):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 11.5, tail_text)))
        out = drive(WindowReview(1, audio), dec)
        return [(r.kind, r.start) for r in dec.seen], [s.text for s in out.segments]

    kinds, texts = run(" The source code for the work means the preferred form of the work. Object code means"
                       " any source form of the work.")
    assert kinds == [("window", 0), ("tail", 8 * SAMPLE_RATE)]
    assert texts == [s.text for s in first.segments]
    kinds, texts = run(" The source code for the work means the preferred format network Music Music")
    assert texts == [s.text for s in first.segments]
    # The same with speech after the last words: it is added.
    kinds, texts = run(" The source code for the work means the preferred form of the work. Object code means"
                       " any source form of the work. The corresponding source need not.")
    assert texts[-1] == " The corresponding source need not."


def test_tail_replaces_an_open_last_segment():
    audio = speech_like(20.0)
    first = res(
        seg(0.0, 5.0, " Hello world, this is a test."),
        seg(5.0, 30.0, " and this goes on", open_end=True),
    )
    tail = res(seg(0.0, 7.0, " And this goes on and on."), seg(7.0, 14.5, " To the end."))
    dec = FakeDecoder(lambda r: first if r.kind == "window" else tail)
    out = drive(WindowReview(0, audio), dec)
    assert [(r.kind, r.start) for r in dec.seen] == [("window", 0), ("tail", 5 * SAMPLE_RATE)]
    assert [(s.start, s.end, s.text) for s in out.segments] == [
        (0.0, 5.0, " Hello world, this is a test."),
        (5.0, 12.0, " And this goes on and on."),
        (12.0, 19.5, " To the end."),
    ]
    assert not any(s.open_end for s in out.segments)


def test_an_open_last_segment_stands_where_its_re_decode_cannot_be_placed():
    """A window cut mid-sentence under babble ended in an open segment (" for the product.
    If such problems arise substantially in other", no end timestamp). Its tail, decoded
    again with the segment before it, failed at T=0 and came back garbled, without that
    segment's last words: nothing to place it by. The open segment stands then (its end
    the window's), as sequential decoding keeps it; dropping it lost a 9-word run (tiny.en,
    speech 10 dB over four other voices, where sequential decoding lost 1)."""
    audio = speech_like(20.0)
    first = res(seg(0.0, 5.0, " Hello world, this is a test."),
                seg(5.0, 12.0, " More words are said here and now."),
                seg(12.0, 30.0, " and the sentence goes on", open_end=True))  # fmt: skip

    def run(tail_text):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 14.0, tail_text)))
        out = drive(WindowReview(2, audio), dec)
        return [(r.kind, r.start) for r in dec.seen], [(s.start, s.end, s.text) for s in out.segments]

    kinds, segs = run(" Bore birds for set hair. Rather, it's a sentence going on.")
    assert kinds == [("window", 0), ("tail", 5 * SAMPLE_RATE)]  # with the segment before it
    assert segs == [(0.0, 5.0, " Hello world, this is a test."), (5.0, 12.0, " More words are said here and now."),
                    (12.0, 20.0, " and the sentence goes on")]  # fmt: skip
    # Placed by those last words, the re-decode says what comes after them instead...
    kinds, segs = run(" More words are said here and now. And the sentence goes on to its end.")
    assert segs[-1] == (12.0, 19.0, " And the sentence goes on to its end.")
    # ... or, saying nothing after them, that nothing was said there: the open segment goes.
    kinds, segs = run(" More words are said here and now.")
    assert [s[2] for s in segs] == [" Hello world, this is a test.", " More words are said here and now."]
    # An open segment that loops (compresses past 2.4, as a window's decode that loops) does
    # not stand: tiny.en over Chinese speech ended a window in "on Tzu-tian," six times.
    first = res(*first.segments[:2], seg(12.0, 30.0, " on Tzu-tian," * 6, open_end=True))
    kinds, segs = run(" Bore birds for set hair. Rather, it's a sentence going on.")
    assert [s[2] for s in segs] == [" Hello world, this is a test.", " More words are said here and now."]


def test_a_re_decode_keeps_the_language_of_its_window():
    """A tail or split is a few seconds decoded alone: where the job set no language, it is
    decoded in the language the window's own decode found ("Genau, ja." at the end of a
    German reading was detected as Chinese on its own and came out "呀")."""
    audio = speech_like(20.0)
    first = res(seg(0.0, 5.0, " Guten Tag, wie geht es."), seg(5.0, 30.0, " und so weiter", open_end=True),
                lang="de")  # fmt: skip
    tail = res(seg(0.0, 7.0, " Und so weiter und so fort."), seg(7.0, 14.5, " Genau, ja."), lang="de")
    dec = FakeDecoder(lambda r: first if r.kind == "window" else tail)
    out = drive(WindowReview(0, audio), dec)
    assert [(r.kind, r.language) for r in dec.seen] == [("window", None), ("tail", "de")]
    assert out.language == "de"
    # What the infer stage hands the engine for each: the job's options, the tail's with
    # the window's language; a language the job set is never overridden.
    from pipeline.runtime.infer_loop import request_options
    from pipeline.types import DecodeOptions

    job = DecodeOptions(task="transcribe")
    assert [request_options(job, r).language for r in dec.seen] == [None, "de"]
    assert request_options(DecodeOptions(language="fr"), dec.seen[1]).language == "fr"
    assert request_options(job, dec.seen[1]).task == "transcribe"


def test_no_tail_when_not_needed():
    audio = speech_like(20.0)

    def run(first, cfg=CFG, audio=audio):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 1.0, " x y")))
        out = drive(WindowReview(0, audio, cfg), dec)
        return [r.kind for r in dec.seen], out

    # The last segment ends less than tail_min_s before the audio does.
    kinds, _ = run(res(seg(0.0, 19.1, " All of it.")))
    assert kinds == ["window"]
    # The rest is quiet.
    quiet_rest = from_frames(np.r_[speech_like_amps(8.0), np.full(240, FLOOR_AMP)])
    kinds, _ = run(res(seg(0.0, 8.0, " All of it.")), audio=quiet_rest)
    assert kinds == ["window"]
    # Tail re-decodes switched off: the open segment stays, as decoded.
    kinds, out = run(
        res(seg(0.0, 5.0, " Hello."), seg(5.0, 30.0, " and on", open_end=True)),
        cfg=QualityConfig(max_tail_redecodes=0),
    )
    assert kinds == ["window"]
    assert [(s.start, s.end, s.open_end) for s in out.segments] == [
        (0.0, 5.0, False),
        (5.0, 20.0, True),
    ]
    # Nothing was heard at all: decoding the same audio again gains nothing.
    kinds, out = run(res(seg(0.0, 1.0, " ...")))
    assert kinds == ["window"] and out.segments == ()
    # A tail that stops early again is not decoded a third time.
    first = res(seg(0.0, 5.0, " Hello there."))
    dec = FakeDecoder(lambda r: first)
    out = drive(WindowReview(0, audio), dec)
    assert [r.kind for r in dec.seen] == ["window", "tail"]
    assert [(s.start, s.end) for s in out.segments] == [(0.0, 5.0), (5.0, 10.0)]


def test_a_jobs_last_words_at_its_very_end_are_decoded_again():
    """The job's last window (``final``): a dropped tail shorter than tail_min_s, with
    sound right after the last segment's end, is decoded again (a reading ending in
    "... on subsequent | lines." lost "lines"), together with the segments of the last
    5 s before it, from the start of the first of them; not in other windows that end in
    a pause, where the next window hears what follows, nor where the end is quiet or too
    short to hold a word."""
    audio = speech_like(20.0)

    def run(first, final, audio=audio):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 9.9, " on subsequent lines.")))
        out = drive(WindowReview(0, audio, final=final), dec)
        return [(r.kind, r.start) for r in dec.seen], [s.text for s in out.segments]

    first = res(seg(0.0, 10.0, " On the same line,"), seg(10.0, 19.56, " on subsequent"))
    kinds, texts = run(first, final=True)
    assert kinds == [("window", 0), ("tail", 10 * SAMPLE_RATE)]
    assert texts == [" On the same line,", " on subsequent", " lines."]
    # The cut: the start of the last segment that starts 5 s or more before the end.
    three = res(seg(0.0, 10.0, " On the same line,"), seg(10.0, 16.0, " and the next"), seg(16.0, 19.56, " on subsequent"))
    assert run(three, final=True)[0] == [("window", 0), ("tail", 10 * SAMPLE_RATE)]
    in_pause = from_frames(np.r_[speech_like_amps(19.7), np.full(6, FLOOR_AMP)])  # 0.3 s pause at the cut
    assert run(first, final=True, audio=in_pause)[0] == [("window", 0), ("tail", 10 * SAMPLE_RATE)]
    assert run(first, final=False, audio=in_pause)[0] == [("window", 0)]
    # Under end_tail_min_s left, or the rest quiet: nothing more to hear.
    assert run(res(seg(0.0, 19.8, " All of it.")), final=True)[0] == [("window", 0)]
    quiet_end = from_frames(np.r_[speech_like_amps(19.5), np.full(10, FLOOR_AMP)])
    assert run(res(seg(0.0, 19.5, " All of it.")), final=True, audio=quiet_end)[0] == [("window", 0)]


def test_a_window_cut_inside_sound_has_its_last_words_decoded_again():
    """A window with no pause in its last 10 s (chords 10 dB under a reading) is cut inside
    speech: base's window ended its last segment with "free programs." 0.92 s before the
    cut, under tail_min_s, and the next window, starting mid-word, began with "do these
    things": "and that you know you can" was lost. A window whose last 0.3 s is half loud
    or more is decoded again as a job's last window is; not one that ends in a pause, nor
    with ``cut_tail_sound_s`` 0."""
    first = res(seg(0.0, 10.0, " use pieces of it in new"), seg(10.0, 19.0, " free programs."))

    def run(audio, cfg=QualityConfig()):
        dec = FakeDecoder(lambda r: first if r.kind == "window"
                          else res(seg(0.0, 9.9, " free programs, and that you know you can")))  # fmt: skip
        out = drive(WindowReview(0, audio, cfg, final=False), dec)
        return [(r.kind, r.start) for r in dec.seen], [s.text for s in out.segments]

    kinds, texts = run(speech_like(19.9))
    assert kinds == [("window", 0), ("tail", 10 * SAMPLE_RATE)]
    assert texts == [" use pieces of it in new", " free programs.", " and that you know you can"]
    # Speech, then 0.1 s of quiet at the cut: 4 of its last 6 frames loud, half or more.
    dip = from_frames(np.r_[speech_like_amps(19.7), np.full(2, FLOOR_AMP)])
    assert run(dip)[0] == kinds
    ends_in_pause = from_frames(np.r_[speech_like_amps(19.6), np.full(6, FLOOR_AMP)])
    assert run(ends_in_pause) == ([("window", 0)], [" use pieces of it in new", " free programs."])
    assert run(speech_like(19.9), QualityConfig(cut_tail_sound_s=0))[0] == [("window", 0)]
    with pytest.raises(ValueError, match="cut_tail_sound_s"):
        QualityConfig(cut_tail_sound_s=1.5)


def test_a_jobs_end_decoded_again_adds_only_what_comes_after_the_last_words():
    """The last segment's end is often early, inside the last word. Decoded alone, the
    half second after it came back as Whisper's sign-off ("Thank you.", "Bye!") or a
    lone "the" (tiny.en, espeak-ng readings that end mid-word or with a slow last word).
    The end is decoded with the sentences of its last 5 s; those stand as they were (a
    few seconds decoded alone heard "A suite" as "Us week"), and what the re-decode says
    after their last words is added. A window of one segment from its start has no
    sentence to start from, and its end is not decoded again."""
    audio = speech_like(30.0)
    first = res(seg(0.0, 25.0, " You may embed this package's interpreter,"), seg(25.0, 29.0, " within an executable"),
                seg(29.0, 29.5, " by linking."))  # fmt: skip

    def run(first, tail_text):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 4.4, tail_text)))
        out = drive(WindowReview(0, audio, final=True), dec)
        return [(r.kind, r.start) for r in dec.seen], [s.text for s in out.segments]

    kinds, texts = run(first, " within an executable by linking.")
    assert kinds == [("window", 0), ("tail", 25 * SAMPLE_RATE)]
    assert texts == [" You may embed this package's interpreter,", " within an executable", " by linking."]
    # Other words inside: the old ones stand; words after the last old ones are added.
    kinds, texts = run(first, " with an executable of yours by linking.")
    assert texts == [" You may embed this package's interpreter,", " within an executable", " by linking."]
    kinds, texts = run(first, " with an executable by linking, statically.")
    assert texts[-2:] == [" by linking.", " statically."]
    # No anchor (the last words heard otherwise), or a repeat of what came before: nothing.
    assert run(first, " within an executable by link. Statically.")[1][-1] == " by linking."
    assert run(first, " within an executable by linking. Within an executable by linking.")[1][-1] == " by linking."
    one = res(seg(0.0, 29.5, " You may embed this package's interpreter within an executable by linking."))
    assert run(one, " Thank you.") == ([("window", 0)], [one.segments[0].text])


def test_a_jobs_end_decoded_again_times_the_same_last_words_later():
    """The job's end decoded again says the same last words and nothing after them: the
    last segment ends where the re-decode ends them, if later ("Yes." said at 11.32-11.74 s
    was in a segment stamped 10.11-11.11 s, its subtitle gone before the word was said;
    decoded again with the sentence before it, 10.75-11.75 s). Never earlier."""
    audio = speech_like(12.0)
    first = res(seg(0.0, 4.0, " We asked him twice."), seg(4.0, 8.5, " He thought about it."), seg(10.11, 11.11, " Yes."))

    def run(tail):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else tail)
        out = drive(WindowReview(0, audio, final=True), dec)
        return [(r.kind, r.start) for r in dec.seen], [(s.start, s.end, s.text) for s in out.segments]

    kinds, segs = run(res(seg(0.0, 4.5, " He thought about it."), seg(6.75, 7.75, " Yes.")))
    assert kinds == [("window", 0), ("tail", 4 * SAMPLE_RATE)]
    assert segs[-1] == (10.11, 11.75, " Yes.") and segs[:-1] == [(0.0, 4.0, " We asked him twice."),
                                                                 (4.0, 8.5, " He thought about it.")]  # fmt: skip
    _, segs = run(res(seg(0.0, 4.5, " He thought about it."), seg(6.0, 6.9, " Yes.")))  # earlier: kept
    assert segs[-1] == (10.11, 11.11, " Yes.")
    _, segs = run(res(seg(0.0, 4.5, " He thought about it."), seg(6.75, 9.0, " Yes.")))  # past the audio
    assert segs[-1] == (10.11, 12.0, " Yes.")


def test_words_added_at_a_jobs_end_keep_their_times():
    """With word timestamps, the words a job's end adds keep theirs, found by their
    letters: timed words are not whitespace tokens (OpenAI's grouping joins a lone " -" to
    the word after it), and the added segment had no words at all when the counts
    differed."""
    from pipeline.types import Word

    def timed(start, end, text):
        toks = text.replace(" - ", " -").split(" ")[1:]  # " -" joins the next word
        step = (end - start) / len(toks)
        words = tuple(Word(start + i * step, start + (i + 1) * step, " " + t.replace("-", "- "), 0.9)
                      for i, t in enumerate(toks))  # fmt: skip
        return Segment(start=start, end=end, text=text, words=words)

    audio = speech_like(30.0)
    first = res(timed(0.0, 25.0, " You may embed this package's interpreter,"), timed(25.0, 29.0, " within an executable"),
                timed(29.0, 29.5, " by linking"))  # fmt: skip
    tail = timed(25.0, 29.9, " within an executable by linking - statically.")
    assert len(tail.words) == len(tail.text.split()) - 1
    dec = FakeDecoder(lambda r: first if r.kind == "window" else res(replace(tail, start=0.0, end=4.9, words=tuple(
        replace(w, start=w.start - 25.0, end=w.end - 25.0) for w in tail.words))))  # fmt: skip
    out = drive(WindowReview(0, audio, final=True), dec)
    assert [s.text for s in out.segments][-1] == " - statically."
    assert [(w.word, round(w.start, 3)) for w in out.segments[-1].words] == [(" - statically.", round(25.0 + 5 * 4.9 / 6, 3))]


def test_a_last_segment_stamped_across_a_pause_has_what_follows_decoded_again():
    """Whisper stamped a window's last sentence across 13 s of silence to the window's end
    and stopped, and the sentence after the silence was never written (an audit's
    readings, tiny.en: one 19.6 s segment). The segment ends where the pause starts, and
    what follows the pause is decoded again from 0.4 s before the sound resumes. Not for
    a short pause, little sound after it, or a segment with no sound before the pause
    (its start is early: it says what comes after)."""

    def window(before_s, pause_s, after_s):
        amps = np.r_[speech_like_amps(before_s), np.zeros(int(pause_s * FPS)), speech_like_amps(after_s),
                     np.zeros(int(0.5 * FPS))]  # fmt: skip
        return from_frames(amps), before_s + pause_s

    def run(audio, first):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 4.0, " Please switch off your phones.")))
        out = drive(WindowReview(0, audio), dec)
        return [(r.kind, r.start) for r in dec.seen], [(s.start, s.end, s.text) for s in out.segments]

    audio, resume = window(4.0, 12.0, 3.5)
    stretched = seg(0.0, 19.5, " The orchestra rehearsed the final movement.")
    kinds, segs = run(audio, res(stretched))
    assert kinds == [("window", 0), ("tail", int(round((resume - 0.4) * SAMPLE_RATE)))]
    assert segs == [(0.0, 4.3, stretched.text), (resume - 0.4, resume + 3.6, " Please switch off your phones.")]
    # A pause under 2 s, or under 1 s of sound after it: the segment stands.
    audio, _ = window(4.0, 1.5, 3.5)
    assert run(audio, res(seg(0.0, 9.0, stretched.text)))[0] == [("window", 0)]
    audio, _ = window(4.0, 12.0, 0.6)
    assert run(audio, res(seg(0.0, 16.6, stretched.text)))[0] == [("window", 0)]
    # Sound only after the pause: the segment's start is early, its words come after.
    audio, _ = window(0.0, 12.0, 3.5)
    assert run(audio, res(seg(0.0, 15.5, " Please switch off your phones.")))[0] == [("window", 0)]


def test_a_segment_saying_again_what_came_just_before_is_dropped():
    """Whisper re-reading its context into noise: "And the mayor will open it." then
    "The Mayor will open it." where only noise follows the speech (a recording that ends
    in 0.6 s of noise, tiny.en with the end-of-text veto). Dropped, from 3 words up; a
    short real repeat and the same words elsewhere stay."""
    cfg = QualityConfig()
    before = plain_words(" And the mayor will open it.")
    assert before == ["and", "the", "mayor", "will", "open", "it"]
    assert repeats(plain_words(" The Mayor will open it."), before, cfg)
    assert not repeats(plain_words(" No, no."), plain_words(" I said no, no."), cfg)  # 2 words
    assert not repeats(plain_words(" The mayor will open it soon."), before, cfg)
    assert not repeats(plain_words(" The mayor will open"), before, cfg)  # not what came last
    assert not repeats(plain_words(" The Mayor will open it."), before, QualityConfig(repeat_min_words=0))

    audio = speech_like(20.0)
    first = res(seg(0.0, 9.0, " The bridge opens in spring."), seg(9.0, 14.0, " And the mayor will open it."),
                seg(14.0, 19.9, " The Mayor will open it."))  # fmt: skip
    # The repeat dropped, the window's end goes untranscribed: its tail is decoded again,
    # and the same repeat there (after the kept words before the cut) is dropped too.
    dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 3.0, " the mayor will open it.")))
    out = drive(WindowReview(0, audio), dec)
    assert [r.kind for r in dec.seen] == ["window", "tail"]
    assert [s.text for s in out.segments] == [" The bridge opens in spring.", " And the mayor will open it."]


def test_a_segment_ending_in_the_words_just_said_with_a_new_start_is_dropped():
    """Whisper re-reading its context with a new start (an audit's readings with applause
    and laughter between sentences, tiny.en): "Object code means any un-sourced form of
    the work." then, over the applause, "The code means any un-sourced form of the work."
    A segment whose last 6 words or more, three quarters of it at least, are the last
    words said before it is dropped; fewer shared words, or a sentence that only ends
    like the one before, stay."""
    cfg = QualityConfig()
    before = plain_words(" Object code means any un-sourced form of the work.")
    assert repeats(plain_words(" The code means any un-sourced form of the work."), before, cfg)  # 9 of 10
    laugh = plain_words(" the DPL clearly explains Net There is no warranty for this free software.")
    assert repeats(plain_words(" The Mailer's Net There is no warranty for this free software."), laugh, cfg)  # 9 of 11
    assert not repeats(plain_words(" We share this free software."), laugh, cfg)  # 3 shared words
    assert not repeats(plain_words(" Some say it is the one form of the work."), before, cfg)  # 5 shared words
    # 8 shared words of 14: a sentence that ends like the one before it, not a repeat.
    assert not repeats(plain_words(" In the end we all agree that there is no warranty for this free software."), laugh, cfg)  # fmt: skip
    assert not repeats(plain_words(" The code means any un-sourced form of the work."), before,
                       QualityConfig(near_repeat_min_words=10))  # fmt: skip
    assert not repeats(plain_words(" The code means any un-sourced form of the work."), before, QualityConfig(repeat_min_words=0))  # fmt: skip
    for bad in ({"near_repeat_min_words": 0}, {"near_repeat_share": 0.0}, {"near_repeat_share": 1.5}):
        with pytest.raises(ValueError, match="near_repeat"):
            QualityConfig(**bad)

    audio = speech_like(25.0)
    first = res(seg(0.0, 9.0, " The source code for the work means the preferred form of the work."),
                seg(9.0, 12.0, " Object code means any un-sourced form of the work."),
                seg(12.0, 24.9, " The code means any un-sourced form of the work."))  # fmt: skip
    # The repeat dropped, the window's end goes untranscribed: its tail is decoded again,
    # and the same repeat there (after the kept words before the cut) is dropped too.
    dec = FakeDecoder(lambda r: first if r.kind == "window" else res(seg(0.0, 3.0, " the code means any un-sourced form of the work.")))
    out = drive(WindowReview(0, audio), dec)
    assert [r.kind for r in dec.seen] == ["window", "tail"]
    assert [s.text for s in out.segments] == [s.text for s in first.segments[:2]]


def test_a_tail_the_model_calls_no_speech_gives_no_words():
    """A tail's decode: its no-speech probability decides alone ("you" over a noise tail
    had no-speech 0.94 and a mean log-probability of -0.97, which openai/whisper's rule,
    made for whole windows, keeps). A whole window's decode keeps that rule."""
    audio = speech_like(20.0)
    first = res(seg(0.0, 10.0, " On the same line,"), seg(10.0, 19.56, " on subsequent"))

    def run(tail_result, final=True):
        dec = FakeDecoder(lambda r: first if r.kind == "window" else tail_result)
        return [s.text for s in drive(WindowReview(0, audio, final=final), dec).segments]

    assert run(res(seg(0.0, 0.4, " you"), ns=0.94, lp=-0.97, n=4))[-1] == " on subsequent"
    assert run(res(seg(0.0, 9.9, " on subsequent lines."), ns=0.12, lp=-0.65, n=5))[-1] == " lines."
    # A quiet tail that also looks like a loop is not decoded hotter: it gives nothing anyway.
    loop = res(seg(0.0, 0.4, " you you you you"), ns=0.94, lp=-0.97, cr=3.0, n=20)
    dec = FakeDecoder(lambda r: first if r.kind == "window" else loop)
    out = drive(WindowReview(0, audio, final=True), dec)
    assert [r.kind for r in dec.seen] == ["window", "tail"] and out.segments[-1].text == " on subsequent"
    window = res(seg(0.0, 5.0, " Yes."), ns=0.94, lp=-0.97, n=4)
    assert [s.text for s in drive(WindowReview(0, audio), FakeDecoder(lambda r: window)).segments][0] == " Yes."


def _split_audio():
    """20 s of speech-like audio with exact digital silence at 11.00-11.10 s (frames
    220-221): the quietest 100 ms inside any long segment over it."""
    amps = speech_like_amps(20.0)
    amps[220:222] = 0.0
    return from_frames(amps)


def _split_run(halves_text, pace):
    audio = _split_audio()
    old = seg(0.0, 19.6, " Hello there.")  # 10 letters over ~15.7 s of sound

    def script(r):
        if r.kind == "window":
            return res(old)
        if r.start == 0:
            return res(seg(0.0, 10.5, halves_text[0]))
        return res(seg(0.2, 8.0, halves_text[1]))

    dec = FakeDecoder(script)
    review = WindowReview(0, audio, pace=pace)
    out = drive(review, dec)
    return dec.seen, out, review


def test_too_slow_segment_is_split_and_replaced_when_halves_say_more():
    one, two = words(30, "alpha"), words(28, "beta")
    seen, out, review = _split_run((one, two), _warm_pace(15.0))
    mid = 221 * FRAME  # the boundary between the two silent frames: 11.05 s
    assert [(r.kind, r.start, r.end, r.temperature) for r in seen] == [
        ("window", 0, 320000, 0.0),
        ("split", 0, mid, 0.0),
        ("split", mid, int(19.6 * SAMPLE_RATE), 0.0),
    ]
    assert review.counts["split"] == 2
    assert [(s.start, s.end, s.text) for s in out.segments] == [
        (0.0, 10.5, one),
        (11.25, 19.05, two),  # window seconds: 11.05 + 0.2, 11.05 + 8.0
    ]


def test_the_reviews_decisions_are_logged_at_debug(caplog):
    """``-vv`` shows what the review did to a window, and why: a split and its outcome, a
    segment dropped as too fast for its sound."""
    with caplog.at_level(logging.DEBUG, logger="stages.review"):
        _split_run((words(30, "alpha"), words(28, "beta")), _warm_pace(15.0))
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("window 0 0.00-20.00 s: too slow for the job's pace") and "'Hello there.' split" in m
               and ", 15.0 a second)" in m for m in lines), lines  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="stages.review"):
        _split_run((words(30, "alpha"), words(28, "beta")), Pace())
    assert any("the prior 6.0 a second: the job has no pace yet)" in r.getMessage() for r in caplog.records)
    assert any(m.startswith("window 0 11.05-19.60 s: halves 'alpha alpha") and m.endswith("replace 'Hello there.'")
               for m in lines), lines  # fmt: skip
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="stages.review"):
        drive(WindowReview(0, speech_like(10.0)), FakeDecoder(lambda r: res(seg(0.0, 9.0, " Hello."),
                                                                            seg(9.95, 10.0, words(12)))))  # fmt: skip
    assert any("too fast for its sound" in r.getMessage() and "word word" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="stages.review"):
        drive(WindowReview(0, speech_like(10.0)),
              FakeDecoder(lambda r: res(seg(0.0, 9.0, words(20)), cr=3.0 if r.temperature == 0 else 1.3)))  # fmt: skip
    assert (
        "window 0 0.00-10.00 s: the decode at T=0.0 failed (compression 3.00, log-probability -0.30): "
        "decoded again at T=0.2"
    ) in [r.getMessage() for r in caplog.records]


def test_split_halves_kept_only_if_they_say_more():
    seen, out, _ = _split_run((" Hi.", " Yo."), _warm_pace(15.0))  # 4 letters < 10
    assert [r.kind for r in seen] == ["window", "split", "split"]
    assert [s.text for s in out.segments] == [" Hello there."]
    seen, out, _ = _split_run((" Hello", " there"), _warm_pace(15.0))  # 10 letters: not more
    assert [s.text for s in out.segments] == [" Hello there."]


def test_a_half_still_too_slow_is_split_once_more():
    """The first half starts where the slow segment did, and the model may jump there
    again (babble under a reading: " The" over 22.6 s, and over its first 13 s half): a
    half adopted but itself too slow is decoded again in halves; theirs are not split."""
    audio = _split_audio()
    mid = 221 * FRAME

    def script(r):
        if r.kind == "window":
            return res(seg(0.0, 19.6, " Hello there."))
        if (r.start, r.end) == (0, mid):
            return res(seg(0.0, 10.5, " Hi."))  # 2 letters over ~8.5 s of sound: too slow again
        if r.start == mid:
            return res(seg(0.2, 8.0, words(28, "beta")))
        return res(seg(0.0, 4.0, " Hi."))  # the halves of the half: still too slow, never split

    dec = FakeDecoder(script)
    out = drive(WindowReview(0, audio, pace=_warm_pace(15.0)), dec)
    spans = [(r.kind, r.start, r.end) for r in dec.seen]
    assert [k for k, _, _ in spans] == ["window", "split", "split", "split", "split"]
    (_, a, b), (_, c, d) = spans[3], spans[4]
    end = int(10.5 * SAMPLE_RATE)  # the first half's segment, halved
    assert a == 0 and b == c and d == end and 0.3 * end <= b <= 0.7 * end
    assert [s.text for s in out.segments] == [" Hi.", " Hi.", words(28, "beta")]


def test_a_half_saying_next_to_nothing_is_split_over_less_sound_than_a_segment():
    """A half that replaced a too-slow segment is judged over ``half_skip_min_sound_s``
    of sound, not ``skip_min_sound_s``: the model is known to jump there (speech at -45
    dBFS over hiss: the first half said " the" over 9 s, 6.95 s of sound, and 36 words
    were lost until its halves were decoded)."""
    audio = _split_audio()
    mid = 221 * FRAME
    slow = seg(0.0, 6.5, " Hi.")  # 2 letters over 5-6 s of sound: under 8 s, over 4 s

    def script(r):
        if r.kind == "window":
            return res(seg(0.0, 19.6, " Hello there."))
        if (r.start, r.end) == (0, mid):
            return res(slow, seg(6.5, 11.0, words(12, "gamma")))
        if r.start == mid:
            return res(seg(0.2, 8.0, words(28, "beta")))
        return res(seg(0.0, 3.0, words(8, "delta")))  # the halves of the half

    assert CFG.half_skip_min_sound_s <= loud_seconds(WindowReview(0, audio).heard, 0.0, 6.5) < CFG.skip_min_sound_s
    twice, once = ["window"] + ["split"] * 4, ["window"] + ["split"] * 2
    for cfg, kinds in ((CFG, twice), (replace(CFG, half_skip_min_sound_s=8.0), once)):
        dec = FakeDecoder(script)
        out = drive(WindowReview(0, audio, pace=_warm_pace(15.0), cfg=cfg), dec)
        assert [r.kind for r in dec.seen] == kinds
        texts = [s.text for s in out.segments]
        if kinds is twice:
            (_, a, b), (_, c, d) = [(r.kind, r.start, r.end) for r in dec.seen[3:]]
            assert a == 0 and b == c and d == int(6.5 * SAMPLE_RATE)
            assert texts == [words(8, "delta"), words(8, "delta"), words(12, "gamma"), words(28, "beta")]
        else:
            assert texts == [" Hi.", words(12, "gamma"), words(28, "beta")]
    with pytest.raises(ValueError, match="half_skip_min_sound_s"):
        QualityConfig(half_skip_min_sound_s=9.0)


def test_a_slow_segment_whose_halves_hold_no_speech_is_dropped():
    """Both halves, decoded alone, are no speech by the model's own rule (no-speech over
    0.6, mean log-probability under -1): the slow segment goes ("Music" stamped over 16 s
    of chords after the last sentence). One half with speech in it: the segment stays."""
    audio = _split_audio()
    old = seg(0.0, 19.6, " Hello there.")
    for halves, kept in (((0.84, 0.65), []), ((0.84, 0.1), [" Hello there."])):
        def script(r, halves=halves):
            if r.kind == "window":
                return res(old)
            return res(seg(0.0, 2.0, " you"), ns=halves[0 if r.start == 0 else 1], lp=-1.4, n=4)

        dec = FakeDecoder(script)
        out = drive(WindowReview(0, audio, pace=_warm_pace(15.0)), dec)
        assert [r.kind for r in dec.seen] == ["window", "split", "split"]
        assert [s.text for s in out.segments] == kept


def _closing_music(music_db: float = -12.0, pause: bool = False):
    """12 s of speech-like audio (its quiet frames 20 dB under its loud ones), 1 s of
    digital silence, then 16 s of chords ``music_db`` under the speech (or, ``pause``,
    more silence): a reading's last sentences and its closing music."""
    from tests import media

    amps = speech_like_amps(12.0)
    amps[amps < LOUD_AMP] = LOUD_AMP / 10
    tail = np.zeros(16 * SAMPLE_RATE) if pause else media.chords(16.0, seed=8) * LOUD_AMP * 10 ** (music_db / 20)
    return np.concatenate([from_frames(amps), np.zeros(SAMPLE_RATE), tail]).astype(np.float32)


def test_a_sign_off_over_closing_music_is_judged_by_all_the_model_may_have_heard():
    """Music as loud as speech rises over the window's floor only at its chords' attacks:
    under "Thank you for watching!" stamped over 16 s of it, the pace's own frames find
    under 4 s of sound, too little for the skip check. All the model may have heard (the
    voice band, ``audible``) holds most of it: the segment is decoded again in halves,
    and goes when both are no speech (tiny.en over a reading's closing music)."""
    audio = _closing_music()
    review = WindowReview(0, audio, pace=_warm_pace(15.0))
    sign_off = seg(12.9, 29.0, " Thank you for watching!")
    assert loud_seconds(review.heard, sign_off.start, sign_off.end) < CFG.skip_min_sound_s
    assert not too_slow(sign_off, review.heard, review.pace, CFG)
    assert loud_seconds(review.audible, sign_off.start, sign_off.end) > 12.0
    speech = seg(0.0, 12.0, words(30, "alpha"))

    def script(r):
        if r.kind == "window":
            return res(speech, sign_off)
        return res(seg(0.0, 2.0, " Thank you."), ns=0.75, lp=-1.3, n=5)

    dec = FakeDecoder(script)
    out = drive(WindowReview(0, audio, pace=_warm_pace(15.0)), dec)
    assert [r.kind for r in dec.seen] == ["window", "split", "split"]
    assert dec.seen[1].start == int(12.9 * SAMPLE_RATE) and dec.seen[2].end == len(audio)
    assert [s.text for s in out.segments] == [speech.text]


def test_a_few_words_over_a_pause_or_a_segment_full_of_words_are_not_split():
    """What the wider count leaves alone: a long segment over digital silence (nothing
    there to hear, whatever the band), and a segment saying as much as the job's pace
    predicts. The latter never measures the voice band (an FFT per frame): judged as if
    all its length were sound, it is not too slow."""
    for audio, segment in (
        (_closing_music(pause=True), seg(12.9, 29.0, " Okay.")),
        (_closing_music()[: 12 * SAMPLE_RATE], seg(0.0, 12.0, words(30, "alpha"))),
    ):
        review = WindowReview(0, audio, pace=_warm_pace(15.0))
        dec = FakeDecoder(lambda r, segment=segment: res(segment))
        out = drive(review, dec)
        assert [r.kind for r in dec.seen] == ["window"]
        assert [s.text for s in out.segments] == [segment.text]
    assert review._audible is None


def test_before_the_job_has_a_pace_the_prior_rate_judges():
    """A job's first window has no pace of its own to be judged by (fewer than 3 segments
    noted): the skip check assumes ``skip_prior_rate`` then, slower than any speech, so a
    segment saying next to nothing over long sound is still decoded again (base wrote
    "Thank you." over a 20 s music intro, its halves no speech). No pace at all (the
    review without a job) or no prior: no split."""
    for pace in (Pace(), _warm_pace(15.0, n=1)):
        seen, out, _ = _split_run((" a", " b"), pace)  # 10 letters over ~15.7 s of sound
        assert [r.kind for r in seen] == ["window", "split", "split"]
        assert [s.text for s in out.segments] == [" Hello there."]  # the halves say less
    audio = _split_audio()
    slow = words(20, "slowly")  # 120 letters: 7.6 a second of sound, slow speech
    no_prior = QualityConfig(skip_prior_rate=0)
    for pace, cfg, text in ((None, CFG, " Hello there."), (Pace(), no_prior, " Hello there."), (Pace(), CFG, slow)):
        dec = FakeDecoder(lambda r, text=text: res(seg(0.0, 19.6, text)))
        drive(WindowReview(0, audio, cfg=cfg, pace=pace), dec)
        assert [r.kind for r in dec.seen] == ["window"], (pace, cfg.skip_prior_rate, text)
    # The window's own segment joins the pace before it is judged: 2 earlier segments and
    # this one make the 3 the pace needs (its median is still the job's rate).
    seen, _, _ = _split_run((" a", " b"), _warm_pace(15.0, n=2))
    assert [r.kind for r in seen] == ["window", "split", "split"]


def test_window_segments_join_the_pace():
    pace = Pace()
    audio = speech_like(20.0)
    text = words(40, "spoken")  # 240 letters
    dec = FakeDecoder(lambda r: res(seg(0.0, 19.6, text)))
    for i in range(5):
        drive(WindowReview(i, audio, pace=pace), dec)
    sound = loud_seconds(loud_frames(frame_levels(audio), CFG), 0.0, 19.6)
    assert sound > 15.0
    assert pace.rate() == pytest.approx(240 / sound)


def test_disabled_review_is_a_pass_through():
    cfg = QualityConfig(enabled=False)
    looped = res(
        seg(0.0, 1.0, " ..."),
        seg(1.0, 1.2, words(14)),
        seg(1.2, 30.0, " to benefit," * 20, open_end=True),
        cr=3.5, lp=-2.0, ns=0.95, n=150,
    )  # fmt: skip
    # Digital silence: gated when enabled, decoded when not.
    audio = np.zeros(20 * SAMPLE_RATE, np.float32)
    assert WindowReview(0, audio).requests() == []
    review = WindowReview(0, audio, cfg)
    (req,) = review.requests()
    assert (req.kind, req.start, req.end, req.temperature) == ("window", 0, len(audio), 0.0)
    assert review.feed(req, looped) == []
    assert review.done
    out = review.result()
    assert [s.text for s in out.segments] == [s.text for s in looped.segments]
    assert out.segments[-1] == seg(1.2, 20.0, " to benefit," * 20, open_end=True)  # still clamped
    assert review.counts == {"window": 1, "fallback": 0, "tail": 0, "split": 0, "language": 0}


def test_segment_times_clamped_inside_the_span():
    audio = speech_like(10.0)
    dec = FakeDecoder(
        lambda r: res(seg(1.0, 7.98, " First part of it."), seg(7.98, 12.0, " Runs past the end."))
    )
    out = drive(WindowReview(0, audio), dec)
    assert [(s.start, s.end) for s in out.segments] == [(1.0, 7.98), (7.98, 10.0)]
    for s in out.segments:
        assert 0.0 <= s.start <= s.end <= 10.0


def test_segment_times_rounded_to_the_millisecond():
    audio = speech_like(20.0)
    cut = 5.123
    first = res(seg(0.0, cut, " Hello there, friend."))
    tail = res(seg(0.333, 7.777, " The rest of it all."), seg(7.777, 14.0, " And more."))
    dec = FakeDecoder(lambda r: first if r.kind == "window" else tail)
    out = drive(WindowReview(0, audio), dec)
    assert dec.seen[1].start == round(cut * SAMPLE_RATE)
    assert [(s.start, s.end) for s in out.segments] == [(0.0, 5.123), (5.456, 12.9), (12.9, 19.123)]


def test_result_before_done_raises():
    audio = speech_like(20.0)
    review = WindowReview(5, audio)
    (req,) = review.requests()
    with pytest.raises(RuntimeError, match="window 5"):
        review.result()
    (tail,) = review.feed(req, res(seg(0.0, 5.0, " Hello there, friend.")))
    assert tail.kind == "tail" and not review.done
    with pytest.raises(RuntimeError, match="pending"):
        review.result()
    assert review.feed(tail, res(seg(0.0, 14.0, " The rest of it."))) == []
    assert review.done and len(review.result().segments) == 2


# ------------------------------------------------ pace in window order (issue 11: same text at once)


def _drive_job(reviews, decoder, order):
    """The infer loop for a job's windows sharing a Pace: first decodes fed in ``order``
    (window indices), then every follow-up in the order asked; released reviews' requests
    join the queue (as pipeline/runtime/infer_loop.settle does)."""
    first = {r.index: r.requests() for r in reviews}
    by_index = {r.index: r for r in reviews}
    pace = reviews[0].pace
    queue = []
    for i in order:
        queue.extend((by_index[i], q) for q in first[i])
    queue = sorted(queue, key=lambda rq: order.index(rq[0].index))
    for review, reqs in pace.release():  # gated windows, as the infer loop's batch handler
        queue.extend((review, q) for q in reqs)
    while queue:
        review, req = queue.pop(0)
        queue.extend((review, q) for q in review.feed(req, decoder(req)))
        for other, reqs in pace.take_released():
            queue.extend((other, q) for q in reqs)
    assert all(r.done for r in reviews)
    return [r.result() for r in reviews]


def test_pace_follows_window_order_not_finishing_order():
    """A window decided before the windows ahead of it waits for them: its skip check sees
    the same pace whatever finished first, so the transcript does not depend on what else
    shared the decoder (the 4-jobs-at-once case where one job lost a sentence)."""
    audio = _split_audio()
    normal = [seg(0.0, 5.0, " " + "a" * 60), seg(5.0, 10.0, " " + "b" * 60), seg(10.0, 15.0, " " + "c" * 60)]
    slow = seg(0.0, 19.6, " Hello there.")  # 10 letters over ~15.7 s of sound

    def script(r):
        if r.window < 2:
            return res(*normal)
        if r.kind == "window":
            return res(slow)
        return res(seg(0.0, 8.0, " " + "d" * 80)) if r.start == 0 else res(seg(0.2, 8.0, " " + "e" * 80))

    outs, seen = [], []
    for order in ([0, 1, 2], [2, 1, 0], [2, 0, 1], [1, 2, 0]):
        pace = Pace()
        reviews = [WindowReview(i, audio, pace=pace) for i in range(3)]
        dec = FakeDecoder(script)
        outs.append([[s.text for s in r.segments] for r in _drive_job(reviews, dec, order)])
        seen.append(sorted((q.window, q.kind, q.start) for q in dec.seen))
    assert all(o == outs[0] for o in outs) and all(s == seen[0] for s in seen)
    assert [k for i, k, _ in seen[0] if i == 2].count("split") == 2  # window 2 was split


def test_pace_waits_for_a_gated_window():
    """A silent (gated) window ahead counts as decided once the infer loop releases it."""
    audio = _split_audio()
    pace = Pace()
    silent = WindowReview(0, np.zeros(10 * SAMPLE_RATE, np.float32), pace=pace)
    talk = WindowReview(1, audio, pace=pace)
    dec = FakeDecoder(lambda r: res(seg(0.0, 5.0, " " + "a" * 60)))
    out = _drive_job([silent, talk], dec, [1, 0])
    assert out[0].segments == () and out[1].segments


def test_the_pace_lets_a_review_go_once_its_check_ran():
    """A review holds its window's audio; the job's pace kept every one until the job
    ended, and the infer stage grew ~1.8 MB a window (315 -> 589 MiB from 5 to 60 min).
    Once a window's skip check ran, nothing of the pace keeps its review alive."""
    import gc
    import weakref

    audio = _split_audio()
    pace = Pace()
    reviews = [WindowReview(i, audio, pace=pace) for i in range(3)]
    dec = FakeDecoder(lambda r: res(seg(0.0, 5.0, " " + "a" * 60)))
    out = _drive_job(reviews, dec, [2, 0, 1])
    assert all(r.segments for r in out)
    refs = [weakref.ref(r) for r in reviews]
    del reviews, out
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    WindowReview(3, audio, pace=pace)  # the pace still knows where the job is
    with pytest.raises(ValueError, match="registered after"):
        WindowReview(1, audio, pace=pace)


def test_pace_registers_in_window_order():
    pace = Pace()
    WindowReview(3, _split_audio(), pace=pace)
    with pytest.raises(ValueError, match="registered after"):
        WindowReview(2, _split_audio(), pace=pace)


def test_the_segments_a_tail_starts_with_are_still_judged_by_the_skip_check():
    """A tail is decoded with the segments of the last 5 s before it, and they stay the
    window's own: the skip check still judges them. When they were handed to the tail,
    "The last program is a free program ..." invented over 9 s of closing music (base)
    escaped the check that had dropped it (its halves no speech)."""
    audio = speech_like(25.0)  # sound throughout: the tail after 20 s is decoded again
    first = res(seg(0.0, 4.0, " Hello there, this is how it starts."), seg(4.0, 20.0, " Thank you."))

    def decode(r):
        if r.kind == "window":
            return first
        if r.kind == "split":
            return res(seg(0.0, 2.0, " ."), ns=0.9, lp=-1.5)  # each half: no speech
        return res(seg(0.0, 16.0, " Thank you."))  # the tail: the same words, nothing after

    dec = FakeDecoder(decode)
    out = drive(WindowReview(0, audio, pace=Pace()), dec)
    assert sorted(r.kind for r in dec.seen) == ["split", "split", "tail", "window"]
    assert [r.start for r in dec.seen if r.kind == "tail"] == [4 * SAMPLE_RATE]
    assert [s.text for s in out.segments] == [" Hello there, this is how it starts."]


def test_a_tail_after_a_one_word_segment_is_not_lost():
    """The re-decode's new words are found after the context's last two words at least,
    so a context of one word ("Okay.") could never add any: the context starts a segment
    earlier where there is one, else the tail is decoded alone (the job's end: not at all)."""
    audio = speech_like(25.0)

    def run(first, final=False):
        def decode(r):
            if r.kind == "window":
                return first
            return res(seg(0.0, 3.0, " Right. Okay."), seg(3.0, 9.0, " The next sentence is here."))

        dec = FakeDecoder(decode)
        out = drive(WindowReview(0, audio, final=final), dec)
        return [(r.kind, r.start) for r in dec.seen], [s.text for s in out.segments]

    # "Okay." alone after the window's first segment: the tail is decoded alone from its end.
    lone = res(seg(0.0, 12.0, " This is how it starts, at some length."), seg(12.0, 14.0, " Okay."))
    kinds, texts = run(lone)
    assert kinds == [("window", 0), ("tail", 14 * SAMPLE_RATE)]
    assert texts[-1] == " The next sentence is here."
    # A segment before "Okay." (not at the window's start): the context starts there, though
    # "Okay." alone starts 5 s before the tail.
    two = res(seg(0.0, 4.0, " This is how it starts."), seg(4.0, 8.0, " Right."), seg(8.0, 14.0, " Okay."))
    kinds, texts = run(two)
    assert kinds == [("window", 0), ("tail", 4 * SAMPLE_RATE)]
    assert texts == [" This is how it starts.", " Right.", " Okay.", " The next sentence is here."]
    # The job's end after "Okay." alone: nothing to go on from, not decoded again.
    end = res(seg(0.0, 12.0, " This is how it starts, at some length."), seg(12.0, 24.6, " Okay."))
    assert run(end, final=True)[0] == [("window", 0)]
