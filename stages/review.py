"""A window's review: which spans of a window to decode again, and what its transcript is,
from one or more decodes (``WindowReview``; issue 8).

No IPC and no torch here: the infer stage feeds each window through a ``WindowReview`` and
runs the decode requests it asks for in its batches, with the requests of other windows.
Each decode is judged by the rules of ``stages.quality`` (energy gate, temperature
fallback, no-speech rule, repeats, junk); the rules here work over a window's segments,
each measured on real tiny.en and base weights against sequential long-form decoding (see
README, Accuracy):

- **Tail re-decode**: Whisper often ends a window early, stopping at a sentence end with
  seconds of speech still to come (greedy ``generate`` on windows cut at quiet points lost
  a 21-word run on a 10-minute reading that way). When the last complete segment ends
  at least ``tail_min_s`` before the window's audio does and the rest holds speech, the
  rest is decoded again, as a window of its own that starts with the segments of the
  last ``tail_context_s`` before it: those segments stand as they were, and only the
  words the re-decode says after their last words are added. This is openai's seek
  step, taken only where a window dropped speech, so windows stay independent and
  batched instead of sequential. The sentences before it are what keep the model from
  inventing: a tail of applause or laughter decoded alone, before 26 s of padding, came
  back as "Thank you. Thank you."; decoded with the sentence before it, nothing. At the
  end of a job's last window (``final``), where no later window hears what this one
  dropped, a tail from ``end_tail_min_s`` on is decoded again the same way (a reading
  that ends mid-speech lost its last word, "lines", 0.44 s after the last segment's end);
  and at the end of a window cut inside sound (no pause in its last 10 s, under music or
  babble), whose next window starts mid-word and drops the words at the cut.
  A tail needs sound after the last segment: the gate is the sound, not the text. Where
  only the voice band hears it (sentences 40 dB under the ones before them, under the
  window's ``quiet_level``), it is decoded alone: with the loud sentences as context,
  Whisper's scaling to the loudest hides the quiet ones again. An open last segment
  (no end timestamp: the model ran into the window's end) is decoded again with the
  tail; where the re-decode does not say the words before it, so that nothing it says
  can be placed, the open segment stands, as sequential decoding keeps one, unless it
  loops.
- **Skip check**: a segment saying far less than the sound under it at the job's pace
  (``too_slow``) is decoded again in two halves, kept if the halves say more, and dropped
  if the no-speech rule empties both (nothing is said there: "Music" over chords). A half
  kept but itself too slow is halved once more. Before the job has a pace of its own, a
  prior slower than any speech stands for it ("Thank you." over a music intro). The
  sound under a segment is what the pace reads (``heard``); a long segment is also
  weighed against all it may have heard (``audible``): music as loud as speech counts
  only at its chords' attacks, and "Thank you for watching!" over 16.6 s of closing
  music had 3.7 s of sound under it, too little to judge. A half is judged over less
  sound than a segment (``half_skip_min_sound_s``): the model is known to jump there.
- **Quiet speech between segments** (``_quiet_between``, after the skip check): a
  stretch before a segment's loud words that only the voice band hears, where the
  segments beside it say no more than the pace predicts for their loud sound, is
  decoded alone, as a quiet tail is: Whisper stamps a loud sentence over the quiet one
  after it and writes none of it.

Times here are seconds from the window's start unless said otherwise; audio is 16 kHz
mono float32 (``pipeline.constants``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.constants import N_SAMPLES, SAMPLE_RATE
from pipeline.types import Segment, WindowResult
from stages.levels import FRAME, audible_frames, heard_frames, loud_frames, loud_seconds, sound_profile, window_levels
from stages.pace import Pace, too_slow
from stages.quality import (
    QualityConfig,
    best_attempt,
    compression_ratio,
    is_junk,
    is_no_speech,
    needs_fallback,
    plain_words,
    repeats,
    text_units,
    too_fast,
)

logger = logging.getLogger(__name__)


def _token(word: str) -> str:
    """A whitespace token of a transcript as ``plain_words`` reads it, in one piece (for
    anchoring: "semicolon-separated" -> "semicolonseparated")."""
    return "".join(plain_words(word))


def _last_words(words: list, tokens: list[str]) -> tuple:
    """The last of a decode's timed words that spell ``tokens`` (its last whitespace
    tokens), letter for letter; () when they do not. Timed words are not whitespace
    tokens: OpenAI's word grouping joins a lone opening mark to the word after it (" -",
    a quote), and a language written without spaces has a word per token or character,
    so they are matched by their letters, from the end."""
    want, got = "".join(_token(t) for t in tokens), ""
    for i in range(len(words) - 1, -1, -1):
        got = _token(words[i].word) + got
        if got == want and want:
            return tuple(words[i:])
        if len(got) > len(want):
            break
    return ()


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _short(segments, limit: int = 80) -> str:
    """Segments' text for a log line, cut to ``limit`` characters."""
    text = "".join(s.text for s in segments).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Request:
    """One decode a window review asks for: its audio from ``start`` to ``end`` (samples
    from the window's start), decoded at ``temperature`` (0: greedy) with ``seed``."""

    window: int  # the window's index in its job
    start: int
    end: int
    temperature: float = 0.0
    seed: int = 0
    kind: str = "window"  # "window" | "fallback" | "tail" | "split" | "language": figures, logs
    # A re-decode's language: the one the window's own decode found, where the job set
    # none. A few seconds of a tail or a split decoded alone may be taken for another
    # language ("Genau, ja." at the end of a German reading came out as Chinese, "呀").
    language: str | None = None


@dataclass
class _Span:
    """A stretch of the window decoded as one request, and what its decodes gave."""

    start: int
    end: int
    depth: int  # 0: the window itself; 1: a re-decode of part of it
    attempts: list = field(default_factory=list)  # WindowResults, in order
    temperatures: list = field(default_factory=list)  # the temperature each was asked at
    group: object = None  # a split: the _Split this half belongs to
    tail: bool = False  # decoded again because the span before it left this part untranscribed
    # A tail decoded with the segments before it (``WindowReview._tail``): they stand, and
    # only the words the re-decode says after their last words are added.
    context: tuple = ()
    # The open last segment (no end timestamp: the model ran into the window's end) that
    # the tail was decoded again to replace. It stands where the re-decode cannot be
    # placed after ``context`` (``_went_on`` finds none of its last words).
    dropped: Segment | None = None


@dataclass
class _Split:
    """A segment decoded again in two halves: kept if the halves say more; dropped if the
    no-speech rule empties both."""

    owner: tuple  # (start, end) of the span whose segment it may replace
    old: Segment
    level: int = 1  # 2: the halves of a half
    halves: dict = field(default_factory=dict)  # half start -> segments, once decoded
    silent: set = field(default_factory=set)  # starts of the halves the no-speech rule emptied


KINDS = ("window", "fallback", "tail", "split", "language")


class WindowReview:
    """Decides a window's transcript from one or more decodes.

    ``audio``: the window's real samples (no padding), float32, at most 30 s. ``pace``:
    the job's ``Pace``, shared by its reviews (None: no skip check). ``temperature``: the
    job's own (OpenAI's request field): every span's first decode is sampled at it (0:
    greedy) and the fallback goes on from the rungs of ``cfg.temperatures`` above it.
    Call ``requests()`` for what to decode first, then ``feed(request, result)`` with each result, which
    returns the further requests it needs (a fallback, a tail, the halves of a split);
    when ``done``, ``result()`` is the window's final WindowResult (times from the window's
    start). One review per window; requests of many windows share batches.
    """

    def __init__(
        self,
        index: int,
        audio: np.ndarray,
        cfg: QualityConfig = QualityConfig(),
        pace: Pace | None = None,
        temperature: float = 0.0,
        final: bool = False,
        language: str | None = None,
        hold_if=None,
    ):
        if len(audio) > N_SAMPLES:
            raise ValueError(f"a window holds at most {N_SAMPLES} samples, not {len(audio)}")
        self.index = index
        self.audio = audio
        self.cfg = cfg
        self.pace = pace
        self.temperature = float(temperature)
        self.final = final  # the job's last window: its audio runs to the job's end
        self.levels, self.gated, noisy = window_levels(audio, cfg)
        self.loud = loud_frames(self.levels, cfg, noisy)
        # What the pace reads (the veto and tails read ``loud``): see ``heard_frames``.
        self.heard = self.loud if not cfg.enabled or self.gated else heard_frames(audio, self.levels, self.loud, cfg, noisy)
        self._audible: np.ndarray | None = None  # ``audible``, measured when first needed
        self._rising: np.ndarray | None = None  # ``rising``, likewise
        self._pending: set[Request] = set()
        self._spans: dict[tuple[int, int], _Span] = {}  # by (start, end) sample
        self._final: dict[tuple[int, int], list[Segment]] = {}  # span -> its kept segments
        self._first: WindowResult | None = None
        self._kept: WindowResult | None = None  # the window's own decode that was kept
        self._asked = False
        self.counts = dict.fromkeys(KINDS, 0)
        # The skip check waits for the job's earlier windows (``Pace``): ``decided`` once
        # the window's own decode was kept; ``_check`` the (span, segments) it will judge.
        self.decided = False
        self._check: tuple | None = None
        self._checked = pace is None
        # A job's language (``stages.language``), when the request gave none: ``hold_if``
        # (a predicate on the window's first decode; None: never) holds the window right
        # after its first decode, before any fallback or re-decode, until the job's vote:
        # then ``resume()`` goes on from that decode, or the window is decoded again in the
        # job's language by a new review with ``language`` (every decode in it). A held
        # window counts as decided, with nothing added to the job's pace, for the windows
        # after it; once resumed (or decoded again) its skip check reads the pace as it
        # stands and adds nothing to it, so no other window's check depends on when it ends.
        self.language = language
        self._hold_if = hold_if
        self._held: tuple | None = None  # (request, result) of the held first decode
        self._outside_pace = language is not None
        if pace is not None and not self._outside_pace:
            pace.register(self)

    # -- protocol ------------------------------------------------------------------------

    def requests(self) -> list[Request]:
        """The first decode (none when the energy gate says there is nothing to hear)."""
        self._asked = True
        if len(self.audio) == 0 or (self.cfg.enabled and self.gated is not None):
            # Nothing to decode, nothing to check: decided, and let go by ``Pace.release``
            # (the caller's: this may run on another thread than the feeds).
            self.decided = True
            self._checked = self._checked or self.pace is None or self._outside_pace
            return []
        kind = "language" if self.language is not None else "window"  # decoded again in the job's language
        return [self._ask(_Span(0, len(self.audio), 0), self.temperature, kind)]

    @property
    def done(self) -> bool:
        """True once ``requests()`` was called and every decode it led to was fed."""
        return self._asked and not self._pending and self._checked and self._held is None

    @property
    def held(self) -> WindowResult | None:
        """The first decode a held window waits with (see ``hold_if``), else None."""
        return self._held[1] if self._held is not None else None

    @property
    def earlier_decided(self) -> bool:
        """True once every earlier window of the job was decided (``Pace``; at once without
        a pace): the pace this window's skip check reads is then what it would read at
        the job's end, so a held window resumed from here on decodes the same."""
        return self._checked

    def resume(self) -> list[Request]:
        """Go on from the held first decode as ``feed`` would have; returns its requests."""
        if self._held is None:
            raise RuntimeError(f"window {self.index} is not held")
        request, result = self._held
        self._held, self._outside_pace = None, True
        self._spans[(request.start, request.end)].attempts.pop()  # feed appends it again
        return self.feed(request, result)

    def window_audio(self, request: Request) -> np.ndarray:
        """The (480000,) float32 input of a request: its span, zero-padded in the audio
        domain (never pad mel frames: padded log-mel makes Whisper hallucinate)."""
        out = np.zeros(N_SAMPLES, dtype=np.float32)
        out[: request.end - request.start] = self.audio[request.start : request.end]
        return out

    def sound(self, request: Request):
        """What the decoder's end-of-text veto needs for a request: (seconds of audio,
        cumulative sound seconds per 50 ms frame), measured against the whole window's
        floor."""
        a, b = request.start // FRAME, -(-request.end // FRAME)
        return (request.end - request.start) / SAMPLE_RATE, sound_profile(self.loud[a:b])

    def feed(self, request: Request, result: WindowResult) -> list[Request]:
        """Take one decode's result; return the requests it leads to."""
        self._pending.discard(request)
        span = self._spans[(request.start, request.end)]
        span.attempts.append(result)
        if self._first is None:
            self._first = result
        cfg = self.cfg
        if self._hold_if is not None and span.depth == 0 and len(span.attempts) == 1 and self._hold_if(result):
            self._hold_if = None
            self._held = (request, result)
            return self._decide(None)
        if not cfg.enabled:
            self._final[(span.start, span.end)] = [self._place(s, span) for s in result.segments]
            if span.depth == 0:
                return self._decide(None)
            return []
        span.temperatures.append(request.temperature)
        if needs_fallback(result, cfg) and not self._no_speech(span, result):
            hotter = [t for t in cfg.temperatures if t > max(span.temperatures)]
            self._debug(span, "the decode at T=%.1f failed (compression %s, log-probability %s): %s",
                        request.temperature, _num(result.compression_ratio), _num(result.avg_logprob),
                        f"decoded again at T={hotter[0]:.1f}" if hotter else "every temperature failed, "
                        "the best attempt kept")  # fmt: skip
            if hotter:
                return [self._ask(span, hotter[0], "fallback")]
            result = best_attempt(span.attempts, cfg)
        elif len(span.attempts) > 1 and result.avg_logprob is not None and result.avg_logprob < cfg.logprob_threshold:
            # A fallback that passed only by being too short to judge ("so milen" for a
            # sentence said twice): weighed against the attempts before it, as if all failed.
            result = best_attempt(span.attempts, cfg)
        if span.depth == 0:
            self._kept = result
        segments: list[Segment] = []
        silent = self._no_speech(span, result)
        if silent and result.segments:
            self._debug(span, "no speech (no-speech %s, log-probability %s): %r dropped",
                        _num(result.no_speech_prob), _num(result.avg_logprob), _short(result.segments))  # fmt: skip
        if span.group is not None and silent:
            span.group.silent.add(span.start)
        if not silent:
            end_s = (span.end - span.start) / SAMPLE_RATE
            placed = (
                self._place(s, span)
                for s in result.segments
                # Text the model put in the padding after the span's audio heard nothing.
                if not is_junk(s.text) and s.start < end_s
            )
            before = [w for seg in self._kept_before(span.start) for w in plain_words(seg.text)]
            for seg in placed:
                if self._too_fast(seg):
                    self._debug(span, "too fast for its sound (%.2f s): %r dropped",
                                loud_seconds(self.audible, seg.start, seg.end), _short([seg]))  # fmt: skip
                    continue
                words = plain_words(seg.text)
                if repeats(words, before, cfg):
                    self._debug(span, "says again the words before it: %r dropped", _short([seg]))
                    continue
                segments.append(seg)
                before.extend(words)
        if span.group is not None:
            return self._half_done(span, segments)
        follow: list[Request] = []
        if span.context:
            went_on = self._went_on(span, segments)
            if (
                went_on is None and span.dropped is not None
                and compression_ratio(span.dropped.text) <= self.cfg.compression_ratio_threshold
            ):  # fmt: skip
                # Nothing to place the re-decode by: the open segment it was to replace
                # stands, as sequential decoding keeps a last segment with no end (its
                # end: the window's). A re-decode that failed (a sentence cut by the
                # window's end, under babble) lost a 9-word run here.
                self._debug(span, "the re-decode does not say the words before it: %r stands",
                            _short([span.dropped]))  # fmt: skip
                went_on = [replace(span.dropped, end=min(span.dropped.end, span.end / SAMPLE_RATE))]
            segments = went_on or []
        open_last = segments[-1] if segments and segments[-1].open_end else None
        tail = self._tail(span, segments)
        if tail is not None:
            cut, segments, context = tail
            self._debug(span, "tail from %.2f s decoded again", cut / SAMPLE_RATE)
            follow.append(self._ask(_Span(cut, span.end, span.depth + 1, tail=True, context=context,
                                          dropped=open_last if context else None),
                                    self.temperature, "tail"))  # fmt: skip
        self._final[(span.start, span.end)] = segments
        if span.depth == 0:
            # The window's own segments join the pace first; the check of each segment
            # runs once every earlier window of the job was decided (Pace).
            self._note_pace(segments)
            follow.extend(self._decide((span, segments)))
        return follow

    def _decide(self, check) -> list[Request]:
        """The window's own decode was kept: its skip check (``check``: (span, segments),
        or None for nothing to check) runs now if every earlier window of the job was
        decided, else when the last of them is. Returns this review's requests from it;
        other reviews it let go wait in ``pace.take_released()``."""
        self.decided, self._check = True, check
        if self.pace is None or self._outside_pace:
            return self.check_pace()
        own: list[Request] = []
        for review, reqs in self.pace.release():
            if review is self:
                own = reqs
            else:
                self.pace._released.append((review, reqs))
        return own

    def check_pace(self) -> list[Request]:
        """The skip check: split re-decodes of segments too slow for the job's pace up to
        this window (``too_slow``). Called once, by ``Pace.release`` (or ``_decide``)."""
        self._checked = True
        if self._check is None:
            return []
        span, segments = self._check
        self._check = None
        follow: list[Request] = []
        split: set[int] = set()  # id() of the segments decoded again in halves
        for seg in segments:
            if too_slow(seg, self.heard, self.pace, self.cfg, upto=self.index):
                follow.extend(self._split_slow(span, span, seg, "", level=1))
                split.add(id(seg))
            elif self._too_slow_for_all_it_heard(seg):
                follow.extend(self._split_slow(span, span, seg, "", level=1, frames=self.audible))
                split.add(id(seg))
        moved, gaps = self._quiet_between(span, segments, split)
        if moved:
            key = (span.start, span.end)
            self._final[key] = [moved.get(id(seg), seg) for seg in self._final[key]]
        for a, b in gaps:
            self._debug(span, "quiet speech from %.2f s to %.2f s decoded alone", a / SAMPLE_RATE, b / SAMPLE_RATE)
            follow.append(self._ask(_Span(a, b, span.depth + 1, tail=True), self.temperature, "tail"))
        return follow

    def _too_slow_for_all_it_heard(self, seg: Segment) -> bool:
        """``too_slow`` against ``audible``: every frame where the model may have heard
        words, the voice band's too. The pace's own frames (``heard``) judge a frame by its
        rise over the window's floor; music as loud as speech, whose chords decay between
        their attacks, rises over it only at the attacks. tiny.en wrote "Thank you for
        watching!" over the 16.6 s of closing music after a reading's last sentence (chords
        12 dB under the speech): 3.7 s of ``heard`` sound under it, under the check's 8 s,
        15.3 s of ``audible``. Decoded alone, each half of it is no speech by the model's
        own rule, and the segment goes: what sequential decoding writes when it seeks there.
        A segment that says little over a stretch with no sound at all (a pause) is not
        flagged: nothing there is heard either way.

        The voice band costs an FFT per frame (``audible``), so a segment is first judged
        as if all its length were sound: one that is not too slow even then never is."""
        if self.pace is None or seg.end - seg.start < self.cfg.skip_min_sound_s:
            return False
        if not too_slow(seg, np.ones(len(self.heard) + 1, dtype=bool), self.pace, self.cfg, upto=self.index):
            return False
        return too_slow(seg, self.audible, self.pace, self.cfg, upto=self.index)

    def result(self) -> WindowResult:
        """The window's transcript: every span's kept segments in time order, with the
        language and signals of the window's own decode that was kept (after any fallback;
        re-decodes of parts of the window do not change them)."""
        if not self.done:
            raise RuntimeError(f"window {self.index}: decodes still pending")
        segments: list[Segment] = []
        for start in sorted(self._final):
            segments.extend(self._final[start])
        segments.sort(key=lambda s: (s.start, s.end))
        kept = self._kept or self._first or WindowResult(())
        if kept.language_probs is None and self._first is not None:  # a fallback detects none
            kept = replace(kept, language_probs=self._first.language_probs)
        n_tokens = sum(a.n_tokens for s in self._spans.values() for a in s.attempts)
        return replace(kept, segments=tuple(segments), n_tokens=n_tokens)

    # -- rules ---------------------------------------------------------------------------

    @property
    def rising(self) -> np.ndarray:
        """Frames whose whole-band level rises ``min_speech_rise_db`` over the window's
        floor (its 10th percentile): any voice over a floor does. The quiet tail and the
        quiet stretch between segments need this much before they pay for ``audible``."""
        if self._rising is None:
            floor = float(np.percentile(self.levels, 10))
            self._rising = self.levels > max(floor + self.cfg.min_speech_rise_db, self.cfg.silence_dbfs)
        return self._rising

    @property
    def audible(self) -> np.ndarray:
        """What ``too_fast`` reads: see ``audible_frames``. Measured on first use (the voice
        band costs an FFT per frame, some 7 ms a window on a CPU core, which a GPU's batch
        would wait on), and only needed where ``heard`` already finds a segment too fast,
        a long segment may be too slow (``_too_slow_for_all_it_heard``), or a tail or a
        stretch between segments may hold quiet speech (``_quiet_tail``,
        ``_quiet_between``; only where ``rising`` finds sound there first): it holds every
        frame ``heard`` holds."""
        if self._audible is None:
            gated = not self.cfg.enabled or self.gated
            self._audible = self.heard if gated else audible_frames(self.audio, self.heard, self.cfg)
        return self._audible

    def _too_fast(self, seg: Segment) -> bool:
        return too_fast(seg, self.heard, self.cfg) and too_fast(seg, self.audible, self.cfg)

    def _split_slow(self, span: _Span, owner: _Span, seg: Segment, what: str, level: int,
                    frames: np.ndarray | None = None) -> list[Request]:  # fmt: skip
        """``_split`` of a segment ``too_slow`` flagged (``owner``'s), logged at DEBUG with
        the sound (``frames``: ``heard`` unless given) and the rate it was judged by: the
        job's, or the prior while the job has none."""
        if logger.isEnabledFor(logging.DEBUG):
            frames = self.heard if frames is None else frames
            rate = self.pace.rate(self.index) if self.pace is not None else None
            said = f"{rate:.1f} a second" if rate is not None else \
                f"the prior {self.cfg.skip_prior_rate:.1f} a second: the job has no pace yet"  # fmt: skip
            self._debug(span, "%stoo slow for the job's pace (%d letters over %.2f s of sound, %s): %r split",
                        what, text_units(seg.text), loud_seconds(frames, seg.start, seg.end), said, _short([seg]))  # fmt: skip
        return self._split(owner, seg, level=level)

    def _debug(self, span: _Span, msg: str, *args) -> None:
        """A review's decision, at DEBUG (``-vv``): which window and span, in window seconds."""
        if logger.isEnabledFor(logging.DEBUG):
            where = f"window {self.index} {span.start / SAMPLE_RATE:.2f}-{span.end / SAMPLE_RATE:.2f} s: "
            logger.debug(where + msg, *args)

    def _ask(self, span: _Span, temperature: float, kind: str) -> Request:
        self._spans[(span.start, span.end)] = span
        # A seed fixed by where the span is and how hot: the same audio decodes the same
        # way whichever batch it rides in.
        seed = self.index * 1_000_003 + span.start * 31 + int(round(temperature * 10))
        language = self.language
        if language is None and kind != "window" and self._first is not None:
            language = self._first.language
        req = Request(self.index, span.start, span.end, temperature, seed, kind, language)
        self._pending.add(req)
        self.counts[kind] += 1
        return req

    @staticmethod
    def _place(seg: Segment, span: _Span) -> Segment:
        """A segment of a span's decode in window seconds, inside the span's audio (the
        decode saw padding after it, and may put an end time there)."""
        off, limit = span.start / SAMPLE_RATE, span.end / SAMPLE_RATE
        start = min(seg.start + off, limit)
        words = tuple(  # word timestamps move with their segment (issue 11)
            replace(w, start=round(min(w.start + off, limit), 3), end=round(min(w.end + off, limit), 3))
            for w in seg.words
        )
        return replace(seg, start=round(start, 3), end=round(min(max(seg.end + off, start), limit), 3),
                       words=words)  # fmt: skip

    def _no_speech(self, span: _Span, result: WindowResult) -> bool:
        """The no-speech rule, for the fallback as for what is kept. A tail is a short
        stretch after the last words heard: there the model's no-speech probability alone
        decides (its mean log-probability, over a few tokens, says little: "you" over a
        noise tail scored -0.97 with no-speech 0.94), and a quiet tail is not decoded hotter.

        A whole window keeps openai's rule, however few its tokens. Judging a decode of
        under 16 tokens by its no-speech probability alone removed "Thank you. Thank
        you." invented over a quiet room's knocks (no-speech 0.90), but it also removed
        real one-word answers said quietly ("Right." 40 dB down: 5 tokens, no-speech
        0.65, log-probability above -1), so it was taken out again."""
        if is_no_speech(result, self.cfg):
            return True
        ns = result.no_speech_prob
        return span.tail and ns is not None and ns > self.cfg.no_speech_threshold

    def _kept_before(self, start: int) -> list[Segment]:
        """The window's segments already decided that end where ``start`` (a sample)
        begins or before it, in time order (what a tail's decode goes on from)."""
        t = start / SAMPLE_RATE
        kept = [seg for segs in self._final.values() for seg in segs if seg.end <= t + 1e-6]
        return sorted(kept, key=lambda seg: seg.start)

    def _note_pace(self, segments: list[Segment]) -> None:
        if self.pace is not None and not self._outside_pace:
            for seg in segments:
                self.pace.note(text_units(seg.text), loud_seconds(self.heard, seg.start, seg.end), self.index)

    def _tail(self, span: _Span, segments: list[Segment]):
        """(cut sample, segments kept, segments the re-decode starts with) when the span's
        end went untranscribed, else None.

        A backstop behind the decoder's end-of-text veto (``stages.infer.EotVeto``), for
        a row that used up its vetoes or ended on an open segment. The tail is what
        follows the last complete segment (an open last segment, whose end the model never
        gave, is dropped and decoded again with the rest).

        The tail is decoded again from the start of the last segment that starts at least
        ``tail_context_s`` before it (before the job's end, for the end tail; the first
        segment after the span's start if none does), not from the last segment's end.
        Decoded alone before 26-29 s of padding, a tail came back as Whisper's sign-off:
        "Thank you. Thank you." over 3 s of applause after a sentence, "Thank you." or a
        lone "the" for the half second after a job's last segment, whose end is often
        early, inside the last word. With the sentences before it the model hears the
        last words as words, and applause as nothing (``_went_on``). A span whose
        segments after its start hold under two words (none, or "Okay.") has no sentence
        to start from: its tail is decoded alone, and the job's end of it not at all."""
        cfg = self.cfg
        if span.depth >= cfg.max_tail_redecodes:
            return None
        span_start_s, span_end_s = span.start / SAMPLE_RATE, span.end / SAMPLE_RATE
        kept = list(segments)
        if kept and kept[-1].open_end:
            kept.pop()
        pause = self._inner_pause(kept[-1], span_end_s) if kept else None
        if pause is not None:
            p0, p1 = pause
            end = round(min(kept[-1].end, p0 + cfg.timing_slack_s), 3)
            words = tuple(replace(w, start=min(w.start, end), end=min(w.end, end)) for w in kept[-1].words)
            kept[-1] = replace(kept[-1], end=end, words=words)
            cut = int(round(max(end, p1 - cfg.inner_margin_s) * SAMPLE_RATE))
            return cut, kept, ()
        heard_to = kept[-1].end if kept else span_start_s
        left = span_end_s - heard_to
        if left >= cfg.tail_min_s:
            if loud_seconds(self.loud, heard_to + cfg.timing_slack_s, span_end_s) < cfg.tail_speech_s:
                cut = self._quiet_tail(span, heard_to + cfg.timing_slack_s, span_end_s)
                return None if cut is None else (cut, kept, ())
        elif not (
            # The job's last words, right at its end (a recording cut mid-speech): measured
            # from the last segment's end, since no later window will hear them; and the
            # same for a window cut inside sound, whose next window starts mid-word.
            span.end == len(self.audio) and left >= cfg.end_tail_min_s
            and loud_seconds(self.loud, heard_to, span_end_s) >= cfg.end_tail_speech_s
            and (self.final or self._cut_in_sound(span_end_s))
        ):  # fmt: skip
            return None
        context: tuple = ()
        end_tail = left < cfg.tail_min_s
        later = [i for i, seg in enumerate(kept) if seg.start * SAMPLE_RATE > span.start]
        if not later and end_tail:  # one segment from the span's start: no sentence to start from
            return None
        if later and cfg.tail_context_s > 0:
            ref = span_end_s if end_tail else heard_to
            before = [i for i in later if kept[i].start <= ref - cfg.tail_context_s]
            at = before[-1] if before else later[0]

            def n_words(i):
                return len(" ".join(seg.text for seg in kept[i:]).split())

            # ``_went_on`` finds where the re-decode goes on by two words at least: a
            # context of one ("Okay.") could never show it, so it starts a segment earlier,
            # or the tail is decoded alone (the job's end: not at all, it would add nothing).
            while at > later[0] and n_words(at) < 2:
                at -= 1
            if n_words(at) >= 2:
                heard_to, context = kept[at].start, tuple(kept[at:])
            elif end_tail:
                return None
        cut = int(round(heard_to * SAMPLE_RATE))
        if cut <= span.start:  # nothing was heard: decoding the same span again gains nothing
            return None
        return cut, kept, context

    def _cut_in_sound(self, end_s: float) -> bool:
        """Half or more of the window's last ``cut_tail_sound_s`` before ``end_s`` (its end)
        is ``loud``: it was cut inside sound, not in a pause. A last part-frame (under
        50 ms, no level of its own) counts as quiet."""
        k = round(self.cfg.cut_tail_sound_s * 20)  # 50 ms frames
        b = int(np.ceil(end_s * 20 - 1e-6))
        return k > 0 and b >= k and 2 * int(np.count_nonzero(self.loud[b - k : b])) >= k

    def _quiet_tail(self, span: _Span, t0: float, t1: float) -> int | None:
        """Where to decode a quiet tail from (a sample), or None: the span's end holds no
        ``loud`` sound after its last segment, but ``quiet_tail_sound_s`` or more of
        ``audible`` sound (the voice band 10 dB over its floor) from ``t0`` to ``t1``
        (window seconds). Decoded alone, from ``inner_margin_s`` before that sound.

        A window's ``loud`` frames are within 40 dB of its loudest (``quiet_level``):
        sentences 40 dB under the ones before them (an audit's probe: 50 ms frames
        peaking at -71 dBFS after sentences at -30; a far talker on a call) are no sound
        there, and the window's end went untranscribed with no tail decoded. Whisper
        scales each input to its loudest 80 dB, so the sentences before a quiet tail set
        its level: decoded with them (a tail's context), tiny.en wrote the loud sentence
        again and nothing of the quiet ones; decoded alone, it wrote them nearly word for
        word. A quiet tail that is no speech gives nothing (the tails' no-speech rule)."""
        cfg = self.cfg
        if cfg.quiet_tail_sound_s <= 0:
            return None
        # Before the voice band's FFT (``audible``): the whole band must rise a little over
        # the window's floor there, as any voice over a floor does (a window that ends in
        # silence or steady room tone spends nothing).
        if loud_seconds(self.rising, t0, t1) < cfg.quiet_tail_sound_s:
            return None
        if loud_seconds(self.audible, t0, t1) < cfg.quiet_tail_sound_s:
            return None
        a = max(0, int(t0 * 20))  # loud_seconds' first frame
        start = max(t0, (a + int(np.argmax(self.audible[a:]))) / 20.0 - cfg.inner_margin_s)
        cut = int(round(start * SAMPLE_RATE))
        return cut if span.start < cut < span.end else None

    def _quiet_between(self, span: _Span, segments: list[Segment], split: set[int]):
        """Quiet speech before a segment that no segment's words say: ({id(segment):
        segment with its times moved off that speech}, [(start, end) samples to decode
        alone]). The window's own decode, once the job's pace up to it is known (run by
        ``check_pace``, after the skip check; ``split``: the segments it decodes again).

        A stretch before a segment's loud words qualifies when it holds no loud sound,
        ``quiet_gap_sound_s`` or more of ``audible`` sound (the whole band rising a
        little over the window's floor there first, as for ``_quiet_tail``), and the
        segments beside it say no more than ``quiet_fit`` times what the pace predicts for
        their own loud sound: their words are the loud ones. It runs from the loud end of
        the segment before (whose end is moved back to it: Whisper stamps a loud sentence
        across the quiet one after it) to the loud start of the segment, loud meaning
        within ``quiet_under_db`` of the window's loudest frame; where that does not
        qualify, from the end of the segment before (the window's start for the first) to
        the segment's first ``heard`` frame. Judged by ``heard`` alone, a far talker 30 dB
        under a near one, whose frames are heard but hardly any within 30 dB of the
        loudest, had his own segment's words decoded again in front of it, and they were
        written twice (21 words inserted).

        Sentences 40 dB under the ones around them (an audit's probe: sentences peaking at
        -60 dBFS among ones at -20; a far talker on a call): the model, which scales each
        window to its loudest, wrote the loud sentences and stamped them over the quiet
        ones, which were lost, 18 words in a row at a window's start. Decoded alone, the
        quiet sentences are written, as a quiet tail is. A stretch that is no speech gives
        nothing (the tails' no-speech rule); without a pace nothing shows that the
        segments left the quiet words out, and nothing is decoded."""
        cfg = self.cfg
        need = cfg.quiet_gap_sound_s
        rate = self.pace.rate(self.index) if self.pace is not None else None
        rate = rate or cfg.skip_prior_rate
        if need <= 0 or not rate or not segments:
            return {}, []
        rising = self.rising
        strong = self.heard & (self.levels > float(self.levels.max()) - cfg.quiet_under_db)

        def fits(seg, frames) -> bool:  # says no more than the pace predicts over ``frames``
            units = text_units(seg.text)
            return id(seg) not in split and units <= cfg.quiet_fit * rate * loud_seconds(frames, seg.start, seg.end)

        def first_last(frames, t0, t1, whole=False):
            # (first, end of last) frame of ``frames`` over [t0, t1), seconds; ``whole``:
            # only frames that start at t0 or later.
            a, b = max(0, int(np.ceil(t0 * 20)) if whole else int(t0 * 20)), int(np.ceil(t1 * 20))
            hit = np.flatnonzero(frames[a:b])
            return None if len(hit) == 0 else ((a + int(hit[0])) / 20.0, (a + int(hit[-1]) + 1) / 20.0)

        def quiet(t0, t1, loud) -> bool:
            # The voice band's FFT (``audible``) last: most stretches fail before it.
            return (t1 - t0 >= need and loud_seconds(rising, t0, t1) >= need
                    and loud_seconds(loud, t0, t1) == 0 and loud_seconds(self.audible, t0, t1) >= need)  # fmt: skip

        now = {id(seg): seg for seg in segments}
        gaps: list[tuple[int, int]] = []
        for before, seg in zip([None] + segments[:-1], segments):
            if not fits(seg, self.heard):
                continue
            found = None
            own = first_last(strong, seg.start, seg.end) if fits(seg, strong) else None
            prior = first_last(strong, before.start, before.end) if before is not None and fits(before, strong) else None
            if own is not None and prior is not None:  # the segment before was stamped over it
                t0 = prior[1] + cfg.timing_slack_s
                if quiet(t0, own[0], strong):
                    found = (t0, own[0], now[id(before)].end > t0)
            if found is None:  # between the segments' times
                t0 = (now[id(before)].end if before is not None else span.start / SAMPLE_RATE) + cfg.timing_slack_s
                heard = first_last(self.heard, t0, seg.end, whole=True)
                if heard is not None and quiet(t0, heard[0], self.heard):
                    found = (t0, heard[0], False)
            if found is None:
                continue
            t0, t1, trim = found
            a, b = int(round(t0 * SAMPLE_RATE)), int(round(t1 * SAMPLE_RATE))
            if not span.start <= a < b <= span.end or (a, b) in self._spans:
                continue
            if trim:
                old = now[id(before)]
                words = tuple(replace(w, start=min(w.start, t0), end=min(w.end, t0)) for w in old.words)
                now[id(before)] = replace(old, end=round(max(old.start, t0), 3), words=words)
            old = now[id(seg)]
            if old.start < t1:
                words = tuple(replace(w, start=max(w.start, t1), end=max(w.end, t1)) for w in old.words)
                now[id(seg)] = replace(old, start=round(t1, 3), end=round(max(old.end, t1), 3), words=words)
            gaps.append((a, b))
        moved = {id(seg): now[id(seg)] for seg in segments if now[id(seg)] is not seg}
        return moved, gaps

    def _inner_pause(self, seg: Segment, end_s: float) -> tuple[float, float] | None:
        """(start, end) in window seconds of the longest pause inside ``seg`` (quiet 50 ms
        frames in a row, ``inner_pause_s`` at least) when sound comes before it in the
        segment and ``inner_sound_s`` of sound after it, up to the segment's end (or
        ``end_s``); else None.

        Whisper sometimes stamps a window's last sentence across a long pause to the
        window's end and stops, and the sentence after the pause is never written: a
        window holding a sentence, 13 s of silence and another sentence gave one segment
        of 19.6 s with only the first (an audit's readings, tiny.en; sequential decoding
        kept that one). Sound before the pause is asked for: a segment whose start is
        early (stamped from the window's start) says what comes after the pause."""
        cfg = self.cfg
        a = max(0, int(seg.start * 20))
        b = min(len(self.loud), int(np.ceil(min(seg.end, end_s) * 20)))
        if b - a < cfg.inner_pause_s * 20:
            return None
        quiet = np.concatenate([[0], (~self.loud[a:b]).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(quiet))
        starts, ends = edges[0::2], edges[1::2]
        if len(starts) == 0:
            return None
        k = int(np.argmax(ends - starts))
        if ends[k] - starts[k] < cfg.inner_pause_s * 20:
            return None
        p0, p1 = (a + starts[k]) / 20.0, (a + ends[k]) / 20.0
        if loud_seconds(self.loud, seg.start, p0) < cfg.tail_speech_s:
            return None
        if loud_seconds(self.loud, p1, min(seg.end, end_s)) < cfg.inner_sound_s:
            return None
        return p0, p1

    def _went_on(self, span: _Span, segments: list[Segment]) -> list[Segment] | None:
        """What a tail decoded with the segments before it (``span.context``) adds to
        them: they stand as they were (in the span that asked for the tail, where the skip
        check judges them), and only the words the re-decode says after their last words
        are added. A decode of a few seconds alone may hear some words differently ("A
        suite" as "Us week"), so it is not taken whole; what it adds is found by the old
        segments' last words (two at least, up to eight) in its text, after it said half
        as many words as they hold (the longest such match, the last of it). No such
        anchor: None; nothing after it: nothing, the last old segment ending where the
        re-decode ends its last words if that is later. The words after it are added with
        the re-decode's segments (the rest of the one the anchor ends in, from the old last
        end, and those after it), each passing the pace and repeat checks of any segment."""
        old = list(span.context)
        old_tokens = " ".join(s.text for s in old).split()
        new_tokens = " ".join(s.text for s in segments).split()
        key = [_token(t) for t in old_tokens]
        got = [_token(t) for t in new_tokens]
        extra = None
        for k in range(min(8, len(key), len(got)), 1, -1):
            # Where the re-decode has said at least half as many words as the old segments
            # hold: two common words ("the work") also come early in the sentences it says
            # again, and what follows them there is not new.
            hits = [p for p in range(len(got) - k + 1) if got[p : p + k] == key[-k:] and 2 * (p + k) >= len(key)]
            if hits:
                extra = hits[-1] + k
                break
        if extra is None:
            return None
        if extra >= len(new_tokens):
            # The same last words, nothing after them: the re-decode, which heard them
            # with the sound after, may time their end later ("Yes." said at 11.32-11.74 s
            # in a segment stamped to 11.11 s, decoded again to 11.75 s).
            end = min(segments[-1].end, span.end / SAMPLE_RATE)
            if end > old[-1].end:
                for key_, kept in self._final.items():  # where the old segment stands
                    self._final[key_] = [replace(s, end=end) if s is old[-1] else s for s in kept]
            return []
        # The segment the new words start in gives its rest, from the old last end; the
        # re-decode's segments after it stand as they are (a long tail keeps its sentences).
        j, first = 0, extra
        while first >= len(segments[j].text.split()):
            first -= len(segments[j].text.split())
            j += 1
        rest = segments[j].text.split()[first:]
        start = old[-1].end if first else max(old[-1].end, segments[j].start)
        head = Segment(start, max(start, segments[j].end), " " + " ".join(rest),
                       words=_last_words(list(segments[j].words), rest))  # fmt: skip
        before = [w for s in self._kept_before(span.start) + old for w in plain_words(s.text)]
        out: list[Segment] = []
        for seg in [head, *segments[j + 1 :]]:
            words = plain_words(seg.text)
            if self._too_fast(seg) or repeats(words, before, self.cfg):
                continue
            out.append(seg)
            before.extend(words)
        return out

    def _split(self, span: _Span, seg: Segment, level: int = 1) -> list[Request]:
        """Decode a too-slow segment again as two windows cut at its quietest 100 ms near
        its middle: a different context that need not jump where this one did."""
        a, b = int(seg.start * SAMPLE_RATE), min(int(seg.end * SAMPLE_RATE), len(self.audio))
        lo, hi = a + (b - a) * 3 // 10, a + (b - a) * 7 // 10
        fa, fb = lo // FRAME, max(lo // FRAME + 2, hi // FRAME)
        pair = self.levels[fa:fb][:-1] + self.levels[fa:fb][1:]
        mid = (fa + int(np.argmin(pair)) + 1) * FRAME if len(pair) else (a + b) // 2
        if not a < mid < b or (a, mid) in self._spans or (mid, b) in self._spans:
            return []
        group = _Split(owner=(span.start, span.end), old=seg, level=level)
        return [
            self._ask(_Span(a, mid, span.depth + 1, group=group), self.temperature, "split"),
            self._ask(_Span(mid, b, span.depth + 1, group=group), self.temperature, "split"),
        ]

    def _half_done(self, span: _Span, segments: list[Segment]) -> list[Request]:
        group: _Split = span.group
        group.halves[span.start] = segments
        if len(group.halves) < 2:
            return []
        new = [s for start in sorted(group.halves) for s in group.halves[start]]
        if len(group.silent) == 2:
            self._debug(span, "both halves are no speech: %r dropped", _short([group.old]))
            # Each half, decoded as a window of its own, is no speech by the model's own
            # rule: what sequential decoding, seeking into this span, would write (nothing).
            # The slow segment was the end-of-text veto's doing, or Whisper's over a
            # background: "Music" stamped over 16 s of chords after the last sentence.
            owned = self._final[group.owner]
            self._final[group.owner] = [s for s in owned if s is not group.old]
            return []
        more = sum(text_units(s.text) for s in new) > text_units(group.old.text)
        self._debug(span, "halves %r %s %r", _short(new), "replace" if more else "say no more than", _short([group.old]))
        if not more:
            return []
        owned = self._final[group.owner]
        self._final[group.owner] = [s for s in owned if s is not group.old] + new
        if group.level >= 2:
            return []
        # A half that is itself far too slow is split once more: its own start may be where
        # the model jumps (babble 15 dB under a reading: " The" over 22.6 s, and " The" again
        # over its first 13 s half, whose halves say the sentences).
        owner = self._spans[group.owner]
        follow: list[Request] = []
        cfg = replace(self.cfg, skip_min_sound_s=self.cfg.half_skip_min_sound_s)
        for seg in new:
            if too_slow(seg, self.heard, self.pace, cfg, upto=self.index):
                follow.extend(self._split_slow(span, owner, seg, "a half ", level=group.level + 1))
        return follow
