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
ZERO_CUE_MS = 1000  # longest a cue with no duration of its own is shown (see _shown)
MAX_LINE_CHARS = (10, 1000)  # the range every interface accepts for max_line_chars


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


def format_transcript(t: Transcript, fmt: str, max_line_chars: int | None = None) -> str:
    """The transcript as ``fmt`` (one of ``FORMATS``), ending with a newline.

    ``max_line_chars`` (srt and vtt): where segments carry words, cues are cut between
    words so that each holds whole words up to that many characters (a longer word gets a
    cue of its own), timed from its first word's start to its last word's end. Segments
    without words stay one cue each."""
    if max_line_chars is not None and (
        isinstance(max_line_chars, bool) or not isinstance(max_line_chars, int) or max_line_chars < 1
    ):
        raise ValueError(f"max_line_chars must be a positive integer, not {max_line_chars!r}")
    if fmt == "text":
        return t.text + "\n"
    if fmt == "json":
        return json.dumps(t.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "srt":
        return _srt(t.segments, max_line_chars)
    if fmt == "vtt":
        return _vtt(t.segments, max_line_chars)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def verbose_json(t: Transcript, task: str = "transcribe", windows=(), words: bool = False, segments: bool = True) -> dict:
    """OpenAI's ``verbose_json`` body: ``task``, ``language`` (the full lowercase name,
    "english"; for a translation always "english", the output's), ``duration``, ``text``, and ``segments`` (id, seek, start, end, text,
    tokens, temperature, avg_logprob, compression_ratio, no_speech_prob) and/or ``words``
    ([{word, start, end, probability}], ``probability`` ours beyond OpenAI's three keys).

    ``windows``: the job's TimedWindows (``JobOutcome.windows``), which hold the quality
    signals: each segment takes those of the window it lies in (they are per window here,
    not per segment); a signal the backend did not give is written as 0.0 (OpenAI's
    types have no null there). ``seek`` is the window's start in 10 ms frames, as OpenAI's
    is; ``tokens`` is empty (the transcript does not keep token ids)."""
    from pipeline.languages import LANGUAGES

    out = {
        "task": task,
        # A translation's language is its output's, always English (OpenAI's TranslationVerbose).
        "language": "english" if task == "translate" else LANGUAGES.get(t.language or "", t.language or ""),
        "duration": _ms(t.duration),
        "text": t.text,
    }
    if segments:
        ws = sorted(windows, key=lambda w: w.start)
        out["segments"] = [_verbose_segment(i, s, _window_of(ws, s)) for i, s in enumerate(t.segments)]
    if words:
        out["words"] = [
            {"word": w.word.strip(), "start": _ms(w.start), "end": _ms(w.end), "probability": round(float(w.probability), 4)}
            for s in t.segments
            for w in s.words
            if w.word.strip()
        ]
    return out


def _window_of(windows, seg):
    """The window (sorted by start) whose audio holds the segment's middle, else None."""
    mid = (seg.start + seg.end) / 2
    best = None
    for w in windows:
        if w.start <= mid + 1e-3:
            best = w
        else:
            break
    return best


def _verbose_segment(i: int, s, w) -> dict:
    r = w.result if w is not None else None

    def signal(name):
        v = getattr(r, name, None) if r is not None else None
        return round(float(v), 4) if v is not None else 0.0

    return {
        "id": i,
        "seek": round(w.start * 100) if w is not None else 0,
        "start": _ms(s.start),
        "end": _ms(s.end),
        "text": s.text,
        "tokens": [],
        "temperature": float(r.temperature) if r is not None else 0.0,
        "avg_logprob": signal("avg_logprob"),
        "compression_ratio": signal("compression_ratio"),
        "no_speech_prob": signal("no_speech_prob"),
    }


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


def _cues(segments, max_line_chars: int | None = None):
    """(start_ms, end_ms, cue text) for segments with text, in order, never overlapping,
    each ending after it starts. With ``max_line_chars``, a segment that carries words
    becomes cues of whole words (see format_transcript)."""
    raw: list[list] = []  # [start_ms, end_ms, text as written, leading spaces and all]
    for seg in segments:
        if max_line_chars is not None and any(w.word.strip() for w in seg.words):
            raw.extend(_word_cues(seg.words, max_line_chars))
        elif _cue_text(seg.text):
            raw.append([_to_ms(seg.start), _to_ms(seg.end), seg.text])
    for start, end, text in _shown(raw):
        yield start, end, _cue_text(text)


def _to_ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _shown(cues: list[list]) -> list[list]:
    """Cues that a player shows: one that ends where it starts (a segment clamped to its
    window's end, a word DTW gave no frames) is shown up to ZERO_CUE_MS in the free time
    after it, else in the free time before it; with no free time on either side its text
    joins the cue before it (or, first of all, the one after it). A 1 ms cue would overlap
    the next one and flash by unseen (WebVTT players drop a cue that ends when it starts)."""
    out: list[list] = []
    carry = ""  # text of zero-length cues at the very start, for the next cue
    for i, (start, end, text) in enumerate(cues):
        text = carry + text
        carry = ""
        if end > start:
            out.append([start, end, text])
            continue
        nxt = cues[i + 1][0] if i + 1 < len(cues) else None
        prev_end = out[-1][1] if out else 0
        if nxt is None or nxt > start:
            out.append([start, start + ZERO_CUE_MS if nxt is None else min(start + ZERO_CUE_MS, nxt), text])
        elif prev_end < start:
            out.append([max(prev_end, start - ZERO_CUE_MS), start, text])
        elif out:
            out[-1][2] += text  # as written: words and segments carry their leading space
        else:
            carry = text
    return out


def _word_cues(words, max_chars: int):
    """One segment's words as cues of at most ``max_chars`` characters (a word longer than
    that alone, with any word that goes on it without a space), each [start_ms, end_ms,
    text] timed by its first and last word. The words
    are joined as written (each carries its leading space, or none: "o" + "'clock", "9" +
    ".30", and every word of a language written without spaces), so a cue says what the
    segment's text says."""
    group: list = []
    length = 0

    def cue(ws):
        return [_to_ms(ws[0].start), _to_ms(ws[-1].end), "".join(w.word for w in ws)]

    for w in words:
        if not _cue_text(w.word):
            continue
        piece = w.word if group else w.word.lstrip()
        if group and not _glued(group[-1].word, w.word) and length + len(piece) > max_chars:
            yield cue(group)
            group, length, piece = [], 0, w.word.lstrip()
        length += len(piece)
        group.append(w)
    if group:
        yield cue(group)


# Scripts written without spaces between words (CJK ideographs and punctuation, kana,
# fullwidth forms, Thai, Lao, Myanmar, Khmer): Whisper's words there carry no leading space.
_SPACELESS_RANGES = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x30FF),
                     (0x3100, 0x9FFF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF), (0x20000, 0x3FFFF))  # fmt: skip


def _spaceless(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _SPACELESS_RANGES)


def _glued(before: str, word: str) -> bool:
    """Whether ``word`` goes on ``before`` as one word a reader sees ("o" + "'clock,", "9" +
    ".30"): it starts without a space and neither side of the join is in a script written
    without spaces (there, every word starts without one, and a cut between two is fine,
    as before or after a Latin word inside Chinese text: "用 Python学习")."""
    return bool(before and word) and not word[0].isspace() and not (_spaceless(before[-1]) or _spaceless(word[0]))


def _srt(segments, max_line_chars: int | None = None) -> str:
    # Each cue: index, timings, text, then a blank line (also after the last cue).
    return "".join(
        f"{i}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{text}\n\n"
        for i, (a, b, text) in enumerate(_cues(segments, max_line_chars), start=1)
    )


def _vtt(segments, max_line_chars: int | None = None) -> str:
    parts = ["WEBVTT\n\n"]
    for a, b, text in _cues(segments, max_line_chars):
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts.append(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n\n")
    return "".join(parts)
