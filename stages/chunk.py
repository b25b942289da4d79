"""Chunk stage core: a stream of PCM blocks becomes fixed 30 s windows that overlap.

No IPC here, and no VAD: windows are cut at fixed positions so that a window's place in
the audio is pure arithmetic (``window_starts``), and the stitcher can rely on it.

The rule (one place, tested with crafted edges in tests/test_chunk.py):

- window k starts at sample ``k * step`` where ``step = window - overlap``;
- window 0 exists iff the stream has any audio;
- window k > 0 exists iff ``total > k * step + overlap``: it must bring at least one
  sample that window k-1 did not cover (a window made only of the previous window's tail
  would cost a full 30 s of GPU work and transcribe nothing new);
- the last window is zero-padded in the audio domain after its ``valid`` samples. Never
  pad the mel features instead: padded log-mel looks like noise to Whisper and makes it
  hallucinate (faster-whisper PR #1084).

``iter_windows`` streams: it yields each window as soon as its last sample has arrived
and holds at most about two windows of audio however long the stream is (decode blocks
of any size go in; a block larger than a window is consumed in pieces).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.constants import DEFAULT_OVERLAP_S, N_SAMPLES, PCM_DTYPE, SAMPLE_RATE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowPlan:
    """Where windows go: ``window_samples`` long, adjacent ones sharing ``overlap_samples``.

    Validated here, before any process starts: ``0 <= overlap_samples < window_samples``
    (an overlap as long as the window would never advance).
    """

    window_samples: int = N_SAMPLES
    overlap_samples: int = round(DEFAULT_OVERLAP_S * SAMPLE_RATE)

    def __post_init__(self):
        for name in ("window_samples", "overlap_samples"):
            value = getattr(self, name)
            # bool is an int subclass; a float would make slicing fail far from here.
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(
                    f"{name} must be an integer number of samples, not {value!r}"
                )
        if self.window_samples <= 0:
            raise ValueError(
                f"window_samples must be positive, not {self.window_samples}"
            )
        if not 0 <= self.overlap_samples < self.window_samples:
            raise ValueError(
                f"overlap must be at least 0 and shorter than the window "
                f"({self.window_samples / SAMPLE_RATE:g} s), not "
                f"{self.overlap_samples / SAMPLE_RATE:g} s ({self.overlap_samples} samples)"
            )

    @classmethod
    def from_seconds(
        cls, overlap_s: float, window_s: float | None = None
    ) -> "WindowPlan":
        """A plan from seconds (``window_s`` None: Whisper's 30 s window)."""
        window = N_SAMPLES if window_s is None else round(window_s * SAMPLE_RATE)
        return cls(
            window_samples=window, overlap_samples=round(overlap_s * SAMPLE_RATE)
        )

    @property
    def step_samples(self) -> int:
        """Samples between the starts of adjacent windows."""
        return self.window_samples - self.overlap_samples

    @property
    def overlap_seconds(self) -> float:
        return self.overlap_samples / SAMPLE_RATE

    @property
    def step_seconds(self) -> float:
        return self.step_samples / SAMPLE_RATE


@dataclass
class Window:
    """One window of the stream.

    ``index``: 0-based window number. ``start``: sample offset of the window in the
    stream. ``valid``: real samples at the front of ``audio`` (the rest is zero padding).
    ``audio``: (window_samples,) float32; the array belongs to the consumer (the chunker
    never touches it again after yielding it).
    """

    index: int
    start: int
    valid: int
    audio: np.ndarray

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


def window_starts(total_samples: int, plan: WindowPlan = WindowPlan()) -> list[int]:
    """Start samples of the windows that cover ``total_samples`` of audio (see module doc).

    Exact integer arithmetic: window k > 0 exists iff ``total > k*step + overlap``, i.e.
    ``k < (total - overlap) / step``, so there are ``ceil((total - overlap) / step)``
    windows (at least one for any audio, none for an empty stream).
    """
    if total_samples < 0:
        raise ValueError(f"total_samples must be >= 0, not {total_samples}")
    if total_samples == 0:
        return []
    step, overlap = plan.step_samples, plan.overlap_samples
    n = max(1, -(-(total_samples - overlap) // step))  # ceil division on integers
    return [k * step for k in range(n)]


def iter_windows(
    blocks: Iterable[np.ndarray], plan: WindowPlan = WindowPlan()
) -> Iterator[Window]:
    """Cut a stream of PCM blocks into overlapping windows, yielding each when complete.

    ``blocks``: 1-D arrays of any length (empty allowed), float32 mono at 16 kHz (other
    float dtypes are converted). Yields ``Window``s whose audio is (window_samples,)
    float32, exactly ``concat(blocks)[start:start + window_samples]`` zero-padded.

    Memory: one buffer being filled plus, at the moment of a yield, the next buffer that
    already holds the overlap: about two windows, independent of the stream's length.
    Each yielded array is fresh (handed over, not reused), so only the overlap is copied.
    """
    window, overlap, step = plan.window_samples, plan.overlap_samples, plan.step_samples
    buf = np.empty(window, dtype=PCM_DTYPE)
    filled = 0  # samples in buf
    carried = 0  # of which came from the previous window's tail
    index = 0
    start = 0
    for block in blocks:
        x = np.asarray(block)
        if x.ndim != 1:
            raise ValueError(
                f"PCM blocks must be 1-D (mono samples), got shape {x.shape}"
            )
        x = x.astype(PCM_DTYPE, copy=False)
        pos = 0
        while pos < x.shape[0]:
            n = min(window - filled, x.shape[0] - pos)
            buf[filled : filled + n] = x[pos : pos + n]
            filled += n
            pos += n
            if filled == window:
                # Copy the tail before handing buf over: the consumer owns it from now on
                # and may scale it in place or keep it.
                nxt = np.empty(window, dtype=PCM_DTYPE)
                nxt[:overlap] = buf[step:]
                yield Window(index=index, start=start, valid=window, audio=buf)
                buf, filled, carried = nxt, overlap, overlap
                index += 1
                start += step
    if (
        filled > carried
    ):  # audio the previous window did not cover (or the first window)
        buf[filled:] = 0.0
        yield Window(index=index, start=start, valid=filled, audio=buf)
    logger.debug(
        "chunked %d samples into %d windows", start + filled, index + (filled > carried)
    )
