"""Sound levels of a window: where its sound is, for the energy gate and the checks of
``stages.review`` and ``stages.pace`` (which read them against ``QualityConfig``).

Not a VAD model: a frame's level against the window's own floor. Levels are over 50 ms
frames (``FRAME``), in dBFS, of the whole band (``frame_levels``) or, over broadband
noise, of the voice band (``voice_levels``, 100-1000 Hz). (The chunk stage measures its
own, over 10 ms frames of the signal's first difference: ``stages.chunk.frame_levels``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.constants import SAMPLE_RATE

if TYPE_CHECKING:
    from stages.quality import QualityConfig

FRAME = SAMPLE_RATE // 20  # 50 ms frames for level measurements
VOICE_BAND_HZ = (100.0, 1000.0)  # where voiced speech has most of its energy


def frame_levels(audio: np.ndarray) -> np.ndarray:
    """Level of each 50 ms frame in dBFS: audio (n,) float32 -> (n // 800,) float64.
    A sine at full scale is -3 dBFS; digital silence is -120.

    Measured around the audio's mean (its DC offset), which is no sound: a cheap recorder's
    offset of 2% of full scale (-34 dBFS) under speech at -35 dBFS made nearly every frame
    of it a quiet one, and the pace check then dropped the whole transcript as words
    spoken where there was no sound. The mean of audio without an offset is tiny (speech
    swings both ways), so its levels hardly change (digital silence inside a window with
    speech measures about -100 dBFS, not -120: far below every threshold; every test-set
    transcript stayed word for word the same)."""
    n = len(audio) // FRAME
    if n == 0:
        return np.full(1, -120.0)
    x = np.asarray(audio[: n * FRAME], dtype=np.float64)
    x = (x - x.mean()).reshape(n, FRAME)
    return 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-12)


def gate(levels: np.ndarray, cfg: QualityConfig) -> str | None:
    """Why a window need not be decoded: "silent", "steady", or None (decode it).

    levels: ``frame_levels`` of the window's real audio (not its padding).
    """
    if levels.max() < cfg.silence_dbfs:
        return "silent"
    p10, p50, p95 = np.percentile(levels, (10, 50, 95))
    if p95 - p10 < cfg.steady_spread_db and levels.max() - p50 < cfg.steady_peak_db:
        return "steady"
    return None


def voice_levels(audio: np.ndarray) -> np.ndarray:
    """Level of each 50 ms frame in the voice band (``VOICE_BAND_HZ``), in dB like
    ``frame_levels``: audio (n,) float32 -> (n // 800,) float64.

    Voiced speech carries most of its energy there, broadband noise little of its own
    (white noise a ninth, pink noise from 20 Hz two fifths): with speech as loud as white
    noise, levels spread 15 dB there (95th - 10th percentile) and 7 dB over the whole
    band. A Hann-windowed FFT per frame, the power of the bins in the band."""
    n = len(audio) // FRAME
    if n == 0:
        return np.full(1, -120.0)
    x = np.asarray(audio[: n * FRAME], dtype=np.float64)
    x = (x - x.mean()).reshape(n, FRAME) * np.hanning(FRAME)
    power = np.abs(np.fft.rfft(x, axis=1)) ** 2
    hz = np.fft.rfftfreq(FRAME, 1.0 / SAMPLE_RATE)
    band = (hz >= VOICE_BAND_HZ[0]) & (hz < VOICE_BAND_HZ[1])
    return 10.0 * np.log10(power[:, band].sum(axis=1) / FRAME + 1e-12)


def window_levels(audio: np.ndarray, cfg: QualityConfig) -> tuple[np.ndarray, str | None, bool]:
    """(levels, gate, noisy): a window's 50 ms frame levels and its ``gate``, from the
    whole band (``frame_levels``), or from the voice band (``voice_levels``) where only
    that shows the contrast of speech (``noisy``: True).

    Speech 3 dB over white or pink noise, or as loud as white noise, moves the whole
    band's level by 7-10 dB between its 95th and 10th percentile: "steady", never
    decoded, an empty transcript where sequential decoding got half the words or more. In
    the voice band the same windows spread 13-18 dB, and the noise alone 3-5 dB
    (``scripts/noise_snr.py``'s mixes). Such a window is decoded,
    and its sound (``loud_frames``: the pace check, the veto, tails) is measured there,
    a frame ``min_speech_rise_db`` over the floor counting as sound. Every other window
    keeps the whole band's levels."""
    levels = frame_levels(audio)
    why = gate(levels, cfg)
    if why == "steady":
        voice = voice_levels(audio)
        if gate(voice, cfg) is None:
            return voice, None, True
    return levels, why, False


def loud_frames(levels: np.ndarray, cfg: QualityConfig, noisy: bool = False) -> np.ndarray:
    """Which 50 ms frames hold sound: (F,) bool, a frame rising above the window's floor
    (its 10th percentile level) and above ``quiet_level``.

    The rise is ``speech_rise_db``, or half the window's spread (95th - 10th percentile)
    where that is less, but at least ``min_speech_rise_db``. Between sentences of a quiet
    room the floor is tens of dB down, and the spread is 21-60 dB in every window of the
    test readings and of the shared recordings,
    so nothing changes there. Over a steady background the floor is the background:
    speech 6 dB above white noise, or as loud as music, rises only 3-8 dB over it, so
    with a fixed 10 dB hardly a frame counted as sound (2 s of 15 s of speech), and the
    pace check dropped every segment as words said over silence: an empty transcript
    where sequential decoding got most of the words.

    ``noisy`` (voice-band levels of a window over broadband noise, ``window_levels``):
    the rise is ``min_speech_rise_db``. With half the spread (6.5 dB) as the rise, the
    pace check dropped 11 of 42 words said 3 dB over pink noise that sequential decoding
    kept. The noise alone spreads 3 dB there, so a 3 dB rise still finds text invented
    over noise far too fast for its sound."""
    floor_db, top_db = (float(v) for v in np.percentile(levels, (10, 95)))
    rise = min(cfg.speech_rise_db, max(cfg.min_speech_rise_db, (top_db - floor_db) / 2.0))
    if noisy:
        rise = cfg.min_speech_rise_db
    return levels > max(floor_db + rise, quiet_level(levels, cfg))


def quiet_level(levels: np.ndarray, cfg: QualityConfig) -> float:
    """The level under which a frame is no sound whatever the window's floor:
    ``quiet_dbfs``, or ``sound_range_db`` under the window's loudest frame where that is
    lower, but never under ``silence_dbfs``.

    Relative for a quiet recording: with -60 dBFS for everyone, jfk.flac turned down 50 dB
    (its loudest frame at -58 dBFS) had 0.45 s of its 11 s counted as sound, the check
    for words said over silence dropped every word, and the transcript was empty, exit
    code 0, where sequential decoding and ``--plain`` wrote it word for word (turned down
    60 dB the gate called it silent). Every window of the test readings and the shared
    recordings peaks at -18 dBFS or more, where the level is -60 as before."""
    return max(min(cfg.quiet_dbfs, float(levels.max()) - cfg.sound_range_db), cfg.silence_dbfs)


def heard_frames(audio: np.ndarray, levels: np.ndarray, loud: np.ndarray, cfg: QualityConfig,
                 noisy: bool = False) -> np.ndarray:  # fmt: skip
    """Frames that may hold speech, for the checks that weigh words against the sound
    under them (the pace: ``too_slow`` and the rates it is judged by; ``too_fast`` reads
    these and more, ``audible_frames``): ``loud``, and over a background (a whole-band
    level spread under twice ``speech_rise_db``: every window of the test readings
    spreads more) also the frames ``min_speech_rise_db`` over the voice band's floor.

    Each check errs on its safe side. Speech 5-6 dB over white noise is not steady (the
    whole band's levels are kept), yet it rises only 3-8 dB over them: half its frames
    counted as sound, and ``too_fast`` dropped its sentences (the first of three, 12 of
    42 words; JFK's last words 5 dB over white noise, which sequential decoding kept).
    In the voice band, where broadband noise has less of its power, the speech shows; so
    do a few frames of the noise alone (it spreads 3-5 dB there). That is the safe side
    for a check that drops words, not for those that decode more because sound is left
    (the end-of-text veto, which keeps a decoder going; tails): they keep ``loud``. The
    cost: a garbled segment the old count dropped by luck now stays ("shortly after the
    November of the month." over noise, where the dropped segment's tail, decoded again,
    said "shortly after 11 o'clock.").

    The pace reads these frames too, for its rates and for the sound under a segment: a
    ratio, so a count of sound that is the same for both cancels, but not against the
    ``skip_min_sound_s`` the check needs under a segment. Speech at -45 dBFS over hiss
    at -75 (whole band spread 15 dB) had 5.5 s of ``loud`` under a 13 s segment that
    held 5 of some 40 words ("purpose computers but in both-"); the check never ran and
    36 words were lost (sequential decoding lost none). With the voice band it has 9.6 s,
    the halves are decoded; the first, decoded from the same start, said only "the" over
    9 s, and the longest run lost was 9 words, until a half is judged over less sound
    (``half_skip_min_sound_s``): its halves say them, and the longest run lost is 1.
    A segment written over a background with no speech under it is the no-speech rule's
    to drop, halves and all: over the audit's music and noise mixes no transcript changed
    but two, where base's sign-offs invented over music after the speech ("If you
    enjoyed this video, please subscribe ...") went."""
    if noisy or len(levels) == 0 or _spread(levels) >= 2 * cfg.speech_rise_db:
        return loud
    voice = loud_frames(voice_levels(audio), cfg, noisy=True)
    n = min(len(loud), len(voice))
    out = loud.copy()
    out[:n] |= voice[:n]
    return out


def audible_frames(audio: np.ndarray, heard: np.ndarray, cfg: QualityConfig) -> np.ndarray:
    """Frames where the model may have heard words, for the one check that drops words as
    said over no sound (``too_fast``): ``heard``, and the frames of the voice band
    ``speech_rise_db`` over its floor, at any level over ``silence_dbfs``.

    ``loud`` and ``heard`` judge a frame against the window's loudest speech: under
    ``quiet_dbfs`` (-60) it is no sound, and over a room's floor it must rise 10 dB. A
    call's far participant 35-40 dB under the near one (espeak-ng at -59 and -64 dBFS over
    a floor at -70, in windows where the near one peaks at -17) passes neither, yet the
    model transcribes him: ``too_fast`` dropped his sentences, word-perfect ones too
    (0.75 s of sound counted under a 5.5 s sentence), and lost runs of 21 and 40 words that
    ``--plain`` kept. Whisper normalises each window to its loudest 80 dB, so such a voice
    is well within what it hears. In the voice band a room's broadband floor is lower and
    the voice stands out; a 10 dB rise there still leaves out the floor alone (it spreads
    3-5 dB) and the fading ends of words count a little, which only weakens the check by
    a word or two around real speech. The checks that decode more, and the pace, keep
    their own frames (this one errs on the side of keeping words). ``WindowReview``
    measures these only where ``heard`` already finds a segment too fast."""
    voice = voice_levels(audio)
    floor = float(np.percentile(voice, 10))
    over = voice > max(floor + cfg.speech_rise_db, cfg.silence_dbfs)
    n = min(len(heard), len(over))
    out = heard.copy()
    out[:n] |= over[:n]
    return out


def _spread(levels: np.ndarray) -> float:
    """95th - 10th percentile of frame levels, dB."""
    p10, p95 = np.percentile(levels, (10, 95))
    return float(p95 - p10)


def sound_profile(loud: np.ndarray) -> np.ndarray:
    """Cumulative seconds of sound at each 50 ms frame boundary: (F + 1,) float32, from
    ``loud_frames``. The decoder's end-of-text veto reads it (``stages.infer.EotVeto``)."""
    return np.concatenate([[0.0], np.cumsum(loud) * (FRAME / SAMPLE_RATE)]).astype(np.float32)


def loud_seconds(loud: np.ndarray, t0: float, t1: float) -> float:
    """Seconds of loud 50 ms frames within [t0, t1) (window seconds)."""
    a, b = max(0, int(t0 * 20)), max(0, int(np.ceil(t1 * 20)))
    return float(np.count_nonzero(loud[a:b])) / 20.0
