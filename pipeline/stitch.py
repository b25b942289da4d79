"""Join the results of the windows of one job into one transcript.

Windows no longer overlap (stages/chunk.py cuts each at a pause, issue 8), so nothing is
heard twice and nothing has to be aligned: each window's segments move to absolute time,
stay inside the audio their window heard, and follow each other in time.

The overlap-stitcher this replaces (fixed 26 s steps, 4 s overlaps, seams in common pauses
and word alignment where speech covered the overlap) was exact on a tone-coded test double
but lost runs of 25-39 words with real Whisper weights: the words cut by fixed window
edges were the problem, which no seam rule wins back.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from typing import Iterable, Sequence

from pipeline.types import Segment, TimedWindow

logger = logging.getLogger(__name__)


def transcript_text(segments: Sequence[Segment]) -> str:
    """The transcript's text: segment texts (which carry Whisper's leading space) joined."""
    return "".join(seg.text for seg in segments).strip()


def majority_language(windows: Iterable[TimedWindow]) -> str | None:
    """The language of most text across windows, weighted by characters of text.

    Windows with no text are ignored, so a silent first window (where Whisper's language
    detection is a guess) cannot decide it. Ties go to the language seen first.
    None when no window has both text and a language.
    """
    weight: Counter = Counter()
    first: dict[str, int] = {}
    for w in sorted(windows, key=lambda w: w.index):
        lang = w.result.language
        chars = sum(len(seg.text.strip()) for seg in w.result.segments)
        if lang and chars:
            weight[lang] += chars
            first.setdefault(lang, w.index)
    if not weight:
        return None
    return max(weight, key=lambda lang: (weight[lang], -first[lang]))


def stitch(windows: Iterable[TimedWindow], duration: float = 0.0) -> list[Segment]:
    """Window results (any order) -> ordered, non-overlapping segments in absolute seconds.

    ``windows``: TimedWindow per window (``start``/``valid`` in seconds, segments in
    window-relative seconds). Each segment is clamped to its window's audio
    ``[start, start + valid]`` (and to ``[0, duration]`` when ``duration`` > 0); segments
    with no text are dropped; a segment that starts before the previous one ends is moved
    to start there (timestamps of adjacent windows can disagree by a few hundredths).
    """
    ws = sorted(windows, key=lambda w: (w.start, w.index))
    if len({w.index for w in ws}) != len(ws):
        raise ValueError("stitch: two windows share an index")
    for left, right in zip(ws, ws[1:]):
        if left.start + left.valid > right.start + 1e-6:
            raise ValueError(
                f"stitch: window {right.index} starts at {right.start:.3f} s, inside window "
                f"{left.index} (which ends at {left.start + left.valid:.3f} s)"
            )
    out: list[Segment] = []
    for w in ws:
        out.extend(_window_segments(w, out[-1].end if out else None, duration))
    return out


def _window_segments(w: TimedWindow, prev_end: float | None, duration: float = 0.0) -> list[Segment]:
    """One window's segments in absolute seconds, after a transcript whose last segment
    ended at ``prev_end`` (None: nothing before)."""
    out: list[Segment] = []
    lo, hi = w.start, w.start + w.valid
    if duration > 0:
        hi = min(hi, duration)
    for seg in sorted(w.result.segments, key=lambda s: (s.start, s.end)):
        if not seg.text.strip():
            continue
        # With word timestamps a segment runs from its first word's start to its last
        # word's end (openai/whisper and faster-whisper do the same). The timestamp tokens
        # alone can miss the words by seconds: "Yes." said at 11.32-11.74 s came in a
        # segment stamped 10.11-11.11 s, its cue gone before the word was said. The
        # review judged the timestamp tokens' times, before this (its decisions do not
        # depend on whether words were asked for).
        a, b = (seg.words[0].start, seg.words[-1].end) if seg.words else (seg.start, seg.end)
        start = min(max(w.start + a, lo), hi)
        end = min(max(w.start + b, start), hi)
        last = out[-1].end if out else prev_end
        if last is not None and start < last:
            start = last
            end = max(end, start)
        words = _place_words(seg.words, w.start, start, end)
        out.append(replace(seg, start=round(start, 3), end=round(end, 3), words=words))
    return out


class StreamStitcher:
    """``stitch`` for results that arrive one window at a time, in any order: ``add`` gives
    the segments that became final (those of every window up to the first one still
    missing), in order, the same segments ``stitch`` gives for all windows at the end.
    Windows are numbered 0, 1, 2, ... within a job (``TimedWindow.index``)."""

    def __init__(self):
        self._pending: dict[int, TimedWindow] = {}
        self._next = 0
        self._last_end: float | None = None

    def add(self, window: TimedWindow) -> list[Segment]:
        if window.index < self._next or window.index in self._pending:
            raise ValueError(f"stitch: window {window.index} came twice")
        self._pending[window.index] = window
        out: list[Segment] = []
        while self._next in self._pending:
            segs = _window_segments(self._pending.pop(self._next), self._last_end)
            if segs:
                self._last_end = segs[-1].end
            out.extend(segs)
            self._next += 1
        return out


def _place_words(words, offset: float, lo: float, hi: float) -> tuple:
    """A segment's words in absolute seconds: moved by the window's ``offset``, kept inside
    the segment's ``[lo, hi]`` and in order (each starts no earlier than the last ended)."""
    out = []
    for wd in words:
        start = min(max(offset + wd.start, lo), hi)
        if out:
            start = max(start, out[-1].end)
        end = min(max(offset + wd.end, start), hi)
        out.append(replace(wd, start=round(start, 3), end=round(end, 3)))
    return tuple(out)
