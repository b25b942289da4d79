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
        lo, hi = w.start, w.start + w.valid
        if duration > 0:
            hi = min(hi, duration)
        for seg in sorted(w.result.segments, key=lambda s: (s.start, s.end)):
            if not seg.text.strip():
                continue
            start = min(max(w.start + seg.start, lo), hi)
            end = min(max(w.start + seg.end, start), hi)
            if out and start < out[-1].end:
                start = out[-1].end
                end = max(end, start)
            out.append(replace(seg, start=round(start, 3), end=round(end, 3)))
    return out
