"""Small data types that cross stage boundaries (all picklable, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    """A piece of transcript. Times are seconds.

    Inside a WindowResult times are relative to the window start; after stitching
    they are absolute (from the start of the audio).
    ``open_end`` is True when the model gave no closing timestamp (the speech runs past
    the window's end, so the segment is probably cut).
    """

    start: float
    end: float
    text: str
    open_end: bool = False


@dataclass(frozen=True)
class WindowResult:
    """What inference produced for one 30 s window."""

    segments: tuple[Segment, ...]
    language: str | None = None  # language code the model used or detected ("en")
    n_tokens: int = 0  # tokens generated (for throughput figures)
    # Quality signals (openai/whisper's names), None where the backend gives none:
    # mean log-probability of the generated tokens, the probability of the no-speech
    # token at the start of the transcript, and the gzip compression ratio of the text
    # (a repetition loop compresses well).
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    temperature: float = 0.0  # 0: greedy; above: a fallback decode sampled at this temperature


@dataclass(frozen=True)
class TimedWindow:
    """A WindowResult placed in the audio: used by the stitcher."""

    index: int  # 0-based window number within the job
    start: float  # absolute start of the window, seconds
    valid: float  # seconds of real (unpadded) audio in the window
    result: WindowResult = field(default_factory=lambda: WindowResult(()))


TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class DecodeOptions:
    """Per-job decoding options, validated before any process sees them."""

    language: str | None = None  # None: the model detects it per window
    task: str = "transcribe"
    # Force every window to generate exactly this many tokens (benchmarks with random
    # weights, which never emit end-of-text). None: normal decoding.
    tokens_per_window: int | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.language is not None and not (
            isinstance(self.language, str) and 2 <= len(self.language) <= 16
        ):
            raise ValueError(f"language must be a language code like 'en', not {self.language!r}")
        if self.tokens_per_window is not None and not (1 <= self.tokens_per_window <= 440):
            raise ValueError("tokens_per_window must be between 1 and 440")
