"""Chunk stage core: a stream of PCM blocks becomes windows of at most 30 s, cut at pauses.

No IPC here, and no VAD model: each cut is placed by signal level alone, within a fixed
range of the window's start, so windows stay on a near-fixed grid (issue 8).

Why not fixed 30 s windows that overlap: with real tiny.en weights, fixed 26 s steps with
4 s overlaps cut words in two and the overlap stitching lost runs of 25-39 words (21.1%
WER against 14.4% for sequential decoding on the same audio). Cutting where nobody speaks
leaves nothing to stitch: every word is heard whole by exactly one window.

The rule (``WindowPlan``; one place, tested against a plain reference implementation in
tests/test_chunk.py). Levels are measured over 10 ms frames (160 samples) of the signal's
first difference (``frame_levels``: DC, hum and rumble hardly count):

1. A window starts where sound resumes: from the current position, quiet frames are
   skipped and the window starts ``margin_s`` before the first of ``onset_s`` (50 ms) of
   louder frames in a row (never before the current position). Quiet here is at or below
   the lowest frame level of the coming ``max_s - min_s`` plus ``tolerance_db``, and at
   or below the previous cut's own threshold (2.) when there was one. Whisper reads its
   first segment's start from the first 1 s of a window; speech that begins after seconds
   of silence was skipped entirely in one window of a test reading. A lone louder frame
   is the noise of a pause, not speech: over a -60 dBFS noise floor single frames rose
   over the threshold at random, windows began up to 15 s before the speech, and Whisper
   stamped its first sentence from there. (Audio shorter than one frame is a window of
   its own.)
2. It ends at the longest quiet run that starts within ``[start + min_s, start + max_s]``:
   ``quiet`` is the range's lowest frame level plus ``tolerance_db``, a run is a stretch
   of frames at or below it (lengths compared within the range only; the chosen run is
   then extended backwards past the range's start while quiet, to one frame after the
   window's start; the latest of equally long runs wins). A long run (over ``2 * margin_s``, or one reaching
   the range's end) is split: the window keeps ``margin_s`` of it and the next window's
   skip (1.) finds where it ends; a short run is cut in its middle. The longest pause in the last third of a
   window is most often a sentence's end, so a window holds whole sentences.
3. When at most ``max_s`` of audio is left after a window's start, that is the last
   window. Quiet audio after it, before the first window, or between windows belongs to
   no window (it is never decoded); ``covered_from`` tells where each window's share of
   the audio begins, for progress.

Windows are zero-padded to 30 s in the audio domain. Never pad the mel features instead:
padded log-mel looks like noise to Whisper and makes it hallucinate (faster-whisper PR
#1084).

``iter_windows`` streams: it yields each window as soon as the audio that decides its end
has arrived, holding at most ``max_s`` of audio plus one input block however long the
stream is (a long silence is discarded as it passes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.constants import HOP_LENGTH, N_SAMPLES, PCM_DTYPE, SAMPLE_RATE

logger = logging.getLogger(__name__)

FRAME = HOP_LENGTH  # 10 ms: the level measurements' resolution
_FRAMES_PER_S = SAMPLE_RATE // FRAME


@dataclass(frozen=True)
class WindowPlan:
    """Where windows go (see the module docstring). Validated before any process starts."""

    min_s: float = 20.0  # a window's cut is searched from here ...
    max_s: float = 30.0  # ... to here (Whisper's window: at most 30 s)
    margin_s: float = 0.4  # pause kept before a window's first and after its last sound
    tolerance_db: float = 3.0  # frames this close to the range's quietest are quiet
    onset_s: float = 0.05  # sound resumes where this much of it comes in a row (rule 1)

    def __post_init__(self):
        for name in ("min_s", "max_s", "margin_s", "tolerance_db", "onset_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number of seconds, not {value!r}")
        if not 0 < self.min_s < self.max_s <= N_SAMPLES / SAMPLE_RATE:
            raise ValueError(
                f"windows need 0 < min_s < max_s <= {N_SAMPLES // SAMPLE_RATE} s, "
                f"not min_s={self.min_s:g}, max_s={self.max_s:g}"
            )
        if not 0 <= self.margin_s < self.min_s / 2 or not 0 <= self.tolerance_db < float("inf"):
            raise ValueError("margin_s must be in [0, min_s / 2) and tolerance_db finite and >= 0")
        if not 0 <= self.onset_s <= 1.0:
            raise ValueError(f"onset_s must be in [0, 1] s, not {self.onset_s:g}")
        if not 1 <= self.min_frames < self.max_frames:
            raise ValueError(
                f"min_s and max_s must be at least one 10 ms frame apart and min_s at least one "
                f"frame, not min_s={self.min_s:g}, max_s={self.max_s:g}"
            )

    @property
    def min_frames(self) -> int:
        return round(self.min_s * _FRAMES_PER_S)

    @property
    def max_frames(self) -> int:
        return round(self.max_s * _FRAMES_PER_S)

    @property
    def onset_frames(self) -> int:
        return max(1, round(self.onset_s * _FRAMES_PER_S))

    @property
    def margin_frames(self) -> int:
        return round(self.margin_s * _FRAMES_PER_S)


@dataclass
class Window:
    """One window of the stream.

    ``index``: 0-based window number. ``start``: sample offset of the window in the
    stream. ``valid``: real samples at the front of ``audio`` (the rest is zero padding).
    ``covered_from``: where this window's share of the stream begins (the previous
    window's end, or 0): the samples in between were quiet and are not decoded.
    ``audio``: (480000,) float32; the array belongs to the consumer. ``final``: the
    stream's last window, its audio running to the stream's end (nothing comes after it).
    """

    index: int
    start: int
    valid: int
    audio: np.ndarray
    covered_from: int = 0
    final: bool = False

    @property
    def end(self) -> int:
        """Sample offset just past the window's real audio."""
        return self.start + self.valid

    @property
    def start_seconds(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def valid_seconds(self) -> float:
        return self.valid / SAMPLE_RATE


def frame_levels(audio: np.ndarray) -> np.ndarray:
    """dB level of each whole 10 ms frame: (n,) float32 -> (n // 160,) float64.

    The level of the frame's first difference (x[i] - x[i-1] within the frame): a
    first-order high-pass, so that what is not speech (a DC offset, mains hum, the rumble
    of pink or brown noise) hardly counts. Over 10 ms the low frequencies of pink noise
    swing its level by 16 dB from frame to frame, so its quiet frames rose 3 dB over the
    quietest at random, each taken for speech resuming; differenced, the same noise
    holds within 3.3 dB over 10 s and speech stays 20 dB and more above it. Frames are
    independent (no sample of the one before is used)."""
    n = len(audio) // FRAME
    x = np.asarray(audio[: n * FRAME], dtype=np.float64).reshape(n, FRAME)
    d = np.diff(x, axis=1)
    return 10.0 * np.log10(np.mean(d * d, axis=1) + 1e-12)


def _longest_quiet_run(levels: np.ndarray, lo: int, hi: int, tolerance_db: float):
    """(r0, r1, quiet): the longest run of frames <= quiet that starts in [lo, hi),
    latest on ties, with quiet = min(levels[lo:hi]) + tolerance_db; r1 is capped at hi."""
    quiet = float(levels[lo:hi].min()) + tolerance_db
    is_quiet = levels[lo:hi] <= quiet
    # Run boundaries from the changes of the quiet mask.
    padded = np.concatenate([[False], is_quiet, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    lengths = ends - starts
    k = len(lengths) - 1 - int(np.argmax(lengths[::-1]))  # the latest of the longest
    return lo + int(starts[k]), lo + int(ends[k]), quiet


class _Planner:
    """The rule of the module docstring over frame levels that arrive in pieces.

    ``push(levels)`` adds frames; ``eof(total_samples)`` marks the end; ``next()`` returns
    the next window as (start sample, end sample, covered_from), or None when more frames
    are needed (or, after eof, when there are no more windows). Positions are in frames
    of the whole stream; frames before ``self.base`` were dropped.
    """

    def __init__(self, plan: WindowPlan):
        self.plan = plan
        self.levels = np.empty(0)
        self.base = 0  # stream frame of levels[0]
        self.pos = 0  # where the search for the next window's start resumes
        self.quiet: float | None = None  # skip threshold from the last cut
        self.covered = 0  # sample where the next window's share begins
        self.total: int | None = None  # samples, once the stream ended
        self.start: int | None = None  # frame of the pending window's start
        self.skip_quiet: float | None = None  # threshold of the skip under way (rule 1)
        self.skip_from = 0  # where that skip began: no window starts before it

    def push(self, levels: np.ndarray) -> None:
        self.levels = np.concatenate([self.levels, levels]) if len(self.levels) else levels

    def eof(self, total_samples: int) -> None:
        self.total = total_samples

    @property
    def _frames(self) -> int:  # frames known so far (stream frames)
        return self.base + len(self.levels)

    def _lv(self, a: int, b: int) -> np.ndarray:
        return self.levels[a - self.base : b - self.base]

    def drop_before(self, frame: int) -> None:
        cut = frame - self.base
        if cut > 0:
            self.levels = self.levels[cut:]
            self.base = frame

    def next(self):
        plan = self.plan
        if self.start is None and not self._find_start():
            return None
        s = self.start
        total_frames = None if self.total is None else -(-self.total // FRAME)
        if total_frames is not None and total_frames - s <= plan.max_frames:
            self.start = None
            end_sample = self.total
            self.pos = total_frames
            out = (s * FRAME, end_sample, self.covered)
            self.covered = end_sample
            return out if end_sample > s * FRAME else None
        # Strictly more than max_s: a stream that ends exactly max_s after the start is
        # one last window (rule 3), which is not known until a frame past it arrives.
        if self.total is None and self._frames <= s + plan.max_frames:
            return None
        lo, hi = s + plan.min_frames, s + plan.max_frames
        r0, r1, quiet = _longest_quiet_run(self.levels, lo - self.base, hi - self.base, plan.tolerance_db)
        r0, r1 = r0 + self.base, r1 + self.base
        while r0 > s + 1 and self._lv(r0 - 1, r0)[0] <= quiet:
            r0 -= 1
        m = plan.margin_frames
        if r1 - r0 > 2 * m or r1 == hi:
            # A long pause, or one that may go on past the range: the window keeps a margin
            # of it; the next window's skip (rule 1) starts there and finds where it ends.
            end = min(r0 + m, hi)
        else:
            end = (r0 + r1) // 2
        self.start, self.pos, self.quiet, self.skip_quiet = None, end, quiet, None
        out = (s * FRAME, end * FRAME, self.covered)
        self.covered = end * FRAME
        return out

    def _find_start(self) -> bool:
        """Rule 1: skip quiet frames from ``pos``; set ``start``. False: need more frames."""
        plan = self.plan
        if self.total is not None and self.pos * FRAME >= self.total:
            return False
        if self.skip_quiet is None:
            # What counts as quiet for this skip, fixed when it begins (so that the frames
            # arriving in pieces cannot change it): the quietest frame of the coming
            # max_s - min_s plus the tolerance, and never more than the last cut's own
            # threshold. Measured afresh for each skip, so that soft speech after a loud,
            # noisy stretch is not taken for the rest of its pause.
            horizon = plan.max_frames - plan.min_frames
            have = self._frames - self.pos
            if have < horizon and self.total is None:
                return False
            if have <= 0:  # under one frame of audio left: a window of its own
                self.start = self.pos
                return True
            local = float(self._lv(self.pos, self.pos + horizon).min()) + plan.tolerance_db
            self.skip_quiet = local if self.quiet is None else min(self.quiet, local)
            self.skip_from = self.pos
        above = self._lv(self.pos, self._frames) > self.skip_quiet
        k = plan.onset_frames
        if len(above) >= k:
            loud = np.flatnonzero(np.convolve(above, np.ones(k, dtype=int), "valid") == k)
        else:
            loud = np.empty(0, dtype=int)
        if len(loud) == 0:
            # Loud frames at the end of what is known may yet start a run: keep them.
            tail = len(above) - (int(np.flatnonzero(~above)[-1]) + 1 if (~above).any() else 0)
            q = self._frames - (tail if self.total is None else 0)
            if self.total is None:
                # Still quiet: forget what passed, keeping a margin's worth before q.
                self.pos = max(self.pos, q - plan.margin_frames)
                self.drop_before(self.pos)
                return False
            self.pos = q  # the stream ends in quiet: no further window
            return False
        q = self.pos + int(loud[0])
        self.start = max(self.skip_from, q - plan.margin_frames)
        self.skip_quiet = None
        self.drop_before(self.start)
        return True


def plan_windows(audio: np.ndarray, plan: WindowPlan = WindowPlan()) -> list[tuple[int, int, int]]:
    """Windows of a whole signal, one shot: [(start, end, covered_from)] in samples."""
    p = _Planner(plan)
    p.push(frame_levels(audio))
    p.eof(len(audio))
    out = []
    while (w := p.next()) is not None:
        out.append(w)
    return out


def iter_windows(blocks: Iterable[np.ndarray], plan: WindowPlan = WindowPlan()) -> Iterator[Window]:
    """Cut a stream of PCM blocks into windows (the module's rule), yielding each when
    decided.

    ``blocks``: 1-D arrays of any length (empty allowed), float32 mono at 16 kHz (other
    float dtypes are converted). Yields ``Window``s whose audio is (480000,) float32:
    ``concat(blocks)[start:start + valid]`` zero-padded. Exactly ``plan_windows`` of the
    concatenated stream, whatever the block sizes.
    """
    planner = _Planner(plan)
    buf = np.empty(0, dtype=PCM_DTYPE)  # samples from stream position buf_at on
    buf_at = 0
    total = 0
    index = 0

    def emit(start, end, covered):
        nonlocal index
        audio = np.zeros(N_SAMPLES, dtype=PCM_DTYPE)
        audio[: end - start] = buf[start - buf_at : end - buf_at]
        final = planner.total is not None and end == planner.total
        w = Window(index=index, start=start, valid=end - start, audio=audio, covered_from=covered, final=final)
        index += 1
        return w

    def drain():
        nonlocal buf, buf_at
        while (w := planner.next()) is not None:
            yield emit(*w)
        # Audio before the planner's first kept frame is never needed again.
        keep_from = min(planner.base, planner.pos) * FRAME
        if planner.start is not None:
            keep_from = min(keep_from, planner.start * FRAME)
        if keep_from > buf_at:
            buf = buf[keep_from - buf_at :]
            buf_at = keep_from

    pending = np.empty(0, dtype=PCM_DTYPE)  # samples of an incomplete frame
    for block in blocks:
        x = np.asarray(block)
        if x.ndim != 1:
            raise ValueError(f"PCM blocks must be 1-D (mono samples), got shape {x.shape}")
        x = x.astype(PCM_DTYPE, copy=False)
        if not len(x):
            continue
        buf = np.concatenate([buf, x])
        total += len(x)
        joined = np.concatenate([pending, x]) if len(pending) else x
        n = len(joined) // FRAME
        if n:
            planner.push(frame_levels(joined[: n * FRAME]))
        pending = joined[n * FRAME :].copy()
        yield from drain()
    planner.eof(total)
    yield from drain()
    logger.debug("chunked %d samples into %d windows", total, index)
