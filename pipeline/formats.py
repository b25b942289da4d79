"""The transcript and its output formats: text, json, srt (SubRip) and vtt (WebVTT).

Times are seconds from the start of the audio; every format writes them rounded to the
millisecond. Subtitle cue text is made safe for its format: a blank line would end a
cue early in both SRT and WebVTT, and ``-->`` marks a timing line (WebVTT forbids it in
cue text; lenient SRT readers misparse it), so blank lines are dropped and ``-->``
becomes ``->``; in WebVTT, ``&``, ``<`` and ``>`` are written as character references
(``<`` would otherwise open a cue tag).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from pipeline.types import Segment

logger = logging.getLogger(__name__)

FORMATS = ("text", "json", "srt", "vtt")


@dataclass(frozen=True)
class Transcript:
    """A finished transcript: what the CLI prints and the worker returns.

    ``duration``: seconds of audio. ``segments``: ordered, non-overlapping, absolute
    seconds (a list given here is stored as a tuple). ``timings``: JSON-able figures.
    """

    text: str
    language: str | None
    duration: float
    model: str
    segments: tuple[Segment, ...] = ()
    timings: dict = field(default_factory=dict)
    partial: bool = False  # the run was interrupted: only the audio finished so far

    def __post_init__(self):
        if not isinstance(self.segments, tuple):
            object.__setattr__(self, "segments", tuple(self.segments))

    def to_dict(self) -> dict:
        """The JSON body: text, language, duration, model, segments, timings (ms times),
        and ``"partial": true`` when the run was interrupted."""
        out = {
            "text": self.text,
            "language": self.language,
            "duration": _ms(self.duration),
            "model": self.model,
            "segments": [_segment_dict(s) for s in self.segments],
            "timings": dict(self.timings),
        }
        if self.partial:
            out["partial"] = True
        return out


def _segment_dict(s) -> dict:
    out = {"start": _ms(s.start), "end": _ms(s.end), "text": s.text.strip()}
    if s.words:
        out["words"] = [
            {"word": w.word.strip(), "start": _ms(w.start), "end": _ms(w.end), "probability": round(w.probability, 4)}
            for w in s.words
        ]
    return out


def format_transcript(t: Transcript, fmt: str) -> str:
    """The transcript as ``fmt`` (one of ``FORMATS``), ending with a newline."""
    if fmt == "text":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps(t.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "srt":
        return _srt(t.segments)
    if fmt == "vtt":
        return _vtt(t.segments)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def _ms(seconds: float) -> float:
    return round(float(seconds), 3)


def _timestamp(ms: int, sep: str) -> str:
    """``HH:MM:SS<sep>mmm``; hours take more digits past 99 (both formats allow it)."""
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{sep}{millis:03d}"


def _cue_text(text: str) -> str:
    """Segment text as cue lines: stripped lines, no blank ones, no ``-->``."""
    lines = (line.strip().replace("-->", "->") for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _cues(segments):
    """(start_ms, end_ms, cue text) for segments with text; end > start by at least 1 ms
    (a cue that ends when it starts is dropped by WebVTT players)."""
    for seg in segments:
        text = _cue_text(seg.text)
        if not text:
            continue
        start = max(0, round(seg.start * 1000))
        end = max(start + 1, round(seg.end * 1000))
        yield start, end, text


def _srt(segments) -> str:
    # Each cue: index, timings, text, then a blank line (also after the last cue).
    return "".join(
        f"{i}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{text}\n\n"
        for i, (a, b, text) in enumerate(_cues(segments), start=1)
    )


def _vtt(segments) -> str:
    parts = ["WEBVTT\n\n"]
    for a, b, text in _cues(segments):
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts.append(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n\n")
    return "".join(parts)
