"""A test double of the inference backend whose right answer is known.

Each "word" is a pure tone: word ``i`` (text ``w{i}``) is ``400 + 50 * i`` Hz, i < 40.
``ToneBackend`` hears them the way a model hears speech in a 30 s window: frame by
frame (40 ms Hann frames, 10 ms hop) it finds the dominant word frequency, and runs of
frames become words with window-relative times accurate to about 0.02 s. Like a model it
drops what it barely hears (a run shorter than 60 ms, e.g. the sliver of a word cut by
the window's edge), reports a word cut by the window's start as starting at 0.0, and
leaves the last segment open (``open_end=True``) when speech runs into the window's end.

With ``make_tone_speech`` building audio with known truth and ``score`` counting words
lost, doubled and misplaced, it is the guard for chunking, batching and stitching: any
change there that loses or repeats a word at a window edge fails a test.

It plugs into the pipeline like a real backend (``stages.infer.load_backend``
constructs ``Class(model=..., device=..., dtype=...)``), so the grouping can also be
chosen through the model string: ``"tone"``, ``"tone:word"`` or ``"tone:phrase"``.
"""

from __future__ import annotations

import difflib
import logging

import numpy as np

from pipeline.constants import PCM_DTYPE, SAMPLE_RATE, TIME_PRECISION
from pipeline.types import DecodeOptions, Segment, WindowResult

logger = logging.getLogger(__name__)

N_WORDS = 40
BASE_HZ = 400.0
STEP_HZ = (
    50.0  # = 2 / FRAME_S: a neighbour word sits on the first null of the Hann lobe
)
FRAME = 640  # samples: 40 ms
HOP = 160  # samples: 10 ms
MIN_HEARD_S = 0.06  # shorter runs are not heard (a model dropping half a word)
PHRASE_GAP_S = 0.35  # grouping "phrase": words closer than this share a segment
GROUPINGS = ("word", "phrase")


def word_freq(i: int) -> float:
    """Frequency in Hz of word ``i``."""
    return BASE_HZ + STEP_HZ * i


def _probe_matrix() -> np.ndarray:
    """(FRAME, 2 * N_WORDS) float32: Hann-windowed cos and sin of every word frequency."""
    t = np.arange(FRAME) / SAMPLE_RATE
    f = word_freq(np.arange(N_WORDS))[None, :]
    hann = np.hanning(FRAME)[:, None]
    phase = 2 * np.pi * f * t[:, None]
    return np.concatenate([hann * np.cos(phase), hann * np.sin(phase)], axis=1).astype(
        np.float32
    )


_PROBE = _probe_matrix()


class ToneBackend:
    """Recognises tone words in 30 s windows; same interface as ``WhisperBackend``.

    ``grouping``: "word" (one segment per word, text " w12") or "phrase" (words with
    gaps under 0.35 s share a segment, " w12 w7 w3"); a ``model`` of the form
    "tone:phrase" overrides it. Stateless across calls (one instance serves many jobs).
    """

    def __init__(
        self, model: str = "tone", device=None, dtype=None, grouping: str = "word"
    ):
        _, _, suffix = str(model).partition(":")
        if suffix:
            grouping = suffix
        if grouping not in GROUPINGS:
            raise ValueError(
                f"grouping must be one of {', '.join(GROUPINGS)}, not {grouping!r}"
            )
        self.model_id = str(model)
        self.grouping = grouping
        self.device = "cpu"
        self.dtype = "float32"

    def prepare(self, audio: np.ndarray) -> np.ndarray:
        """audio: (480000,) float32 window -> the same array (float32, 1-D)."""
        audio = np.asarray(audio, dtype=PCM_DTYPE)
        if audio.ndim != 1 or audio.shape[0] < FRAME:
            raise ValueError(
                f"expected a 1-D window of at least {FRAME} samples, got {audio.shape}"
            )
        return audio

    def transcribe(self, prepared: list, options: DecodeOptions, **_per_row) -> list[WindowResult]:
        """One ``WindowResult`` per prepared window, segments in window-relative seconds.
        The per-row keywords of ``WhisperBackend.transcribe`` (temperatures, seeds, sound)
        change nothing here: tones are heard the same way every time."""
        language = options.language or "en"
        results = []
        for audio in prepared:
            words = detect_words(audio)
            segments = group_words(words, self.grouping, audio.shape[0] / SAMPLE_RATE)
            results.append(
                WindowResult(tuple(segments), language=language, n_tokens=len(words))
            )
        return results


def detect_words(audio: np.ndarray) -> list[tuple[str, float, float, bool, bool]]:
    """Words heard in one window: (text, start_s, end_s, cut_at_start, cut_at_end).

    audio: (n,) float32. Frames: (F, 640) with hop 160, F = (n - 640) // 160 + 1.
    """
    frames = np.lib.stride_tricks.sliding_window_view(audio, FRAME)[
        ::HOP
    ]  # (F, FRAME) view
    n_frames = frames.shape[0]
    energy = np.einsum("ij,ij->i", frames, frames) / FRAME  # (F,) mean square
    proj = frames @ _PROBE  # (F, 2 * N_WORDS)
    power = proj[:, :N_WORDS] ** 2 + proj[:, N_WORDS:] ** 2  # (F, N_WORDS)
    label = np.argmax(power, axis=1)
    # Absolute floor: the synthetic silence is exact zeros; 1e-6 is -60 dB below a word.
    label = np.where(energy > 1e-6, label, -1)

    words = []
    change = np.flatnonzero(np.diff(label)) + 1
    bounds = np.concatenate([[0], change, [n_frames]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        if label[a] < 0:
            continue
        # A frame whose centre lies inside the tone covers more than half of it, so it has
        # more than half the energy of a fully covered frame: those frames ("core") locate
        # the tone's ends to within half a hop.
        run = energy[a:b]
        core = np.flatnonzero(run >= 0.5 * run.max()) + a
        first, last = int(core[0]), int(core[-1])
        centre = lambda j: (j * HOP + FRAME / 2) / SAMPLE_RATE  # noqa: E731
        cut_start = bool(a == 0)
        cut_end = bool(b == n_frames)
        start = 0.0 if cut_start else centre(first) - HOP / 2 / SAMPLE_RATE
        end = (
            audio.shape[0] / SAMPLE_RATE
            if cut_end
            else centre(last) + HOP / 2 / SAMPLE_RATE
        )
        if end - start < MIN_HEARD_S:
            continue
        words.append((f"w{int(label[a])}", start, end, cut_start, cut_end))
    return words


def _q(t: float) -> float:
    """Quantise to Whisper's timestamp precision (0.02 s), as a model would."""
    return round(round(t / TIME_PRECISION) * TIME_PRECISION, 2)


def group_words(words, grouping: str, window_s: float) -> list[Segment]:
    """Words -> segments (word or phrase grouping); the last one open if cut at the end."""
    groups: list[list] = []
    for w in words:
        if groups and grouping == "phrase" and w[1] - groups[-1][-1][2] < PHRASE_GAP_S:
            groups[-1].append(w)
        else:
            groups.append([w])
    segments = []
    for g in groups:
        text = "".join(" " + w[0] for w in g)
        open_end = g[-1][4]
        end = window_s if open_end else _q(g[-1][2])
        segments.append(
            Segment(start=_q(g[0][1]), end=end, text=text, open_end=open_end)
        )
    return segments


def make_tone_speech(
    n_words: int,
    seed: int,
    *,
    amp: float = 0.5,
    word_s: tuple[float, float] = (0.25, 0.6),
    gap_s: tuple[float, float] = (0.1, 0.3),
    pause_s: tuple[float, float] = (0.8, 1.5),
    pause_prob: float = 0.12,
    lead_s: float = 0.3,
) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Random tone speech: (n,) float32 audio at 16 kHz and the truth [(text, start, end)].

    Words last ``word_s`` seconds, separated by gaps of ``gap_s`` or, with probability
    ``pause_prob``, by a pause of ``pause_s``. Truth times are exact (sample-aligned).
    """
    rng = np.random.default_rng(seed)
    t = lead_s
    plan = []
    for _ in range(n_words):
        i = int(rng.integers(N_WORDS))
        d = float(rng.uniform(*word_s))
        plan.append((i, t, d))
        gap = (
            rng.uniform(*pause_s) if rng.random() < pause_prob else rng.uniform(*gap_s)
        )
        t += d + float(gap)
    total = int(round(t * SAMPLE_RATE))
    audio = np.zeros(total, dtype=PCM_DTYPE)
    truth = []
    for i, start, d in plan:
        a = int(round(start * SAMPLE_RATE))
        n = int(round(d * SAMPLE_RATE))
        audio[a : a + n] = tone_word(i, n, amp)
        truth.append((f"w{i}", a / SAMPLE_RATE, (a + n) / SAMPLE_RATE))
    return audio, truth


def tone_word(i: int, n: int, amp: float = 0.5) -> np.ndarray:
    """(n,) float32: word ``i`` for ``n`` samples, with 2 ms ramps (no broadband clicks)."""
    t = np.arange(n) / SAMPLE_RATE
    x = amp * np.sin(2 * np.pi * word_freq(i) * t)
    ramp = min(n // 2, int(0.002 * SAMPLE_RATE))
    if ramp:
        env = np.linspace(0.0, 1.0, ramp)
        x[:ramp] *= env
        x[n - ramp :] *= env[::-1]
    return x.astype(PCM_DTYPE)


def score(
    segments, truth, grouping: str = "word", tol: float = 0.1, details=None
) -> dict:
    """Compare stitched segments with the truth: {lost, doubled, misplaced, out_of_order}.

    Words are aligned by text in order (difflib, no junk heuristic). ``lost``: truth words
    with no counterpart; ``doubled``: output words with none (repeats or inventions);
    ``misplaced``: matched words whose times are off by more than ``tol``: for "word"
    grouping the segment's start and end against the word's, for "phrase" grouping the
    segment's start against its first word's and its end against its last word's, and
    every word must lie inside its segment (within ``tol``); ``out_of_order``: segments
    starting before the previous one ended or ending before they start.
    ``details``: a list to append human-readable findings to (for assertion messages).
    """
    notes = details if details is not None else []
    out = []  # (text, segment number, position in segment, words in segment)
    for k, seg in enumerate(segments):
        ws = seg.text.split()
        out.extend((w, k, j, len(ws)) for j, w in enumerate(ws))
    sm = difflib.SequenceMatcher(
        None, [w[0] for w in out], [t[0] for t in truth], autojunk=False
    )
    lost = doubled = misplaced = 0
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("replace", "delete"):
            doubled += i2 - i1
            notes.append(
                f"extra {[w[0] for w in out[i1:i2]]} in segments {sorted({w[1] for w in out[i1:i2]})}"
            )
        if tag in ("replace", "insert"):
            lost += j2 - j1
            notes.append(f"lost {truth[j1:j2]}")
        if tag != "equal":
            continue
        for o, tr in zip(out[i1:i2], truth[j1:j2]):
            _, k, j, n = o
            seg = segments[k]
            bad = []
            if grouping == "word" or j == 0:
                if abs(seg.start - tr[1]) > tol:
                    bad.append("start")
            if grouping == "word" or j == n - 1:
                if abs(seg.end - tr[2]) > tol:
                    bad.append("end")
            if seg.start > tr[1] + tol or seg.end < tr[2] - tol:
                bad.append("outside")
            if bad:
                misplaced += 1
                notes.append(f"misplaced {tr} in {seg} ({', '.join(bad)})")
    out_of_order = 0
    prev_end = 0.0
    for seg in segments:
        if seg.start < prev_end - 1e-9 or seg.end < seg.start:
            out_of_order += 1
            notes.append(f"out of order: {seg} after end {prev_end}")
        prev_end = max(prev_end, seg.end)
    return dict(
        lost=lost, doubled=doubled, misplaced=misplaced, out_of_order=out_of_order
    )


class LanguageToneBackend(ToneBackend):
    """Tone words "spoken" in languages, for the job's language vote (stages/language.py).

    With no language given, a window is detected by its words: all of w10-w19 is English,
    sure (0.97); all of w20-w29 German, sure; words of w0-w9 only are unsure, most like
    Welsh (cy 0.6, de 0.3, en 0.1: a synthetic German voice taken for Welsh). Anything
    else, unsure between English and German by which band has more words. A word's text
    carries the language it was decoded in (" w3.de"), so a test reads which language
    each window was decoded in."""

    multilingual = True

    @staticmethod
    def detect(words) -> tuple:
        bands = [int(w[0][1:]) // 10 for w in words]
        if not bands:
            return (("en", 0.5), ("de", 0.5))
        if all(b == 1 for b in bands):
            return (("en", 0.97), ("de", 0.02), ("cy", 0.01))
        if all(b == 2 for b in bands):
            return (("de", 0.97), ("en", 0.02), ("cy", 0.01))
        if all(b == 0 for b in bands):
            return (("cy", 0.6), ("de", 0.3), ("en", 0.1))
        en, de = bands.count(1), bands.count(2)
        return (("en", 0.6), ("de", 0.4)) if en >= de else (("de", 0.6), ("en", 0.4))

    def transcribe(self, prepared: list, options: DecodeOptions, **_per_row) -> list[WindowResult]:
        results = []
        for audio in prepared:
            words = detect_words(audio)
            probs = None if options.language else self.detect(words)
            language = options.language or probs[0][0]
            segments = [
                Segment(s.start, s.end, "".join(f" {w}.{language}" for w in s.text.split()), open_end=s.open_end)
                for s in group_words(words, self.grouping, audio.shape[0] / SAMPLE_RATE)
            ]
            results.append(WindowResult(tuple(segments), language=language, n_tokens=len(words),
                                        language_probs=probs))  # fmt: skip
        return results


class RedoFailsBackend(LanguageToneBackend):
    """``LanguageToneBackend`` whose features cannot be prepared again for a window of
    w0-w9 words (the unsure one) on the infer stage's main thread, where a window decoded
    again in its job's language is prepared: the job's vote fails that job."""

    def prepare(self, audio):
        import threading

        out = super().prepare(audio)
        words = detect_words(out)
        if threading.current_thread() is threading.main_thread() and words and all(int(w[0][1:]) < 10 for w in words):
            raise ValueError("injected: cannot prepare the window again")
        return out
