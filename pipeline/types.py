"""Small data types that cross stage boundaries (all picklable, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Word:
    """One word of a segment with its time (seconds, relative like its segment's) and the
    model's probability of its tokens (the mean of its tokens' probabilities, OpenAI's
    ``probability``). ``word`` keeps Whisper's leading space."""

    start: float
    end: float
    word: str
    probability: float


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
    words: tuple[Word, ...] = ()  # filled only when word timestamps were asked for


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
    # Language detection on this window (multilingual models, no language given): the most
    # likely languages and their probabilities (softmax over the language tokens at
    # <|startoftranscript|>, as openai/whisper's detect_language), most likely first.
    language_probs: tuple[tuple[str, float], ...] | None = None


@dataclass(frozen=True)
class TimedWindow:
    """A WindowResult placed in the audio: used by the stitcher."""

    index: int  # 0-based window number within the job
    start: float  # absolute start of the window, seconds
    valid: float  # seconds of real (unpadded) audio in the window
    result: WindowResult = field(default_factory=lambda: WindowResult(()))


TASKS = ("transcribe", "translate")
MAX_PROMPT_CHARS = 4000  # far past the 223 tokens a prompt can use; bounds what a request sends


@dataclass(frozen=True)
class DecodeOptions:
    """Per-job decoding options, validated before any process sees them."""

    language: str | None = None  # None: the model detects it per window
    task: str = "transcribe"
    # Force every window to generate exactly this many tokens (benchmarks with random
    # weights, which never emit end-of-text). None: normal decoding.
    tokens_per_window: int | None = None
    # Word timestamps (issue 11): each segment gets its words with start, end, probability.
    word_timestamps: bool = False
    # Text that conditions every window (OpenAI's ``prompt``: spellings, style), fed as
    # <|startofprev|> tokens before <|startoftranscript|>; its last 223 tokens are kept.
    prompt: str | None = None
    # Temperature of each window's first decode: 0 is greedy; the quality review's fallback
    # goes on from the next step above it (OpenAI's ``temperature``).
    temperature: float = 0.0

    def __repr__(self) -> str:
        # What logs show of a job: every option, but a prompt (a user's text, up to
        # MAX_PROMPT_CHARS) by its size, never its words.
        def shown(f):
            v = getattr(self, f.name)
            return f"<{len(v)} characters>" if f.name == "prompt" and v is not None else repr(v)

        return f"DecodeOptions({', '.join(f'{f.name}={shown(f)}' for f in fields(self))})"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.language is not None and not (
            isinstance(self.language, str) and 2 <= len(self.language) <= 16
        ):
            raise ValueError(f"language must be a language code like 'en', not {self.language!r}")
        if self.tokens_per_window is not None and not (1 <= self.tokens_per_window <= 440):
            raise ValueError("tokens_per_window must be between 1 and 440")
        if not isinstance(self.word_timestamps, bool):
            raise ValueError(f"word_timestamps must be true or false, not {self.word_timestamps!r}")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be text, not {type(self.prompt).__name__}")
        if self.prompt is not None and len(self.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_CHARS} characters ({len(self.prompt)})")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not 0.0 <= self.temperature <= 1.0
        ):
            raise ValueError(f"temperature must be a number from 0 to 1, not {self.temperature!r}")
