"""Transcript quality: the settings of every rule (``QualityConfig``) and the judgments on
one decode: whether to decode it again hotter, whether it says nothing, which segments are
junk or repeats, which attempt to keep.

No IPC and no torch here. The infer stage feeds each window through a
``stages.review.WindowReview``, which applies these and the rules over a window's segments
(the tail re-decode, the skip check, quiet speech between segments), and runs the decode
requests it asks for in its batches (issue 8). A job's speaking rate, which the skip
check reads, is ``stages.pace``. Each rule was measured on real tiny.en and base weights
against sequential long-form decoding (see README, Accuracy):

- **Energy gate** (``stages.levels.gate``): a window that is digital silence, or whose level never rises
  above its own steady background (hum, hiss, fan noise), is not decoded at all. Whisper
  transcribes 90 s of silence as "you" and pink noise as "." or invented sentences; a
  level contrast is not a VAD model, only a test that something louder than the floor
  happens in the window. Where the whole band shows no contrast, the voice band
  (100-1000 Hz) may: speech 3 dB over white noise is decoded (``window_levels``).
  Those measures are in ``stages.levels``.
- **Temperature fallback** (openai/whisper ``decode_with_fallback``): a decode whose text
  compresses too well (a repetition loop) or whose mean token log-probability is too low
  is decoded again at the next temperature, sampled reproducibly; if every temperature
  fails, ``best_attempt`` keeps one: a likely text that two attempts say word for word
  (speech that really repeats itself) before the best one that did not loop
  (faster-whisper's choice), else the last. A job's own ``temperature`` (OpenAI's
  request field) is where each decode starts: the fallback takes the rungs above it.
  A decode with no word in it (dots that "loop") is not retried: sampling it hotter over
  music gave "Thank you." where the model had heard nothing.
- **No-speech rule** (openai/whisper): a decode whose no-speech probability is high and
  whose mean log-probability is low gives no text. A tail re-decode (below) gives none
  when its no-speech probability alone is high: over its few tokens the mean
  log-probability says little ("you" over a noise tail: -0.97, no-speech 0.94).
- **Repeats**: a segment of ``repeat_min_words`` words or more saying again, word for
  word, what was said just before it (in its window, or before a re-decode's cut) is
  dropped: Whisper re-reading its context where the audio gives it nothing (kept going
  by the end-of-text veto into noise after the last sentence, it wrote that sentence
  again). So is one whose last ``near_repeat_min_words`` words or more, most of it, are
  the last words said before it: the same re-reading with a new start.
- **Junk segments**: a segment with no letter or digit (".", "...", "-") is dropped: it
  carries nothing a reader wants, and in noise Whisper fills a window with them.
Audio is 16 kHz mono float32 (``pipeline.constants``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.constants import NO_SPEECH_THRESHOLD
from pipeline.types import Segment, WindowResult

_WORD_CHAR = re.compile(r"\w")  # any letter or digit, in any script


@dataclass(frozen=True)
class QualityConfig:
    """The thresholds (openai/whisper's defaults where it has one)."""

    # False: every window is decoded once, greedy, and kept as decoded (no gate, veto,
    # fallback, filters or re-decodes): the baseline the machinery is measured against.
    enabled: bool = True
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = NO_SPEECH_THRESHOLD
    temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)  # after the greedy decode
    # Loudest 50 ms frame below this: a silent window (digital silence measures -100 to
    # -120, 16-bit dither about -93). Whisper hears speech far below everyday levels
    # (jfk.flac turned down 60 dB, its loudest frame at -68 dBFS, word for word).
    silence_dbfs: float = -80.0
    # A frame under this is no sound (a word's fading end, a breath at -70), unless the
    # window is quiet all over: then a frame ``sound_range_db`` under its loudest is none.
    quiet_dbfs: float = -60.0
    sound_range_db: float = 40.0
    steady_spread_db: float = 10.0  # 95th - 10th percentile frame level below this, and
    steady_peak_db: float = 12.0  # loudest frame - median below this: a steady window
    tail_min_s: float = 1.0  # a dropped tail shorter than this is not decoded again
    # A frame this far above the window's floor is sound; under a steady background
    # (noise, music) the rise is half the window's level spread, at least ``min_speech_rise_db``.
    speech_rise_db: float = 10.0
    min_speech_rise_db: float = 3.0
    tail_speech_s: float = 0.3  # ... and a tail needs this much of it to be re-decoded
    # A last segment spanning a pause this long, with this much sound after the pause
    # inside it, may have swallowed a sentence: what follows the pause is decoded again,
    # from this long before the sound resumes.
    inner_pause_s: float = 2.0
    inner_sound_s: float = 1.0
    inner_margin_s: float = 0.4
    max_tail_redecodes: int = 1  # per window (a backstop behind the decoder's veto)
    # A tail with no loud sound but this much of the voice band's (``audible``): quiet
    # speech after loud, decoded alone (``WindowReview._quiet_tail``). 0: never.
    quiet_tail_sound_s: float = 1.0
    # ... and quiet speech between segments that no segment's words say: at least this
    # much of it, where neither segment beside it says more than ``quiet_fit`` times what
    # the job's pace predicts for its own loud sound (``WindowReview._quiet_between``),
    # decoded alone. Frames ``quiet_under_db`` under the window's loudest are the quiet
    # speech's, not a loud segment's. 0: never.
    quiet_gap_sound_s: float = 1.0
    quiet_fit: float = 1.5
    quiet_under_db: float = 30.0
    # Every tail (the job's end too) is decoded again together with the window's segments
    # of the last this-many seconds before it; only words after theirs are added. 0: alone.
    tail_context_s: float = 5.0
    # The end of a job's last window: nothing comes after it to hear a dropped last word,
    # so a shorter tail is decoded again, measured from the last segment's end, no slack.
    end_tail_min_s: float = 0.25
    end_tail_speech_s: float = 0.1
    # ... and so does a window cut inside sound: half its last this-many seconds loud (the
    # chunker found no pause in its last 10 s: music or babble under the speech, or speech
    # with no pause). The words at the cut are half in the next window, which starts
    # mid-word and often drops them (chords 10 dB under a reading, base: "and that you
    # know you can" lost at a cut 0.92 s after the last segment's end). 0: never.
    cut_tail_sound_s: float = 0.3
    # The mean log-probability test needs this many tokens: over a short decode (a tail of
    # a few words) it is dominated by the uncertain timestamp and end tokens.
    logprob_min_tokens: int = 16
    max_words_per_sound_s: float = 10.0  # more words than this per second of sound: invented
    # A segment of at least this many words that says again the words just before it
    # (Whisper re-reading its context into noise or silence) is dropped; 0: never.
    repeat_min_words: int = 3
    # ... and one whose last words (this many at least, and ``near_repeat_share`` of its
    # words) are the last words said before it, with a different start ("The code means
    # any un-sourced form of the work." after "Object code means ..." over applause).
    near_repeat_min_words: int = 6
    near_repeat_share: float = 0.75
    timing_slack_s: float = 0.3
    # A segment over this much sound saying under ``skip_ratio`` of what the job's pace
    # predicts (and ``skip_min_units`` letters short) is decoded again in two halves.
    skip_min_sound_s: float = 8.0
    # ... and a half that replaced such a segment, over this much: the model is known to
    # jump there, and a half holds 30-70% of the sound the segment had (at least 8 s).
    # Speech at -45 dBFS over hiss: the first half of a 13 s segment said " the" over 9 s
    # (6.95 s of sound) and 36 words were lost; its halves say them (garbled, as the
    # window around them: 29 words deleted become 2, the longest run lost 9 words of 1).
    half_skip_min_sound_s: float = 4.0
    skip_ratio: float = 0.65
    skip_min_units: int = 60
    # The pace the skip check assumes while the job has fewer than 3 segments of its own
    # (its first window or two): letters per second of sound, below any speech measured
    # (espeak-ng at 110 words a minute: 8.3 at its slowest segment, 10.5 its median; the
    # test readings 12-19), so that only a segment saying next to nothing over long sound
    # is decoded again: Whisper's "Thank you." over a 20 s music intro. 0: no check then.
    skip_prior_rate: float = 6.0

    def __post_init__(self):
        if any(not 0 < t <= 2 for t in self.temperatures) or list(self.temperatures) != sorted(
            self.temperatures
        ):
            raise ValueError("fallback temperatures must rise, each in (0, 2]")
        if self.max_tail_redecodes < 0 or self.tail_min_s <= 0:
            raise ValueError("max_tail_redecodes must be >= 0 and tail_min_s positive")
        if not 0 < self.end_tail_min_s <= self.tail_min_s or self.end_tail_speech_s < 0:
            raise ValueError("end_tail_min_s must be positive and at most tail_min_s; end_tail_speech_s >= 0")
        if not self.silence_dbfs <= self.quiet_dbfs or self.sound_range_db <= 0:
            raise ValueError("silence_dbfs must be at most quiet_dbfs, and sound_range_db positive")
        if self.repeat_min_words < 0:
            raise ValueError("repeat_min_words must be >= 0 (0: never drop a repeat)")
        if not 0 <= self.cut_tail_sound_s <= self.tail_min_s:
            raise ValueError("cut_tail_sound_s must be from 0 (never) to tail_min_s")
        if self.quiet_tail_sound_s < 0:
            raise ValueError("quiet_tail_sound_s must be >= 0 (0: no quiet tail is decoded)")
        if self.quiet_gap_sound_s < 0 or self.quiet_fit <= 0 or self.quiet_under_db <= 0:
            raise ValueError("quiet_gap_sound_s must be >= 0 (0: never), quiet_fit and quiet_under_db positive")
        if self.tail_context_s < 0:
            raise ValueError("tail_context_s must be >= 0 (0: a tail is decoded alone)")
        if not 0 < self.half_skip_min_sound_s <= self.skip_min_sound_s:
            raise ValueError("half_skip_min_sound_s must be positive and at most skip_min_sound_s")
        if self.skip_prior_rate < 0:
            raise ValueError("skip_prior_rate must be >= 0 (0: no skip check before the job's own pace)")
        if self.near_repeat_min_words < 1 or not 0 < self.near_repeat_share <= 1:
            raise ValueError("near_repeat_min_words must be >= 1 and near_repeat_share in (0, 1]")


# ---------------------------------------------------------------------------- decisions


def is_junk(text: str) -> bool:
    """A segment with no letter or digit (".", "-", "...")."""
    return not _WORD_CHAR.search(text)


def plain_words(text: str) -> list[str]:
    """A text's words, lower case, without punctuation (for comparing texts)."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def repeats(words: list[str], before: list[str], cfg: QualityConfig) -> bool:
    """A segment saying again, word for word, what was said just before it: Whisper
    re-reading its own context where the audio gives it nothing to read (after the
    end-of-text veto kept a window going into noise, it wrote "And the mayor will open
    it." then "The Mayor will open it." over the noise). ``repeat_min_words`` words at
    least, so that a short real repeat ("No, no.") stays.

    Whisper also re-reads its context with a new start: over applause after "Object code
    means any un-sourced form of the work." it wrote "The code means any un-sourced form
    of the work." twice; over laughter after "... explains that there is no warranty
    for this free software." it wrote "The Mailer's Net There is no warranty for this
    free software." So a segment whose last ``near_repeat_min_words`` words or more, at
    least ``near_repeat_share`` of its words, are the last words said before it is a
    repeat too. A speaker's own refrain that changes only its first word or two
    ("... no warranty for this free software. And no warranty for this free software.")
    goes with it, as an exact refrain of three words or more always did."""
    n = len(words)
    if cfg.repeat_min_words == 0 or n < cfg.repeat_min_words:
        return False
    same = 0  # the last words the segment and what came before it share
    while same < min(n, len(before)) and words[-1 - same] == before[-1 - same]:
        same += 1
    return same == n or (same >= cfg.near_repeat_min_words and same >= cfg.near_repeat_share * n)


def too_fast(seg: Segment, loud: np.ndarray, cfg: QualityConfig) -> bool:
    """A segment claiming more words than the sound under it could hold: more than
    ``max_words_per_sound_s`` words per second of loud 50 ms frames within its span
    (widened by ``timing_slack_s`` each side: timestamps are a few hundred ms off at
    times). Whisper writes such segments into silence (a sentence repeated after speech
    ended, "Thank you." in a pause); no speaker says 14 words in 0.3 s.

    seg: window seconds; loud: the window's frames with sound (``WindowReview`` passes
    ``audible_frames``: this check drops words, so it counts sound generously)."""
    words = len(seg.text.split())
    a = max(0, int((seg.start - cfg.timing_slack_s) * 20))
    b = max(a, int(np.ceil((seg.end + cfg.timing_slack_s) * 20)))
    sound_s = float(np.count_nonzero(loud[a:b])) / 20.0
    return words > cfg.max_words_per_sound_s * max(sound_s, 0.0) and words >= 2


def needs_fallback(result: WindowResult, cfg: QualityConfig) -> bool:
    """openai/whisper's retry test: a loop (compresses too well) or an unlikely text.

    A decode that says no word at all (only punctuation: " . . . .") is not retried: its
    "loop" is the model writing nothing, again and again, and sampling hotter can only add
    words the greedy decode did not hear. Over 20 s of music (chords) tiny.en wrote 19
    dots, confidently (mean log-probability -0.19), compressing at 3.15; the fallback's
    sample at 0.4 was "Thank you.", where sequential decoding writes nothing."""
    if not _words(result):
        return False
    if result.compression_ratio is not None and result.compression_ratio > cfg.compression_ratio_threshold:
        return True
    return (
        result.avg_logprob is not None
        and result.n_tokens >= cfg.logprob_min_tokens
        and result.avg_logprob < cfg.logprob_threshold
    )


def is_no_speech(result: WindowResult, cfg: QualityConfig) -> bool:
    """openai/whisper's skip test: the model thinks there is no speech and its text is
    unlikely (a confident transcript overrides the no-speech probability)."""
    if result.no_speech_prob is None or result.no_speech_prob <= cfg.no_speech_threshold:
        return False
    return result.avg_logprob is None or result.avg_logprob < cfg.logprob_threshold


def best_attempt(attempts: list[WindowResult], cfg: QualityConfig) -> WindowResult:
    """When every temperature failed, in this order of preference (best mean
    log-probability within each):

    1. attempts that neither loop nor are unlikely (none, unless too short to judge);
    2. likely attempts (log-probability above the line) of which another likely attempt
       says the very same words: speech that really repeats itself (a sentence said twice
       in a window compresses past 2.4, at every temperature, while only the hottest
       sample breaks the "loop", into text the model itself finds unlikely: "so milen").
       A loop of the model's own rarely survives sampling word for word;
    3. attempts that did not loop (faster-whisper's choice);
    4. else the last attempt (openai/whisper's)."""

    def likely(a):
        return a.avg_logprob is not None and a.avg_logprob >= cfg.logprob_threshold

    def loops(a):
        return a.compression_ratio is not None and a.compression_ratio > cfg.compression_ratio_threshold

    def best(group):
        return max(group, key=lambda a: a.avg_logprob if a.avg_logprob is not None else -np.inf)

    fine = [a for a in attempts if not loops(a)]
    sure = [a for a in fine if likely(a)]
    if sure:
        return best(sure)
    said = [(a, _words(a)) for a in attempts if likely(a)]
    agreed = [a for a, w in said if w and sum(w == v for _, v in said) >= 2]
    if agreed:
        return best(agreed)
    if fine:
        return best(fine)
    return attempts[-1]


def _words(result: WindowResult) -> tuple[str, ...]:
    """A decode's words, lower case, without punctuation: what two attempts must share."""
    return tuple(plain_words("".join(s.text for s in result.segments)))


def compression_ratio(text: str) -> float:
    """gzip compression ratio of a text (openai/whisper's repetition signal: a loop like
    "to benefit, to benefit, ..." compresses far better than speech)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def text_units(text: str) -> int:
    """How much a text says, in any script: its letters and digits (an English word is
    about 4.5 of them; scripts written without spaces count the same way)."""
    return len(_WORD_CHAR.findall(text))
