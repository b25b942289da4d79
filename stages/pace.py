"""A job's speaking rate (``Pace``) and the skip check that reads it (``too_slow``): a
segment saying far less than the sound under it at the job's pace was jumped over by the
model. ``stages.review.WindowReview`` runs the check; see ``stages.quality`` for the other
rules and ``QualityConfig`` for the settings."""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

import numpy as np

from pipeline.types import Segment
from stages.levels import loud_seconds
from stages.quality import text_units

if TYPE_CHECKING:
    from stages.quality import QualityConfig


class Pace:
    """A job's speaking rate: letters per second of sound, over the segments of windows
    already decided (``note``), for ``too_slow``. Shared by a job's reviews; the median of
    the last 200 segments, so one odd window cannot move it.

    Order (issue 11: the same transcript whatever else is decoded at the same time): a
    window's skip check uses the segments of the windows up to it *in audio order*, never
    of whichever windows happened to finish first. Reviews register in window order; a
    window decided before an earlier one waits for it (``release``), so its check always
    sees the same pace. Notes given before any review registered (``index`` None) count
    for every window.

    The rate is known once ``warm`` segments were noted (each over 2 s of sound at least).
    With 5, a reading of long segments had none for its first 50 s (four segments of
    6-21 s), so its third window was judged by the prior (``skip_prior_rate``), which
    flags only a segment saying next to nothing over 10 s or more of sound: base wrote
    " and" over 22.6 s of speech with babble under it, its first half said " and" again
    over 13 s (10 s of sound), and that half was not split again: 26 words lost, where
    sequential decoding lost 2. With 3 the rate is the median of three or more, and the
    half is split: its halves say the sentence."""

    def __init__(self, window: int = 200, warm: int = 3):
        self._prior: list[float] = []  # notes with no window (index None)
        self._rates: dict[int, list[float]] = {}  # window index -> its segments' rates
        self._window = window
        self._warm = warm
        # Registered reviews whose skip check has not run, in window order. A review
        # leaves once its check ran: each holds its window's audio for re-decodes, and
        # keeping them all to the job's end grew the infer stage by ~1.8 MB a window
        # (482 -> 719 MiB from 5 to 60 minutes; scripts/memory_profile.py).
        self._order: collections.deque = collections.deque()
        self._last = -1  # the last window index registered
        self._released: list = []  # (review, requests) let go by another review's feed
        self._lock = threading.Lock()  # the infer stage's reader registers, its main thread releases

    def note(self, units: int, sound_s: float, index: int | None = None) -> None:
        if sound_s >= 2.0 and units > 0:
            (self._prior if index is None else self._rates.setdefault(index, [])).append(units / sound_s)

    def rate(self, upto: int | None = None) -> float | None:
        """Median letters per sound-second over the last ``window`` segments noted (of the
        windows up to ``upto``, in window order, when given), or None before ``warm``."""
        rates = list(self._prior)
        for i in sorted(self._rates):
            if upto is None or i <= upto:
                rates.extend(self._rates[i])
        rates = rates[-self._window :]
        if len(rates) < self._warm:
            return None
        return float(np.median(rates))

    def register(self, review) -> None:
        with self._lock:
            if review.index <= self._last:
                raise ValueError(f"pace: window {review.index} registered after {self._last}")
            self._last = review.index
            self._order.append(review)

    def release(self) -> list:
        """Run the waiting skip checks that may run now, in window order: each review's,
        once every earlier window was decided. Returns [(review, requests)]."""
        out = []
        with self._lock:
            while self._order and self._order[0].decided:
                review = self._order.popleft()
                out.append((review, review.check_pace()))
        return out

    def take_released(self) -> list:
        """What ``release`` let go during other reviews' feeds: [(review, requests)]."""
        out, self._released = self._released, []
        return out


def too_slow(seg: Segment, loud: np.ndarray, pace: Pace | None, cfg: QualityConfig, upto: int | None = None) -> bool:
    """A segment saying far less than the sound under it at the job's pace: Whisper
    sometimes jumps over a sentence or two inside one long segment (a 26.7 s segment
    holding 35 of 64 words on a 3-minute reading; issue 8 saw a 13 s segment holding three
    words). Flagged when at least ``skip_min_sound_s`` of sound lies under it and it holds
    less than ``skip_ratio`` of the letters the job's pace predicts, ``skip_min_units``
    letters short at least. ``upto``: the window being checked (``Pace.rate``). Until the
    job has a pace of its own, ``skip_prior_rate`` stands for it."""
    if pace is None:
        return False
    rate = pace.rate(upto)
    if rate is None:  # the job's first segments: its own pace is not known yet
        rate = cfg.skip_prior_rate
    if rate <= 0:
        return False
    sound_s = loud_seconds(loud, seg.start, seg.end)
    if sound_s < cfg.skip_min_sound_s:
        return False
    expected = rate * sound_s
    units = text_units(seg.text)
    return units < cfg.skip_ratio * expected and expected - units >= cfg.skip_min_units
